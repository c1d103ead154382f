"""Compound losses: Dice + cross-entropy, Dice + focal, binary CE + log-Dice.

Each is a :func:`jaxseg.combine` of the library's own losses, called with the
compound's lambdas as (traced) weights; nothing here recomputes a loss. As in MONAI
and nnU-Net, ``include_background``, ``batch``, the smoothing terms, ``squared``,
``soft_label`` and ``empty`` reach the Dice term only: the cross-entropy or focal term
always covers every class. ``activation``, ``class_weights``, ``ignore_index``,
``where`` and ``axis_name`` reach both terms (routing by signature, see
:mod:`jaxseg._combinators`).
"""

from __future__ import annotations

import jax

from jaxseg import _arguments, _checks
from jaxseg._combinators import combine, log_transform
from jaxseg._overlap import dice_loss
from jaxseg._pixel import cross_entropy, focal_loss

AxisName = str | tuple[str, ...] | None
ArrayLike = jax.typing.ArrayLike
Result = jax.Array | tuple[jax.Array, dict[str, jax.Array]]

_DICE_CE = combine(dice=dice_loss, ce=cross_entropy)
_DICE_FOCAL = combine(dice=dice_loss, focal=focal_loss)
_BCE_LOG_DICE = combine(ce=cross_entropy, log_dice=log_transform(dice_loss))


@_arguments.normalised
def dice_ce(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    activation: str = "softmax",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    include_background: bool = True,
    batch: bool = False,
    squared: bool = False,
    soft_label: bool = False,
    empty: str = "smooth",
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    pos_weight: ArrayLike | None = None,
    pixel_weights: ArrayLike | None = None,
    axis_name: AxisName = None,
    return_components: bool = False,
) -> Result:
    r"""Dice + cross-entropy (the nnU-Net default loss; MONAI ``DiceCELoss``).

    .. math::
        L = \lambda_{dice}\, L_{dice} + \lambda_{ce}\, L_{ce}

    with :math:`L_{dice}` from :func:`jaxseg.dice_loss` (mean over samples and classes)
    and :math:`L_{ce}` from :func:`jaxseg.cross_entropy` (mean over valid pixels;
    binary CE per channel with ``activation="sigmoid"``). With defaults it equals MONAI
    ``DiceCELoss(softmax=True, to_onehot_y=True)`` on channels-first copies.

    Args:
      logits: ``(batch, *spatial, classes)`` float logits.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, classes)``.
      lambda_dice: weight of the Dice term, >= 0 (may be traced).
      lambda_ce: weight of the cross-entropy term, >= 0 (may be traced).
      activation: ``"softmax"`` or ``"sigmoid"``, for both terms.
      smooth_nr, smooth_dr, include_background, batch, squared, soft_label, empty:
        Dice term only, as :func:`jaxseg.dice_loss`.
      class_weights: ``(classes,)``: the Dice class mean and the CE pixel weights (as
        MONAI's ``weight``).
      ignore_index, where, axis_name: both terms.
      label_smoothing, pos_weight, pixel_weights: cross-entropy term only (see
        :func:`jaxseg.cross_entropy`).
      return_components: also return ``{"dice": L_dice, "ce": L_ce}`` (unweighted).

    Returns:
      A float32 scalar, or ``(scalar, components)``.

    Examples:
      >>> import jax, jaxseg
      >>> logits = jax.random.normal(jax.random.key(0), (2, 16, 16, 4))
      >>> labels = jax.random.randint(jax.random.key(1), (2, 16, 16), 0, 4)
      >>> loss, grads = jax.value_and_grad(jaxseg.dice_ce)(logits, labels)
      >>> loss.shape, grads.shape
      ((), (2, 16, 16, 4))

    References:
      Milletari, Navab, Ahmadi. V-Net: Fully Convolutional Neural Networks for
      Volumetric Medical Image Segmentation. 3DV 2016.
      Isensee, Jaeger, Kohl, Petersen, Maier-Hein. nnU-Net: a self-configuring method
      for deep learning-based biomedical image segmentation. Nature Methods 2021.
    """
    _checks.check_nonnegative("pixel_weights", pixel_weights)
    return _DICE_CE.evaluate(
        logits, labels, (lambda_dice, lambda_ce), return_components=return_components,
        activation=activation, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
        include_background=include_background, batch=batch, squared=squared,
        soft_label=soft_label, empty=empty, class_weights=class_weights,
        ignore_index=ignore_index, where=where, label_smoothing=label_smoothing,
        pos_weight=pos_weight, pixel_weights=pixel_weights, axis_name=axis_name,
    )  # fmt: skip


@_arguments.normalised(alpha=_arguments.number(low=0, high=1, per_class=True, optional=True))
def dice_focal(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    gamma: float = 2.0,
    alpha: float | ArrayLike | None = None,
    activation: str = "softmax",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    include_background: bool = True,
    batch: bool = False,
    squared: bool = False,
    soft_label: bool = False,
    empty: str = "smooth",
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    pixel_weights: ArrayLike | None = None,
    axis_name: AxisName = None,
    return_components: bool = False,
) -> Result:
    r"""Dice + focal loss.

    .. math::
        L = \lambda_{dice}\, L_{dice} + \lambda_{focal}\, L_{focal}

    with :math:`L_{focal}` from :func:`jaxseg.focal_loss` with the same activation: a
    real softmax focal loss :math:`-\alpha_t (1 - p_t)^\gamma \log p_t` for
    ``activation="softmax"`` (mean over valid pixels), a sigmoid focal loss per channel
    for ``"sigmoid"``. MONAI's ``DiceFocalLoss`` always uses a sigmoid focal term
    (even with ``softmax=True``) and also drops the background from it; here the
    focal term covers every class. Compared with MONAI ``FocalLoss(use_softmax=True)``,
    whose mean also divides by the class count, :math:`L_{focal}` is ``C`` times larger.

    Args:
      logits: ``(batch, *spatial, classes)`` float logits.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, classes)``.
      lambda_dice, lambda_focal: term weights, >= 0 (may be traced).
      gamma, alpha: focal term only, as :func:`jaxseg.focal_loss`.
      activation: ``"softmax"`` or ``"sigmoid"``, for both terms.
      smooth_nr, smooth_dr, include_background, batch, squared, soft_label, empty:
        Dice term only.
      class_weights, ignore_index, where, axis_name: both terms.
      pixel_weights: focal term only (see :func:`jaxseg.focal_loss`).
      return_components: also return ``{"dice": ..., "focal": ...}`` (unweighted).

    Returns:
      A float32 scalar, or ``(scalar, components)``.

    Examples:
      >>> import jax, jaxseg
      >>> logits = jax.random.normal(jax.random.key(0), (2, 16, 16, 4))
      >>> labels = jax.random.randint(jax.random.key(1), (2, 16, 16), 0, 4)
      >>> loss, parts = jaxseg.dice_focal(logits, labels, return_components=True)
      >>> sorted(parts)
      ['dice', 'focal']

    References:
      Milletari, Navab, Ahmadi. V-Net. 3DV 2016.
      Lin, Goyal, Girshick, He, Dollar. Focal Loss for Dense Object Detection. ICCV
      2017.
    """
    _checks.check_nonnegative("pixel_weights", pixel_weights)
    return _DICE_FOCAL.evaluate(
        logits, labels, (lambda_dice, lambda_focal), return_components=return_components,
        gamma=gamma, alpha=alpha, activation=activation, smooth_nr=smooth_nr,
        smooth_dr=smooth_dr, include_background=include_background, batch=batch,
        squared=squared, soft_label=soft_label, empty=empty, class_weights=class_weights,
        ignore_index=ignore_index, where=where, pixel_weights=pixel_weights,
        axis_name=axis_name,
    )  # fmt: skip


@_arguments.normalised
def bce_log_dice(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    lambda_ce: float = 1.0,
    lambda_dice: float = 1.0,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    include_background: bool = True,
    batch: bool = False,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    pos_weight: ArrayLike | None = None,
    axis_name: AxisName = None,
    return_components: bool = False,
) -> Result:
    r"""Binary cross-entropy minus the log of the Dice coefficient (sigmoid).

    .. math::
        L = \lambda_{ce}\, \mathrm{BCE} - \lambda_{dice} \log(1 - L_{dice})

    where :math:`L_{dice}` is :func:`jaxseg.dice_loss` with ``activation="sigmoid"``
    (its mean over samples and classes), so the second term is minus the log of the
    batch-mean Dice coefficient, built with :func:`jaxseg.log_transform`
    (``1 - L_dice`` clamped at ``1e-7``). ``BCE`` is :func:`jaxseg.cross_entropy` with
    ``activation="sigmoid"``. One channel with integer labels is a binary mask (label 1
    the foreground); several channels are independent (multi-label, or one-hot of an
    integer label).

    Args:
      logits: ``(batch, *spatial, channels)`` float logits.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, channels)``.
      lambda_ce, lambda_dice: term weights, >= 0 (may be traced).
      smooth_nr, smooth_dr, include_background, batch: Dice term only.
      class_weights, ignore_index, where, axis_name: both terms.
      label_smoothing, pos_weight: cross-entropy term only.
      return_components: also return ``{"ce": BCE, "log_dice": -log(1 - L_dice)}``.

    Returns:
      A float32 scalar, or ``(scalar, components)``.

    Examples:
      >>> import jax, jaxseg
      >>> logits = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
      >>> labels = jax.random.bernoulli(jax.random.key(1), 0.3, (2, 16, 16)).astype(int)
      >>> jaxseg.bce_log_dice(logits, labels).shape
      ()

    References:
      Milletari, Navab, Ahmadi. V-Net. 3DV 2016.
    """
    return _BCE_LOG_DICE.evaluate(
        logits, labels, (lambda_ce, lambda_dice), return_components=return_components,
        activation="sigmoid", smooth_nr=smooth_nr, smooth_dr=smooth_dr,
        include_background=include_background, batch=batch, class_weights=class_weights,
        ignore_index=ignore_index, where=where, label_smoothing=label_smoothing,
        pos_weight=pos_weight, axis_name=axis_name,
    )  # fmt: skip
