"""Tests of jaxseg._combinators: combine, log_transform, deep_supervision, with_components.

Combined losses are checked against their terms computed separately; deep supervision
against per-scale losses on labels downsampled by hand (and PyTorch's ``nearest-exact``
index maps, which nnU-Net uses); everything under ``jit``, ``grad`` and ``vmap``.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import peers
import pytest
import references as ref
from peers import assert_close

import jaxseg
from jaxseg._combinators import deep_supervision_weights, nearest_indices


def squared_error(logits, labels, *, where=None, scale=1.0):
    """A cheap toy loss: mean squared error of the softmax against the one-hot label."""
    p = jax.nn.softmax(logits, axis=-1)
    y = jax.nn.one_hot(labels, logits.shape[-1])
    error = jnp.sum((p - y) ** 2, axis=-1)
    if where is not None:
        error = jnp.where(where, error, 0)
    return scale * jnp.mean(error)


def mean_probability(logits, labels, *, offset=0.0):
    return jnp.mean(jax.nn.softmax(logits, axis=-1)[..., 0]) + offset


@pytest.fixture(scope="module")
def data():
    logits = ref.random_logits(classes=3, shape=(2, 8, 6))
    labels = ref.random_labels(classes=3, shape=(2, 8, 6))
    where = np.random.default_rng(4).random((2, 8, 6)) > 0.2
    return logits, labels, where


# ---------------------------------------------------------------------------------------
# combine


def test_combined_value_and_gradient_equal_the_weighted_terms(data):
    logits, labels, where = data
    loss = jaxseg.combine(
        dice=functools.partial(jaxseg.dice_loss, include_background=False),
        ce=jaxseg.cross_entropy,
        weights={"ce": 0.5},
    )
    options = dict(ignore_index=2, where=where)  # shared: both terms take them
    objective = lambda x: jaxseg.with_components(loss)(x, labels, **options)
    (total, parts), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(logits)
    dice = peers.jaxseg_value_and_grad(
        jaxseg.dice_loss, logits, labels, include_background=False, **options
    )
    ce = peers.jaxseg_value_and_grad(jaxseg.cross_entropy, logits, labels, **options)
    assert_close(parts["dice"], dice[0])
    assert_close(parts["ce"], ce[0])
    assert_close(total, dice[0] + 0.5 * ce[0])
    assert_close(grad, dice[1] + 0.5 * ce[1])


def test_names_and_weights():
    pair = jaxseg.combine(squared_error, ("mean_p", mean_probability), weights=(2.0, 3.0))
    assert pair.names == ("squared_error", "mean_p") and pair.weights == (2.0, 3.0)
    named = jaxseg.combine(
        functools.partial(squared_error, scale=2.0), mean=mean_probability, weights={"mean": 0.1}
    )
    assert named.names == ("squared_error", "mean") and named.weights == (1.0, 0.1)
    assert jaxseg.combine(a=squared_error, b=mean_probability).weights == (1.0, 1.0)
    assert "squared_error" in repr(pair)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: jaxseg.combine(), ValueError, "at least one"),
        (lambda: jaxseg.combine(squared_error, squared_error), ValueError, "unique"),
        (lambda: jaxseg.combine(squared_error, weights=(1.0, 2.0)), ValueError, "one entry"),
        (lambda: jaxseg.combine(a=squared_error, weights={"b": 1.0}), ValueError, "unknown"),
        (lambda: jaxseg.combine(a=1.0), TypeError, "callable"),
        (lambda: jaxseg.combine(("a", squared_error, 1)), TypeError, "pair"),
        (lambda: jaxseg.log_transform(squared_error, eps=0.0), ValueError, "eps"),
        (lambda: jaxseg.deep_supervision(squared_error, weights="nnU"), ValueError, "nnunet"),
    ],
)
def test_construction_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_options_are_routed_by_signature(data):
    logits, labels, where = data
    loss = jaxseg.combine(se=squared_error, mean=mean_probability)
    value = loss(logits, labels, where=where, scale=3.0, offset=0.5)
    want = squared_error(logits, labels, where=where, scale=3.0) + mean_probability(
        logits, labels, offset=0.5
    )
    assert_close(value, want)
    with pytest.raises(TypeError, match=r"\['gamma'\]"):
        loss(logits, labels, gamma=2.0)


def test_call_time_options_override_bound_ones(data):
    logits, labels, _ = data
    loss = jaxseg.combine(se=functools.partial(squared_error, scale=2.0))
    assert_close(loss(logits, labels), 2 * squared_error(logits, labels))
    assert_close(loss(logits, labels, scale=5.0), 5 * squared_error(logits, labels))


def test_nested_combinations_route_options(data):
    logits, labels, where = data
    inner = jaxseg.combine(se=squared_error)
    outer = jaxseg.combine(inner=inner, mean=mean_probability, weights=(2.0, 1.0))
    value = outer(logits, labels, where=where, offset=1.0)
    want = 2 * squared_error(logits, labels, where=where) + mean_probability(
        logits, labels, offset=1.0
    )
    assert_close(value, want)


def test_a_combined_loss_traces_once(data):
    logits, labels, _ = data
    traced = chex.assert_max_traces(squared_error, n=1)
    loss = jaxseg.combine(se=traced, mean=mean_probability)
    rng = np.random.default_rng(0)
    for _ in range(3):  # new values, same shapes and options
        loss(rng.standard_normal(logits.shape).astype(np.float32), labels, scale=2.0)
    for weight in (0.0, 0.5, 1.0):  # call-time weights are traced: no new trace either
        loss.evaluate(logits, labels, (weight, 1.0), scale=2.0)
    jitted = jax.jit(lambda x: loss(x, labels, scale=2.0))
    jitted(logits)
    jitted(logits + 1)


def test_combined_under_jit_grad_vmap(data):
    logits, labels, where = data
    loss = jaxseg.combine(se=squared_error, mean=mean_probability, weights=(1.0, 0.25))
    separate = lambda x, y, w: squared_error(x, y, where=w) + 0.25 * mean_probability(x, y)
    stacked = [np.stack([a, a[::-1]]) for a in (logits, labels, where)]
    run = lambda f: jax.jit(jax.vmap(jax.value_and_grad(f)))(*stacked)
    got = run(lambda x, y, w: loss(x, y, where=w))
    want = run(separate)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_terms_of_different_shapes_are_rejected(data):
    logits, labels, _ = data
    loss = jaxseg.combine(jaxseg.dice_loss, jaxseg.cross_entropy)
    with pytest.raises(ValueError, match="one shape"):
        loss(logits, labels, reduction="none")


def test_with_components_of_a_plain_loss(data):
    logits, labels, _ = data
    value, parts = jaxseg.with_components(squared_error)(logits, labels)
    assert list(parts) == ["squared_error"]
    assert_close(value, squared_error(logits, labels))
    assert_close(parts["squared_error"], value)


# ---------------------------------------------------------------------------------------
# log_transform


def test_log_transform_of_dice(data):
    logits, labels, where = data
    log_dice = jaxseg.log_transform(jaxseg.dice_loss)
    assert log_dice.__name__ == "log_dice_loss"
    options = dict(include_background=False, ignore_index=2, where=where)
    value, grad = peers.jaxseg_value_and_grad(log_dice, logits, labels, **options)
    dice, dice_grad = peers.jaxseg_value_and_grad(jaxseg.dice_loss, logits, labels, **options)
    assert_close(value, -np.log(1 - dice))
    assert_close(grad, dice_grad / (1 - dice))  # chain rule: d(-log(1 - L)) = dL / (1 - L)


def test_log_transform_is_finite_at_one():
    always_one = lambda logits, labels: jnp.sum(logits) * 0 + 1.0
    transformed = jaxseg.log_transform(always_one)
    value, grad = jax.value_and_grad(transformed)(jnp.ones((1, 2, 2)), jnp.zeros((1, 2), int))
    assert_close(value, -np.log(1e-7))
    assert np.all(np.isfinite(grad))
    # A Dice loss of exactly 1: probabilities all on the wrong class, no smoothing.
    probs = jnp.asarray([[[0.0, 1.0], [0.0, 1.0]]])
    dice = functools.partial(jaxseg.dice_loss, activation=None, smooth_nr=0.0, smooth_dr=0.0)
    assert float(dice(probs, jnp.zeros((1, 2), int))) == 1.0
    assert np.isfinite(float(jaxseg.log_transform(dice, eps=1e-4)(probs, jnp.zeros((1, 2), int))))


# ---------------------------------------------------------------------------------------
# deep_supervision


def test_nearest_indices_are_pytorch_nearest_exact():
    torch = peers.torch()
    for size_in, size_out in [(12, 6), (12, 3), (12, 5), (10, 4), (7, 7), (9, 2)]:
        source = torch.arange(size_in, dtype=torch.float32).reshape(1, 1, -1)
        want = torch.nn.functional.interpolate(source, size=size_out, mode="nearest-exact")
        np.testing.assert_array_equal(nearest_indices(size_in, size_out), want.numpy().ravel())


def test_deep_supervision_weights():
    assert_close(deep_supervision_weights(1), [1.0])
    assert_close(deep_supervision_weights(3), np.array([4, 2, 1]) / 7)
    assert_close(deep_supervision_weights(3, "nnunet"), np.array([2, 1, 0]) / 3)
    assert deep_supervision_weights(2, (1.0, 3.0)) == (1.0, 3.0)
    with pytest.raises(ValueError, match="one entry per scale"):
        deep_supervision_weights(2, (1.0,))


def test_one_scale_is_the_plain_loss(data):
    logits, labels, where = data
    options = dict(include_background=False, ignore_index=2, where=where)
    supervised = jaxseg.deep_supervision(jaxseg.dice_loss)
    got = jax.jit(jax.value_and_grad(lambda x: supervised([x], labels, **options)))(logits)
    want = peers.jaxseg_value_and_grad(jaxseg.dice_loss, logits, labels, **options)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


@pytest.fixture(scope="module")
def scales():
    """Outputs at 12x10, 6x5 (factor 2), 3x2 (factors 4 and 5) and 5x4 (non-integer)."""
    rng = np.random.default_rng(7)
    sizes = [(12, 10), (6, 5), (3, 2), (5, 4)]
    outputs = [rng.standard_normal((2, *s, 3)).astype(np.float32) for s in sizes]
    labels = rng.integers(0, 3, (2, 12, 10)).astype(np.int32)
    where = rng.random((2, 12, 10)) > 0.2
    # By hand: the centre-aligned pixel of each block (nnU-Net's nearest-exact).
    rows = [np.arange(12), np.arange(1, 12, 2), np.arange(2, 12, 4), np.array([1, 3, 6, 8, 10])]
    cols = [np.arange(10), np.arange(1, 10, 2), np.array([2, 7]), np.array([1, 3, 6, 8])]
    pick = lambda a, r, c: a[:, r][:, :, c]
    small = [(pick(labels, r, c), pick(where, r, c)) for r, c in zip(rows, cols, strict=True)]
    return outputs, labels, where, small


def _hand_sum(loss, outputs, small, weights):
    """The weighted sum of per-scale losses on the hand-downsampled labels, one jit."""
    return sum(
        w * loss(x, y, where=m) for w, x, (y, m) in zip(weights, outputs, small, strict=True)
    )


def test_several_scales_equal_the_hand_computed_sum(scales):
    outputs, labels, where, small = scales
    loss = jaxseg.combine(dice=jaxseg.dice_loss, ce=jaxseg.cross_entropy)
    supervised = jaxseg.deep_supervision(loss)
    total, parts = supervised(outputs, labels, where=where, return_components=True)
    w = np.array([8, 4, 2, 1]) / 15
    want = jax.jit(
        lambda xs: {
            "dice": _hand_sum(jaxseg.dice_loss, xs, small, w),
            "ce": _hand_sum(jaxseg.cross_entropy, xs, small, w),
        }
    )(outputs)
    for name in ("dice", "ce"):
        assert_close(parts[name], want[name])
    assert_close(total, want["dice"] + want["ce"])


@pytest.mark.parametrize("weights", ["nnunet", (0.5, 0.2, 0.2, 0.1)])
def test_scale_weights(weights, scales):
    outputs, labels, where, small = scales
    supervised = jaxseg.deep_supervision(squared_error, weights=weights)
    w = {"nnunet": np.array([4, 2, 1, 0]) / 7}.get(weights, weights)
    want = jax.jit(lambda xs: _hand_sum(squared_error, xs, small, w))(outputs)
    assert_close(supervised(outputs, labels, where=where), want)


def test_deep_supervision_dense_labels_and_gradient(scales):
    """Dense labels are resized like integer ones; here a factor 2 and a non-integer one."""
    outputs, labels, where, small = scales
    outputs, small = [outputs[0], outputs[3]], [small[0], small[3]]
    dense = ref.dense_labels(labels, 3, "softmax").astype(np.float32)
    supervised = jaxseg.deep_supervision(jaxseg.dice_loss)
    got = jax.jit(jax.value_and_grad(lambda xs: supervised(xs, dense, where=where)))(outputs)
    w = deep_supervision_weights(2)
    hand = lambda xs: _hand_sum(jaxseg.dice_loss, xs, small, w)  # integer labels
    want = jax.jit(jax.value_and_grad(hand))(outputs)
    assert_close(got[0], want[0])
    for g, expected in zip(got[1], want[1], strict=True):
        assert_close(g, expected)


def test_deep_supervision_under_vmap(scales):
    outputs, labels, where, small = scales
    supervised = jaxseg.deep_supervision(squared_error, weights=(1.0, 1.0, 1.0, 1.0))
    stacked = [np.stack([x, -x]) for x in outputs]
    values = jax.jit(jax.vmap(lambda xs: supervised(xs, labels, where=where)))(stacked)
    ones = (1.0,) * 4
    want = jax.jit(jax.vmap(lambda xs: _hand_sum(squared_error, xs, small, ones)))(stacked)
    assert_close(values, want)


def test_deep_supervision_errors(scales):
    outputs, labels, where, _ = scales
    supervised = jaxseg.deep_supervision(jaxseg.dice_loss)
    with pytest.raises(ValueError, match="list or tuple"):
        supervised(outputs[0], labels)
    with pytest.raises(ValueError, match="spatial shape"):
        supervised(outputs[1:], labels)
    with pytest.raises(ValueError, match="larger"):
        supervised([outputs[1], outputs[0]], labels[:, 1::2, 1::2])
    with pytest.raises(ValueError, match="classes=3"):
        supervised([outputs[0], outputs[1][..., :2]], labels)
    with pytest.raises(ValueError, match="one entry per scale"):
        jaxseg.deep_supervision(jaxseg.dice_loss, weights=(1.0,))(outputs, labels)
    with pytest.raises(ValueError, match="where"):
        supervised(outputs, labels, where=where[:, 1:])
    with pytest.raises(TypeError, match="gamma"):
        supervised(outputs, labels, gamma=2.0)
