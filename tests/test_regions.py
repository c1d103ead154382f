"""Tests of jaxseg._regions: region masks for region-based (sigmoid) training.

Oracles: MONAI 1.6 ``ConvertToMultiChannelBasedOnBratsClasses`` (BraTS 2018-2022 and
2023 labels), ``numpy.isin`` per region (nnU-Net's ``ConvertSegmentationToRegions``),
and MONAI ``DiceLoss``/``MCCLoss(sigmoid=True)`` and ``DiceMetric`` on channels-first
region masks, to show the losses and metrics at work on regions.
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
from jaxseg import metrics


def brats_labels(shape, et_label, seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([0, 1, 2, et_label]), size=shape).astype(np.int32)


@pytest.mark.parametrize(("et_label", "shape"), [(4, (2, 6, 7)), (3, (2, 5, 4, 3))])
def test_brats_regions_match_monai(et_label, shape):
    transforms = pytest.importorskip("monai.transforms")
    labels = brats_labels(shape, et_label)
    got = np.asarray(jaxseg.regions_from_labels(labels, jaxseg.brats_regions(et_label)))
    convert = transforms.ConvertToMultiChannelBasedOnBratsClasses(et_label=et_label)
    expected = np.stack([convert(sample) for sample in labels])  # (batch, 3, *spatial)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, peers.channels_last(expected).astype(np.float32))


def test_nnunet_style_regions_match_isin():
    # nnU-Net's BraTS regions after its label conversion: whole tumour, core, enhancing.
    regions = [(1, 2, 3), (2, 3), 3]
    labels = brats_labels((2, 5, 4, 3), 3, seed=1)
    got = np.asarray(jaxseg.regions_from_labels(labels, regions, dtype=bool))
    expected = np.stack([np.isin(labels, np.atleast_1d(r)) for r in regions], axis=-1)
    np.testing.assert_array_equal(got, expected)


def test_bad_regions_raise():
    labels = np.zeros((1, 4), np.int32)
    for bad in (3, [], [()], [(1.5,)], ["a"], [(True,)]):
        with pytest.raises(ValueError, match="regions"):
            jaxseg.regions_from_labels(labels, bad)
    with pytest.raises(ValueError, match="labels"):
        jaxseg.regions_from_labels(np.zeros((1, 4), np.float32), [1])
    with pytest.raises(ValueError, match="et_label"):
        jaxseg.brats_regions(2)


def _region_case(ndim, seed):
    shape = {2: (2, 6, 7), 3: (2, 5, 4, 3)}[ndim]
    labels = brats_labels(shape, 4, seed=seed)
    masks = np.asarray(jaxseg.regions_from_labels(labels, jaxseg.brats_regions()))
    logits = ref.random_logits(classes=3, seed=seed + 1, shape=shape)
    return logits, labels, masks


LOSS_CASES = {
    "dice-2d": (jaxseg.dice_loss, "DiceLoss", 2, {}),
    "dice-3d-batch": (jaxseg.dice_loss, "DiceLoss", 3, {"batch": True}),
    "mcc-3d": (jaxseg.mcc_loss, "MCCLoss", 3, {}),
}


@peers.family
def loss_family():
    built = {}
    for case, (loss, _, ndim, options) in LOSS_CASES.items():
        logits, _, masks = _region_case(ndim, seed=ndim)
        request = peers.Request(loss, logits, masks, dict(options, activation="sigmoid"))
        built[case] = (request, (logits, masks))
    return built


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_sigmoid_losses_on_regions_match_monai(case):
    _, monai_name, _, options = LOSS_CASES[case]
    (logits, masks), (value, grad) = loss_family()[case]
    m_value, m_grad = peers.monai(monai_name, logits, masks, sigmoid=True, **options)
    assert_close(value, m_value)
    assert_close(grad, m_grad)


def region_dice(logits, masks):
    """Dice of each region's thresholded channel: ``(batch, regions)``."""
    predictions = (jax.nn.sigmoid(logits) > 0.5).astype(jnp.int32)

    def one_region(p, y):
        return metrics.dice_score(p, y, 2, include_background=False)[:, 0]

    return jax.vmap(one_region, in_axes=-1, out_axes=-1)(predictions, masks.astype(jnp.int32))


@pytest.mark.parametrize("ndim", [2, 3])
def test_metrics_on_regions_match_monai_dice_metric(ndim):
    torch = peers.torch()
    monai_metrics = pytest.importorskip("monai.metrics")
    logits, _, masks = _region_case(ndim, seed=10 + ndim)
    got = np.asarray(region_dice(jnp.asarray(logits), jnp.asarray(masks)))
    binary = (ref.sigmoid(logits) > 0.5).astype(np.float32)
    metric = monai_metrics.DiceMetric(include_background=True, reduction="none")
    expected = metric(
        torch.tensor(peers.channels_first(binary)), torch.tensor(peers.channels_first(masks))
    ).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, equal_nan=True)


def test_region_training_step_is_differentiable():
    logits, labels, _ = _region_case(2, seed=20)
    loss = jaxseg.combine(jaxseg.dice_loss, jaxseg.cross_entropy)

    def step(x):
        masks = jaxseg.regions_from_labels(labels, jaxseg.brats_regions())
        return loss(x, masks, activation="sigmoid")

    value, grad = jax.value_and_grad(step)(jnp.asarray(logits))
    masks = np.asarray(jaxseg.regions_from_labels(labels, jaxseg.brats_regions()))
    dice = ref.overlap_loss(
        "dice", logits, masks, activation="sigmoid", smooth_nr=1e-5, smooth_dr=1e-5
    )
    assert_close(value, dice + ref.cross_entropy(logits, masks, activation="sigmoid"))
    assert np.all(np.isfinite(grad))
