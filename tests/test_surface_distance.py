"""average_surface_distance against MONAI SurfaceDistanceMetric and a float64 SciPy reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.metrics import average_surface_distance, hausdorff_distance

ndimage = pytest.importorskip("scipy.ndimage")

SHAPES = {2: (29, 34), 3: (11, 13, 12)}
NUM_CLASSES = 4


def _maps(seed: int, spatial: tuple[int, ...], batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Blobby label maps, a perturbed prediction, and every empty-surface case.

    Sample 1 lacks class 2 in its prediction (label only), sample 0 lacks class 3 in its
    label (prediction only), sample 2 has class 3 in neither.
    """
    rng = np.random.default_rng(seed)
    sigma = (0, 0) + (2.0,) * len(spatial)
    shape = (batch, NUM_CLASSES, *spatial)
    base = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    labels = base.argmax(1).astype(np.int32)
    predictions = (base + 0.6 * noise).argmax(1).astype(np.int32)
    predictions[1][predictions[1] == 2] = 0
    labels[0][labels[0] == 3] = 1
    predictions[0][:2] = 3  # a slab: class 3 is surely predicted in sample 0
    labels[2][labels[2] == 3] = 1
    predictions[2][predictions[2] == 3] = 1
    return predictions, labels


def _spacing(kind: str, ndim: int):
    return None if kind == "unit" else (0.7, 1.9, 1.3)[:ndim]


def _reference(predictions, labels, num_classes, *, symmetric, spacing, include_background):
    """float64: surfaces by face-connected erosion, distances by SciPy's exact EDT."""
    first = 0 if include_background else 1
    out = np.empty((predictions.shape[0], num_classes - first))
    for b in range(predictions.shape[0]):
        for c in range(first, num_classes):
            edges = []
            for mask in (predictions[b] == c, labels[b] == c):
                edges.append(mask ^ ndimage.binary_erosion(mask))
            pred_edges, label_edges = edges
            if not pred_edges.any() and not label_edges.any():
                out[b, c - first] = np.nan
                continue
            if not pred_edges.any() or not label_edges.any():
                out[b, c - first] = np.inf
                continue
            pairs = [(pred_edges, label_edges)]
            if symmetric:
                pairs.append((label_edges, pred_edges))
            distances = [
                ndimage.distance_transform_edt(~target, sampling=spacing)[source]
                for source, target in pairs
            ]
            out[b, c - first] = np.concatenate(distances).mean()
    return out


def _monai(predictions, labels, num_classes, *, spacing=None, **options):
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics", reason="MONAI is the oracle")
    one_hot = lambda x: torch.nn.functional.one_hot(
        torch.as_tensor(x, dtype=torch.long), num_classes
    ).movedim(-1, 1)
    metric = metrics.SurfaceDistanceMetric(distance_metric="euclidean", reduction="none", **options)
    with pytest.warns(UserWarning, match="all 0"):  # MONAI warns about the empty classes
        out = metric(one_hot(predictions).float(), one_hot(labels).float(), spacing=spacing)
    return out.numpy()


@functools.cache
def _jitted(num_classes, symmetric, include_background):
    return jax.jit(
        lambda p, y, s: average_surface_distance(
            p,
            y,
            num_classes,
            symmetric=symmetric,
            spacing=s,
            include_background=include_background,
        )
    )


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("spacing_kind", ["unit", "anisotropic"])
def test_matches_monai_and_scipy(ndim, symmetric, spacing_kind):
    predictions, labels = _maps(ndim * 10 + symmetric, SHAPES[ndim])
    spacing = _spacing(spacing_kind, ndim)
    got = np.asarray(
        average_surface_distance(
            predictions, labels, NUM_CLASSES, symmetric=symmetric, spacing=spacing
        )
    )
    assert got.dtype == np.float32 and got.shape == (3, NUM_CLASSES - 1)
    # The empty-surface conventions: +inf for one side empty, NaN for both.
    assert np.isposinf(got[1, 1]) and np.isposinf(got[0, 2]) and np.isnan(got[2, 2])
    expected = _reference(
        predictions,
        labels,
        NUM_CLASSES,
        symmetric=symmetric,
        spacing=spacing,
        include_background=False,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    monai = _monai(
        predictions,
        labels,
        NUM_CLASSES,
        symmetric=symmetric,
        spacing=None if spacing is None else list(spacing),
    )
    np.testing.assert_allclose(got, monai, rtol=1e-6, atol=0)


def test_large_volume_matches_float64():
    """A batch of 64^3 volumes (3e5 surface distances a sample): float32 sums stay exact.

    A plain float32 reduction of these distances was off by 1.6e-5 relative here; the
    pairwise sum keeps the error near 1e-7.
    """
    rng = np.random.default_rng(64)
    shape = (2, 3, 64, 64, 64)
    base = ndimage.gaussian_filter(rng.standard_normal(shape), (0, 0, 4, 4, 4))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), (0, 0, 4, 4, 4))
    labels = base.argmax(1).astype(np.int32)
    predictions = (base + 0.5 * noise).argmax(1).astype(np.int32)
    spacing = (0.8, 0.8, 2.5)
    got = average_surface_distance(predictions, labels, 3, symmetric=True, spacing=spacing)
    expected = _reference(
        predictions, labels, 3, symmetric=True, spacing=spacing, include_background=False
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_include_background_and_per_sample_spacing_match_monai():
    predictions, labels = _maps(5, SHAPES[2])
    spacing = np.array([[0.5, 1.0], [1.2, 0.8], [2.0, 2.0]])
    got = average_surface_distance(
        predictions, labels, NUM_CLASSES, include_background=True, spacing=spacing
    )
    monai = _monai(
        predictions, labels, NUM_CLASSES, include_background=True, spacing=spacing.tolist()
    )
    np.testing.assert_allclose(got, monai, rtol=1e-6, atol=0)
    # The same under jit, with the spacing traced.
    np.testing.assert_allclose(
        _jitted(NUM_CLASSES, False, True)(predictions, labels, spacing), monai, rtol=1e-6, atol=0
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_empty_maps(ndim):
    """Empty prediction, empty label and both empty, as MONAI scores them.

    Sample 0 has a class-1 blob in its label only, sample 1 in its prediction only,
    sample 2 nothing: classes 2 and 3 are empty in both maps everywhere.
    """
    predictions = np.zeros((3, *SHAPES[ndim]), np.int32)
    labels = np.zeros_like(predictions)
    labels[(0, *(slice(2, 6),) * ndim)] = 1
    predictions[(1, *(slice(3, 7),) * ndim)] = 1
    expected = np.full((3, NUM_CLASSES - 1), np.nan)
    expected[:2, 0] = np.inf
    for symmetric in (False, True):
        got = average_surface_distance(predictions, labels, NUM_CLASSES, symmetric=symmetric)
        np.testing.assert_array_equal(got, expected)
        monai = _monai(predictions, labels, NUM_CLASSES, symmetric=symmetric)
        np.testing.assert_array_equal(got, monai)


def test_hand_computed():
    labels = np.zeros((1, 8, 8), np.int32)
    labels[0, 2:5, 2:5] = 1
    predictions = np.zeros((1, 8, 8), np.int32)
    predictions[0, 2:5, 3:7] = 1
    # Prediction surface (10 pixels): distances 0,0,1,2 | 1,2 | 0,0,1,2 to the label's.
    np.testing.assert_allclose(average_surface_distance(predictions, labels, 2), [[0.9]])
    # Label surface (8 pixels): 1,0,0 | 1,1 | 1,0,0 to the prediction's; pooled: 13 / 18.
    np.testing.assert_allclose(
        average_surface_distance(predictions, labels, 2, symmetric=True), [[13 / 18]], rtol=1e-6
    )


def test_properties():
    predictions, labels = _maps(9, SHAPES[2])
    run = _jitted(NUM_CLASSES, True, False)
    unit = np.ones(2, np.float32)
    symmetric = np.asarray(run(predictions, labels, unit))
    # Symmetric ASD is symmetric; identical maps are at distance 0 (NaN where empty).
    np.testing.assert_allclose(run(labels, predictions, unit), symmetric, rtol=1e-6)
    same = np.asarray(run(labels, labels, unit))
    present = np.stack([(labels == c).any(axis=(1, 2)) for c in range(1, NUM_CLASSES)], -1)
    np.testing.assert_array_equal(np.isnan(same), ~present)
    np.testing.assert_array_equal(same[present], 0.0)
    # Isotropic spacing scales every distance.
    np.testing.assert_allclose(run(predictions, labels, 2.5 * unit), 2.5 * symmetric, rtol=1e-6)
    # The pooled mean lies between the directed means, and never above HD (the maximum).
    forward = np.asarray(average_surface_distance(predictions, labels, NUM_CLASSES))
    backward = np.asarray(average_surface_distance(labels, predictions, NUM_CLASSES))
    finite = np.isfinite(symmetric)
    low, high = np.minimum(forward, backward), np.maximum(forward, backward)
    assert np.all(symmetric[finite] >= low[finite] * (1 - 1e-6))
    assert np.all(symmetric[finite] <= high[finite] * (1 + 1e-6))
    hd = np.asarray(hausdorff_distance(predictions, labels, NUM_CLASSES, percentile=None))
    assert np.all(symmetric[finite] <= hd[finite] * (1 + 1e-6))


def test_bad_inputs():
    maps = jnp.zeros((1, 6, 6), jnp.int32)
    with pytest.raises(ValueError, match="spacing"):
        average_surface_distance(maps, maps, 2, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        average_surface_distance(maps, maps, 2, spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="predictions"):
        average_surface_distance(maps.astype(jnp.float32), maps, 2)
    with pytest.raises(ValueError, match="num_classes"):
        average_surface_distance(maps, maps, 1)
