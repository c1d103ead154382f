"""Top-k cross-entropy (nnU-Net's ``TopKLoss``): the mean over the hardest pixels.

The k-th largest per-pixel cross-entropy of the whole batch (of every device with
``axis_name``) is found exactly by a bitwise search on the values: cross-entropy is
non-negative, and the bit patterns of non-negative IEEE floats are ordered as the
floats, so the largest pattern ``t`` with ``#{v >= t} >= k`` is built one bit at a
time from the most significant down, each bit costing one pass that counts the
values at or above a candidate (and, across devices, one ``psum`` of one int32). That
is 31 counting passes in float32 (63 in float64), no sort, no gather of the values
across devices, and no shape that depends on ``k`` (``k`` is traced).

The loss is then ``(sum_{v > t} v + (k - #{v > t}) t) / k``: the mean of the k
largest values, ties at the threshold sharing the remaining slots equally (their
gradients too; ``torch.topk`` gives whole slots to an arbitrary subset of ties).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxseg import _arguments, _checks, _pixel, _reduce, _stats

AxisName = str | tuple[str, ...] | None
ArrayLike = jax.typing.ArrayLike


def value_bits(values: jax.Array) -> jax.Array:
    """The bit patterns of non-negative floats, as signed integers ordered as the floats.

    ``abs`` turns -0.0 (a possible zero cross-entropy) into +0.0, whose pattern is 0.
    """
    int_type = {4: jnp.int32, 8: jnp.int64}[values.dtype.itemsize]
    return jax.lax.bitcast_convert_type(jnp.abs(values), int_type)


def kth_largest_bits(
    bits: jax.Array, valid: jax.Array, k: jax.Array, axis_name: AxisName = None
) -> jax.Array:
    """The ``k``-th largest of the valid patterns ``bits`` (over ``axis_name`` too).

    ``k`` is an int32 scalar in ``[1, #valid]``; the result is an element of ``bits``.
    """
    num_bits = 8 * bits.dtype.itemsize - 1  # the sign bit is 0

    def body(i, threshold):
        candidate = threshold | (jnp.ones((), bits.dtype) << (num_bits - 1 - i))
        count = _stats.psum(jnp.sum((bits >= candidate) & valid, dtype=jnp.int32), axis_name)
        return jnp.where(count >= k, candidate, threshold)

    # A zero of k's type: inside shard_map, k and the counts vary across devices
    # exactly when they were not summed over them, and the loop carry must match.
    start = (k * 0).astype(bits.dtype)
    return jax.lax.fori_loop(0, num_bits, body, start)


def kth_largest(
    values: jax.Array, valid: jax.Array, k: jax.Array, axis_name: AxisName = None
) -> jax.Array:
    """The ``k``-th largest of the valid, non-negative ``values`` (over ``axis_name`` too)."""
    threshold = kth_largest_bits(value_bits(values), valid, k, axis_name)
    return jax.lax.bitcast_convert_type(threshold, values.dtype)


def top_k_mean_weights(
    values: jax.Array, valid: jax.Array, k_percent, axis_name: AxisName
) -> tuple[jax.Array, jax.Array]:
    """Selection weights (1 above the threshold, a share for ties, 0 below) and ``k``."""
    # One materialised copy of the patterns for the search and the selection alike, so
    # that both compare the same numbers even where XLA would recompute the values
    # inside each consumer's fusion (the loop needs them in memory anyway).
    bits = jax.lax.optimization_barrier(value_bits(jax.lax.stop_gradient(values)))
    num_valid = _stats.psum(jnp.sum(valid, dtype=jnp.int32), axis_name)
    # nnU-Net: int(num_voxels * k / 100), here of the valid pixels, and at least one.
    n_k = num_valid.astype(jnp.float32) * k_percent
    k = jnp.floor(n_k / 100).astype(jnp.int32)
    # With k known at compile time XLA folds k / 100 into one rounded constant, which can
    # move an exact quotient below an integer (240 * 20 / 100 gave 47.999998, then 47):
    # one step of correction by exact products puts floor(n k / 100) back.
    k = k + ((k + 1).astype(jnp.float32) * 100 <= n_k) - (k.astype(jnp.float32) * 100 > n_k)
    k = jnp.clip(k, jnp.minimum(num_valid, 1), num_valid)
    threshold = kth_largest_bits(bits, valid, k, axis_name)
    above = valid & (bits > threshold)
    tied = valid & (bits == threshold)
    num_above = _stats.psum(jnp.sum(above, dtype=jnp.int32), axis_name)
    num_tied = _stats.psum(jnp.sum(tied, dtype=jnp.int32), axis_name)
    share = _reduce.safe_divide((k - num_above).astype(values.dtype), num_tied.astype(values.dtype))
    weights = jnp.where(above, 1, jnp.where(tied, share, 0)).astype(values.dtype)
    return weights, k


@functools.partial(
    jax.jit, static_argnames=("activation", "ignore_index", "reduction", "axis_name")
)
def _topk_cross_entropy(
    logits,
    labels,
    where,
    class_weights,
    k,
    label_smoothing,
    *,
    activation,
    ignore_index,
    reduction,
    axis_name,
):
    values = _pixel.cross_entropy(
        logits,
        labels,
        activation=activation,
        class_weights=class_weights,
        ignore_index=ignore_index,
        where=where,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    valid = _checks.valid_mask(labels, logits.shape[-1], activation, ignore_index, where)
    if values.ndim == valid.ndim + 1:  # sigmoid: one value per pixel and channel
        valid = jnp.broadcast_to(valid[..., None], values.shape)
    weights, count = top_k_mean_weights(values, valid, k, axis_name)
    selected = weights * values
    if reduction == "none":
        return selected
    total = _stats.psum(jnp.sum(selected), axis_name)
    if reduction == "sum":
        return total
    return _reduce.safe_divide(total, count.astype(total.dtype))


@_arguments.normalised
def topk_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    k: float = 10.0,
    activation: str = "softmax",
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
    label_smoothing: float = 0.0,
) -> jax.Array:
    r"""Top-k cross-entropy (nnU-Net ``TopKLoss``): the mean CE of the hardest k %.

    With :math:`\ell_i` the per-pixel cross-entropy of :func:`jaxseg.cross_entropy`
    (``reduction="none"``: class weights and label smoothing included) over the ``n``
    valid pixels of the whole batch, :math:`K = \max(1, \lfloor n k / 100 \rfloor)`
    and :math:`t` the K-th largest :math:`\ell_i`:

    .. math::
        L = \frac{1}{K} \Big( \sum_{\ell_i > t} \ell_i
            + \big(K - \#\{\ell_i > t\}\big)\, t \Big)

    the mean of the K largest values (ties at ``t`` share the remaining slots). With
    ``axis_name`` the pixels of every device count and ``t`` is the global threshold,
    found by an exact bitwise search (31 counting passes over the values and 31 scalar
    ``psum`` s in float32; see :mod:`jaxseg._topk`). With ``"sigmoid"`` the values are
    per pixel and channel. Equals nnU-Net v2's ``TopKLoss(k=k)`` when no pixel is
    ignored (nnU-Net counts ignored pixels in ``n``: the differences table).

    Args:
      logits: ``(batch, *spatial, classes)`` float logits.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, classes)``.
      k: the percentage of valid pixels kept, in (0, 100] (traced; its gradient is 0).
      activation: ``"softmax"`` or ``"sigmoid"``.
      class_weights: ``(classes,)`` non-negative weights of the per-pixel CE.
      ignore_index: integer label whose pixels are excluded.
      where: boolean ``(batch, *spatial)``; pixels where False are excluded.
      reduction: ``"mean"`` (the loss above), ``"sum"`` (the sum of the K largest), or
        ``"none"``: the per-pixel CE times its selection weight (1 for the K
        largest, 0 for the others), shaped as :func:`jaxseg.cross_entropy`'s.
      axis_name: mapped axis name(s) inside ``shard_map``/``pmap``: a global top k.
      label_smoothing: as :func:`jaxseg.cross_entropy`.

    Returns:
      A float32 scalar, or the ``"none"`` values.

    Examples:
      >>> import jax.numpy as jnp, jaxseg
      >>> logits = jnp.array([[[2.0, 0.0], [0.0, 2.0], [0.0, 0.0], [1.0, 0.0]]])
      >>> labels = jnp.array([[0, 0, 0, 0]])
      >>> jaxseg.topk_cross_entropy(logits, labels, k=50.0).round(4)
      Array(1.41, dtype=float32)

    References:
      Wu, Shen, van den Hengel. Bridging Category-level and Instance-level Semantic
      Image Segmentation. arXiv:1605.06885, 2016.
      Isensee, Jaeger, Kohl, Petersen, Maier-Hein. nnU-Net: a self-configuring method
      for deep learning-based biomedical image segmentation. Nature Methods 2021.
    """
    _pixel._validate(
        logits,
        labels,
        activation=activation,
        ignore_index=ignore_index,
        where=where,
        class_weights=class_weights,
        reduction=reduction,
        pixel_weights=None,
    )
    return _topk_cross_entropy(
        jnp.asarray(logits),
        jnp.asarray(labels),
        None if where is None else jnp.asarray(where),
        None if class_weights is None else jnp.asarray(class_weights),
        k,
        label_smoothing,
        activation=activation,
        ignore_index=ignore_index,
        reduction=reduction,
        axis_name=axis_name,
    )
