"""The fused softmax statistics against float64 numpy references (values and VJPs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseg
from jaxseg import _checks, _softmax_stats


def _reference(x, y, v, w, eps):
    """Float64 sums written from the definitions, and their VJP for given cotangents."""
    x = x.astype(np.float64)
    num_classes = x.shape[-1]
    e = np.exp(x - x.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    logp = np.log(p)
    onehot = (y[..., None] == np.arange(num_classes)).astype(np.float64)
    vv = v[..., None].astype(np.float64)
    axes = tuple(range(1, x.ndim - 1))
    yhat = (1 - eps) * onehot + eps / num_classes
    tp = (vv * p * onehot).sum(axes)
    pred_sum = (vv * p).sum(axes)
    ce = (v * -(w * yhat * logp).sum(-1)).sum(axes)
    return tp, pred_sum, ce, p, onehot, yhat


def _reference_vjp(x, y, v, w, eps, g_tp, g_pred, g_ce):
    _, _, _, p, onehot, yhat = _reference(x, y, v, w, eps)
    expand = lambda a: a.reshape(a.shape[0], *([1] * (x.ndim - 2)), a.shape[-1])
    vv = v[..., None].astype(np.float64)
    big_g = vv * (onehot * expand(g_tp) + expand(g_pred))
    dx = p * (big_g - (p * big_g).sum(-1, keepdims=True))
    weighted = w * yhat
    g_ce_pix = vv * g_ce.reshape(g_ce.shape[0], *([1] * (x.ndim - 1)))
    dx += g_ce_pix * (p * weighted.sum(-1, keepdims=True) - weighted)
    return dx


# (2, 16, 16, 4): a pixel count divisible by BLOCKS, so the sums go through the blocks.
@pytest.mark.parametrize("shape", [(2, 11, 3), (3, 6, 5, 2), (2, 4, 3, 5, 4), (2, 16, 16, 4)])
@pytest.mark.parametrize("masked", [False, True, "range"])
def test_values_and_vjp_match_float64(shape, masked):
    """``masked="range"``: labels out of range, excluded by the losses' own validity mask."""
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype(np.float32) * 3
    y = rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int32)
    v = rng.random(shape[:-1]) > 0.3 if masked else np.ones(shape[:-1], bool)
    if masked == "range":
        y = np.where(v, y, rng.choice([-1, shape[-1], 2**31 - 1, -(2**31)], size=y.shape))
        passed = _checks.valid_mask(jnp.asarray(y), shape[-1], "softmax", None, None)
    else:
        passed = jnp.asarray(v)
    w = rng.uniform(0.2, 2.0, size=shape[-1]).astype(np.float32)
    eps = np.float32(0.1)
    cot = (
        rng.normal(size=(shape[0], shape[-1])),
        rng.normal(size=(shape[0], shape[-1])),
        rng.normal(size=(shape[0],)),
    )

    def fused(x):
        s = _softmax_stats.softmax_stats(x, jnp.asarray(y), passed, jnp.asarray(w), eps)
        return s.tp, s.pred_sum, s.ce_sum

    counts = _softmax_stats.softmax_stats(
        jnp.asarray(x), jnp.asarray(y), passed, jnp.asarray(w), eps
    ).label_sum
    onehot = y[..., None] == np.arange(shape[-1])
    want_counts = (onehot & v[..., None]).sum(tuple(range(1, len(shape) - 1)))
    assert counts.dtype == jnp.int32
    np.testing.assert_array_equal(counts, want_counts)

    got, vjp = jax.vjp(jax.jit(fused), jnp.asarray(x))
    want = _reference(x, y, v, w.astype(np.float64), float(eps))[:3]
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=2e-6, atol=2e-6)
    (dx,) = vjp(tuple(jnp.asarray(c, jnp.float32) for c in cot))
    np.testing.assert_allclose(dx, _reference_vjp(x, y, v, w, float(eps), *cot), atol=2e-6)


@pytest.mark.parametrize("used", [("tp",), ("pred_sum",), ("ce_sum",), ("tp", "pred_sum")])
def test_vjp_of_a_subset_of_the_sums_matches_float64(used):
    """A loss that uses some sums only: the others' cotangents are symbolic zeros."""
    shape = (2, 16, 16, 4)
    rng = np.random.default_rng(len(used))
    x = rng.normal(size=shape).astype(np.float32) * 3
    y = rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int32)
    v = rng.random(shape[:-1]) > 0.2
    w = rng.uniform(0.2, 2.0, size=shape[-1]).astype(np.float32)
    eps = np.float32(0.05)
    cot = {
        "tp": rng.normal(size=(shape[0], shape[-1])),
        "pred_sum": rng.normal(size=(shape[0], shape[-1])),
        "ce_sum": rng.normal(size=(shape[0],)),
    }

    def loss(x):
        s = _softmax_stats.softmax_stats(x, jnp.asarray(y), jnp.asarray(v), jnp.asarray(w), eps)
        return sum(jnp.sum(getattr(s, k) * jnp.asarray(cot[k], jnp.float32)) for k in used)

    dx = jax.jit(jax.grad(loss))(jnp.asarray(x))
    zeroed = {k: c if k in used else np.zeros_like(c) for k, c in cot.items()}
    want = _reference_vjp(
        x, y, v, w, float(eps), zeroed["tp"], zeroed["pred_sum"], zeroed["ce_sum"]
    )
    np.testing.assert_allclose(dx, want, atol=2e-6)


def test_fused_and_generic_paths_agree_with_each_other():
    """4 classes take the fused pass, dense one-hot labels the generic core."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 9, 7, 4)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 4, size=(3, 9, 7)))
    dense = jax.nn.one_hot(y, 4)
    assert _softmax_stats.applies("softmax", y, 4) and not _softmax_stats.applies(
        "softmax", dense, 4
    )
    for loss in (jaxseg.dice_loss, jaxseg.cross_entropy):
        v_int, g_int = jax.value_and_grad(loss)(x, y)
        v_dense, g_dense = jax.value_and_grad(loss)(x, dense)
        np.testing.assert_allclose(v_int, v_dense, rtol=1e-6)
        np.testing.assert_allclose(g_int, g_dense, atol=1e-7)


def test_many_classes_take_the_generic_path_and_stay_correct():
    rng = np.random.default_rng(1)
    num_classes = _softmax_stats.MAX_FUSED_CLASSES + 3
    x = rng.normal(size=(2, 10, num_classes)).astype(np.float32)
    y = rng.integers(0, num_classes, size=(2, 10))
    assert not _softmax_stats.applies("softmax", jnp.asarray(y), num_classes)
    tp, pred_sum, _, _, onehot, _ = _reference(
        x, y, np.ones((2, 10), bool), np.ones(num_classes), 0.0
    )
    label_sum = onehot.sum(1)
    want = np.mean(1 - (2 * tp + 1e-5) / (pred_sum + label_sum + 1e-5))
    np.testing.assert_allclose(jaxseg.dice_loss(x, y), want, rtol=1e-5)


def test_dice_ce_computes_the_softmax_pass_once():
    """Dice and CE share the fused pass: the compiled program has one softmax pass's exps."""
    x = jnp.zeros((2, 16, 16, 4))
    y = jnp.zeros((2, 16, 16), jnp.int32)
    count = lambda f: (
        jax.jit(jax.value_and_grad(f)).lower(x, y).compile().as_text().count("exponential(")
    )
    assert count(jaxseg.dice_ce) == count(jaxseg.dice_loss)


def test_sums_over_many_pixels_keep_float32_precision():
    """Blocked sums over 2**18 pixels per sample stay within 1e-6 of float64."""
    rng = np.random.default_rng(7)
    shape = (2, 512, 512, 4)
    x = (rng.normal(size=shape) * 2).astype(np.float32)
    y = rng.integers(0, 4, size=shape[:-1]).astype(np.int32)
    v = np.ones(shape[:-1], bool)
    w = np.ones(4, np.float32)
    s = jax.jit(_softmax_stats.softmax_stats)(
        jnp.asarray(x), jnp.asarray(y), jnp.asarray(v), jnp.asarray(w), jnp.float32(0)
    )
    want = _reference(x, y, v, w.astype(np.float64), 0.0)[:3]
    for got, ref in zip((s.tp, s.pred_sum, s.ce_sum), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-6)
