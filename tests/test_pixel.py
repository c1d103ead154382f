"""Tests of jaxseg._pixel: cross-entropy and focal loss, softmax and sigmoid.

Oracles: ``torch.nn.functional`` (cross-entropy, binary cross-entropy with logits),
MONAI 1.6 ``FocalLoss``, optax, and the float64 NumPy references of ``references.py``.
Each family of parametrised cases is evaluated by one compiled program
(:func:`peers.family`).
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

LOSSES = {"cross_entropy": jaxseg.cross_entropy, "focal": jaxseg.focal_loss}
REFERENCES = {"cross_entropy": ref.cross_entropy, "focal": ref.focal_loss}


def sentinel_labels(ndim, classes, seed=1, ignore=255):
    """Random labels with about a fifth of the pixels set to ``ignore``."""
    labels = ref.random_labels(ndim, classes, seed)
    rng = np.random.default_rng(seed + 10)
    return np.where(rng.random(labels.shape) < 0.2, ignore, labels).astype(np.int32)


def make_labels(kind, ndim, classes=3):
    if kind == "sentinel":
        return sentinel_labels(ndim, classes)
    if kind == "soft":
        return ref.soft_labels(ndim, classes)
    return ref.random_labels(ndim, classes)


def random_cotangent(shape, seed=7):
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(np.float32)


def as_arrays(options):
    """Lists in option specs become float32 arrays (traced arguments)."""
    return {k: np.asarray(v, np.float32) if isinstance(v, list) else v for k, v in options.items()}


def check_peer(results, case, scale=1.0):
    """The jaxseg value and gradient of ``case`` equal ``scale`` times the peer's."""
    peer, (value, grad) = results()[case]
    p_value, p_grad = peer()
    assert np.all(np.isfinite(grad))
    assert_close(value, scale * p_value)
    assert_close(grad, scale * p_grad)


# ---------------------------------------------------------------------------------------
# Softmax cross-entropy: torch.nn.functional.cross_entropy and optax

TORCH_CE_CASES = {
    "1d": dict(ndim=1),
    "3d-weight-ignore": dict(
        ndim=3, labels="sentinel", options={"class_weights": [0.3, 1.0, 2.0], "ignore_index": 255}
    ),
    "2d-smoothing-weight": dict(
        ndim=2, options={"label_smoothing": 0.1, "class_weights": [2.0, 0.5, 1.0]}
    ),
    "2d-none-smoothing-ignore-in-range": dict(
        ndim=2, options={"reduction": "none", "label_smoothing": 0.2, "ignore_index": 1}
    ),
    "2d-sum-weight-ignore": dict(
        ndim=2,
        labels="sentinel",
        options={"reduction": "sum", "class_weights": [1.0, 3.0, 0.2], "ignore_index": 255},
    ),
    "3d-soft-labels-smoothing": dict(ndim=3, labels="soft", options={"label_smoothing": 0.05}),
    "1d-soft-labels-none": dict(ndim=1, labels="soft", options={"reduction": "none"}),
}


@peers.family
def torch_ce_family():
    built = {}
    for case, spec in TORCH_CE_CASES.items():
        ndim, options = spec["ndim"], as_arrays(spec.get("options", {}))
        x = ref.random_logits(ndim, 3, seed=ndim)
        y = make_labels(spec.get("labels", "int"), ndim)
        reduction = options.get("reduction", "mean")
        cotangent = random_cotangent(ref.SHAPES[ndim]) if reduction == "none" else None
        peer = functools.partial(
            peers.torch_cross_entropy,
            x,
            y,
            cotangent=cotangent,
            weight=options.get("class_weights"),
            reduction=reduction,
            label_smoothing=options.get("label_smoothing", 0.0),
            ignore_index=options.get("ignore_index", -100),
        )
        built[case] = (peers.Request(jaxseg.cross_entropy, x, y, options, cotangent), peer)
    return built


@pytest.mark.parametrize("case", list(TORCH_CE_CASES))
def test_softmax_cross_entropy_matches_torch(case):
    check_peer(torch_ce_family, case)


def test_cross_entropy_hand_computed():
    # The docstring example: -log softmax(2, 0)_0 = log(1 + e^-2), -log softmax(0, 2)_0 =
    # log(1 + e^2).
    x = np.array([[[2.0, 0.0], [0.0, 2.0]]], np.float32)
    y = np.array([[0, 0]])
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(2.0))) / 2
    assert_close(jaxseg.cross_entropy(x, y), expected)
    # Class weights (3, 1): both pixels are class 0, so the weighted mean is unchanged.
    assert_close(jaxseg.cross_entropy(x, y, class_weights=np.array([3.0, 1.0])), expected)


# ---------------------------------------------------------------------------------------
# Binary cross-entropy: torch binary_cross_entropy_with_logits

BCE_CASES = {
    "multilabel-pos-weight-weight": dict(
        ndim=2, classes=3, options={"pos_weight": [2.0, 0.5, 1.0], "class_weights": [1.0, 0.2, 3.0]}
    ),
    "binary-scalar-pos-weight-none": dict(
        ndim=3, classes=1, options={"pos_weight": 3.0, "reduction": "none"}
    ),
    "onehot-sum": dict(ndim=1, classes=3, options={"reduction": "sum"}),
}


@peers.family
def bce_family():
    built = {}
    for case, spec in BCE_CASES.items():
        ndim, classes, options = spec["ndim"], spec["classes"], as_arrays(spec["options"])
        if "pos_weight" in options:
            options["pos_weight"] = np.asarray(options["pos_weight"], np.float32)
        x = ref.random_logits(ndim, classes, seed=ndim + 1)
        y = ref.random_labels(ndim, classes, seed=5)
        if case.startswith("multilabel"):  # independent 0/1 channels, as dense labels
            y = (np.random.default_rng(6).random(x.shape) < 0.4).astype(np.float32)
        reduction = options.get("reduction", "mean")
        cotangent = random_cotangent(x.shape) if reduction == "none" else None
        peer = functools.partial(
            peers.torch_bce_with_logits,
            x,
            ref.dense_labels(y, classes, "sigmoid"),
            cotangent=cotangent,
            weight=options.get("class_weights"),
            pos_weight=options.get("pos_weight"),
            reduction=reduction,
        )
        request = peers.Request(
            jaxseg.cross_entropy, x, y, dict(options, activation="sigmoid"), cotangent
        )
        built[case] = (request, peer)
    return built


@pytest.mark.parametrize("case", list(BCE_CASES))
def test_sigmoid_cross_entropy_matches_torch(case):
    check_peer(bce_family, case)


# ---------------------------------------------------------------------------------------
# optax: softmax CE with integer labels, sigmoid BCE, sigmoid focal


@peers.family
def optax_family():
    x3, y3 = ref.random_logits(2, 4, seed=3), ref.random_labels(2, 4, seed=4)
    x1, y1 = ref.random_logits(1, 1, seed=8), ref.random_labels(1, 1, seed=9)
    xs, ys = ref.random_logits(1, 3, seed=8), ref.soft_labels(1, 3)
    xf, yf = ref.random_logits(2, 3, seed=12), ref.random_labels(2, 3, seed=13)
    yf_soft = ref.soft_labels(2, 3, seed=13)
    dense = lambda y, c: ref.dense_labels(y, c, "sigmoid").astype(np.float32)
    focal = {"alpha": 0.25, "gamma": 2.0}
    cases = {
        "softmax-ce": (
            jaxseg.cross_entropy,
            x3,
            y3,
            {},
            ("softmax_cross_entropy_with_integer_labels", y3, {}),
        ),
        "sigmoid-bce-binary": (
            jaxseg.cross_entropy,
            x1,
            y1,
            {"activation": "sigmoid"},
            ("sigmoid_binary_cross_entropy", dense(y1, 1), {}),
        ),
        "sigmoid-bce-soft": (
            jaxseg.cross_entropy,
            xs,
            ys,
            {"activation": "sigmoid"},
            ("sigmoid_binary_cross_entropy", ys, {}),
        ),
        "sigmoid-focal": (
            jaxseg.focal_loss,
            xf,
            yf,
            dict(focal, activation="sigmoid"),
            ("sigmoid_focal_loss", dense(yf, 3), focal),
        ),
        "sigmoid-focal-soft": (
            jaxseg.focal_loss,
            xf,
            yf_soft,
            dict(focal, activation="sigmoid"),
            ("sigmoid_focal_loss", yf_soft, focal),
        ),
    }
    return {
        case: (
            peers.Request(loss, x, y, options),
            functools.partial(peers.optax_value_and_grad, name, x, targets, **peer_options),
        )
        for case, (loss, x, y, options, (name, targets, peer_options)) in cases.items()
    }


@pytest.mark.parametrize(
    "case",
    ["softmax-ce", "sigmoid-bce-binary", "sigmoid-bce-soft", "sigmoid-focal", "sigmoid-focal-soft"],
)
def test_matches_optax_mean(case):
    check_peer(optax_family, case)


# ---------------------------------------------------------------------------------------
# Focal loss: MONAI FocalLoss

MONAI_FOCAL_CASES = {
    "sigmoid-2d": dict(ndim=2, activation="sigmoid"),
    "sigmoid-alpha-gamma-3d": dict(
        ndim=3, activation="sigmoid", options={"alpha": 0.25, "gamma": 1.5}
    ),
    "sigmoid-binary-gamma-half-1d": dict(
        ndim=1, classes=1, activation="sigmoid", options={"gamma": 0.5, "alpha": 0.7}
    ),
    "sigmoid-ignore-none": dict(
        ndim=2,
        activation="sigmoid",
        labels="sentinel",
        options={"ignore_index": 255, "reduction": "none"},
    ),
    # MONAI's mean also divides by the class count: jaxseg's softmax mean is C times it.
    "softmax-3d": dict(ndim=3, scale=3.0),
    "softmax-alpha-scalar": dict(ndim=2, options={"alpha": 0.3, "gamma": 3.0}, scale=3.0),
    "softmax-alpha-per-class-1d": dict(ndim=1, options={"alpha": [0.2, 0.5, 0.3]}, scale=3.0),
    "softmax-ignore-none": dict(
        ndim=2, labels="sentinel", options={"ignore_index": 255, "reduction": "none"}
    ),
    "softmax-weights-none": dict(
        ndim=2, options={"class_weights": [0.5, 2.0, 1.0], "reduction": "none"}
    ),
}


def _monai_focal(x, y, cotangent, activation, **monai_options):
    """MONAI's FocalLoss, its "none" output brought to jaxseg's layout."""
    value, grad = peers.monai("FocalLoss", x, y, cotangent=cotangent, **monai_options)
    if monai_options["reduction"] == "none":
        value = peers.channels_last(value)
        if activation == "softmax":  # MONAI keeps the class axis: sum over it
            value = value.sum(-1)
    return value, grad


@peers.family
def monai_focal_family():
    built = {}
    for case, spec in MONAI_FOCAL_CASES.items():
        ndim, classes = spec["ndim"], spec.get("classes", 3)
        activation = spec.get("activation", "softmax")
        raw = spec.get("options", {})
        x = ref.random_logits(ndim, classes, seed=ndim + 2)
        y = make_labels(spec.get("labels", "int"), ndim, classes)
        monai_options = {
            "gamma": raw.get("gamma", 2.0),
            "reduction": raw.get("reduction", "mean"),
            "use_softmax": activation == "softmax",
            "to_onehot_y": classes > 1,
        }
        for key, monai_key in (
            ("alpha", "alpha"),
            ("ignore_index", "ignore_index"),
            ("class_weights", "weight"),
        ):
            if key in raw:
                monai_options[monai_key] = raw[key]
        cotangent = m_cotangent = None
        if monai_options["reduction"] == "none":
            cotangent = random_cotangent(x.shape if activation == "sigmoid" else x.shape[:-1])
            m_cotangent = (
                peers.channels_first(cotangent) if activation == "sigmoid" else cotangent[:, None]
            )
        options = dict(as_arrays(raw), activation=activation)
        peer = functools.partial(_monai_focal, x, y, m_cotangent, activation, **monai_options)
        built[case] = (peers.Request(jaxseg.focal_loss, x, y, options, cotangent), peer)
    return built


@pytest.mark.parametrize("case", list(MONAI_FOCAL_CASES))
def test_focal_loss_matches_monai(case):
    check_peer(monai_focal_family, case, scale=MONAI_FOCAL_CASES[case].get("scale", 1.0))


def test_focal_loss_hand_computed():
    # One pixel, logit 0, label 1: p_t = 1/2, loss = (1/2)^2 log 2 (the docstring example).
    x = np.zeros((1, 1, 1), np.float32)
    y = np.ones((1, 1), np.int32)
    assert_close(jaxseg.focal_loss(x, y, activation="sigmoid"), 0.25 * np.log(2))
    assert_close(jaxseg.focal_loss(x, y, activation="sigmoid", alpha=0.8), 0.2 * np.log(2))
    # Softmax over two classes with equal logits: same p_t = 1/2; alpha=0.8 -> 0.8 for class 1.
    x2 = np.zeros((1, 1, 2), np.float32)
    assert_close(jaxseg.focal_loss(x2, y, alpha=0.8), 0.2 * np.log(2))


# ---------------------------------------------------------------------------------------
# Siblings: focal with gamma = 0 is cross-entropy


@peers.family
def gamma_zero_family():
    x = ref.random_logits(2, 3, seed=14)
    y = ref.random_labels(2, 3, seed=15)
    weights = np.array([1.0, 2.0, 0.5], np.float32)
    built = {}
    for activation in ("softmax", "sigmoid"):
        options = dict(activation=activation, class_weights=weights)
        if activation == "softmax":
            peer = functools.partial(peers.torch_cross_entropy, x, y, weight=weights)
        else:
            peer = functools.partial(
                peers.torch_bce_with_logits, x, ref.dense_labels(y, 3, "sigmoid"), weight=weights
            )
        built[activation, "focal"] = (
            peers.Request(jaxseg.focal_loss, x, y, dict(options, gamma=0.0)),
            peer,
        )
        built[activation, "ce"] = (peers.Request(jaxseg.cross_entropy, x, y, options), peer)
    return built


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_focal_with_gamma_zero_is_cross_entropy(activation):
    peer, (focal, focal_grad) = gamma_zero_family()[activation, "focal"]
    _, (ce, ce_grad) = gamma_zero_family()[activation, "ce"]
    assert_close(focal, ce)
    assert_close(focal_grad, ce_grad)
    t_value, t_grad = peer()
    assert_close(focal, t_value)
    assert_close(focal_grad, t_grad)


# ---------------------------------------------------------------------------------------
# Float64 NumPy references

REFERENCE_CASES = {
    "ce-sigmoid-smoothing-where": (
        "cross_entropy",
        2,
        "int",
        dict(activation="sigmoid", label_smoothing=0.2, where=True),
    ),
    "ce-softmax-where-weights-sum": (
        "cross_entropy",
        3,
        "sentinel",
        dict(where=True, ignore_index=255, class_weights=[1.0, 0.0, 2.0], reduction="sum"),
    ),
    "ce-softmax-soft-weights": ("cross_entropy", 1, "soft", dict(class_weights=[0.5, 1.0, 2.0])),
    "focal-sigmoid-soft": ("focal", 2, "soft", dict(activation="sigmoid", gamma=1.5, alpha=0.4)),
    "focal-sigmoid-alpha-per-class": (
        "focal",
        1,
        "int",
        dict(activation="sigmoid", alpha=[0.1, 0.5, 0.9]),
    ),
    "focal-softmax-soft-where": ("focal", 3, "soft", dict(gamma=0.5, where=True)),
    "focal-softmax-weights-alpha-none": (
        "focal",
        2,
        "sentinel",
        dict(ignore_index=255, alpha=0.25, class_weights=[2.0, 1.0, 0.5], reduction="none"),
    ),
}


@peers.family
def reference_family():
    built = {}
    for case, (name, ndim, labels, options) in REFERENCE_CASES.items():
        options = as_arrays(options)
        x = ref.random_logits(ndim, 3, seed=ndim + 20)
        y = make_labels(labels, ndim)
        if options.pop("where", False):
            options["where"] = np.random.default_rng(5).random(ref.SHAPES[ndim]) < 0.7
        expected = REFERENCES[name](x, y, **options)
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
        ("cross_entropy", {"class_weights": (0.5, 2.0, 1.0), "label_smoothing": 0.1}),
        ("focal", {"alpha": (0.2, 0.3, 0.5), "gamma": 2.0}),
        ("focal", {"activation": "sigmoid", "gamma": 0.5, "alpha": 0.25}),
    ],
    ids=["ce-softmax-weights-smoothing", "focal-softmax", "focal-sigmoid-gamma-half"],
)
def test_check_grads_float64(name, options):
    options = {k: np.asarray(v) if isinstance(v, tuple) else v for k, v in options.items()}
    x = ref.random_logits(1, 3, seed=16).astype(np.float64)
    y = ref.random_labels(1, 3, seed=17)
    with jax.enable_x64(True):
        fn = jax.jit(lambda logits: LOSSES[name](logits, jnp.asarray(y), **options))
        assert fn(jnp.asarray(x)).dtype == jnp.float64
        check_grads(fn, (jnp.asarray(x),), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Masking equals slicing, jit equals eager, vmap equals a loop, axis_name

MASKED_CASES = {
    "ce-where-weights": ("cross_entropy", "where", {"class_weights": [0.5, 2.0, 1.0]}),
    "ce-sigmoid-ignore": ("cross_entropy", "ignore_index", {"activation": "sigmoid"}),
    "focal-ignore-alpha": ("focal", "ignore_index", {"alpha": 0.25}),
    "focal-sigmoid-where": ("focal", "where", {"activation": "sigmoid", "gamma": 1.0}),
}


@peers.family
def masked_family():
    # Excluding the last two columns must equal cutting them away.
    x = ref.random_logits(2, 3, seed=21)
    y = ref.random_labels(2, 3, seed=22)
    where = np.ones(y.shape, bool)
    where[..., -2:] = False
    y_ignored = np.where(where, y, 7).astype(np.int32)
    x_sliced, y_sliced = x[..., :-2, :], y[..., :-2]
    built = {}
    for case, (name, mask, options) in MASKED_CASES.items():
        options = as_arrays(options)
        expected = REFERENCES[name](x_sliced, y_sliced, **options)
        if mask == "where":
            masked = peers.Request(LOSSES[name], x, y, dict(options, where=where))
        else:
            masked = peers.Request(LOSSES[name], x, y_ignored, dict(options, ignore_index=7))
        built[case, "masked"] = (masked, (expected, where))
        built[case, "sliced"] = (peers.Request(LOSSES[name], x_sliced, y_sliced, options), None)
    return built


@pytest.mark.parametrize("case", list(MASKED_CASES))
def test_masked_equals_sliced(case):
    peers.assert_masked_equals_sliced(
        masked_family()[case, "masked"], masked_family()[case, "sliced"]
    )


def test_jit_equals_eager():
    # Op-by-op execution compiles every primitive: one loss keeps it affordable.
    x = ref.random_logits(1, 3, seed=31)
    y = ref.random_labels(1, 3, seed=32)
    options = dict(activation="sigmoid", gamma=0.5, alpha=0.3)
    loss = functools.partial(jaxseg.focal_loss, **options)
    jitted = jax.jit(jax.value_and_grad(loss))(x, y)
    with jax.disable_jit():
        eager = jax.value_and_grad(loss)(x, y)
    assert_close(jitted[0], eager[0])
    assert_close(jitted[1], eager[1])
    assert_close(jitted[0], ref.focal_loss(x, y, **options))


@pytest.mark.parametrize(
    "name, options",
    [
        ("cross_entropy", {"ignore_index": 0}),
        ("focal", {"activation": "sigmoid", "reduction": "none"}),
    ],
)
def test_vmap_over_a_leading_axis_equals_a_loop(name, options):
    xs = np.stack([ref.random_logits(2, 3, seed=s) for s in range(3)])
    ys = np.stack([ref.random_labels(2, 3, seed=10 + s) for s in range(3)])
    loss = peers.jit(functools.partial(LOSSES[name], **options))
    mapped = jax.vmap(loss)(xs, ys)
    looped = np.stack([loss(x, y) for x, y in zip(xs, ys, strict=True)])
    assert_close(mapped, looped)
    for x, y, value in zip(xs, ys, mapped, strict=True):
        assert_close(value, REFERENCES[name](x, y, **options))


def test_axis_name_makes_the_loss_global():
    # vmap with an axis name stands for shard_map/pmap: two shards of two samples each.
    x = ref.random_logits(2, 3, seed=35, shape=(4, 5, 6))
    y = np.tile(sentinel_labels(2, 3, seed=36)[:1, :5, :6], (4, 1, 1))
    options = dict(class_weights=np.array([0.5, 2.0, 1.0], np.float32), ignore_index=255)
    shards = lambda a: a.reshape(2, 2, *a.shape[1:])
    loss = functools.partial(jaxseg.cross_entropy, axis_name="shards", **options)
    values, grads = peers.jit(jax.vmap(jax.value_and_grad(loss), axis_name="shards"))(
        shards(x), shards(y)
    )
    whole_value, whole_grad = peers.torch_cross_entropy(
        x, y, weight=options["class_weights"], ignore_index=255
    )
    assert_close(values, np.full(2, whole_value))
    # Each shard's gradient is the number of shards times its part of the global one:
    # averaging parameter gradients with pmean gives the global gradient.
    assert_close(np.asarray(grads).reshape(x.shape), 2 * whole_grad)


# ---------------------------------------------------------------------------------------
# Extreme inputs, dtypes, and fully excluded batches

EXTREME_CASES = [
    ("cross_entropy", {}),
    ("cross_entropy", {"activation": "sigmoid", "label_smoothing": 0.1}),
    ("focal", {}),
    ("focal", {"gamma": 0.5}),
    ("focal", {"activation": "sigmoid"}),
    ("focal", {"activation": "sigmoid", "gamma": 0.5, "alpha": 0.25}),
]


@peers.family
def extreme_family():
    # Half the pixels right with certainty (p_t = 1), half wrong with certainty.
    y = ref.random_labels(2, 3, seed=61)
    onehot = ref.dense_labels(y, 3, "softmax")
    right = np.random.default_rng(62).random(y.shape) < 0.5
    x = (np.where(right[..., None], 2 * onehot - 1, 1 - 2 * onehot) * 1e4).astype(np.float32)
    return {
        i: (peers.Request(LOSSES[name], x, y, options), REFERENCES[name](x, y, **options))
        for i, (name, options) in enumerate(EXTREME_CASES)
    }


@pytest.mark.parametrize(
    "case",
    range(len(EXTREME_CASES)),
    ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in EXTREME_CASES],
)
def test_saturated_logits_give_finite_values_and_gradients(case):
    expected, (value, grad) = extreme_family()[case]
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert_close(value, expected)


@pytest.mark.parametrize(
    "name, dtype, options",
    [("cross_entropy", jnp.bfloat16, {}), ("focal", jnp.float16, {"activation": "sigmoid"})],
)
def test_half_precision_logits_give_float32_results(name, dtype, options):
    x = ref.random_logits(3, 3, seed=71)
    y = ref.random_labels(3, 3, seed=72)
    low = jnp.asarray(x, dtype)
    value = LOSSES[name](low, y, **options)
    grad = peers.jit(jax.grad(functools.partial(LOSSES[name], **options)))(low, y)
    assert value.dtype == jnp.float32 and grad.dtype == dtype
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    # The only rounding is that of the logits themselves.
    assert_close(value, REFERENCES[name](np.asarray(low, np.float32), y, **options))
    assert_close(value, REFERENCES[name](x, y, **options), rtol=2e-2)


EXCLUDED_CASES = [
    ("cross_entropy", "where", {}),
    ("cross_entropy", "ignore_index", {"activation": "sigmoid"}),
    ("focal", "ignore_index", {}),
    ("focal", "where", {"activation": "sigmoid"}),
]


@peers.family
def excluded_family():
    x = ref.random_logits(1, 3, seed=81)
    y = ref.random_labels(1, 3, seed=82)
    built = {}
    for i, (name, how, options) in enumerate(EXCLUDED_CASES):
        if how == "where":
            request = peers.Request(
                LOSSES[name], x, y, dict(options, where=np.zeros(y.shape, bool))
            )
        else:
            request = peers.Request(
                LOSSES[name], x, np.full_like(y, 2), dict(options, ignore_index=2)
            )
        built[i] = (request, None)
    return built


@pytest.mark.parametrize(
    "case",
    range(len(EXCLUDED_CASES)),
    ids=[f"{n}-{h}-{'-'.join(o.values())}" for n, h, o in EXCLUDED_CASES],
)
def test_all_excluded_batch_is_finite_with_zero_gradient(case):
    _, (value, grad) = excluded_family()[case]
    assert value == 0.0
    assert np.all(grad == 0)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
@pytest.mark.parametrize("num_classes", [2, 4, 7])
@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_softmax_focal_float32_gradient_matches_float64(scale, num_classes, gamma):
    """Integer labels, large logits: float32 values and gradients within 1e-5 of float64.

    The reference is ``-(1 - p_y)^gamma log p_y`` with ``log p`` from ``log_softmax`` and
    ``log(1 - p_y)`` as the log-sum-exp of the other classes' ``log p`` (so that it stays
    finite where ``p_y`` rounds to 1), differentiated by JAX in float64.
    """
    rng = np.random.default_rng(num_classes)
    x = (rng.normal(size=(3, 9, 11, num_classes)) * scale).astype(np.float32)
    y = rng.integers(0, num_classes, size=(3, 9, 11))
    is_y = jnp.asarray(y)[..., None] == jnp.arange(num_classes).reshape(1, 1, 1, -1)

    def reference(x64):
        log_p = jax.nn.log_softmax(x64, axis=-1)
        log_p_y = jnp.sum(jnp.where(is_y, log_p, 0), axis=-1)
        log_rest = jax.nn.logsumexp(jnp.where(is_y, -jnp.inf, log_p), axis=-1)
        return jnp.mean(-jnp.exp(gamma * log_rest) * log_p_y)

    with jax.enable_x64(True):
        want_value, want_grad = jax.value_and_grad(reference)(jnp.asarray(x, jnp.float64))
        want_value, want_grad = float(want_value), np.asarray(want_grad)
    value, grad = jax.value_and_grad(lambda a: jaxseg.focal_loss(a, y, gamma=gamma))(x)
    np.testing.assert_allclose(float(value), want_value, rtol=1e-5)
    assert np.max(np.abs(np.asarray(grad, np.float64) - want_grad)) <= 1e-5 * np.max(
        np.abs(want_grad)
    )
