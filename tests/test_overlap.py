"""Tests of jaxseg._overlap: Dice, IoU, Tversky and generalized Dice losses.

Oracles: MONAI 1.6 (values and gradients, channels-first float64 copies), MONAI's own
published test values, and the float64 NumPy references of ``references.py``. Each
family of parametrised cases is evaluated by one compiled program (``peers.family``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import peers
import pytest
import references as ref
from jax.test_util import check_grads
from peers import assert_close

import jaxseg

LOSSES = {
    "dice": jaxseg.dice_loss,
    "iou": jaxseg.iou_loss,
    "tversky": jaxseg.tversky_loss,
    "generalized_dice": jaxseg.generalized_dice_loss,
}


def reference(name, logits, labels, **options):
    if name == "generalized_dice":
        return ref.generalized_dice_loss(logits, labels, **options)
    return ref.overlap_loss(name, logits, labels, **options)


def make_labels(kind, ndim, classes, seed=1):
    if kind == "int":
        return ref.random_labels(ndim, classes, seed)
    if kind == "soft":
        return ref.soft_labels(ndim, classes, seed)
    if kind == "empty":  # class 2 absent from sample 0, class 1 from sample 1
        return ref.with_empty_classes(ref.random_labels(ndim, classes, seed), [(0, 2), (1, 1)])
    if kind == "sentinel":  # about a fifth of the pixels carry the ignore label 255
        labels = ref.random_labels(ndim, classes, seed)
        rng = np.random.default_rng(seed + 10)
        return np.where(rng.random(labels.shape) < 0.2, 255, labels).astype(np.int32)
    raise ValueError(kind)


def monai_activation(activation, classes, labels):
    flags = {"softmax": {"softmax": True}, "sigmoid": {"sigmoid": True}, None: {}}[activation]
    if ref.is_integer(labels) and classes > 1:
        flags = dict(flags, to_onehot_y=True)
    return flags


def monai_case(
    jaxseg_loss,
    monai_name,
    *,
    ndim,
    classes=3,
    labels="int",
    activation="softmax",
    jaxseg_options=None,
    monai_options=None,
    scale=1.0,
):
    """The jaxseg request, the MONAI call and the expected ratio of one parity case."""
    jaxseg_options = dict(jaxseg_options or {})
    monai_options = dict(monai_options or {})
    x = ref.random_logits(ndim, classes, seed=ndim)
    if activation is None:
        x = ref.softmax(x).astype(np.float32)
    y = make_labels(labels, ndim, classes)
    cotangent = None
    if jaxseg_options.get("reduction") == "none":
        name = {v: k for k, v in LOSSES.items()}[jaxseg_loss]
        shape = np.shape(reference(name, x, y, **jaxseg_options))
        cotangent = np.random.default_rng(7).uniform(0.5, 1.5, shape).astype(np.float32)
    if activation != "softmax":
        jaxseg_options["activation"] = activation
    monai = functools.partial(
        peers.monai,
        monai_name,
        x,
        y,
        cotangent=cotangent,
        **monai_activation(activation, classes, y),
        **monai_options,
    )
    return peers.Request(jaxseg_loss, x, y, jaxseg_options, cotangent), monai, scale


# name -> {case: (loss, MONAI class, spec)}; each family compiles as one program.
MONAI_FAMILIES = {}


@functools.cache
def monai_family(family):
    built = {
        case: monai_case(loss, name, **spec)
        for case, (loss, name, spec) in MONAI_FAMILIES[family].items()
    }
    results = peers.jaxseg_many([request for request, _, _ in built.values()])
    return {
        case: (monai, scale, result)
        for (case, (_, monai, scale)), result in zip(built.items(), results, strict=True)
    }


def check_monai(family, case):
    """Value and gradient of the jaxseg case equal ``scale`` times MONAI's."""
    monai, scale, (value, grad) = monai_family(family)[case]
    m_value, m_grad = monai()
    assert np.all(np.isfinite(grad))
    assert_close(value, scale * m_value.reshape(value.shape))
    assert_close(grad, scale * m_grad)


# ---------------------------------------------------------------------------------------
# MONAI parity: DiceLoss(softmax=True, to_onehot_y=True) and its options

DICE_CASES = {
    "1d": dict(ndim=1),
    "3d": dict(ndim=3),
    "squared": dict(ndim=2, jaxseg_options={"squared": True}, monai_options={"squared_pred": True}),
    "batch-no-background": dict(
        ndim=2,
        classes=4,
        jaxseg_options={"batch": True, "include_background": False},
        monai_options={"batch": True, "include_background": False},
    ),
    "smoothing-sum": dict(
        ndim=1,
        jaxseg_options={"smooth_nr": 0.5, "smooth_dr": 2.0, "reduction": "sum"},
        monai_options={"smooth_nr": 0.5, "smooth_dr": 2.0, "reduction": "sum"},
    ),
    "empty-classes-none": dict(
        ndim=2,
        labels="empty",
        jaxseg_options={"reduction": "none"},
        monai_options={"reduction": "none"},
    ),
    "ignore-in-range": dict(
        ndim=2, jaxseg_options={"ignore_index": 1}, monai_options={"ignore_index": 1}
    ),
    "ignore-sentinel-batch": dict(
        ndim=3,
        labels="sentinel",
        jaxseg_options={"ignore_index": 255, "batch": True},
        monai_options={"ignore_index": 255, "batch": True},
    ),
    "soft-label": dict(
        ndim=3,
        labels="soft",
        jaxseg_options={"soft_label": True},
        monai_options={"soft_label": True},
    ),
    "soft-label-squared": dict(
        ndim=1,
        labels="soft",
        jaxseg_options={"soft_label": True, "squared": True},
        monai_options={"soft_label": True, "squared_pred": True},
    ),
    "sigmoid-multichannel": dict(ndim=2, activation="sigmoid"),
    "sigmoid-binary-batch": dict(
        ndim=3,
        classes=1,
        activation="sigmoid",
        jaxseg_options={"batch": True},
        monai_options={"batch": True},
    ),
    "probabilities": dict(ndim=2, activation=None),
}


MONAI_FAMILIES["dice"] = {k: (jaxseg.dice_loss, "DiceLoss", v) for k, v in DICE_CASES.items()}


@pytest.mark.parametrize("case", list(DICE_CASES))
def test_dice_matches_monai(case):
    check_monai("dice", case)


def _jaccard_case(ndim, options, s=0.1):
    # MONAI's jaccard doubles numerator and denominator: smoothing s there is s/2 here.
    monai_options = {
        "squared_pred": options.get("squared", False),
        "batch": options.get("batch", False),
        "soft_label": options.get("soft_label", False),
    }
    return (
        jaxseg.jaccard_loss,
        "DiceLoss",
        dict(
            ndim=ndim,
            labels="soft" if options.get("soft_label") else "int",
            jaxseg_options=dict(options, smooth_nr=s / 2, smooth_dr=s / 2),
            monai_options=dict(monai_options, jaccard=True, smooth_nr=s, smooth_dr=s),
        ),
    )


MONAI_FAMILIES["jaccard"] = {
    "2d": _jaccard_case(2, {}),
    "3d-squared-batch-soft-label": _jaccard_case(
        3, {"squared": True, "batch": True, "soft_label": True}
    ),
}


@pytest.mark.parametrize("case", list(MONAI_FAMILIES["jaccard"]))
def test_iou_matches_monai_jaccard_with_half_smoothing(case):
    check_monai("jaccard", case)


def _weighted_case(reduction, include_background):
    weights = np.array([0.5, 2.0, 1.0, 3.0], np.float32)
    kept = weights if include_background else weights[1:]
    # MONAI's mean is mean(w L) over (batch, classes); jaxseg's is sum(w L) / sum(w).
    scale = len(kept) / kept.sum() if reduction == "mean" else 1.0
    return (
        jaxseg.dice_loss,
        "DiceLoss",
        dict(
            ndim=2,
            classes=4,
            scale=scale,
            jaxseg_options={
                "class_weights": weights,
                "reduction": reduction,
                "include_background": include_background,
            },
            monai_options={
                "weight": kept.tolist(),
                "reduction": reduction,
                "include_background": include_background,
            },
        ),
    )


MONAI_FAMILIES["weighted"] = {
    f"{reduction}-{'with' if background else 'no'}-background": _weighted_case(
        reduction, background
    )
    for reduction, background in [("none", True), ("sum", False), ("mean", False)]
}


@pytest.mark.parametrize("case", list(MONAI_FAMILIES["weighted"]))
def test_dice_class_weights_match_monai(case):
    check_monai("weighted", case)


TVERSKY_CASES = {
    "fp-light": dict(
        ndim=2,
        jaxseg_options={"alpha": 0.3, "beta": 0.7},
        monai_options={"alpha": 0.3, "beta": 0.7},
    ),
    "fp-heavy-batch": dict(
        ndim=3,
        jaxseg_options={"alpha": 0.8, "beta": 0.2, "batch": True},
        monai_options={"alpha": 0.8, "beta": 0.2, "batch": True},
    ),
    "ignore-sentinel": dict(
        ndim=1,
        labels="sentinel",
        jaxseg_options={"alpha": 0.4, "beta": 0.9, "ignore_index": 255},
        monai_options={"alpha": 0.4, "beta": 0.9, "ignore_index": 255},
    ),
    "ignore-in-range-none-sigmoid": dict(
        ndim=2,
        activation="sigmoid",
        jaxseg_options={"ignore_index": 0, "reduction": "none"},
        monai_options={"ignore_index": 0, "reduction": "none"},
    ),
    # smooth_nr > smooth_dr: indices above 1, negative losses (not clipped at 0).
    "smooth-nr-above-dr-none": dict(
        ndim=2,
        labels="empty",
        jaxseg_options={"smooth_nr": 20.0, "smooth_dr": 0.0, "reduction": "none"},
        monai_options={"smooth_nr": 20.0, "smooth_dr": 0.0, "reduction": "none"},
    ),
}


MONAI_FAMILIES["tversky"] = {
    k: (jaxseg.tversky_loss, "TverskyLoss", v) for k, v in TVERSKY_CASES.items()
}


@pytest.mark.parametrize("case", list(TVERSKY_CASES))
def test_tversky_matches_monai(case):
    check_monai("tversky", case)


GDL_CASES = {
    "square": dict(ndim=2),
    "simple-1d": dict(
        ndim=1, jaxseg_options={"weight_type": "simple"}, monai_options={"w_type": "simple"}
    ),
    "uniform-batch": dict(
        ndim=3,
        jaxseg_options={"weight_type": "uniform", "batch": True},
        monai_options={"w_type": "uniform", "batch": True},
    ),
    "empty-classes-none": dict(
        ndim=2,
        labels="empty",
        jaxseg_options={"reduction": "none"},
        monai_options={"reduction": "none"},
    ),
    "empty-classes-simple-batch": dict(
        ndim=2,
        labels="empty",
        jaxseg_options={"weight_type": "simple", "batch": True},
        monai_options={"w_type": "simple", "batch": True},
    ),
    "no-background-soft-label-sum": dict(
        ndim=3,
        classes=4,
        labels="soft",
        jaxseg_options={"include_background": False, "soft_label": True, "reduction": "sum"},
        monai_options={"include_background": False, "soft_label": True, "reduction": "sum"},
    ),
}


MONAI_FAMILIES["generalized_dice"] = {
    k: (jaxseg.generalized_dice_loss, "GeneralizedDiceLoss", v) for k, v in GDL_CASES.items()
}


@pytest.mark.parametrize("case", list(GDL_CASES))
def test_generalized_dice_matches_monai(case):
    check_monai("generalized_dice", case)


# MONAI's tests/losses/test_dice_loss.py (channels-first inputs, expected values), each
# also reproduced by the installed MONAI and, for the first, by hand:
# p = sigmoid([1, -1, -1, 1]), y = [1, 0, 1, 1]: tp = 2 s(1) + s(-1) = 1.7311,
# sum p = 2, sum y = 3, loss = 1 - 2 * 1.7311 / 5 = 0.307576.
_X1 = [[[[1.0, -1.0], [-1.0, 1.0]]]]
_Y1 = [[[[1, 0], [1, 1]]]]
_X2 = [[[[1.0, -1.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]]
_Y2 = [[[[1, 1], [1, 1]]], [[[1, 0], [1, 0]]]]
_X3 = [[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]
_Y3 = [[[0, 0, 1]], [[0, 1, 0]]]
_X4 = [[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
_Y4 = [[[1, 0, 0]], [[1, 1, 0]]]
MONAI_PUBLISHED = {
    "sigmoid": (
        jaxseg.dice_loss,
        _X1,
        _Y1,
        dict(activation="sigmoid", smooth_nr=1e-6, smooth_dr=1e-6),
        0.307576,
    ),
    "sigmoid-batch2": (
        jaxseg.dice_loss,
        _X2,
        _Y2,
        dict(activation="sigmoid", smooth_nr=1e-4, smooth_dr=1e-4),
        0.416657,
    ),
    "probabilities-no-background": (
        jaxseg.dice_loss,
        _X3,
        _Y3,
        dict(activation=None, include_background=False, smooth_nr=0.0, smooth_dr=0.0),
        0.0,
    ),
    "sigmoid-onehot": (
        jaxseg.dice_loss,
        _X4,
        _Y4,
        dict(activation="sigmoid", smooth_nr=1e-4, smooth_dr=1e-4),
        0.435050,
    ),
    "softmax-sum": (
        jaxseg.dice_loss,
        _X4,
        _Y4,
        dict(smooth_nr=1e-4, smooth_dr=1e-4, reduction="sum"),
        1.534853,
    ),
    "squared": (jaxseg.dice_loss, _X1, _Y1, dict(activation="sigmoid", squared=True), 0.178337),
    "jaccard": (
        jaxseg.iou_loss,
        _X1,
        _Y1,
        dict(activation="sigmoid", smooth_nr=5e-7, smooth_dr=5e-7),
        0.470451,
    ),
}


@pytest.mark.parametrize("case", list(MONAI_PUBLISHED), ids=list(MONAI_PUBLISHED))
def test_monai_published_values(case):
    loss, x, y, options, expected = MONAI_PUBLISHED[case]
    x = peers.channels_last(np.asarray(x, np.float32))
    y = np.asarray(y, np.int32)[:, 0]
    assert_close(loss(x, y, **options), expected)


def test_hand_computed_values():
    # Zero logits with two classes: p = 1/2 everywhere; labels [0, 0, 1, 1].
    x = np.zeros((1, 4, 2), np.float32)
    y = np.array([[0, 0, 1, 1]])
    # Each class: tp = 1, fp = 1, fn = 1: Dice 2/4, IoU 1/3, Tversky(0.3, 0.7) 1/2.
    zero = dict(smooth_nr=0.0, smooth_dr=0.0)
    assert_close(jaxseg.dice_loss(x, y, **zero), 0.5)
    assert_close(jaxseg.iou_loss(x, y, **zero), 2 / 3)
    assert_close(jaxseg.tversky_loss(x, y, alpha=0.3, beta=0.7, gamma=2.0, **zero), 0.25)
    # Generalized Dice, T = 2 for both classes: the weights cancel.
    assert_close(jaxseg.generalized_dice_loss(x, y, **zero), 0.5)
    # A perfect prediction of an empty class with zero smoothing scores 1 (loss 0), no NaN.
    probs = np.array([[[1.0, 0.0], [1.0, 0.0]]], np.float32)
    labels = np.array([[0, 0]])
    assert_close(
        jaxseg.dice_loss(probs, labels, activation=None, reduction="none", **zero), [[0.0, 0.0]]
    )
    # smooth_nr > smooth_dr lifts the index above 1: class 0 (tp = 2) gives
    # 1 - (2 + 1) / (2 + 0.5) = -0.2, empty class 1 gives 1 - 1 / 0.5 = -1 (as MONAI).
    lifted = dict(activation=None, smooth_nr=1.0, smooth_dr=0.5, reduction="none")
    assert_close(jaxseg.tversky_loss(probs, labels, **lifted), [[-0.2, -1.0]])


# ---------------------------------------------------------------------------------------
# Float64 NumPy references: options MONAI does not have, and every reduction

REFERENCE_CASES = {
    "dice-where": ("dice", 2, "int", dict(where=True)),
    "dice-where-ignore-batch": (
        "dice",
        3,
        "sentinel",
        dict(where=True, ignore_index=255, batch=True),
    ),
    "dice-weights-no-background": (
        "dice",
        1,
        "int",
        dict(class_weights=np.array([1.0, 0.0, 2.5]), include_background=False),
    ),
    "iou-squared-none": ("iou", 2, "int", dict(squared=True, reduction="none")),
    "iou-sigmoid-sum": ("iou", 3, "int", dict(activation="sigmoid", reduction="sum")),
    "tversky-gamma": ("tversky", 2, "int", dict(alpha=0.7, beta=0.3, gamma=0.75)),
    "tversky-gamma2-soft": ("tversky", 1, "soft", dict(gamma=2.0, soft_label=True)),
    "tversky-probabilities": ("tversky", 2, "int", dict(activation=None, alpha=0.2, beta=1.5)),
    "gdl-class-weights": (
        "generalized_dice",
        2,
        "empty",
        dict(class_weights=np.array([0.2, 1.0, 3.0])),
    ),
    "gdl-where-ignore-none": (
        "generalized_dice",
        3,
        "sentinel",
        dict(where=True, ignore_index=255, reduction="none"),
    ),
    "gdl-sigmoid-soft": (
        "generalized_dice",
        1,
        "soft",
        dict(activation="sigmoid", soft_label=True, weight_type="simple"),
    ),
    # An index above 1 (a negative loss) where fp + fn < smooth_nr.
    "dice-smooth-nr-above-dr": (
        "dice",
        2,
        "empty",
        dict(smooth_nr=20.0, smooth_dr=0.0, reduction="none"),
    ),
    "tversky-smooth-nr-above-dr": (
        "tversky",
        2,
        "empty",
        dict(smooth_nr=20.0, smooth_dr=0.0, reduction="none"),
    ),
}


@peers.family
def reference_family():
    built = {}
    for case, (name, ndim, labels, options) in REFERENCE_CASES.items():
        options = dict(options)
        x = ref.random_logits(ndim, 3, seed=ndim + 3)
        if options.get("activation", "softmax") is None:
            x = ref.softmax(x).astype(np.float32)
        y = make_labels(labels, ndim, 3)
        if options.pop("where", False):
            options["where"] = np.random.default_rng(5).random(ref.SHAPES[ndim]) < 0.7
        expected = reference(name, x, y, **options)
        cotangent = np.ones(np.shape(expected), np.float32) if np.ndim(expected) else None
        built[case] = (peers.Request(LOSSES[name], x, y, options, cotangent), expected)
    return built


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_matches_float64_reference(case):
    expected, (value, grad) = reference_family()[case]
    assert np.all(np.isfinite(grad))
    assert_close(value, expected)


@pytest.mark.parametrize(
    "name, options",
    [
        ("dice", {"squared": True, "batch": True, "include_background": False}),
        ("iou", {"soft_label": True, "empty": "exclude", "smooth_nr": 0.0, "smooth_dr": 0.0}),
        ("tversky", {"alpha": 0.3, "beta": 0.7, "gamma": 0.75}),
    ],
    ids=["dice-squared-batch", "iou-soft-exclude", "focal-tversky"],
)
def test_check_grads_float64(name, options):
    x = ref.random_logits(1, 3, seed=11).astype(np.float64)
    y = make_labels("soft" if options.get("soft_label") else "empty", 1, 3)
    if options.get("soft_label"):
        y[0, ..., 2] = 0  # an empty class, for the exclude policy
    with jax.enable_x64(True):
        y = jnp.asarray(y, jnp.int32 if ref.is_integer(y) else jnp.float64)
        fn = jax.jit(lambda logits: LOSSES[name](logits, y, **options))
        assert fn(jnp.asarray(x)).dtype == jnp.float64
        check_grads(fn, (jnp.asarray(x),), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Masking equals slicing, jit equals eager, vmap equals a loop


MASKED_CASES = {
    "dice-where": ("dice", "where", {}),
    "dice-ignore-batch-squared": ("dice", "ignore_index", {"batch": True, "squared": True}),
    "tversky-where-no-background": (
        "tversky",
        "where",
        {"alpha": 0.2, "beta": 0.8, "include_background": False},
    ),
    "gdl-ignore-none": ("generalized_dice", "ignore_index", {"reduction": "none"}),
}


@peers.family
def masked_family():
    # Excluding the last two columns must equal cutting them away.
    x = ref.random_logits(2, 3, seed=21)
    y = ref.random_labels(2, 3, seed=22)
    where = np.ones(y.shape, bool)
    where[..., -2:] = False
    y_ignored = np.where(where, y, -100).astype(np.int32)
    x_sliced, y_sliced = x[..., :-2, :], y[..., :-2]
    built = {}
    for case, (name, mask, options) in MASKED_CASES.items():
        expected = reference(name, x_sliced, y_sliced, **options)
        ones = np.ones(np.shape(expected), np.float32) if np.ndim(expected) else None
        if mask == "where":
            masked = peers.Request(LOSSES[name], x, y, dict(options, where=where), ones)
        else:
            masked = peers.Request(
                LOSSES[name], x, y_ignored, dict(options, ignore_index=-100), ones
            )
        built[case, "masked"] = (masked, (expected, where))
        built[case, "sliced"] = (
            peers.Request(LOSSES[name], x_sliced, y_sliced, options, ones),
            None,
        )
    return built


@pytest.mark.parametrize("case", list(MASKED_CASES))
def test_masked_equals_sliced(case):
    peers.assert_masked_equals_sliced(
        masked_family()[case, "masked"], masked_family()[case, "sliced"]
    )


def test_jit_equals_eager():
    # Op-by-op execution compiles every primitive: one forward pass keeps it affordable
    # (test_pixel.py compares an eager gradient).
    options = {"ignore_index": 0}
    x = ref.random_logits(1, 3, seed=31)
    y = make_labels("empty", 1, 3, seed=32)
    loss = functools.partial(jaxseg.dice_loss, **options)
    jitted = jax.jit(loss)(x, y)
    with jax.disable_jit():
        eager = loss(x, y)
    assert_close(jitted, eager)
    assert_close(jitted, reference("dice", x, y, **options))


@pytest.mark.parametrize(
    "name, options",
    [
        ("dice", {"reduction": "none"}),
        ("generalized_dice", {"batch": True}),
        ("iou", {"empty": "complement", "activation": "sigmoid"}),
    ],
)
def test_vmap_over_a_leading_axis_equals_a_loop(name, options):
    classes = 1 if options.get("empty") == "complement" else 3
    xs = np.stack([ref.random_logits(2, classes, seed=s) for s in range(3)])
    ys = np.stack([ref.random_labels(2, classes, seed=10 + s) for s in range(3)])
    ys[1, 0] = 0  # an empty sample for the complement policy
    loss = peers.jit(functools.partial(LOSSES[name], **options))
    mapped = jax.vmap(loss)(xs, ys)
    looped = np.stack([loss(x, y) for x, y in zip(xs, ys, strict=True)])
    assert_close(mapped, looped)
    for x, y, value in zip(xs, ys, mapped, strict=True):
        assert_close(value, reference(name, x, y, **options))


@pytest.mark.parametrize(
    "name, options",
    [
        ("dice", {"empty": "exclude"}),
        ("generalized_dice", {"batch": True}),
    ],
)
def test_axis_name_makes_the_loss_global(name, options):
    # vmap with an axis name stands for shard_map/pmap: two shards of two samples each.
    x = ref.random_logits(2, 3, seed=35, shape=(4, 5, 6))
    y = ref.with_empty_classes(ref.random_labels(2, 3, seed=36, shape=(4, 5, 6)), [(3, 1)])
    shards = lambda a: a.reshape(2, 2, *a.shape[1:])
    loss = functools.partial(LOSSES[name], axis_name="shards", **options)
    values, grads = peers.jit(jax.vmap(jax.value_and_grad(loss), axis_name="shards"))(
        shards(x), shards(y)
    )
    whole_value, whole_grad = peers.jaxseg_value_and_grad(LOSSES[name], x, y, **options)
    assert_close(values, np.full(2, whole_value))
    assert_close(values[0], reference(name, x, y, **options))
    # Each shard's gradient is the number of shards times its part of the global one:
    # averaging parameter gradients with pmean gives the global gradient.
    assert_close(np.asarray(grads).reshape(x.shape), 2 * whole_grad)


# ---------------------------------------------------------------------------------------
# Empty-class policies


def test_exclude_policy_drops_empty_classes_without_nan():
    x = ref.random_logits(2, 3, seed=41)
    y = make_labels("empty", 2, 3)
    present = np.ones((2, 3), bool)
    present[0, 2] = present[1, 1] = False
    zero = dict(smooth_nr=0.0, smooth_dr=0.0)
    (value, grad), (none, grad_excluded) = peers.jaxseg_many(
        [
            (jaxseg.dice_loss, x, y, dict(empty="exclude", **zero)),
            (
                jaxseg.dice_loss,
                x,
                y,
                dict(empty="exclude", reduction="none", **zero),
                (~present).astype(np.float32),
            ),
        ]
    )
    # The mean over the four present (sample, class) entries only.
    assert np.all(np.isfinite(grad))
    assert_close(value, ref.overlap_loss("dice", x, y, empty="exclude", **zero))
    per_entry = ref.overlap_loss("dice", x, y, reduction="none", **zero)
    assert_close(value, per_entry[present].mean())
    # Excluded entries contribute exactly zero, to the value and to the gradient.
    assert none[~present].tolist() == [0.0, 0.0]
    assert_close(none[present], per_entry[present])
    assert np.all(grad_excluded == 0)


def test_smooth_policy_on_empty_class_follows_the_smoothing_terms():
    # Empty label and empty prediction: loss 0; a false positive: about 1, tiny gradient.
    probs = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]], np.float32)
    y = np.array([[0, 0], [0, 0]])
    cotangent = np.array([[0.0, 0.0], [0.0, 1.0]], np.float32)
    none, grad = peers.jaxseg_value_and_grad(
        jaxseg.dice_loss, probs, y, cotangent=cotangent, activation=None, reduction="none"
    )
    assert_close(none[:, 1], [0.0, 1 - 1e-5 / (1.0 + 1e-5)])
    # d/dp of 1 - s / (sum p + s) is s / (sum p + s)^2, about 1e-5 here.
    assert_close(grad[1, :, 1], [1e-5, 1e-5], rtol=1e-3)


@peers.family
def complement_family():
    # One sigmoid channel; sample 1 has an empty label.
    x = ref.random_logits(2, 1, seed=51)
    y = ref.random_labels(2, 1, seed=52)
    y[1] = 0
    options = dict(activation="sigmoid", empty="complement", reduction="none")
    cotangent = np.array([[0.0], [1.0]], np.float32)
    return {
        name: (
            peers.Request(LOSSES[name], x, y, options, cotangent),
            (x, ref.overlap_loss(name, x, y, **options)),
        )
        for name in ("dice", "iou", "tversky")
    }


@pytest.mark.parametrize("name", ["dice", "iou", "tversky"])
def test_complement_policy_scores_the_complement_of_empty_labels(name):
    (x, expected), (value, grad) = complement_family()[name]
    assert_close(value, expected)
    # By hand: the score of (1 - p) against the all-ones complement of the empty label.
    p = ref.sigmoid(x[1, ..., 0])
    tp, fn = (1 - p).sum(), p.sum()
    by_hand = {
        "dice": 1 - (2 * tp + 1e-5) / (2 * tp + fn + 1e-5),
        "iou": 1 - (tp + 1e-5) / (tp + fn + 1e-5),
        "tversky": 1 - (tp + 1e-5) / (tp + 0.5 * fn + 1e-5),
    }[name]
    assert_close(value[1, 0], by_hand)
    # A false positive on an empty label keeps a gradient that pushes p down.
    assert np.all(grad[1] > 0) and np.all(grad[0] == 0)


def test_complement_policy_with_batch_statistics():
    x = ref.random_logits(2, 1, seed=53)
    y = np.zeros(ref.SHAPES[2], np.int32)  # empty over the whole batch
    options = dict(activation="sigmoid", empty="complement", batch=True, reduction="none")
    assert_close(jaxseg.dice_loss(x, y, **options), ref.overlap_loss("dice", x, y, **options))


# ---------------------------------------------------------------------------------------
# Extreme inputs, dtypes, and fully excluded batches

EXTREME_CASES = [
    ("dice", {}),
    ("dice", {"activation": "sigmoid", "squared": True}),
    ("dice", {"empty": "exclude", "smooth_nr": 0.0, "smooth_dr": 0.0}),
    ("iou", {"batch": True, "empty": "complement"}),
    ("tversky", {"gamma": 0.5}),
    ("generalized_dice", {}),
    ("generalized_dice", {"weight_type": "simple", "activation": "sigmoid"}),
]


@peers.family
def extreme_family():
    x = np.sign(ref.random_logits(2, 3, seed=61)) * np.float32(1e4)
    y = make_labels("empty", 2, 3)
    return {
        i: (peers.Request(LOSSES[name], x, y, options), reference(name, x, y, **options))
        for i, (name, options) in enumerate(EXTREME_CASES)
    }


@pytest.mark.parametrize(
    "case", range(len(EXTREME_CASES)), ids=[f"{n}-{'-'.join(o)}" for n, o in EXTREME_CASES]
)
def test_saturated_logits_give_finite_values_and_gradients(case):
    expected, (value, grad) = extreme_family()[case]
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # Saturated probabilities are exactly 0 or 1: the reference is exact there.
    assert_close(value, expected, atol=1e-5)


@pytest.mark.parametrize("name, dtype", [("dice", jnp.bfloat16), ("generalized_dice", jnp.float16)])
def test_half_precision_logits_give_float32_results(name, dtype):
    x = ref.random_logits(3, 3, seed=71)
    y = ref.random_labels(3, 3, seed=72)
    low = jnp.asarray(x, dtype)
    value = LOSSES[name](low, y)
    grad = peers.jit(jax.grad(LOSSES[name]))(low, y)
    assert value.dtype == jnp.float32 and grad.dtype == dtype
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    # The only rounding is that of the logits themselves.
    assert_close(value, reference(name, np.asarray(low, np.float32), y))
    assert_close(value, reference(name, x, y), rtol=2e-2)


EXCLUDED_CASES = [
    ("dice", "where"),
    ("iou", "ignore_index"),
    ("tversky", "where"),
    ("generalized_dice", "ignore_index"),
]


@peers.family
def excluded_family():
    x = ref.random_logits(1, 3, seed=81)
    y = ref.random_labels(1, 3, seed=82)
    built = {}
    for name, how in EXCLUDED_CASES:
        if how == "where":
            request = peers.Request(LOSSES[name], x, y, {"where": np.zeros(y.shape, bool)})
        else:
            request = peers.Request(LOSSES[name], x, np.full_like(y, 2), {"ignore_index": 2})
        built[name, how] = (request, None)
    return built


@pytest.mark.parametrize("name, how", EXCLUDED_CASES)
def test_all_excluded_batch_is_finite_with_zero_gradient(name, how):
    _, (value, grad) = excluded_family()[name, how]
    assert value == 0.0
    assert np.all(grad == 0)


@pytest.mark.parametrize(
    "name, options, shape",
    [
        ("dice", {"batch": True}, (3,)),
        ("tversky", {"batch": True, "include_background": False}, (2,)),
        ("generalized_dice", {}, (2,)),
        ("generalized_dice", {"batch": True}, ()),
    ],
)
def test_reduction_none_shapes(name, options, shape):
    x = ref.random_logits(2, 3, seed=91)
    y = ref.random_labels(2, 3, seed=92)
    none = LOSSES[name](x, y, reduction="none", **options)
    assert none.shape == shape and none.dtype == jnp.float32
    assert_close(none, reference(name, x, y, reduction="none", **options))
