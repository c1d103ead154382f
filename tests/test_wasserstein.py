"""Tests of jaxseg._wasserstein: the generalized Wasserstein Dice loss.

Oracles: MONAI 1.6 ``GeneralizedWassersteinDiceLoss`` (values and gradients on
channels-first float64 copies, both weighting modes), MONAI's published example, and a
float64 NumPy reference written from Fidon et al.'s formula with per-pixel loops over
the label classes.
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


def distance_matrix(classes, seed=0, scale=1.0):
    """A symmetric matrix with zero diagonal and background at the largest distance."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.2, 0.9, (classes, classes))
    m = (m + m.T) / 2
    m[0, :] = m[:, 0] = 1.0
    np.fill_diagonal(m, 0.0)
    return (scale * m).astype(np.float32)


def gwdl_reference(
    logits,
    labels,
    m,
    *,
    weighting_mode="default",
    activation="softmax",
    smooth_nr=1e-5,
    smooth_dr=1e-5,
    ignore_index=None,
    where=None,
    reduction="mean",
):
    num_classes = np.shape(logits)[-1]
    p = ref.activate(logits, activation)
    y = ref.dense_labels(labels, num_classes, activation)
    v = ref.valid_mask(labels, num_classes, activation, ignore_index, where)
    m = np.asarray(m, np.float64)
    m = m / m.max()
    losses = []
    for b in range(p.shape[0]):
        pb = p[b].reshape(-1, num_classes)
        yb = y[b].reshape(-1, num_classes)
        vb = v[b].reshape(-1)
        volumes = (yb * vb[:, None]).sum(0)
        if weighting_mode == "GDL":
            alpha = 1 / (volumes + 1)
        else:
            alpha = np.array([0.0] + [1.0] * (num_classes - 1))
        tp = denominator = error = 0.0
        for i in range(pb.shape[0]):
            if not vb[i]:
                continue
            w = sum(yb[i, k] * (m[k] @ pb[i]) for k in range(num_classes))
            a = float(yb[i] @ alpha)
            tp += a * (1 - w)
            denominator += a * (2 - w)
            error += w
        if weighting_mode != "GDL":
            denominator = 2 * tp + error
        losses.append(1 - (2 * tp + smooth_nr) / (denominator + smooth_dr))
    losses = np.array(losses)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


# case: (ndim, classes, jaxseg options (MONAI's, minus the activation))
MONAI_CASES = {
    "2d-3-classes": (2, 3, {}),
    "2d-3-classes-gdl": (2, 3, {"weighting_mode": "GDL"}),
    "3d-5-classes": (3, 5, {"reduction": "sum"}),
    "3d-4-classes-gdl-none": (3, 4, {"weighting_mode": "GDL", "reduction": "none"}),
    "3d-2-classes-smoothing": (3, 2, {"smooth_nr": 0.5, "smooth_dr": 2.0}),
}


@peers.family
def monai_family():
    built = {}
    for case, (ndim, classes, options) in MONAI_CASES.items():
        x = ref.random_logits(ndim, classes, seed=ndim + classes)
        y = ref.random_labels(ndim, classes, seed=ndim * classes)
        m = distance_matrix(classes, seed=classes, scale=2.0)  # scaled back by the max
        cotangent = None
        if options.get("reduction") == "none":
            cotangent = np.random.default_rng(7).uniform(0.5, 1.5, x.shape[:1]).astype(np.float32)
        request = peers.Request(
            jaxseg.generalized_wasserstein_dice_loss,
            x,
            y,
            dict(options, distance_matrix=m),
            cotangent,
        )
        built[case] = (request, (x, y, m, cotangent))
    return built


@pytest.mark.parametrize("case", list(MONAI_CASES))
def test_gwdl_matches_monai_and_reference(case):
    _, _, options = MONAI_CASES[case]
    (x, y, m, cotangent), (value, grad) = monai_family()[case]
    m_value, m_grad = peers.monai(
        "GeneralizedWassersteinDiceLoss",
        x,
        y,
        cotangent=cotangent,
        dist_matrix=m.astype(np.float64),
        **options,
    )
    assert np.all(np.isfinite(grad))
    assert_close(value, m_value.reshape(value.shape))
    assert_close(grad, m_grad)
    assert_close(value, gwdl_reference(x, y, m, **options))


def test_monai_published_example_is_zero():
    m = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]], np.float32)
    logits = 1000 * np.eye(3, dtype=np.float32)[None]
    labels = np.array([[0, 1, 2]], np.int32)
    for mode in ("default", "GDL"):
        assert_close(
            jaxseg.generalized_wasserstein_dice_loss(logits, labels, m, weighting_mode=mode), 0.0
        )


@pytest.mark.parametrize("mode", ["default", "GDL"])
def test_masks_soft_labels_and_probabilities_match_reference(mode):
    x = ref.random_logits(2, 4, seed=41)
    y = ref.random_labels(2, 4, seed=42)
    m = distance_matrix(4, seed=43)
    where = np.random.default_rng(44).random(y.shape) > 0.3
    got = jaxseg.generalized_wasserstein_dice_loss(
        x, y, m, weighting_mode=mode, ignore_index=2, where=where
    )
    assert_close(got, gwdl_reference(x, y, m, weighting_mode=mode, ignore_index=2, where=where))
    soft = ref.soft_labels(2, 4, seed=45)
    probs = ref.softmax(x).astype(np.float32)
    got = jaxseg.generalized_wasserstein_dice_loss(
        probs, soft, m, weighting_mode=mode, activation=None
    )
    assert_close(got, gwdl_reference(x, soft, m, weighting_mode=mode))


@pytest.mark.parametrize("mode", ["default", "GDL"])
def test_distance_matrix_gradient_matches_finite_differences(mode):
    x = ref.random_logits(2, 3, seed=51, shape=(2, 4, 3))
    y = ref.random_labels(2, 3, seed=52, shape=(2, 4, 3))
    m = np.random.default_rng(53).uniform(0.2, 0.9, (3, 3))
    np.fill_diagonal(m, 0.0)
    m[1, 2] = 1.5  # a unique largest entry: the scaling by the max is differentiable
    grad = jax.grad(
        lambda m: jaxseg.generalized_wasserstein_dice_loss(x, y, m, weighting_mode=mode)
    )(jnp.asarray(m, jnp.float32))
    expected = np.zeros_like(m)
    for index in np.ndindex(m.shape):
        step = np.zeros_like(m)
        step[index] = 1e-6
        up = gwdl_reference(x, y, m + step, weighting_mode=mode)
        down = gwdl_reference(x, y, m - step, weighting_mode=mode)
        expected[index] = (up - down) / 2e-6
    assert_close(grad, expected, rtol=1e-4, atol=1e-5)


def test_bad_distance_matrix_raises():
    x = np.zeros((1, 4, 3), np.float32)
    y = np.zeros((1, 4), np.int32)
    with pytest.raises(ValueError, match="distance_matrix"):
        jaxseg.generalized_wasserstein_dice_loss(x, y, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="distance_matrix"):
        jaxseg.generalized_wasserstein_dice_loss(x, y, -np.ones((3, 3)))
    with pytest.raises(ValueError, match="weighting_mode"):
        jaxseg.generalized_wasserstein_dice_loss(x, y, np.ones((3, 3)), weighting_mode="gdl")
    with pytest.raises(ValueError, match="at least 2 classes"):
        jaxseg.generalized_wasserstein_dice_loss(x[..., :1], y, np.ones((1, 1)), activation=None)
    with pytest.raises(ValueError, match="activation"):
        jaxseg.generalized_wasserstein_dice_loss(x, y, np.ones((3, 3)), activation="sigmoid")


def test_combinators_compose_gwdl():
    x = ref.random_logits(2, 3, seed=61)
    y = ref.random_labels(2, 3, seed=62)
    m = distance_matrix(3, seed=63)
    combined = jaxseg.combine(jaxseg.dice_loss, jaxseg.generalized_wasserstein_dice_loss)
    total, parts = jaxseg.with_components(combined)(x, y, distance_matrix=m)
    expected = gwdl_reference(x, y, m)
    assert_close(parts["generalized_wasserstein_dice_loss"], expected)
    assert_close(total, expected + ref.overlap_loss("dice", x, y, smooth_nr=1e-5, smooth_dr=1e-5))


def test_axis_name_mean_equals_whole_batch():
    x = ref.random_logits(2, 3, seed=71, shape=(4, 5, 6))
    y = ref.random_labels(2, 3, seed=72, shape=(4, 5, 6))
    m = distance_matrix(3, seed=73)
    per_device = jax.vmap(
        lambda x, y: jaxseg.generalized_wasserstein_dice_loss(x, y, m, axis_name="d"),
        axis_name="d",
    )(x.reshape(2, 2, 5, 6, 3), y.reshape(2, 2, 5, 6))
    assert_close(per_device, np.full(2, gwdl_reference(x, y, m)))
