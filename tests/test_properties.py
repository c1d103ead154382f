"""Property-based tests (hypothesis) of every public loss and of the overlap metrics.

Properties, on random ranks (1D to 3D spatial), batch and class counts, dtypes (float32,
bfloat16, float16 logits), logits up to +-1e4, soft labels, one sigmoid class, and the
structured edge cases that break segmentation losses (all-empty labels, all-full labels,
every pixel excluded, saturated right and wrong predictions):

- values and gradients are finite; losses stay in their documented range (overlap
  losses and Lovasz-Softmax in [0, 1], pixel and compound losses >= 0), up to
  ``RANGE_ATOL`` of float32 rounding; an all-excluded batch gives a zero gradient (and
  0 with equal smoothing terms);
- bfloat16 / float16 logits give the float32 result on the same (rounded) logits:
  values within ``VALUE_RTOL`` and gradients within one unit in the last place of the
  half dtype (``eps(dtype) * |g| + smallest subnormal``), since everything is computed
  and accumulated in float32 after the cast;
- permuting the classes permutes the per-class values (``reduction="none"``) and leaves
  per-pixel / per-sample values unchanged;
- masked equals sliced: pixels excluded by ``where``, by ``ignore_index`` or by an
  out-of-range label change neither the value nor the gradient of the kept pixels
  (their own gradient is exactly 0);
- metric counts are non-negative integers that sum to the number of valid pixels and
  agree with ``numpy.bincount``; scores lie in [0, 1] or are NaN exactly where MONAI's
  convention says.

Speed: XLA compiles per shape and dtype, so every example is drawn from a small fixed
table of scenarios (shape, dtype, label kind, options) and the jitted
``value_and_grad`` of each is cached; data comes from numpy seeded by hypothesis. With
the default "ci" profile (``max_examples=500``, tests/conftest.py) one run executes

    11 losses x 500 (finite/range) + 1500 (half precision) + 1000 (class permutation)
    + 1500 (masked = sliced) + 1000 (metrics) = 10,500 examples,

plus the robustness properties of section 6 (inputs as lists/tuples/NumPy 50, int8/
uint8/bool labels 100, int64 labels 20, per-pixel offsets 100, option types 100,
combinators 100, eager mode 10: 480 more),

checked by ``test_zz_example_count`` at the end of the module; ``HYPOTHESIS_PROFILE=long``
runs ten times more.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import peers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxseg
from jaxseg import metrics

# --------------------------------------------------------------------------------------
# Tolerances (documented in the module docstring).

RANGE_ATOL = 1e-5  # float32 rounding of 1 - ratio and of fp = sum(p) - tp
VALUE_RTOL = 1e-5  # half-precision logits vs the same logits in float32
SLICE_RTOL = 1e-5  # masked vs sliced: different float32 summation orders
PERM_RTOL = 1e-5  # permuted classes: softmax sums in another order

BASE = settings().max_examples  # the profile's unit: 500 with "ci", 5000 with "long"
COUNTS: collections.Counter[str] = collections.Counter()
EXPECTED: dict[str, int] = {}


def _examples(name: str, multiplier: int, divisor: int = 1) -> int:
    """``BASE * multiplier // divisor`` examples for the test ``name``, recorded as expected."""
    EXPECTED[name] = BASE * multiplier // divisor
    return EXPECTED[name]


IGNORE = 255

# Logits shapes: (batch, *spatial, classes), 1 to 3 spatial axes.
S1 = (2, 16, 3)
S2 = (2, 6, 5, 4)
S3 = (1, 4, 3, 3, 3)
S4 = (3, 12, 1)
S5 = (2, 5, 4, 1)
S6 = (1, 3, 4, 2, 2)

F32, BF16, F16 = jnp.float32, jnp.bfloat16, jnp.float16

LOSSES = {
    "dice_loss": jaxseg.dice_loss,
    "iou_loss": jaxseg.iou_loss,
    "tversky_loss": jaxseg.tversky_loss,
    "generalized_dice_loss": jaxseg.generalized_dice_loss,
    "cross_entropy": jaxseg.cross_entropy,
    "focal_loss": jaxseg.focal_loss,
    "dice_ce": jaxseg.dice_ce,
    "dice_focal": jaxseg.dice_focal,
    "bce_log_dice": jaxseg.bce_log_dice,
    "lovasz_softmax_loss": jaxseg.lovasz_softmax_loss,
    "lovasz_hinge_loss": jaxseg.lovasz_hinge_loss,
}
# The documented range of each loss: (lower, upper).
UNIT = (0.0, 1.0)
NONNEG = (0.0, np.inf)
RANGES = {
    "dice_loss": UNIT,
    "iou_loss": UNIT,
    "tversky_loss": UNIT,
    "generalized_dice_loss": UNIT,
    "cross_entropy": NONNEG,
    "focal_loss": NONNEG,
    "dice_ce": NONNEG,
    "dice_focal": NONNEG,
    "bce_log_dice": NONNEG,
    "lovasz_softmax_loss": UNIT,
    "lovasz_hinge_loss": NONNEG,
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One compiled configuration: a loss, a shape, a dtype, a label kind, options.

    ``labels``: ``"int"`` class indices, ``"onehot"`` dense hard labels (multi-label
    for several sigmoid channels), ``"soft"`` dense soft labels, ``"probs"`` integer
    labels with probabilities as input (``activation=None``).
    """

    loss: str
    shape: tuple[int, ...]
    dtype: Any
    labels: str = "int"
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def opts(self) -> dict[str, Any]:
        return {
            k: (np.asarray(v, np.float32) if isinstance(v, tuple) else v) for k, v in self.options
        }

    @property
    def activation(self) -> str | None:
        if self.loss in ("bce_log_dice", "lovasz_hinge_loss"):
            return "sigmoid"
        return dict(self.options).get("activation", "softmax")

    @property
    def ignore_index(self) -> int | None:
        return dict(self.options).get("ignore_index")


def _sc(loss, shape, dtype, labels="int", **options):
    return Scenario(loss, shape, dtype, labels, tuple(sorted(options.items())))


SCENARIOS: dict[str, list[Scenario]] = {
    "dice_loss": [
        _sc("dice_loss", S2, F32),
        _sc("dice_loss", S3, BF16, include_background=False, batch=True, ignore_index=IGNORE),
        _sc("dice_loss", S5, F16, activation="sigmoid", empty="complement"),
        _sc("dice_loss", S1, F32, "soft", soft_label=True, class_weights=(0.5, 1.0, 2.0)),
        _sc("dice_loss", S6, F32, "probs", activation=None, empty="exclude", squared=True),
    ],
    "iou_loss": [
        _sc("iou_loss", S1, F32, empty="exclude", smooth_nr=0.0, smooth_dr=0.0),
        _sc("iou_loss", S5, F16, activation="sigmoid", ignore_index=IGNORE),
        _sc("iou_loss", S2, BF16, "soft", activation="sigmoid", soft_label=True),
    ],
    "tversky_loss": [
        _sc("tversky_loss", S2, F32, alpha=0.3, beta=0.7, gamma=0.75),
        _sc("tversky_loss", S4, F16, activation="sigmoid", gamma=2.0, smooth_nr=0.0),
        _sc("tversky_loss", S3, BF16, "onehot", gamma=0.5, batch=True),
    ],
    "generalized_dice_loss": [
        _sc("generalized_dice_loss", S2, F32),
        _sc("generalized_dice_loss", S3, BF16, weight_type="simple", include_background=False),
        _sc(
            "generalized_dice_loss",
            S4,
            F32,
            activation="sigmoid",
            weight_type="uniform",
            smooth_nr=0.0,
            smooth_dr=0.0,
        ),
    ],
    "cross_entropy": [
        _sc(
            "cross_entropy",
            S2,
            F32,
            class_weights=(1.0, 0.5, 2.0, 0.0),
            label_smoothing=0.1,
            ignore_index=IGNORE,
        ),
        _sc("cross_entropy", S3, BF16, "soft"),
        _sc("cross_entropy", S5, F16, activation="sigmoid", pos_weight=2.0),
        _sc("cross_entropy", S1, F32, "onehot", activation="sigmoid", label_smoothing=0.2),
    ],
    "focal_loss": [
        _sc("focal_loss", S2, F32, alpha=(0.1, 0.2, 0.3, 0.4)),
        _sc("focal_loss", S4, F16, activation="sigmoid", alpha=0.25, gamma=0.5),
        _sc("focal_loss", S6, BF16, "soft", gamma=0.0),
    ],
    "dice_ce": [
        _sc("dice_ce", S2, F32, include_background=False),
        _sc("dice_ce", S3, F16, batch=True, ignore_index=IGNORE),
        _sc("dice_ce", S5, BF16, activation="sigmoid"),
    ],
    "dice_focal": [
        _sc("dice_focal", S2, BF16),
        _sc("dice_focal", S1, F32, "soft", soft_label=True),
        _sc("dice_focal", S4, F32, activation="sigmoid", alpha=0.25),
    ],
    "bce_log_dice": [
        _sc("bce_log_dice", S4, F32),
        _sc("bce_log_dice", S2, BF16, "onehot", batch=True),
        _sc("bce_log_dice", S5, F16, smooth_nr=0.0, smooth_dr=0.0),
    ],
    "lovasz_softmax_loss": [
        _sc("lovasz_softmax_loss", S2, F32),
        _sc("lovasz_softmax_loss", S3, BF16, per_image=True, classes="all"),
        _sc("lovasz_softmax_loss", S6, F32, activation="sigmoid", per_image=True),
    ],
    "lovasz_hinge_loss": [
        _sc("lovasz_hinge_loss", S4, F32),
        _sc("lovasz_hinge_loss", S5, F16, per_image=False, ignore_index=IGNORE),
        _sc("lovasz_hinge_loss", S4, BF16, "onehot"),
    ],
}
# One half-precision scenario per loss (bfloat16 for 6, float16 for 5) and its float32
# twin: 22 compilations.
HALF_SCENARIOS = [next(s for s in group if s.dtype != F32) for group in SCENARIOS.values()]
F32_SCENARIOS = {
    name: next(s for s in group if s.dtype == F32) for name, group in SCENARIOS.items()
}

EDGES = (
    "random", "random", "empty", "full", "excluded", "confident_right", "confident_wrong",
    "extreme",
)  # fmt: skip
SCALES = (1.0, 10.0, 1e2, 1e4)
MASKS = ("all", "all", "half", "none_of_batch_0")

_CACHE: dict[Any, Any] = {}


def _jitted(fn_name: str, options: tuple, *, grad: bool = True):
    """``jit(value_and_grad(loss))`` (or ``jit(loss)``) per (loss, options); jit caches
    one compilation per shape and dtype (with the tests' fast-compile options,
    ``peers.jit``)."""
    key = (fn_name, options, grad)
    if key not in _CACHE:
        opts = Scenario(fn_name, (), F32, "int", options).opts
        fn = functools.partial(LOSSES[fn_name], **opts)

        def call(logits, labels, where):
            return fn(logits, labels, where=where)

        _CACHE[key] = peers.jit(jax.value_and_grad(call) if grad else call)
    return _CACHE[key]


# --------------------------------------------------------------------------------------
# Data from a seed and an edge case.


def make_inputs(
    s: Scenario, seed: int, edge: str, scale: float, mask: str, shape=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float32 logits (rounded to ``s.dtype`` later), labels and ``where``."""
    rng = np.random.default_rng(seed)
    shape = s.shape if shape is None else shape
    num_classes = shape[-1]
    spatial = shape[:-1]
    sigmoid = s.activation != "softmax"
    binary = num_classes == 1 and sigmoid
    # Integer labels in [0, values).
    values = 2 if binary else num_classes
    if edge == "empty":
        index = np.zeros(spatial, np.int32)
    elif edge == "full":
        index = np.full(spatial, values - 1, np.int32)
    else:
        index = rng.integers(0, values, spatial).astype(np.int32)

    if s.labels in ("int", "probs"):
        labels = index.copy()
        if s.ignore_index is not None and edge not in ("empty", "full"):
            labels[rng.random(spatial) < 0.2] = s.ignore_index
        if edge == "excluded" and s.ignore_index is not None:
            labels[...] = s.ignore_index
        target = (index[..., None] == (np.array([1]) if binary else np.arange(num_classes))).astype(
            np.float32
        )
    elif s.labels == "onehot":
        if sigmoid:
            target = (rng.random(shape) < 0.4).astype(np.float32)
            if edge == "empty":
                target[...] = 0
            elif edge == "full":
                target[...] = 1
        else:
            target = np.eye(num_classes, dtype=np.float32)[index]
        labels = target
    else:  # soft
        if sigmoid:
            target = rng.random(shape).astype(np.float32)
        else:
            target = rng.dirichlet(np.ones(num_classes), spatial).astype(np.float32)
        if edge in ("empty", "full"):
            hard = (
                np.zeros(shape, np.float32) + (edge == "full")
                if sigmoid
                else np.eye(num_classes, dtype=np.float32)[index]
            )
            target = hard
        labels = target

    if edge == "confident_right":
        logits = np.where(target > 0.5, 1e4, -1e4)
    elif edge == "confident_wrong":
        logits = np.where(target > 0.5, -1e4, 1e4)
    elif edge == "extreme":
        logits = rng.choice([-1e4, -30.0, 0.0, 30.0, 1e4], size=shape)
    else:
        logits = rng.standard_normal(shape) * scale
    if s.activation is None:  # probabilities in [0, 1]
        logits = 1 / (1 + np.exp(-np.clip(logits, -80, 80)))
    logits = logits.astype(np.float32)

    if mask == "all":
        where = np.ones(spatial, bool)
    elif mask == "half":
        where = rng.random(spatial) < 0.5
    else:
        where = np.ones(spatial, bool)
        where[0] = False
    if edge == "excluded":
        where[...] = False
    return logits, labels, where


def _round(logits: np.ndarray, dtype) -> jax.Array:
    return jnp.asarray(logits).astype(dtype)


def _all_excluded(s: Scenario, labels, where) -> bool:
    if not where.any():
        return True
    if s.labels in ("int", "probs"):
        values = 2 if (s.shape[-1] == 1 and s.activation != "softmax") else s.shape[-1]
        ok = (labels >= 0) & (labels < values) & where
        return not ok.any()
    return False


common = dict(
    seed=st.integers(0, 2**32 - 1),
    edge=st.sampled_from(EDGES),
    scale=st.sampled_from(SCALES),
    mask=st.sampled_from(MASKS),
)


# --------------------------------------------------------------------------------------
# 1. Finite values and gradients, documented ranges.


@pytest.mark.parametrize("name", list(LOSSES))
@settings(max_examples=_examples("finite_and_in_range", len(LOSSES)) // len(LOSSES))
@given(index=st.integers(0, 4), **common)
def test_finite_and_in_range(name, index, seed, edge, scale, mask):
    COUNTS["finite_and_in_range"] += 1
    group = SCENARIOS[name]
    s = group[index % len(group)]
    logits, labels, where = make_inputs(s, seed, edge, scale, mask)
    value, grad = _jitted(s.loss, s.options)(_round(logits, s.dtype), labels, where)
    value, grad = np.asarray(value), np.asarray(grad.astype(jnp.float32))
    assert value.shape == () and value.dtype == np.float32, (s, value)
    assert np.isfinite(value), (s, edge, value)
    assert np.all(np.isfinite(grad)), (s, edge, grad)
    lower, upper = RANGES[name]
    assert lower - RANGE_ATOL <= value <= upper + RANGE_ATOL, (s, edge, value)
    if _all_excluded(s, labels, where):
        opts = dict(s.options)
        if opts.get("smooth_nr", 1e-5) == opts.get("smooth_dr", 1e-5):
            # Otherwise the smoothing decides: 1 - s_nr / s_dr.
            assert abs(value) <= RANGE_ATOL, (s, edge, value)
        assert np.all(grad == 0), (s, edge)


# --------------------------------------------------------------------------------------
# 2. Half precision equals float32 on the same rounded logits.


@settings(max_examples=_examples("half_precision", 3))
@given(index=st.integers(0, len(HALF_SCENARIOS) - 1), **common)
def test_half_precision_matches_float32(index, seed, edge, scale, mask):
    COUNTS["half_precision"] += 1
    s = HALF_SCENARIOS[index]
    logits, labels, where = make_inputs(s, seed, edge, scale, mask)
    half = _round(logits, s.dtype)
    f = _jitted(s.loss, s.options)
    v_half, g_half = f(half, labels, where)
    v_32, g_32 = f(half.astype(jnp.float32), labels, where)
    assert g_half.dtype == s.dtype
    v_half, v_32 = float(v_half), float(v_32)
    assert abs(v_half - v_32) <= VALUE_RTOL * max(1.0, abs(v_32)), (s, edge, v_half, v_32)
    g_half = np.asarray(g_half.astype(jnp.float32))
    g_32 = np.asarray(g_32)
    info = jnp.finfo(s.dtype)
    tol = float(info.eps) * np.abs(g_32) + 2 * float(info.smallest_subnormal)
    assert np.all(np.abs(g_half - g_32) <= tol), (s, edge, np.max(np.abs(g_half - g_32)))


# --------------------------------------------------------------------------------------
# 3. Permuting the classes permutes the per-class values.

# (loss, options, labels, class axis of the "none" output or None if invariant)
PERM_CASES = [
    ("dice_loss", (("reduction", "none"),), "int", -1),
    ("iou_loss", (("reduction", "none"), ("soft_label", True)), "soft", -1),
    ("tversky_loss", (("alpha", 0.2), ("beta", 0.8), ("reduction", "none")), "int", -1),
    ("generalized_dice_loss", (("reduction", "none"),), "int", None),
    ("cross_entropy", (("reduction", "none"),), "int", None),
    ("cross_entropy", (("activation", "sigmoid"), ("reduction", "none")), "onehot", -1),
    ("focal_loss", (("reduction", "none"),), "soft", None),
    ("lovasz_softmax_loss", (("reduction", "none"),), "int", -1),
]


@settings(max_examples=_examples("class_permutation", 2))
@given(
    case=st.integers(0, len(PERM_CASES) - 1),
    perm_seed=st.integers(0, 2**32 - 1),
    **common,
)
def test_class_permutation(case, perm_seed, seed, edge, scale, mask):
    COUNTS["class_permutation"] += 1
    name, options, kind, axis = PERM_CASES[case]
    s = Scenario(name, S2, F32, kind, options)
    logits, labels, where = make_inputs(s, seed, edge, scale, mask)
    perm = np.random.default_rng(perm_seed).permutation(S2[-1])
    p_logits = logits[..., perm]
    if np.issubdtype(labels.dtype, np.integer):
        p_labels = np.argsort(perm)[labels]  # the new class i is the old class perm[i]
    else:
        p_labels = labels[..., perm]
    f = _jitted(name, options, grad=False)
    out = np.asarray(f(logits, labels, where))
    p_out = np.asarray(f(p_logits, p_labels, where))
    expected = out if axis is None else out[..., perm]
    np.testing.assert_allclose(p_out, expected, rtol=PERM_RTOL, atol=PERM_RTOL, err_msg=str(s))


# --------------------------------------------------------------------------------------
# 4. Masked equals sliced.


@settings(max_examples=_examples("masked_equals_sliced", 3))
@given(
    name=st.sampled_from(list(LOSSES)),
    how=st.sampled_from(("where", "ignore_index", "out_of_range")),
    **common,
)
def test_masked_equals_sliced(name, how, seed, edge, scale, mask):
    COUNTS["masked_equals_sliced"] += 1
    s = F32_SCENARIOS[name]
    if s.labels not in ("int", "probs") and how != "where":
        how = "where"  # dense labels are excluded with `where` only
    if how == "ignore_index" and s.ignore_index is None:
        how = "out_of_range"
    logits, labels, where = make_inputs(s, seed, edge, scale, mask)
    keep = (s.shape[1] + 1) // 2
    # The excluded slab holds garbage: extreme logits and labels of any value.
    rng = np.random.default_rng(seed + 1)
    logits[:, keep:] = rng.choice([-1e4, 0.0, 1e4], size=logits[:, keep:].shape)
    if s.activation is None:
        logits[:, keep:] = (logits[:, keep:] > 0).astype(np.float32)
    if how == "where":
        where[:, keep:] = False
        if np.issubdtype(labels.dtype, np.integer):
            labels[:, keep:] = rng.integers(0, 2, labels[:, keep:].shape)
    elif how == "ignore_index":
        labels[:, keep:] = s.ignore_index
    else:
        labels[:, keep:] = rng.choice([-7, -1, s.shape[-1] + 1, 2**20], labels[:, keep:].shape)
    f = _jitted(s.loss, s.options)
    value, grad = f(logits, labels, where)
    v_cut, g_cut = f(logits[:, :keep], labels[:, :keep], where[:, :keep])
    grad, g_cut = np.asarray(grad), np.asarray(g_cut)
    np.testing.assert_allclose(value, v_cut, rtol=SLICE_RTOL, atol=1e-6, err_msg=f"{s} {how}")
    assert np.all(grad[:, keep:] == 0), (s, how)
    scale_g = max(float(np.max(np.abs(g_cut), initial=0)), 1e-30)
    np.testing.assert_allclose(
        grad[:, :keep], g_cut, rtol=SLICE_RTOL, atol=SLICE_RTOL * scale_g, err_msg=f"{s} {how}"
    )


# --------------------------------------------------------------------------------------
# 5. Metrics: exact, non-negative counts; scores in [0, 1] or NaN where documented.

METRIC_SHAPES = [
    ((2, 16), 3, None),
    ((2, 6, 5), 4, IGNORE),
    ((1, 4, 3, 3), 2, None),
    ((3, 7), 1, IGNORE),
]


@functools.cache
def _metric_fns(num_classes: int, ignore_index: int | None):
    def run(pred, lab, where):
        opts = dict(ignore_index=ignore_index, where=where)
        state = metrics.update(metrics.metric_state(num_classes), pred, lab, **opts)
        return dict(
            cm=metrics.confusion_matrix(pred, lab, num_classes, **opts),
            dice=metrics.dice_score(pred, lab, num_classes, **opts),
            dice_all=metrics.dice_score(pred, lab, num_classes, ignore_empty=False, **opts),
            iou=metrics.iou_score(pred, lab, num_classes, **opts),
            iou_all=metrics.iou_score(pred, lab, num_classes, ignore_empty=False, **opts),
            state=state,
            computed=metrics.compute(state),
        )

    return peers.jit(run)


@settings(max_examples=_examples("metrics", 2))
@given(
    index=st.integers(0, len(METRIC_SHAPES) - 1),
    seed=st.integers(0, 2**32 - 1),
    edge=st.sampled_from(("random", "random", "empty", "full", "excluded", "out_of_range")),
    mask=st.sampled_from(MASKS),
)
def test_metric_counts(index, seed, edge, mask):
    COUNTS["metrics"] += 1
    shape, c, ignore_index = METRIC_SHAPES[index]
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, c, shape).astype(np.int32)
    lab = rng.integers(0, c, shape).astype(np.int32)
    if edge == "empty":
        lab[...] = 0
        pred[...] = 0 if rng.random() < 0.5 else pred
    elif edge == "full":
        lab[...] = c - 1
    elif edge == "out_of_range":
        bad = rng.random(shape) < 0.3
        lab[bad] = rng.choice([-1, c, c + 3], bad.sum())
        bad = rng.random(shape) < 0.3
        pred[bad] = rng.choice([-2, c, 99], bad.sum())
    if ignore_index is not None and edge == "random":
        lab[rng.random(shape) < 0.2] = ignore_index
    where = {"all": np.ones(shape, bool), "half": rng.random(shape) < 0.5}.get(mask)
    if where is None:
        where = np.ones(shape, bool)
        where[0] = False
    if edge == "excluded":
        where[...] = False

    out = jax.tree.map(np.asarray, _metric_fns(c, ignore_index)(pred, lab, where))
    valid_label = where & (lab >= 0) & (lab < c)
    valid_both = valid_label & (pred >= 0) & (pred < c)
    # Confusion matrix: non-negative int32 counts summing to the valid pixels.
    cm = out["cm"]
    assert cm.dtype == np.int32 and cm.shape == (c, c) and np.all(cm >= 0)
    assert cm.sum() == valid_both.sum()
    expected = np.bincount(lab[valid_both] * c + pred[valid_both], minlength=c * c)
    np.testing.assert_array_equal(cm.reshape(-1), expected)
    # Per-sample scores.
    axes = tuple(range(1, len(shape)))
    label_count = np.stack([((lab == k) & valid_label).sum(axis=axes) for k in range(c)], -1)
    for key in ("dice", "iou"):
        score, score_all = out[key], out[f"{key}_all"]
        assert score.shape == (shape[0], c)
        np.testing.assert_array_equal(np.isnan(score), label_count == 0)
        assert not np.any(np.isnan(score_all))
        assert np.all((score_all >= 0) & (score_all <= 1))
    assert np.all(out["iou_all"] <= out["dice_all"] + 1e-6)
    # The accumulated state: exact counts.
    counts = metrics.exact_counts(metrics.MetricState(*out["state"]))
    for name in ("tp", "fp", "fn", "tn"):
        assert np.all(counts[name] >= 0), name
    total = counts["tp"] + counts["fp"] + counts["fn"] + counts["tn"]
    np.testing.assert_array_equal(total, np.full(c, valid_label.sum()))
    np.testing.assert_array_equal(counts["tp"], np.diag(cm))
    np.testing.assert_array_equal(counts["tp"] + counts["fn"], label_count.sum(0))
    for key, value in out["computed"].items():
        if key == "prevalence_threshold":  # MONAI's form: ill-conditioned near TPR + TNR = 1
            continue
        signed = key in ("matthews_correlation_coefficient", "informedness", "markedness")
        ok = np.isnan(value) | ((value >= (-1 - 1e-6 if signed else 0)) & (value <= 1 + 1e-6))
        assert np.all(ok), (key, value)


# --------------------------------------------------------------------------------------
# 6. What a hurried user passes (issue 16): inputs as Python lists, tuples and NumPy
# arrays; int8/uint8/bool/int64 labels; per-pixel offsets of extreme logits; option
# types; every combinator; eager mode. Each reuses the compiled scenarios above where it
# can (lists and tuples convert to the same dtypes).

FORMS = ("jax", "numpy", "list", "tuple")


def _as_form(x: np.ndarray, form: str) -> Any:
    if form == "jax":
        return jnp.asarray(x)
    if form == "numpy":
        return x
    nested = x.tolist()
    return nested if form == "list" else tuple(nested)


@settings(max_examples=_examples("input_forms", 1, 10))
@given(
    name=st.sampled_from(list(LOSSES)),
    logits_form=st.sampled_from(FORMS),
    labels_form=st.sampled_from(FORMS),
    seed=st.integers(0, 2**32 - 1),
)
def test_inputs_as_lists_tuples_and_numpy(name, logits_form, labels_form, seed):
    COUNTS["input_forms"] += 1
    s = F32_SCENARIOS[name]
    logits, labels, where = make_inputs(s, seed, "random", 1.0, "half")
    fn = functools.partial(LOSSES[name], **s.opts)
    want = _jitted(s.loss, s.options, grad=False)(logits, labels, where)
    got = fn(_as_form(logits, logits_form), _as_form(labels, labels_form), where=where.tolist())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=str(s))


# (loss, options, one channel): integer-label losses whose labels change dtype.
NARROW = [
    ("dice_ce", (), False),
    ("focal_loss", (("ignore_index", IGNORE),), False),
    ("lovasz_hinge_loss", (), True),
    ("bce_log_dice", (), True),
]


@settings(max_examples=_examples("label_dtypes", 1, 5))
@given(
    case=st.integers(0, len(NARROW) - 1),
    dtype=st.sampled_from(("int8", "uint8", "bool")),
    seed=st.integers(0, 2**32 - 1),
    out_of_range=st.booleans(),
)
def test_narrow_and_boolean_labels(case, dtype, seed, out_of_range):
    """int8, uint8 and bool labels give the int32 result: out-of-range values excluded,
    ``ignore_index=255`` matched only where the dtype can hold it."""
    COUNTS["label_dtypes"] += 1
    name, options, binary = NARROW[case]
    if dtype == "bool" and not binary:
        dtype = "uint8"
    s = Scenario(name, S4 if binary else S2, F32, "int", options)
    logits, labels, where = make_inputs(s, seed, "random", 1.0, "all")
    rng = np.random.default_rng(seed)
    if out_of_range and dtype != "bool":
        labels[rng.random(labels.shape) < 0.3] = -3 if dtype == "int8" else 200
    narrow = labels.astype(dtype)
    # The reference: the int32 call on the value each narrow label holds.
    f = _jitted(name, options, grad=False)
    want = f(logits, narrow.astype(np.int32), where)
    np.testing.assert_allclose(f(logits, narrow, where), want, rtol=1e-6, atol=1e-7)


@settings(max_examples=_examples("int64_labels", 1, 25))
@given(seed=st.integers(0, 2**32 - 1), shift=st.sampled_from((2**32, 2**33, -(2**32), 2**40)))
def test_int64_labels_do_not_wrap(seed, shift):
    """With x64, an int64 label that an int32 cast would wrap into range is excluded."""
    COUNTS["int64_labels"] += 1
    s = F32_SCENARIOS["dice_ce"]
    logits, labels, where = make_inputs(s, seed, "random", 1.0, "all")
    rng = np.random.default_rng(seed)
    wrapped = rng.random(labels.shape) < 0.3
    with jax.enable_x64(True):
        big = labels.astype(np.int64) + np.where(wrapped, shift, 0)
        got = jaxseg.dice_ce(logits, big)
        want = jaxseg.dice_ce(logits, labels, where=~wrapped)
    np.testing.assert_allclose(got, want, rtol=1e-6)


SHIFT_INVARIANT = [
    name for name, s in F32_SCENARIOS.items() if s.activation == "softmax" and s.labels == "int"
]


@settings(max_examples=_examples("offsets", 1, 5))
@given(
    name=st.sampled_from(SHIFT_INVARIANT),
    seed=st.integers(0, 2**32 - 1),
    magnitude=st.sampled_from((0, 1, 16, 1024)),
    extreme=st.booleans(),
)
def test_per_pixel_offsets_of_extreme_logits(name, seed, magnitude, extreme):
    """Softmax losses are invariant to a per-pixel offset of the logits. Logits on a 1/8
    grid within +-64 (or +-64 everywhere) plus offsets that are multiples of 1024 up to
    2^20 are exact in float32, so the shifted logits hold the same numbers; the values
    may differ only by the float32 rounding of a log-sum-exp at the offset's magnitude
    (``eps * |offset|``, 0 without offset), which a pass relative to each pixel's
    maximum avoids entirely."""
    COUNTS["offsets"] += 1
    s = F32_SCENARIOS[name]
    rng = np.random.default_rng(seed)
    logits, labels, where = make_inputs(s, seed, "random", 1.0, "half")
    if extreme:
        logits = rng.choice([-64.0, 64.0], size=logits.shape)
    logits = (np.round(np.clip(logits * 8, -512, 512)) / 8).astype(np.float32)
    offset = rng.integers(-magnitude, magnitude + 1, logits.shape[:-1] + (1,)) * 1024.0
    shifted = (logits + offset).astype(np.float32)
    np.testing.assert_array_equal(shifted.astype(np.float64) - offset, logits)  # exact
    rounding = float(np.finfo(np.float32).eps) * 1024 * magnitude
    f = _jitted(s.loss, s.options)
    value, grad = f(logits, labels, where)
    value_s, grad_s = f(shifted, labels, where)
    np.testing.assert_allclose(value_s, value, rtol=2e-5, atol=1e-6 + rounding, err_msg=str(s))
    scale_g = max(float(np.max(np.abs(grad))), 1e-30)
    atol_g = (1e-4 + rounding) * scale_g
    np.testing.assert_allclose(grad_s, grad, rtol=1e-4, atol=atol_g, err_msg=str(s))


# (option, bad value, exception, regex): every one names the option.
BAD_OPTIONS = [
    ("smooth_nr", "1e-5", TypeError, "`smooth_nr` must be a number"),
    ("smooth_dr", -1.0, ValueError, "`smooth_dr` must be >= 0"),
    ("smooth_nr", np.nan, ValueError, "`smooth_nr` must be finite"),
    ("smooth_nr", [1e-5, 1e-5], ValueError, "`smooth_nr` must be a scalar"),
    ("ignore_index", True, TypeError, "`ignore_index` must be an int"),
    ("ignore_index", 1.0, TypeError, "`ignore_index` must be an int"),
    ("ignore_index", "255", TypeError, "`ignore_index` must be an int"),
    ("class_weights", ["a", "b", "c"], TypeError, "`class_weights` must be a real number"),
    ("class_weights", [1.0, -2.0, 1.0], ValueError, "`class_weights` must be >= 0"),
    ("class_weights", [1.0, np.inf, 1.0], ValueError, "`class_weights` must be finite"),
    ("where", "all", TypeError, "`where` must be an array"),
    ("reduction", None, ValueError, "`reduction` must be one of"),
    ("activation", 1, ValueError, "`activation` must be one of"),
    ("per_image", 1, TypeError, "`per_image` must be a bool"),
    ("include_background", "no", TypeError, "`include_background` must be a bool"),
    ("batch", None, TypeError, "`batch` must be a bool"),
    ("gamma", "2", TypeError, "`gamma` must be a number"),
    ("gamma", -0.5, ValueError, "`gamma` must be >= 0"),
    ("label_smoothing", 2.0, ValueError, r"`label_smoothing` must lie in \[0, 1\]"),
    ("lambda_dice", None, TypeError, "`lambda_dice` must be a number"),
    ("lambda_ce", np.array([1.0, 1.0]), ValueError, "`lambda_ce` must be a scalar"),
    ("lambda_focal", -1, ValueError, "`lambda_focal` must be >= 0"),
    ("alpha", "0.25", TypeError, "`alpha` must be a number"),
    ("beta", np.inf, ValueError, "`beta` must be finite"),
]


@settings(max_examples=_examples("option_types", 1, 5))
@given(name=st.sampled_from(list(LOSSES)), case=st.integers(0, len(BAD_OPTIONS) - 1))
def test_option_types_and_ranges(name, case):
    """A bad option raises an error naming it, before anything is computed; an option
    the loss does not take raises TypeError (Python's own)."""
    COUNTS["option_types"] += 1
    option, value, error, pattern = BAD_OPTIONS[case]
    s = F32_SCENARIOS[name]
    logits, labels, _ = make_inputs(s, 0, "random", 1.0, "all")
    fn = LOSSES[name]
    accepted = jaxseg._combinators.accepted_options(fn)
    if accepted is not None and option not in accepted:
        with pytest.raises(TypeError):
            fn(logits, labels, **{option: value})
        return
    with pytest.raises(error, match=pattern):
        fn(logits, labels, **{option: value})


COMBINATORS = ("combine", "evaluate", "log_transform", "deep_supervision", "with_components")


@functools.cache
def _combinator(kind: str):
    if kind in ("combine", "evaluate"):
        return jaxseg.combine(dice=jaxseg.dice_loss, ce=jaxseg.cross_entropy)
    if kind == "log_transform":
        return jaxseg.log_transform(jaxseg.dice_loss, eps=1e-3)
    if kind == "deep_supervision":
        return jaxseg.deep_supervision(jaxseg.dice_ce, weights=(0.7, 0.3))
    return jaxseg.with_components(jaxseg.combine(dice=jaxseg.dice_loss, ce=jaxseg.cross_entropy))


@settings(max_examples=_examples("combinators", 1, 5))
@given(
    kind=st.sampled_from(COMBINATORS),
    seed=st.integers(0, 2**32 - 1),
    weights=st.tuples(st.floats(0, 4), st.floats(0, 4)),
    edge=st.sampled_from(("random", "empty", "confident_wrong", "extreme")),
)
def test_every_combinator_against_the_float64_reference(kind, seed, weights, edge):
    COUNTS["combinators"] += 1
    import references as ref

    s = F32_SCENARIOS["dice_loss"]
    logits, labels, _ = make_inputs(s, seed, edge, 1.0, "all")
    logits = np.clip(logits, -30, 30)  # float64 reference: no saturation at 1e4
    fn = _combinator(kind)
    dice, ce = ref.overlap_loss("dice", logits, labels), ref.cross_entropy(logits, labels)
    if kind == "combine":
        got, want = fn(logits, labels.tolist()), dice + ce
    elif kind == "evaluate":
        got = fn.evaluate(logits, labels, weights)
        want = weights[0] * dice + weights[1] * ce
    elif kind == "log_transform":
        got, want = fn(logits.tolist(), labels), -np.log(max(1 - dice, 1e-3))
    elif kind == "deep_supervision":
        low = logits[:, ::2, ::2]
        # Nearest-exact (pixel centres aligned): source index floor((2i + 1) n / 2m).
        rows, cols = (
            (2 * np.arange(m) + 1) * n // (2 * m)
            for n, m in zip(labels.shape[1:], low.shape[1:3], strict=True)
        )
        low_labels = labels[:, rows][:, :, cols]
        got = fn([logits, low], labels)
        want = 0.7 * (dice + ce) + 0.3 * (
            ref.overlap_loss("dice", low, low_labels) + ref.cross_entropy(low, low_labels)
        )
    else:
        got, parts = fn(logits, labels)
        np.testing.assert_allclose(parts["dice"], dice, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(parts["ce"], ce, rtol=1e-4, atol=1e-6)
        want = dice + ce
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=kind)


@settings(max_examples=_examples("eager", 1, 50))
@given(name=st.sampled_from(list(LOSSES)), seed=st.integers(0, 2**32 - 1))
def test_eager_mode_equals_jit(name, seed):
    COUNTS["eager"] += 1
    s = F32_SCENARIOS[name]
    logits, labels, where = make_inputs(s, seed, "random", 1.0, "half")
    fn = functools.partial(LOSSES[name], **s.opts)
    with jax.disable_jit():
        value, grad = jax.value_and_grad(fn)(logits, labels, where=where)
    want, want_grad = _jitted(s.loss, s.options)(logits, labels, where)
    np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6, err_msg=str(s))
    scale_g = max(float(np.max(np.abs(want_grad))), 1e-30)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-5 * scale_g, err_msg=str(s))


# --------------------------------------------------------------------------------------


def test_zz_example_count():
    """Runs last in this module: >= 10,000 examples when every property test ran."""
    total_expected = sum(EXPECTED.values())
    assert total_expected >= 10_000 or BASE < 500, EXPECTED
    if set(COUNTS) != set(EXPECTED):
        pytest.skip(f"only {sorted(COUNTS)} ran in this session")
    for name, expected in EXPECTED.items():
        assert COUNTS[name] >= expected, (name, COUNTS[name], expected)
    print(f"\nhypothesis examples run by test_properties.py: {sum(COUNTS.values())}")
    assert sum(COUNTS.values()) >= min(10_000, total_expected)
