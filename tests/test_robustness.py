"""Robustness: what a careless or hurried user passes, and every way JAX runs a function.

- The normaliser (``jaxseg._arguments.normalised``): Python lists, tuples, NumPy arrays and
  scalars are accepted wherever arrays are; what cannot be converted, and options of the
  wrong type or range, raise an error that names the argument (and never prints a whole
  list).
- Integer labels of every width (int8 to int64, unsigned, bool) are range-checked in
  their own dtype: the int64 label 2**32 + 1 is out of range, not class 1.
- Every public function runs eagerly (``jax.disable_jit``) and under ``jit``, ``vmap``,
  ``grad``, ``checkpoint``, ``eval_shape``, ``jax.export`` (also with symbolic batch and
  spatial sizes), and inside ``shard_map`` and ``scan``, with the same values.
- The checked mode works on every public function and reports the offending value.
- Forward-mode autodiff (``jvp``, ``jacfwd``, ``linearize``) matches finite differences on
  every path that supports it, and raises an error naming the cause and the way around
  it on a custom-VJP path.
- Float options are traced: a new value does not retrace (``chex.assert_max_traces``).
- Determinism: the same inputs give bit-identical values and gradients on every call,
  and the jitted functions agree with op-by-op (eager) execution within float32
  tolerance, for every public loss with its masking options (in this module so that
  its eager runs reuse the primitives compiled for the eager runs above: same shapes).

References are float64 NumPy (tests/references.py), ``numpy.bincount``, or the int32
call of the same function where the property is that two inputs are the same input.
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
from jax.experimental import checkify
from jax.sharding import PartitionSpec

import jaxseg
from jaxseg import _arguments, _checks, metrics

RNG = np.random.default_rng(16)
X = RNG.standard_normal((2, 6, 5, 3)).astype(np.float32)
Y = RNG.integers(0, 3, (2, 6, 5)).astype(np.int32)
X1 = RNG.standard_normal((2, 6, 5, 1)).astype(np.float32)
Y1 = RNG.integers(0, 2, (2, 6, 5)).astype(np.int32)
PRED = RNG.integers(0, 3, (2, 6, 5)).astype(np.int32)
ONEHOT = np.eye(3, dtype=np.float32)[Y]


# --------------------------------------------------------------------------------------
# Every public function, as f(*arrays) with its static options bound: (name, function,
# arrays, differentiable). Differentiable functions take the logits first.

LOSS_CASES = [
    ("dice_loss", jaxseg.dice_loss, (X, Y)),
    ("iou_loss", functools.partial(jaxseg.iou_loss, activation="sigmoid"), (X, Y)),
    ("tversky_loss", functools.partial(jaxseg.tversky_loss, alpha=0.3, beta=0.7), (X, Y)),
    ("generalized_dice_loss", jaxseg.generalized_dice_loss, (X, ONEHOT)),
    ("cross_entropy", functools.partial(jaxseg.cross_entropy, label_smoothing=0.1), (X, Y)),
    ("focal_loss", jaxseg.focal_loss, (X, Y)),
    ("dice_ce", jaxseg.dice_ce, (X, Y)),
    ("dice_focal", functools.partial(jaxseg.dice_focal, activation="sigmoid"), (X, Y)),
    ("bce_log_dice", jaxseg.bce_log_dice, (X1, Y1)),
    ("lovasz_softmax_loss", jaxseg.lovasz_softmax_loss, (X, Y)),
    ("lovasz_hinge_loss", jaxseg.lovasz_hinge_loss, (X1, Y1)),
    ("combine", jaxseg.combine(jaxseg.dice_loss, jaxseg.cross_entropy, weights=(0.5, 2)), (X, Y)),
    ("log_transform", jaxseg.log_transform(jaxseg.iou_loss), (X, Y)),
    (
        "deep_supervision",
        lambda x, y: jaxseg.deep_supervision(jaxseg.dice_ce)([x, x[:, ::2, ::2]], y),
        (X, Y),
    ),
    ("with_components", lambda x, y: jaxseg.with_components(jaxseg.dice_ce)(x, y)[0], (X, Y)),
    ("overlap_stats", lambda x, y: jaxseg.overlap_stats(x, y).tp.sum(), (X, Y)),
]
METRIC_CASES = [
    ("confusion_matrix", lambda p, y: metrics.confusion_matrix(p, y, 3), (PRED, Y)),
    ("dice_score", lambda p, y: metrics.dice_score(p, y, 3, ignore_empty=False), (PRED, Y)),
    ("iou_score", lambda p, y: metrics.iou_score(p, y, 3, ignore_empty=False), (PRED, Y)),
    ("mean_dice", lambda p, y: metrics.mean_dice(p, y, 3), (PRED, Y)),
    ("mean_iou", lambda p, y: metrics.mean_iou(p, y, 3), (PRED, Y)),
    (
        "metric_state",
        lambda p, y: metrics.compute(metrics.update(metrics.metric_state(3), p, y))["dice"],
        (PRED, Y),
    ),
    ("hausdorff_distance", lambda p, y: metrics.hausdorff_distance(p, y, 3), (PRED, Y)),
    ("surface_dice", lambda p, y: metrics.surface_dice(p, y, 3, tolerance=1.0), (PRED, Y)),
    ("euclidean_distance_transform", metrics.euclidean_distance_transform, (PRED[0] == 1,)),
    ("boundary_mask", metrics.boundary_mask, (PRED[0] == 1,)),
    ("predictions_from_logits", metrics.predictions_from_logits, (X,)),
]
ALL_CASES = [(*c, True) for c in LOSS_CASES] + [(*c, False) for c in METRIC_CASES]
IDS = [c[0] for c in ALL_CASES]


def _close(got, want, rtol=1e-5):
    chex.assert_trees_all_close(
        jax.tree.map(np.asarray, got), jax.tree.map(np.asarray, want), rtol=rtol, atol=1e-6
    )


@pytest.mark.parametrize(("name", "fn", "arrays", "diff"), ALL_CASES, ids=IDS)
def test_every_public_function_under_every_transformation(name, fn, arrays, diff):
    """Eager equals vmap, scan inside shard_map, grad of checkpoint, all in one program
    exported with jax.export; eval_shape gives its shapes without computing; the checked
    mode (``jaxseg.checked``) gives the eager value."""
    other = tuple(np.roll(a, 1, axis=0) for a in arrays)
    stacked = tuple(np.stack([a, b]) for a, b in zip(arrays, other, strict=True))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))

    def scanned(*xs):
        return jax.lax.scan(lambda c, a: (c, fn(*a)), 0, xs)[1]

    inside = jax.shard_map(
        scanned, mesh=mesh, in_specs=PartitionSpec(), out_specs=PartitionSpec(), check_vma=False
    )

    def everything(*xs):
        single = tuple(x[0] for x in xs)
        out = {"vmap": jax.vmap(fn)(*xs), "shard_map_scan": inside(*xs)}
        if diff:
            out["grad"] = jax.grad(jax.checkpoint(fn))(*single)
        return out

    exported = jax.export.export(jax.jit(everything))(*stacked)
    got = peers.jit(exported.call)(*stacked)
    chex.assert_trees_all_equal_shapes_and_dtypes(jax.eval_shape(everything, *stacked), got)
    with jax.disable_jit():
        eager = [fn(*arrays), fn(*other)]
        grad_eager = jax.grad(fn)(*arrays) if diff else None
    for key in ("vmap", "shard_map_scan"):
        for i in range(2):
            _close(jax.tree.map(lambda m: m[i], got[key]), eager[i])  # noqa: B023
    if diff:
        assert np.all(np.isfinite(got["grad"]))
        _close(got["grad"], grad_eager, rtol=1e-4)
    # The checked mode works on every public function (its failures: further below).
    _close(jaxseg.checked(fn)(*arrays), eager[0])


def _symbolic(array: np.ndarray, dims) -> jax.ShapeDtypeStruct:
    """The array's shape with its batch and spatial axes symbolic (a class axis kept)."""
    b, h, w = dims
    shape = {2: (h, w), 3: (b, h, w), 4: (b, h, w, array.shape[-1])}[array.ndim]
    return jax.ShapeDtypeStruct(shape, array.dtype)


X12 = RNG.standard_normal((2, 6, 5, 12)).astype(np.float32)
Y12 = RNG.integers(0, 12, (2, 6, 5)).astype(np.int32)
SYMBOLIC_CASES = [
    *ALL_CASES,
    # Above the softmax engine's unrolled cutoff (the matrix-vector products, the segment
    # sums over the flattened batch and the split reduction of s).
    ("dice_focal_12_classes", jaxseg.dice_focal, (X12, Y12), True),
    # Metrics outside ALL_CASES whose programs depend on the sizes.
    (
        "average_surface_distance",
        lambda p, y: metrics.average_surface_distance(p, y, 3),
        (PRED, Y),
        False,
    ),
    ("connected_components", lambda p: metrics.connected_components(p == 1), (PRED,), False),
    (
        "lesion_wise_scores",
        lambda p, y: metrics.lesion_wise_scores(p == 1, y == 1),
        (PRED, Y),
        False,
    ),
    (
        "panoptic_quality",
        lambda p, y: metrics.panoptic_quality(p, y, num_classes=3),
        (np.stack([PRED, PRED], -1), np.stack([Y, Y], -1)),
        False,
    ),
]


@pytest.mark.parametrize(
    ("name", "fn", "arrays", "diff"), SYMBOLIC_CASES, ids=[c[0] for c in SYMBOLIC_CASES]
)
def test_every_public_function_exports_with_symbolic_shapes(name, fn, arrays, diff):
    """jax.export with the batch and spatial sizes symbolic: the exported program, run on
    two shapes (one of them a batch of one), equals the function run on each."""
    dims = jax.export.symbolic_shape("b, h, w")

    def program(*xs):
        return (fn(*xs), jax.grad(fn)(*xs)) if diff else fn(*xs)

    exported = jax.export.export(jax.jit(program))(*(_symbolic(a, dims) for a in arrays))
    for crop in ((slice(None),) * 3, (slice(0, 1), slice(0, 4), slice(1, 4))):
        inputs = tuple(a[crop[1:]] if a.ndim == 2 else a[crop] for a in arrays)
        _close(exported.call(*inputs), program(*inputs), rtol=1e-4)


def test_losses_with_axis_name_inside_shard_map():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))
    spec = PartitionSpec("batch")
    for loss in (jaxseg.dice_ce, jaxseg.lovasz_softmax_loss, jaxseg.generalized_dice_loss):
        f = jax.shard_map(
            functools.partial(loss, axis_name="batch"),
            mesh=mesh,
            in_specs=(spec, spec),
            out_specs=PartitionSpec(),
        )
        _close(jax.jit(f)(X, Y), loss(X, Y))


# --------------------------------------------------------------------------------------
# Lists, tuples, NumPy arrays, scalars.


@pytest.mark.parametrize(("name", "fn", "arrays", "diff"), ALL_CASES, ids=IDS)
def test_python_lists_are_arrays(name, fn, arrays, diff):
    want = fn(*arrays)
    if name in ("deep_supervision",):  # the scales are sliced from the logits array
        arrays = (arrays[0], arrays[1].tolist())
    else:
        arrays = tuple(a.tolist() for a in arrays)
    _close(fn(*arrays), want)


def test_lists_match_the_float64_reference():
    value = jaxseg.dice_ce(X.tolist(), Y.tolist())
    expected = ref.overlap_loss("dice", X, Y) + ref.cross_entropy(X, Y)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    value = jaxseg.cross_entropy(X.tolist(), tuple(Y.tolist()), class_weights=[1, 2, 0.5])
    np.testing.assert_allclose(
        value, ref.cross_entropy(X, Y, class_weights=np.array([1, 2, 0.5])), rtol=1e-5
    )
    value = jaxseg.dice_focal(X.tolist(), Y, alpha=[0.2, 0.3, 0.5])
    expected = ref.overlap_loss("dice", X, Y) + ref.focal_loss(
        X, Y, alpha=np.array([0.2, 0.3, 0.5])
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    counts = metrics.confusion_matrix(PRED.tolist(), Y.tolist(), 3)
    np.testing.assert_array_equal(counts.reshape(-1), np.bincount((Y * 3 + PRED).ravel(), None, 9))


def test_numpy_scalars_and_arrays_as_options():
    value = jaxseg.tversky_loss(
        X, Y, alpha=np.float32(0.3), beta=np.array(0.7), gamma=np.int64(1), smooth_nr=0
    )
    expected = ref.overlap_loss("tversky", X, Y, alpha=0.3, beta=0.7, smooth_nr=0.0)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    value = jaxseg.dice_loss(X, Y, ignore_index=np.int64(2), include_background=np.bool_(False))
    expected = ref.overlap_loss("dice", X, Y, ignore_index=2, include_background=False)
    np.testing.assert_allclose(value, expected, rtol=1e-5)


# --------------------------------------------------------------------------------------
# Bad arguments: the error names the argument and never prints a whole list.

BIG_LIST = X.tolist()
BAD = [
    ("ragged list of logits", lambda: jaxseg.cross_entropy([[[1.0, 2.0]], [[1.0]]], Y),
     TypeError, r"`logits` must be an array, or a nested list of numbers of one rectangular"),
    ("string labels", lambda: jaxseg.dice_loss(X, "labels"), TypeError,
     r"`labels` must be an array .*got str"),
    ("None labels", lambda: jaxseg.dice_ce(X, None), TypeError, r"`labels` must be an array"),
    ("labels of strings", lambda: jaxseg.dice_loss(X, np.full((2, 6, 5), "a")), TypeError,
     r"`labels` must hold numbers; got dtype <U1"),
    ("dict as logits", lambda: metrics.predictions_from_logits({"a": 1}), TypeError,
     r"`logits` must be an array"),
    ("bool ignore_index (CE)", lambda: jaxseg.cross_entropy(X, Y, ignore_index=True), TypeError,
     r"`ignore_index` must be an int or None; got bool True"),
    ("bool ignore_index (metrics)", lambda: metrics.dice_score(PRED, Y, 3, ignore_index=False),
     ValueError, r"`ignore_index` must be an int or None; got bool False"),
    ("float ignore_index", lambda: jaxseg.dice_ce(X, Y, ignore_index=2.0), TypeError,
     r"`ignore_index` must be an int or None; got float 2\.0"),
    ("lambda_dice None", lambda: jaxseg.dice_ce(X, Y, lambda_dice=None), TypeError,
     r"`lambda_dice` must be a number; got None"),
    ("lambda_dice string", lambda: jaxseg.dice_ce(X, Y, lambda_dice="1"), TypeError,
     r"`lambda_dice` must be a number; got str '1'"),
    ("lambda_dice vector", lambda: jaxseg.dice_ce(X, Y, lambda_dice=np.array([1.0, 2.0])),
     ValueError, r"`lambda_dice` must be a scalar; got shape \(2,\)"),
    ("lambda_focal inf", lambda: jaxseg.dice_focal(X, Y, lambda_focal=np.inf), ValueError,
     r"`lambda_focal` must be finite and >= 0; got inf"),
    ("lambda_ce bool", lambda: jaxseg.bce_log_dice(X1, Y1, lambda_ce=True), TypeError,
     r"`lambda_ce` must be a number; got bool True"),
    ("combine negative weight",
     lambda: jaxseg.combine(jaxseg.dice_loss, jaxseg.cross_entropy, weights=(1, -1)),
     ValueError, r"`weights\['cross_entropy'\]` must be >= 0; got -1"),
    ("combine NaN weight",
     lambda: jaxseg.combine(dice=jaxseg.dice_loss, ce=jaxseg.cross_entropy,
                            weights={"ce": np.nan}),
     ValueError, r"`weights\['ce'\]` must be finite and >= 0; got nan"),
    ("combine string weight", lambda: jaxseg.combine(jaxseg.dice_loss, weights=("1",)),
     TypeError, r"`weights\['dice_loss'\]` must be a number; got str '1'"),
    ("combine weights not a sequence", lambda: jaxseg.combine(jaxseg.dice_loss, weights=2.0),
     TypeError, r"`weights` must be a sequence of numbers"),
    ("evaluate with a negative weight",
     lambda: jaxseg.combine(jaxseg.dice_loss).evaluate(X, Y, (-2.0,)), ValueError,
     r"`weights\['dice_loss'\]` must be >= 0; got -2\.0"),
    ("deep supervision negative weight",
     lambda: jaxseg.deep_supervision(jaxseg.dice_loss, weights=(1.0, -0.5)), ValueError,
     r"`weights\[1\]` must be >= 0; got -0\.5"),
    ("log_transform eps string", lambda: jaxseg.log_transform(jaxseg.dice_loss, eps="1e-7"),
     TypeError, r"`eps` must be a number; got str '1e-7'"),
    ("log_transform eps NaN", lambda: jaxseg.log_transform(jaxseg.dice_loss, eps=np.nan),
     ValueError, r"`eps` must be finite and > 0; got nan"),
    ("log_transform of a non-callable", lambda: jaxseg.log_transform("dice"), TypeError,
     r"`loss` must be callable; got str"),
    ("smoothing as a string", lambda: jaxseg.dice_loss(X, Y, smooth_nr="0"), TypeError,
     r"`smooth_nr` must be a number; got str '0'"),
    ("smoothing through a combinator",
     lambda: jaxseg.combine(jaxseg.dice_loss)(X, Y, smooth_dr=-1.0), ValueError,
     r"`smooth_dr` must be >= 0; got -1\.0"),
    ("gamma as a vector", lambda: jaxseg.focal_loss(X, Y, gamma=[1.0, 2.0]), ValueError,
     r"`gamma` must be a scalar; got shape \(2,\)"),
    ("label_smoothing NaN", lambda: jaxseg.cross_entropy(X, Y, label_smoothing=np.nan),
     ValueError, r"`label_smoothing` must be finite and lie in \[0, 1\]; got nan"),
    ("focal alpha negative", lambda: jaxseg.dice_focal(X, Y, alpha=-0.5), ValueError,
     r"`alpha` must lie in \[0, 1\]; got -0\.5"),
    ("class weights as strings", lambda: jaxseg.dice_loss(X, Y, class_weights=["a", "b", "c"]),
     TypeError, r"`class_weights` must be a real number or an array of real numbers"),
    ("class weights with NaN", lambda: jaxseg.dice_ce(X, Y, class_weights=[1.0, np.nan, 1.0]),
     ValueError, r"`class_weights` must be finite and >= 0; got \[1\.0, nan, 1\.0\]"),
    ("batch as an int", lambda: jaxseg.dice_loss(X, Y, batch=1), TypeError,
     r"`batch` must be a bool \(True or False\); got int 1"),
    ("per_image as a string", lambda: jaxseg.lovasz_hinge_loss(X1, Y1, per_image="yes"),
     TypeError, r"`per_image` must be a bool"),
    ("return_components as None", lambda: jaxseg.dice_ce(X, Y, return_components=None),
     TypeError, r"`return_components` must be a bool"),
    ("reduction of another type", lambda: jaxseg.dice_loss(X, Y, reduction=["mean"]),
     ValueError, r"`reduction` must be one of \('mean', 'sum', 'none'\)"),
    ("num_classes as a bool", lambda: metrics.dice_score(PRED, Y, True), TypeError,
     r"`num_classes` must be a Python int; got True"),
    ("percentile as a string", lambda: metrics.hausdorff_distance(PRED, Y, 3, percentile="95"),
     TypeError, r"`percentile` must be a number; got str '95'"),
    ("threshold above 1", lambda: metrics.predictions_from_logits(X1, threshold=2,
                                                                  activation="sigmoid"),
     ValueError, r"`threshold` must lie in \[0, 1\]; got 2"),
    ("tolerance NaN", lambda: metrics.surface_dice(PRED, Y, 3, tolerance=np.nan), ValueError,
     r"`tolerance` must be finite and >= 0; got nan"),
    ("spacing zero", lambda: metrics.euclidean_distance_transform(PRED[0] == 1, spacing=0.0),
     ValueError, r"`spacing` must be > 0; got 0\.0"),
    ("a huge negative class-weight list",
     lambda: jaxseg.dice_loss(np.zeros((1, 2, 100), np.float32), np.zeros((1, 2), int),
                              class_weights=[-1.0] * 100),
     ValueError, r"`class_weights` must be >= 0; got a list of shape \(100,\)"),
    ("a big list of logits with the wrong rank", lambda: jaxseg.dice_loss(BIG_LIST[0][0], Y[0, 0]),
     ValueError, r"`logits` must have shape \(batch, \*spatial, classes\).*got shape \(5, 3\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "error", "pattern"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_arguments_are_named(call, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        call()
    assert len(str(info.value)) < 700, str(info.value)


def test_type_errors_are_value_errors_too():
    """Argument-type errors subclass both TypeError and ValueError (earlier: ValueError)."""
    with pytest.raises(ValueError, match="ignore_index"):
        jaxseg.dice_loss(X, Y, ignore_index=1.5)
    assert issubclass(_arguments.ArgumentTypeError, TypeError)


# --------------------------------------------------------------------------------------
# Integer labels of every width.

WIDTHS = [np.int8, np.uint8, np.uint32, np.int64]


@pytest.mark.parametrize("dtype", WIDTHS, ids=lambda d: np.dtype(d).name)
def test_labels_of_every_integer_width(dtype):
    with jax.enable_x64(np.dtype(dtype).itemsize == 8):
        labels = Y.astype(dtype)
        np.testing.assert_allclose(jaxseg.dice_ce(X, labels), jaxseg.dice_ce(X, Y), rtol=1e-6)
        np.testing.assert_array_equal(
            metrics.confusion_matrix(PRED, labels, 3), metrics.confusion_matrix(PRED, Y, 3)
        )


def test_boolean_labels_are_a_binary_mask():
    expected = ref.overlap_loss("dice", X1, Y1, activation="sigmoid")
    np.testing.assert_allclose(
        jaxseg.dice_loss(X1, Y1.astype(bool), activation="sigmoid"), expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        jaxseg.bce_log_dice(X1, Y1.astype(bool)), jaxseg.bce_log_dice(X1, Y1), rtol=1e-6
    )


def test_int64_labels_beyond_int32_are_out_of_range():
    with jax.enable_x64(True):
        labels = Y.astype(np.int64)
        labels[0, 0, :3] = [2**32 + 1, 2**32, -(2**32) + 2]  # int32 casts: 1, 0, 2
        where = np.ones(Y.shape, bool)
        where[0, 0, :3] = False
        for loss in (jaxseg.dice_loss, jaxseg.cross_entropy, jaxseg.focal_loss, jaxseg.dice_ce):
            expected = loss(X, Y, where=where)
            np.testing.assert_allclose(loss(X, labels), expected, rtol=1e-6)
        expected = ref.overlap_loss("dice", X, Y, where=where)
        np.testing.assert_allclose(jaxseg.dice_loss(X, labels), expected, rtol=1e-5)
        counts = metrics.confusion_matrix(PRED, labels, 3)
        keep = where.ravel()
        want = np.bincount((Y * 3 + PRED).ravel()[keep], minlength=9)
        np.testing.assert_array_equal(counts.reshape(-1), want)
        dice = metrics.dice_score(PRED, labels, 3)
        np.testing.assert_array_equal(dice, metrics.dice_score(PRED, Y, 3, where=where))
        # The checked mode reports the value itself, not its int32 wrap.
        with pytest.raises(checkify.JaxRuntimeError, match=r"found 3 labels .* e\.g\. 4294967297"):
            jaxseg.checked(jaxseg.dice_loss)(X, labels)
        with pytest.raises(checkify.JaxRuntimeError, match=r"e\.g\. 4294967297"):
            jaxseg.checked(metrics.dice_score)(PRED, labels, 3)


def test_narrow_labels_with_an_ignore_index_they_cannot_hold():
    labels = Y.astype(np.int8)
    np.testing.assert_allclose(
        jaxseg.dice_loss(X, labels, ignore_index=255), jaxseg.dice_loss(X, Y), rtol=1e-6
    )
    uint = Y.astype(np.uint8)
    uint[0, 0, 0] = 255
    where = np.ones(Y.shape, bool)
    where[0, 0, 0] = False
    np.testing.assert_allclose(
        jaxseg.cross_entropy(X, uint, ignore_index=255),
        ref.cross_entropy(X, np.where(where, Y, 0), where=where),
        rtol=1e-5,
    )
    # 300 classes: every uint8 label is in range.
    x = RNG.standard_normal((1, 4, 300)).astype(np.float32)
    y = np.array([[0, 255, 17, 299]])
    np.testing.assert_allclose(jaxseg.cross_entropy(x, y), ref.cross_entropy(x, y), rtol=1e-5)
    y8 = np.array([[0, 255, 17, 200]], np.uint8)
    np.testing.assert_allclose(
        jaxseg.cross_entropy(x, y8), ref.cross_entropy(x, y8.astype(np.int32)), rtol=1e-5
    )


# --------------------------------------------------------------------------------------
# The checked mode reports the offending value (that it works on every public function
# is checked with the other transformations, above).


CHECKED_FAILURES = [
    ("deep_supervision", jaxseg.checked(jaxseg.deep_supervision(jaxseg.dice_ce)),
     ([X, X[:, ::2, ::2]], np.where(Y == 1, 9, Y)), {}, r"found \d+ labels out of range, e\.g\. 9"),
    ("deep_supervision NaN", jaxseg.checked(jaxseg.deep_supervision(jaxseg.dice_loss)),
     ([X, np.full((2, 3, 3, 3), np.nan, np.float32)], Y), {},
     r"`logits\[1\]` has 54 non-finite entries"),
    ("combine", jaxseg.checked(jaxseg.combine(jaxseg.dice_loss, jaxseg.focal_loss)),
     (X, np.where(Y == 0, -4, Y)), {}, r"e\.g\. -4"),
    ("log_transform", jaxseg.checked(jaxseg.log_transform(jaxseg.dice_loss)),
     (X, np.where(Y == 0, 7, Y)), {"ignore_index": 255}, r"or equal ignore_index=255.*e\.g\. 7"),
    ("with_components", jaxseg.checked(jaxseg.with_components(jaxseg.dice_ce)),
     (X, np.where(Y == 0, 3, Y)), {}, r"\[0, 3\).*e\.g\. 3"),
    ("metrics labels", jaxseg.checked(metrics.mean_iou), (PRED, np.where(Y == 0, 5, Y), 3),
     {}, r"`labels` must lie in \[0, 3\).*e\.g\. 5"),
    ("metrics predictions", jaxseg.checked(metrics.update),
     (metrics.metric_state(3), np.where(PRED == 0, -2, PRED), Y), {},
     r"`predictions` must lie in \[0, 3\).*e\.g\. -2"),
    ("hausdorff", jaxseg.checked(metrics.hausdorff_distance),
     (PRED, np.where(Y == 0, 11, Y), 3), {}, r"e\.g\. 11"),
    ("predictions_from_logits", jaxseg.checked(metrics.predictions_from_logits),
     (np.where(X > 2, np.inf, X),), {}, r"`logits` has \d+ non-finite"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "pattern"),
    [c[1:] for c in CHECKED_FAILURES],
    ids=[c[0] for c in CHECKED_FAILURES],
)
def test_checked_mode_reports_the_offending_value(fn, args, kwargs, pattern):
    with pytest.raises(checkify.JaxRuntimeError, match=pattern):
        fn(*args, **kwargs)


# --------------------------------------------------------------------------------------
# Forward-mode autodiff.


def _finite_difference(f, x, t, eps=1e-3):
    x64, t64 = np.asarray(x, np.float64), np.asarray(t, np.float64)
    with jax.enable_x64(True):
        hi = float(f(jnp.asarray(x64 + eps * t64)))
        lo = float(f(jnp.asarray(x64 - eps * t64)))
    return (hi - lo) / (2 * eps)


TANGENT = RNG.standard_normal(X.shape).astype(np.float32)
TANGENT1 = RNG.standard_normal(X1.shape).astype(np.float32)
PROBS = np.exp(X) / np.exp(X).sum(-1, keepdims=True)
SOFT = RNG.dirichlet(np.ones(3), Y.shape).astype(np.float32)

# Paths without a custom VJP: forward mode works (name, f(logits), logits, tangent).
FORWARD = [
    ("dice sigmoid", lambda x: jaxseg.dice_loss(x, Y, activation="sigmoid"), X, TANGENT),
    ("iou probabilities", lambda x: jaxseg.iou_loss(x, Y, activation=None), PROBS, TANGENT),
    ("tversky dense", lambda x: jaxseg.tversky_loss(x, ONEHOT, gamma=0.75), X, TANGENT),
    ("cross_entropy soft", lambda x: jaxseg.cross_entropy(x, SOFT), X, TANGENT),
    ("focal sigmoid", lambda x: jaxseg.focal_loss(x, Y1, activation="sigmoid"), X1, TANGENT1),
    ("dice_ce dense", lambda x: jaxseg.dice_ce(x, ONEHOT), X, TANGENT),
    ("lovasz softmax", lambda x: jaxseg.lovasz_softmax_loss(x, Y), X, TANGENT),
    ("lovasz hinge", lambda x: jaxseg.lovasz_hinge_loss(x, Y1), X1, TANGENT1),
]  # fmt: skip


@pytest.mark.parametrize(("f", "x", "t"), [c[1:] for c in FORWARD], ids=[c[0] for c in FORWARD])
def test_forward_mode_matches_finite_differences(f, x, t):
    @peers.jit  # every transformation traced into one program: one compilation
    def derivatives(x, t):
        tangent = jax.jvp(f, (x,), (t,))[1]
        linear = jax.linearize(f, x)[1]
        return tangent, linear(t), jax.jacfwd(f)(x), jax.grad(f)(x)

    tangent, linear, jac, grad = derivatives(x, t)
    np.testing.assert_allclose(tangent, _finite_difference(f, x, t), rtol=2e-3, atol=2e-5)
    # linearize and jacfwd agree with jvp and with reverse mode.
    np.testing.assert_allclose(linear, tangent, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jac, grad, rtol=1e-4, atol=1e-7)


def test_forward_mode_through_bfloat16_widening():
    """jvp works through the bfloat16 widening of compound losses, whose tangent is the
    bfloat16 tangent in float32."""
    x = jnp.asarray(X, jnp.bfloat16)
    t = jnp.asarray(TANGENT, jnp.bfloat16)
    f = lambda a: jaxseg.dice_ce(a, ONEHOT)  # noqa: E731
    _, tangent = jax.jvp(f, (x,), (t,))
    want = _finite_difference(f, np.asarray(x, np.float32), np.asarray(t, np.float32))
    np.testing.assert_allclose(tangent, want, rtol=2e-3)
    _, widened = jax.jvp(_checks.widen, (x,), (t,))
    assert widened.dtype == jnp.float32
    np.testing.assert_array_equal(widened, np.asarray(t, np.float32))


def test_bfloat16_logits_under_vmap_jacfwd_and_hessian():
    """bfloat16 logits through every transformation that batches or differentiates twice
    (the widening has no custom rule that a transformation lacks), at 9 classes (the
    split reduction of s), against MONAI on the rounded logits in float64."""
    rng = np.random.default_rng(41)
    x = jnp.asarray(rng.normal(size=(3, 4, 3, 9)) * 2, jnp.bfloat16)
    x64 = np.asarray(x, np.float64)
    y = rng.integers(0, 9, size=(3, 4, 3))
    v = rng.normal(size=x.shape[1:]).astype(np.float32)
    per_image = lambda a, b: jaxseg.dice_focal(a[None], b[None])  # noqa: E731

    @peers.jit  # every transformation in one program: one compilation
    def derivatives(x, y, v):
        by_vmap = jax.vmap(jax.grad(per_image))(x, y)
        of_vmap = jax.grad(lambda a: jnp.sum(jax.vmap(per_image)(a, y)))(x)
        first = lambda a: per_image(a, y[0])  # noqa: E731
        hessian_v = jnp.tensordot(jax.hessian(first)(x[0]).astype(jnp.float32), v, axes=3)
        return by_vmap, of_vmap, jax.jacfwd(first)(x[0]), hessian_v

    by_vmap, of_vmap, jac, hessian_v = derivatives(x, jnp.asarray(y), jnp.asarray(v))
    assert by_vmap.dtype == of_vmap.dtype == jnp.bfloat16
    losses = peers.monai_losses()
    dice = losses.DiceLoss(softmax=True, to_onehot_y=True)
    focal = losses.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0)
    # MONAI's softmax focal mean divides by the class count too.
    monai = lambda a, b: dice(a, b) + 9 * focal(a, b)  # noqa: E731
    for i in range(3):
        want = peers.torch_value_and_grad(monai, x64[i : i + 1], y[i : i + 1])[1][0]
        np.testing.assert_allclose(np.asarray(by_vmap[i], np.float32), want, rtol=1e-2, atol=2e-4)
        np.testing.assert_allclose(np.asarray(of_vmap[i], np.float32), want, rtol=1e-2, atol=2e-4)
        if i == 0:
            np.testing.assert_allclose(jac, want, rtol=1e-4, atol=1e-6)
    want = peers.torch_hessian_vector_product(monai, x64[:1], y[:1], v[None])[0]
    np.testing.assert_allclose(hessian_v, want, rtol=2e-2, atol=2e-3)


# The softmax engine (a custom JVP): forward mode and forward-over-reverse.
ENGINE = [
    ("focal", lambda x: jaxseg.focal_loss(x, Y)),
    ("dice_ce", lambda x: jaxseg.dice_ce(x, Y, label_smoothing=0.1)),
    ("dice_focal", lambda x: jaxseg.dice_focal(x, Y)),
]


@pytest.mark.parametrize("f", [c[1] for c in ENGINE], ids=[c[0] for c in ENGINE])
def test_forward_mode_on_the_softmax_engine(f):
    """jvp matches central differences; so do Hessian-vector products."""
    eps = 1e-2

    @peers.jit  # every transformation traced into one program: one compilation
    def derivatives(x, t, above, below):
        tangent = jax.jvp(f, (x,), (t,))[1]
        hvp = jax.jvp(jax.grad(f), (x,), (t,))[1]
        return tangent, hvp, jax.grad(f)(above), jax.grad(f)(below)

    tangent, hvp, g_above, g_below = derivatives(X, TANGENT, X + eps * TANGENT, X - eps * TANGENT)
    want = _finite_difference(f, X, TANGENT)
    np.testing.assert_allclose(tangent, want, rtol=2e-3, atol=2e-5)
    # The ways around it work: forward-over-reverse (Hessian-vector products).
    fd = (g_above - g_below) / (2 * eps)
    np.testing.assert_allclose(hvp, fd, rtol=5e-2, atol=5e-4)


# --------------------------------------------------------------------------------------
# Float options are traced: a new value does not retrace.


def test_float_options_do_not_retrace():
    # Inside a combinator the term runs once per trace of the combined program.
    counted = chex.assert_max_traces(jaxseg.dice_loss, n=1)
    combined = jaxseg.combine(dice=counted, ce=jaxseg.cross_entropy)
    for smooth in (1e-5, 1e-3, 0.5):
        value = combined(X, Y, smooth_nr=smooth, smooth_dr=smooth)
        expected = ref.overlap_loss("dice", X, Y, smooth_nr=smooth, smooth_dr=smooth)
        np.testing.assert_allclose(value, expected + ref.cross_entropy(X, Y), rtol=1e-5)
    counted_ce = chex.assert_max_traces(jaxseg.cross_entropy, n=1)
    compound = jaxseg.combine(dice=jaxseg.dice_loss, ce=counted_ce)
    for weights in ((1.0, 0.5), (0.3, 2.0)):
        compound.evaluate(X, Y, weights, label_smoothing=weights[0] / 4)
    # A user's jit with the options as arguments traces once.
    f = jax.jit(
        chex.assert_max_traces(
            lambda x, y, s, w: jaxseg.dice_ce(x, y, smooth_nr=s, smooth_dr=s, lambda_dice=w), n=1
        )
    )
    for s, lam in ((1e-5, 1.0), (1e-2, 0.25)):
        expected = lam * ref.overlap_loss("dice", X, Y, smooth_nr=s, smooth_dr=s)
        np.testing.assert_allclose(f(X, Y, s, lam), expected + ref.cross_entropy(X, Y), rtol=1e-5)


# --------------------------------------------------------------------------------------
# Determinism: bit-identical repeated calls; jit equals eager with masking options.

DRNG = np.random.default_rng(1234)
DX = (DRNG.standard_normal((2, 6, 5, 3)) * 3).astype(np.float32)
DY = DRNG.integers(0, 3, (2, 6, 5)).astype(np.int32)
DY[0, 0, :2] = 255  # ignored pixels
WHERE = DRNG.random((2, 6, 5)) < 0.8
DX1 = (DRNG.standard_normal((2, 6, 5, 1)) * 3).astype(np.float32)
DY1 = DRNG.integers(0, 2, (2, 6, 5)).astype(np.int32)

MULTI = dict(ignore_index=255, where=WHERE)
DETERMINISM = [
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
DETERMINISM_IDS = [c[0] for c in DETERMINISM]


def _inputs(name):
    return (DX1, DY1) if name in BINARY else (DX, DY)


@functools.cache
def _value_and_grad(name):
    """``(value_and_grad(loss), its jit)`` per case: both tests share one compilation."""
    _, loss, options = next(c for c in DETERMINISM if c[0] == name)
    f = jax.value_and_grad(functools.partial(loss, **options))
    return f, jax.jit(f)


@pytest.mark.parametrize("name", DETERMINISM_IDS)
def test_repeated_calls_are_bit_identical(name):
    logits, labels = _inputs(name)
    f, jitted = _value_and_grad(name)
    results = [f(logits, labels) for _ in range(3)] + [jitted(logits, labels) for _ in range(3)]
    for value, grad in results[1:3]:
        np.testing.assert_array_equal(value, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])
    for value, grad in results[4:]:
        np.testing.assert_array_equal(value, results[3][0])
        np.testing.assert_array_equal(grad, results[3][1])
    assert np.isfinite(results[0][0]) and np.all(np.isfinite(results[0][1]))


@pytest.mark.parametrize("name", DETERMINISM_IDS)
def test_jit_matches_eager(name):
    logits, labels = _inputs(name)
    f, jitted = _value_and_grad(name)
    value, grad = jitted(logits, labels)
    with jax.disable_jit():
        eager_value, eager_grad = f(logits, labels)
    np.testing.assert_allclose(eager_value, value, rtol=1e-5, atol=1e-6)
    scale = float(np.max(np.abs(grad)))
    np.testing.assert_allclose(eager_grad, grad, rtol=1e-4, atol=1e-5 * scale)


def test_deep_supervision_is_deterministic():
    loss = jaxseg.deep_supervision(jaxseg.dice_ce)
    outputs = [DX, DX[:, ::2, ::2]]
    f = jax.value_and_grad(lambda xs: loss(xs, DY, ignore_index=255))
    (v0, g0), (v1, g1) = f(outputs), f(outputs)
    np.testing.assert_array_equal(v0, v1)
    for a, b in zip(g0, g1, strict=True):
        np.testing.assert_array_equal(a, b)


def test_metrics_are_deterministic():
    pred = DRNG.integers(0, 3, DY.shape).astype(np.int32)
    state = metrics.update(metrics.metric_state(3), pred, DY, ignore_index=255)
    again = metrics.update(metrics.metric_state(3), pred, DY, ignore_index=255)
    for a, b in zip(state, again, strict=True):
        np.testing.assert_array_equal(a, b)
    first, second = metrics.compute(state), metrics.compute(again)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
