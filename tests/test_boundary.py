"""Tests of jaxseg._boundary: boundary_loss and hausdorff_dt_loss.

References: float64 NumPy written from the formulas with SciPy's exact distance
transform (values and the analytic gradient through the activation), and MONAI 1.6.1
``BoundaryLoss``, ``HausdorffDTLoss``, ``LogHausdorffDTLoss`` on channels-first copies
(values and autograd gradients). Labels are blobs (a smoothed random field's argmax),
with classes absent from some samples and, for one channel, a sample filled by the
foreground: the empty and full conventions are exercised by every parity case.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import peers
import pytest
import references as ref
from peers import Request, assert_close

import jaxseg

ndimage = pytest.importorskip("scipy.ndimage")


# ---------------------------------------------------------------------------------------
# Data


def blob_labels(shape, classes, seed):
    """Integer labels ``(batch, *spatial)``: blobs of ``classes`` values (0/1 for one)."""
    rng = np.random.default_rng(seed)
    values = max(classes, 2)
    field = rng.standard_normal((*shape, values))
    size = (1,) + (3,) * (len(shape) - 1) + (1,)
    field = ndimage.uniform_filter(field, size=size)
    labels = np.argmax(field, axis=-1).astype(np.int32)
    labels[0][labels[0] == values - 1] = 0  # the last class is absent from sample 0
    if classes == 1 and shape[0] > 1:
        labels[1] = 1  # a full foreground: no interface, the zero map
    return labels


def logits_for(shape, classes, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((*shape, classes))).astype(np.float32)


def one_hot(labels, classes, activation):
    return ref.dense_labels(labels, classes, activation)


# ---------------------------------------------------------------------------------------
# float64 references (SciPy distance transform)


def distance_to(targets):
    """Distance from every pixel to the nearest True pixel of ``targets`` (inf if none)."""
    if not targets.any():
        return np.full(targets.shape, np.inf)
    return ndimage.distance_transform_edt(~targets)


def reference_maps(mask, valid):
    """(signed map, contour field) of one binary map among the valid pixels."""
    inside, outside = mask & valid, ~mask & valid
    if not inside.any() or not outside.any():
        zero = np.zeros(mask.shape)
        return zero, zero
    d_out, d_in = distance_to(outside), distance_to(inside)
    signed = np.where(mask, 1 - d_out, d_in) * valid
    field = np.where(mask, d_out, d_in) * valid
    return signed, field


def activation_vjp(logits, grad_p, activation):
    """Gradient w.r.t. the logits from the gradient w.r.t. the probabilities."""
    p = ref.activate(logits, activation)
    if activation == "softmax":
        return p * (grad_p - np.sum(grad_p * p, axis=-1, keepdims=True))
    if activation == "sigmoid":
        return grad_p * p * (1 - p)
    return grad_p


def reference_loss(
    kind,
    logits,
    labels,
    *,
    activation="softmax",
    include_background=None,
    alpha=2.0,
    ignore_index=None,
    where=None,
):
    """``(value, gradient)`` of the batch and class mean, float64, from the formulas."""
    if include_background is None:
        include_background = kind == "boundary"
    classes = logits.shape[-1]
    p = ref.activate(logits, activation)
    y = one_hot(labels, classes, activation) if ref.is_integer(labels) else labels
    y = np.asarray(y, np.float64)
    valid = ref.valid_mask(labels, classes, activation, ignore_index, where)
    kept = range(0 if include_background or classes == 1 else 1, classes)
    values, grad_p = [], np.zeros_like(p)
    for b in range(p.shape[0]):
        count = valid[b].sum()
        for c in kept:
            signed, label_field = reference_maps(y[b, ..., c] > 0.5, valid[b])
            if kind == "boundary":
                term, dterm = p[b, ..., c] * signed, signed
            else:
                pred_field = reference_maps(p[b, ..., c] > 0.5, valid[b])[1]
                distance = pred_field**alpha + label_field**alpha
                err = p[b, ..., c] - y[b, ..., c]
                term, dterm = err**2 * distance, 2 * err * distance
            values.append(np.sum(term * valid[b]) / count if count else 0.0)
            grad_p[b, ..., c] = dterm * valid[b] / count if count else 0.0
    n = len(values)
    return np.mean(values), activation_vjp(logits, grad_p / n, activation)


# ---------------------------------------------------------------------------------------
# float64 references: values and gradients, integer and dense labels, masks

REFERENCE_CASES = {
    "boundary_3d_no_bg": ("boundary", (2, 7, 6, 5), 4, dict(include_background=False)),
    "boundary_sigmoid": ("boundary", (2, 9, 11), 1, dict(activation="sigmoid")),
    "boundary_ignore": ("boundary", (2, 12, 10), 3, dict(ignore_index=7)),
    "boundary_where_3d": ("boundary", (2, 6, 7, 5), 2, dict(where=True)),
    "hausdorff_3d_alpha": ("hausdorff", (2, 7, 6, 5), 2, dict(alpha=1.5)),
    "hausdorff_1d": ("hausdorff", (3, 23), 3, dict(include_background=True)),
    "hausdorff_where_dense": ("hausdorff", (2, 10, 9), 3, dict(where=True, dense=True)),
    "hausdorff_sigmoid_ignore": (
        "hausdorff",
        (2, 9, 11),
        1,
        dict(activation="sigmoid", ignore_index=3),
    ),
}
LOSSES = {"boundary": jaxseg.boundary_loss, "hausdorff": jaxseg.hausdorff_dt_loss}


def _reference_inputs(shape, classes, options, seed):
    options = dict(options)
    logits = logits_for(shape, classes, seed)
    labels = blob_labels(shape, classes, seed + 1)
    rng = np.random.default_rng(seed + 2)
    if options.get("ignore_index") is not None:
        labels = np.where(rng.random(shape) < 0.15, options["ignore_index"], labels)
    if options.pop("where", False):
        options["where"] = rng.random(shape) < 0.8
    if options.pop("dense", False):
        labels = one_hot(labels, classes, options.get("activation", "softmax")).astype(np.float32)
    return logits, labels, options


@peers.family
def reference_results():
    out = {}
    for case, (kind, shape, classes, options) in REFERENCE_CASES.items():
        logits, labels, opts = _reference_inputs(shape, classes, options, seed=len(out))
        out[case] = (Request(LOSSES[kind], logits, labels, opts), (kind, logits, labels, opts))
    return out


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_matches_float64_reference(case):
    (kind, logits, labels, options), (value, grad) = reference_results()[case]
    expected, expected_grad = reference_loss(kind, logits, labels, **options)
    assert_close(value, expected)
    assert_close(grad, expected_grad, atol=1e-7)
    if "where" in options or "ignore_index" in options:
        valid = ref.valid_mask(
            labels,
            logits.shape[-1],
            options.get("activation", "softmax"),
            options.get("ignore_index"),
            options.get("where"),
        )
        assert np.all(grad[~valid] == 0)


def test_maps_hand_computed():
    """A 4x4 square in a 6x6 image: MONAI's maps, written out."""
    from jaxseg._boundary import contour_distance_field, signed_distance_map

    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    valid = np.ones_like(mask)
    maps = peers.jit(lambda m, v: (signed_distance_map(m, v, 2), contour_distance_field(m, v, 2)))
    signed, field = (np.asarray(m) for m in maps(mask, valid))
    r2 = np.sqrt(2)
    expected_signed = np.array(
        [
            [r2, 1, 1, 1, 1, r2],
            [1, 0, 0, 0, 0, 1],
            [1, 0, -1, -1, 0, 1],
            [1, 0, -1, -1, 0, 1],
            [1, 0, 0, 0, 0, 1],
            [r2, 1, 1, 1, 1, r2],
        ]
    )
    np.testing.assert_allclose(signed, expected_signed, rtol=1e-6)
    np.testing.assert_allclose(field, np.abs(expected_signed - (expected_signed <= 0)), rtol=1e-6)
    # No interface: the zero map, for an empty and for a full mask.
    for m in (np.zeros_like(mask), np.ones_like(mask)):
        assert not any(np.any(np.asarray(x)) for x in maps(m, valid))


# ---------------------------------------------------------------------------------------
# MONAI parity: values and gradients, 2D and 3D, 1 to 4 classes

# (MONAI loss, jaxseg loss, shape, classes, jaxseg options, MONAI options, labels kind)
MONAI_CASES = {
    "boundary_2d_softmax": (
        "BoundaryLoss", "boundary", (2, 14, 12), 3, {}, dict(softmax=True), "int"),
    "boundary_3d_no_bg": (
        "BoundaryLoss", "boundary", (2, 8, 7, 6), 4, dict(include_background=False),
        dict(softmax=True, include_background=False), "int"),
    "boundary_2d_binary": (
        "BoundaryLoss", "boundary", (2, 12, 13), 1, dict(activation="sigmoid"),
        dict(sigmoid=True), "int"),
    "boundary_3d_batch_none": (
        "BoundaryLoss", "boundary", (2, 7, 8, 6), 2, dict(batch=True, reduction="none"),
        dict(softmax=True, batch=True, reduction="none"), "int"),
    "boundary_2d_multilabel_sum": (
        "BoundaryLoss", "boundary", (2, 12, 10), 3, dict(activation="sigmoid", reduction="sum"),
        dict(sigmoid=True, reduction="sum"), "multilabel"),
    "hausdorff_2d_default": (
        "HausdorffDTLoss", "hausdorff", (2, 14, 12), 3, {}, dict(softmax=True), "int"),
    "hausdorff_3d_log_alpha": (
        "LogHausdorffDTLoss", "hausdorff", (2, 8, 7, 6), 4, dict(log=True, alpha=1.5),
        dict(softmax=True, alpha=1.5), "int"),
    "hausdorff_2d_binary": (
        "HausdorffDTLoss", "hausdorff", (2, 12, 13), 1, dict(activation="sigmoid"),
        dict(sigmoid=True), "int"),
    "hausdorff_3d_bg_batch_none": (
        "HausdorffDTLoss", "hausdorff", (2, 7, 8, 6), 2,
        dict(include_background=True, batch=True, reduction="none"),
        dict(softmax=True, include_background=True, batch=True, reduction="none"), "int"),
    "hausdorff_2d_log_none_multilabel": (
        "LogHausdorffDTLoss", "hausdorff", (2, 12, 10), 3,
        dict(log=True, activation="sigmoid", reduction="none"),
        dict(sigmoid=True, reduction="none"), "multilabel"),
    "hausdorff_2d_probabilities": (
        "HausdorffDTLoss", "hausdorff", (2, 12, 10), 2, dict(activation=None, alpha=1.0),
        dict(alpha=1.0), "int"),
}  # fmt: skip


def _monai_inputs(shape, classes, kind, activation, seed):
    logits = logits_for(shape, classes, seed)
    if activation is None:
        logits = ref.softmax(logits).astype(np.float32)
    if kind == "multilabel":
        rng = np.random.default_rng(seed + 1)
        field = ndimage.uniform_filter(rng.standard_normal((*shape, classes)), size=3)
        labels = (field > 0.1).astype(np.float32)
        labels[0, ..., 0] = 0  # an empty channel
        return logits, labels, labels
    labels = blob_labels(shape, classes, seed + 1)
    return logits, labels, one_hot(labels, classes, activation or "softmax")


def _cotangent(options, shape, classes):
    if options.get("reduction") != "none":
        return None
    kept = classes - (not options.get("include_background", False) and classes > 1)
    out = (kept,) if options.get("batch") else (shape[0], kept)
    return np.random.default_rng(9).standard_normal(out)


@peers.family
def monai_results():
    out = {}
    for case, (_, kind, shape, classes, options, _, label_kind) in MONAI_CASES.items():
        activation = options.get("activation", "softmax")
        logits, labels, dense = _monai_inputs(shape, classes, label_kind, activation, len(out))
        cotangent = _cotangent(
            dict(options, include_background=options.get("include_background", kind == "boundary")),
            shape,
            classes,
        )
        request = Request(LOSSES[kind], logits, labels, options, cotangent)
        out[case] = (request, (logits, dense, cotangent))
    return out


@pytest.mark.parametrize("case", list(MONAI_CASES))
def test_matches_monai(case):
    name, _, _, _, _, monai_options, _ = MONAI_CASES[case]
    (logits, dense, cotangent), (value, grad) = monai_results()[case]
    expected, expected_grad = peers.monai(name, logits, dense, cotangent=cotangent, **monai_options)
    assert_close(value, expected.reshape(value.shape))
    assert_close(grad, expected_grad, atol=1e-7)


# ---------------------------------------------------------------------------------------
# Options: traced alpha, reductions, class weights, axis_name


def test_alpha_is_traced_and_its_gradient_is_exact():
    logits = logits_for((2, 10, 9), 3, 0)
    labels = blob_labels((2, 10, 9), 3, 1)
    loss = peers.jit(
        jax.value_and_grad(lambda a: jaxseg.hausdorff_dt_loss(logits, labels, alpha=a))
    )
    (value, d_alpha), (_, d_alpha_2) = loss(1.5), loss(0.0)
    assert loss._cache_size() == 1
    # d/da of d^a is d^a log d; zero distances contribute 0 (their limit).
    p = ref.softmax(logits)
    y = one_hot(labels, 3, "softmax")
    expected_value, expected = [], {1.5: [], 0.0: []}
    for b in range(2):
        for c in (1, 2):
            label_field = reference_maps(y[b, ..., c] > 0.5, np.ones((10, 9), bool))[1]
            pred_field = reference_maps(p[b, ..., c] > 0.5, np.ones((10, 9), bool))[1]
            err = (p[b, ..., c] - y[b, ..., c]) ** 2
            expected_value.append(np.mean(err * (pred_field**1.5 + label_field**1.5)))
            for a in expected:
                logs = [np.where(f > 0, f**a * np.log(np.where(f > 0, f, 1)), 0) for f in
                        (pred_field, label_field)]  # fmt: skip
                expected[a].append(np.mean(err * (logs[0] + logs[1])))
    assert_close(value, np.mean(expected_value))
    assert_close(d_alpha, np.mean(expected[1.5]))
    assert_close(d_alpha_2, np.mean(expected[0.0]))


def test_class_weights_and_sum_reduction():
    logits = logits_for((2, 9, 8), 3, 3)
    labels = blob_labels((2, 9, 8), 3, 4)
    weights = np.array([0.5, 2.0, 1.0], np.float32)

    @peers.jit
    def run(x, y, w):
        out = []
        for loss in LOSSES.values():
            loss = functools.partial(loss, include_background=True)
            out.append((
                loss(x, y, reduction="none"), loss(x, y, class_weights=w),
                loss(x, y, reduction="sum"),
            ))  # fmt: skip
        return out

    for per_class, weighted, total in run(logits, labels, weights):
        per_class = np.asarray(per_class, np.float64)
        assert_close(weighted, np.sum(per_class * weights) / (2 * weights.sum()))
        assert_close(total, per_class.sum(), rtol=1e-6)


def test_axis_name_gives_the_whole_batch_result():
    logits = logits_for((4, 9, 8), 3, 5)
    labels = blob_labels((4, 9, 8), 3, 6)
    where = np.random.default_rng(0).random((4, 9, 8)) < 0.7
    cases = [(jaxseg.boundary_loss, True), (jaxseg.hausdorff_dt_loss, False)]
    whole = peers.jaxseg_many(
        [Request(loss, logits, labels, dict(where=where, batch=batch)) for loss, batch in cases]
    )
    split = lambda a: a.reshape((2, 2) + a.shape[1:])

    @peers.jit
    def sharded(x, y, w):
        return [
            jax.vmap(
                jax.value_and_grad(
                    lambda x, y, w, loss=loss, batch=batch: loss(
                        x, y, where=w, batch=batch, axis_name="devices"
                    )
                ),
                axis_name="devices",
            )(x, y, w)
            for loss, batch in cases
        ]

    for (value, grad), (full_value, full_grad) in zip(
        sharded(split(logits), split(labels), split(where)), whole, strict=True
    ):
        assert_close(value, np.full(2, full_value))
        # Each shard's gradient is the number of shards times its part of the global one
        # (pmean of parameter gradients gives the global gradient).
        assert_close(np.asarray(grad).reshape(full_grad.shape), 2 * full_grad, atol=1e-8)


# ---------------------------------------------------------------------------------------
# Masking equals cropping; combinators


@pytest.mark.parametrize("kind", list(LOSSES))
def test_excluding_a_box_equals_cropping_it(kind):
    loss = LOSSES[kind]
    logits = logits_for((2, 12, 9), 2, 7)
    labels = blob_labels((2, 12, 9), 2, 8)
    where = np.ones((2, 12, 9), bool)
    where[:, 7:] = False
    garbage = logits.copy()
    garbage[:, 7:] = 1e4
    fn = peers.jit(jax.value_and_grad(functools.partial(loss, include_background=True)))
    value, grad = fn(garbage, labels, where=where)
    cut_value, cut_grad = fn(logits[:, :7], labels[:, :7])
    assert_close(value, cut_value)
    assert_close(grad[:, :7], cut_grad, atol=1e-8)
    assert np.all(np.asarray(grad[:, 7:]) == 0)


def test_combine_with_a_traced_weight_schedule():
    logits = logits_for((2, 10, 9), 3, 11)
    labels = blob_labels((2, 10, 9), 3, 12)
    loss = jaxseg.combine(jaxseg.dice_loss, jaxseg.boundary_loss)
    assert loss.names == ("dice_loss", "boundary_loss")

    @peers.jit
    def step(x, t):
        weight = jnp.minimum(0.01 * t, 1.0)  # the schedule of Kervadec et al.
        return jax.value_and_grad(lambda x: loss.evaluate(x, labels, (1.0 - weight, weight)))(x)

    dice = peers.jaxseg_value_and_grad(jaxseg.dice_loss, logits, labels)
    boundary = reference_loss("boundary", logits, labels)
    for t in (0, 30, 500):
        w = min(0.01 * t, 1.0)
        value, grad = step(logits, t)
        assert_close(value, (1 - w) * dice[0] + w * boundary[0])
        assert_close(grad, (1 - w) * dice[1] + w * boundary[1], atol=1e-7)
    assert step._cache_size() == 1
    total, parts = jaxseg.with_components(loss)(logits, labels, include_background=False)
    assert set(parts) == {"dice_loss", "boundary_loss"}
    no_background = reference_loss("boundary", logits, labels, include_background=False)[0]
    assert_close(parts["boundary_loss"], no_background)
    assert_close(total, parts["dice_loss"] + parts["boundary_loss"])


def test_deep_supervision_and_log_transform():
    labels = blob_labels((2, 12, 8), 3, 13)
    outputs = [logits_for((2, 12, 8), 3, 14), logits_for((2, 6, 4), 3, 15)]
    supervised = jaxseg.deep_supervision(jaxseg.hausdorff_dt_loss, weights=(0.75, 0.25))
    coarse = labels[:, 1::2, 1::2]
    expected = 0.75 * reference_loss("hausdorff", outputs[0], labels, alpha=1.0)[0]
    expected += 0.25 * reference_loss("hausdorff", outputs[1], coarse, alpha=1.0)[0]
    assert_close(supervised(outputs, labels, alpha=1.0), expected)
    # log_transform of L / (1 + L) is -log(1 / (1 + L)) = log(1 + L), the log=True option.
    relative = lambda x, y, **o: (lambda v: v / (1 + v))(jaxseg.hausdorff_dt_loss(x, y, **o))
    expected = np.log1p(reference_loss("hausdorff", outputs[1], coarse)[0])
    assert_close(jaxseg.log_transform(relative)(outputs[1], coarse), expected)


# ---------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, y: jaxseg.boundary_loss(x, y, reduction="avg"), ValueError, "reduction"),
        (lambda x, y: jaxseg.hausdorff_dt_loss(x, y, alpha=-1.0), ValueError, "alpha"),
        (lambda x, y: jaxseg.hausdorff_dt_loss(x, y, alpha=(1.0, 2.0)), ValueError, "alpha"),
        (lambda x, y: jaxseg.boundary_loss(x, y[:, :3]), ValueError, "labels"),
        (lambda x, y: jaxseg.hausdorff_dt_loss(x.astype(int), y), ValueError, "logits"),
        (lambda x, y: jaxseg.boundary_loss(x, y, class_weights=(1.0,)), ValueError, "class_w"),
    ],
)
def test_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(np.zeros((1, 5, 4, 3), np.float32), np.zeros((1, 5, 4), np.int32))
