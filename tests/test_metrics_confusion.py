"""The confusion-matrix family, F-beta, generalized Dice score and absolute volume difference.

Against MONAI 1.6.1 (ConfusionMatrixMetric, FBetaScore, GeneralizedDiceScore,
AbsoluteVolumeDifferenceMetric) on one-hot channels-first copies, and against float64
NumPy written from the formulas; per sample and from the mergeable state.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxseg import metrics

NUM_CLASSES = 4
SHAPES = {2: (3, 14, 17), 3: (3, 7, 8, 9)}
NAMES = metrics.CONFUSION_METRICS


def _maps(seed: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Random maps with every empty case: per class, empty prediction, empty label, both.

    Sample 0: class 1 never predicted; sample 1: class 2 never labelled (but predicted);
    sample 2: class 3 in neither. Class 0 (background) is the majority.
    """
    rng = np.random.default_rng(seed)
    labels = rng.choice(NUM_CLASSES, shape, p=[0.55, 0.2, 0.15, 0.1]).astype(np.int32)
    predictions = np.where(rng.random(shape) < 0.7, labels, rng.integers(0, NUM_CLASSES, shape))
    predictions = predictions.astype(np.int32)
    predictions[0][predictions[0] == 1] = 0
    labels[1][labels[1] == 2] = 0
    predictions[1].flat[:3] = 2
    labels[2][labels[2] == 3] = 0
    predictions[2][predictions[2] == 3] = 0
    return predictions, labels


# ---------------------------------------------------------------- references


def _counts64(predictions, labels, num_classes, valid=None):
    """float64 ``(batch, C)`` tp, fp, tn, fn: one class against the rest."""
    valid = np.ones(labels.shape, bool) if valid is None else valid
    axes = tuple(range(1, labels.ndim))
    out = []
    for c in range(num_classes):
        p, y = (predictions == c) & valid, (labels == c) & valid
        out.append(
            [
                (p & y).sum(axes),
                (p & ~y).sum(axes),
                (~p & ~y & valid).sum(axes),
                (~p & y).sum(axes),
            ]
        )
    return np.moveaxis(np.asarray(out, np.float64), 0, -1)  # (4, batch, C)


def _div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1), np.nan)


def _family64(tp, fp, tn, fn, beta=1.0):
    """Every metric from its textbook definition, in float64."""
    tpr, tnr = _div(tp, tp + fn), _div(tn, tn + fp)
    ppv, npv = _div(tp, tp + fp), _div(tn, tn + fn)
    with np.errstate(invalid="ignore"):
        return {
            "sensitivity": tpr,
            "specificity": tnr,
            "precision": ppv,
            "negative_predictive_value": npv,
            "miss_rate": _div(fn, tp + fn),
            "fall_out": _div(fp, fp + tn),
            "false_discovery_rate": _div(fp, fp + tp),
            "false_omission_rate": _div(fn, fn + tn),
            "prevalence_threshold": _div(np.sqrt(tpr * (1 - tnr)) + tnr - 1, tpr + tnr - 1),
            "threat_score": _div(tp, tp + fp + fn),
            "accuracy": _div(tp + tn, tp + fp + tn + fn),
            "balanced_accuracy": (tpr + tnr) / 2,
            "f1_score": _div(2 * tp, 2 * tp + fp + fn),
            "matthews_correlation_coefficient": _div(
                tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            ),
            "fowlkes_mallows_index": np.sqrt(ppv * tpr),
            "informedness": tpr + tnr - 1,
            "markedness": ppv + npv - 1,
            "fbeta_score": _div((1 + beta**2) * tp, (1 + beta**2) * tp + beta**2 * fn + fp),
        }


def _monai():
    pytest.importorskip("torch")
    return pytest.importorskip("monai.metrics", reason="MONAI is the oracle")


def _one_hot(x, num_classes, ignore_index=None):
    torch = pytest.importorskip("torch")
    x = torch.as_tensor(np.asarray(x), dtype=torch.long)
    if ignore_index is not None:
        # MONAI's sentinel convention: an ignored pixel is all-zero in the one-hot label.
        out = torch.nn.functional.one_hot(
            torch.where(x == ignore_index, num_classes, x), num_classes + 1
        )
        return out[..., :num_classes].movedim(-1, 1).float()
    return torch.nn.functional.one_hot(x, num_classes).movedim(-1, 1).float()


def _assert_close(got, expected, rtol=1e-6, name=""):
    got, expected = np.asarray(got), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, (name, got.shape, expected.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=name)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-6, err_msg=name)


@functools.cache
def _batch_fn(include_background, ignore_index=None):
    return jax.jit(
        lambda p, y, beta: metrics.confusion_metrics(
            p,
            y,
            NUM_CLASSES,
            metrics=NAMES + ("fbeta_score",),
            beta=beta,
            include_background=include_background,
            ignore_index=ignore_index,
        )
    )


# ---------------------------------------------------------------- per sample


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("include_background", [True, False])
def test_per_sample_family_matches_monai_and_numpy(ndim, include_background):
    predictions, labels = _maps(ndim, SHAPES[ndim])
    got = _batch_fn(include_background)(predictions, labels, 1.0)
    first = 0 if include_background else 1
    expected = _family64(*_counts64(predictions, labels, NUM_CLASSES))
    monai = _monai().ConfusionMatrixMetric(
        include_background=include_background,
        metric_name=[name.replace("_", " ") for name in NAMES],
        compute_sample=True,
        reduction="none",
    )
    monai(_one_hot(predictions, NUM_CLASSES), _one_hot(labels, NUM_CLASSES))
    for name, peer in zip(NAMES, monai.aggregate(), strict=True):
        assert got[name].dtype == jnp.float32
        _assert_close(got[name], expected[name][:, first:], name=name)
        _assert_close(got[name], peer.numpy(), name=name)
    _assert_close(got["fbeta_score"], got["f1_score"], name="fbeta(1) = f1")


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_fbeta_matches_monai(beta):
    predictions, labels = _maps(7, SHAPES[2])
    got = metrics.fbeta_score(predictions, labels, NUM_CLASSES, beta=beta)
    expected = _family64(*_counts64(predictions, labels, NUM_CLASSES), beta=beta)["fbeta_score"]
    _assert_close(got, expected)
    peer = _monai().FBetaScore(beta=beta, reduction="none")
    peer(_one_hot(predictions, NUM_CLASSES), _one_hot(labels, NUM_CLASSES))
    _assert_close(got, peer.aggregate()[0].numpy())
    # beta is traced: the jitted function takes it as an argument.
    _assert_close(_batch_fn(True)(predictions, labels, beta)["fbeta_score"], expected)
    # From the state: the F-beta of the summed counts (MONAI's "sum_batch").
    state = metrics.update(metrics.metric_state(NUM_CLASSES), predictions, labels)
    peer = _monai().FBetaScore(beta=beta, reduction="sum_batch")
    peer(_one_hot(predictions, NUM_CLASSES), _one_hot(labels, NUM_CLASSES))
    from_state = metrics.compute(state, metrics="fbeta_score", beta=beta)["fbeta_score"]
    _assert_close(from_state, peer.aggregate()[0].numpy())


def test_ignore_index_matches_monai_sentinel():
    predictions, labels = _maps(11, SHAPES[2])
    labels[np.random.default_rng(0).random(labels.shape) < 0.2] = 255
    got = _batch_fn(True, 255)(predictions, labels, 1.0)
    monai = _monai().ConfusionMatrixMetric(
        metric_name=[name.replace("_", " ") for name in NAMES],
        compute_sample=True,
        reduction="none",
        ignore_index=255,
    )
    monai(_one_hot(predictions, NUM_CLASSES), _one_hot(labels, NUM_CLASSES, ignore_index=255))
    expected = _family64(*_counts64(predictions, labels, NUM_CLASSES, valid=labels != 255))
    for name, peer in zip(NAMES, monai.aggregate(), strict=True):
        _assert_close(got[name], peer.numpy(), name=name)
        _assert_close(got[name], expected[name], name=name)


def test_aliases_and_relations():
    predictions, labels = _maps(3, SHAPES[2])
    run = lambda *names: metrics.confusion_metrics(predictions, labels, NUM_CLASSES, metrics=names)
    got = _batch_fn(True)(predictions, labels, 1.0)
    aliases = run("recall", "tpr", "youden_index", "critical_success_index", "mcc", "fall out")
    np.testing.assert_array_equal(aliases["recall"], got["sensitivity"])
    np.testing.assert_array_equal(aliases["tpr"], got["sensitivity"])
    np.testing.assert_array_equal(aliases["youden_index"], got["informedness"])
    np.testing.assert_array_equal(aliases["critical_success_index"], got["threat_score"])
    np.testing.assert_array_equal(aliases["mcc"], got["matthews_correlation_coefficient"])
    np.testing.assert_array_equal(aliases["fall out"], got["fall_out"])
    # Complementary rates, and the F1 score is the Dice score where the label has the class.
    for a, b in [
        ("sensitivity", "miss_rate"),
        ("specificity", "fall_out"),
        ("precision", "false_discovery_rate"),
        ("negative_predictive_value", "false_omission_rate"),
    ]:
        defined = ~np.isnan(got[a])
        np.testing.assert_allclose((got[a] + got[b])[defined], 1.0, rtol=1e-6)
    dice = metrics.dice_score(predictions, labels, NUM_CLASSES)
    defined = ~np.isnan(dice)
    np.testing.assert_allclose(got["f1_score"][defined], dice[defined], rtol=1e-6)
    # Swapping prediction and label swaps recall and precision, keeps MCC and F1.
    swapped = _batch_fn(True)(labels, predictions, 1.0)
    np.testing.assert_array_equal(swapped["sensitivity"], got["precision"])
    for name in ("matthews_correlation_coefficient", "f1_score", "accuracy"):
        np.testing.assert_allclose(swapped[name], got[name], rtol=1e-6)
    for name, value in got.items():
        low = (
            -1.0
            if name in ("matthews_correlation_coefficient", "informedness", "markedness")
            else 0.0
        )
        value = np.asarray(value)[~np.isnan(value)]
        if name != "prevalence_threshold":
            assert np.all((value >= low - 1e-6) & (value <= 1 + 1e-6)), name


# ---------------------------------------------------------------------- state


@pytest.mark.parametrize("ndim", [2, 3])
def test_state_matches_monai_global_counts_and_merges_exactly(ndim):
    predictions, labels = _maps(20 + ndim, SHAPES[ndim])
    whole = metrics.update(metrics.metric_state(NUM_CLASSES), predictions, labels)
    # Batch by batch, and as separate states merged in another order.
    sequential = metrics.metric_state(NUM_CLASSES)
    parts = []
    for b in range(3):
        sequential = metrics.update(sequential, predictions[b : b + 1], labels[b : b + 1])
        parts.append(
            metrics.update(
                metrics.metric_state(NUM_CLASSES), predictions[b : b + 1], labels[b : b + 1]
            )
        )
    merged = metrics.merge(parts[2], metrics.merge(parts[0], parts[1]))
    names = NAMES + ("fbeta_score",)
    results = [metrics.compute(s, metrics=names, beta=1.5) for s in (whole, sequential, merged)]
    for name in names:
        np.testing.assert_array_equal(results[1][name], results[0][name], err_msg=name)
        np.testing.assert_array_equal(results[2][name], results[0][name], err_msg=name)
    tp, fp, tn, fn = (x.sum(0) for x in _counts64(predictions, labels, NUM_CLASSES))
    expected = _family64(tp, fp, tn, fn, beta=1.5)
    for include_background in (True, False):
        first = 0 if include_background else 1
        got = metrics.compute(whole, metrics=NAMES, include_background=include_background)
        assert set(got) == set(NAMES)
        for reduction in ("sum_batch", "mean_batch"):
            monai = _monai().ConfusionMatrixMetric(
                include_background=include_background,
                metric_name=[name.replace("_", " ") for name in NAMES],
                reduction=reduction,
            )
            monai(_one_hot(predictions, NUM_CLASSES), _one_hot(labels, NUM_CLASSES))
            for name, peer in zip(NAMES, monai.aggregate(), strict=True):
                _assert_close(got[name], peer.numpy(), name=name)
        for name in NAMES:
            _assert_close(got[name], expected[name][first:], name=name)
    _assert_close(results[0]["fbeta_score"], expected["fbeta_score"])
    # The default dict holds the family too, but its "accuracy" stays the scalar pixel
    # accuracy (sum_c tp_c / N); with `metrics` it is MONAI's per-class accuracy.
    default = metrics.compute(whole)
    for name in NAMES:
        if name != "accuracy":
            np.testing.assert_array_equal(default[name], results[0][name], err_msg=name)
    np.testing.assert_allclose(default["accuracy"], tp.sum() / (tp + fp + tn + fn)[0], rtol=1e-6)
    assert default["accuracy"].shape == () and results[0]["accuracy"].shape == (NUM_CLASSES,)


def test_state_counts_beyond_float32_integers():
    """Dataset-level counts (~3e11 pixels): no float32 overflow in the Matthews denominator."""
    words = lambda high: jnp.asarray([[high, 12345]] * 3, jnp.int32)  # high * 2^16 + low
    state = metrics.metric_state(3)._replace(
        tp=words(1 << 17), fp=words(3000), fn=words(2000), tn=words(1 << 22)
    )
    counts = {k: v.astype(np.float64) for k, v in metrics.exact_counts(state).items()}
    got = metrics.compute(state, metrics=NAMES)
    expected = _family64(counts["tp"], counts["fp"], counts["tn"], counts["fn"])
    for name in NAMES:
        _assert_close(got[name], expected[name], rtol=1e-5, name=name)
    assert np.all(np.isfinite(got["matthews_correlation_coefficient"]))


# ------------------------------------------------------------ generalized Dice


def _gds_of_counts(tp, fp, fn, weight_type="square"):
    """float64 generalized Dice of ``(batch, C)`` counts, MONAI's infinite-weight rule."""
    volume = tp + fn
    with np.errstate(divide="ignore"):
        w = {"square": 1 / volume**2, "simple": 1 / volume, "uniform": np.ones_like(volume)}[
            weight_type
        ]
    for row in w:
        finite = np.isfinite(row)
        row[~finite] = row[finite].max() if finite.any() else 1.0
    numerator = 2 * (w * tp).sum(-1)
    denominator = (w * (2 * tp + fp + fn)).sum(-1)
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 1.0)


def _gds64(predictions, labels, num_classes, weight_type, include_background):
    tp, fp, _, fn = _counts64(predictions, labels, num_classes)
    first = 0 if include_background else 1
    return _gds_of_counts(tp[:, first:], fp[:, first:], fn[:, first:], weight_type)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("weight_type", ["square", "simple", "uniform"])
def test_generalized_dice_score_matches_monai(ndim, weight_type):
    predictions, labels = _maps(30 + ndim, SHAPES[ndim])
    # Sample 2: only background, in both maps: 1.0 without the background.
    predictions[2], labels[2] = 0, 0
    for include_background in (True, False):
        got = metrics.generalized_dice_score(
            predictions,
            labels,
            NUM_CLASSES,
            weight_type=weight_type,
            include_background=include_background,
        )
        assert got.shape == (3,) and got.dtype == jnp.float32
        expected = _gds64(predictions, labels, NUM_CLASSES, weight_type, include_background)
        _assert_close(got, expected)
        peer = _monai().GeneralizedDiceScore(
            include_background=include_background, weight_type=weight_type
        )
        _assert_close(
            got,
            peer(_one_hot(predictions, NUM_CLASSES), _one_hot(labels, NUM_CLASSES)).numpy()[:, 0],
        )
    assert float(got[2]) == 1.0


def test_generalized_dice_score_empty_cases():
    labels = np.zeros((3, 5, 6), np.int32)
    predictions = np.zeros_like(labels)
    predictions[1, :2] = 1  # a false positive on an all-background label
    labels[2, 3:] = 2  # a missed object
    got = metrics.generalized_dice_score(predictions, labels, 3, include_background=False)
    np.testing.assert_array_equal(got, [1.0, 0.0, 0.0])
    peer = _monai().GeneralizedDiceScore(include_background=False)
    np.testing.assert_array_equal(
        got, peer(_one_hot(predictions, 3), _one_hot(labels, 3)).numpy()[:, 0]
    )


# --------------------------------------------------------- volume difference


@pytest.mark.parametrize("ndim", [2, 3])
def test_absolute_volume_difference_matches_monai(ndim):
    predictions, labels = _maps(40 + ndim, SHAPES[ndim])
    tp, fp, _, fn = _counts64(predictions, labels, NUM_CLASSES)
    for include_background in (True, False):
        for ignore_empty in (True, False):
            got = metrics.absolute_volume_difference(
                predictions,
                labels,
                NUM_CLASSES,
                include_background=include_background,
                ignore_empty=ignore_empty,
            )
            first = 0 if include_background else 1
            expected = np.abs((tp + fp) - (tp + fn))
            if ignore_empty:
                expected = np.where(tp + fn > 0, expected, np.nan)
            _assert_close(got, expected[:, first:])
            peer = _monai().AbsoluteVolumeDifferenceMetric(
                include_background=include_background, ignore_empty=ignore_empty, reduction="none"
            )
            peer_value = peer(_one_hot(predictions, NUM_CLASSES), _one_hot(labels, NUM_CLASSES))
            _assert_close(got, peer_value.numpy())
    # Without ignore_empty, an empty label (class 2 of sample 1) scores the predicted volume.
    assert float(got[1, 1]) == float((predictions[1] == 2).sum()) > 0
    # Anisotropic spacing: the voxel counts times the voxel volume, per sample.
    spacing = np.random.default_rng(ndim).uniform(0.3, 2.0, (3, ndim))
    got = metrics.absolute_volume_difference(predictions, labels, NUM_CLASSES, spacing=spacing)
    expected = np.where(tp + fn > 0, np.abs(fp - fn), np.nan) * spacing.prod(-1)[:, None]
    _assert_close(got, expected)
    got = metrics.absolute_volume_difference(predictions, labels, NUM_CLASSES, spacing=spacing[0])
    _assert_close(got, expected / spacing.prod(-1)[:, None] * spacing[0].prod())


# --------------------------------------------------------------------- errors


def test_bad_options():
    maps = jnp.zeros((1, 4, 4), jnp.int32)
    with pytest.raises(ValueError, match="metrics"):
        metrics.confusion_metrics(maps, maps, 2, metrics=("sensitivity", "dice"))
    with pytest.raises(ValueError, match="metrics"):
        metrics.confusion_metrics(maps, maps, 2, metrics=())
    with pytest.raises(ValueError, match="beta"):
        metrics.fbeta_score(maps, maps, 2, beta=float("nan"))
    with pytest.raises(ValueError, match="beta"):
        metrics.fbeta_score(maps, maps, 2, beta=[1.0, 2.0])
    with pytest.raises(ValueError, match="weight_type"):
        metrics.generalized_dice_score(maps, maps, 2, weight_type="squared")
    with pytest.raises(ValueError, match="spacing"):
        metrics.absolute_volume_difference(maps, maps, 2, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="predictions"):
        metrics.generalized_dice_score(maps.astype(jnp.float32), maps, 2)
    with pytest.raises(ValueError, match="metrics"):
        metrics.compute(metrics.metric_state(2), metrics="dice")


# ----------------------------------------------------------------- properties

# Fixed scenarios (shape, classes, ignore_index): one compilation each, data from hypothesis.
SCENARIOS = [((2, 9, 7), 3, None), ((3, 5, 4, 6), 4, 255), ((2, 11), 2, None)]


@functools.cache
def _all_scores(num_classes, ignore_index):
    def run(predictions, labels, where, spacing):
        options = dict(ignore_index=ignore_index, where=where)
        state = metrics.update(metrics.metric_state(num_classes), predictions, labels, **options)
        return dict(
            family=metrics.confusion_metrics(
                predictions,
                labels,
                num_classes,
                metrics=NAMES + ("fbeta_score",),
                beta=0.5,
                **options,
            ),
            state=metrics.compute(state, metrics=NAMES),
            gds=metrics.generalized_dice_score(predictions, labels, num_classes, **options),
            avd=metrics.absolute_volume_difference(
                predictions, labels, num_classes, ignore_empty=False, spacing=spacing, **options
            ),
        )

    return jax.jit(run)


@settings(max_examples=max(20, settings().max_examples // 5))
@given(
    index=st.integers(0, len(SCENARIOS) - 1),
    seed=st.integers(0, 2**32 - 1),
    edge=st.sampled_from(("random", "empty_prediction", "empty_label", "both_empty", "full")),
    masked=st.booleans(),
)
def test_properties_against_float64(index, seed, edge, masked):
    """Every value equals the float64 formula; ranges and NaN exactly where defined."""
    shape, c, ignore_index = SCENARIOS[index]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, shape).astype(np.int32)
    predictions = rng.integers(0, c, shape).astype(np.int32)
    if edge in ("empty_prediction", "both_empty"):
        predictions[...] = 0
    if edge in ("empty_label", "both_empty"):
        labels[...] = 0
    if edge == "full":
        labels[...] = c - 1
    if ignore_index is not None:
        labels[rng.random(shape) < 0.2] = ignore_index
    where = rng.random(shape) < 0.7 if masked else np.ones(shape, bool)
    spacing = rng.uniform(0.5, 2.0, (shape[0], len(shape) - 1)).astype(np.float32)
    out = jax.tree.map(
        np.asarray, _all_scores(c, ignore_index)(predictions, labels, where, spacing)
    )
    valid = where & (labels != (ignore_index if ignore_index is not None else -1))
    tp, fp, tn, fn = _counts64(predictions, labels, c, valid=valid)
    # Counts of each sample cover its valid pixels, for every class.
    np.testing.assert_array_equal(
        tp + fp + tn + fn,
        np.broadcast_to(valid.sum(tuple(range(1, len(shape))))[:, None], tp.shape),
    )
    expected = _family64(tp, fp, tn, fn, beta=0.5)
    global_expected = _family64(*(x.sum(0) for x in (tp, fp, tn, fn)))
    for name in NAMES + ("fbeta_score",):
        got, want = out["family"][name], expected[name]
        if name == "prevalence_threshold":
            # MONAI's form divides by TPR + TNR - 1: float32 rounding of the rates is
            # amplified by 1 / |TPR + TNR - 1| (the same in MONAI), so compare within that.
            scale = np.abs(expected["informedness"])
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            err = np.abs(got - want)[~np.isnan(want)]
            assert np.all(err <= 1e-6 + 4e-7 / scale[~np.isnan(want)]), name
        else:
            _assert_close(got, want, rtol=1e-5, name=name)
        if name in NAMES and name != "prevalence_threshold":
            _assert_close(out["state"][name], global_expected[name], rtol=1e-5, name=name)
        value = out["family"][name][~np.isnan(out["family"][name])]
        if name in ("matthews_correlation_coefficient", "informedness", "markedness"):
            assert np.all(np.abs(value) <= 1 + 1e-6), name
        elif name != "prevalence_threshold":
            assert np.all((value >= 0) & (value <= 1 + 1e-6)), name
    _assert_close(out["gds"], _gds_of_counts(tp, fp, fn), rtol=1e-5, name="gds")
    assert np.all((out["gds"] >= 0) & (out["gds"] <= 1 + 1e-6))
    avd = np.abs(fp - fn) * spacing.astype(np.float64).prod(-1)[:, None]
    _assert_close(out["avd"], avd, rtol=1e-5, name="avd")
