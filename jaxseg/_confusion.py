r"""Per-sample scores of confusion counts: the confusion family, F-beta, generalized Dice, volume.

The counts of each (sample, class), true positives :math:`tp`, false positives
:math:`fp`, true negatives :math:`tn` and false negatives :math:`fn`, come from the
statistics core (:func:`jaxseg._stats.compute_stats`, exact int32 counts of hard maps).
The family's formulas, names and MONAI aliases are in :mod:`jaxseg._confusion_formulas`,
which the dataset-level scores of a :class:`jaxseg.metrics.MetricState`
(``compute(state, metrics=...)``) use as well.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxseg import _arguments, _checks, _confusion_formulas, _distance, _metrics
from jaxseg._confusion_formulas import CONFUSION_METRICS
from jaxseg._stats import OverlapStats

ArrayLike = jax.typing.ArrayLike

_WEIGHT_TYPES = ("square", "simple", "uniform")


def _float_counts(stats: OverlapStats) -> tuple[jax.Array, ...]:
    tp, fp, fn = (jnp.asarray(x, jnp.float32) for x in stats[:3])
    tn = jnp.asarray(stats.tn, jnp.float32)
    return tp, fp, tn, fn


# ------------------------------------------------------------------ batch scores


@functools.partial(
    jax.jit, static_argnames=("names", "num_classes", "include_background", "ignore_index")
)
def _batch_scores(
    predictions, labels, where, beta, *, names, num_classes, include_background, ignore_index
):
    stats = _metrics._class_stats(predictions, labels, where, num_classes, ignore_index)
    scores = _confusion_formulas.scores_of_counts(*_float_counts(stats), names, beta)
    return scores if include_background else {k: v[:, 1:] for k, v in scores.items()}


@_arguments.normalised
def confusion_metrics(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    metrics: str | Sequence[str] = CONFUSION_METRICS,
    beta: float | jax.Array = 1.0,
    include_background: bool = True,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
) -> dict[str, jax.Array]:
    r"""Confusion-matrix metrics of hard predictions, per sample and class.

    Each sample's counts :math:`tp, fp, tn, fn` of each class (one class against the
    rest) give the metrics of :data:`CONFUSION_METRICS` (formulas in
    :mod:`jaxseg._confusion_formulas`), e.g.

    .. math::
        \mathrm{MCC} = \frac{tp\,tn - fp\,fn}
            {\sqrt{(tp + fp)(tp + fn)(tn + fp)(tn + fn)}},\qquad
        F_\beta = \frac{(1 + \beta^2)\,tp}{(1 + \beta^2)\,tp + \beta^2 fn + fp}

    Equals MONAI ``ConfusionMatrixMetric(metric_name=name, compute_sample=True,
    reduction="none", include_background=...)`` (and ``FBetaScore`` for
    ``"fbeta_score"``) on one-hot channels-first copies. For dataset-level scores (MONAI's
    ``compute_sample=False``: the metric of the summed counts) accumulate a
    :func:`metric_state` and call ``compute(state, metrics=...)``.

    Pixels are counted as in :func:`dice_score`: ``where`` False, a label equal to
    ``ignore_index`` or out of ``[0, C)`` leaves the pixel out of every count; a
    prediction out of range is a miss for the label's class.

    Args:
      predictions: integer (or boolean) class map ``(batch, *spatial)``, 1 to 3 spatial
        axes.
      labels: integer class map of the same shape.
      num_classes: the number of classes ``C``, background included (static).
      metrics: a name or a sequence of names (static): of :data:`CONFUSION_METRICS`,
        ``"fbeta_score"``, or MONAI's aliases (``"recall"``, ``"tpr"``, ...).
      beta: the :math:`\beta` of ``"fbeta_score"`` (traced).
      include_background: False drops class 0 from the output.
      ignore_index: a label whose pixels are left out.
      where: boolean ``(batch, *spatial)``; False leaves a pixel out.

    Returns:
      A dict, one float32 ``(batch, C')`` array per requested name (keyed by the name
      as given), ``C' = C - 1`` without the background. NaN where a denominator is 0.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg import metrics
      >>> scores = metrics.confusion_metrics(
      ...     jnp.array([[0, 1, 1, 1]]), jnp.array([[0, 0, 1, 1]]), 2,
      ...     metrics=("sensitivity", "precision", "negative_predictive_value"))
      >>> scores["sensitivity"]
      Array([[0.5, 1. ]], dtype=float32)
      >>> scores["precision"]
      Array([[1.       , 0.6666667]], dtype=float32)
      >>> scores["negative_predictive_value"]
      Array([[0.6666667, 1.       ]], dtype=float32)

    References:
      Fawcett, "An introduction to ROC analysis", Pattern Recognition Letters 27(8),
      2006; Chicco & Jurman, "The advantages of the Matthews correlation coefficient
      (MCC) over F1 score and accuracy in binary classification evaluation", BMC
      Genomics 21, 2020.
    """
    _checks.check_num_classes(num_classes, include_background)
    names = _confusion_formulas.metric_names(metrics)
    predictions, labels, where = _metrics._class_maps(
        predictions, labels, where, ignore_index, int(num_classes)
    )
    return _batch_scores(
        predictions,
        labels,
        where,
        jnp.asarray(beta, jnp.float32),
        names=names,
        num_classes=int(num_classes),
        include_background=bool(include_background),
        ignore_index=ignore_index,
    )


@_arguments.normalised
def fbeta_score(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    beta: float | jax.Array = 1.0,
    include_background: bool = True,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""F-beta score of hard predictions, per sample and class.

    .. math::
        F_\beta = \frac{(1 + \beta^2)\,tp}{(1 + \beta^2)\,tp + \beta^2 fn + fp}

    :math:`\beta > 1` weighs recall more, :math:`\beta < 1` precision; :math:`\beta = 1`
    is the Dice / F1 score. NaN where the class is in neither the label nor the
    prediction. Equals MONAI ``FBetaScore(beta=..., include_background=...)`` per sample
    (``aggregate(reduction="none")``); the F-beta of the summed counts of a dataset is
    ``compute(state, metrics="fbeta_score", beta=...)``. Options as
    :func:`confusion_metrics`.

    Returns:
      float32 ``(batch, C')``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg import metrics
      >>> metrics.fbeta_score(jnp.array([[0, 1, 1, 1]]), jnp.array([[0, 0, 1, 1]]), 2, beta=2.0)
      Array([[0.5555556 , 0.90909094]], dtype=float32)

    References:
      van Rijsbergen, "Information Retrieval", 2nd ed., Butterworths, 1979, ch. 7.
    """
    return confusion_metrics(
        predictions,
        labels,
        num_classes,
        metrics=("fbeta_score",),
        beta=beta,
        include_background=include_background,
        ignore_index=ignore_index,
        where=where,
    )["fbeta_score"]


# ------------------------------------------------------------- generalized Dice


@functools.partial(
    jax.jit, static_argnames=("num_classes", "weight_type", "include_background", "ignore_index")
)
def _generalized_dice_score(
    predictions, labels, where, *, num_classes, weight_type, include_background, ignore_index
):
    stats = _metrics._class_stats(predictions, labels, where, num_classes, ignore_index)
    if not include_background:
        stats = OverlapStats(*(s[:, 1:] for s in stats))
    tp, fp, _, fn = _float_counts(stats)
    label_sum, pred_sum = tp + fn, tp + fp
    if weight_type == "simple":
        weights = 1.0 / label_sum
    elif weight_type == "square":
        weights = 1.0 / (label_sum * label_sum)
    else:
        weights = jnp.ones_like(label_sum)
    # MONAI: a class absent from the sample's label (infinite weight) takes the largest
    # finite weight of that sample, or 1 when every class is absent.
    infinite = jnp.isinf(weights)
    largest = jnp.max(jnp.where(infinite, 0.0, weights), axis=-1, keepdims=True)
    weights = jnp.where(infinite, jnp.where(largest > 0, largest, 1.0), weights)
    numerator = 2.0 * jnp.sum(tp * weights, axis=-1)
    denominator = jnp.sum((label_sum + pred_sum) * weights, axis=-1)
    # Both maps empty in every kept class: 1, as MONAI.
    return jnp.where(denominator != 0, numerator / jnp.where(denominator != 0, denominator, 1), 1.0)


@_arguments.normalised
def generalized_dice_score(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    weight_type: str = "square",
    include_background: bool = True,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Generalized Dice score of hard predictions, one value per sample.

    .. math::
        \mathrm{GDS}_b = \frac{2 \sum_c w_{bc}\, tp_{bc}}
                              {\sum_c w_{bc}\, (|L_{bc}| + |P_{bc}|)},\qquad
        w_{bc} = |L_{bc}|^{-2}\ (\texttt{"square"}),\ |L_{bc}|^{-1}\ (\texttt{"simple"}),
        \ 1\ (\texttt{"uniform"})

    with :math:`|L_{bc}| = tp + fn` and :math:`|P_{bc}| = tp + fp` the label and
    prediction volumes of class :math:`c` in sample :math:`b`. As in MONAI, a class
    absent from the sample's label (an infinite weight) takes the largest finite weight
    of that sample (1 if every kept class is absent), and a sample whose kept classes are
    empty in both maps scores 1.0. Equals MONAI ``GeneralizedDiceScore(weight_type=...,
    include_background=..., reduction="mean")`` per sample (its buffer; ``aggregate()``
    is the mean of these values) on one-hot channels-first copies.

    Args:
      predictions: integer (or boolean) class map ``(batch, *spatial)``.
      labels: integer class map of the same shape.
      num_classes: the number of classes ``C``, background included (static).
      weight_type: ``"square"``, ``"simple"`` or ``"uniform"`` (static).
      include_background: False leaves class 0 out of both sums.
      ignore_index: a label whose pixels are left out (of every class's counts).
      where: boolean ``(batch, *spatial)``; False leaves a pixel out.

    Returns:
      float32 ``(batch,)`` in ``[0, 1]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg import metrics
      >>> labels = jnp.array([[0, 0, 0, 1]])
      >>> metrics.generalized_dice_score(jnp.array([[0, 0, 1, 1]]), labels, 2)
      Array([0.6875], dtype=float32)

    References:
      Sudre et al., "Generalised Dice overlap as a deep learning loss function for highly
      unbalanced segmentations", DLMIA 2017.
    """
    _checks.check_num_classes(num_classes, include_background)
    _checks.check_option("weight_type", weight_type, _WEIGHT_TYPES)
    predictions, labels, where = _metrics._class_maps(
        predictions, labels, where, ignore_index, int(num_classes)
    )
    return _generalized_dice_score(
        predictions,
        labels,
        where,
        num_classes=int(num_classes),
        weight_type=weight_type,
        include_background=bool(include_background),
        ignore_index=ignore_index,
    )


# ------------------------------------------------------------- volume difference


@functools.partial(
    jax.jit,
    static_argnames=("num_classes", "include_background", "ignore_empty", "ignore_index"),
)
def _absolute_volume_difference(
    predictions,
    labels,
    where,
    voxel_volume,
    *,
    num_classes,
    include_background,
    ignore_empty,
    ignore_index,
):
    stats = _metrics._class_stats(predictions, labels, where, num_classes, ignore_index)
    # |(tp + fp) - (tp + fn)| = |fp - fn|, exact in int32 before the float conversion.
    difference = jnp.abs(stats.fp - stats.fn).astype(jnp.float32) * voxel_volume[:, None]
    if ignore_empty:
        difference = jnp.where(stats.label_sum > 0, difference, jnp.nan)
    return difference if include_background else difference[:, 1:]


@_arguments.normalised
def absolute_volume_difference(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    include_background: bool = True,
    ignore_empty: bool = True,
    spacing: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Absolute volume difference between prediction and label, per sample and class.

    .. math::
        \mathrm{AVD}_{bc} = \Big(\prod_a s_a\Big)\,\big|\,|P_{bc}| - |L_{bc}|\,\big|
                          = \Big(\prod_a s_a\Big)\,|fp_{bc} - fn_{bc}|

    the difference of the predicted and labelled voxel counts, times the voxel volume
    :math:`\prod_a s_a` when ``spacing`` is given. With ``spacing=None`` it is the raw
    voxel (pixel) count, as MONAI ``AbsoluteVolumeDifferenceMetric(include_background=...,
    ignore_empty=..., reduction="none")``, which has no spacing. ``ignore_empty=True``
    gives NaN where the class is absent from the sample's label (left out of MONAI's and
    ``jnp.nanmean``'s means); False gives the predicted volume there.

    Args:
      predictions: integer (or boolean) class map ``(batch, *spatial)``.
      labels: integer class map of the same shape.
      num_classes: the number of classes ``C``, background included (static).
      include_background: False drops class 0 from the output.
      ignore_empty: NaN where the sample's label lacks the class.
      spacing: ``None`` (counts), a scalar, one value per spatial axis ``(ndim,)``, or one
        row per sample ``(batch, ndim)``: the voxel size, in the unit whose cube (square
        in 2D) the result is expressed in. May be traced.
      ignore_index: a label whose pixels are left out.
      where: boolean ``(batch, *spatial)``; False leaves a pixel out.

    Returns:
      float32 ``(batch, C')``, ``C' = C - 1`` without the background.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg import metrics
      >>> predictions, labels = jnp.array([[[0, 1], [1, 1]]]), jnp.array([[[0, 0], [1, 0]]])
      >>> metrics.absolute_volume_difference(predictions, labels, 2)
      Array([[2., 2.]], dtype=float32)
      >>> metrics.absolute_volume_difference(predictions, labels, 2, spacing=(0.5, 1.5))
      Array([[1.5, 1.5]], dtype=float32)

    References:
      Bogunovic et al., "RETOUCH: The Retinal OCT Fluid Detection and Segmentation
      Benchmark and Challenge", IEEE TMI 38(8), 2019.
    """
    _checks.check_num_classes(num_classes, include_background)
    predictions, labels, where = _metrics._class_maps(
        predictions, labels, where, ignore_index, int(num_classes)
    )
    batch, ndim = predictions.shape[0], predictions.ndim - 1
    voxel_volume = jnp.prod(_distance._batch_spacing(spacing, batch, ndim), axis=-1)
    return _absolute_volume_difference(
        predictions,
        labels,
        where,
        voxel_volume,
        num_classes=int(num_classes),
        include_background=bool(include_background),
        ignore_empty=bool(ignore_empty),
        ignore_index=ignore_index,
    )
