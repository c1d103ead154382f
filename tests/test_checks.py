"""Tests of jaxseg._checks: trace-time errors, validity masks, and the checked mode."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import references as ref
from jax.experimental import checkify

import jaxseg
from jaxseg import _arguments, _checks

X = ref.random_logits(2, 3, seed=0)  # (2, 6, 7, 3)
Y = ref.random_labels(2, 3, seed=1)  # (2, 6, 7)
X1 = ref.random_logits(2, 1, seed=2)  # one channel
Y1 = ref.random_labels(2, 1, seed=3)  # 0/1

ALL_LOSSES = {
    "dice": jaxseg.dice_loss,
    "iou": jaxseg.iou_loss,
    "tversky": jaxseg.tversky_loss,
    "generalized_dice": jaxseg.generalized_dice_loss,
    "cross_entropy": jaxseg.cross_entropy,
    "focal": jaxseg.focal_loss,
    "overlap_stats": jaxseg.overlap_stats,
}
OVERLAP = ("dice", "iou", "tversky", "generalized_dice")
PIXEL = ("cross_entropy", "focal")

# (functions, logits, labels, options, message regex): the message must name the
# argument and the shape or value it got.
COMMON_ERRORS = {
    "logits-rank-2": (X[:, 0, 0], Y[:, 0, 0], {}, r"`logits`.*rank 3 to 5.*\(2, 3\).*rank 2"),
    "logits-rank-6": (
        X[:, None, None, ..., None, :],
        Y[:, None, None, ..., None],
        {},
        r"`logits`.*\(2, 1, 1, 6, 7, 1, 3\).*rank 7",
    ),
    "spatial-mismatch": (X, Y[:, :, :5], {}, r"integer `labels`.*\(2, 6, 7\).*\(2, 6, 5\)"),
    "batch-mismatch": (X, Y[:1], {}, r"integer `labels`.*\(2, 6, 7\).*\(1, 6, 7\)"),
    "integer-logits": (X.astype(np.int32), Y, {}, r"`logits` must be a floating.*int32"),
    "dense-labels-wrong-classes": (
        X,
        np.eye(4, dtype=np.float32)[Y],
        {},
        r"dense `labels`.*\(2, 6, 7, 3\).*\(2, 6, 7, 4\).*4 classes",
    ),
    "float-class-indices": (
        X,
        Y.astype(np.float32),
        {},
        r"dense `labels`.*\(2, 6, 7\).*integer dtype",
    ),
    "ignore-index-with-dense-labels": (
        X,
        np.eye(3, dtype=np.float32)[Y],
        {"ignore_index": 0},
        r"`ignore_index` needs integer.*\(2, 6, 7, 3\)",
    ),
    "ignore-index-not-int": (X, Y, {"ignore_index": 1.5}, r"`ignore_index` must be an int.*1.5"),
    "where-wrong-shape": (
        X,
        Y,
        {"where": np.ones((2, 6), bool)},
        r"`where` must have shape \(2, 6, 7\); got shape \(2, 6\)",
    ),
    "where-not-bool": (
        X,
        Y,
        {"where": np.ones((2, 6, 7), np.float32)},
        r"`where` must be a boolean.*float32",
    ),
    "where-int": (
        X,
        Y,
        {"where": np.ones((2, 6, 7), np.int32)},
        r"`where` must be a boolean.*int32",
    ),
    "softmax-one-channel": (
        X1,
        Y1,
        {"activation": "softmax"},
        r"softmax.*at least 2 classes.*\(2, 6, 7, 1\)",
    ),
    "unknown-activation": (X, Y, {"activation": "relu"}, r"`activation`.*'relu'"),
    "empty-logits-axis": (X[:, :0], Y[:, :0], {}, r"`logits`.*empty axis.*\(2, 0, 7, 3\)"),
}


@pytest.mark.parametrize("name", list(ALL_LOSSES))
@pytest.mark.parametrize("case", list(COMMON_ERRORS), ids=list(COMMON_ERRORS))
def test_bad_inputs_raise_value_error_naming_the_argument(name, case):
    logits, labels, options, message = COMMON_ERRORS[case]
    with pytest.raises(ValueError, match=message):
        ALL_LOSSES[name](logits, labels, **options)


SPECIFIC_ERRORS = [
    (OVERLAP + PIXEL, {"reduction": "avg"}, r"`reduction`.*'avg'"),
    (
        OVERLAP + PIXEL,
        {"class_weights": np.ones(2)},
        r"`class_weights` must have shape \(3,\).*got shape \(2,\)",
    ),
    (
        OVERLAP + PIXEL,
        {"class_weights": np.ones((1, 3))},
        r"`class_weights` must have shape \(3,\).*got shape \(1, 3\)",
    ),
    (
        OVERLAP + PIXEL,
        {"class_weights": np.array([1.0, -1.0, 1.0])},
        r"`class_weights` must be >= 0",
    ),
    (
        OVERLAP,
        {"include_background": False, "activation": "sigmoid"},
        r"`include_background=False`.*2 classes.*\(2, 6, 7, 1\)",
    ),
    (OVERLAP, {"smooth_nr": -1e-5}, r"`smooth_nr` must be >= 0; got -1e-05"),
    (OVERLAP, {"smooth_dr": -1.0}, r"`smooth_dr` must be >= 0; got -1.0"),
    (("dice", "iou", "tversky"), {"empty": "ignore"}, r"`empty`.*'ignore'"),
    (
        ("dice", "iou"),
        {"empty": "complement", "squared": True},
        r"`empty='complement'`.*`squared=True`",
    ),
    (("tversky",), {"alpha": -0.1}, r"`alpha` must be >= 0; got -0.1"),
    (("tversky",), {"beta": -1}, r"`beta` must be >= 0; got -1"),
    (("tversky", "focal"), {"gamma": -2.0}, r"`gamma` must be >= 0; got -2.0"),
    (("generalized_dice",), {"weight_type": "log"}, r"`weight_type`.*'log'"),
    (PIXEL, {"activation": None}, r"`activation`.*None"),
    (("cross_entropy",), {"pos_weight": 2.0}, r"`pos_weight`.*sigmoid"),
    (
        ("cross_entropy",),
        {"pos_weight": np.ones(2), "activation": "sigmoid"},
        r"`pos_weight`.*\(3,\).*got shape \(2,\)",
    ),
    (
        ("cross_entropy",),
        {"pos_weight": -1.0, "activation": "sigmoid"},
        r"`pos_weight` must be >= 0",
    ),
    (("cross_entropy",), {"label_smoothing": 1.5}, r"`label_smoothing` must lie in \[0, 1\]"),
    (("cross_entropy",), {"label_smoothing": -0.1}, r"`label_smoothing` must lie in \[0, 1\]"),
    (("focal",), {"alpha": 1.2}, r"`alpha` must lie in \[0, 1\]; got 1.2"),
    (
        ("focal",),
        {"alpha": np.array([0.2, 0.8])},
        r"`alpha` must be a scalar or have shape \(3,\).*got shape \(2,\)",
    ),
]


@pytest.mark.parametrize(
    "name, options, message",
    [(name, options, message) for names, options, message in SPECIFIC_ERRORS for name in names],
    ids=[
        f"{name}-{'-'.join(map(str, options))}-{i}"
        for i, (names, options, _) in enumerate(SPECIFIC_ERRORS)
        for name in names
    ],
)
def test_bad_options_raise_value_error_naming_the_option(name, options, message):
    one_channel = options.get("activation") == "sigmoid" and "include_background" in options
    logits, labels = (X1, Y1) if one_channel else (X, Y)
    with pytest.raises(ValueError, match=message):
        ALL_LOSSES[name](logits, labels, **options)


@pytest.mark.parametrize(
    "name, case",
    [
        ("dice", "spatial-mismatch"),
        ("focal", "where-not-bool"),
        ("generalized_dice", "dense-labels-wrong-classes"),
        ("cross_entropy", "softmax-one-channel"),
    ],
)
def test_errors_are_raised_at_trace_time_under_jit(name, case):
    logits, labels, options, message = COMMON_ERRORS[case]
    arrays = {k: v for k, v in options.items() if isinstance(v, np.ndarray)}
    static = {k: v for k, v in options.items() if k not in arrays}
    fn = jax.jit(lambda x, y, arrays: ALL_LOSSES[name](x, y, **arrays, **static))
    with pytest.raises(ValueError, match=message):
        fn.trace(logits, labels, arrays)


# ---------------------------------------------------------------------------------------
# Ranges of the number rules: each bound is honoured, open or closed, alone or with the
# other.

# (rule name, value, message regex or None where the value is accepted).
RANGE_CASES = [
    # k: (0, 100], the lower bound open.
    ("k", 0, r"^`k` must lie in \(0, 100\]; got 0\.$"),
    ("k", 0.0, r"^`k` must lie in \(0, 100\]; got 0\.0\.$"),
    ("k", -1.0, r"^`k` must lie in \(0, 100\]; got -1\.0\.$"),
    ("k", 100.5, r"^`k` must lie in \(0, 100\]; got 100\.5\.$"),
    ("k", np.nan, r"^`k` must be finite and lie in \(0, 100\]; got nan\.$"),
    ("k", 1e-9, None),
    ("k", 100, None),
    ("k", 100.0, None),
    # percentile: [0, 100], None allowed.
    ("percentile", 0, None),
    ("percentile", 100.0, None),
    ("percentile", None, None),
    ("percentile", -0.5, r"^`percentile` must lie in \[0, 100\]; got -0\.5\.$"),
    ("percentile", 100.01, r"^`percentile` must lie in \[0, 100\]; got 100\.01\.$"),
    # epsilon: [0, 0.5].
    ("epsilon", 0.0, None),
    ("epsilon", 0.5, None),
    ("epsilon", 0.51, r"^`epsilon` must lie in \[0, 0\.5\]; got 0\.51\.$"),
    ("epsilon", -1e-3, r"^`epsilon` must lie in \[0, 0\.5\]; got -0\.001\.$"),
    # label_smoothing: [0, 1].
    ("label_smoothing", 1.0, None),
    ("label_smoothing", 1.5, r"^`label_smoothing` must lie in \[0, 1\]; got 1\.5\.$"),
    # eps: > 0, no upper bound.
    ("eps", 0.0, r"^`eps` must be > 0; got 0\.0\.$"),
    ("eps", 1e-12, None),
    ("eps", 1e12, None),
    # spacing: > 0, one entry per axis.
    ("spacing", [0.5, 2.0], None),
    ("spacing", np.array([1.0, 0.0]), r"^`spacing` must be > 0; got array\(\[1\., 0\.\]\)\.$"),
]


@pytest.mark.parametrize(
    "name, value, message", RANGE_CASES, ids=[f"{n}={v!r}" for n, v, _ in RANGE_CASES]
)
def test_number_rules_honour_both_bounds(name, value, message):
    rule = _arguments.RULES[name]
    if message is None:
        np.testing.assert_array_equal(rule(name, value), value)
    else:
        with pytest.raises(ValueError, match=message):
            rule(name, value)


def test_as_number_upper_bound_alone_and_no_bound():
    assert _arguments.as_number("x", 1.0, high=1) == 1.0
    assert _arguments.as_number("x", -5, high=1) == -5
    with pytest.raises(ValueError, match=r"^`x` must be <= 1; got 2\.0\.$"):
        _arguments.as_number("x", 2.0, high=1)
    with pytest.raises(ValueError, match=r"^`x` must be finite and <= 1; got inf\.$"):
        _arguments.as_number("x", np.inf, high=1)
    assert _arguments.as_number("x", -1e30) == -1e30
    with pytest.raises(ValueError, match=r"^`x` must be finite; got nan\.$"):
        _arguments.as_number("x", np.nan)
    # The upper bound is closed, with an open lower bound too.
    assert _arguments.as_number("x", 2.0, low=1, high=2, low_open=True) == 2.0
    with pytest.raises(ValueError, match=r"^`x` must lie in \(1, 2\]; got 1\.0\.$"):
        _arguments.as_number("x", 1.0, low=1, high=2, low_open=True)


def test_topk_k_of_zero_is_rejected_and_the_smallest_positive_accepted():
    x = np.zeros((1, 4, 2), np.float32)
    y = np.zeros((1, 4), np.int32)
    with pytest.raises(ValueError, match=r"^`k` must lie in \(0, 100\]; got 0\.$"):
        jaxseg.topk_cross_entropy(x, y, k=0)
    # k = 1e-9 keeps at least one pixel: the mean CE of one pixel of uniform logits.
    np.testing.assert_allclose(jaxseg.topk_cross_entropy(x, y, k=1e-9), np.log(2), rtol=1e-6)
    np.testing.assert_allclose(jaxseg.topk_cross_entropy(x, y, k=100), np.log(2), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Validity mask


def test_valid_mask_combines_range_ignore_index_and_where():
    labels = jnp.array([[0, 1, 2, 3, -1, 255]])
    where = jnp.array([[True, True, True, True, True, False]])
    mask = _checks.valid_mask(labels, 3, "softmax", ignore_index=1, where=where)
    np.testing.assert_array_equal(mask, [[True, False, True, False, False, False]])
    # One sigmoid channel: labels 0 and 1 are valid (a binary mask), 2 is out of range.
    binary = _checks.valid_mask(jnp.array([[0, 1, 2]]), 1, "sigmoid", None, None)
    np.testing.assert_array_equal(binary, [[True, True, False]])
    np.testing.assert_array_equal(_checks.label_values(1, "sigmoid"), [1])
    np.testing.assert_array_equal(_checks.label_values(3, "sigmoid"), [0, 1, 2])


# ---------------------------------------------------------------------------------------
# Checked mode and plain-mode behaviour on bad values

NAN_X = X.copy()
NAN_X[0, 1, 2, 0] = np.nan


@pytest.mark.parametrize("name", ["dice", "cross_entropy"])
def test_checked_mode_reports_non_finite_logits(name):
    with pytest.raises(checkify.JaxRuntimeError, match=r"`logits` has 1 non-finite entries"):
        jaxseg.checked(ALL_LOSSES[name])(NAN_X, Y)


def test_plain_mode_propagates_non_finite_logits():
    # Plain mode neither raises nor hides a diverged model: NaN logits give a NaN loss
    # (as PyTorch, MONAI and optax), the checked mode says where it comes from.
    assert np.isnan(float(jaxseg.dice_loss(NAN_X, Y)))


OUT_OF_RANGE = Y.copy()
OUT_OF_RANGE[1, 2, 3] = 5
OUT_OF_RANGE[0, 0, 0] = -3


@pytest.mark.parametrize("name", ["dice", "focal"])
def test_checked_mode_reports_labels_out_of_range(name):
    with pytest.raises(
        checkify.JaxRuntimeError, match=r"`labels` must lie in \[0, 3\); found 2 labels out of"
    ):
        jaxseg.checked(ALL_LOSSES[name])(X, OUT_OF_RANGE)


@pytest.mark.parametrize("name", ["dice", "cross_entropy"])
def test_plain_mode_excludes_labels_out_of_range(name):
    # Finite, and equal to excluding those pixels with `where`.
    loss = ALL_LOSSES[name]
    where = (OUT_OF_RANGE >= 0) & (OUT_OF_RANGE < 3)
    value, grad = jax.value_and_grad(loss)(X, OUT_OF_RANGE)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    expected = jaxseg.dice_loss if name == "dice" else jaxseg.cross_entropy
    np.testing.assert_allclose(
        value, expected(X, np.where(where, OUT_OF_RANGE, 0), where=where), rtol=1e-6
    )


def test_checked_mode_accepts_ignore_index_and_names_it():
    labels = np.where(Y == 2, 255, Y).astype(np.int32)
    checked = jaxseg.checked(jaxseg.dice_loss)
    value = checked(X, labels, ignore_index=255)
    np.testing.assert_allclose(value, jaxseg.dice_loss(X, labels, ignore_index=255), rtol=1e-6)
    labels[0, 0, 0] = 7
    with pytest.raises(
        checkify.JaxRuntimeError,
        match=r"\[0, 3\) or equal ignore_index=255; found 1 labels.*e\.g\. 7",
    ):
        checked(X, labels, ignore_index=255)


def test_checked_mode_reports_dense_labels_and_probabilities_out_of_range():
    dense = np.eye(3, dtype=np.float32)[Y] * 1.5
    with pytest.raises(checkify.JaxRuntimeError, match=r"dense `labels` must lie in \[0, 1\]"):
        jaxseg.checked(jaxseg.cross_entropy)(X, dense)
    with pytest.raises(checkify.JaxRuntimeError, match=r"probabilities in \[0, 1\]"):
        jaxseg.checked(jaxseg.dice_loss)(X, Y, activation=None)


def test_checked_mode_binary_channel_label_range():
    checked = jaxseg.checked(jaxseg.focal_loss)
    value = checked(X1, Y1, activation="sigmoid")
    np.testing.assert_allclose(value, jaxseg.focal_loss(X1, Y1, activation="sigmoid"), rtol=1e-6)
    bad = Y1.copy()
    bad[0, 0, 0] = 2
    with pytest.raises(checkify.JaxRuntimeError, match=r"\[0, 2\)"):
        checked(X1, bad, activation="sigmoid")


def test_checked_mode_takes_the_activation_default_of_the_loss():
    # A loss whose only activation is a sigmoid (no `activation` option, as bce_log_dice):
    # one channel is a binary mask, label 1 is valid.
    def binary_dice(logits, labels, *, smooth_nr=1e-5):
        return jaxseg.dice_loss(logits, labels, activation="sigmoid", smooth_nr=smooth_nr)

    value = jaxseg.checked(binary_dice)(X1, Y1)
    np.testing.assert_allclose(value, binary_dice(X1, Y1), rtol=1e-6)

    # A loss whose default is activation=None checks probabilities.
    def probability_dice(logits, labels, *, activation=None):
        return jaxseg.dice_loss(logits, labels, activation=activation)

    with pytest.raises(checkify.JaxRuntimeError, match=r"probabilities"):
        jaxseg.checked(probability_dice)(X, Y)


def test_checked_mode_equals_plain_mode_on_valid_inputs():
    where = np.random.default_rng(4).random(Y.shape) < 0.7
    options = dict(where=where, class_weights=np.array([1.0, 2.0, 0.5], np.float32))
    checked = jaxseg.checked(jaxseg.cross_entropy)(X, Y, **options)
    np.testing.assert_allclose(checked, ref.cross_entropy(X, Y, **options), rtol=1e-5)
    assert checked.dtype == jnp.float32


def test_validate_values_under_checkify():
    checked = checkify.checkify(
        functools.partial(jaxseg.validate_values, activation="softmax", ignore_index=None),
        errors=checkify.user_checks,
    )
    error, _ = jax.jit(checked)(X, Y)
    assert error.get() is None
    error, _ = jax.jit(checked)(X, OUT_OF_RANGE)
    assert "out of range" in error.get()
