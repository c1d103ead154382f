"""Tests of jaxseg._compound: dice_ce, dice_focal, bce_log_dice.

Oracles: MONAI 1.6 ``DiceCELoss``, ``DiceLoss``, ``FocalLoss``, ``DiceFocalLoss`` and
PyTorch's cross-entropy (values and gradients, channels-first float64 copies), and a
float64 NumPy reference of binary CE - log(mean Dice) written here from the formula.
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


def assert_value_and_grad(got, want):
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


@pytest.fixture(scope="module")
def data():
    logits = ref.random_logits(ndim=2, classes=4, shape=(2, 7, 6))
    labels = ref.random_labels(ndim=2, classes=4, shape=(2, 7, 6))
    # Class 3 absent from sample 0: the Dice smoothing convention matters there.
    return logits, ref.with_empty_classes(labels, [(0, 3)])


def _torch_weight(weights):
    return peers.torch().tensor(np.asarray(weights, np.float64))


# ---------------------------------------------------------------------------------------
# dice_ce vs MONAI DiceCELoss


DICE_CE_CASES = {
    "defaults": ({}, {}),
    "lambdas_no_background_label_smoothing": (
        {"lambda_dice": 0.3, "lambda_ce": 1.7, "include_background": False, "label_smoothing": 0.1},
        {"lambda_dice": 0.3, "lambda_ce": 1.7, "include_background": False, "label_smoothing": 0.1},
    ),
    "batch_squared_smoothing": (
        {"batch": True, "squared": True, "smooth_nr": 0.0, "smooth_dr": 1.0},
        {"batch": True, "squared_pred": True, "smooth_nr": 0.0, "smooth_dr": 1.0},
    ),
}


@pytest.mark.parametrize("case", sorted(DICE_CE_CASES))
def test_dice_ce_matches_monai(case, data):
    logits, labels = data
    ours, theirs = DICE_CE_CASES[case]
    if "weight" in theirs:
        theirs = dict(theirs, weight=_torch_weight(theirs["weight"]))
    want = peers.monai("DiceCELoss", logits, labels, softmax=True, to_onehot_y=True, **theirs)
    got = peers.jaxseg_value_and_grad(jaxseg.dice_ce, logits, labels, **ours)
    assert_value_and_grad(got, want)


def test_dice_ce_class_weights_match_monai_rescaled(data):
    """Class weights: jaxseg's Dice class mean is sum(w L) / sum(w) (DESIGN); MONAI's
    weighted DiceLoss divides sum(w L) by the entry count instead, so it is jaxseg's Dice
    term times mean(w) (over the classes kept). The CE terms agree (torch weights)."""
    logits, labels = data
    include_background = False  # the Dice weights are then weights[1:], as in MONAI
    weights = np.array([0.5, 1.0, 2.0, 1.5])
    kept = weights[1:]
    options = dict(softmax=True, to_onehot_y=True, include_background=include_background)
    dice = peers.monai("DiceLoss", logits, labels, weight=_torch_weight(kept), **options)
    ce = peers.torch_cross_entropy(logits, labels, weight=weights)
    scale = 1 / kept.mean()
    monai_total = peers.monai(
        "DiceCELoss", logits, labels, weight=_torch_weight(weights), **options
    )
    assert_close(monai_total[0], dice[0] + ce[0])  # MONAI's DiceCELoss is this sum
    got = peers.jaxseg_value_and_grad(
        jaxseg.dice_ce, logits, labels, class_weights=weights.astype(np.float32),
        include_background=include_background,
    )  # fmt: skip
    assert_value_and_grad(got, (scale * dice[0] + ce[0], scale * dice[1] + ce[1]))


def test_dice_ce_dense_labels_match_monai(data):
    logits, labels = data
    dense = ref.dense_labels(labels, 4, "softmax").astype(np.float32)
    want = peers.monai("DiceCELoss", logits, dense, softmax=True)
    assert_value_and_grad(peers.jaxseg_value_and_grad(jaxseg.dice_ce, logits, dense), want)


def test_dice_ce_one_sigmoid_channel_matches_monai():
    """One channel: MONAI pairs the sigmoid Dice with BCEWithLogits, as jaxseg does."""
    logits = ref.random_logits(ndim=2, classes=1, shape=(3, 5, 6))
    labels = ref.random_labels(ndim=2, classes=1, shape=(3, 5, 6))
    want = peers.monai("DiceCELoss", logits, labels, sigmoid=True)
    got = peers.jaxseg_value_and_grad(jaxseg.dice_ce, logits, labels, activation="sigmoid")
    assert_value_and_grad(got, want)


def test_dice_ce_ignore_index_matches_monai_dice_plus_torch_ce(data):
    """MONAI's DiceCELoss has no ignore_index: compose MONAI DiceLoss and torch CE."""
    logits, labels = data
    labels = np.where(ref.random_labels(shape=labels.shape, classes=5, seed=7) == 4, 255, labels)
    dice = peers.monai("DiceLoss", logits, labels, softmax=True, to_onehot_y=True, ignore_index=255)
    ce = peers.torch_cross_entropy(logits, labels, ignore_index=255)
    got = peers.jaxseg_value_and_grad(jaxseg.dice_ce, logits, labels, ignore_index=255)
    assert_value_and_grad(got, (dice[0] + ce[0], dice[1] + ce[1]))


def test_dice_ce_is_the_sum_of_its_terms_with_shared_options(data):
    logits, labels = data
    where = ref.random_labels(shape=labels.shape, classes=2, seed=3).astype(bool)
    options = dict(where=where, ignore_index=2)
    dice_only = dict(include_background=False, batch=True, smooth_nr=0.0)
    total, parts = jaxseg.dice_ce(
        logits, labels, lambda_dice=0.4, lambda_ce=0.6, return_components=True,
        **options, **dice_only,
    )  # fmt: skip
    dice = jaxseg.dice_loss(logits, labels, **options, **dice_only)
    ce = jaxseg.cross_entropy(logits, labels, **options)  # CE covers every class
    assert_close(parts["dice"], dice)
    assert_close(parts["ce"], ce)
    assert_close(total, 0.4 * dice + 0.6 * ce)
    assert total.dtype == jnp.float32 and total.shape == ()


# ---------------------------------------------------------------------------------------
# dice_focal vs MONAI DiceLoss + FocalLoss


@pytest.mark.parametrize(
    "options",
    [{}, {"gamma": 0.5, "alpha": 0.25, "include_background": False, "lambda_focal": 2.0}],
    ids=["defaults", "gamma_alpha_no_background_dice_lambda"],
)
def test_dice_focal_softmax_matches_monai(options, data):
    """MONAI's softmax focal mean divides by B*C*HW, jaxseg's by B*HW: scale by C."""
    logits, labels = data
    num_classes = logits.shape[-1]
    dice = peers.monai(
        "DiceLoss", logits, labels, softmax=True, to_onehot_y=True,
        include_background=options.get("include_background", True),
    )  # fmt: skip
    focal = peers.monai(
        "FocalLoss", logits, labels, use_softmax=True, to_onehot_y=True,
        gamma=options.get("gamma", 2.0), alpha=options.get("alpha"),
    )  # fmt: skip
    scale = num_classes * options.get("lambda_focal", 1.0)
    want = (dice[0] + scale * focal[0], dice[1] + scale * focal[1])
    got = peers.jaxseg_value_and_grad(jaxseg.dice_focal, logits, labels, **options)
    assert_value_and_grad(got, want)


def test_dice_focal_sigmoid_matches_monai_dice_focal(data):
    """With activation="sigmoid" both focal terms are sigmoid: MONAI's DiceFocalLoss agrees."""
    logits, labels = data
    dense = ref.dense_labels(labels, 4, "sigmoid").astype(np.float32)
    want = peers.monai("DiceFocalLoss", logits, dense, sigmoid=True, gamma=1.5, lambda_dice=0.7)
    got = peers.jaxseg_value_and_grad(
        jaxseg.dice_focal, logits, dense, activation="sigmoid", gamma=1.5, lambda_dice=0.7
    )
    assert_value_and_grad(got, want)


def test_dice_focal_differs_from_monai_dice_focal_with_softmax(data):
    """MONAI's DiceFocalLoss(softmax=True) uses a sigmoid focal term: jaxseg does not.
    With gamma=0 jaxseg's softmax focal term is the softmax CE: dice_focal is dice_ce."""
    logits, labels = data
    monai_value, _ = peers.monai(
        "DiceFocalLoss", logits, labels, softmax=True, to_onehot_y=True, gamma=0.0
    )
    ours = peers.jaxseg_value_and_grad(jaxseg.dice_focal, logits, labels, gamma=0.0)
    assert abs(ours[0] - monai_value) > 1e-2
    dice_ce = peers.jaxseg_value_and_grad(jaxseg.dice_ce, logits, labels)
    assert_close(ours[0], dice_ce[0])
    assert_close(ours[1], dice_ce[1])


# ---------------------------------------------------------------------------------------
# bce_log_dice vs a float64 reference


def bce_log_dice_reference(logits, labels, *, ignore_index=None, where=None, batch=False):
    """Binary CE (mean over valid pixel-channels) and -log(mean Dice), sigmoid, float64."""
    x = np.asarray(logits, np.float64)
    num_channels = x.shape[-1]
    y = ref.dense_labels(labels, num_channels, "sigmoid")
    v = ref.valid_mask(labels, num_channels, "sigmoid", ignore_index, where)[..., None]
    v = np.broadcast_to(v, x.shape).astype(np.float64)
    bce = -(y * ref.log_sigmoid(x) + (1 - y) * ref.log_sigmoid(-x))
    bce = (bce * v).sum() / v.sum()
    p = ref.sigmoid(x) * v
    y = y * v
    axes = tuple(range(0 if batch else 1, x.ndim - 1))
    tp, ps, ys = (p * y).sum(axes), p.sum(axes), y.sum(axes)
    dice = (2 * tp + 1e-5) / (ps + ys + 1e-5)
    return bce, -np.log(dice.mean())


@pytest.mark.parametrize(
    "options",
    [{}, {"ignore_index": 2, "batch": True}, {"where": True, "lambda_dice": 0.5}],
    ids=["defaults", "ignore_index_batch", "where_lambda"],
)
def test_bce_log_dice_matches_reference(options):
    logits = ref.random_logits(ndim=2, classes=1, shape=(3, 6, 5))
    labels = ref.random_labels(ndim=2, classes=3, shape=(3, 6, 5))  # 2 is ignored or excluded
    if options.get("where"):
        options = dict(options, where=labels != 2)
    lambda_dice = options.get("lambda_dice", 1.0)
    reference_options = {k: v for k, v in options.items() if k != "lambda_dice"}
    bce, log_dice = bce_log_dice_reference(logits, labels, **reference_options)
    total, parts = jaxseg.bce_log_dice(logits, labels, return_components=True, **options)
    assert_close(parts["ce"], bce)
    assert_close(parts["log_dice"], log_dice)
    assert_close(total, bce + lambda_dice * log_dice)


def test_bce_log_dice_multichannel_and_gradient():
    """Several sigmoid channels (one-hot of the integer label), 3D; the gradient against
    central differences of the float64 reference."""
    logits = ref.random_logits(ndim=3, classes=3, shape=(2, 4, 3, 2))
    labels = ref.random_labels(ndim=3, classes=3, shape=(2, 4, 3, 2))
    value, grad = peers.jaxseg_value_and_grad(jaxseg.bce_log_dice, logits, labels, ignore_index=0)
    reference = lambda x: sum(bce_log_dice_reference(x, labels, ignore_index=0))
    assert_close(value, reference(logits))
    x = logits.astype(np.float64)
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = 1e-6
        numeric[i] = (reference(x + step) - reference(x - step)) / 2e-6
    assert_close(grad, numeric, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Transformations and errors


def test_compound_under_jit_grad_vmap(data):
    """vmap over a leading axis (e.g. an ensemble) equals one call per slice, under jit."""
    logits, labels = data
    loss = jaxseg.dice_ce
    stacked_x, stacked_y = np.stack([logits, logits[::-1]]), np.stack([labels, labels[::-1]])
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(loss)))(stacked_x, stacked_y)
    for i in range(2):
        value, grad = peers.jaxseg_value_and_grad(loss, stacked_x[i], stacked_y[i])
        assert_close(values[i], value)
        assert_close(grads[i], grad)


def test_traced_lambdas_do_not_recompile(data):
    logits, labels = data
    traces = []

    @jax.jit
    def step(lam):
        traces.append(None)
        return jaxseg.dice_ce(logits, labels, lambda_dice=lam, lambda_ce=1 - lam)

    values = [step(jnp.float32(lam)) for lam in (0.0, 0.5, 1.0)]
    assert len(traces) == 1
    assert_close(values[0], jaxseg.cross_entropy(logits, labels))
    assert_close(values[2], jaxseg.dice_loss(logits, labels))


def test_with_components_for_has_aux(data):
    logits, labels = data
    (total, parts), grad = jax.jit(
        jax.value_and_grad(jaxseg.with_components(jaxseg.dice_focal), has_aux=True)
    )(logits, labels)
    assert sorted(parts) == ["dice", "focal"]
    assert_close(total, parts["dice"] + parts["focal"])
    assert_close(grad, peers.jaxseg_value_and_grad(jaxseg.dice_focal, logits, labels)[1])


def test_all_excluded_batch_is_finite_with_zero_gradient(data):
    logits, labels = data
    where = np.zeros(labels.shape, bool)
    value, grad = peers.jaxseg_value_and_grad(jaxseg.dice_focal, logits, labels, where=where)
    assert np.isfinite(value)
    assert_close(grad, np.zeros_like(logits))


def test_errors(data):
    logits, labels = data
    with pytest.raises(ValueError, match="lambda_dice"):
        jaxseg.dice_ce(logits, labels, lambda_dice=-1.0)
    with pytest.raises(ValueError, match="activation"):
        jaxseg.dice_ce(logits, labels, activation=None)
    with pytest.raises(ValueError, match="labels"):
        jaxseg.dice_focal(logits, labels[:, :-1])
    with pytest.raises(TypeError):
        jaxseg.dice_ce(logits, labels, gamma=2.0)
