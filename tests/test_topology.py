"""Tests of jaxseg._topology: cldice_loss and dice_cldice.

References: a float64 NumPy soft skeleton written from MONAI's definition with SciPy's
minimum/maximum filters (out-of-image pixels take part in no window), and MONAI 1.6.1
``SoftclDiceLoss`` / ``SoftDiceclDiceLoss`` on channels-first copies (values and autograd
gradients), 2D and 3D, 1 to 4 classes.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import peers
import pytest
import references as ref
from peers import Request, assert_close

import jaxseg

ndimage = pytest.importorskip("scipy.ndimage")


def blob_labels(shape, classes, seed):
    rng = np.random.default_rng(seed)
    values = max(classes, 2)
    field = rng.standard_normal((*shape, values))
    size = (1,) + (3,) * (len(shape) - 1) + (1,)
    labels = np.argmax(ndimage.uniform_filter(field, size=size), axis=-1).astype(np.int32)
    labels[0][labels[0] == values - 1] = 0  # a class absent from sample 0
    return labels


def logits_for(shape, classes, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((*shape, classes))).astype(np.float32)


# ---------------------------------------------------------------------------------------
# float64 reference


def erode(x):
    spatial = range(1, x.ndim - 1)
    return np.minimum.reduce(
        [ndimage.minimum_filter1d(x, 3, axis=a, mode="constant", cval=np.inf) for a in spatial]
    )


def dilate(x):
    size = (1,) + (3,) * (x.ndim - 2) + (1,)
    return ndimage.maximum_filter(x, size=size, mode="constant", cval=-np.inf)


def skeleton(x, iterations):
    relu = lambda v: np.maximum(v, 0)
    skel = relu(x - dilate(erode(x)))
    for _ in range(iterations):
        x = erode(x)
        delta = relu(x - dilate(erode(x)))
        skel = skel + relu(delta - skel * delta)
    return skel


def reference_cldice(
    logits,
    labels,
    *,
    activation="softmax",
    include_background=True,
    iterations=3,
    smooth_nr=1.0,
    smooth_dr=1.0,
    smooth_harmonic=1e-4,
    reduction="mean",
):
    classes = logits.shape[-1]
    p = ref.activate(logits, activation)
    y = ref.dense_labels(labels, classes, activation)
    if not include_background and classes > 1:
        p, y = p[..., 1:], y[..., 1:]
    sp, sy = skeleton(p, iterations), skeleton(y, iterations)
    axes = tuple(range(1, p.ndim))
    prec = (np.sum(sp * y, axis=axes) + smooth_nr) / (np.sum(sp, axis=axes) + smooth_dr)
    sens = (np.sum(sy * p, axis=axes) + smooth_nr) / (np.sum(sy, axis=axes) + smooth_dr)
    loss = 1 - 2 * prec * sens / (prec + sens + smooth_harmonic)
    return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


REFERENCE_CASES = {
    "3d_no_background": ((2, 7, 6, 5), 2, dict(include_background=False, iterations=2)),
    "1d_smoothing": (
        (3, 25), 3, dict(reduction="none", iterations=0, smooth_nr=0.5, smooth_dr=0.25)),
    "2d_sigmoid_soft": ((2, 11, 12), 1, dict(activation="sigmoid", iterations=5)),
    "2d_probabilities": ((1, 9, 9), 3, dict(activation=None, smooth_harmonic=1e-2)),
}  # fmt: skip


def _inputs(shape, classes, options, seed):
    logits = logits_for(shape, classes, seed)
    labels = blob_labels(shape, classes, seed + 1)
    if options.get("activation", "softmax") is None:
        logits = ref.softmax(logits).astype(np.float32)
    if options.get("activation") == "sigmoid":  # soft dense labels
        rng = np.random.default_rng(seed + 2)
        labels = np.clip(labels[..., None] + 0.3 * rng.random((*shape, 1)), 0, 1)
        labels = labels.astype(np.float32)
    return logits, labels


@peers.family
def reference_results():
    out = {}
    for case, (shape, classes, options) in REFERENCE_CASES.items():
        logits, labels = _inputs(shape, classes, options, seed=len(out))
        cotangent = np.ones(shape[0]) if options.get("reduction") == "none" else None
        request = Request(jaxseg.cldice_loss, logits, labels, options, cotangent)
        out[case] = (request, (logits, labels))
    return out


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_matches_float64_reference(case):
    (logits, labels), (value, grad) = reference_results()[case]
    options = REFERENCE_CASES[case][2]
    expected = reference_cldice(logits, labels, **options)
    assert_close(value, expected)
    assert np.all(np.isfinite(grad))


def test_skeleton_of_thin_lines_hand_computed():
    from jaxseg._topology import soft_skeleton

    x = np.zeros((1, 9, 9, 1), np.float32)
    x[0, 4, 1:8] = 1  # a vessel one pixel wide: erosion removes it, it is its own skeleton
    valid = np.ones((1, 9, 9, 1), bool)
    out = peers.jit(functools.partial(soft_skeleton, iterations=3))(x, valid)
    assert_close(out, x)
    # Two crossing vessels: the opening keeps the 3x3 block around the crossing.
    x[0, 1:8, 2] = 1
    out = peers.jit(functools.partial(soft_skeleton, iterations=3))(x, valid)
    expected = x.copy()
    expected[0, [3, 4, 4, 5], [2, 1, 3, 2]] = 0
    assert_close(out, expected)
    assert_close(out, skeleton(x.astype(np.float64), 3))
    # A filled 5x5 square: the reference skeleton (not the square itself).
    square = np.zeros((1, 9, 9, 1), np.float32)
    square[0, 2:7, 2:7] = 1
    out = peers.jit(functools.partial(soft_skeleton, iterations=3))(square, valid)
    assert_close(out, skeleton(square.astype(np.float64), 3))
    assert 0 < np.asarray(out).sum() < square.sum()


# ---------------------------------------------------------------------------------------
# MONAI parity

# (MONAI loss, jaxseg loss, shape, classes, jaxseg options, MONAI options, label kind)
MONAI_CASES = {
    "cldice_2d_softmax": (
        "SoftclDiceLoss", "cldice", (2, 14, 12), 3, {}, dict(softmax=True), "int"),
    "cldice_3d_no_bg": (
        "SoftclDiceLoss", "cldice", (2, 8, 7, 6), 4,
        dict(include_background=False, iterations=2),
        dict(softmax=True, include_background=False, iter_=2), "int"),
    "cldice_2d_binary": (
        "SoftclDiceLoss", "cldice", (2, 12, 13), 1, dict(activation="sigmoid"),
        dict(sigmoid=True), "int"),
    "cldice_3d_none": (
        "SoftclDiceLoss", "cldice", (2, 7, 8, 6), 2, dict(reduction="none"),
        dict(softmax=True, reduction="none"), "int"),
    "dice_cldice_2d": (
        "SoftDiceclDiceLoss", "dice_cldice", (2, 14, 12), 3,
        dict(alpha=0.3, smooth_nr=0.5, smooth_dr=0.5),
        dict(softmax=True, alpha=0.3, smooth_nr=0.5, smooth_dr=0.5), "int"),
    "dice_cldice_3d_multilabel_sum": (
        "SoftDiceclDiceLoss", "dice_cldice", (2, 7, 6, 6), 2,
        dict(activation="sigmoid", reduction="sum", iterations=1),
        dict(sigmoid=True, reduction="sum", iter_=1), "multilabel"),
    "dice_cldice_2d_binary_no_bg": (
        "SoftDiceclDiceLoss", "dice_cldice", (2, 12, 11), 1,
        dict(activation="sigmoid", include_background=False),
        dict(sigmoid=True, include_background=False), "int"),
    "dice_cldice_2d_no_bg": (
        "SoftDiceclDiceLoss", "dice_cldice", (2, 12, 12), 4, dict(include_background=False),
        dict(softmax=True, include_background=False), "int"),
}  # fmt: skip
LOSSES = {"cldice": jaxseg.cldice_loss, "dice_cldice": jaxseg.dice_cldice}


@peers.family
def monai_results():
    out = {}
    for case, (_, kind, shape, classes, options, _, label_kind) in MONAI_CASES.items():
        seed = 10 + len(out)
        logits = logits_for(shape, classes, seed)
        if label_kind == "multilabel":
            rng = np.random.default_rng(seed + 1)
            field = ndimage.uniform_filter(rng.standard_normal((*shape, classes)), size=3)
            labels = dense = (field > 0.1).astype(np.float32)
        else:
            labels = blob_labels(shape, classes, seed + 1)
            dense = ref.dense_labels(labels, classes, options.get("activation", "softmax"))
        cotangent = None
        if options.get("reduction") == "none":
            cotangent = np.random.default_rng(seed).standard_normal(shape[0])
        request = Request(LOSSES[kind], logits, labels, options, cotangent)
        out[case] = (request, (logits, dense, cotangent))
    return out


@pytest.mark.parametrize("case", list(MONAI_CASES))
def test_matches_monai(case):
    name, _, _, _, _, monai_options, _ = MONAI_CASES[case]
    (logits, dense, cotangent), (value, grad) = monai_results()[case]
    expected, expected_grad = peers.monai(name, logits, dense, cotangent=cotangent, **monai_options)
    assert_close(value, expected)
    assert_close(grad, expected_grad, atol=1e-7)


# ---------------------------------------------------------------------------------------
# Masking, options, combinators


@functools.cache
def _masked_cldice():
    return peers.jit(jax.value_and_grad(functools.partial(jaxseg.cldice_loss, ignore_index=255)))


@pytest.mark.parametrize("how", ["where", "ignore_index"])
def test_excluding_a_box_equals_cropping_it(how):
    logits = logits_for((2, 12, 9), 3, 21)
    labels = blob_labels((2, 12, 9), 3, 22)
    garbage = logits.copy()
    garbage[:, 7:] = np.random.default_rng(0).choice([-1e4, 0.0, 1e4], garbage[:, 7:].shape)
    masked_labels = labels.copy()
    where = np.ones((2, 12, 9), bool)
    if how == "where":
        where[:, 7:] = False
    else:
        masked_labels[:, 7:] = 255
    fn = _masked_cldice()
    value, grad = fn(garbage, masked_labels, where=where)
    cut_value, cut_grad = fn(logits[:, :7], labels[:, :7], where=where[:, :7])
    assert_close(value, cut_value)
    assert_close(value, reference_cldice(logits[:, :7], labels[:, :7]))
    assert_close(grad[:, :7], cut_grad, atol=1e-8)
    assert np.all(np.asarray(grad[:, 7:]) == 0)


def test_dice_cldice_is_the_weighted_sum_with_a_traced_alpha():
    logits = logits_for((2, 10, 9), 3, 31)
    labels = blob_labels((2, 10, 9), 3, 32)
    dice = ref.overlap_loss("dice", logits, labels, smooth_nr=1.0, smooth_dr=1.0)
    cldice = reference_cldice(logits, labels)

    @peers.jit
    def run(x, alpha):
        fn = lambda x: jaxseg.dice_cldice(x, labels, alpha=alpha, return_components=True)
        return jax.value_and_grad(fn, has_aux=True)(x)

    grads = {}
    for alpha in (0.0, 0.25, 1.0):
        (value, parts), grads[alpha] = run(logits, alpha)
        assert_close(value, (1 - alpha) * dice + alpha * cldice)
        assert_close(parts["dice"], dice)
        assert_close(parts["cldice"], cldice)
    # The gradient is linear in alpha.
    assert_close(grads[0.25], 0.75 * grads[0.0] + 0.25 * grads[1.0], atol=1e-7)
    assert run._cache_size() == 1


def test_log_transform():
    labels = blob_labels((2, 12, 8), 2, 41)
    logits = logits_for((2, 12, 8), 2, 42)
    log_cldice = jaxseg.log_transform(jaxseg.cldice_loss)
    assert_close(log_cldice(logits, labels), -np.log(1 - reference_cldice(logits, labels)))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, y: jaxseg.cldice_loss(x, y, iterations=-1), ValueError, "iterations"),
        (lambda x, y: jaxseg.cldice_loss(x, y, iterations=2.0), TypeError, "iterations"),
        (lambda x, y: jaxseg.cldice_loss(x, y, smooth_harmonic=-1.0), ValueError, "smooth_h"),
        (lambda x, y: jaxseg.dice_cldice(x, y, alpha=1.5), ValueError, "alpha"),
        (lambda x, y: jaxseg.dice_cldice(x, y, reduction="none"), ValueError, "reduction"),
        (lambda x, y: jaxseg.cldice_loss(x, y[..., None]), ValueError, "labels"),
    ],
)
def test_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(np.zeros((1, 5, 4, 3), np.float32), np.zeros((1, 5, 4), np.int32))
