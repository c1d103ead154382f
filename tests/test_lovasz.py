"""Tests of jaxseg._lovasz: Lovász-Softmax and Lovász hinge losses.

Oracles: a float64 NumPy implementation written here from Berman et al. 2018 (the
Jaccard set function evaluated on each prefix of the sorted errors, no cumulative-sum
shortcut; excluded pixels are sliced out), and segmentation_models_pytorch's
``LovaszLoss`` (Berman's reference code) on channels-first float32 copies, values and
gradients.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import peers
import pytest
import references as ref
from peers import assert_close

import jaxseg

# ---------------------------------------------------------------------------------------
# Float64 reference, from the paper


def jaccard_set_loss(fg, chosen):
    """Delta_J(M) = |M| / |{y = c} u M| for the set M of chosen (mispredicted) pixels."""
    union = np.count_nonzero(fg | chosen)
    return np.count_nonzero(chosen) / union if union else 0.0


def lovasz_extension(errors, fg, order=None):
    """Value and gradient (w.r.t. ``errors``) of the Lovász extension of Delta_J.

    Errors sorted in decreasing order pi; g_i = Delta(pi_1..i) - Delta(pi_1..i-1).
    ``order`` is pi (default: decreasing error, ties in index order).
    """
    grad = np.zeros_like(errors)
    chosen = np.zeros(fg.shape, bool)
    previous = 0.0
    for i in np.argsort(-errors, kind="stable") if order is None else order:
        chosen[i] = True
        current = jaccard_set_loss(fg, chosen)
        grad[i], previous = current - previous, current
    return float(errors @ grad), grad


def _groups(batch, per_image):
    return [np.s_[b] for b in range(batch)] if per_image else [np.s_[:]]


def lovasz_softmax_reference(
    logits, labels, *, per_image=False, classes="present", activation="softmax",
    class_weights=None, ignore_index=None, where=None,
):  # fmt: skip
    """Loss and gradient w.r.t. the logits; returns also the (group, class) losses."""
    x = np.asarray(logits, np.float64)
    num_classes = x.shape[-1]
    p = ref.activate(x, activation)
    y = ref.dense_labels(labels, num_classes, activation) > 0.5
    valid = ref.valid_mask(labels, num_classes, activation, ignore_index, where)
    w = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
    dp = np.zeros_like(p)
    values, table = [], []
    for idx in _groups(x.shape[0], per_image):
        v = valid[idx]
        row = np.zeros(num_classes)
        table.append(row)
        if not v.any():
            continue
        probs, fg = p[idx][v], y[idx][v]  # the excluded pixels are sliced out
        numerator, denominator = 0.0, 0.0
        grad = np.zeros_like(probs)
        for c in range(num_classes):
            if classes == "present" and not fg[:, c].any():
                continue
            if not isinstance(classes, str) and c not in classes:
                continue
            value, g = lovasz_extension(np.abs(fg[:, c] - probs[:, c]), fg[:, c])
            row[c] = w[c] * value
            numerator += w[c] * value
            denominator += w[c]
            grad[:, c] = w[c] * g * np.sign(probs[:, c] - fg[:, c])
        values.append(numerator / denominator if denominator else 0.0)
        block = np.zeros(p[idx].shape)
        block[v] = grad / denominator if denominator else 0.0
        dp[idx] += block
    count = max(len(values), 1)
    dp /= count
    if activation == "softmax":
        dx = p * (dp - (p * dp).sum(-1, keepdims=True))
    elif activation == "sigmoid":
        dx = p * (1 - p) * dp
    else:
        dx = dp
    return sum(values) / count, dx, np.array(table)


def lovasz_hinge_reference(logits, labels, *, per_image=True, ignore_index=None, where=None):
    """Berman's Eq. (10): the Lovász extension of Delta_J at m = max(1 - x s, 0)."""
    x = np.asarray(logits, np.float64)[..., 0]
    y = ref.dense_labels(labels, 1, "sigmoid")[..., 0] > 0.5
    valid = ref.valid_mask(labels, 1, "sigmoid", ignore_index, where)
    dx = np.zeros_like(x)
    values = []
    for idx in _groups(x.shape[0], per_image):
        v = valid[idx]
        if not v.any():
            continue  # jaxseg: an image without valid pixels leaves the mean
        signs = 2.0 * y[idx][v] - 1
        errors = 1 - x[idx][v] * signs
        value, g = lovasz_extension(np.maximum(errors, 0), y[idx][v])
        values.append(value)
        block = np.zeros(x[idx].shape)
        block[v] = -g * (errors > 0) * signs
        dx[idx] += block
    count = max(len(values), 1)
    return sum(values) / count, (dx / count)[..., None]


# ---------------------------------------------------------------------------------------
# segmentation_models_pytorch (only its losses subpackage: its __init__ needs torchvision)


def smp_lovasz(logits, labels, *, mode, **options):
    """smp ``LovaszLoss(mode, **options)`` on channels-first float32 copies: value, grad.

    (Its Lovász gradient is cast with ``.float()``, so float64 inputs fail there.)
    """
    torch = peers.torch()
    name = "segmentation_models_pytorch"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
            pytest.skip("segmentation_models_pytorch is a test oracle only")
        stub = types.ModuleType(name)  # a parent package without its __init__
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = stub
    losses = importlib.import_module(f"{name}.losses")
    x = torch.tensor(peers.channels_first(logits).astype(np.float32), requires_grad=True)
    target = torch.tensor(np.asarray(labels).astype(np.int64))
    if mode == "binary":
        target = target[:, None]
    out = losses.LovaszLoss(mode=mode, **options)(x, target)
    out.backward()
    return float(out.detach()), peers.channels_last(x.grad.numpy()).astype(np.float64)


# ---------------------------------------------------------------------------------------
# Data


def _data(shape, classes, seed, absent=(), ignore=None):
    logits = ref.random_logits(classes=classes, shape=shape, seed=seed)
    labels = ref.random_labels(classes=max(classes, 2), shape=shape, seed=seed + 1)
    labels = ref.with_empty_classes(labels, absent)
    if ignore is not None:
        drop = np.random.default_rng(seed + 2).random(shape) < 0.2
        labels = np.where(drop, ignore, labels).astype(np.int32)
    return logits, labels


def _where(shape, seed=5):
    return np.random.default_rng(seed).random(shape) > 0.25


# Class 3 absent from the whole batch (or from image 0), so "present" matters.
BATCH = _data((2, 6, 7), 4, 0, absent=[(0, 3), (1, 3)])
PER_IMAGE = _data((2, 6, 7), 4, 10, absent=[(0, 2)], ignore=255)


def test_softmax_batch_matches_reference_and_smp():
    logits, labels = BATCH
    got = peers.jaxseg_value_and_grad(jaxseg.lovasz_softmax_loss, logits, labels)
    want = lovasz_softmax_reference(logits, labels)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])
    smp = smp_lovasz(logits, labels, mode="multiclass", per_image=False)
    assert_close(got[0], smp[0])
    assert_close(got[1], smp[1])


def test_softmax_per_image_ignore_index_matches_reference_and_smp():
    logits, labels = PER_IMAGE
    options = dict(per_image=True, ignore_index=255)
    got = peers.jaxseg_value_and_grad(jaxseg.lovasz_softmax_loss, logits, labels, **options)
    want = lovasz_softmax_reference(logits, labels, **options)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])
    smp = smp_lovasz(logits, labels, mode="multiclass", per_image=True, ignore_index=255)
    assert_close(got[0], smp[0])
    assert_close(got[1], smp[1])


ALL_CASE = dict(
    classes="all", class_weights=np.array([0.5, 2.0, 1.0], np.float32),
    where=_where((2, 4, 3, 5)),
)  # fmt: skip
REFERENCE_CASES = {
    "all_where_class_weights_3d": (_data((2, 4, 3, 5), 3, 20, absent=[(0, 1)]), ALL_CASE),
    "listed_sigmoid_per_image_1d": (
        _data((3, 11), 3, 30, absent=[(1, 2)]),
        dict(classes=(1, 2), activation="sigmoid", per_image=True),
    ),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_softmax_options_match_reference(case):
    (logits, labels), options = REFERENCE_CASES[case]
    got = peers.jaxseg_value_and_grad(jaxseg.lovasz_softmax_loss, logits, labels, **options)
    want = lovasz_softmax_reference(logits, labels, **options)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_hinge_per_image_ignore_index_matches_reference_and_smp():
    logits, labels = _data((3, 5, 6), 1, 40, ignore=2)
    got = peers.jaxseg_value_and_grad(jaxseg.lovasz_hinge_loss, logits, labels, ignore_index=2)
    want = lovasz_hinge_reference(logits, labels, ignore_index=2)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])
    smp = smp_lovasz(logits, labels, mode="binary", per_image=True, ignore_index=2)
    assert_close(got[0], smp[0])
    assert_close(got[1], smp[1])


def test_hinge_batch_where_matches_reference_and_smp_ignore_index():
    """``where`` excluding the pixels labelled 2 equals smp's ``ignore_index=2``."""
    logits, labels = _data((2, 4, 3, 5), 1, 50, ignore=2)
    options = dict(per_image=False, where=labels != 2)
    got = peers.jaxseg_value_and_grad(jaxseg.lovasz_hinge_loss, logits, labels, **options)
    want = lovasz_hinge_reference(logits, labels, **options)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])
    smp = smp_lovasz(logits, labels, mode="binary", per_image=False, ignore_index=2)
    assert_close(got[0], smp[0])
    assert_close(got[1], smp[1])


# ---------------------------------------------------------------------------------------
# Masking, empty classes, labels


def test_masked_equals_sliced():
    """Extra pixels excluded by ``where`` (any logits, any labels) change nothing."""
    logits, labels = BATCH
    rng = np.random.default_rng(3)
    pad_x = 5 * rng.standard_normal((2, 6, 3, 4)).astype(np.float32)
    pad_y = rng.integers(0, 4, (2, 6, 3)).astype(np.int32)
    padded_x = np.concatenate([logits, pad_x], axis=2)
    padded_y = np.concatenate([labels, pad_y], axis=2)
    where = np.arange(10).reshape(1, 1, 10) < 7
    where = np.broadcast_to(where, padded_y.shape)
    masked = peers.jaxseg_value_and_grad(
        jaxseg.lovasz_softmax_loss, padded_x, padded_y, where=where
    )
    sliced = peers.jaxseg_value_and_grad(jaxseg.lovasz_softmax_loss, logits, labels)
    assert_close(masked[0], sliced[0])
    assert_close(masked[1][:, :, :7], sliced[1])
    assert_close(masked[1][:, :, 7:], np.zeros(masked[1][:, :, 7:].shape))


def test_nothing_valid_gives_zero_and_zero_gradient():
    (logits, labels), options = REFERENCE_CASES["all_where_class_weights_3d"]
    options = dict(options, where=np.zeros_like(options["where"]))
    value, grad = peers.jaxseg_value_and_grad(jaxseg.lovasz_softmax_loss, logits, labels, **options)
    assert value == 0.0 and np.all(grad == 0.0)
    logits, labels = PER_IMAGE
    value, grad = peers.jaxseg_value_and_grad(
        jaxseg.lovasz_softmax_loss, logits, np.full_like(labels, 255), per_image=True,
        ignore_index=255,
    )  # fmt: skip
    assert value == 0.0 and np.all(grad == 0.0)


def test_image_without_valid_pixels_leaves_the_per_image_mean():
    logits, labels = PER_IMAGE
    labels = labels.copy()
    labels[1] = 255
    value, _ = peers.jaxseg_value_and_grad(
        jaxseg.lovasz_softmax_loss, logits, labels, per_image=True, ignore_index=255
    )
    want = lovasz_softmax_reference(logits[:1], labels[:1], per_image=True, ignore_index=255)
    assert_close(value, want[0])


def test_dense_one_hot_labels_equal_integer_labels():
    logits, labels = BATCH
    dense = ref.dense_labels(labels, 4, "softmax").astype(np.float32)
    got = peers.jaxseg_value_and_grad(jaxseg.lovasz_softmax_loss, logits, dense)
    want = peers.jaxseg_value_and_grad(jaxseg.lovasz_softmax_loss, logits, labels)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_reduction_none_and_sum():
    logits, labels = PER_IMAGE
    options = dict(per_image=True, ignore_index=255)
    table = jaxseg.lovasz_softmax_loss(logits, labels, reduction="none", **options)
    assert table.shape == (2, 4)
    assert_close(table, lovasz_softmax_reference(logits, labels, **options)[2])
    assert table[0, 2] == 0.0  # class 2 is absent from image 0
    total = jaxseg.lovasz_softmax_loss(logits, labels, reduction="sum", **options)
    assert_close(total, np.sum(table))


# ---------------------------------------------------------------------------------------
# Transformations and errors


def test_jit_vmap_grad():
    logits, labels = BATCH
    stacked_x = np.stack([logits, logits[:, ::-1]])
    stacked_y = np.stack([labels, labels[:, ::-1]])
    loss = jax.value_and_grad(jaxseg.lovasz_softmax_loss)
    values, grads = jax.jit(jax.vmap(loss))(stacked_x, stacked_y)
    for i in range(2):
        value, grad = peers.jaxseg_value_and_grad(
            jaxseg.lovasz_softmax_loss, stacked_x[i], stacked_y[i]
        )
        assert_close(values[i], value)
        assert_close(grads[i], grad)


def test_returns_float32_scalar_for_bfloat16_logits():
    logits, labels = BATCH
    value = jaxseg.lovasz_softmax_loss(jnp.asarray(logits, jnp.bfloat16), labels)
    assert value.dtype == jnp.float32 and value.shape == ()


def test_errors():
    logits, labels = BATCH
    with pytest.raises(ValueError, match="classes"):
        jaxseg.lovasz_softmax_loss(logits, labels, classes="some")
    with pytest.raises(ValueError, match="classes"):
        jaxseg.lovasz_softmax_loss(logits, labels, classes=(0, 4))
    with pytest.raises(ValueError, match="per_image"):
        jaxseg.lovasz_softmax_loss(logits, labels, per_image="yes")
    with pytest.raises(ValueError, match="class_weights"):
        jaxseg.lovasz_softmax_loss(logits, labels, class_weights=np.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        jaxseg.lovasz_softmax_loss(logits, labels, reduction="max")
    with pytest.raises(ValueError, match="one binary channel"):
        jaxseg.lovasz_hinge_loss(logits, labels)
    with pytest.raises(ValueError, match="labels"):
        jaxseg.lovasz_hinge_loss(logits[..., :1], labels[:, :-1])


def test_tied_errors_keep_the_value_and_share_the_mean_gradient():
    """Ties: any order gives the same value; tied pixels of one label share the mean g."""
    from jaxseg import _lovasz

    rng = np.random.default_rng(3)
    n = 600
    errors = np.round(rng.random(n) * 4) / 4  # five distinct values: many ties
    fg = rng.random(n) > 0.6
    valid = rng.random(n) > 0.2
    e, f = errors[valid], fg[valid]
    want_value, _ = lovasz_extension(e, f)
    # Reference gradient for the order "decreasing error, foreground first in a tie",
    # then averaged over each run of equal (error, label).
    _, grad = lovasz_extension(e, f, order=np.lexsort((~f, -e)))
    for value in np.unique(e):
        for label in (True, False):
            run = (e == value) & (f == label)
            grad[run] = grad[run].mean() if run.any() else 0
    want_grad = np.zeros(n)
    want_grad[valid] = grad

    def loss(x):
        return _lovasz._lovasz_flat(x, jnp.asarray(fg), jnp.asarray(valid), False)

    value, got_grad = jax.value_and_grad(loss)(jnp.asarray(errors, jnp.float32))
    assert_close(value, want_value)
    assert_close(got_grad, want_grad)


def test_float64_errors_are_ordered_at_float64_precision():
    """Errors 1e-12 apart (equal in float32) keep their order: no averaging across them."""
    from jaxseg import _lovasz

    rng = np.random.default_rng(4)
    n = 200
    errors = 0.5 + rng.permutation(n) * 1e-12  # distinct in float64, one value in float32
    fg = rng.random(n) > 0.5
    valid = np.ones(n, bool)
    want_value, want_grad = lovasz_extension(errors, fg)
    with jax.enable_x64(True):
        loss = lambda x: _lovasz._lovasz_flat(x, jnp.asarray(fg), jnp.asarray(valid), False)
        value, grad = jax.value_and_grad(loss)(jnp.asarray(errors, jnp.float64))
        assert grad.dtype == jnp.float64
        np.testing.assert_allclose(float(value), want_value, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-12, atol=1e-15)
