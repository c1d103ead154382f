"""Tests for jaxseg/_metrics.py: class maps, confusion matrix, overlap scores, metric state.

References: numpy float64 formulas and ``numpy.bincount``, and MONAI 1.6.1
``DiceMetric`` / ``MeanIoU`` on one-hot channels-first copies.
"""

import jax
import jax.numpy as jnp
import numpy as np
import peers
import pytest

import jaxseg
from jaxseg import metrics

NUM_CLASSES = 4


def _random_maps(seed, shape=(3, 9, 11), num_classes=NUM_CLASSES):
    """Predictions and labels that agree on ~half the pixels, with classes missing."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, shape)
    # Remove one random class from every sample's label (or prediction) so that empty
    # label / empty prediction entries occur in random data too.
    for b in range(shape[0]):
        labels[b][labels[b] == rng.integers(0, num_classes)] = 0
    predictions = np.where(rng.random(shape) < 0.5, labels, rng.integers(0, num_classes, shape))
    for b in range(shape[0]):
        predictions[b][predictions[b] == rng.integers(1, num_classes)] = 0
    return predictions.astype(np.int32), labels.astype(np.int32)


def _edge_case(name):
    shape = (3, 9, 11)  # the shape of the random cases: no new compilation
    zeros = np.zeros(shape, np.int32)
    predictions, labels = _random_maps(7, shape)
    if name == "empty_prediction":
        predictions = zeros
    elif name == "empty_label":
        labels = zeros
    elif name == "both_empty":
        predictions, labels = zeros, zeros
    elif name == "one_class":
        predictions, labels = zeros + 2, zeros + 2
    elif name == "disjoint":
        predictions, labels = zeros + 1, zeros + 3
    return predictions, labels


CASES = ["random0", "empty_prediction", "empty_label", "both_empty", "one_class", "disjoint"]


def _case(name):
    if name.startswith("random"):
        return _random_maps(int(name[-1]))
    return _edge_case(name)


def DiceMetric(**options):  # noqa: N802 - the oracle's class, imported when a test needs it
    peers.torch()
    return pytest.importorskip("monai.metrics", reason=peers._MONAI_REASON).DiceMetric(**options)


def MeanIoU(**options):  # noqa: N802
    peers.torch()
    return pytest.importorskip("monai.metrics", reason=peers._MONAI_REASON).MeanIoU(**options)


def _torch_one_hot(class_map, num_classes):
    """Channels-first float one-hot; values outside [0, C) give an all-zero pixel."""
    torch = peers.torch()
    class_map = np.asarray(class_map)
    inside = (class_map >= 0) & (class_map < num_classes)
    one_hot = np.eye(num_classes + 1)[np.where(inside, class_map, num_classes)][..., :num_classes]
    return torch.from_numpy(np.moveaxis(one_hot, -1, 1).copy())


def _monai(metric, predictions, labels, num_classes=NUM_CLASSES, labels_as_map=False):
    torch = peers.torch()
    y_pred = _torch_one_hot(predictions, num_classes)
    if labels_as_map:
        y = torch.from_numpy(np.asarray(labels)[:, None].astype(np.float64))
    else:
        y = _torch_one_hot(labels, num_classes)
    metric(y_pred=y_pred, y=y)
    return metric.aggregate().numpy()


def _numpy_stats(predictions, labels, num_classes, valid=None):
    """float64 (batch, classes) tp, fp, fn, tn by the formula."""
    if valid is None:
        valid = np.ones(labels.shape, bool)
    valid = valid & (labels >= 0) & (labels < num_classes)
    axes = tuple(range(1, labels.ndim))
    out = {name: [] for name in ("tp", "fp", "fn", "tn")}
    for c in range(num_classes):
        p = (predictions == c) & valid
        y = (labels == c) & valid
        out["tp"].append(np.sum(p & y, axes))
        out["fp"].append(np.sum(p & ~y, axes))
        out["fn"].append(np.sum(~p & y, axes))
        out["tn"].append(np.sum(~p & ~y & valid, axes))
    return {k: np.stack(v, -1).astype(np.float64) for k, v in out.items()}


def _nan_divide(numerator, denominator):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
        )


def _nan_mean(x, axis=None):
    defined = ~np.isnan(x)
    count = np.sum(defined, axis=axis)
    total = np.sum(np.where(defined, x, 0.0), axis=axis)
    return _nan_divide(total, count)


# ----------------------------------------------------------------- overlap scores vs MONAI


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_dice_and_iou_match_monai(case, include_background, ignore_empty):
    predictions, labels = _case(case)
    options = dict(include_background=include_background, ignore_empty=ignore_empty)
    dice = metrics.dice_score(predictions, labels, NUM_CLASSES, **options)
    iou = metrics.iou_score(predictions, labels, NUM_CLASSES, **options)
    expected_dice = _monai(DiceMetric(reduction="none", **options), predictions, labels)
    expected_iou = _monai(MeanIoU(reduction="none", **options), predictions, labels)
    assert dice.dtype == jnp.float32 and dice.shape == expected_dice.shape
    assert dice.shape == (predictions.shape[0], NUM_CLASSES - (not include_background))
    np.testing.assert_allclose(dice, expected_dice, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(iou, expected_iou, rtol=1e-6, atol=1e-7)
    # The means: MONAI's reduction="mean" (class mean per sample, then sample mean).
    mean = metrics.mean_dice(predictions, labels, NUM_CLASSES, **options)
    mean_iou = metrics.mean_iou(predictions, labels, NUM_CLASSES, **options)
    expected = _monai(DiceMetric(reduction="mean", **options), predictions, labels)
    expected_iou = _monai(MeanIoU(reduction="mean", **options), predictions, labels)
    if np.all(np.isnan(expected_dice)):
        # Documented difference: nothing defined gives NaN here, 0.0 in MONAI.
        assert np.isnan(mean) and np.isnan(mean_iou) and expected == 0 and expected_iou == 0
    else:
        np.testing.assert_allclose(mean, expected, rtol=1e-6)
        np.testing.assert_allclose(mean_iou, expected_iou, rtol=1e-6)


def test_empty_conventions_by_hand():
    labels = np.array([[0, 0, 1, 1]])
    predictions = np.array([[0, 2, 1, 1]])  # class 2 predicted, absent from the label
    # class 3 is absent from both.
    dice = metrics.dice_score(predictions, labels, 4)
    np.testing.assert_allclose(dice, [[2 / 3, 1.0, np.nan, np.nan]], rtol=1e-6)
    dice = metrics.dice_score(predictions, labels, 4, ignore_empty=False)
    np.testing.assert_allclose(dice, [[2 / 3, 1.0, 0.0, 1.0]], rtol=1e-6)
    iou = metrics.iou_score(predictions, labels, 4, ignore_empty=False)
    np.testing.assert_allclose(iou, [[0.5, 1.0, 0.0, 1.0]], rtol=1e-6)
    assert np.isnan(metrics.mean_dice(predictions, np.full_like(labels, 9), 4))


@pytest.mark.parametrize("ignore_index", [2, 255])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_ignore_index_matches_monai(ignore_index, ignore_empty):
    predictions, labels = _random_maps(3)
    rng = np.random.default_rng(3)
    labels = np.where(rng.random(labels.shape) < 0.2, ignore_index, labels)
    options = dict(ignore_index=ignore_index, ignore_empty=ignore_empty)
    dice = metrics.dice_score(predictions, labels, NUM_CLASSES, **options)
    # DiceMetric compares a label map with ignore_index directly.
    expected = _monai(
        DiceMetric(reduction="none", **options), predictions, labels, labels_as_map=True
    )
    np.testing.assert_allclose(dice, expected, rtol=1e-6, atol=1e-7)
    # `where` is the same mask.
    where = labels != ignore_index
    np.testing.assert_array_equal(
        metrics.dice_score(
            predictions, labels, NUM_CLASSES, where=where, ignore_empty=ignore_empty
        ),
        dice,
    )
    if ignore_index == 255:
        # MeanIoU masks the all-zero pixels of a one-hot label for a sentinel index. (For
        # an index in [0, C) it only blanks that channel: a documented difference.)
        iou = metrics.iou_score(predictions, labels, NUM_CLASSES, **options)
        expected = _monai(MeanIoU(reduction="none", **options), predictions, labels)
        np.testing.assert_allclose(iou, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(2, 13), (2, 5, 6), (2, 3, 4, 5)])
def test_spatial_ranks_and_masks_match_numpy(shape):
    predictions, labels = _random_maps(11, shape)
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(shape) < 0.1, -1, labels)  # out of range: excluded
    predictions = np.where(rng.random(shape) < 0.1, 7, predictions)  # no class: a miss
    where = rng.random(shape) < 0.8
    stats = _numpy_stats(predictions, labels, NUM_CLASSES, where)
    tp, fp, fn = stats["tp"], stats["fp"], stats["fn"]
    dice = metrics.dice_score(predictions, labels, NUM_CLASSES, where=where)
    iou = metrics.iou_score(predictions, labels, NUM_CLASSES, where=where)
    present = tp + fn > 0
    np.testing.assert_allclose(
        dice, np.where(present, _nan_divide(2 * tp, 2 * tp + fp + fn), np.nan), rtol=1e-6
    )
    np.testing.assert_allclose(
        iou, np.where(present, _nan_divide(tp, tp + fp + fn), np.nan), rtol=1e-6
    )


def test_boolean_maps_are_binary_class_maps():
    predictions, labels = _random_maps(5, num_classes=2)
    np.testing.assert_array_equal(
        metrics.dice_score(predictions.astype(bool), labels.astype(bool), 2),
        metrics.dice_score(predictions, labels, 2),
    )


# ------------------------------------------------------------- soft and hard paths agree


@pytest.mark.parametrize("include_background, ignore_index", [(True, None), (False, 1)])
def test_soft_losses_on_one_hot_predictions_equal_one_minus_scores(
    include_background, ignore_index
):
    predictions, labels = _random_maps(9)
    probs = jax.nn.one_hot(predictions, NUM_CLASSES, dtype=jnp.float32)
    options = dict(include_background=include_background, ignore_index=ignore_index)
    loss_options = dict(activation=None, smooth_nr=0, smooth_dr=0, reduction="none", **options)
    dice = metrics.dice_score(predictions, labels, NUM_CLASSES, **options)
    iou = metrics.iou_score(predictions, labels, NUM_CLASSES, **options)
    present = ~np.isnan(dice)
    assert present.sum() > 0
    dice_loss = jaxseg.dice_loss(probs, labels, **loss_options)
    iou_loss = jaxseg.iou_loss(probs, labels, **loss_options)
    np.testing.assert_allclose(1 - dice_loss[present], dice[present], atol=1e-6)
    np.testing.assert_allclose(1 - iou_loss[present], iou[present], atol=1e-6)


def test_jit_equals_eager():
    predictions, labels = _random_maps(2)
    where = np.random.default_rng(2).random(labels.shape) < 0.7

    # Eager mode compiles every primitive on its own (seconds): keep the list short. The
    # state covers the statistics core and the scores that dice_score and iou_score share.
    def everything(p, y, w):
        state = metrics.update(metrics.metric_state(NUM_CLASSES), p, y, where=w)
        return metrics.confusion_matrix(p, y, NUM_CLASSES, where=w), state

    jitted = jax.jit(everything)(predictions, labels, where)
    with jax.disable_jit():
        eager = everything(predictions, labels, where)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), jitted, eager)


# --------------------------------------------------------------------- confusion matrix


def _numpy_confusion(predictions, labels, num_classes, ignore_index=None, where=None):
    valid = (labels >= 0) & (labels < num_classes) & (predictions >= 0)
    valid &= predictions < num_classes
    if ignore_index is not None:
        valid &= labels != ignore_index
    if where is not None:
        valid &= where
    index = (labels * num_classes + predictions)[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


@pytest.mark.parametrize("ignore_index", [None, 0, 255])
@pytest.mark.parametrize("use_where", [False, True])
def test_confusion_matrix_matches_bincount(ignore_index, use_where):
    predictions, labels = _random_maps(4, (3, 8, 7, 2))
    rng = np.random.default_rng(4)
    labels = np.where(rng.random(labels.shape) < 0.1, 255, labels)
    labels = np.where(rng.random(labels.shape) < 0.05, -3, labels)
    predictions = np.where(rng.random(labels.shape) < 0.05, NUM_CLASSES, predictions)
    where = rng.random(labels.shape) < 0.7 if use_where else None
    matrix = metrics.confusion_matrix(
        predictions, labels, NUM_CLASSES, ignore_index=ignore_index, where=where
    )
    assert matrix.dtype == jnp.int32 and matrix.shape == (NUM_CLASSES, NUM_CLASSES)
    expected = _numpy_confusion(predictions, labels, NUM_CLASSES, ignore_index, where)
    np.testing.assert_array_equal(matrix, expected)


def test_confusion_matrix_agrees_with_state_counts():
    predictions, labels = _random_maps(6)
    matrix = np.asarray(metrics.confusion_matrix(predictions, labels, NUM_CLASSES))
    counts = metrics.exact_counts(
        metrics.update(metrics.metric_state(NUM_CLASSES), predictions, labels)
    )
    tp = np.diag(matrix)
    np.testing.assert_array_equal(counts["tp"], tp)
    np.testing.assert_array_equal(counts["fp"], matrix.sum(0) - tp)
    np.testing.assert_array_equal(counts["fn"], matrix.sum(1) - tp)
    np.testing.assert_array_equal(counts["tn"], matrix.sum() - matrix.sum(0) - matrix.sum(1) + tp)


# ------------------------------------------------------------------------- metric state


def _batches(num_batches=10, shape=(2, 9, 11)):
    rng = np.random.default_rng(10)
    out = []
    for i in range(num_batches):
        predictions, labels = _random_maps(100 + i, shape)
        labels = np.where(rng.random(shape) < 0.1, 255, labels)
        out.append((predictions, labels, rng.random(shape) < 0.9))
    return out


def _assert_states_equal(a, b, exact_floats=False):
    for name, x, y in zip(metrics.MetricState._fields, a, b, strict=True):
        if name in ("dice_sum", "iou_sum") and not exact_floats:
            np.testing.assert_allclose(x, y, rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_state_over_batches_equals_state_of_concatenation():
    batches = _batches()
    state = metrics.metric_state(NUM_CLASSES)
    for predictions, labels, where in batches:
        state = metrics.update(state, predictions, labels, ignore_index=255, where=where)
    predictions, labels, where = (np.concatenate(x) for x in zip(*batches, strict=True))
    whole = metrics.update(
        metrics.metric_state(NUM_CLASSES), predictions, labels, ignore_index=255, where=where
    )
    _assert_states_equal(state, whole)
    counts = metrics.exact_counts(state)
    expected = _numpy_stats(predictions, labels, NUM_CLASSES, where & (labels != 255))
    for name in ("tp", "fp", "fn", "tn"):
        np.testing.assert_array_equal(counts[name], expected[name].sum(0), err_msg=name)
    assert int(state.num_samples) == predictions.shape[0]
    # Per-sample means: the mean of dice_score over samples (MONAI "mean_batch").
    dice = np.asarray(
        metrics.dice_score(predictions, labels, NUM_CLASSES, ignore_index=255, where=where)
    )
    np.testing.assert_allclose(metrics.compute(state)["sample_dice"], _nan_mean(dice, 0), rtol=1e-6)


def test_state_is_a_scan_carry():
    batches = _batches(4)

    def step(state, batch):
        predictions, labels, where = batch
        return metrics.update(state, predictions, labels, ignore_index=255, where=where), None

    stacked = tuple(np.stack(x) for x in zip(*batches, strict=True))
    scanned, _ = jax.lax.scan(step, metrics.metric_state(NUM_CLASSES), stacked)
    looped = metrics.metric_state(NUM_CLASSES)
    for batch in batches:
        looped, _ = step(looped, batch)
    _assert_states_equal(scanned, looped)


@pytest.mark.parametrize("ignore_empty", [True, False])
def test_state_sample_means_match_monai_cumulative_metric(ignore_empty):
    monai_dice = DiceMetric(reduction="mean_batch", ignore_empty=ignore_empty)
    monai_iou = MeanIoU(reduction="mean_batch", ignore_empty=ignore_empty)
    state = metrics.metric_state(NUM_CLASSES)
    for i in range(4):
        predictions, labels = _random_maps(20 + i)
        state = metrics.update(state, predictions, labels)
        y_pred, y = _torch_one_hot(predictions, NUM_CLASSES), _torch_one_hot(labels, NUM_CLASSES)
        monai_dice(y_pred=y_pred, y=y)
        monai_iou(y_pred=y_pred, y=y)
    result = metrics.compute(state, ignore_empty=ignore_empty)
    np.testing.assert_allclose(result["sample_dice"], monai_dice.aggregate().numpy(), rtol=1e-6)
    np.testing.assert_allclose(result["sample_iou"], monai_iou.aggregate().numpy(), rtol=1e-6)


def test_merge_is_associative_and_commutative():
    states = []
    for predictions, labels, where in _batches(3):
        states.append(
            metrics.update(
                metrics.metric_state(NUM_CLASSES),
                predictions,
                labels,
                ignore_index=255,
                where=where,
            )
        )
    a, b, c = states
    _assert_states_equal(metrics.merge(a, b), metrics.merge(b, a), exact_floats=True)
    _assert_states_equal(
        metrics.merge(metrics.merge(a, b), c), metrics.merge(a, metrics.merge(b, c))
    )
    _assert_states_equal(metrics.merge(a, metrics.metric_state(NUM_CLASSES)), a, exact_floats=True)


def test_counts_are_exact_beyond_int32():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (4, 160, 200)).astype(np.int32)  # 128000 pixels > 2^16
    predictions = np.where(rng.random(labels.shape) < 0.9, labels, 0).astype(np.int32)
    state = metrics.update(metrics.metric_state(3), predictions, labels)
    single = metrics.exact_counts(state)
    expected = _numpy_stats(predictions, labels, 3)
    for name in single:
        np.testing.assert_array_equal(single[name], expected[name].sum(0))
    for _ in range(16):  # 2^16 copies: every count above 2^31
        state = metrics.merge(state, state)
    counts = metrics.exact_counts(state)
    assert counts["tn"].min() > 2**31
    for name in counts:
        np.testing.assert_array_equal(counts[name], single[name] * 2**16)
    assert (np.asarray(state.tp)[:, 1] < 2**16).all()
    np.testing.assert_allclose(
        metrics.compute(state)["dice"],
        metrics.compute(metrics.update(metrics.metric_state(3), predictions, labels))["dice"],
        rtol=1e-6,
    )


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_compute_matches_numpy_formulas(include_background, ignore_empty):
    num_classes = 6
    predictions, labels = _random_maps(30, num_classes=4)
    predictions[0, 0, :3] = 4  # class 4 is predicted, never labelled; class 5 nowhere
    state = metrics.update(metrics.metric_state(num_classes), predictions, labels)
    result = metrics.compute(
        state, include_background=include_background, ignore_empty=ignore_empty
    )
    counts = {k: v.astype(np.float64) for k, v in metrics.exact_counts(state).items()}
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    dice = _nan_divide(2 * tp, 2 * tp + fp + fn)
    iou = _nan_divide(tp, tp + fp + fn)
    if ignore_empty:
        dice, iou = (np.where(tp + fn > 0, x, np.nan) for x in (dice, iou))
    else:
        dice, iou = (np.where(tp + fp + fn > 0, x, 1.0) for x in (dice, iou))
    expected = {
        "dice": dice,
        "iou": iou,
        "precision": _nan_divide(tp, tp + fp),
        "recall": _nan_divide(tp, tp + fn),
        "specificity": _nan_divide(tn, tn + fp),
    }
    first = 0 if include_background else 1
    for key, value in expected.items():
        np.testing.assert_allclose(result[key], value[first:], rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(
            result[f"mean_{key}"], _nan_mean(value[first:]), rtol=1e-6, err_msg=key
        )
    np.testing.assert_allclose(result["accuracy"], tp.sum() / (tp + fp + fn + tn)[0], rtol=1e-6)
    assert np.isnan(result["precision"][-1]) and np.isnan(result["recall"][-1])
    # Class 4 is only predicted, class 5 appears nowhere.
    if ignore_empty:
        assert np.isnan(result["dice"][-2:]).all()
    else:
        np.testing.assert_array_equal(result["dice"][-2:], [0.0, 1.0])
    assert all(v.dtype == jnp.float32 for v in result.values())


def test_update_with_axis_name_gives_the_global_state():
    predictions, labels = _random_maps(40, (8, 6, 7))
    state = metrics.metric_state(NUM_CLASSES)
    shard = lambda x: x.reshape(4, 2, *x.shape[1:])
    per_device = jax.vmap(
        lambda p, y: metrics.update(state, p, y, ignore_index=0, axis_name="devices"),
        axis_name="devices",
    )(shard(predictions), shard(labels))
    whole = metrics.update(state, predictions, labels, ignore_index=0)
    for device in range(4):
        _assert_states_equal(jax.tree.map(lambda x, d=device: x[d], per_device), whole)


# ------------------------------------------------------------------ class maps and errors


def test_predictions_from_logits():
    logits = np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(metrics.predictions_from_logits(logits), np.argmax(logits, -1))
    np.testing.assert_array_equal(
        metrics.predictions_from_logits(logits, activation="sigmoid"), np.argmax(logits, -1)
    )
    one = logits[..., :1]
    binary = metrics.predictions_from_logits(one, activation="sigmoid", threshold=0.3)
    assert binary.dtype == jnp.int32 and binary.shape == (2, 5, 6)
    np.testing.assert_array_equal(binary, np.asarray(one[..., 0]) > np.log(0.3 / 0.7))
    probs = 1 / (1 + np.exp(-one))
    np.testing.assert_array_equal(
        metrics.predictions_from_logits(probs, activation=None), probs[..., 0] > 0.5
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.dice_score(np.zeros((1, 4)), np.zeros((1, 4), int), 2), "predictions"),
        (lambda: metrics.dice_score(np.zeros((1, 4), int), np.zeros((1, 5), int), 2), "same shape"),
        (lambda: metrics.dice_score(np.zeros((4,), int), np.zeros((4,), int), 2), "rank"),
        (
            lambda: metrics.iou_score(
                np.zeros((1, 4), int), np.zeros((1, 4), int), 1, include_background=False
            ),
            "num_classes",
        ),
        (
            lambda: metrics.confusion_matrix(np.zeros((1, 4), int), np.zeros((1, 4), int), 2.0),
            "num_classes",
        ),
        (
            lambda: metrics.confusion_matrix(
                np.zeros((1, 4), int), np.zeros((1, 4), int), 2, where=np.ones((1, 4))
            ),
            "where",
        ),
        (lambda: metrics.merge(metrics.metric_state(2), metrics.metric_state(3)), "classes"),
        (lambda: metrics.update({}, np.zeros((1, 4), int), np.zeros((1, 4), int)), "MetricState"),
        (lambda: metrics.predictions_from_logits(np.zeros((1, 4, 1))), "softmax"),
        (lambda: metrics.predictions_from_logits(np.zeros((1, 4, 2), int)), "floating"),
        (
            lambda: metrics.predictions_from_logits(
                np.zeros((1, 4, 1)), activation="sigmoid", threshold=1.5
            ),
            "threshold",
        ),
    ],
)
def test_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
