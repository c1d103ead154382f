"""Pixel losses: cross-entropy and focal loss, softmax or sigmoid, in log space.

Every log-probability is computed from the logits (``log_softmax``, ``log_sigmoid``),
never as ``log(p)``, so values and gradients stay finite for logits of +-1e4 and for
focal ``gamma`` of 0 or below 1.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxseg import _arguments, _checks, _reduce, _softmax

AxisName = str | tuple[str, ...] | None
ArrayLike = jax.typing.ArrayLike

_STATIC = ("activation", "ignore_index", "reduction", "axis_name")


class _Targets:
    """Per-class targets, class weights and validity of a batch, in the compute dtype."""

    def __init__(self, logits, labels, where, class_weights, *, activation, ignore_index):
        num_channels = logits.shape[-1]
        self.class_shape = (1,) * (logits.ndim - 1) + (num_channels,)
        self.dtype = _checks.compute_dtype(logits.dtype)
        self.valid = _checks.valid_mask(labels, num_channels, activation, ignore_index, where)
        if _checks.is_integer_labels(labels):
            values = self.per_class(_checks.label_values(num_channels, activation))
            # Compared in place: XLA fuses the comparison into its consumers.
            self.y = (labels.astype(jnp.int32)[..., None] == values).astype(self.dtype)
        else:
            self.y = labels.astype(self.dtype)
        self.weights = self.per_class(
            jnp.ones((num_channels,), self.dtype) if class_weights is None else class_weights
        )

    def per_class(self, value):
        """A scalar or ``(classes,)`` vector, shaped to broadcast against the logits."""
        value = jnp.asarray(value)
        return value if value.ndim == 0 else value.reshape(self.class_shape)


def _log1m_softmax(x: jax.Array, log_p: jax.Array) -> jax.Array:
    """``log(1 - softmax(x))`` per class, accurate and with finite gradients as p -> 1.

    Only the largest logit can have ``p > 1/2``; for it ``log(1 - p)`` is the
    log-sum-exp of the other logits minus that of all, which does not cancel. The
    others use ``log1p(-p)`` with ``p <= 1/2``. Needs at least two classes.
    """
    classes = jnp.arange(x.shape[-1]).reshape((1,) * (x.ndim - 1) + (-1,))
    is_top = classes == jnp.argmax(x, axis=-1, keepdims=True)
    # Shifted by the (constant) maximum: at |x| ~ 1e4 the difference of two unshifted
    # log-sum-exps cancels to the float32 spacing there (~1e-3).
    x = x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    lse_rest = jax.nn.logsumexp(jnp.where(is_top, -jnp.inf, x), axis=-1, keepdims=True)
    p_rest = jnp.where(is_top, 0, jnp.exp(log_p))
    return jnp.where(is_top, lse_rest - lse, jnp.log1p(-p_rest))


def _log1m_pt_sigmoid(x: jax.Array, y: jax.Array) -> jax.Array:
    """``log(1 - p_t)`` with ``1 - p_t = p (1 - y) + (1 - p) y`` (soft labels too).

    For hard labels this is ``log_sigmoid(-x)`` (y = 1) or ``log_sigmoid(x)`` (y = 0),
    as MONAI computes it; for soft labels it is optax's ``1 - p_t``. Labels outside
    [0, 1] (a value error that only the checked mode reports) are clipped here, so the
    modulator stays finite instead of ``log`` of a negative number making a NaN.
    """
    y = jnp.clip(y, 0, 1)
    return jnp.logaddexp(jax.nn.log_sigmoid(x) + jnp.log1p(-y), jax.nn.log_sigmoid(-x) + jnp.log(y))


def _focal_alpha(alpha, num_classes: int, dtype) -> jax.Array:
    """``alpha`` per class: MONAI's scalar form is 1 - alpha for the background."""
    if alpha is None:
        return jnp.ones((num_classes,), dtype)
    if jnp.ndim(alpha) == 0:
        return jnp.where(jnp.arange(num_classes) == 0, 1 - alpha, alpha).astype(dtype)
    return jnp.asarray(alpha, dtype)


def _finish(
    loss,
    valid,
    norm,
    pixel_weights,
    *,
    activation,
    reduction,
    axis_name,
    weight_sum=None,
    in_place=False,
):
    """Weighs, masks excluded pixels out and reduces ``loss`` with normaliser ``norm``.

    ``norm`` is the per-pixel weight of the mean (the label's class weight for softmax,
    None for sigmoid: each valid pixel-channel counts 1); ``pixel_weights`` multiply
    both the loss and ``norm``. ``weight_sum``, when given, is the sum of ``norm`` over
    the valid pixels, computed by the caller (see ``_softmax.label_weight_sum``);
    ``in_place`` is that of :func:`jaxseg._reduce.weighted_reduce`.
    """
    if activation != "softmax":
        valid = valid[..., None]
        norm = jnp.ones(loss.shape, loss.dtype)
        if pixel_weights is not None:
            pixel_weights = pixel_weights[..., None]
    if pixel_weights is not None:
        pixel_weights = pixel_weights.astype(loss.dtype)
        loss, norm = loss * pixel_weights, norm * pixel_weights
    loss = jnp.where(valid, loss, 0)
    norm = jnp.where(valid, norm, 0)
    return _reduce.weighted_reduce(
        loss,
        norm.astype(loss.dtype),
        reduction,
        axis_name,
        weight_sum=weight_sum,
        in_place=in_place,
    )


def _label_weight(values, labels, dtype):
    """``values[y]`` per pixel, or 1 when ``values`` is None (no gathered plane)."""
    if values is None:
        return jnp.ones((), dtype)
    return _softmax.label_gather(values.astype(dtype), labels)


def _finish_engine(
    finish, loss, labels, valid, weight_y, class_weights, pixel_weights, num_classes
):
    """``finish`` for a loss on the engine's terms.

    The normaliser is the label's class weight; without pixel weights its sum comes from
    ``_softmax.label_weight_sum``.
    """
    weight_sum = None
    if pixel_weights is None:
        weight_sum = _softmax.label_weight_sum(
            labels, valid, class_weights, num_classes, loss.dtype
        )
    norm = jnp.broadcast_to(weight_y, loss.shape)
    return finish(loss, valid, norm, pixel_weights, weight_sum=weight_sum)


def _pixel_terms(logits, labels, where, class_weights, ignore_index, smooth=False, focal=False):
    """The engine's per-pixel terms, the validity mask and the label's class weight."""
    terms, valid = _softmax.terms_of(
        logits,
        labels,
        ignore_index=ignore_index,
        where=where,
        class_weights=class_weights,
        overlap=False,
        smooth=smooth,
        focal=focal,
    )
    return terms, valid, _label_weight(class_weights, labels, terms.log_p.dtype)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _cross_entropy(
    logits,
    labels,
    where,
    class_weights,
    label_smoothing,
    pos_weight,
    pixel_weights,
    *,
    activation,
    ignore_index,
    reduction,
    axis_name,
):
    num_classes = logits.shape[-1]
    finish = functools.partial(
        _finish, activation=activation, reduction=reduction, axis_name=axis_name
    )
    if _softmax.applies(activation, labels):
        terms, valid, weight_y = _pixel_terms(
            logits, labels, where, class_weights, ignore_index, smooth=label_smoothing != 0
        )
        # -sum_c w_c yhat_c log p_c with yhat = (1 - eps) [y = c] + eps / C.
        loss = (
            -(1 - label_smoothing) * weight_y * terms.log_p
            - (label_smoothing / num_classes) * terms.weighted_log_p
        )
        return _finish_engine(
            finish, loss, labels, valid, weight_y, class_weights, pixel_weights, num_classes
        )
    t = _Targets(
        logits, labels, where, class_weights, activation=activation, ignore_index=ignore_index
    )
    x = logits.astype(t.dtype)
    if activation == "softmax":
        y = (1 - label_smoothing) * t.y + label_smoothing / num_classes
        loss = -jnp.sum(t.weights * y * jax.nn.log_softmax(x, axis=-1), axis=-1)
        norm = jnp.sum(t.weights * t.y, axis=-1)
    else:
        y = (1 - label_smoothing) * t.y + label_smoothing / 2
        pos = 1 if pos_weight is None else t.per_class(pos_weight)
        loss = -t.weights * (pos * y * jax.nn.log_sigmoid(x) + (1 - y) * jax.nn.log_sigmoid(-x))
        norm = None
    return finish(loss, t.valid, norm, pixel_weights)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _focal_loss(
    logits,
    labels,
    where,
    class_weights,
    gamma,
    alpha,
    pixel_weights,
    *,
    activation,
    ignore_index,
    reduction,
    axis_name,
):
    num_classes = logits.shape[-1]
    finish = functools.partial(
        _finish, activation=activation, reduction=reduction, axis_name=axis_name
    )
    if _softmax.applies(activation, labels):
        terms, valid, weight_y = _pixel_terms(
            logits, labels, where, class_weights, ignore_index, focal=True
        )
        dtype = terms.log_p.dtype
        alpha_y = (
            1
            if alpha is None
            else _label_weight(_focal_alpha(alpha, num_classes, dtype), labels, dtype)
        )
        # (1 - p_y)^gamma = exp(gamma log(1 - p_y)): gamma = 0 is the cross-entropy.
        modulator = jnp.exp(gamma * terms.log1m_p)
        loss = -alpha_y * weight_y * modulator * terms.log_p
        # The loss and its normaliser summed in place: the gradient stores the modulator
        # and log p_y anyway, so the sum's loop multiplies stored planes, and no plane of
        # the loss is stored for a library sum. Measured, jit(value_and_grad), temporary
        # memory over the logits, library / in place: 2.50x / 2.00x at (8, 362, 362, 2),
        # 1.67x / 1.34x at 3 classes, 1.25x / 1.00x at 4; time over optax CE within
        # noise (A/B, one process: 0.21 / 0.21 at 2 classes, 0.64 / 0.63 at 4, 0.74 /
        # 0.80 at 8, 0.99 / 1.02 at 19). Not for the cross-entropy, whose log p_y is
        # not stored: its logarithm would run in the loop (0.30x -> 0.76x optax CE at 4
        # classes).
        norm = jnp.broadcast_to(weight_y, loss.shape)
        return finish(loss, valid, norm, pixel_weights, in_place=True)
    t = _Targets(
        logits, labels, where, class_weights, activation=activation, ignore_index=ignore_index
    )
    x = logits.astype(t.dtype)
    if activation == "softmax":
        log_p = jax.nn.log_softmax(x, axis=-1)
        modulator = jnp.exp(gamma * _log1m_softmax(x, log_p))
        alpha_c = t.per_class(_focal_alpha(alpha, num_classes, x.dtype))
        loss = -jnp.sum(t.weights * alpha_c * t.y * modulator * log_p, axis=-1)
        norm = jnp.sum(t.weights * t.y, axis=-1)
    else:
        bce = -(t.y * jax.nn.log_sigmoid(x) + (1 - t.y) * jax.nn.log_sigmoid(-x))
        modulator = jnp.exp(gamma * _log1m_pt_sigmoid(x, t.y))
        loss = t.weights * modulator * bce
        if alpha is not None:
            alpha = t.per_class(alpha)
            loss = (alpha * t.y + (1 - alpha) * (1 - t.y)) * loss
        norm = None
    return finish(loss, t.valid, norm, pixel_weights)


def _validate(
    logits, labels, *, activation, ignore_index, where, class_weights, reduction, pixel_weights
):
    # Pixel losses need logits: activation=None (probabilities) is for overlap losses.
    _checks.check_option("activation", activation, ("softmax", "sigmoid"))
    _checks.check_loss_inputs(
        logits,
        labels,
        activation=activation,
        ignore_index=ignore_index,
        where=where,
        class_weights=class_weights,
        reduction=reduction,
    )
    _check_pixel_weights(pixel_weights, jnp.shape(logits)[:-1])


def _check_pixel_weights(pixel_weights, expected):
    if pixel_weights is None:
        return
    shape = tuple(jnp.shape(pixel_weights))
    if shape != tuple(expected):
        raise ValueError(
            f"`pixel_weights` must have shape (batch, *spatial) = {tuple(expected)}, one "
            f"weight per pixel; got shape {shape}."
        )
    dtype = jnp.result_type(pixel_weights)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`pixel_weights` must be a float array; got dtype {dtype}.")
    _checks.check_nonnegative("pixel_weights", pixel_weights)


def _array(x: Any) -> jax.Array | None:
    return None if x is None else jnp.asarray(x)


@_arguments.normalised
def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    activation: str = "softmax",
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
    label_smoothing: float = 0.0,
    pos_weight: ArrayLike | None = None,
    pixel_weights: ArrayLike | None = None,
) -> jax.Array:
    r"""Cross-entropy: softmax (exclusive classes) or binary per channel (sigmoid).

    Softmax, per pixel, with smoothed targets :math:`\hat y = (1-\epsilon) y +
    \epsilon / C` and class weights ``w`` (``torch.nn.functional.cross_entropy``):

    .. math::
        \ell_i = -\sum_c w_c\, \hat y_{ic} \log \mathrm{softmax}(x_i)_c, \qquad
        \text{mean} = \sum_i \omega_i \ell_i \Big/ \sum_i \omega_i \sum_c w_c\, y_{ic}

    with pixel weights :math:`\omega` (``pixel_weights``, 1 by default).

    Sigmoid, per pixel and channel, with :math:`\hat y = (1-\epsilon) y + \epsilon/2`
    and ``pos_weight`` ``q`` (``BCEWithLogitsLoss``):
    :math:`\ell_{ic} = -w_c [q\, \hat y \log\sigma(x) + (1-\hat y) \log\sigma(-x)]`,
    mean over valid pixel-channels.

    Args:
      logits: ``(batch, *spatial, classes)`` float logits.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, classes)``.
        With ``"sigmoid"`` and one channel, integer label 1 is the foreground.
      activation: ``"softmax"`` or ``"sigmoid"``.
      class_weights: ``(classes,)`` non-negative weights.
      ignore_index: integer label whose pixels are excluded.
      where: boolean ``(batch, *spatial)``; pixels where False are excluded.
      reduction: ``"mean"`` over valid pixels (pixel-channels for sigmoid), ``"sum"``,
        or ``"none"``: ``(batch, *spatial)`` (softmax) or ``(batch, *spatial,
        classes)`` (sigmoid), 0 at excluded pixels.
      axis_name: mapped axis name(s): sums and counts become global.
      label_smoothing: ``epsilon`` in [0, 1].
      pos_weight: weight of positives (sigmoid only), scalar or ``(classes,)``.
      pixel_weights: float ``(batch, *spatial)`` non-negative per-pixel weights
        ``omega`` (e.g. U-Net border weights): the mean becomes
        ``sum_i omega_i w_{y_i} l_i / sum_i omega_i w_{y_i}`` over valid pixels (sigmoid:
        ``sum omega l / sum omega`` over valid pixel-channels); ``"none"`` and ``"sum"``
        return ``omega l``. Keras' ``sample_weight`` divides by the pixel count
        instead of ``sum omega``.

    Returns:
      A float32 scalar, or the ``"none"`` values.

    Examples:
      >>> import jax.numpy as jnp, jaxseg
      >>> logits = jnp.array([[[2.0, 0.0], [0.0, 2.0]]]); labels = jnp.array([[0, 0]])
      >>> jaxseg.cross_entropy(logits, labels).round(4)
      Array(1.1269, dtype=float32)

    References:
      Szegedy et al. Rethinking the Inception Architecture for Computer Vision. CVPR
      2016 (label smoothing).
    """
    _validate(
        logits,
        labels,
        activation=activation,
        ignore_index=ignore_index,
        where=where,
        class_weights=class_weights,
        reduction=reduction,
        pixel_weights=pixel_weights,
    )
    if pos_weight is not None:
        if activation != "sigmoid":
            raise ValueError(
                f"`pos_weight` applies to activation='sigmoid' only; got activation={activation!r}."
            )
        _checks.check_per_class("pos_weight", pos_weight, jnp.shape(logits)[-1])
    return _cross_entropy(
        jnp.asarray(logits),
        jnp.asarray(labels),
        _array(where),
        _array(class_weights),
        label_smoothing,
        _array(pos_weight),
        _array(pixel_weights),
        activation=activation,
        ignore_index=ignore_index,
        reduction=reduction,
        axis_name=axis_name,
    )


@_arguments.normalised(alpha=_arguments.number(low=0, high=1, per_class=True, optional=True))
def focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 2.0,
    alpha: float | ArrayLike | None = None,
    activation: str = "softmax",
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
    pixel_weights: ArrayLike | None = None,
) -> jax.Array:
    r"""Focal loss (Lin et al. 2017), softmax or sigmoid, computed in log space.

    .. math::
        \ell = -\alpha_t\, (1 - p_t)^{\gamma} \log p_t

    Softmax: summed over classes with the (one-hot or soft) label as ``p_t``'s
    weight, ``alpha`` a per-class array, or a float meaning ``1 - alpha`` for class 0
    and ``alpha`` for the others (MONAI); the mean is over valid pixels (weighted by
    ``class_weights`` as :func:`cross_entropy`). Sigmoid: per pixel and channel,
    ``alpha`` weighs positives and ``1 - alpha`` negatives (optax, MONAI); for soft
    labels ``1 - p_t = p (1 - y) + (1 - p) y`` (optax). ``(1 - p_t)^gamma`` is
    ``exp(gamma log(1 - p_t))`` with ``log(1 - p_t)`` from the logits, so ``gamma = 0``
    gives cross-entropy exactly and ``gamma < 1`` keeps finite gradients.

    Args:
      logits: ``(batch, *spatial, classes)`` float logits.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, classes)``.
      gamma: focusing parameter, >= 0.
      alpha: balance factor: None, a float in [0, 1], or ``(classes,)``.
      activation: ``"softmax"`` or ``"sigmoid"``.
      class_weights, ignore_index, where, reduction, axis_name, pixel_weights: as
        :func:`cross_entropy`.

    Returns:
      A float32 scalar, or the ``"none"`` values (shapes as :func:`cross_entropy`).

    Examples:
      >>> import jax.numpy as jnp, jaxseg
      >>> logits = jnp.array([[[0.0]]]); labels = jnp.array([[1]])
      >>> jaxseg.focal_loss(logits, labels, activation="sigmoid").round(4)
      Array(0.1733, dtype=float32)

    References:
      Lin, Goyal, Girshick, He, Dollar. Focal Loss for Dense Object Detection. ICCV
      2017.
    """
    _validate(
        logits,
        labels,
        activation=activation,
        ignore_index=ignore_index,
        where=where,
        class_weights=class_weights,
        reduction=reduction,
        pixel_weights=pixel_weights,
    )
    if alpha is not None:
        _checks.check_per_class("alpha", alpha, jnp.shape(logits)[-1])
    return _focal_loss(
        jnp.asarray(logits),
        jnp.asarray(labels),
        _array(where),
        _array(class_weights),
        gamma,
        _array(alpha),
        _array(pixel_weights),
        activation=activation,
        ignore_index=ignore_index,
        reduction=reduction,
        axis_name=axis_name,
    )
