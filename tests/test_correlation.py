"""Tests of jaxseg._correlation: the Matthews correlation coefficient loss.

Oracles: MONAI 1.6 ``MCCLoss`` (values and gradients on channels-first float64 copies),
segmentation_models_pytorch's ``MCCLoss`` (binary, whole batch), and a float64 NumPy
reference written from the formula below with its own confusion sums.
"""

from __future__ import annotations

import functools
import importlib
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


def mcc_reference(
    logits,
    labels,
    *,
    activation="softmax",
    smooth_nr=0.0,
    smooth_dr=1e-5,
    include_background=True,
    batch=False,
    class_weights=None,
    ignore_index=None,
    where=None,
    reduction="mean",
):
    """1 - (tp tn - fp fn + s_nr) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn) + s_dr); 0 if fp=fn=0."""
    num_classes = np.shape(logits)[-1]
    p = ref.activate(logits, activation)
    y = ref.dense_labels(labels, num_classes, activation)
    v = ref.valid_mask(labels, num_classes, activation, ignore_index, where)[..., None]
    axes = tuple(range(1, p.ndim - 1))
    tp = (v * p * y).sum(axes)
    tn = (v * (1 - p) * (1 - y)).sum(axes)
    fp = (v * p * (1 - y)).sum(axes)
    fn = (v * (1 - p) * y).sum(axes)
    if batch:
        tp, tn, fp, fn = (s.sum(0) for s in (tp, tn, fp, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        mcc = (tp * tn - fp * fn + smooth_nr) / np.sqrt(
            (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn) + smooth_dr
        )
    loss = np.where((fp == 0) & (fn == 0), 0.0, 1 - mcc)
    w = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
    if not include_background:
        loss, w = loss[..., 1:], w[1:]
    w = np.broadcast_to(w, loss.shape)
    if reduction == "none":
        return w * loss
    if reduction == "sum":
        return (w * loss).sum()
    return (w * loss).sum() / w.sum()


def _labels(kind, ndim, classes, seed=1):
    if kind == "soft":
        return ref.soft_labels(ndim, classes, seed)
    return ref.random_labels(ndim, classes, seed)


# case: (ndim, classes, activation, labels, jaxseg options, MONAI options)
MONAI_CASES = {
    "2d-3-classes": (2, 3, "softmax", "int", {}, {}),
    "3d-4-classes-batch": (3, 4, "softmax", "int", {"batch": True}, {"batch": True}),
    "2d-6-classes-generic-path": (2, 6, "softmax", "int", {}, {}),
    "3d-2-classes-no-background": (
        3,
        2,
        "softmax",
        "int",
        {"include_background": False},
        {"include_background": False},
    ),
    "2d-sigmoid-binary": (2, 1, "sigmoid", "int", {}, {}),
    "3d-sigmoid-binary-batch": (3, 1, "sigmoid", "int", {"batch": True}, {"batch": True}),
    "2d-sigmoid-3-channels": (2, 3, "sigmoid", "int", {}, {}),
    "3d-soft-labels": (3, 3, "softmax", "soft", {}, {}),
    "2d-probabilities-none": (2, 3, None, "int", {"reduction": "none"}, {"reduction": "none"}),
    "3d-smoothing-sum": (
        3,
        3,
        "softmax",
        "int",
        {"smooth_nr": 0.5, "smooth_dr": 2.0, "reduction": "sum"},
        {"smooth_nr": 0.5, "smooth_dr": 2.0, "reduction": "sum"},
    ),
}


def _case_data(ndim, classes, activation, labels):
    x = ref.random_logits(ndim, classes, seed=ndim + classes)
    if activation is None:
        x = ref.softmax(x).astype(np.float32)
    return x, _labels(labels, ndim, classes)


@peers.family
def monai_family():
    built = {}
    for case, (ndim, classes, activation, labels, options, _) in MONAI_CASES.items():
        x, y = _case_data(ndim, classes, activation, labels)
        options = dict(options, activation=activation)
        cotangent = None
        if options.get("reduction") == "none":
            shape = np.shape(mcc_reference(x, y, **options))
            cotangent = np.random.default_rng(7).uniform(0.5, 1.5, shape).astype(np.float32)
        built[case] = (peers.Request(jaxseg.mcc_loss, x, y, options, cotangent), (x, y, cotangent))
    return built


@pytest.mark.parametrize("case", list(MONAI_CASES))
def test_mcc_matches_monai_and_reference(case):
    ndim, classes, activation, labels, options, monai_options = MONAI_CASES[case]
    (x, y, cotangent), (value, grad) = monai_family()[case]
    flags = {"softmax": {"softmax": True}, "sigmoid": {"sigmoid": True}, None: {}}[activation]
    if ref.is_integer(y) and classes > 1:
        flags["to_onehot_y"] = True
    m_value, m_grad = peers.monai("MCCLoss", x, y, cotangent=cotangent, **flags, **monai_options)
    assert np.all(np.isfinite(grad))
    assert_close(value, m_value.reshape(value.shape))
    assert_close(grad, m_grad)
    assert_close(value, mcc_reference(x, y, activation=activation, **options))


MASK_CASES = {
    "ignore-index-2d": (2, 3, {"ignore_index": 1}),
    "where-3d-batch": (3, 4, {"batch": True}),
    "weights-no-background-2d": (
        2,
        4,
        {"class_weights": np.array([1.0, 2.0, 0.5, 1.5], np.float32), "include_background": False},
    ),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_mcc_masks_and_weights_match_reference(case):
    ndim, classes, options = MASK_CASES[case]
    x = ref.random_logits(ndim, classes, seed=3)
    y = ref.random_labels(ndim, classes, seed=4)
    if case.startswith("where"):
        options = dict(options, where=np.random.default_rng(5).random(y.shape) > 0.3)
    got = jaxseg.mcc_loss(x, y, **options)
    assert_close(got, mcc_reference(x, y, **options))


def test_perfect_prediction_is_zero_and_zero_denominator_is_finite():
    labels = np.array([[0, 1, 1, 0], [0, 0, 0, 0]], np.int32)
    probs = (labels[..., None] == np.arange(2)).astype(np.float32)
    # Sample 1 has no foreground: tp = 0, so (tp+fp)(tp+fn) = 0, yet fp = fn = 0.
    loss = jaxseg.mcc_loss(probs, labels, activation=None, smooth_dr=0.0, reduction="none")
    assert_close(loss, np.zeros((2, 2)))
    # A prediction that is empty where the label is not: the denominator is 0 with
    # smooth_dr = 0; MCC 0 (loss 1), a finite gradient (MONAI gives 0/0 = NaN).
    empty = np.zeros((1, 4, 1), np.float32)
    value, grad = jax.value_and_grad(
        lambda p: jaxseg.mcc_loss(p, labels[:1], activation=None, smooth_dr=0.0)
    )(empty)
    assert_close(value, 1.0)
    assert np.all(np.isfinite(grad))


def test_large_volume_does_not_overflow():
    # (tp + fp)(tp + fn)(tn + fp)(tn + fn) ~ (5e9)^4 overflows float32 unscaled.
    stats = jaxseg.OverlapStats(
        tp=jnp.array([4e9]), fp=jnp.array([1e9]), fn=jnp.array([1e9]), total=jnp.array([1e10])
    )
    from jaxseg._correlation import mcc_score

    tp, fp, fn, tn = 4e9, 1e9, 1e9, 4e9
    expected = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert_close(mcc_score(stats, 0.0, 1e-5), [expected])


def _smp_losses():
    peers.torch()
    name = "segmentation_models_pytorch"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
            pytest.skip("segmentation_models_pytorch is a test oracle only")
        stub = types.ModuleType(name)  # a parent package without its __init__ (torchvision)
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = stub
    return importlib.import_module(f"{name}.losses")


@pytest.mark.parametrize("ndim", [2, 3])
def test_smp_mcc_is_binary_batch_mcc(ndim):
    """smp ``MCCLoss(eps)``: one MCC over the whole batch, eps added to each of the four
    entries; with eps = 0 it is ``mcc_loss(batch=True, smooth_nr=0, smooth_dr=0)``."""
    torch = peers.torch()
    x = ref.random_logits(ndim, 1, seed=11)
    y = ref.random_labels(ndim, 1, seed=12)
    probs = ref.sigmoid(x)
    got = jaxseg.mcc_loss(x, y, activation="sigmoid", batch=True, smooth_nr=0.0, smooth_dr=0.0)
    smp = _smp_losses().MCCLoss(eps=0.0)
    expected = smp(torch.tensor(probs[..., 0]), torch.tensor(y.astype(np.float64)))
    assert_close(got, float(expected))
    # smp's default eps = 1e-5 on each entry moves the value by O(eps / n) only.
    default = float(_smp_losses().MCCLoss()(torch.tensor(probs[..., 0]), torch.tensor(y * 1.0)))
    assert abs(default - float(got)) < 1e-5


def test_combinators_compose_mcc():
    x = ref.random_logits(2, 3, seed=21)
    y = ref.random_labels(2, 3, seed=22)
    dice = ref.overlap_loss("dice", x, y, smooth_nr=1e-5, smooth_dr=1e-5)
    mcc = mcc_reference(x, y)
    combined = jaxseg.combine(jaxseg.dice_loss, jaxseg.mcc_loss, weights=(1.0, 0.5))
    total, parts = jaxseg.with_components(combined)(x, y)
    assert_close(total, dice + 0.5 * mcc)
    assert_close(parts["mcc_loss"], mcc)
    logged = jaxseg.log_transform(jaxseg.mcc_loss)(x, y)
    assert_close(logged, -np.log(1 - mcc))
    # Deep supervision: the second scale sees the labels at its centres (factor 2).
    small = ref.random_logits(2, 3, seed=23, shape=(2, 3, 3))
    supervised = jaxseg.deep_supervision(jaxseg.mcc_loss, weights=(0.75, 0.25))
    got = supervised([x, small], y)
    assert_close(got, 0.75 * mcc + 0.25 * mcc_reference(small, y[:, 1::2, 1::2]))
    grad = jax.grad(lambda z: combined(z, y))(jnp.asarray(x))
    assert np.all(np.isfinite(grad))


@functools.cache
def _sharded():
    return jax.vmap(
        lambda x, y: jaxseg.mcc_loss(x, y, batch=True, axis_name="devices"),
        axis_name="devices",
    )


def test_axis_name_batch_equals_whole_batch():
    x = ref.random_logits(2, 3, seed=31, shape=(4, 5, 6))
    y = ref.random_labels(2, 3, seed=32, shape=(4, 5, 6))
    per_device = _sharded()(x.reshape(2, 2, 5, 6, 3), y.reshape(2, 2, 5, 6))
    whole = mcc_reference(x, y, batch=True)
    assert_close(per_device, np.full(2, whole))


def test_bad_inputs_raise_with_the_argument_name():
    x = np.zeros((1, 4, 3), np.float32)
    y = np.zeros((1, 4), np.int32)
    with pytest.raises(ValueError, match="labels"):
        jaxseg.mcc_loss(x, np.zeros((1, 5), np.int32))
    with pytest.raises(ValueError, match="smooth_dr"):
        jaxseg.mcc_loss(x, y, smooth_dr=-1.0)
    with pytest.raises(ValueError, match="class_weights"):
        jaxseg.mcc_loss(x, y, class_weights=np.ones(2))
    with pytest.raises(ValueError, match="include_background"):
        jaxseg.mcc_loss(x[..., :1], y, activation="sigmoid", include_background=False)
