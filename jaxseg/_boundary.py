r"""Distance-map losses: the boundary loss and the Hausdorff distance-transform loss.

Both weight a per-pixel term by distance maps of binary masks, one map per (sample,
class). The maps come from the library's exact Euclidean distance transform
(:func:`jaxseg.metrics.euclidean_distance_transform`'s kernel), computed on the device
inside the same ``jit`` program as the loss, and carry no gradient
(``lax.stop_gradient``): they are constants of the loss, as in the papers and in MONAI,
which computes them with SciPy on the host one sample and one class at a time.

Distance maps of a mask :math:`M` among the valid pixels :math:`V` (all pixels unless
``ignore_index``/``where`` exclude some):

- :math:`d_{out}(x) = \min\{\lVert x - y\rVert : y \in V \setminus M\}`, the distance to
  the nearest valid pixel outside the mask, and
  :math:`d_{in}(x) = \min\{\lVert x - y\rVert : y \in V \cap M\}`, to the nearest one
  inside (SciPy's ``distance_transform_edt(M)`` and ``distance_transform_edt(~M)``).
- MONAI 1.6.1's conventions: a mask with no interface among the valid pixels (empty
  or full) has the zero map; the signed map of the boundary loss is
  :math:`1 - d_{out}` inside (0 on the inner boundary, negative deeper) and
  :math:`d_{in}` outside; the Hausdorff field is :math:`d_{out}` inside and
  :math:`d_{in}` outside (1 on both sides of the boundary).

Excluded pixels are never targets of the transform and leave every sum and count: a
Euclidean distance does not depend on the domain, so excluding a box of pixels equals
cropping it away.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseg import _arguments, _checks, _distance, _reduce, _stats

AxisName = str | tuple[str, ...] | None
ArrayLike = jax.typing.ArrayLike

_STATIC = ("activation", "ignore_index", "include_background", "batch", "reduction", "axis_name")


# --------------------------------------------------------------------------------------
# Per-class maps, channels-first inside: (batch, classes, *spatial).


class ClassMaps:
    """Probabilities, targets and validity of every kept class, channels first.

    Attributes:
      probs: ``(batch, C', *spatial)`` probabilities in the compute dtype.
      targets: ``(batch, C', *spatial)`` label values in the compute dtype (0/1 for
        integer labels, as given for dense ones).
      valid: ``(batch, 1, *spatial)`` boolean: pixels that count.
      ndim: number of spatial axes.
    """

    def __init__(self, logits, labels, where, *, activation, ignore_index, include_background):
        prepared = _checks.prepare(
            logits, labels, activation=activation, ignore_index=ignore_index, where=where
        )
        ndim = logits.ndim - 2
        probs = jnp.moveaxis(prepared.probs, -1, 1)
        if _checks.is_integer_labels(prepared.labels):
            values = prepared.label_values.reshape((1, -1) + (1,) * ndim)
            targets = (prepared.labels[:, None] == values).astype(probs.dtype)
        else:
            targets = jnp.moveaxis(prepared.labels, -1, 1)
        if drops_background(logits.shape[-1], include_background):
            probs, targets = probs[:, 1:], targets[:, 1:]
        self.probs = probs
        self.targets = targets
        self.valid = prepared.valid[:, None]
        self.ndim = ndim


def drops_background(num_channels: int, include_background: bool) -> bool:
    """Whether channel 0 is dropped: as MONAI, a single channel is always kept."""
    return not include_background and num_channels > 1


def distances_to_sides(mask: jax.Array, valid: jax.Array, ndim: int) -> tuple[jax.Array, ...]:
    """``(d_out, d_in, interface)`` of each mask over its last ``ndim`` axes.

    ``d_out``: distance to the nearest valid pixel outside the mask; ``d_in``: to the
    nearest valid pixel inside; ``interface``: True where both exist (shape of ``mask``
    with the spatial axes kept as size 1). Both transforms run as one batched call.
    """
    inside = mask & valid
    outside = ~mask & valid
    spacing = jnp.ones((ndim,), jnp.float32)
    squared = _distance._squared_distance_transform(jnp.stack([outside, inside]), spacing)
    d_out, d_in = jnp.sqrt(squared[0]), jnp.sqrt(squared[1])
    spatial = tuple(range(mask.ndim - ndim, mask.ndim))
    interface = jnp.any(inside, axis=spatial, keepdims=True) & jnp.any(
        outside, axis=spatial, keepdims=True
    )
    return d_out, d_in, interface


def signed_distance_map(mask: jax.Array, valid: jax.Array, ndim: int) -> jax.Array:
    r"""MONAI's signed distance map: :math:`1 - d_{out}` inside, :math:`d_{in}` outside.

    0 on the inner boundary, negative deeper inside, at least 1 outside; the zero map
    for a mask without interface; 0 at excluded pixels. No gradient.
    """
    d_out, d_in, interface = distances_to_sides(mask, valid, ndim)
    signed = jnp.where(mask, 1 - d_out, d_in)
    return lax.stop_gradient(jnp.where(interface & valid, signed, 0.0))


def contour_distance_field(mask: jax.Array, valid: jax.Array, ndim: int) -> jax.Array:
    r"""MONAI's Hausdorff field: :math:`d_{out}` inside, :math:`d_{in}` outside.

    The distance to the other side of the contour (at least 1); the zero map for a mask
    without interface; 0 at excluded pixels. No gradient.
    """
    d_out, d_in, interface = distances_to_sides(mask, valid, ndim)
    field = jnp.where(mask, d_out, d_in)
    return lax.stop_gradient(jnp.where(interface & valid, field, 0.0))


# --------------------------------------------------------------------------------------
# Reductions shared by both losses.


def _class_weights(class_weights, num_channels, include_background, dtype):
    if class_weights is None:
        return None
    weights = jnp.asarray(class_weights, dtype)
    return weights[1:] if drops_background(num_channels, include_background) else weights


def _reduce_means(
    total: jax.Array,
    count: jax.Array,
    weights: jax.Array | None,
    *,
    batch: bool,
    reduction: str,
    axis_name: AxisName,
) -> jax.Array:
    """Per-(sample, class) sums over valid pixels -> means -> the requested reduction.

    ``total``: ``(batch, C')`` sums; ``count``: ``(batch, 1)`` valid-pixel counts. With
    ``batch`` both are summed over the batch (and ``axis_name``) before the ratio.
    """
    if batch:
        total = _stats.psum(jnp.sum(total, axis=0), axis_name)
        count = _stats.psum(jnp.sum(count, axis=0), axis_name)
    values = _reduce.safe_divide(total, count.astype(total.dtype))
    w = jnp.ones((values.shape[-1],), values.dtype) if weights is None else weights
    w = jnp.broadcast_to(w, values.shape)
    # With batch=True the values are already global: the same on every device.
    return _reduce.weighted_reduce(w * values, w, reduction, None if batch else axis_name)


_validate = _checks.check_loss_inputs


def _array(x: Any) -> jax.Array | None:
    return None if x is None else jnp.asarray(x)


# --------------------------------------------------------------------------------------
# Boundary loss


@functools.partial(jax.jit, static_argnames=_STATIC)
def _boundary_loss(
    logits,
    labels,
    where,
    class_weights,
    *,
    activation,
    ignore_index,
    include_background,
    batch,
    reduction,
    axis_name,
):
    maps = ClassMaps(
        logits,
        labels,
        where,
        activation=activation,
        ignore_index=ignore_index,
        include_background=include_background,
    )
    phi = signed_distance_map(maps.targets > 0.5, maps.valid, maps.ndim).astype(maps.probs.dtype)
    spatial = tuple(range(2, maps.probs.ndim))
    # phi is 0 at excluded pixels, so they leave the sum; where() keeps their garbage
    # probabilities (inf, NaN) out of it too.
    total = jnp.sum(jnp.where(maps.valid, maps.probs * phi, 0), axis=spatial)
    count = jnp.sum(maps.valid, axis=spatial, dtype=jnp.int32)
    weights = _class_weights(class_weights, logits.shape[-1], include_background, total.dtype)
    return _reduce_means(
        total, count, weights, batch=batch, reduction=reduction, axis_name=axis_name
    )


@_arguments.normalised
def boundary_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    activation: str | None = "softmax",
    include_background: bool = True,
    batch: bool = False,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
) -> jax.Array:
    r"""Boundary loss (Kervadec et al. 2019): probabilities times the label's signed distance.

    .. math::
        L_{bc} = \frac{1}{|V_b|} \sum_{x \in V_b} p_{bc}(x)\, \phi_{bc}(x), \qquad
        \phi = \begin{cases} 1 - d_{out}(x) & x \in M \\ d_{in}(x) & x \notin M \end{cases}

    where :math:`M = \{y_{bc} > 0.5\}` is the class mask of the label, :math:`V_b` the
    valid pixels of sample ``b``, :math:`d_{out}` the Euclidean distance to the nearest
    valid pixel outside the mask and :math:`d_{in}` to the nearest one inside. The map
    is 0 on the inner boundary, negative inside and positive outside; it is the zero
    map for a class that is empty or fills the image. It is a constant of the loss (no
    gradient), computed on the device by the library's exact distance transform.
    ``"mean"`` returns the mean over samples and classes.

    With the same options this equals MONAI 1.6.1 ``BoundaryLoss`` on channels-first
    copies (``softmax=True, to_onehot_y=True`` for the defaults), its map included.
    The loss is not bounded below by 0: a perfect prediction scores the (negative) mean
    of :math:`\phi` over the mask. It is usually added to a region loss,
    ``jaxseg.combine(dice_loss, boundary_loss, weights=...)``, with a weight that grows
    during training (pass it to ``CombinedLoss.evaluate``: traced, no recompilation).

    Args:
      logits: ``(batch, *spatial, classes)`` float logits, 1 to 3 spatial axes.
      labels: integer class indices ``(batch, *spatial)``, or dense labels of the
        logits' shape (thresholded at 0.5 for the map).
      activation: ``"softmax"``, ``"sigmoid"`` (one channel with integer labels is a
        binary mask, label 1 the foreground) or ``None`` (probabilities given).
      include_background: False drops channel 0 (ignored for a single channel, as
        MONAI).
      batch: average the sums over the batch before the ratio; ``"none"`` then gives
        ``(classes',)`` (the maps stay per sample, as MONAI).
      class_weights: ``(classes,)`` non-negative weights of the class mean (background
        included, dropped with it).
      ignore_index: integer label whose pixels are excluded (from the map's targets, the
        sums and the pixel counts).
      where: boolean ``(batch, *spatial)``; pixels where False are excluded.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``: ``(batch, classes')`` values.
      axis_name: mapped axis name(s) inside ``shard_map``/``pmap``: means (and, with
        ``batch``, the sums) become global. Average gradients with ``pmean``.

    Returns:
      A float32 scalar, or the ``"none"`` values.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxseg
      >>> labels = jnp.zeros((1, 6, 6), jnp.int32).at[0, 1:5, 1:5].set(1)
      >>> probs = jax.nn.one_hot(labels, 2)  # a perfect prediction
      >>> jaxseg.boundary_loss(probs, labels, activation=None, reduction="none")
      Array([[-0.04602373, -0.11111111]], dtype=float32)

    References:
      Kervadec, Bouchtiba, Desrosiers, Granger, Dolz, Ben Ayed. Boundary loss for
      highly unbalanced segmentation. MIDL 2019 (Medical Image Analysis 67, 2021).
    """
    _validate(
        logits,
        labels,
        activation=activation,
        ignore_index=ignore_index,
        where=where,
        class_weights=class_weights,
        reduction=reduction,
    )
    return _boundary_loss(
        jnp.asarray(logits),
        jnp.asarray(labels),
        _array(where),
        _array(class_weights),
        activation=activation,
        ignore_index=ignore_index,
        include_background=bool(include_background),
        batch=bool(batch),
        reduction=reduction,
        axis_name=axis_name,
    )


# --------------------------------------------------------------------------------------
# Hausdorff distance-transform loss


def _power(base: jax.Array, exponent: jax.Array) -> jax.Array:
    """``base ** exponent`` for ``base >= 0`` with a finite gradient in ``exponent`` at 0.

    ``0 ** a`` is 0 for ``a > 0`` and 1 for ``a == 0`` (torch's ``pow``); the
    derivative in ``a`` there (``0 * log 0``) is taken as its limit, 0.
    """
    positive = base > 0
    powered = jnp.exp(exponent * jnp.log(jnp.where(positive, base, 1)))
    return jnp.where(positive, powered, jnp.where(exponent == 0, 1.0, 0.0).astype(base.dtype))


@functools.partial(jax.jit, static_argnames=(*_STATIC, "log"))
def _hausdorff_dt_loss(
    logits,
    labels,
    where,
    class_weights,
    alpha,
    *,
    activation,
    ignore_index,
    include_background,
    batch,
    reduction,
    axis_name,
    log,
):
    maps = ClassMaps(
        logits,
        labels,
        where,
        activation=activation,
        ignore_index=ignore_index,
        include_background=include_background,
    )
    p, y = maps.probs, maps.targets
    dtype = p.dtype
    # MONAI thresholds the probabilities at 0.5 for the prediction's field. Both fields
    # in one batched transform (one loop nest to compile and run, not two).
    masks = jnp.stack([lax.stop_gradient(p) > 0.5, y > 0.5])
    pred_field, label_field = contour_distance_field(masks, maps.valid[None], maps.ndim)
    alpha = jnp.asarray(alpha, dtype)
    distance = _power(pred_field.astype(dtype), alpha) + _power(label_field.astype(dtype), alpha)
    error = jnp.where(maps.valid, jnp.square(p - y) * distance, 0)
    spatial = tuple(range(2, p.ndim))
    total = jnp.sum(error, axis=spatial)
    count = jnp.sum(maps.valid, axis=spatial, dtype=jnp.int32)
    weights = _class_weights(class_weights, logits.shape[-1], include_background, dtype)
    value = _reduce_means(
        total, count, weights, batch=batch, reduction=reduction, axis_name=axis_name
    )
    # MONAI's LogHausdorffDTLoss takes the log after the reduction.
    return jnp.log1p(value) if log else value


@_arguments.normalised
def hausdorff_dt_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: float = 2.0,
    log: bool = False,
    activation: str | None = "softmax",
    include_background: bool = False,
    batch: bool = False,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
) -> jax.Array:
    r"""Hausdorff distance-transform loss (Karimi & Salcudean 2019).

    .. math::
        L_{bc} = \frac{1}{|V_b|} \sum_{x \in V_b} (p_{bc}(x) - y_{bc}(x))^2
                 \big(d_{P}(x)^\alpha + d_{Y}(x)^\alpha\big)

    where :math:`d_Y` is the distance from each pixel to the other side of the label's
    contour (for :math:`x \in M`, to the nearest valid pixel outside :math:`M`; else to
    the nearest pixel of :math:`M`), with :math:`M = \{y > 0.5\}`, and :math:`d_P` the
    same for the prediction thresholded at :math:`p > 0.5`. A mask that is empty or
    fills the image has the zero field. Both fields are constants (no gradient),
    computed on the device by the library's exact distance transform. ``"mean"``
    averages over samples and classes; ``log=True`` returns :math:`\log(1 + L)` of the
    reduced value (of each value for ``"none"``).

    With the same options this equals MONAI 1.6.1 ``HausdorffDTLoss`` (``log=True``:
    ``LogHausdorffDTLoss``) on channels-first copies with one-hot targets, including its
    default ``include_background=False``; with a single channel the background option
    is ignored, as MONAI does.

    Args:
      logits: ``(batch, *spatial, classes)`` float logits, 1 to 3 spatial axes.
      labels: integer class indices ``(batch, *spatial)`` or dense labels of the
        logits' shape.
      alpha: exponent of the distances, >= 0 (may be traced).
      log: return :math:`\log(1 + L)` (static).
      activation: ``"softmax"``, ``"sigmoid"`` or ``None`` (probabilities given).
      include_background: False (default) drops channel 0 (kept for one channel).
      batch: average over the batch and the pixels at once; ``"none"`` then gives
        ``(classes',)``.
      class_weights: ``(classes,)`` non-negative weights of the class mean.
      ignore_index: integer label whose pixels are excluded (from both fields' targets,
        the sums and the counts).
      where: boolean ``(batch, *spatial)``; pixels where False are excluded.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``: ``(batch, classes')`` values.
      axis_name: mapped axis name(s) inside ``shard_map``/``pmap``.

    Returns:
      A float32 scalar (>= 0), or the ``"none"`` values.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxseg
      >>> labels = jnp.zeros((1, 5, 5), jnp.int32).at[0, 1:4, 1:4].set(1)
      >>> probs = jax.nn.one_hot(labels, 2).at[0, 0, 0].set(jnp.array([0.0, 1.0]))
      >>> jaxseg.hausdorff_dt_loss(probs, labels, activation=None)
      Array(0.12, dtype=float32)

    References:
      Karimi, Salcudean. Reducing the Hausdorff Distance in Medical Image Segmentation
      with Convolutional Neural Networks. IEEE Transactions on Medical Imaging 39(2),
      2020 (arXiv:1904.10030, 2019).
    """
    _validate(
        logits,
        labels,
        activation=activation,
        ignore_index=ignore_index,
        where=where,
        class_weights=class_weights,
        reduction=reduction,
    )
    if np.shape(alpha) != ():
        raise ValueError(f"`alpha` must be a scalar; got shape {np.shape(alpha)}.")
    return _hausdorff_dt_loss(
        jnp.asarray(logits),
        jnp.asarray(labels),
        _array(where),
        _array(class_weights),
        alpha,
        activation=activation,
        ignore_index=ignore_index,
        include_background=bool(include_background),
        batch=bool(batch),
        reduction=reduction,
        axis_name=axis_name,
        log=bool(log),
    )
