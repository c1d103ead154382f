"""Malformed calls: every one raises a clear error naming the argument and what it expects.

Two tables:

- ``BAD_CALLS``: static problems (ranks, shapes, dtypes, option values). Each raises at
  trace time, before any computation, with a message that names the argument and the
  shape or value expected (checked by a regex).
- ``BAD_VALUES``: value problems that cannot raise inside ``jit`` (NaN logits, labels
  out of range, dense labels outside [0, 1], probabilities outside [0, 1] with
  ``activation=None``). The checked mode, ``jaxseg.checked(loss)``, raises
  ``checkify.JaxRuntimeError`` naming the problem. In plain mode out-of-range integer
  labels are excluded like ``ignore_index`` and out-of-range dense labels give a finite
  value: no silent NaN. Non-finite logits give NaN in plain mode (as in every framework):
  the checked mode is the way to catch them.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxseg
from jaxseg import metrics

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 8, 8, 3)).astype(np.float32)  # (batch, H, W, classes)
Y = RNG.integers(0, 3, (2, 8, 8)).astype(np.int32)
X1 = RNG.standard_normal((2, 8, 8, 1)).astype(np.float32)  # one sigmoid channel
Y1 = RNG.integers(0, 2, (2, 8, 8)).astype(np.int32)
DENSE = np.eye(3, dtype=np.float32)[Y]
PRED = RNG.integers(0, 3, (2, 8, 8)).astype(np.int32)

# (description, call, exception type, regex the message must match)
BAD_CALLS = [
    (
        "logits of rank 2 (no spatial axis)",
        lambda: jaxseg.dice_loss(X[:, 0, 0], Y[:, 0, 0]),
        ValueError,
        r"`logits` must have shape \(batch, \*spatial, classes\) with 1 to 3 spatial axes "
        r"\(rank 3 to 5\); got shape \(2, 3\)",
    ),
    (
        "logits of rank 6 (4 spatial axes)",
        lambda: jaxseg.cross_entropy(
            np.zeros((1, 2, 2, 2, 2, 3), np.float32), np.zeros((1, 2, 2, 2, 2), int)
        ),
        ValueError,
        r"`logits` must have shape .* \(rank 3 to 5\); got shape \(1, 2, 2, 2, 2, 3\) \(rank 6\)",
    ),
    (
        "integer labels with another spatial shape",
        lambda: jaxseg.dice_loss(X, Y[:, :, :7]),
        ValueError,
        r"integer `labels` must have shape \(2, 8, 8\) .*; got shape \(2, 8, 7\)",
    ),
    (
        "integer logits",
        lambda: jaxseg.focal_loss(X.astype(np.int32), Y),
        ValueError,
        r"`logits` must be a floating array .*; got dtype int32",
    ),
    (
        "dense labels with 4 classes for 3-class logits",
        lambda: jaxseg.iou_loss(X, np.zeros((2, 8, 8, 4), np.float32)),
        ValueError,
        r"dense `labels` must have the shape of `logits`, \(2, 8, 8, 3\); got shape "
        r"\(2, 8, 8, 4\) \(4 classes in `labels`, 3 in `logits`\)",
    ),
    (
        "float class indices (dense labels without class axis)",
        lambda: jaxseg.dice_loss(X, Y.astype(np.float32)),
        ValueError,
        r"dense `labels` must have the shape of `logits`, \(2, 8, 8, 3\); got shape "
        r"\(2, 8, 8\) \(class indices must have an integer dtype\)",
    ),
    (
        "ignore_index with dense labels",
        lambda: jaxseg.dice_loss(X, DENSE, ignore_index=0),
        ValueError,
        r"`ignore_index` needs integer class-index labels; got dense labels of shape "
        r"\(2, 8, 8, 3\)\. Use `where`",
    ),
    (
        "include_background=False with one class",
        lambda: jaxseg.dice_loss(X1, Y1, activation="sigmoid", include_background=False),
        ValueError,
        r"`include_background=False` drops class 0 and needs at least 2 classes .*; got "
        r"shape \(2, 8, 8, 1\)",
    ),
    (
        "unknown activation",
        lambda: jaxseg.dice_loss(X, Y, activation="relu"),
        ValueError,
        r"`activation` must be one of \('softmax', 'sigmoid', None\); got 'relu'",
    ),
    (
        "activation=None for cross-entropy",
        lambda: jaxseg.cross_entropy(X, Y, activation=None),
        ValueError,
        r"`activation` must be one of \('softmax', 'sigmoid'\); got None",
    ),
    (
        "unknown reduction",
        lambda: jaxseg.tversky_loss(X, Y, reduction="avg"),
        ValueError,
        r"`reduction` must be one of \('mean', 'sum', 'none'\); got 'avg'",
    ),
    (
        "unknown empty policy",
        lambda: jaxseg.dice_loss(X, Y, empty="ignore"),
        ValueError,
        r"`empty` must be one of \('smooth', 'exclude', 'complement'\); got 'ignore'",
    ),
    (
        "unknown weight_type",
        lambda: jaxseg.generalized_dice_loss(X, Y, weight_type="log"),
        ValueError,
        r"`weight_type` must be one of \('square', 'simple', 'uniform'\); got 'log'",
    ),
    (
        "negative focal gamma",
        lambda: jaxseg.focal_loss(X, Y, gamma=-1.0),
        ValueError,
        r"`gamma` must be >= 0; got -1\.0",
    ),
    (
        "negative Tversky alpha",
        lambda: jaxseg.tversky_loss(X, Y, alpha=-0.5),
        ValueError,
        r"`alpha` must be >= 0; got -0\.5",
    ),
    (
        "negative smoothing",
        lambda: jaxseg.dice_loss(X, Y, smooth_dr=-1e-5),
        ValueError,
        r"`smooth_dr` must be >= 0; got -1e-05",
    ),
    (
        "class_weights of the wrong length",
        lambda: jaxseg.dice_ce(X, Y, class_weights=np.ones(4, np.float32)),
        ValueError,
        r"`class_weights` must have shape \(3,\), one weight per class .*; got shape \(4,\)",
    ),
    (
        "negative class weights",
        lambda: jaxseg.cross_entropy(X, Y, class_weights=np.array([1.0, -1.0, 1.0])),
        ValueError,
        r"`class_weights` must be >= 0; got array\(\[ 1\., -1\.,  1\.\]\)",
    ),
    (
        "where of the wrong shape",
        lambda: jaxseg.dice_loss(X, Y, where=np.ones((2, 8), bool)),
        ValueError,
        r"`where` must have shape \(2, 8, 8\); got shape \(2, 8\)",
    ),
    (
        "where of a non-boolean dtype",
        lambda: jaxseg.focal_loss(X, Y, where=np.ones((2, 8, 8), np.float32)),
        ValueError,
        r"`where` must be a boolean array of shape \(2, 8, 8\); got dtype float32",
    ),
    (
        "softmax with one channel",
        lambda: jaxseg.dice_loss(X1, Y1),
        ValueError,
        r"`activation='softmax'` needs at least 2 classes on the last axis of `logits`; got "
        r"shape \(2, 8, 8, 1\)\. Use activation='sigmoid'",
    ),
    (
        "pos_weight with softmax",
        lambda: jaxseg.cross_entropy(X, Y, pos_weight=2.0),
        ValueError,
        r"`pos_weight` applies to activation='sigmoid' only; got activation='softmax'",
    ),
    (
        "label_smoothing above 1",
        lambda: jaxseg.cross_entropy(X, Y, label_smoothing=1.5),
        ValueError,
        r"`label_smoothing` must lie in \[0, 1\]; got 1\.5",
    ),
    (
        "focal alpha above 1",
        lambda: jaxseg.focal_loss(X1, Y1, activation="sigmoid", alpha=1.25),
        ValueError,
        r"`alpha` must lie in \[0, 1\]; got 1\.25",
    ),
    (
        "focal alpha with one entry per class of the wrong length",
        lambda: jaxseg.focal_loss(X, Y, alpha=np.array([0.2, 0.8])),
        ValueError,
        r"`alpha` must be a scalar or have shape \(3,\), one entry per class; got shape \(2,\)",
    ),
    (
        "negative compound weight",
        lambda: jaxseg.dice_ce(X, Y, lambda_ce=-1.0),
        ValueError,
        r"`lambda_ce` must be >= 0; got -1\.0",
    ),
    (
        "lovasz_hinge_loss with three channels",
        lambda: jaxseg.lovasz_hinge_loss(X, Y),
        ValueError,
        r"`lovasz_hinge_loss` takes one binary channel: `logits` of shape \(batch, "
        r"\*spatial, 1\); got shape \(2, 8, 8, 3\)",
    ),
    (
        "lovasz classes out of range",
        lambda: jaxseg.lovasz_softmax_loss(X, Y, classes=(0, 3)),
        ValueError,
        r"`classes` must be 'present', 'all' or a non-empty sequence of class indices in "
        r"\[0, 3\); got \(0, 3\)",
    ),
    (
        "metrics: predictions and labels of different shapes",
        lambda: metrics.dice_score(PRED[:, :4], Y, 3),
        ValueError,
        r"`predictions` and `labels` must have the same shape; got \(2, 4, 8\) for "
        r"`predictions` and \(2, 8, 8\) for `labels`",
    ),
    (
        "metrics: float predictions (logits or probabilities)",
        lambda: metrics.confusion_matrix(X, Y, 3),
        ValueError,
        r"`predictions` must be an integer \(or boolean\) class map of shape \(batch, "
        r"\*spatial\); got dtype float32\. .*predictions_from_logits",
    ),
    (
        "metrics: num_classes < 1",
        lambda: metrics.iou_score(PRED, Y, 0),
        ValueError,
        r"`num_classes` must be >= 1 with include_background=True; got 0",
    ),
    (
        "metrics: num_classes not an int",
        lambda: metrics.metric_state(3.0),
        ValueError,
        r"`num_classes` must be a Python int; got 3\.0",
    ),
    (
        "metrics: where of the wrong shape",
        lambda: metrics.update(metrics.metric_state(3), PRED, Y, where=np.ones((2, 8), bool)),
        ValueError,
        r"`where` must have shape \(2, 8, 8\); got shape \(2, 8\)",
    ),
    (
        "deep_supervision with an empty list",
        lambda: jaxseg.deep_supervision(jaxseg.dice_loss)([], Y),
        ValueError,
        r"`logits` must be a non-empty list or tuple of arrays, one per output scale",
    ),
    (
        "deep_supervision with labels of another resolution",
        lambda: jaxseg.deep_supervision(jaxseg.dice_loss)([X, X[:, ::2, ::2]], Y[:, ::2]),
        ValueError,
        r"`labels` must have the spatial shape of `logits\[0\]`, \(8, 8\); got shape \(2, 4, 8\)",
    ),
    (
        "combine called with an option no term accepts",
        lambda: jaxseg.combine(jaxseg.dice_loss, jaxseg.cross_entropy)(X, Y, gamma=2.0),
        TypeError,
        r"option\(s\) \['gamma'\] are accepted by none of the terms",
    ),
    (
        "combine with weights of the wrong length",
        lambda: jaxseg.combine(jaxseg.dice_loss, jaxseg.cross_entropy, weights=(1.0,)),
        ValueError,
        r"`weights` must have one entry per term \(2: \('dice_loss', 'cross_entropy'\)\); got 1",
    ),
    (
        "log_transform with eps <= 0",
        lambda: jaxseg.log_transform(jaxseg.dice_loss, eps=0.0),
        ValueError,
        r"`eps` must be > 0; got 0\.0",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [pytest.param(c, e, p, id=d) for d, c, e, p in BAD_CALLS],
)
def test_bad_call_raises_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_table_is_large_enough():
    assert len(BAD_CALLS) >= 20


# --------------------------------------------------------------------------------------
# Value problems: the checked mode reports them; plain mode makes no silent NaN.

X_NAN = X.copy()
X_NAN[0, 1, 2, 0] = np.nan
X_INF = X.copy()
X_INF[1, 0, 0, 2] = np.inf
Y_HIGH = Y.copy()
Y_HIGH[0, 0, :3] = 7
Y_NEG = Y.copy()
Y_NEG[1, 2, 2] = -1
Y1_TWO = Y1.copy()
Y1_TWO[0, 0, 0] = 2  # a binary mask holds 0 and 1 only
DENSE_HIGH = DENSE.copy()
DENSE_HIGH[0, 0, 0] = [0.0, 2.0, 0.0]
DENSE_NEG = DENSE.copy()
DENSE_NEG[0, 0, 0, 0] = -0.5
PROBS = np.exp(X) / np.exp(X).sum(-1, keepdims=True)
PROBS_BAD = PROBS.copy()
PROBS_BAD[0, 0, 0, 0] = 1.5

# (description, loss, logits, labels, options, regex of the checked-mode message)
BAD_VALUES = [
    ("NaN logits", jaxseg.dice_loss, X_NAN, Y, {},
     r"`logits` has 1 non-finite entries \(NaN or inf\)"),
    ("inf logits", jaxseg.cross_entropy, X_INF, Y, {}, r"`logits` has 1 non-finite entries"),
    ("NaN logits, compound loss", jaxseg.dice_ce, X_NAN, Y, {}, r"`logits` has 1 non-finite"),
    ("label above the class count", jaxseg.dice_loss, X, Y_HIGH, {},
     r"`labels` must lie in \[0, 3\); found 3 labels out of range, e.g\. 7"),
    ("negative label", jaxseg.focal_loss, X, Y_NEG, {},
     r"`labels` must lie in \[0, 3\); found 1 labels out of range, e.g\. -1"),
    ("label out of range, ignore_index set", jaxseg.dice_ce, X, Y_HIGH, {"ignore_index": 255},
     r"`labels` must lie in \[0, 3\) or equal ignore_index=255; found 3 labels"),
    ("label 2 in a binary mask", jaxseg.bce_log_dice, X1, Y1_TWO, {},
     r"`labels` must lie in \[0, 2\); found 1 labels out of range, e\.g\. 2"),
    ("label 2 in a binary mask (Lovasz hinge)", jaxseg.lovasz_hinge_loss, X1, Y1_TWO, {},
     r"`labels` must lie in \[0, 2\)"),
    ("dense label above 1", jaxseg.iou_loss, X, DENSE_HIGH, {},
     r"dense `labels` must lie in \[0, 1\]; found 1 entries outside"),
    ("dense label below 0, sigmoid focal", jaxseg.focal_loss, X, DENSE_NEG,
     {"activation": "sigmoid"}, r"dense `labels` must lie in \[0, 1\]; found 1 entries outside"),
    ("probabilities above 1 with activation=None", jaxseg.dice_loss, PROBS_BAD, Y,
     {"activation": None}, r"`logits` must hold probabilities in \[0, 1\] with activation=None"),
]  # fmt: skip
VALUE_IDS = [row[0] for row in BAD_VALUES]


@pytest.mark.parametrize(
    ("_", "loss", "logits", "labels", "options", "pattern"), BAD_VALUES, ids=VALUE_IDS
)
def test_checked_mode_reports_value_problems(_, loss, logits, labels, options, pattern):
    with pytest.raises(checkify.JaxRuntimeError, match=pattern):
        jaxseg.checked(loss)(logits, labels, **options)


@pytest.mark.parametrize(
    ("_", "loss", "logits", "labels", "options", "pattern"), BAD_VALUES, ids=VALUE_IDS
)
def test_plain_mode_has_no_silent_nan(_, loss, logits, labels, options, pattern):
    """Only non-finite logits give a NaN in plain mode; bad labels give finite values."""
    value = float(loss(logits, labels, **options))
    if np.all(np.isfinite(logits)):
        assert np.isfinite(value), value
    else:
        assert np.isnan(value)  # documented: use the checked mode to catch them


@pytest.mark.parametrize(
    "loss",
    [jaxseg.dice_loss, jaxseg.cross_entropy, jaxseg.focal_loss, jaxseg.lovasz_softmax_loss,
     functools.partial(jaxseg.dice_focal, include_background=False)],
)  # fmt: skip
def test_out_of_range_labels_are_excluded_in_plain_mode(loss):
    """An out-of-range integer label leaves the loss as if the pixel were masked out."""
    bad = Y.copy()
    bad[0, :2] = 7
    bad[1, 3, :4] = -3
    where = (bad >= 0) & (bad < 3)
    expected = loss(X, np.where(where, Y, 0), where=where)
    np.testing.assert_allclose(loss(X, bad), expected, rtol=1e-6)


def test_checked_mode_accepts_valid_inputs():
    ignored = np.where(Y == 2, 255, Y)
    value = jaxseg.checked(jaxseg.dice_ce)(X, ignored, ignore_index=255)
    np.testing.assert_allclose(value, jaxseg.dice_ce(X, ignored, ignore_index=255), rtol=1e-6)
    value = jaxseg.checked(jaxseg.dice_loss)(PROBS, Y, activation=None)
    assert np.isfinite(float(value))
    assert jnp.isfinite(jaxseg.checked(jaxseg.lovasz_hinge_loss)(X1, Y1))
