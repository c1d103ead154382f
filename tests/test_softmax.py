"""The softmax engine (jaxseg/_softmax.py) and the losses built on it.

Oracles: float64 NumPy written from the formulas (here and in references.py), MONAI 1.6
and PyTorch on channels-first float64 copies, optax, and float64 central finite
differences for the gradients of the options.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import peers
import pytest
import references as ref
from peers import assert_close

import jaxseg
from jaxseg import _softmax

# ---------------------------------------------------------------------------------------
# The engine's terms, their reverse- and forward-mode derivatives, against float64


def _reference_terms(x, y, v, w):
    """The engine's outputs written from their definitions, in float64 NumPy."""
    x = np.asarray(x, np.float64)
    num_classes = x.shape[-1]
    log_p = ref.log_softmax(x)
    p = np.exp(log_p)
    onehot = y[..., None] == np.arange(num_classes)
    vv = v[..., None].astype(np.float64)
    axes = tuple(range(1, x.ndim - 1))
    p_y = (p * onehot).sum(-1)
    return (
        (vv * p).sum(axes),
        (vv * p * onehot).sum(axes),
        (vv * onehot).sum(axes),
        np.log(p_y),
        np.log1p(-p_y),
        (w * log_p).sum(-1),
    )


def _engine(x, y, v, w, focal=True):
    t = _softmax.softmax_terms(x, jnp.asarray(y), jnp.asarray(v), w, focal=focal)
    return t.pred_sum, t.tp, t.log_p, t.log1m_p, t.weighted_log_p


def _float_outputs(terms):
    return tuple(t for i, t in enumerate(terms) if i != 2)  # without the int counts


# Shapes: unrolled (2 and 7 classes); above the cutoff, the overlap sums' products per
# row of the last spatial axis (4D and 5D with every axis longer than 1) and per sample
# (3D logits, a batch of 1, a last spatial axis of length 1).
@pytest.mark.parametrize(
    "shape",
    [
        (2, 11, 2),
        (2, 5, 3, 7),
        (3, 4, 5, 12),
        (2, 4, 3, 2, 19),
        (1, 4, 3, 12),
        (2, 5, 1, 12),
        (2, 5, 117),
    ],
)
# Without the focal factor (the cross-entropy and Dice losses) log1m_p is zeros and, above
# the cutoff, s is a plain sum instead of the split one.
@pytest.mark.parametrize("focal", [True, False])
def test_terms_and_their_derivatives_match_float64(shape, focal):
    rng = np.random.default_rng(sum(shape))
    num_classes = shape[-1]
    x = (rng.normal(size=shape) * 3).astype(np.float32)
    y = rng.integers(0, num_classes, size=shape[:-1]).astype(np.int32)
    v = rng.random(shape[:-1]) > 0.3
    w = rng.uniform(0.2, 2.0, size=num_classes).astype(np.float32)
    want = _reference_terms(x, y, v, w)
    if not focal:
        want = want[:4] + (np.zeros_like(want[4]),) + want[5:]
    t = peers.jit(functools.partial(_softmax.softmax_terms, focal=focal))(x, y, v, w)
    assert t.label_sum.dtype == jnp.int32
    np.testing.assert_array_equal(t.label_sum, want[2])
    got = (t.pred_sum, t.tp, t.log_p, t.log1m_p, t.weighted_log_p)
    for g, r in zip(got, _float_outputs(want), strict=True):
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5)

    # Reverse and forward mode, in float64 (the rule is exact), against a plain
    # differentiable float64 formulation of the same outputs.
    def plain(x, w):
        log_p = jax.nn.log_softmax(x, axis=-1)
        p = jnp.exp(log_p)
        onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype)
        vv = jnp.asarray(v, x.dtype)[..., None]
        axes = tuple(range(1, x.ndim - 1))
        p_y = jnp.sum(p * onehot, -1)
        flat = lambda a: a.reshape(a.shape[0], -1)
        return (
            jnp.sum(vv * p, axes),
            jnp.sum(vv * p * onehot, axes),
            flat(jnp.log(p_y)),
            flat(jnp.log1p(-p_y)) if focal else flat(jnp.zeros_like(p_y)),
            flat(jnp.sum(w.reshape((1,) * (x.ndim - 1) + (-1,)) * log_p, -1)),
        )

    def engine(x, w):
        out = _engine(x, y, v, w, focal)
        return out[:2] + tuple(a.reshape(a.shape[0], -1) for a in out[2:])

    def derivatives(f, x, w, dx, dw, cotangent):
        _, tangent = jax.jvp(f, (x, w), (dx, dw))
        return tangent + jax.vjp(f, x, w)[1](cotangent)

    with jax.enable_x64(True):
        x64, w64 = jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)
        dx = jnp.asarray(rng.normal(size=shape))
        dw = jnp.asarray(rng.normal(size=num_classes))
        shapes = jax.eval_shape(engine, x64, w64)
        cotangent = tuple(jnp.asarray(rng.normal(size=a.shape)) for a in shapes)
        got = peers.jit(functools.partial(derivatives, engine))(x64, w64, dx, dw, cotangent)
        want = peers.jit(functools.partial(derivatives, plain))(x64, w64, dx, dw, cotangent)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("num_classes", [3, 8, 117])
def test_log1m_p_has_no_cancellation_near_one_half_and_one(num_classes):
    # Margins from a tie (p_y <= 1/2, ties with the label) through p_y just above 1/2 to
    # p_y = 1 - 1e-30: log(1 - p_y) against float64 from the other classes' terms.
    # The last row is set apart below (a runner-up within rounding of the label).
    margins = np.array(
        [0.0, 0.0, 0.0, 1e-4, 0.5, np.log(num_classes - 1.0), 1.0, 5.0, 20.0, 69.0, 0.0]
    )
    rows = len(margins)
    rng = np.random.default_rng(num_classes)
    x = rng.normal(size=(rows, num_classes)) * 0.1
    y = rng.integers(0, num_classes, size=rows)
    others = np.ones((rows, num_classes), bool)
    others[np.arange(rows), y] = False
    x[np.arange(rows), y] = x[others].reshape(rows, -1).max(-1) + margins
    x[1, (y[1] + 1) % num_classes] = x[1, y[1]]  # a tie with the label
    x[2, (y[2] + 1) % num_classes] = x[2, (y[2] + 2) % num_classes] = x[2, y[2]]  # 3-way
    x = x.astype(np.float32)
    # The last row's label leads the runner-up by 1e-8, so that e of the runner-up
    # rounds to 1 (two terms equal to 1; p_y just above one half).
    x[-1] = -np.abs(x[-1]) - 0.5
    x[-1, y[-1]], x[-1, (y[-1] + 1) % num_classes] = 1e-8, 0.0
    assert np.exp(np.float32(-1e-8)) == 1
    x64 = x.astype(np.float64)
    top = x64.max(-1, keepdims=True)
    e = np.exp(x64 - top)
    want = np.log((e * others).sum(-1) / e.sum(-1))
    t = _softmax.softmax_terms(
        jnp.asarray(x)[None], jnp.asarray(y, jnp.int32)[None], jnp.ones((1, rows), bool),
        jnp.ones((num_classes,)),
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(t.log1m_p[0]), want, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(t.log1m_p)))


@pytest.mark.parametrize("num_classes", [3, 8, 117])
@pytest.mark.parametrize("name", ["dice", "cross_entropy", "focal", "dice_focal"])
def test_a_nan_logit_makes_the_loss_nan(name, num_classes):
    # One NaN logit must not vanish from the sums over classes (the focal split sums
    # count the terms equal to 1 apart), at every class count.
    loss, options = SOFTMAX_LOSSES[name]
    rng = np.random.default_rng(num_classes)
    x = rng.normal(size=(2, 4, 4, num_classes)).astype(np.float32)
    y = rng.integers(0, num_classes, size=(2, 4, 4))
    x[1, 2, 3, (y[1, 2, 3] + 1) % num_classes] = np.nan
    value, grad = jax.value_and_grad(lambda a: loss(a, y, **options))(jnp.asarray(x))
    assert np.isnan(float(value))
    assert np.isnan(np.asarray(grad)[1, 2, 3]).any()


def test_dice_ce_computes_the_softmax_pass_once():
    """Dice and CE share the engine's pass: as many exponentials as the Dice loss alone."""
    x = jnp.zeros((2, 16, 16, 19))
    y = jnp.zeros((2, 16, 16), jnp.int32)
    count = lambda f: (
        jax.jit(jax.value_and_grad(f)).lower(x, y).compile().as_text().count("exponential(")
    )
    assert count(jaxseg.dice_ce) == count(jaxseg.dice_loss)


# ---------------------------------------------------------------------------------------
# Exactness under a per-pixel offset of the logits


SOFTMAX_LOSSES = {
    "dice": (jaxseg.dice_loss, {}),
    "iou": (jaxseg.iou_loss, {}),
    "tversky": (jaxseg.tversky_loss, {"alpha": 0.3, "beta": 0.7}),
    "generalized_dice": (jaxseg.generalized_dice_loss, {}),
    "cross_entropy": (jaxseg.cross_entropy, {"label_smoothing": 0.1}),
    "focal": (jaxseg.focal_loss, {"gamma": 1.5, "alpha": 0.25}),
    "dice_ce": (jaxseg.dice_ce, {}),
    "dice_focal": (jaxseg.dice_focal, {}),
}


def _reference_loss(name, x, y):
    """float64 reference of each SOFTMAX_LOSSES entry (references.py formulas)."""
    options = SOFTMAX_LOSSES[name][1]
    if name in ("dice", "iou", "tversky"):
        return ref.overlap_loss(name, x, y, **options)
    if name == "generalized_dice":
        return ref.generalized_dice_loss(x, y)
    if name == "cross_entropy":
        return ref.cross_entropy(x, y, **options)
    if name == "focal":
        return ref.focal_loss(x, y, **options)
    if name == "dice_ce":
        return ref.overlap_loss("dice", x, y) + ref.cross_entropy(x, y)
    return ref.overlap_loss("dice", x, y) + ref.focal_loss(x, y)


# Long pixel axes: a prime length (no row split; library sums), lengths whose rows are
# split (999_999 = 999 x 1001, 3001 x 997), below and above the cutoff, and a 3D batch
# of one (above the cutoff one matrix-vector product and one segment per class per
# sample). In float32, sums of all pixels in sequence were off by up to 4e-5 (Dice at
# (1, 999_983, 9)), 2.5e-6 (Dice at (1, 64, 64, 64, 14)) and 6e-4 (a focal mean).
@pytest.mark.parametrize(
    "shape",
    [(2, 999_983, 3), (1, 999_999, 2), (1, 3001, 997, 4), (1, 999_983, 9), (1, 64, 64, 64, 14)],
)
def test_long_pixel_axes_sum_accurately(shape):
    rng = np.random.default_rng(shape[1])
    x = (rng.normal(size=shape) * 2).astype(np.float32)
    y = rng.integers(0, shape[-1], size=shape[:-1])
    requests = {name: SOFTMAX_LOSSES[name] for name in ("dice", "focal", "dice_focal")}
    got = peers.jit(lambda x, y: {n: f(x, y, **o) for n, (f, o) in requests.items()})(x, y)
    for name in requests:
        assert_close(got[name], _reference_loss(name, x, y), rtol=2e-6, atol=1e-7)


# Classes: the unrolled path (5), per-row overlap products with the split sum (12), and
# per-row products with the plain class sum (117).
@pytest.mark.parametrize("num_classes", [5, 12, 117])
@pytest.mark.parametrize("offset", [1e6, 1e8, 1e30])
def test_losses_are_exact_for_large_per_pixel_offsets(offset, num_classes):
    """Logits shifted per pixel by up to ``offset``: every loss equals its float64
    reference on the same (float32) logits, which works relative to the pixel's max."""
    rng = np.random.default_rng(3)
    base = ref.random_logits(2, num_classes, seed=4, shape=(2, 4, 3))
    shift = offset * rng.uniform(0.5, 1.0, size=base.shape[:-1] + (1,))
    # Spread the logits by a few float32 spacings at the offset, so they stay distinct.
    spacing = np.spacing(np.float32(offset))
    x = (shift + base * spacing).astype(np.float32)
    y = ref.random_labels(2, num_classes, seed=5, shape=(2, 4, 3))
    for name, (loss, options) in SOFTMAX_LOSSES.items():
        assert_close(loss(x, y, **options), _reference_loss(name, x, y), rtol=2e-5, atol=2e-6)
    # Equal logits: every class has probability 1/3 whatever the offset.
    equal = np.full((1, 2, 3), offset, np.float32)
    assert_close(jaxseg.cross_entropy(equal, np.array([[0, 2]])), np.log(3.0))


@pytest.mark.parametrize("num_classes", [3, 8, 117])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_logits_equal_the_reference_on_the_rounded_logits(dtype, num_classes):
    # The engine takes the maximum of the half-precision logits before widening them
    # (dice_ce: after `combine` widened them): each loss equals its float64 reference on
    # the same rounded logits, also for logits far from 0 and with ties at the maximum
    # (rounding makes them common).
    rng = np.random.default_rng(num_classes)
    x = rng.normal(size=(2, 4, 3, num_classes)) * 3 + rng.choice([0.0, 200.0], (2, 4, 3, 1))
    x = np.array(jnp.asarray(x, dtype).astype(jnp.float32))
    x[0, 0, 0, :2] = x[0, 0, 0].max()  # a tie at the maximum
    y = rng.integers(0, num_classes, size=(2, 4, 3))
    half = jnp.asarray(x, dtype)
    for name in ("dice", "cross_entropy", "focal", "dice_ce"):
        loss, options = SOFTMAX_LOSSES[name]
        assert_close(loss(half, y, **options), _reference_loss(name, x, y), rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------------------------------
# Forward-mode autodiff through every softmax loss


@pytest.mark.parametrize("name", sorted(SOFTMAX_LOSSES))
def test_forward_mode_matches_float64_finite_differences(name):
    loss, options = SOFTMAX_LOSSES[name]
    x = ref.random_logits(2, 6, seed=8, shape=(2, 5, 4))
    y = ref.random_labels(2, 6, seed=9, shape=(2, 5, 4))
    direction = np.random.default_rng(10).normal(size=x.shape)
    jvp = peers.jit(lambda u, t: jax.jvp(lambda a: loss(a, y, **options), (u,), (t,)))
    _, tangent = jvp(jnp.asarray(x), jnp.asarray(direction, jnp.float32))
    h = 1e-5
    x64 = x.astype(np.float64)
    numeric = (
        _reference_loss(name, x64 + h * direction, y)
        - _reference_loss(name, x64 - h * direction, y)
    ) / (2 * h)
    assert_close(tangent, numeric, rtol=2e-4, atol=2e-5)


def test_linearize_and_jacfwd_agree_with_reverse_mode():
    x = jnp.asarray(ref.random_logits(2, 5, seed=23, shape=(1, 3, 2)))
    y = ref.random_labels(2, 5, seed=24, shape=(1, 3, 2))
    direction = jnp.asarray(np.random.default_rng(25).normal(size=x.shape), jnp.float32)
    loss = lambda u: jaxseg.dice_focal(u, y)

    @peers.jit  # the three transformations traced into one program: one compilation
    def derivatives(x, direction):
        return jax.grad(loss)(x), jax.linearize(loss, x)[1](direction), jax.jacfwd(loss)(x)

    grad, linear, jac = derivatives(x, direction)
    assert_close(linear, jnp.vdot(grad, direction), rtol=1e-5, atol=1e-6)
    assert_close(jac, grad, rtol=1e-5, atol=1e-6)


def _torch_softmax_losses(num_classes, weights):
    """The peers of the losses below: torch functions of channels-first logits and targets."""
    t, losses = peers.torch(), peers.monai_losses()
    dice = losses.DiceLoss(softmax=True, to_onehot_y=True)
    # MONAI's softmax focal mean divides by the class count too.
    focal = losses.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0)
    weight = t.tensor(weights)
    return {
        "dice": dice,
        "cross_entropy": lambda a, y: t.nn.functional.cross_entropy(
            a, y[:, 0], weight=weight, label_smoothing=0.1
        ),
        "focal": lambda a, y: num_classes * focal(a, y),
        "dice_ce": losses.DiceCELoss(softmax=True, to_onehot_y=True),
        "dice_focal": lambda a, y: dice(a, y) + num_classes * focal(a, y),
    }


@pytest.mark.parametrize("num_classes", [3, 9, 30])
def test_hessian_vector_products_match_monai_and_torch(num_classes):
    # Second derivatives differentiate the engine's forward pass: unrolled (3 classes),
    # s from the split reduction (9), s from a plain sum (30; the focal loss keeps the
    # split). Forward-over-reverse, and jax.hessian (forward over reverse, vmapped).
    x = ref.random_logits(2, num_classes, seed=31, shape=(2, 4, 3))
    y = ref.random_labels(2, num_classes, seed=32, shape=(2, 4, 3))
    v = np.random.default_rng(33).normal(size=x.shape).astype(np.float32)
    w = np.linspace(0.5, 2.0, num_classes)
    losses = {
        "dice": lambda a: jaxseg.dice_loss(a, y),
        "cross_entropy": lambda a: jaxseg.cross_entropy(a, y, class_weights=w, label_smoothing=0.1),
        "focal": lambda a: jaxseg.focal_loss(a, y, gamma=2.0),
        "dice_ce": lambda a: jaxseg.dice_ce(a, y),
        "dice_focal": lambda a: jaxseg.dice_focal(a, y),
    }

    @peers.jit  # every loss and transformation in one program: one compilation
    def second_order(x, v):
        hvps = {name: jax.jvp(jax.grad(f), (x,), (v,))[1] for name, f in losses.items()}
        hessian = jax.hessian(losses["dice_focal"])(x)
        return hvps, jnp.tensordot(hessian, v, axes=x.ndim)

    hvps, hessian_v = second_order(jnp.asarray(x), jnp.asarray(v))
    peer = _torch_softmax_losses(num_classes, w)
    for name, hvp in hvps.items():
        want = peers.torch_hessian_vector_product(peer[name], x, y, v)
        assert_close(hvp, want, rtol=1e-4, atol=1e-6)
    want = peers.torch_hessian_vector_product(peer["dice_focal"], x, y, v)
    assert_close(hessian_v, want, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Exact gradients of the float- and array-valued options


def _central(f, value, h=1e-6):
    value = np.asarray(value, np.float64)
    grads = np.zeros_like(value)
    for index in np.ndindex(value.shape):
        step = np.zeros_like(value)
        step[index] = h
        grads[index] = (f(value + step) - f(value - step)) / (2 * h)
    return grads


OPTION_CASES = {
    # (jaxseg loss, option, value, float64 reference as a function of the option)
    "ce_class_weights": (
        jaxseg.cross_entropy,
        "class_weights",
        [1.0, 0.3, 2.0],
        lambda x, y, u: ref.cross_entropy(x, y, class_weights=u),
    ),
    # Nine classes: above the engine's cutoff the normaliser is a sum of gathered weights,
    # below it a sum over the label counts (_softmax.label_weight_sum).
    "ce_class_weights_9_classes": (
        jaxseg.cross_entropy,
        "class_weights",
        [1.0, 0.3, 2.0, 0.5, 1.5, 0.8, 1.2, 0.4, 2.5],
        lambda x, y, u: ref.cross_entropy(x, y, class_weights=u),
    ),
    "focal_class_weights_9_classes": (
        jaxseg.focal_loss,
        "class_weights",
        [1.0, 0.3, 2.0, 0.5, 1.5, 0.8, 1.2, 0.4, 2.5],
        lambda x, y, u: ref.focal_loss(x, y, class_weights=u),
    ),
    "ce_class_weights_smoothing": (
        functools.partial(jaxseg.cross_entropy, label_smoothing=0.2),
        "class_weights",
        [1.0, 0.3, 2.0],
        lambda x, y, u: ref.cross_entropy(x, y, class_weights=u, label_smoothing=0.2),
    ),
    "ce_label_smoothing": (
        functools.partial(jaxseg.cross_entropy, class_weights=np.array([1.0, 0.3, 2.0])),
        "label_smoothing",
        0.1,
        lambda x, y, u: ref.cross_entropy(x, y, label_smoothing=u, class_weights=[1.0, 0.3, 2.0]),
    ),
    "focal_gamma": (
        jaxseg.focal_loss,
        "gamma",
        1.5,
        lambda x, y, u: ref.focal_loss(x, y, gamma=u),
    ),
    "focal_alpha": (
        functools.partial(jaxseg.focal_loss, gamma=2.0),
        "alpha",
        [0.2, 0.5, 0.9],
        lambda x, y, u: ref.focal_loss(x, y, alpha=u),
    ),
    "focal_class_weights": (
        jaxseg.focal_loss,
        "class_weights",
        [1.0, 0.3, 2.0],
        lambda x, y, u: ref.focal_loss(x, y, class_weights=u),
    ),
    "dice_smooth_nr": (
        functools.partial(jaxseg.dice_loss, smooth_dr=0.5),
        "smooth_nr",
        0.5,
        lambda x, y, u: ref.overlap_loss("dice", x, y, smooth_nr=u, smooth_dr=0.5),
    ),
    "dice_smooth_dr": (
        functools.partial(jaxseg.dice_loss, smooth_nr=0.5),
        "smooth_dr",
        0.7,
        lambda x, y, u: ref.overlap_loss("dice", x, y, smooth_nr=0.5, smooth_dr=u),
    ),
    "dice_ce_lambda_ce": (
        jaxseg.dice_ce,
        "lambda_ce",
        0.7,
        lambda x, y, u: ref.overlap_loss("dice", x, y) + u * ref.cross_entropy(x, y),
    ),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_option_gradient_matches_float64_finite_differences(case):
    loss, option, value, reference = OPTION_CASES[case]
    num_classes = 9 if case.endswith("_9_classes") else 3
    x = ref.random_logits(2, num_classes, seed=11, shape=(2, 5, 4))
    y = ref.random_labels(2, num_classes, seed=12, shape=(2, 5, 4))
    grad = peers.jit(jax.grad(lambda u: loss(x, y, **{option: u})))(np.asarray(value, np.float32))
    numeric = _central(lambda u: reference(x.astype(np.float64), y, u), value)
    assert_close(grad, numeric, rtol=1e-4, atol=1e-5)


def test_options_are_traced_not_compilation_keys():
    x = ref.random_logits(2, 3, seed=13, shape=(2, 5, 4))
    y = ref.random_labels(2, 3, seed=14, shape=(2, 5, 4))

    @jax.jit
    def run(w, eps, gamma, alpha, lam):
        return (
            jaxseg.cross_entropy(x, y, class_weights=w, label_smoothing=eps)
            + jaxseg.focal_loss(x, y, gamma=gamma, alpha=alpha)
            + jaxseg.dice_ce(x, y, lambda_ce=lam)
        )

    f32 = lambda *values: [np.asarray(v, np.float32) for v in values]
    run(*f32(np.ones(3), 0.1, 2.0, 0.25, 1.0))
    run(*f32(np.full(3, 2.0), 0.2, 1.0, 0.5, 0.5))
    assert run._cache_size() == 1


# ---------------------------------------------------------------------------------------
# pixel_weights


def _weighted_pixel_reference(losses, class_w, omega, valid):
    return np.sum(omega * losses * valid) / np.sum(omega * class_w * valid)


@pytest.mark.parametrize("loss_name", ["cross_entropy", "focal_loss"])
def test_pixel_weights_softmax(loss_name):
    x = ref.random_logits(2, 4, seed=15, shape=(2, 5, 4))
    y = ref.random_labels(2, 4, seed=16, shape=(2, 5, 4))
    y[0, 0, 0] = 255
    omega = np.random.default_rng(17).uniform(0.0, 3.0, size=y.shape).astype(np.float32)
    w = np.array([1.0, 0.5, 2.0, 1.5], np.float32)
    options = {"class_weights": w, "ignore_index": 255}
    if loss_name == "focal_loss":
        options["gamma"] = 2.0
    reference = getattr(ref, loss_name)
    per_pixel = reference(x, y, reduction="none", **options)  # w_y l, 0 where excluded
    valid = y != 255
    class_w = w[np.where(valid, y, 0)]
    want = _weighted_pixel_reference(per_pixel, class_w, omega, valid)
    loss = getattr(jaxseg, loss_name)
    got, grad = peers.jaxseg_value_and_grad(loss, x, y, pixel_weights=omega, **options)
    assert_close(got, want)
    # Uniform weights change nothing; the gradient is exactly zero at weight-0 pixels.
    assert_close(loss(x, y, pixel_weights=np.full(y.shape, 2.5, np.float32), **options),
                 loss(x, y, **options))  # fmt: skip
    omega0 = omega.copy()
    omega0[1] = 0
    _, grad0 = peers.jaxseg_value_and_grad(loss, x, y, pixel_weights=omega0, **options)
    assert np.all(grad0[1] == 0)
    # The gradient with respect to the pixel weights themselves, by finite differences.
    g_omega = peers.jit(jax.grad(lambda o: loss(x, y, pixel_weights=o, **options)))(omega)
    numeric = _central(
        lambda o: _weighted_pixel_reference(per_pixel, class_w, o, valid), omega, h=1e-5
    )
    assert_close(g_omega, numeric, rtol=1e-4, atol=1e-6)


def test_pixel_weights_sigmoid_and_compounds():
    x = ref.random_logits(2, 3, seed=18, shape=(2, 5, 4))
    y = ref.random_labels(2, 3, seed=19, shape=(2, 5, 4))
    omega = np.random.default_rng(20).uniform(0.0, 3.0, size=y.shape).astype(np.float32)
    per = ref.cross_entropy(x, y, activation="sigmoid", reduction="none")
    want = np.sum(omega[..., None] * per) / (3 * np.sum(omega))
    assert_close(jaxseg.cross_entropy(x, y, activation="sigmoid", pixel_weights=omega), want)
    # dice_ce / dice_focal: the pixel weights reach the pixel term only.
    for compound, pixel_loss in ((jaxseg.dice_ce, jaxseg.cross_entropy),
                                 (jaxseg.dice_focal, jaxseg.focal_loss)):  # fmt: skip
        want = jaxseg.dice_loss(x, y) + pixel_loss(x, y, pixel_weights=omega)
        assert_close(compound(x, y, pixel_weights=omega), want)


@pytest.mark.parametrize(
    "weights, error, match",
    [
        (np.ones((2, 5), np.float32), ValueError, r"pixel_weights.*\(2, 5, 4\).*\(2, 5\)"),
        (np.ones((2, 5, 4), np.int32), TypeError, "pixel_weights.*float.*int32"),
        (-np.ones((2, 5, 4), np.float32), ValueError, "pixel_weights.*>= 0"),
    ],
)
def test_pixel_weights_are_validated(weights, error, match):
    x = ref.random_logits(2, 3, seed=21, shape=(2, 5, 4))
    y = ref.random_labels(2, 3, seed=22, shape=(2, 5, 4))
    for loss in (jaxseg.cross_entropy, jaxseg.focal_loss, jaxseg.dice_ce):
        with pytest.raises(error, match=match):
            loss(x, y, pixel_weights=weights)


# ---------------------------------------------------------------------------------------
# Parity with MONAI, PyTorch and optax at many classes


@functools.cache
def _many_class_data(num_classes):
    shape = (2, 9, 8)
    x = ref.random_logits(2, num_classes, seed=num_classes, shape=shape)
    y = ref.random_labels(2, num_classes, seed=num_classes + 1, shape=shape)
    return x, y


@pytest.mark.parametrize("num_classes", [7, 8, 19, 117])
def test_many_classes_match_monai_torch_and_optax(num_classes):
    x, y = _many_class_data(num_classes)
    w = np.linspace(0.5, 2.0, num_classes)
    requests = [
        (jaxseg.dice_loss, x, y, {}),
        (jaxseg.cross_entropy, x, y, {"class_weights": w, "label_smoothing": 0.1}),
        (jaxseg.cross_entropy, x, y, {}),
        (jaxseg.focal_loss, x, y, {"gamma": 2.0}),
        (jaxseg.dice_ce, x, y, {}),
        (jaxseg.dice_focal, x, y, {}),
    ]
    got = peers.jaxseg_many(requests)
    dice = peers.monai("DiceLoss", x, y, softmax=True, to_onehot_y=True)
    ce_w = peers.torch_cross_entropy(x, y, weight=w, label_smoothing=0.1)
    ce = peers.torch_cross_entropy(x, y)
    focal = peers.monai("FocalLoss", x, y, use_softmax=True, to_onehot_y=True, gamma=2.0)
    # MONAI's softmax focal mean divides by the class count too.
    focal = (num_classes * focal[0], num_classes * focal[1])
    dice_ce = peers.monai("DiceCELoss", x, y, softmax=True, to_onehot_y=True)
    dice_focal = (dice[0] + focal[0], dice[1] + focal[1])
    for (value, grad), (want_value, want_grad) in zip(
        got, [dice, ce_w, ce, focal, dice_ce, dice_focal], strict=True
    ):
        assert_close(value, want_value)
        assert_close(grad, want_grad)
    optax_value, optax_grad = peers.optax_value_and_grad(
        "softmax_cross_entropy_with_integer_labels", x, y
    )
    assert_close(got[2][0], optax_value)
    assert_close(got[2][1], optax_grad)
