"""Correlation losses: the Matthews correlation coefficient (MCC) loss.

A map of the statistics core (:mod:`jaxseg._stats`) like the overlap losses, with the
true negatives ``tn = total - tp - fp - fn`` (the valid pixels that neither the
prediction nor the label puts in the class) as its fourth entry. Everything that the
overlap losses share (``batch``, ``include_background``, ``class_weights``,
``ignore_index``/``where``, ``axis_name``, reductions, the fused softmax pass) comes
from :func:`jaxseg._overlap._call`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxseg import _arguments, _overlap
from jaxseg._stats import OverlapStats

AxisName = str | tuple[str, ...] | None
ArrayLike = jax.typing.ArrayLike


def mcc_score(stats: OverlapStats, smooth_nr: Any, smooth_dr: Any) -> jax.Array:
    r"""Soft MCC ``(tp tn - fp fn + s_nr) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn) + s_dr)``.

    The product of four sums of up to ``n`` valid pixels reaches ``n^4``, which
    overflows float32 for ``n`` above about ``4e9`` (a batch of large volumes with
    ``batch=True``): numerator and product are scaled by ``n^2`` and ``n^4`` first, the
    same value in exact arithmetic. A zero denominator (``s_dr = 0`` and a prediction or
    label that fills or leaves the whole image) gives MCC 0 instead of 0/0.
    """
    tp, fp, fn, tn = stats.tp, stats.fp, stats.fn, stats.tn
    n = jnp.maximum(stats.total, 1)
    numerator = (tp / n) * (tn / n) - (fp / n) * (fn / n) + smooth_nr / (n * n)
    product = ((tp + fp) / n) * ((tp + fn) / n) * ((tn + fp) / n) * ((tn + fn) / n)
    denominator_sq = product + smooth_dr / (n * n) / (n * n)
    positive = denominator_sq > 0
    return jnp.where(positive, numerator / jnp.sqrt(jnp.where(positive, denominator_sq, 1)), 0)


def _mcc_loss_score(stats, *, smooth_nr, smooth_dr):
    # MONAI: a perfect prediction (fp = fn = 0) scores 0, where the smoothed ratio would
    # give about 0 MCC when tp or tn is 0 (one class fills the image).
    perfect = (stats.fp == 0) & (stats.fn == 0)
    return jnp.where(perfect, 0, 1 - mcc_score(stats, smooth_nr, smooth_dr))


@_arguments.normalised
def mcc_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    activation: str | None = "softmax",
    smooth_nr: float = 0.0,
    smooth_dr: float = 1e-5,
    include_background: bool = True,
    batch: bool = False,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
) -> jax.Array:
    r"""Matthews correlation coefficient loss (Abhishek & Hamarneh 2021), per (sample, class).

    .. math::
        L_{bc} = 1 - \frac{tp\,tn - fp\,fn + s_{nr}}
        {\sqrt{(tp + fp)(tp + fn)(tn + fp)(tn + fn) + s_{dr}}}

    with the soft confusion entries of :func:`jaxseg.overlap_stats` over the valid
    pixels: ``tp = sum p y``, ``fp = sum p (1 - y)``, ``fn = sum (1 - p) y`` and
    ``tn = sum (1 - p)(1 - y)``. Unlike Dice it rewards the true negatives, so an
    empty class predicted empty scores well through ``tn``. Where ``fp = fn = 0`` the
    loss is 0 (MONAI). ``"mean"`` returns :math:`\sum_{bc} w_c L_{bc} / \sum_{bc} w_c`.
    MONAI ``MCCLoss(smooth_nr, smooth_dr, batch, include_background)`` on
    channels-first copies gives the same values and gradients.

    Args:
      logits: ``(batch, *spatial, classes)`` float logits.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, classes)``.
      activation: ``"softmax"``, ``"sigmoid"`` (one channel: a binary mask) or ``None``.
      smooth_nr: added to the numerator.
      smooth_dr: added under the square root of the denominator.
      include_background: False drops class 0.
      batch: sum the statistics over the batch (and ``axis_name``) first: one MCC per
        class (smp's ``MCCLoss`` is the binary case of this).
      class_weights: ``(classes,)`` non-negative weights of the class mean.
      ignore_index: integer label whose pixels are excluded (from ``tn`` too).
      where: boolean ``(batch, *spatial)``; pixels where False are excluded.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(batch, classes')``, or
        ``(classes',)`` with ``batch``).
      axis_name: mapped axis name(s) inside ``shard_map``/``pmap``.

    Returns:
      A float32 scalar, or the ``"none"`` values.

    Examples:
      >>> import jax.numpy as jnp, jaxseg
      >>> probs = jnp.array([[[0.9], [0.2], [0.1], [0.8]]]); labels = jnp.array([[1, 0, 0, 1]])
      >>> round(float(jaxseg.mcc_loss(probs, labels, activation=None)), 4)
      0.3

    References:
      Abhishek, Hamarneh. Matthews Correlation Coefficient Loss for Deep Convolutional
      Networks: Application to Skin Lesion Segmentation. ISBI 2021.
      Matthews. Comparison of the predicted and observed secondary structure of T4 phage
      lysozyme. Biochimica et Biophysica Acta 1975.
    """
    return _overlap._call(
        _mcc_loss_score,
        logits,
        labels,
        {},
        activation=activation,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        include_background=include_background,
        batch=batch,
        class_weights=class_weights,
        ignore_index=ignore_index,
        where=where,
        reduction=reduction,
        axis_name=axis_name,
        squared=False,
        soft_label=False,
        empty="smooth",
    )
