"""Tests for jaxseg._instances: panoptic quality and per-component Dice against MONAI,
lesion-wise scores against a float64 NumPy/SciPy re-implementation of the BraTS 2023
evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import _instances
from jaxseg.metrics import dice_score, lesion_wise_scores, panoptic_quality

torch = pytest.importorskip("torch")
monai_metrics = pytest.importorskip("monai.metrics")
ndimage = pytest.importorskip("scipy.ndimage")


# ------------------------------------------------------------------ panoptic quality


def _instance_maps(rng, spatial, count, num_classes):
    """(*spatial, 2) instance ids (sparse, reused across classes) and classes."""
    out = np.zeros((*spatial, 2), np.int32)
    for _ in range(count):
        corner = [rng.integers(0, s - 2) for s in spatial]
        extent = [rng.integers(2, 5) for _ in spatial]
        region = tuple(slice(a, a + b) for a, b in zip(corner, extent, strict=True))
        out[region] = (rng.integers(1, 60), rng.integers(1, num_classes + 1))
    return out


def _perturbed(rng, label):
    """A prediction: the label with some instances shifted, relabelled or dropped, plus noise."""
    pred = label.copy()
    ids = np.unique(label[..., 0])
    for i in ids[ids > 0]:
        roll = rng.integers(-1, 2, size=label.ndim - 1)
        if rng.random() < 0.3:
            pred[label[..., 0] == i] = 0
            shifted = np.roll(label[..., 0] == i, tuple(roll), axis=tuple(range(label.ndim - 1)))
            pred[shifted] = (i + 100, label[label[..., 0] == i][0, 1])
    spurious = rng.random(label.shape[:-1]) < 0.03
    pred[spurious] = np.stack([rng.integers(200, 205, spurious.sum()), np.ones(spurious.sum())], -1)
    return pred


def _monai_panoptic(pred, label, num_classes, reduction, threshold=0.5):
    to_torch = lambda x: torch.as_tensor(np.moveaxis(x, -1, 1))  # noqa: E731
    scores = monai_metrics.PanopticQualityMetric(
        num_classes,
        metric_name=("pq", "sq", "rq"),
        reduction=reduction,
        match_iou_threshold=threshold,
    )
    scores(to_torch(pred), to_torch(label))
    counts = monai_metrics.PanopticQualityMetric(
        num_classes,
        reduction=reduction,
        match_iou_threshold=threshold,
        return_confusion_matrix=True,
    )
    counts(to_torch(pred), to_torch(label))
    return [s.numpy() for s in scores.aggregate()], counts.aggregate().numpy()


@pytest.mark.parametrize("spatial", [(22, 26), (10, 12, 9)], ids=["2d", "3d"])
@pytest.mark.parametrize(
    "reduction", ["none", "mean_batch", "sum_batch", "mean", "sum", "mean_channel", "sum_channel"]
)
def test_panoptic_quality_matches_monai(spatial, reduction):
    rng = np.random.default_rng(len(spatial))
    label = np.stack([_instance_maps(rng, spatial, 14, 3) for _ in range(3)])
    pred = np.stack([_perturbed(rng, x) for x in label])
    pred[2, ..., 0] = 0  # an empty prediction
    label[1, ..., 0] = 0  # an empty label
    (pq, sq, rq), counts = _monai_panoptic(pred, label, 3, reduction)
    out = panoptic_quality(pred, label, num_classes=3, reduction=reduction)
    assert float(np.sum(counts[..., 0])) > 0  # some matches
    for ours, theirs in ((out.pq, pq), (out.sq, sq), (out.rq, rq)):
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-6, atol=1e-6)
    ours = np.stack([out.tp, out.fp, out.fn, out.iou_sum], -1)
    np.testing.assert_allclose(ours, counts, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_panoptic_quality_threshold_and_ties(threshold):
    # IoU exactly 0.5 does not match (strict), as in MONAI.
    label = np.zeros((1, 6, 8, 2), np.int32)
    label[0, :2, :2] = (1, 1)
    pred = np.zeros_like(label)
    pred[0, :2, :4] = (9, 1)  # IoU 4/8 = 0.5
    label[0, 4:, 4:] = (2, 2)
    pred[0, 4:, 5:] = (3, 2)  # IoU 6/8 = 0.75
    (pq, sq, rq), counts = _monai_panoptic(pred, label, 2, "none", threshold)
    out = panoptic_quality(
        pred, label, num_classes=2, reduction="none", match_iou_threshold=threshold
    )
    np.testing.assert_allclose(np.stack([out.tp, out.fp, out.fn, out.iou_sum], -1), counts)
    np.testing.assert_allclose(np.asarray(out.pq), pq, rtol=1e-6)
    assert np.asarray(out.tp)[0].tolist() == [0, float(threshold < 0.75)]


def test_panoptic_quality_both_empty():
    empty = np.zeros((2, 5, 5, 2), np.int32)
    out = panoptic_quality(empty, empty, num_classes=2, reduction="none")
    (pq, _, _), _ = _monai_panoptic(empty, empty, 2, "none")
    np.testing.assert_array_equal(np.asarray(out.pq), pq)
    assert np.all(np.asarray(out.pq) == 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"match_iou_threshold": 0.4}, "Hungarian"),
        ({"reduction": "batch"}, "reduction"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_panoptic_quality_errors(kwargs, match):
    x = np.zeros((1, 4, 4, 2), np.int32)
    options = {"num_classes": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        panoptic_quality(x, x, **options)
    with pytest.raises(ValueError, match="shape"):
        panoptic_quality(x[..., :1], x[..., :1], num_classes=1)


# ---------------------------------------------------------------- per-component Dice


def _blobs(rng, shape, threshold=0.35, sigma=1.2):
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), (0,) + (sigma,) * (len(shape) - 1))
    return (noise > threshold).astype(np.int32)


def _one_hot_cf(x):
    return torch.nn.functional.one_hot(torch.as_tensor(x).long(), 2).movedim(-1, 1)


def _monai_per_component(pred, label, ignore_empty):
    import warnings

    metric = monai_metrics.DiceMetric(
        per_component=True, reduction="none", ignore_empty=ignore_empty
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Voronoi computation is running on CPU"
        return metric(_one_hot_cf(pred), _one_hot_cf(label)).numpy()


@pytest.mark.parametrize("spatial", [(30, 34), (12, 14, 11)], ids=["2d", "3d"])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_per_component_dice_matches_monai(spatial, ignore_empty):
    rng = np.random.default_rng(len(spatial))
    label = _blobs(rng, (4, *spatial))
    pred = _blobs(rng, (4, *spatial))
    pred[0] = label[0]
    pred[0, :4] = 0  # some components missed or cut
    label[1] = 0  # empty label, nonempty prediction
    label[2] = 0  # both empty
    pred[2] = 0
    pred[3] = 0  # empty prediction
    expected = _monai_per_component(pred, label, ignore_empty)
    out = np.asarray(dice_score(pred, label, 2, per_component=True, ignore_empty=ignore_empty))
    assert out.shape == expected.shape == (4, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ndim", [2, 3])
def test_per_component_dice_many_small_components_and_ties(ndim):
    # A lattice of single pixels: many components and many equidistant pixels, where
    # the Voronoi assignment must break ties as SciPy's feature transform does.
    rng = np.random.default_rng(11)
    spatial = (33, 35) if ndim == 2 else (13, 11, 12)
    label = np.zeros((2, *spatial), np.int32)
    label[(slice(None), *(slice(0, None, 4) for _ in spatial))] = 1
    label[1] *= rng.random(spatial) < 0.7
    pred = (rng.random((2, *spatial)) < 0.3).astype(np.int32)
    expected = _monai_per_component(pred, label, True)
    out = np.asarray(dice_score(pred, label, 2, per_component=True))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)


def test_voronoi_regions_match_scipy_feature_transform():
    rng = np.random.default_rng(5)
    for spatial in ((17, 19), (9, 8, 10)):
        seeds = rng.random(spatial) < 0.08
        components, _ = ndimage.label(seeds, ndimage.generate_binary_structure(len(spatial), 1))
        indices = ndimage.distance_transform_edt(
            ~seeds, return_distances=False, return_indices=True
        )
        expected = components[tuple(indices)]
        ours = np.asarray(jax.jit(_instances.voronoi_regions)(jnp.asarray(components, jnp.int32)))
        np.testing.assert_array_equal(ours, expected)


def test_per_component_errors():
    x = np.zeros((1, 5, 5), np.int32)
    with pytest.raises(ValueError, match="num_classes"):
        dice_score(x, x, 3, per_component=True)
    with pytest.raises(ValueError, match="ignore_index"):
        dice_score(x, x, 2, per_component=True, ignore_index=0)
    with pytest.raises(ValueError, match="2 or 3 spatial"):
        dice_score(x[:, 0], x[:, 0], 2, per_component=True)
