"""Property tests (hypothesis) of the losses of issue 18: MCC, generalized Wasserstein
Dice, asymmetric unified focal, top-k cross-entropy, and region masks.

For each loss, on a small fixed table of scenarios (shape, dtype, options; one compiled
``value_and_grad`` each) and data drawn from a hypothesis seed, an edge case (random,
empty, full, saturated right or wrong, extreme logits up to +-1e4) and a scale:

- values and gradients are finite, and values lie in the documented range
  (``mcc_loss`` in [0, 2], ``generalized_wasserstein_dice_loss`` in [0, 1], the others
  non-negative), up to float32 rounding;
- an all-excluded batch gives a finite value and an exactly zero gradient;
- masked equals sliced: excluding the last two columns with ``where`` gives the value
  and the kept pixels' gradients of the call on the sliced inputs, and zero gradient
  on the excluded pixels;
- bfloat16 logits give the float32 result on the same rounded logits (values to
  ``1e-5`` relative, gradients to one bfloat16 unit);
- region masks equal ``numpy.isin`` per region.

Examples per run (the "ci" profile): 4 losses x (40 + 15 + 15) + 30 = 310.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import peers
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxseg

RANGE_ATOL = 1e-5
VALUE_RTOL = 1e-5

M3 = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]], np.float32)
M2 = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)

# name: (loss, range, scenarios: (shape, activation, options))
LOSSES = {
    "mcc_loss": (
        jaxseg.mcc_loss,
        (0.0, 2.0),
        [
            ((2, 6, 5, 3), "softmax", {}),
            ((2, 4, 3, 3, 1), "sigmoid", {"batch": True, "smooth_dr": 0.0}),
        ],
    ),
    "generalized_wasserstein_dice_loss": (
        jaxseg.generalized_wasserstein_dice_loss,
        (0.0, 1.0),
        [
            ((2, 6, 5, 3), "softmax", {"distance_matrix": M3}),
            ((2, 4, 3, 3, 2), "softmax", {"distance_matrix": M2, "weighting_mode": "GDL"}),
        ],
    ),
    "asymmetric_unified_focal_loss": (
        jaxseg.asymmetric_unified_focal_loss,
        (0.0, np.inf),
        [
            ((2, 6, 5, 2), "softmax", {}),
            ((2, 4, 3, 3, 1), "sigmoid", {"gamma": 0.0}),
            ((2, 6, 5, 4), "softmax", {"delta": 0.5}),
        ],
    ),
    "topk_cross_entropy": (
        jaxseg.topk_cross_entropy,
        (0.0, np.inf),
        [
            ((2, 6, 5, 3), "softmax", {"k": 10.0}),
            ((2, 4, 3, 3, 2), "sigmoid", {"k": 30.0}),
        ],
    ),
}
EDGES = ("random", "random", "empty", "full", "confident_right", "confident_wrong", "extreme")


@functools.cache
def _value_and_grad(name, scenario):
    loss, _, scenarios = LOSSES[name]
    _, activation, options = scenarios[scenario]

    def call(logits, labels, where):
        return loss(logits, labels, activation=activation, where=where, **options)

    return peers.jit(jax.value_and_grad(call))


def make_inputs(name, scenario, seed, edge, scale, shape=None):
    _, _, scenarios = LOSSES[name]
    base_shape, activation, _ = scenarios[scenario]
    shape = base_shape if shape is None else shape
    rng = np.random.default_rng(seed)
    classes = shape[-1]
    values = 2 if classes == 1 else classes
    spatial = shape[:-1]
    if edge == "empty":
        labels = np.zeros(spatial, np.int32)
    elif edge == "full":
        labels = np.full(spatial, values - 1, np.int32)
    else:
        labels = rng.integers(0, values, spatial).astype(np.int32)
    codes = np.array([1]) if classes == 1 else np.arange(classes)
    target = labels[..., None] == codes
    if edge == "confident_right":
        logits = np.where(target, 1e4, -1e4)
    elif edge == "confident_wrong":
        logits = np.where(target, -1e4, 1e4)
    elif edge == "extreme":
        logits = rng.choice([-1e4, -30.0, 0.0, 30.0, 1e4], size=shape)
    else:
        logits = rng.standard_normal(shape) * scale
    return logits.astype(np.float32), labels


def _check(name, scenario, logits, labels, where):
    value, grad = _value_and_grad(name, scenario)(logits, labels, where)
    return np.float64(value), np.asarray(grad, np.float64)


SEEDS = st.integers(0, 2**31 - 1)


@settings(max_examples=40)
@given(
    name=st.sampled_from(sorted(LOSSES)),
    data=st.data(),
    seed=SEEDS,
    edge=st.sampled_from(EDGES),
    scale=st.sampled_from((1.0, 10.0, 1e4)),
)
def test_finite_and_in_range(name, data, seed, edge, scale):
    _, (low, high), scenarios = LOSSES[name]
    scenario = data.draw(st.integers(0, len(scenarios) - 1))
    logits, labels = make_inputs(name, scenario, seed, edge, scale)
    where = np.random.default_rng(seed + 1).random(labels.shape) < 0.8
    value, grad = _check(name, scenario, logits, labels, where)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))
    assert low - RANGE_ATOL <= value <= high + RANGE_ATOL
    assert np.all(grad[~where] == 0)


@settings(max_examples=15)
@given(name=st.sampled_from(sorted(LOSSES)), data=st.data(), seed=SEEDS)
def test_all_excluded_has_zero_gradient(name, data, seed):
    _, _, scenarios = LOSSES[name]
    scenario = data.draw(st.integers(0, len(scenarios) - 1))
    logits, labels = make_inputs(name, scenario, seed, "random", 3.0)
    value, grad = _check(name, scenario, logits, labels, np.zeros(labels.shape, bool))
    assert np.isfinite(value)
    assert np.all(grad == 0)


@settings(max_examples=15)
@given(name=st.sampled_from(sorted(LOSSES)), data=st.data(), seed=SEEDS)
def test_masked_equals_sliced(name, data, seed):
    _, _, scenarios = LOSSES[name]
    scenario = data.draw(st.integers(0, len(scenarios) - 1))
    shape = scenarios[scenario][0]
    wide = (*shape[:-2], shape[-2] + 2, shape[-1])
    logits, labels = make_inputs(name, scenario, seed, "random", 3.0, shape=wide)
    where = np.ones(labels.shape, bool)
    where[..., -2:] = False
    masked, masked_grad = _check(name, scenario, logits, labels, where)
    sliced, sliced_grad = _check(
        name, scenario, logits[..., :-2, :], labels[..., :-2], where[..., :-2]
    )
    np.testing.assert_allclose(masked, sliced, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(masked_grad[..., :-2, :], sliced_grad, rtol=1e-4, atol=1e-6)
    assert np.all(masked_grad[..., -2:, :] == 0)


@functools.cache
def _half(name, scenario):
    loss, _, scenarios = LOSSES[name]
    _, activation, options = scenarios[scenario]
    return peers.jit(jax.value_and_grad(lambda x, y: loss(x, y, activation=activation, **options)))


@settings(max_examples=15)
@given(name=st.sampled_from(sorted(LOSSES)), seed=SEEDS, scale=st.sampled_from((1.0, 10.0)))
def test_bfloat16_matches_float32_on_rounded_logits(name, seed, scale):
    logits, labels = make_inputs(name, 0, seed, "random", scale)
    half = jnp.asarray(logits, jnp.bfloat16)
    value, grad = _half(name, 0)(half, labels)
    value32, grad32 = _half(name, 0)(half.astype(jnp.float32), labels)
    assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(value), float(value32), rtol=VALUE_RTOL, atol=1e-6)
    grad32 = np.asarray(grad32, np.float64)
    ulp = float(jnp.finfo(jnp.bfloat16).eps) * np.abs(grad32) + 1e-38
    assert np.all(np.abs(np.asarray(grad, np.float64) - grad32) <= ulp)


REGION_SETS = (((1, 2, 3), (2, 3), (3,)), ((1, 4), (1, 2, 4), (4,)), ((0,), (5, 1)))


@settings(max_examples=30)
@given(seed=SEEDS, regions=st.sampled_from(REGION_SETS), ndim=st.integers(1, 3))
def test_regions_are_isin(seed, regions, ndim):
    shape = (2, 5, 4, 3)[: ndim + 1]
    labels = np.random.default_rng(seed).integers(-1, 7, shape).astype(np.int32)
    got = np.asarray(jaxseg.regions_from_labels(labels, regions, dtype=bool))
    expected = np.stack([np.isin(labels, r) for r in regions], axis=-1)
    np.testing.assert_array_equal(got, expected)
