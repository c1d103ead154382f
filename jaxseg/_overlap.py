"""Overlap losses: Dice, IoU (Jaccard), Tversky and generalized Dice.

Each is a cheap map of the statistics core (:mod:`jaxseg._stats`): a ratio of
``tp``, ``fp`` and ``fn`` per (sample, class), then a class mean and a batch mean.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxseg import _arguments, _checks, _reduce, _softmax, _stats
from jaxseg._stats import OverlapStats

EMPTY_POLICIES = ("smooth", "exclude", "complement")
WEIGHT_TYPES = ("square", "simple", "uniform")

AxisName = str | tuple[str, ...] | None
ArrayLike = jax.typing.ArrayLike

_STATIC = (
    "activation",
    "ignore_index",
    "include_background",
    "batch",
    "reduction",
    "axis_name",
    "squared",
    "soft_label",
    "empty",
)


def ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator`` with 1 (a perfect score) where the denominator is 0.

    The denominator is 0 only when prediction and label are both empty and the
    smoothing is 0: the two agree, so the score is 1 and no NaN is made.
    """
    nonzero = denominator != 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1), 1)


def dice_score(stats: OverlapStats, smooth_nr: Any, smooth_dr: Any) -> jax.Array:
    """Soft Dice coefficient ``(2 tp + s_nr) / (2 tp + fp + fn + s_dr)``."""
    return ratio(2 * stats.tp + smooth_nr, 2 * stats.tp + stats.fp + stats.fn + smooth_dr)


def iou_score(stats: OverlapStats, smooth_nr: Any, smooth_dr: Any) -> jax.Array:
    """Soft IoU (Jaccard index) ``(tp + s_nr) / (tp + fp + fn + s_dr)``."""
    return ratio(stats.tp + smooth_nr, stats.tp + stats.fp + stats.fn + smooth_dr)


def tversky_score(
    stats: OverlapStats, smooth_nr: Any, smooth_dr: Any, alpha: Any, beta: Any
) -> jax.Array:
    """Tversky index ``(tp + s_nr) / (tp + alpha fp + beta fn + s_dr)``."""
    return ratio(stats.tp + smooth_nr, stats.tp + alpha * stats.fp + beta * stats.fn + smooth_dr)


def _safe_power(base: jax.Array, exponent: Any) -> jax.Array:
    """``base ** exponent`` with a finite gradient at 0 for exponent < 1.

    ``base = 1 - index`` is negative only when ``smooth_nr > smooth_dr`` lifts the index
    above 1; the power of a negative base is then 0, except for ``exponent == 1`` (the
    plain Tversky loss), which stays ``base`` as in the formula and in MONAI.
    """
    positive = base > 0
    powered = jnp.where(positive, base, 1) ** exponent
    return jnp.where(positive, powered, jnp.where(exponent == 1, base, 0))


def apply_empty_policy(stats: OverlapStats, empty: str) -> tuple[OverlapStats, jax.Array | None]:
    """Applies the policy for classes absent from a sample's label.

    Returns the statistics to score and, for ``"exclude"``, the boolean mask of the
    entries that count (``None`` when every entry counts).
    """
    is_empty = stats.label_sum <= 0
    if empty == "complement":
        # Score the complements 1 - p against 1 - y: tp' = tn, fp' = fn, fn' = fp.
        swapped = OverlapStats(stats.tn, stats.fn, stats.fp, stats.total)
        stats = jax.tree.map(lambda s, c: jnp.where(is_empty, c, s), stats, swapped)
        return stats, None
    if empty == "exclude":
        # Double-where: excluded entries get harmless statistics, so the discarded branch
        # has a finite gradient even with zero smoothing.
        dummy = OverlapStats(*(jnp.ones_like(s) for s in stats))
        stats = jax.tree.map(lambda s, d: jnp.where(is_empty, d, s), stats, dummy)
        return stats, ~is_empty
    return stats, None


def _validate(
    logits: Any,
    labels: Any,
    *,
    activation: str | None,
    ignore_index: int | None,
    where: Any,
    class_weights: Any,
    include_background: bool,
    reduction: str,
    empty: str = "smooth",
    squared: bool = False,
) -> None:
    _checks.check_loss_inputs(
        logits,
        labels,
        activation=activation,
        ignore_index=ignore_index,
        where=where,
        class_weights=class_weights,
        reduction=reduction,
    )
    _checks.check_option("empty", empty, EMPTY_POLICIES)
    num_classes = jnp.shape(logits)[-1]
    if not include_background and num_classes < 2:
        raise ValueError(
            "`include_background=False` drops class 0 and needs at least 2 classes on the "
            f"last axis of `logits`; got shape {jnp.shape(logits)}."
        )
    if empty == "complement" and squared:
        raise ValueError("`empty='complement'` is not defined with `squared=True`.")


def _stats_for_loss(
    logits,
    labels,
    where,
    *,
    activation,
    ignore_index,
    squared,
    soft_label,
    include_background,
    batch,
    axis_name,
) -> OverlapStats:
    if not squared and _softmax.applies(activation, labels):
        # Softmax with integer labels: the softmax engine (for hard labels the L1 form
        # of soft_label equals sum(p y)).
        terms, _ = _softmax.terms_of(
            logits, labels, ignore_index=ignore_index, where=where, class_weights=None, overlap=True
        )
        stats = _softmax.overlap_stats(terms)
    else:
        stats = _stats.stats_of_probabilities(
            logits,
            labels,
            where,
            activation=activation,
            ignore_index=ignore_index,
            squared=squared,
            soft_label=soft_label,
        )
    if batch:
        stats = _stats.sum_over_batch(stats, axis_name)
    if not include_background:
        stats = jax.tree.map(lambda s: s[..., 1:], stats)
    return stats


def _class_weights(class_weights, num_classes, include_background, dtype) -> jax.Array:
    if class_weights is None:
        return jnp.ones((num_classes - (not include_background),), dtype)
    weights = jnp.asarray(class_weights, dtype)
    return weights if include_background else weights[1:]


@functools.partial(jax.jit, static_argnames=(*_STATIC, "score"))
def _overlap_loss(
    logits,
    labels,
    where,
    class_weights,
    params,
    *,
    score,
    activation,
    ignore_index,
    include_background,
    batch,
    reduction,
    axis_name,
    squared,
    soft_label,
    empty,
):
    stats = _stats_for_loss(
        logits,
        labels,
        where,
        activation=activation,
        ignore_index=ignore_index,
        squared=squared,
        soft_label=soft_label,
        include_background=include_background,
        batch=batch,
        axis_name=axis_name,
    )
    stats, present = apply_empty_policy(stats, empty)
    loss = score(stats, **params)
    weights = _class_weights(class_weights, logits.shape[-1], include_background, loss.dtype)
    weights = jnp.broadcast_to(weights, loss.shape)
    if present is not None:
        weights = jnp.where(present, weights, 0)
        loss = jnp.where(present, loss, 0)
    # With batch=True the statistics are already global: the loss is the same everywhere.
    return _reduce.weighted_reduce(weights * loss, weights, reduction, None if batch else axis_name)


def _dice_loss_score(stats, *, smooth_nr, smooth_dr):
    return 1 - dice_score(stats, smooth_nr, smooth_dr)


def _iou_loss_score(stats, *, smooth_nr, smooth_dr):
    return 1 - iou_score(stats, smooth_nr, smooth_dr)


def _tversky_loss_score(stats, *, smooth_nr, smooth_dr, alpha, beta, gamma):
    return _safe_power(1 - tversky_score(stats, smooth_nr, smooth_dr, alpha, beta), gamma)


def _call(
    score: Callable[..., jax.Array],
    logits: ArrayLike,
    labels: ArrayLike,
    params: dict[str, Any],
    *,
    activation: str | None,
    smooth_nr: Any,
    smooth_dr: Any,
    include_background: bool,
    batch: bool,
    class_weights: Any,
    ignore_index: int | None,
    where: Any,
    reduction: str,
    axis_name: AxisName,
    squared: bool,
    soft_label: bool,
    empty: str,
) -> jax.Array:
    _validate(
        logits,
        labels,
        activation=activation,
        ignore_index=ignore_index,
        where=where,
        class_weights=class_weights,
        include_background=include_background,
        reduction=reduction,
        empty=empty,
        squared=squared,
    )
    return _overlap_loss(
        jnp.asarray(logits),
        jnp.asarray(labels),
        None if where is None else jnp.asarray(where),
        None if class_weights is None else jnp.asarray(class_weights),
        dict(params, smooth_nr=smooth_nr, smooth_dr=smooth_dr),
        score=score,
        activation=activation,
        ignore_index=ignore_index,
        include_background=include_background,
        batch=batch,
        reduction=reduction,
        axis_name=axis_name,
        squared=squared,
        soft_label=soft_label,
        empty=empty,
    )


@_arguments.normalised
def dice_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    activation: str | None = "softmax",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    include_background: bool = True,
    batch: bool = False,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
    squared: bool = False,
    soft_label: bool = False,
    empty: str = "smooth",
) -> jax.Array:
    r"""Soft Dice loss (Milletari et al. 2016), per (sample, class), then averaged.

    .. math::
        L_{bc} = 1 - \frac{2\,tp_{bc} + s_{nr}}{2\,tp_{bc} + fp_{bc} + fn_{bc} + s_{dr}}

    with ``tp, fp, fn`` from :func:`jaxseg.overlap_stats` (with ``squared`` the
    denominator is :math:`\sum p^2 + \sum y^2`). ``"mean"`` returns
    :math:`\sum_{bc} w_c L_{bc} / \sum_{bc} w_c` (the batch mean of class means).

    Args:
      logits: ``(batch, *spatial, classes)`` float logits (1 to 3 spatial axes).
      labels: integer class indices ``(batch, *spatial)``, or dense one-hot / soft
        labels ``(batch, *spatial, classes)``.
      activation: ``"softmax"`` (exclusive classes), ``"sigmoid"`` (independent
        channels; one channel with integer labels is a binary mask, label 1 the
        foreground), or ``None`` (``logits`` already holds probabilities).
      smooth_nr: added to the numerator.
      smooth_dr: added to the denominator.
      include_background: False drops class 0 from the loss.
      batch: sum the statistics over the batch before the ratio (nnU-Net batch Dice).
      class_weights: ``(classes,)`` non-negative weights of the class mean (background
        included, dropped with it).
      ignore_index: integer label whose pixels are excluded.
      where: boolean ``(batch, *spatial)``; pixels where False are excluded.
      reduction: ``"mean"``, ``"sum"`` (of ``w_c L_bc``) or ``"none"``: ``w_c L_bc`` of
        shape ``(batch, classes')``, ``(classes',)`` with ``batch``.
      axis_name: mapped axis name(s) inside ``shard_map``/``pmap``: statistics (with
        ``batch``) and means become global. Average gradients with ``pmean``.
      squared: square the prediction and label sums in the denominator (V-Net).
      soft_label: L1 form of ``tp``, whose minimiser is ``p = y`` for soft labels.
      empty: policy for a class absent from a sample's label.
        ``"smooth"`` (MONAI): the smoothing terms decide; empty label and prediction
        give 0, a false positive gives about 1 with a gradient of order
        ``s_dr / (sum p)^2`` that vanishes. ``"exclude"``: the entry leaves the class
        mean (weight 0, exactly zero gradient; false positives on an empty class are
        not penalised by this term). ``"complement"``: the entry scores ``1 - p``
        against ``1 - y`` (Keras-style for binary masks): a false positive keeps a
        gradient of order ``1 / total`` that pushes ``p`` to 0.

    Returns:
      A scalar (``"mean"``, ``"sum"``) or the ``"none"`` values described above.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxseg
      >>> logits = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
      >>> labels = jax.random.randint(jax.random.key(1), (2, 8, 8), 0, 3)
      >>> loss, grads = jax.value_and_grad(jaxseg.dice_loss)(logits, labels)
      >>> loss.shape, grads.shape
      ((), (2, 8, 8, 3))

    References:
      Milletari, Navab, Ahmadi. V-Net: Fully Convolutional Neural Networks for
      Volumetric Medical Image Segmentation. 3DV 2016.
      Wang, Blaschko. Dice Semimetric Losses: Optimizing the Dice Score with Soft
      Labels. MICCAI 2023 (``soft_label``).
    """
    return _call(
        _dice_loss_score,
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
        squared=squared,
        soft_label=soft_label,
        empty=empty,
    )


@_arguments.normalised
def iou_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    activation: str | None = "softmax",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    include_background: bool = True,
    batch: bool = False,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
    squared: bool = False,
    soft_label: bool = False,
    empty: str = "smooth",
) -> jax.Array:
    r"""Soft IoU (Jaccard) loss, per (sample, class), then averaged.

    .. math::
        L_{bc} = 1 - \frac{tp_{bc} + s_{nr}}{tp_{bc} + fp_{bc} + fn_{bc} + s_{dr}}

    MONAI's ``DiceLoss(jaccard=True, smooth_nr=s, smooth_dr=s)`` doubles numerator and
    denominator, so it equals ``iou_loss(smooth_nr=s / 2, smooth_dr=s / 2)``.
    Options, shapes and reductions as :func:`dice_loss`.

    Examples:
      >>> import jax.numpy as jnp, jaxseg
      >>> probs = jnp.array([[[1.0], [0.0]]]); labels = jnp.array([[1, 1]])
      >>> jaxseg.iou_loss(probs, labels, activation=None, smooth_nr=0, smooth_dr=0)
      Array(0.5, dtype=float32)

    References:
      Rahman, Wang. Optimizing Intersection-over-Union in Deep Neural Networks for
      Image Segmentation. ISVC 2016.
    """
    return _call(
        _iou_loss_score,
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
        squared=squared,
        soft_label=soft_label,
        empty=empty,
    )


jaccard_loss = iou_loss


@_arguments.normalised(alpha=_arguments.NONNEGATIVE)
def tversky_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 1.0,
    activation: str | None = "softmax",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    include_background: bool = True,
    batch: bool = False,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
    soft_label: bool = False,
    empty: str = "smooth",
) -> jax.Array:
    r"""Tversky loss (Salehi et al. 2017), and focal Tversky with ``gamma``.

    .. math::
        L_{bc} = \left(1 - \frac{tp + s_{nr}}{tp + \alpha\,fp + \beta\,fn + s_{dr}}
        \right)^{\gamma}

    ``alpha`` weighs false positives and ``beta`` false negatives; ``alpha = beta =
    0.5`` is the Dice loss. ``gamma`` (Abraham & Khan 2019 use ``gamma = 0.75`` on the
    index, here the power of the loss) focuses on hard classes; its gradient stays
    finite at a perfect score. With ``smooth_nr > smooth_dr`` the index can exceed 1:
    the loss is then negative for ``gamma = 1`` (the formula, as MONAI) and 0 for other
    ``gamma``. Options, shapes and reductions as :func:`dice_loss`.

    Examples:
      >>> import jax.numpy as jnp, jaxseg
      >>> logits = jnp.zeros((1, 4, 2)); labels = jnp.array([[0, 0, 1, 1]])
      >>> jaxseg.tversky_loss(logits, labels, alpha=0.3, beta=0.7).round(4)
      Array(0.5, dtype=float32)

    References:
      Salehi, Erdogmus, Gholipour. Tversky loss function for image segmentation using
      3D fully convolutional deep networks. MLMI 2017.
      Abraham, Khan. A Novel Focal Tversky Loss Function with Improved Attention U-Net
      for Lesion Segmentation. ISBI 2019.
    """
    return _call(
        _tversky_loss_score,
        logits,
        labels,
        {"alpha": alpha, "beta": beta, "gamma": gamma},
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
        soft_label=soft_label,
        empty=empty,
    )


def generalized_dice_weights(label_sum: jax.Array, weight_type: str) -> jax.Array:
    """Sudre et al.'s class weights ``1 / T^2`` (or ``1 / T``, or 1) per sample.

    A class absent from a sample's label would get an infinite weight; as in MONAI it
    takes the largest finite weight of that sample (of the batch with ``batch``).
    """
    if weight_type == "uniform":
        return jnp.ones_like(label_sum)
    present = label_sum > 0
    safe = jnp.where(present, label_sum, 1)
    weights = jnp.where(present, 1 / safe ** (2 if weight_type == "square" else 1), 0)
    largest = jnp.max(weights, axis=-1, keepdims=True)
    return jnp.where(present, weights, largest)


@functools.partial(
    jax.jit,
    static_argnames=(
        "activation",
        "ignore_index",
        "include_background",
        "batch",
        "reduction",
        "axis_name",
        "soft_label",
        "weight_type",
    ),
)
def _generalized_dice_loss(
    logits,
    labels,
    where,
    class_weights,
    smooth_nr,
    smooth_dr,
    *,
    activation,
    ignore_index,
    include_background,
    batch,
    reduction,
    axis_name,
    soft_label,
    weight_type,
):
    stats = _stats_for_loss(
        logits,
        labels,
        where,
        activation=activation,
        ignore_index=ignore_index,
        squared=False,
        soft_label=soft_label,
        include_background=include_background,
        batch=batch,
        axis_name=axis_name,
    )
    weights = generalized_dice_weights(stats.label_sum, weight_type)
    if class_weights is not None:
        class_w = _class_weights(class_weights, logits.shape[-1], include_background, weights.dtype)
        weights = weights * jnp.broadcast_to(class_w, weights.shape)
    numerator = 2 * jnp.sum(weights * stats.tp, axis=-1) + smooth_nr
    denominator = jnp.sum(weights * (2 * stats.tp + stats.fp + stats.fn), axis=-1) + smooth_dr
    loss = 1 - ratio(numerator, denominator)
    ones = jnp.ones_like(loss)
    return _reduce.weighted_reduce(loss, ones, reduction, None if batch else axis_name)


@_arguments.normalised
def generalized_dice_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    weight_type: str = "square",
    activation: str | None = "softmax",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    include_background: bool = True,
    batch: bool = False,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
    soft_label: bool = False,
) -> jax.Array:
    r"""Generalized Dice loss (Sudre et al. 2017): one value per sample.

    .. math::
        L_b = 1 - \frac{2 \sum_c w_{bc}\, tp_{bc} + s_{nr}}
        {\sum_c w_{bc} (2\,tp_{bc} + fp_{bc} + fn_{bc}) + s_{dr}},
        \qquad w_{bc} = 1 / T_{bc}^2

    where ``T_bc`` is the label volume of class ``c`` (``weight_type="simple"``:
    ``1 / T``; ``"uniform"``: 1). An empty class takes the sample's largest finite
    weight (MONAI). ``class_weights`` multiply ``w``. ``reduction="none"`` returns
    ``(batch,)`` (a scalar with ``batch``). Other options as :func:`dice_loss`.

    Examples:
      >>> import jax, jaxseg
      >>> logits = jax.random.normal(jax.random.key(0), (2, 16, 16, 4))
      >>> labels = jax.random.randint(jax.random.key(1), (2, 16, 16), 0, 4)
      >>> jaxseg.generalized_dice_loss(logits, labels, reduction="none").shape
      (2,)

    References:
      Sudre, Li, Vercauteren, Ourselin, Cardoso. Generalised Dice overlap as a deep
      learning loss function for highly unbalanced segmentations. DLMIA 2017.
    """
    _validate(
        logits,
        labels,
        activation=activation,
        ignore_index=ignore_index,
        where=where,
        class_weights=class_weights,
        include_background=include_background,
        reduction=reduction,
    )
    _checks.check_option("weight_type", weight_type, WEIGHT_TYPES)
    return _generalized_dice_loss(
        jnp.asarray(logits),
        jnp.asarray(labels),
        None if where is None else jnp.asarray(where),
        None if class_weights is None else jnp.asarray(class_weights),
        smooth_nr,
        smooth_dr,
        activation=activation,
        ignore_index=ignore_index,
        include_background=include_background,
        batch=batch,
        reduction=reduction,
        axis_name=axis_name,
        soft_label=soft_label,
        weight_type=weight_type,
    )
