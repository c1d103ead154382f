"""Determinism: the same inputs give bit-identical values and gradients on every call,
and the jitted functions agree with op-by-op (eager, ``jax.disable_jit``) execution
within float32 tolerance, for every public loss."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import jaxseg
from jaxseg import metrics

RNG = np.random.default_rng(1234)
X = (RNG.standard_normal((2, 6, 5, 3)) * 3).astype(np.float32)
Y = RNG.integers(0, 3, (2, 6, 5)).astype(np.int32)
Y[0, 0, :2] = 255  # ignored pixels
WHERE = RNG.random((2, 6, 5)) < 0.8
X1 = (RNG.standard_normal((2, 6, 5, 1)) * 3).astype(np.float32)
Y1 = RNG.integers(0, 2, (2, 6, 5)).astype(np.int32)

MULTI = dict(ignore_index=255, where=WHERE)
LOSSES = [
    ("dice_loss", jaxseg.dice_loss, MULTI),
    ("iou_loss", jaxseg.iou_loss, dict(MULTI, empty="exclude")),
    ("tversky_loss", jaxseg.tversky_loss, dict(MULTI, alpha=0.3, beta=0.7, gamma=0.75)),
    ("generalized_dice_loss", jaxseg.generalized_dice_loss, MULTI),
    ("cross_entropy", jaxseg.cross_entropy, dict(MULTI, label_smoothing=0.1)),
    ("focal_loss", jaxseg.focal_loss, dict(MULTI, alpha=0.25)),
    ("dice_ce", jaxseg.dice_ce, dict(MULTI, include_background=False)),
    ("dice_focal", jaxseg.dice_focal, MULTI),
    ("lovasz_softmax_loss", jaxseg.lovasz_softmax_loss, MULTI),
    ("lovasz_softmax_loss_per_image", jaxseg.lovasz_softmax_loss, dict(MULTI, per_image=True)),
    ("combine", jaxseg.combine(jaxseg.dice_loss, jaxseg.focal_loss), MULTI),
    ("log_transform", jaxseg.log_transform(jaxseg.dice_loss), MULTI),
    ("bce_log_dice", jaxseg.bce_log_dice, {"where": WHERE}),
    ("lovasz_hinge_loss", jaxseg.lovasz_hinge_loss, {"where": WHERE}),
    ("dice_loss_sigmoid", jaxseg.dice_loss, {"activation": "sigmoid"}),
    ("focal_loss_sigmoid", jaxseg.focal_loss, {"activation": "sigmoid", "alpha": 0.25}),
]
BINARY = {"bce_log_dice", "lovasz_hinge_loss", "dice_loss_sigmoid", "focal_loss_sigmoid"}


def _inputs(name):
    return (X1, Y1) if name in BINARY else (X, Y)


@pytest.mark.parametrize(("name", "loss", "options"), LOSSES, ids=[c[0] for c in LOSSES])
def test_repeated_calls_are_bit_identical(name, loss, options):
    logits, labels = _inputs(name)
    f = jax.value_and_grad(functools.partial(loss, **options))
    jitted = jax.jit(f)
    results = [f(logits, labels) for _ in range(3)] + [jitted(logits, labels) for _ in range(3)]
    for value, grad in results[1:3]:
        np.testing.assert_array_equal(value, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])
    for value, grad in results[4:]:
        np.testing.assert_array_equal(value, results[3][0])
        np.testing.assert_array_equal(grad, results[3][1])
    assert np.isfinite(results[0][0]) and np.all(np.isfinite(results[0][1]))


@pytest.mark.parametrize(("name", "loss", "options"), LOSSES, ids=[c[0] for c in LOSSES])
def test_jit_matches_eager(name, loss, options):
    logits, labels = _inputs(name)
    f = jax.value_and_grad(functools.partial(loss, **options))
    value, grad = jax.jit(f)(logits, labels)
    with jax.disable_jit():
        eager_value, eager_grad = f(logits, labels)
    np.testing.assert_allclose(eager_value, value, rtol=1e-5, atol=1e-6)
    scale = float(np.max(np.abs(grad)))
    np.testing.assert_allclose(eager_grad, grad, rtol=1e-4, atol=1e-5 * scale)


def test_deep_supervision_is_deterministic():
    loss = jaxseg.deep_supervision(jaxseg.dice_ce)
    outputs = [X, X[:, ::2, ::2]]
    f = jax.value_and_grad(lambda xs: loss(xs, Y, ignore_index=255))
    (v0, g0), (v1, g1) = f(outputs), f(outputs)
    np.testing.assert_array_equal(v0, v1)
    for a, b in zip(g0, g1, strict=True):
        np.testing.assert_array_equal(a, b)


def test_metrics_are_deterministic():
    pred = RNG.integers(0, 3, Y.shape).astype(np.int32)
    state = metrics.update(metrics.metric_state(3), pred, Y, ignore_index=255)
    again = metrics.update(metrics.metric_state(3), pred, Y, ignore_index=255)
    for a, b in zip(state, again, strict=True):
        np.testing.assert_array_equal(a, b)
    first, second = metrics.compute(state), metrics.compute(again)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
