"""The generalized Wasserstein Dice loss: Dice with a distance between classes.

Per pixel, the Wasserstein distance between the predicted class distribution ``p_i``
and the label ``y_i`` under a ground distance ``M`` between classes (for a one-hot label
of class ``l`` it is the expected distance ``sum_c M[l, c] p_ic``: mistaking a tumour
sub-class for another costs less than mistaking it for background). The loss is a
Dice ratio of these per-pixel errors, one value per sample.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import _arguments, _checks, _overlap, _reduce

AxisName = str | tuple[str, ...] | None
ArrayLike = jax.typing.ArrayLike

WEIGHTING_MODES = ("default", "GDL")


def _dense(labels: jax.Array, num_classes: int, dtype: Any) -> jax.Array:
    if _checks.is_integer_labels(labels):
        classes = jnp.arange(num_classes).reshape((1,) * labels.ndim + (num_classes,))
        return (labels[..., None] == classes).astype(dtype)
    return labels.astype(dtype)


@functools.partial(
    jax.jit,
    static_argnames=("weighting_mode", "activation", "ignore_index", "reduction", "axis_name"),
)
def _generalized_wasserstein_dice_loss(
    logits,
    labels,
    distance_matrix,
    where,
    smooth_nr,
    smooth_dr,
    *,
    weighting_mode,
    activation,
    ignore_index,
    reduction,
    axis_name,
):
    inputs = _checks.prepare(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    probs, valid = inputs.probs, inputs.valid
    num_classes = probs.shape[-1]
    y = _dense(inputs.labels, num_classes, probs.dtype)
    y = jnp.where(valid[..., None], y, 0)
    m = distance_matrix.astype(probs.dtype)
    largest = jnp.max(m)
    m = m / jnp.where(largest > 0, largest, 1)  # MONAI scales the largest distance to 1
    # Per pixel: y^T M p, the expected distance from the label class (soft labels mix rows).
    wasserstein = jnp.sum((y @ m) * probs, axis=-1)
    wasserstein = jnp.where(valid, wasserstein, 0)
    spatial = tuple(range(1, probs.ndim - 1))
    if weighting_mode == "GDL":
        volumes = jnp.sum(y, axis=spatial)  # (batch, classes)
        alpha = 1 / (volumes + 1)
    else:
        foreground = (jnp.arange(num_classes) > 0).astype(probs.dtype)
        alpha = jnp.broadcast_to(foreground[None], (probs.shape[0], num_classes))
    alpha_shape = (probs.shape[0],) + (1,) * len(spatial) + (num_classes,)
    alpha_y = jnp.sum(y * alpha.reshape(alpha_shape), axis=-1)  # 0 at excluded pixels
    true_positives = jnp.sum(alpha_y * (1 - wasserstein), axis=spatial)
    if weighting_mode == "GDL":
        denominator = jnp.sum(alpha_y * (2 - wasserstein), axis=spatial)
    else:
        denominator = 2 * true_positives + jnp.sum(wasserstein, axis=spatial)
    loss = 1 - _overlap.ratio(2 * true_positives + smooth_nr, denominator + smooth_dr)
    return _reduce.weighted_reduce(loss, jnp.ones_like(loss), reduction, axis_name)


@_arguments.normalised
def generalized_wasserstein_dice_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    distance_matrix: ArrayLike,
    *,
    weighting_mode: str = "default",
    activation: str | None = "softmax",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
) -> jax.Array:
    r"""Generalized Wasserstein Dice loss (Fidon et al. 2017), one value per sample.

    With ``M`` the distance matrix scaled to a largest entry of 1, the per-pixel
    Wasserstein error :math:`W_i = y_i^\top M p_i` (``sum_c M[l_i, c] p_ic`` for label
    ``l_i``), and :math:`\alpha_{l}` a weight of the label class:

    .. math::
        TP_b = \sum_i \alpha_{l_i} (1 - W_i), \qquad
        L_b = 1 - \frac{2\,TP_b + s_{nr}}{D_b + s_{dr}}

    ``weighting_mode="default"`` (the paper): :math:`\alpha = 0` for the background
    (class 0) and 1 for the other classes, :math:`D_b = 2 TP_b + \sum_i W_i`.
    ``"GDL"`` (Tilborghs et al. 2020): :math:`\alpha_c = 1 / (V_{bc} + 1)` with
    :math:`V_{bc}` the label volume of class ``c`` in the sample, and
    :math:`D_b = \sum_i \alpha_{l_i} (2 - W_i)`. Sums run over the valid pixels.
    MONAI ``GeneralizedWassersteinDiceLoss(dist_matrix, weighting_mode, reduction,
    smooth_nr, smooth_dr)`` on channels-first copies gives the same values and
    gradients. ``distance_matrix`` is traced (its gradient is exact).

    Args:
      logits: ``(batch, *spatial, classes)`` float logits.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, classes)``
        (soft labels mix the rows of ``M``).
      distance_matrix: ``(classes, classes)`` non-negative distances between classes
        (zero diagonal); divided by its largest entry.
      weighting_mode: ``"default"`` or ``"GDL"``.
      activation: ``"softmax"`` or ``None`` (probabilities given): the Wasserstein
        distance needs a distribution over classes.
      smooth_nr: added to the numerator.
      smooth_dr: added to the denominator.
      ignore_index: integer label whose pixels are excluded.
      where: boolean ``(batch, *spatial)``; pixels where False are excluded.
      reduction: ``"mean"`` over samples, ``"sum"``, or ``"none"``: ``(batch,)``.
      axis_name: mapped axis name(s): the mean over samples becomes global.

    Returns:
      A float32 scalar, or ``(batch,)`` with ``reduction="none"``.

    Examples:
      >>> import jax.numpy as jnp, jaxseg
      >>> m = jnp.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]])
      >>> logits = 1000 * jnp.eye(3)[None]; labels = jnp.array([[0, 1, 2]])
      >>> jaxseg.generalized_wasserstein_dice_loss(logits, labels, m)
      Array(0., dtype=float32)

    References:
      Fidon, Li, Garcia-Peraza-Herrera, Ekanayake, Kitchen, Ourselin, Vercauteren.
      Generalised Wasserstein Dice Score for Imbalanced Multi-class Segmentation using
      Holistic Convolutional Networks. BrainLes 2017.
      Tilborghs et al. Comparative study of deep learning methods for the automatic
      segmentation of lung, lesion and lesion type in CT scans of COVID-19 patients.
      arXiv:2007.15546, 2020.
    """
    _checks.check_option("activation", activation, ("softmax", None))
    _checks.check_logits_labels(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    _checks.check_option("weighting_mode", weighting_mode, WEIGHTING_MODES)
    _checks.check_option("reduction", reduction, _checks.REDUCTIONS)
    num_classes = np.shape(logits)[-1]
    if num_classes < 2:
        raise ValueError(
            "the Wasserstein Dice loss needs a distribution over at least 2 classes on the "
            f"last axis of `logits`; got shape {np.shape(logits)}."
        )
    if np.shape(distance_matrix) != (num_classes, num_classes):
        raise ValueError(
            f"`distance_matrix` must have shape ({num_classes}, {num_classes}), one row and "
            f"column per class of `logits`; got shape {np.shape(distance_matrix)}."
        )
    _checks.check_nonnegative("distance_matrix", distance_matrix)
    return _generalized_wasserstein_dice_loss(
        jnp.asarray(logits),
        jnp.asarray(labels),
        jnp.asarray(distance_matrix),
        None if where is None else jnp.asarray(where),
        smooth_nr,
        smooth_dr,
        weighting_mode=weighting_mode,
        activation=activation,
        ignore_index=ignore_index,
        reduction=reduction,
        axis_name=axis_name,
    )
