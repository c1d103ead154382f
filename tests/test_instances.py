"""Tests for jaxseg._instances: panoptic quality and per-component Dice against MONAI,
lesion-wise scores against a float64 NumPy/SciPy re-implementation of the BraTS 2023
evaluation."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import _instances, _surfaces
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


def _monai_panoptic(pred, label, num_classes, reductions, threshold=0.5):
    """MONAI's (pq, sq, rq) and confusion counts for each reduction, on one buffer."""
    to_torch = lambda x: torch.as_tensor(np.moveaxis(x, -1, 1))  # noqa: E731
    scores = monai_metrics.PanopticQualityMetric(
        num_classes, metric_name=("pq", "sq", "rq"), match_iou_threshold=threshold
    )
    scores(to_torch(pred), to_torch(label))
    counts = monai_metrics.PanopticQualityMetric(
        num_classes, match_iou_threshold=threshold, return_confusion_matrix=True
    )
    counts(to_torch(pred), to_torch(label))
    return {
        r: ([s.numpy() for s in scores.aggregate(r)], counts.aggregate(r).numpy())
        for r in reductions
    }


REDUCTIONS = ["none", "mean_batch", "sum_batch", "mean", "sum", "mean_channel", "sum_channel"]


@pytest.mark.parametrize("spatial", [(22, 26), (10, 12, 9)], ids=["2d", "3d"])
def test_panoptic_quality_matches_monai(spatial):
    rng = np.random.default_rng(len(spatial))
    label = np.stack([_instance_maps(rng, spatial, 14, 3) for _ in range(3)])
    pred = np.stack([_perturbed(rng, x) for x in label])
    pred[2, ..., 0] = 0  # an empty prediction
    label[1, ..., 0] = 0  # an empty label
    # Every reduction in 2D; 3D shares the reduction code, so two suffice there.
    reductions = REDUCTIONS if len(spatial) == 2 else REDUCTIONS[:2]
    expected = _monai_panoptic(pred, label, 3, reductions)
    assert float(np.sum(expected["none"][1][..., 0])) > 5  # some matches
    for reduction in reductions:
        (pq, sq, rq), counts = expected[reduction]
        out = panoptic_quality(pred, label, num_classes=3, reduction=reduction)
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
    (pq, sq, rq), counts = _monai_panoptic(pred, label, 2, ["none"], threshold)["none"]
    out = panoptic_quality(
        pred, label, num_classes=2, reduction="none", match_iou_threshold=threshold
    )
    np.testing.assert_allclose(np.stack([out.tp, out.fp, out.fn, out.iou_sum], -1), counts)
    np.testing.assert_allclose(np.asarray(out.pq), pq, rtol=1e-6)
    assert np.asarray(out.tp)[0].tolist() == [0, float(threshold < 0.75)]


def test_panoptic_quality_both_empty():
    empty = np.zeros((2, 5, 5, 2), np.int32)
    out = panoptic_quality(empty, empty, num_classes=2, reduction="none")
    (pq, _, _), _ = _monai_panoptic(empty, empty, 2, ["none"])["none"]
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


# ------------------------------------------------------------- lesion-wise (BraTS)
# A float64 NumPy/SciPy re-implementation of the BraTS 2023 evaluation
# (rachitsaluja/BraTS-2023-Metrics: get_LesionWiseScores / get_LesionWiseResults) and
# of the DeepMind surface-distance functions it calls, written from their definitions;
# scipy.ndimage.label with the full structure stands in for cc3d (connectivity 26).
# The surfel areas come from MONAI's copy of DeepMind's tables (an independent source).


def _code_to_measure(spacing):
    from monai.metrics.utils import get_code_to_measure_table

    return np.asarray(get_code_to_measure_table(tuple(float(s) for s in spacing))[0], np.float64)


def _reference_surface_distances(gt, pred, spacing):
    ndim = gt.ndim
    union = gt | pred
    if not union.any():
        return {k: np.array([]) for k in ("gt_to_pred", "pred_to_gt", "area_gt", "area_pred")}
    low = [
        np.nonzero(union.any(axis=tuple(a for a in range(ndim) if a != d)))[0] for d in range(ndim)
    ]
    lo = np.array([x.min() for x in low])
    hi = np.array([x.max() for x in low])
    crop_gt = np.zeros(hi - lo + 2, np.uint8)
    crop_pred = np.zeros(hi - lo + 2, np.uint8)
    window = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
    inner = tuple(slice(0, -1) for _ in range(ndim))
    crop_gt[inner] = gt[window]
    crop_pred[inner] = pred[window]
    kernel = (
        np.array([[8, 4], [2, 1]])
        if ndim == 2
        else np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
    )
    full = 2 ** (2**ndim) - 1
    code_gt = ndimage.correlate(crop_gt.astype(np.int64), kernel, mode="constant", cval=0)
    code_pred = ndimage.correlate(crop_pred.astype(np.int64), kernel, mode="constant", cval=0)
    border_gt = (code_gt != 0) & (code_gt != full)
    border_pred = (code_pred != 0) & (code_pred != full)

    def distance_map(border):
        if border.any():
            return ndimage.distance_transform_edt(~border, sampling=spacing)
        return np.full(border.shape, np.inf)

    table = _code_to_measure(spacing)
    result = {}
    for name, border, other, code in (
        ("gt", border_gt, border_pred, code_gt),
        ("pred", border_pred, border_gt, code_pred),
    ):
        distances = distance_map(other)[border]
        areas = table[code][border]
        order = np.lexsort((areas, distances))  # sorted(zip(distances, areas))
        result[name] = (distances[order], areas[order])
    return {
        "gt_to_pred": result["gt"][0],
        "area_gt": result["gt"][1],
        "pred_to_gt": result["pred"][0],
        "area_pred": result["pred"][1],
    }


def _reference_robust_hausdorff(surface, percent):
    def one_way(distances, areas):
        if len(distances) == 0:
            return np.inf
        cumulative = np.cumsum(areas) / np.sum(areas)
        index = np.searchsorted(cumulative, percent / 100.0)
        return distances[min(index, len(distances) - 1)]

    return max(
        one_way(surface["gt_to_pred"], surface["area_gt"]),
        one_way(surface["pred_to_gt"], surface["area_pred"]),
    )


def _reference_lesion_wise(pred, gt, dilation, threshold, spacing):
    ndim = gt.ndim
    structure = ndimage.generate_binary_structure(ndim, 2)
    full = ndimage.generate_binary_structure(ndim, ndim)
    gt_cc, _ = ndimage.label(gt, full)
    pred_cc, _ = ndimage.label(pred, full)
    gt_dilated = ndimage.binary_dilation(gt, structure=structure, iterations=dilation)
    gt_dilated_cc, _ = ndimage.label(gt_dilated, full)
    combined = np.zeros_like(gt_dilated_cc)
    for comp in range(1, gt_dilated_cc.max() + 1):
        part = (gt_dilated_cc == comp) * gt_cc
        combined += np.where(part > 0, comp, 0)
    voxel = float(np.prod(spacing))
    tp, rows = [], []
    for comp in range(1, combined.max() + 1):
        lesion = combined == comp
        around = ndimage.binary_dilation(lesion, structure=structure, iterations=dilation)
        hits = np.unique(pred_cc * around)
        hits = hits[hits != 0]
        tp.extend(hits.tolist())
        found = np.isin(pred_cc, hits) & (pred_cc != 0)
        dice = 2.0 * np.logical_and(found, lesion).sum() / (found.sum() + lesion.sum())
        hd = _reference_robust_hausdorff(_reference_surface_distances(lesion, found, spacing), 95)
        rows.append((len(hits), lesion.sum() * voxel, dice, 374.0 if np.isinf(hd) else hd))
    fp = np.unique(pred_cc[~np.isin(pred_cc, tp + [0])])
    kept = [r for r in rows if r[1] > threshold]
    denominator = len(kept) + len(fp)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.float64(sum(r[2] for r in kept)) / denominator
        hd95 = np.float64(sum(r[3] for r in kept) + 374.0 * len(fp)) / denominator
    return {
        "dice": 1.0 if np.isnan(dice) else dice,
        "hd95": 0.0 if np.isnan(hd95) else hd95,
        "tp": sum(r[0] > 0 for r in kept),
        "fp": len(fp),
        "fn": sum(r[0] == 0 for r in kept),
    }


def _lesion_volumes(rng, batch, spatial, cell):
    """Reference lesions of several sizes, one per grid cell (apart by more than the
    dilation reaches), and predictions that shift, cut, miss and add some."""
    label = np.zeros((batch, *spatial), bool)
    pred = np.zeros((batch, *spatial), bool)
    cells = [range(0, s - cell + 1, cell) for s in spatial]
    for b in range(batch):
        for origin in itertools.product(*cells):
            if rng.random() < 0.2:
                continue
            extent = rng.integers(1, 5, len(spatial))
            start = [o + rng.integers(1, cell - e) for o, e in zip(origin, extent, strict=True)]
            box = tuple(slice(a, a + e) for a, e in zip(start, extent, strict=True))
            label[(b, *box)] = True
            fate = rng.random()
            if fate < 0.25:
                continue  # missed
            shift = rng.integers(-1, 2, len(spatial)) if fate < 0.7 else np.zeros(len(spatial), int)
            moved = tuple(
                slice(max(a + d, 0), a + e + d + int(fate > 0.85))
                for a, e, d in zip(start, extent, shift, strict=True)
            )
            pred[(b, *moved)] = True
        speck = tuple(rng.integers(0, s) for s in spatial)
        if not label[(b, *speck)]:
            pred[(b, *speck)] = True  # spurious
    return pred, label


def _check_lesion_wise(pred, label, dilation, threshold, spacing, max_lesions=64):
    out = lesion_wise_scores(
        pred, label, dilation=dilation, min_size=threshold, spacing=spacing, max_lesions=max_lesions
    )
    step = (
        np.ones(label.ndim - 1) if spacing is None else np.broadcast_to(spacing, (label.ndim - 1,))
    )
    assert not np.any(np.asarray(out.overflow))
    for b in range(label.shape[0]):
        expected = _reference_lesion_wise(pred[b], label[b], dilation, threshold, step)
        for key in ("tp", "fp", "fn"):
            assert int(getattr(out, key)[b]) == expected[key], (b, key)
        np.testing.assert_allclose(float(out.dice[b]), expected["dice"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(float(out.hd95[b]), expected["hd95"], rtol=1e-5, atol=1e-5)
    return out


@pytest.mark.parametrize(
    ("spatial", "dilation", "threshold", "spacing"),
    [
        ((24, 24, 12), 3, 10.0, None),
        ((18, 20, 16), 1, 2.0, (0.8, 1.25, 2.0)),
        ((40, 44), 2, 3.0, (0.7, 1.3)),
    ],
    ids=["3d-gli", "3d-met-anisotropic", "2d-anisotropic"],
)
def test_lesion_wise_scores_match_brats_reference(spatial, dilation, threshold, spacing):
    rng = np.random.default_rng(sum(spatial) + dilation)
    pred, label = _lesion_volumes(rng, 3, spatial, 12 if dilation == 3 else 8)
    out = _check_lesion_wise(pred, label, dilation, threshold, spacing)
    # The cases exercise matches, misses and false positives.
    assert int(np.sum(out.tp)) > 0 and int(np.sum(out.fn)) > 0 and int(np.sum(out.fp)) > 0


def test_lesion_wise_scores_empty_cases():
    spatial = (18, 20, 16)  # the shape and options of a parity case: no new compilation
    label = np.zeros((3, *spatial), bool)
    pred = np.zeros((3, *spatial), bool)
    label[0, 2:6, 2:6, 2:6] = True  # empty prediction: one FN
    pred[1, 1:3, 1:3, 1:3] = True  # empty label: one FP
    # sample 2: both empty
    out = _check_lesion_wise(pred, label, 1, 0.0, None)
    np.testing.assert_allclose(np.asarray(out.dice), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(np.asarray(out.hd95), [374.0, 374.0, 0.0])


def test_lesion_wise_scores_many_small_lesions_and_cap():
    rng = np.random.default_rng(2)
    spatial = (18, 20, 16)
    label = np.zeros((1, *spatial), bool)
    label[0, ::4, ::4, ::4] = True  # many single-voxel lesions, merged by no dilation step
    label[0, 5:9, 5:9, 3:7] = True
    pred = label & (rng.random(label.shape) < 0.6)
    pred[0, 15:, 0:3, 0:3] = True
    out = _check_lesion_wise(pred, label, 1, 0.5, (1.0, 1.0, 1.5), max_lesions=128)
    assert int(out.num_lesions[0]) > 64
    capped = lesion_wise_scores(pred, label, dilation=1, min_size=0.5, max_lesions=64)
    assert bool(capped.overflow[0]) and int(capped.num_lesions[0]) == int(out.num_lesions[0])


def test_lesion_wise_surfel_areas_match_monai_tables():
    for spacing in ((1.0, 1.0, 1.0), (0.7, 1.3, 2.1), (1.0, 1.0), (0.5, 1.7)):
        ours = np.asarray(_surfaces.code_to_area(jnp.asarray(spacing, jnp.float32)))
        np.testing.assert_allclose(ours, _code_to_measure(spacing), rtol=1e-6)
