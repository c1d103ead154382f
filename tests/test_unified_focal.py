"""Tests of jaxseg._unified_focal: the asymmetric unified focal loss.

Oracles: MONAI 1.6 ``AsymmetricUnifiedFocalLoss`` given the activated probabilities
(torch applies the softmax or sigmoid, so gradients are w.r.t. the logits), on
channels-first float64 copies, and a float64 NumPy reference written from Yeung et
al.'s formulas (every foreground class enhanced, per-sample means over valid pixels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import peers
import pytest
import references as ref
from peers import assert_close

import jaxseg


def aufl_reference(
    logits,
    labels,
    *,
    weight=0.5,
    gamma=0.5,
    delta=0.7,
    epsilon=1e-7,
    activation="softmax",
    ignore_index=None,
    where=None,
    reduction="mean",
):
    num_classes = np.shape(logits)[-1]
    p = ref.activate(logits, activation)
    y = ref.dense_labels(labels, num_classes, activation)
    v = ref.valid_mask(labels, num_classes, activation, ignore_index, where)
    if num_classes == 1:
        p, y = np.concatenate([1 - p, p], -1), np.concatenate([1 - y, y], -1)
        num_classes = 2
    p = np.clip(p, epsilon, 1 - epsilon)
    out = np.zeros((p.shape[0], num_classes))
    for b in range(p.shape[0]):
        pb = p[b].reshape(-1, num_classes)[v[b].reshape(-1)]
        yb = y[b].reshape(-1, num_classes)[v[b].reshape(-1)]
        for c in range(num_classes):
            ce = -yb[:, c] * np.log(pb[:, c])
            if c == 0:
                focal = (1 - delta) * (1 - pb[:, 0]) ** gamma * ce
            else:
                focal = delta * ce
            focal = focal.sum() / len(pb) if len(pb) else 0.0
            tp = (yb[:, c] * pb[:, c]).sum()
            fn = (yb[:, c] * (1 - pb[:, c])).sum()
            fp = ((1 - yb[:, c]) * pb[:, c]).sum()
            index = (tp + epsilon) / (tp + delta * fn + (1 - delta) * fp + epsilon)
            tversky = 1 - index if c == 0 else (1 - index) ** (1 - gamma)
            out[b, c] = weight * focal + (1 - weight) * tversky
    if reduction == "none":
        return out
    return out.sum() if reduction == "sum" else out.mean()


def monai_aufl(logits, labels, activation, **options):
    """MONAI's loss of torch-activated channels-first float64 copies: value, grad."""
    torch = peers.torch()
    losses = peers.monai_losses()
    x = torch.tensor(peers.channels_first(logits).astype(np.float64), requires_grad=True)
    p = {"softmax": lambda t: torch.softmax(t, 1), "sigmoid": torch.sigmoid}.get(
        activation, lambda t: t
    )(x)
    labels = np.asarray(labels)
    to_onehot = ref.is_integer(labels) and labels.ndim == np.ndim(logits) - 1
    if to_onehot and np.shape(logits)[-1] > 1:
        target = torch.tensor(labels[:, None].astype(np.int64))
    elif to_onehot:
        target = torch.tensor(labels[:, None].astype(np.float64))
        to_onehot = False
    else:
        target = torch.tensor(peers.channels_first(labels).astype(np.float64))
    loss = losses.AsymmetricUnifiedFocalLoss(to_onehot_y=to_onehot, **options)(p, target)
    loss.backward()
    return float(loss.detach()), peers.channels_last(x.grad.numpy()).astype(np.float64)


# case: (ndim, classes, activation, labels, options: the same names in MONAI)
MONAI_CASES = {
    "2d-softmax-defaults": (2, 2, "softmax", "int", {}),
    "3d-softmax-options": (3, 2, "softmax", "int", {"weight": 0.3, "gamma": 0.2, "delta": 0.6}),
    "2d-sigmoid-binary": (2, 1, "sigmoid", "int", {}),
    "3d-sigmoid-soft-binary": (3, 1, "sigmoid", "soft", {"gamma": 0.75}),
    "2d-probabilities-one-hot": (2, 2, None, "one-hot", {"delta": 0.4}),
}


def _case_data(ndim, classes, activation, labels, seed=0):
    x = ref.random_logits(ndim, classes, seed=seed + ndim + classes)
    if activation is None:
        x = ref.softmax(x).astype(np.float32)
    y = ref.random_labels(ndim, classes, seed=seed + 2 * ndim)
    if labels == "one-hot":
        y = (y[..., None] == np.arange(classes)).astype(np.float32)
    elif labels == "soft":
        y = np.random.default_rng(seed).uniform(size=x.shape).astype(np.float32)
    return x, y


@peers.family
def monai_family():
    built = {}
    for case, (ndim, classes, activation, labels, options) in MONAI_CASES.items():
        x, y = _case_data(ndim, classes, activation, labels)
        request = peers.Request(
            jaxseg.asymmetric_unified_focal_loss, x, y, dict(options, activation=activation)
        )
        built[case] = (request, (x, y))
    return built


@pytest.mark.parametrize("case", list(MONAI_CASES))
def test_aufl_matches_monai_and_reference(case):
    _, _, activation, _, options = MONAI_CASES[case]
    (x, y), (value, grad) = monai_family()[case]
    m_value, m_grad = monai_aufl(x, y, activation, **options)
    assert np.all(np.isfinite(grad))
    assert_close(value, m_value)
    assert_close(grad, m_grad)
    assert_close(value, aufl_reference(x, y, activation=activation, **options))


# Beyond MONAI: more classes (every class but 0 is foreground), masks, reductions.
REFERENCE_CASES = {
    "2d-3-classes": (2, 3, {}),
    "3d-4-classes-none": (3, 4, {"reduction": "none", "gamma": 0.3}),
    "2d-ignore-index": (2, 3, {"ignore_index": 1}),
    "3d-where-sum": (3, 2, {"reduction": "sum"}),
    "2d-sigmoid-3-channels": (2, 3, {"activation": "sigmoid"}),
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_aufl_matches_reference(case):
    ndim, classes, options = REFERENCE_CASES[case]
    x = ref.random_logits(ndim, classes, seed=81)
    y = ref.random_labels(ndim, classes, seed=82)
    if "where" in case:
        options = dict(options, where=np.random.default_rng(83).random(y.shape) > 0.3)
    assert_close(
        jaxseg.asymmetric_unified_focal_loss(x, y, **options), aufl_reference(x, y, **options)
    )


def test_perfect_prediction_has_finite_gradient():
    # (1 - TI)^(1 - gamma) has an infinite slope at TI = 1; the clip keeps TI below 1
    # and the power is taken with a finite gradient.
    labels = np.array([[0, 1, 1, 0]], np.int32)
    logits = 40.0 * (2 * (labels[..., None] == np.arange(2)) - 1).astype(np.float32)
    value, grad = jax.value_and_grad(jaxseg.asymmetric_unified_focal_loss)(
        jnp.asarray(logits), labels
    )
    assert float(value) < 1e-3
    assert np.all(np.isfinite(grad))


def test_bad_options_raise():
    x = np.zeros((1, 4, 2), np.float32)
    y = np.zeros((1, 4), np.int32)
    for name in ("weight", "gamma", "delta"):
        with pytest.raises(ValueError, match=name):
            jaxseg.asymmetric_unified_focal_loss(x, y, **{name: 1.5})


def test_combinators_compose_aufl():
    x = ref.random_logits(2, 2, seed=91)
    y = ref.random_labels(2, 2, seed=92)
    small = ref.random_logits(2, 2, seed=93, shape=(2, 3, 3))
    supervised = jaxseg.deep_supervision(jaxseg.asymmetric_unified_focal_loss, weights=(0.5, 0.5))
    total, parts = jaxseg.with_components(supervised)([x, small], y, delta=0.6)
    expected = 0.5 * aufl_reference(x, y, delta=0.6) + 0.5 * aufl_reference(
        small, y[:, 1::2, 1::2], delta=0.6
    )
    assert_close(total, expected)
    assert_close(parts["asymmetric_unified_focal_loss"], expected)
    combined = jaxseg.combine(jaxseg.dice_loss, jaxseg.asymmetric_unified_focal_loss)
    dice = ref.overlap_loss("dice", x, y, smooth_nr=1e-5, smooth_dr=1e-5)
    assert_close(combined(x, y), dice + aufl_reference(x, y))


def test_axis_name_mean_equals_whole_batch():
    x = ref.random_logits(2, 2, seed=95, shape=(4, 5, 6))
    y = ref.random_labels(2, 2, seed=96, shape=(4, 5, 6))
    per_device = jax.vmap(
        lambda x, y: jaxseg.asymmetric_unified_focal_loss(x, y, axis_name="d"), axis_name="d"
    )(x.reshape(2, 2, 5, 6, 2), y.reshape(2, 2, 5, 6))
    assert_close(per_device, np.full(2, aufl_reference(x, y)))


def test_option_gradients_match_finite_differences():
    """weight, gamma, delta and epsilon are traced, with exact gradients."""
    x = ref.random_logits(2, 3, seed=97, shape=(2, 5, 4))
    y = ref.random_labels(2, 3, seed=98, shape=(2, 5, 4))
    options = {"weight": 0.4, "gamma": 0.3, "delta": 0.65, "epsilon": 1e-3}
    grads = jax.grad(
        lambda o: jaxseg.asymmetric_unified_focal_loss(x, y, **o),
    )({k: jnp.float32(v) for k, v in options.items()})
    for name, value in options.items():
        step = 1e-6 * max(value, 1e-3)
        up = aufl_reference(x, y, **dict(options, **{name: value + step}))
        down = aufl_reference(x, y, **dict(options, **{name: value - step}))
        assert_close(grads[name], (up - down) / (2 * step), rtol=1e-4, atol=1e-5)
