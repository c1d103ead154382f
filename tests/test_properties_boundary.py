"""Property-based tests (hypothesis) of the distance-map and topology losses.

``boundary_loss``, ``hausdorff_dt_loss``, ``cldice_loss`` and ``dice_cldice`` on random
1D to 3D inputs, one sigmoid channel or several softmax classes, integer or dense labels,
and the edge cases that break distance-based losses (empty labels, labels filling the
image: no contour, so the zero map; every pixel excluded; saturated right and wrong
predictions; logits up to +-1e4):

- values and gradients are finite and lie in the documented range: the boundary loss
  within the image diagonal in absolute value (the largest distance), the Hausdorff
  loss >= 0, clDice and Dice + clDice in [0, 1]; an all-excluded batch gives a zero
  gradient (and 0 for the distance losses);
- bfloat16 logits give the float32 result on the same rounded logits (values within
  1e-5, gradients within one unit in the last place of bfloat16);
- excluding the second half of the first spatial axis (by ``where``, ``ignore_index``
  or out-of-range labels) equals slicing it away: same value, same gradient on the kept
  pixels, exactly zero on the excluded ones (distances never reach excluded pixels and
  pooling windows skip them).

Every example is drawn from a small table of scenarios (one compilation each); data come
from numpy seeded by hypothesis. The example counts are fixed here (not scaled by the
hypothesis profile) to keep the module within its time budget.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxseg

IGNORE = 255
F32, BF16 = jnp.float32, jnp.bfloat16

LOSSES = {
    "boundary_loss": jaxseg.boundary_loss,
    "hausdorff_dt_loss": jaxseg.hausdorff_dt_loss,
    "cldice_loss": jaxseg.cldice_loss,
    "dice_cldice": jaxseg.dice_cldice,
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    loss: str
    shape: tuple[int, ...]
    dtype: Any
    labels: str = "int"  # "int" or "onehot" (dense hard labels)
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def activation(self):
        return dict(self.options).get("activation", "softmax")

    @property
    def ignore_index(self):
        return dict(self.options).get("ignore_index")


def _sc(loss, shape, dtype, labels="int", **options):
    return Scenario(loss, shape, dtype, labels, tuple(sorted(options.items())))


SCENARIOS = {
    "boundary_loss": [
        _sc("boundary_loss", (2, 8, 7, 3), F32, ignore_index=IGNORE),
        _sc("boundary_loss", (2, 5, 4, 3, 1), BF16, activation="sigmoid"),
    ],
    "hausdorff_dt_loss": [
        _sc("hausdorff_dt_loss", (2, 8, 7, 3), F32, "onehot", alpha=1.5),
        _sc("hausdorff_dt_loss", (3, 13, 2), BF16, ignore_index=IGNORE, log=True),
    ],
    "cldice_loss": [
        _sc("cldice_loss", (2, 8, 7, 1), F32, activation="sigmoid", ignore_index=IGNORE),
        _sc("cldice_loss", (1, 5, 4, 4, 3), BF16, include_background=False, iterations=1),
    ],
    "dice_cldice": [_sc("dice_cldice", (2, 8, 7, 3), F32, alpha=0.3, iterations=1)],
}
HALF = [s for group in SCENARIOS.values() for s in group if s.dtype == BF16]
F32_SCENARIOS = {name: group[0] for name, group in SCENARIOS.items() if name != "dice_cldice"}

EDGES = ("random", "random", "empty", "full", "excluded", "right", "wrong", "extreme")
MASKS = ("all", "all", "half", "none_of_sample_0")


@functools.cache
def _jitted(scenario_options: tuple, name: str):
    fn = functools.partial(LOSSES[name], **dict(scenario_options))
    return jax.jit(jax.value_and_grad(lambda x, y, w: fn(x, y, where=w)))


def make_inputs(s: Scenario, seed: int, edge: str, mask: str, shape=None):
    rng = np.random.default_rng(seed)
    shape = s.shape if shape is None else shape
    classes, spatial = shape[-1], shape[:-1]
    binary = classes == 1
    values = 2 if binary else classes
    if edge == "empty":
        index = np.zeros(spatial, np.int32)
    elif edge == "full":
        index = np.full(spatial, values - 1, np.int32)
    else:
        index = rng.integers(0, values, spatial).astype(np.int32)
    target = (index[..., None] == (np.array([1]) if binary else np.arange(classes))).astype(
        np.float32
    )
    if s.labels == "int":
        labels = index.copy()
        if s.ignore_index is not None and edge not in ("empty", "full"):
            labels[rng.random(spatial) < 0.2] = s.ignore_index
        if edge == "excluded" and s.ignore_index is not None:
            labels[...] = s.ignore_index
    else:
        labels = target
    if edge == "right":
        logits = np.where(target > 0.5, 1e4, -1e4)
    elif edge == "wrong":
        logits = np.where(target > 0.5, -1e4, 1e4)
    elif edge == "extreme":
        logits = rng.choice([-1e4, -30.0, 0.0, 30.0, 1e4], size=shape)
    else:
        logits = rng.standard_normal(shape) * rng.choice([1.0, 10.0])
    where = np.ones(spatial, bool)
    if mask == "half":
        where = rng.random(spatial) < 0.5
    elif mask == "none_of_sample_0":
        where[0] = False
    if edge == "excluded":
        where[...] = False
    return logits.astype(np.float32), labels, where


def _all_excluded(s: Scenario, labels, where) -> bool:
    if s.labels != "int":
        return not where.any()
    values = 2 if s.shape[-1] == 1 else s.shape[-1]
    return not (((labels >= 0) & (labels < values)) & where).any()


def _range(s: Scenario, shape) -> tuple[float, float]:
    if s.loss == "boundary_loss":
        diagonal = float(np.sqrt(np.sum(np.square(shape[1:-1]))))
        return -diagonal, diagonal
    if s.loss == "hausdorff_dt_loss":
        return 0.0, np.inf
    return 0.0, 1.0


common = dict(
    seed=st.integers(0, 2**32 - 1), edge=st.sampled_from(EDGES), mask=st.sampled_from(MASKS)
)


@pytest.mark.parametrize("name", list(LOSSES))
@settings(max_examples=60)
@given(index=st.integers(0, 1), **common)
def test_finite_and_in_range(name, index, seed, edge, mask):
    group = SCENARIOS[name]
    s = group[index % len(group)]
    logits, labels, where = make_inputs(s, seed, edge, mask)
    value, grad = _jitted(s.options, s.loss)(jnp.asarray(logits).astype(s.dtype), labels, where)
    value, grad = np.asarray(value), np.asarray(grad.astype(jnp.float32))
    assert value.shape == () and value.dtype == np.float32, (s, value)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), (s, edge, value)
    lower, upper = _range(s, s.shape)
    assert lower - 1e-5 <= value <= upper + 1e-5, (s, edge, value)
    if _all_excluded(s, labels, where):
        assert np.all(grad == 0), (s, edge)
        if s.loss in ("boundary_loss", "hausdorff_dt_loss"):
            assert value == 0, (s, edge, value)
        else:  # both clDice ratios are s_nr / s_dr = 1
            alpha = dict(s.options).get("alpha", 1.0)
            np.testing.assert_allclose(value, alpha * (1 - 2 / (2 + 1e-4)), atol=1e-7)


@settings(max_examples=60)
@given(index=st.integers(0, len(HALF) - 1), **common)
def test_bfloat16_matches_float32(index, seed, edge, mask):
    s = HALF[index]
    logits, labels, where = make_inputs(s, seed, edge, mask)
    half = jnp.asarray(logits).astype(BF16)
    f = _jitted(s.options, s.loss)
    v_half, g_half = f(half, labels, where)
    v_32, g_32 = f(half.astype(F32), labels, where)
    assert g_half.dtype == BF16
    assert abs(float(v_half) - float(v_32)) <= 1e-5 * max(1.0, abs(float(v_32))), (s, edge)
    g_half, g_32 = np.asarray(g_half.astype(F32)), np.asarray(g_32)
    info = jnp.finfo(BF16)
    tol = float(info.eps) * np.abs(g_32) + 2 * float(info.smallest_subnormal)
    assert np.all(np.abs(g_half - g_32) <= tol), (s, edge)


@settings(max_examples=60)
@given(
    name=st.sampled_from(list(F32_SCENARIOS)),
    how=st.sampled_from(("where", "ignore_index", "out_of_range")),
    **common,
)
def test_masked_equals_sliced(name, how, seed, edge, mask):
    s = F32_SCENARIOS[name]
    if s.labels != "int":
        how = "where"
    logits, labels, where = make_inputs(s, seed, edge, mask)
    keep = (s.shape[1] + 1) // 2
    rng = np.random.default_rng(seed + 1)
    logits[:, keep:] = rng.choice([-1e4, 0.0, 1e4], size=logits[:, keep:].shape)
    if how == "where":
        where[:, keep:] = False
        if s.labels == "int":
            labels[:, keep:] = rng.integers(0, 2, labels[:, keep:].shape)
    elif how == "ignore_index":
        labels[:, keep:] = IGNORE
    else:
        labels[:, keep:] = rng.choice([-7, -1, s.shape[-1] + 1, 2**20], labels[:, keep:].shape)
    f = _jitted(s.options, s.loss)
    value, grad = f(logits, labels, where)
    v_cut, g_cut = f(logits[:, :keep], labels[:, :keep], where[:, :keep])
    grad, g_cut = np.asarray(grad), np.asarray(g_cut)
    np.testing.assert_allclose(value, v_cut, rtol=1e-5, atol=1e-6, err_msg=f"{s} {how}")
    assert np.all(grad[:, keep:] == 0), (s, how)
    scale = max(float(np.max(np.abs(g_cut), initial=0)), 1e-30)
    np.testing.assert_allclose(
        grad[:, :keep], g_cut, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{s} {how}"
    )
