"""Tests for jaxseg._distance: the EDT against SciPy, boundaries and metrics against MONAI."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxseg._distance import _interpolated_percentile
from jaxseg.metrics import (
    boundary_mask,
    euclidean_distance_transform,
    hausdorff_distance,
    surface_dice,
)

SHAPES = {2: (37, 46), 3: (14, 19, 17)}


def _class_maps(
    seed: int, spatial: tuple[int, ...], num_classes: int, batch: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Blobby label maps (argmax of smoothed noise) and a perturbed prediction."""
    rng = np.random.default_rng(seed)
    sigma = (0, 0) + (2.5,) * len(spatial)
    base = ndimage.gaussian_filter(rng.standard_normal((batch, num_classes, *spatial)), sigma)
    noise = ndimage.gaussian_filter(rng.standard_normal((batch, num_classes, *spatial)), sigma)
    labels = base.argmax(1).astype(np.int32)
    predictions = (base + 0.6 * noise).argmax(1).astype(np.int32)
    return predictions, labels


def _spacing(kind: str, ndim: int, seed: int = 0) -> tuple[float, ...] | None:
    if kind == "unit":
        return None
    return tuple(np.random.default_rng(seed).uniform(0.4, 2.5, ndim).round(3).tolist())


# ------------------------------------------------------------------ MONAI oracles


def _one_hot(x: np.ndarray, num_classes: int):
    torch = pytest.importorskip("torch")
    tensor = torch.nn.functional.one_hot(torch.as_tensor(x, dtype=torch.long), num_classes)
    return tensor.movedim(-1, 1).float()


def _monai_hausdorff(predictions, labels, num_classes, *, spacing=None, **options):
    metrics = pytest.importorskip("monai.metrics", reason="MONAI is the oracle")
    metric = metrics.HausdorffDistanceMetric(
        distance_metric="euclidean", reduction="none", **options
    )
    out = metric(
        _one_hot(predictions, num_classes),
        _one_hot(labels, num_classes),
        spacing=None if spacing is None else list(spacing),
    )
    return out.numpy()


def _monai_surface_dice(
    predictions, labels, num_classes, *, tolerance, include_background=False, spacing=None
):
    metrics = pytest.importorskip("monai.metrics", reason="MONAI is the oracle")
    kept = num_classes - (0 if include_background else 1)
    metric = metrics.SurfaceDiceMetric(
        class_thresholds=[tolerance] * kept,
        include_background=include_background,
        distance_metric="euclidean",
        reduction="none",
    )
    out = metric(
        _one_hot(predictions, num_classes),
        _one_hot(labels, num_classes),
        spacing=None if spacing is None else list(spacing),
    )
    return out.numpy()


# --------------------------------------------------------------- distance transform


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("spacing_kind", ["unit", "anisotropic"])
@pytest.mark.parametrize("density", [0.002, 0.05, 0.6])
def test_edt_matches_scipy(ndim, spacing_kind, density):
    rng = np.random.default_rng(ndim * 100 + int(density * 1000))
    mask = rng.random(SHAPES[ndim]) < density
    mask.flat[0] = True  # SciPy has no defined answer for a mask without a feature
    spacing = _spacing(spacing_kind, ndim, seed=ndim)
    expected = ndimage.distance_transform_edt(~mask, sampling=spacing)
    got = euclidean_distance_transform(mask, spacing=spacing)
    assert got.dtype == jnp.float32 and got.shape == mask.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_edt_blobs_with_scalar_spacing(ndim):
    _, labels = _class_maps(7, SHAPES[ndim], 3, batch=1)
    mask = labels[0] == 1
    expected = ndimage.distance_transform_edt(~mask, sampling=0.7)
    np.testing.assert_allclose(
        euclidean_distance_transform(mask, spacing=0.7), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_edt_empty_mask_is_inf_and_full_mask_is_zero(ndim):
    shape = SHAPES[ndim]
    empty = euclidean_distance_transform(np.zeros(shape, bool), spacing=(1.5,) * ndim)
    assert np.all(np.isposinf(empty))
    full = euclidean_distance_transform(np.ones(shape, bool))
    np.testing.assert_array_equal(full, np.zeros(shape))


def test_edt_hand_computed():
    mask = np.zeros((3, 4), bool)
    mask[0, 0] = True
    rows, cols = np.mgrid[:3, :4]
    expected = np.sqrt((2.0 * rows) ** 2 + cols**2)
    np.testing.assert_allclose(
        euclidean_distance_transform(mask, spacing=(2.0, 1.0)), expected, rtol=1e-6
    )


def test_edt_traced_spacing_and_vmap():
    rng = np.random.default_rng(3)
    masks = rng.random((3, 12, 15)) < 0.05
    spacings = rng.uniform(0.5, 2.0, (3, 2)).astype(np.float32)
    batched = jax.jit(jax.vmap(lambda m, s: euclidean_distance_transform(m, spacing=s)))
    got = batched(masks, spacings)
    for mask, spacing, out in zip(masks, spacings, got, strict=True):
        expected = ndimage.distance_transform_edt(~mask, sampling=spacing.astype(np.float64))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- boundaries


@pytest.mark.parametrize("ndim", [2, 3])
def test_boundary_matches_scipy_erosion_and_monai(ndim):
    predictions, labels = _class_maps(11, SHAPES[ndim], 3, batch=1)
    for mask in (labels[0] == 1, predictions[0] == 2, np.ones(SHAPES[ndim], bool)):
        # MONAI's get_mask_edges is `binary_erosion(m) ^ m` (cross structure, zero border).
        expected = mask & ~ndimage.binary_erosion(mask)
        got = boundary_mask(mask)
        assert got.dtype == jnp.bool_
        np.testing.assert_array_equal(got, expected)
    utils = pytest.importorskip("monai.metrics.utils", reason="MONAI is the oracle")
    pred, gt = labels[0] == 1, predictions[0] == 1
    for crop in (False, True):
        edges_pred, edges_gt = utils.get_mask_edges(pred, gt, crop=crop)
        # Cropping changes the frame, not the edges.
        assert edges_pred.sum() == boundary_mask(pred).sum()
        assert edges_gt.sum() == boundary_mask(gt).sum()
        if not crop:
            np.testing.assert_array_equal(edges_pred, boundary_mask(pred))


# ------------------------------------------------------------------------ metrics


def test_percentile_matches_numpy():
    rng = np.random.default_rng(5)
    distances = (rng.random((6, 50)) * 10).round(1).astype(np.float32)  # with ties
    valid = rng.random((6, 50)) < np.array([0.02, 0.1, 0.5, 0.9, 1.0, 0.3])[:, None]
    valid[0] = False
    valid[0, 7] = True
    percentile = jax.jit(_interpolated_percentile)
    for quantile in (0.0, 0.5, 0.95, 1.0):
        got = percentile(distances, valid, quantile)
        expected = [
            np.percentile(d[v], 100 * quantile) for d, v in zip(distances, valid, strict=True)
        ]
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    empty = percentile(np.ones((6, 50), np.float32), np.zeros((6, 50), bool), 0.95)
    assert np.isfinite(empty).all()


# Every metric test uses a batch of 2 with 4 classes on SHAPES[ndim], and these
# option sets, so that the tests share compiled kernels.
NUM_CLASSES = 4
HAUSDORFF_CASES = [
    # ndim, percentile, include_background, directed, spacing kind
    (2, 95.0, False, False, "unit"),
    (2, None, False, False, "anisotropic"),
    (2, 95.0, True, False, "anisotropic"),
    (2, 50.0, False, True, "anisotropic"),
    (2, 100.0, False, False, "unit"),
    (3, 95.0, False, False, "anisotropic"),
    (3, None, False, False, "unit"),
    (3, 50.0, False, True, "unit"),
]
EDGE_CASE_OPTIONS = [
    dict(percentile=95.0),
    dict(percentile=None),
    dict(percentile=95.0, directed=True),
]


@pytest.mark.parametrize(
    ("ndim", "percentile", "include_background", "directed", "spacing_kind"), HAUSDORFF_CASES
)
def test_hausdorff_matches_monai(ndim, percentile, include_background, directed, spacing_kind):
    num_classes = NUM_CLASSES
    predictions, labels = _class_maps(ndim, SHAPES[ndim], num_classes)
    spacing = _spacing(spacing_kind, ndim, seed=1)
    options = dict(percentile=percentile, include_background=include_background, directed=directed)
    got = hausdorff_distance(predictions, labels, num_classes, spacing=spacing, **options)
    expected = _monai_hausdorff(predictions, labels, num_classes, spacing=spacing, **options)
    assert got.dtype == jnp.float32
    assert got.shape == (2, num_classes - (0 if include_background else 1))
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("ndim", "include_background"), [(2, False), (2, True), (3, False)])
def test_surface_dice_matches_monai(ndim, include_background):
    num_classes = NUM_CLASSES
    predictions, labels = _class_maps(20 + ndim, SHAPES[ndim], num_classes)
    for spacing in (None, _spacing("anisotropic", ndim, seed=2)):
        for tolerance in (0.0, 1.0, 1.5, 2.3):
            got = surface_dice(
                predictions,
                labels,
                num_classes,
                tolerance=tolerance,
                include_background=include_background,
                spacing=spacing,
            )
            expected = _monai_surface_dice(
                predictions,
                labels,
                num_classes,
                tolerance=tolerance,
                include_background=include_background,
                spacing=spacing,
            )
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def _edge_case_maps(ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Every empty-class situation, and single-pixel objects, in a batch of 2.

    Sample 0: class 1 is a blob in both (shifted), class 2 is only in the label,
    class 3 only in the prediction. Sample 1: class 1 is one pixel in each, apart;
    class 2 is one pixel in the label and a blob in the prediction; class 3 is in
    neither.
    """
    spatial = SHAPES[ndim]
    predictions = np.zeros((2, *spatial), np.int32)
    labels = np.zeros((2, *spatial), np.int32)
    rest = (ndim - 2) * (slice(2, 8),)
    labels[(0, slice(2, 8), slice(2, 8), *rest)] = 1
    predictions[(0, slice(3, 10), slice(2, 8), *rest)] = 1
    labels[(0,) + (slice(10, 13),) * ndim] = 2
    predictions[(0, slice(1, 3), slice(10, 13)) + (slice(0, 3),) * (ndim - 2)] = 3
    labels[(1, 12, 1) + (1,) * (ndim - 2)] = 1
    predictions[(1, 9, 0) + (4,) * (ndim - 2)] = 1
    labels[(1, 1, spatial[1] - 2) + (2,) * (ndim - 2)] = 2
    corner = (slice(0, 4), slice(spatial[1] - 4, None)) + (slice(0, 4),) * (ndim - 2)
    predictions[(1, *corner)] = 2
    return predictions, labels


@pytest.mark.parametrize("ndim", [2, 3])
def test_empty_and_single_pixel_classes_match_monai(ndim):
    predictions, labels = _edge_case_maps(ndim)
    spacing = _spacing("anisotropic", ndim, seed=4)
    for options in EDGE_CASE_OPTIONS:
        got = hausdorff_distance(predictions, labels, NUM_CLASSES, spacing=spacing, **options)
        expected = _monai_hausdorff(predictions, labels, NUM_CLASSES, spacing=spacing, **options)
        np.testing.assert_allclose(got, expected, rtol=1e-4, equal_nan=True)
    # The conventions themselves, spelled out: rows are samples, columns classes 1..3.
    hd95 = np.asarray(hausdorff_distance(predictions, labels, NUM_CLASSES, spacing=spacing))
    np.testing.assert_array_equal(np.isnan(hd95), [[False, True, True], [False, False, True]])
    assert np.isfinite(hd95[~np.isnan(hd95)]).all()
    hd = np.asarray(hausdorff_distance(predictions, labels, NUM_CLASSES, percentile=None))
    np.testing.assert_array_equal(hd[0, 1:], [np.inf, np.inf])
    assert np.isnan(hd[1, 2]) and np.isfinite(hd[1, :2]).all()
    for tolerance in (0.0, 2.0, 4.5):
        got = surface_dice(predictions, labels, NUM_CLASSES, tolerance=tolerance, spacing=spacing)
        expected = _monai_surface_dice(
            predictions, labels, NUM_CLASSES, tolerance=tolerance, spacing=spacing
        )
        np.testing.assert_allclose(got, expected, rtol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(np.asarray(got)[0, 1:], [0.0, 0.0])
        assert np.isnan(got[1, 2])


def _embedded(small: np.ndarray) -> np.ndarray:
    """``small`` as sample 0 of a 2D metric batch (the shape the other tests compile)."""
    out = np.zeros((2, *SHAPES[2]), np.int32)
    out[(0, *(slice(0, n) for n in small.shape))] = small
    return out


def test_hand_computed_single_pixels():
    labels = np.zeros((7, 7), np.int32)
    predictions = np.zeros((7, 7), np.int32)
    labels[1, 1] = 1
    predictions[4, 5] = 1
    predictions, labels = _embedded(predictions), _embedded(labels)
    spacing = (2.0, 1.0)
    distance = np.sqrt((2.0 * 3) ** 2 + 4**2)  # sqrt(52)
    for percentile in (95.0, None, 0.0, 100.0):
        hd = hausdorff_distance(
            predictions, labels, NUM_CLASSES, spacing=spacing, percentile=percentile
        )
        np.testing.assert_allclose(hd[0, 0], distance, rtol=1e-6)
    for tolerance, expected in ((7.3, 1.0), (7.2, 0.0)):
        nsd = surface_dice(predictions, labels, NUM_CLASSES, tolerance=tolerance, spacing=spacing)
        assert nsd[0, 0] == expected


def test_hand_computed_shifted_square():
    # Label: a 3x3 square; prediction: a 3x4 rectangle one column to the right. The
    # surfaces have 8 and 10 pixels; the prediction's last column is 2 away.
    labels = np.zeros((7, 7), np.int32)
    predictions = np.zeros((7, 7), np.int32)
    labels[2:5, 2:5] = 1
    predictions[2:5, 3:7] = 1
    predictions, labels = _embedded(predictions), _embedded(labels)
    hd = hausdorff_distance(predictions, labels, NUM_CLASSES, percentile=None)
    np.testing.assert_allclose(hd[0, 0], 2.0)
    # Label surface: all 8 pixels within 1 of the prediction's. Prediction surface: 7
    # pixels within 1, the 3 of the last column at 2. So (8 + 7) / (8 + 10).
    nsd = surface_dice(predictions, labels, NUM_CLASSES, tolerance=1.0)
    np.testing.assert_allclose(nsd[0, 0], 15.0 / 18.0, rtol=1e-6)
    # Medians of {0 x4, 1 x4} and {0 x4, 1 x3, 2 x3}: 0.5 and 1.0.
    hd50 = hausdorff_distance(predictions, labels, NUM_CLASSES, percentile=50.0)
    np.testing.assert_allclose(hd50[0, 0], 1.0)
    np.testing.assert_array_equal(np.isnan(hd50), [[False, True, True], [True, True, True]])


def test_jit_equals_eager_and_traced_options():
    predictions, labels = _class_maps(31, SHAPES[2], NUM_CLASSES)
    spacing = np.array([0.8, 1.7], np.float32)
    # Spacing and percentile traced: one compiled kernel serves every value.
    jitted = jax.jit(
        lambda p, y, s, q: hausdorff_distance(p, y, NUM_CLASSES, spacing=s, percentile=q)
    )
    for percentile in (95.0, 50.0):
        eager = hausdorff_distance(
            predictions, labels, NUM_CLASSES, spacing=spacing, percentile=percentile
        )
        np.testing.assert_array_equal(jitted(predictions, labels, spacing, percentile), eager)
    eager = surface_dice(predictions, labels, NUM_CLASSES, tolerance=1.5, spacing=spacing)
    jitted = jax.jit(lambda p, y, t, s: surface_dice(p, y, NUM_CLASSES, tolerance=t, spacing=s))
    np.testing.assert_array_equal(jitted(predictions, labels, 1.5, spacing), eager)


def test_per_sample_spacing_and_per_class_tolerance():
    predictions, labels = _class_maps(41, SHAPES[2], NUM_CLASSES)
    spacings = np.array([[0.5, 1.5], [2.0, 1.0]])
    tolerances = np.array([9.0, 1.0, 2.0, 0.5])  # the background entry is dropped
    hd = hausdorff_distance(predictions, labels, NUM_CLASSES, spacing=spacings)
    nsd = surface_dice(predictions, labels, NUM_CLASSES, tolerance=tolerances, spacing=spacings)
    for b, spacing in enumerate(spacings):
        shared = hausdorff_distance(predictions, labels, NUM_CLASSES, spacing=spacing)
        np.testing.assert_allclose(hd[b], shared[b], rtol=1e-6)
        for c in range(1, NUM_CLASSES):
            shared = surface_dice(
                predictions, labels, NUM_CLASSES, tolerance=tolerances[c], spacing=spacing
            )
            np.testing.assert_allclose(nsd[b, c - 1], shared[b, c - 1], rtol=1e-6)


_MAP = np.zeros((2, 5, 5), np.int32)
_MASK = np.zeros((4, 4), bool)
ERROR_CASES = [
    # function, positional arguments, keyword arguments, expected message
    (euclidean_distance_transform, (_MASK.astype(np.int32),), {}, "boolean"),
    (euclidean_distance_transform, (np.zeros((4,), bool),), {}, r"got shape \(4,\)"),
    (euclidean_distance_transform, (_MASK,), dict(spacing=(1, 2, 3)), r"shape \(2,\)"),
    (euclidean_distance_transform, (_MASK,), dict(spacing=(1, -2)), "> 0"),
    (boundary_mask, (np.zeros((2, 2, 2, 2), bool),), {}, r"\(2, 2, 2, 2\)"),
    (hausdorff_distance, (_MAP, _MAP[..., :4], 2), {}, r"\(2, 5, 5\).*\(2, 5, 4\)"),
    (hausdorff_distance, (_MAP * 1.0, _MAP, 2), {}, "`predictions` must be an integer"),
    (hausdorff_distance, (_MAP, _MAP == 1, 2), {}, "`labels` must be an integer"),
    (hausdorff_distance, (_MAP[0], _MAP[0], 2), {}, r"got shape \(5, 5\) \(rank 2\)"),
    (hausdorff_distance, (_MAP, _MAP, 2), dict(spacing=(1.0,) * 3), r"\(2, 2\).*shape \(3,\)"),
    (hausdorff_distance, (_MAP, _MAP, 2), dict(percentile=120.0), "percentile"),
    (hausdorff_distance, (_MAP, _MAP, 1), {}, "num_classes"),
    (surface_dice, (_MAP, _MAP, 3), dict(tolerance=[1.0, 2.0]), r"shape \(3,\)"),
    (surface_dice, (_MAP, _MAP, 3), dict(tolerance=-1.0), ">= 0"),
]


@pytest.mark.parametrize(("function", "args", "kwargs", "message"), ERROR_CASES)
def test_errors_name_argument_and_shapes(function, args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        function(*args, **kwargs)
