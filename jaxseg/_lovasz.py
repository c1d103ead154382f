r"""Lovász losses (Berman et al. 2018): convex surrogates of the Jaccard (IoU) loss.

The Lovász extension of the Jaccard loss of one class is computed from the pixel errors
``m`` sorted in decreasing order, ``pi``:

.. math::
    \bar\Delta(m) = \sum_i m_{\pi_i}\, g_i, \qquad
    g_i = \Delta(\{\pi_1..\pi_i\}) - \Delta(\{\pi_1..\pi_{i-1}\}), \qquad
    \Delta(S) = \frac{|S|}{|\{y = c\} \cup S|}

With static shapes and no boolean indexing: an excluded pixel sorts last and counts in
neither the foreground nor the background prefix counts, so it leaves every ``g_i`` of
the valid pixels unchanged and gets ``g = 0`` itself (and an error of 0): the masked
loss equals the loss of the sliced array, values and gradients. The prefix counts are
int32 for hard labels, so they stay exact beyond 2^24 pixels.

Hard labels take a faster route to the same sum (``_lovasz_hard``): one sort of unsigned
integer keys, as wide as the errors, that encode the error order and the label, instead
of a sort that carries errors and labels along (XLA's CPU sort is about 8x faster for one
integer operand than for several: 175 vs 1490 ms for 4 x 524288). Each pixel then finds
its ``g`` by a binary search of its key, and the loss is ``sum_j m_j g_j`` with ``g``
held constant, which is the Lovász extension's gradient. Where errors tie, foreground
pixels come first and the pixels of one label share the mean ``g`` of their tied
positions: the same value as any order, and a valid subgradient (the mean of the orders'
gradients). The key drops the last bit of the error, so errors 1 ulp apart count as tied.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseg import _arguments, _checks, _reduce, _sharding, _stats

AxisName = str | tuple[str, ...] | None
ArrayLike = jax.typing.ArrayLike


def lovasz_gradient(fg: jax.Array, valid: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """``g`` of the Jaccard loss for labels already sorted by decreasing error.

    Args:
      fg: ``(pixels,)`` boolean (or soft float) foreground of the class, sorted.
      valid: ``(pixels,)`` boolean, sorted with every valid pixel before every excluded
        one; excluded pixels leave every count.
      dtype: the floating dtype of the result.
    """
    if fg.dtype == jnp.bool_:
        pos = (fg & valid).astype(jnp.int32)
        num_valid = jnp.sum(valid, dtype=jnp.int32)
    else:
        pos = jnp.where(valid, fg, 0)
        num_valid = jnp.sum(valid, dtype=pos.dtype)
    total = jnp.sum(pos)
    cum_pos = jnp.cumsum(pos)
    # Valid pixels come first, so the valid pixels seen so far are min(i + 1, num_valid)
    # and the background ones that count minus the foreground ones: one cumsum, not two.
    seen = jnp.minimum(jnp.arange(1, fg.shape[0] + 1, dtype=cum_pos.dtype), num_valid)
    intersection = (total - cum_pos).astype(dtype)
    union = (total + seen - cum_pos).astype(dtype)
    # union is 0 only before the first valid pixel, i.e. when no pixel is valid.
    jaccard = 1 - _reduce.safe_divide(intersection, union)
    return jnp.diff(jaccard, prepend=jnp.zeros((1,), jaccard.dtype))


def _order_keys(errors: jax.Array, fg: jax.Array, valid: jax.Array) -> jax.Array:
    """Unsigned keys whose ascending order is decreasing error, foreground first in a tie.

    The float bits (uint32 for float32 errors, uint64 for float64) are mapped to an
    order-preserving unsigned integer, inverted for a decreasing order, and the last bit
    is replaced by the label (0 for foreground). Excluded pixels get the largest key.
    """
    uint = jnp.uint64 if errors.dtype == jnp.float64 else jnp.uint32
    top_bit = jnp.iinfo(uint).bits - 1
    bits = jax.lax.bitcast_convert_type(
        errors.astype(jnp.promote_types(errors.dtype, jnp.float32)), uint
    )
    ascending = jnp.where(bits >> top_bit == 1, ~bits, bits | (uint(1) << top_bit))
    keys = (~ascending & ~uint(1)) | (~fg).astype(uint)
    return jnp.where(valid, keys, uint(jnp.iinfo(uint).max))


def _lovasz_hard(errors: jax.Array, fg: jax.Array, valid: jax.Array) -> jax.Array:
    """``g`` per pixel for boolean labels, in pixel order (see the module docstring)."""
    keys = _order_keys(errors, fg, valid)
    ordered = jax.lax.sort(keys)
    n = keys.shape[0]
    index = jnp.arange(n, dtype=jnp.int32)
    valid_ordered = index < jnp.sum(valid, dtype=jnp.int32)
    bg_ordered = valid_ordered & ((ordered & 1) == 1)
    cum_fg = jnp.cumsum(valid_ordered & ~bg_ordered, dtype=jnp.int32)
    cum_bg = jnp.cumsum(bg_ordered, dtype=jnp.int32)
    total = cum_fg[-1]
    dtype = errors.dtype
    # Jaccard loss of the first i + 1 pixels in order (0 before the first one).
    jaccard = 1 - _reduce.safe_divide(
        (total - cum_fg).astype(dtype), (total + cum_bg).astype(dtype)
    )
    # Runs of equal keys (tied pixels of one label) share the mean g of their positions.
    change = ordered[1:] != ordered[:-1]
    first = jax.lax.cummax(jnp.where(jnp.concatenate([jnp.ones((1,), bool), change]), index, 0))
    last = jax.lax.cummin(
        jnp.where(jnp.concatenate([change, jnp.ones((1,), bool)]), index, n - 1), reverse=True
    )
    before = jnp.where(first > 0, jaccard[jnp.maximum(first - 1, 0)], 0)
    g_ordered = (jaccard[last] - before) / (last - first + 1).astype(dtype)
    if _checks.static_sizes(n):
        g = g_ordered[jnp.searchsorted(ordered, keys, side="left")]
    else:
        # A symbolic length, where searchsorted needs a static one: the sort's
        # permutation, from a two-operand sort.
        _, order = jax.lax.sort((keys, index), num_keys=1)
        g = jnp.zeros_like(g_ordered).at[order].set(g_ordered)
    return jnp.where(valid, g, 0)


def _lovasz_flat(errors: jax.Array, fg: jax.Array, valid: jax.Array, hinge: bool) -> jax.Array:
    """Lovász extension of one class map, all ``(pixels,)`` arrays."""
    if fg.dtype == jnp.bool_:
        g = jax.lax.stop_gradient(_lovasz_hard(errors, fg, valid))
        if hinge:
            errors = jax.nn.relu(errors)
        return jnp.sum(jnp.where(valid, errors, 0) * g)
    # Soft labels: the sort carries errors (differentiably) and labels; excluded last.
    key = jax.lax.stop_gradient(jnp.where(valid, -errors, jnp.inf))
    _, errors, fg, valid = jax.lax.sort((key, errors, fg, valid), num_keys=1, is_stable=True)
    if hinge:
        errors = jax.nn.relu(errors)
    errors = jnp.where(valid, errors, 0)
    return jnp.dot(errors, lovasz_gradient(fg, valid, errors.dtype))


def _axis_size(axis_name: AxisName) -> int:
    if hasattr(jax.lax, "axis_size"):
        return jax.lax.axis_size(axis_name)
    return jax.lax.psum(1, axis_name)  # older JAX: a concrete value at trace time


def _gather(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Concatenates the per-device ``x`` along axis 0, so every device sees the batch.

    Written as a ``psum`` of zero-padded blocks rather than an ``all_gather``: its
    gradient then follows ``psum``'s rules under ``shard_map`` and ``pmap`` alike, as the
    gradient of every other jaxseg loss does.
    """
    if axis_name is None:
        return x
    num_devices = _axis_size(axis_name)
    start = jax.lax.axis_index(axis_name) * x.shape[0]
    summable = x.astype(jnp.int32) if x.dtype == jnp.bool_ else x
    padded = jnp.zeros((num_devices * x.shape[0], *x.shape[1:]), summable.dtype)
    padded = jax.lax.dynamic_update_slice_in_dim(padded, summable, start, axis=0)
    gathered = _stats.psum(padded, axis_name)
    return gathered.astype(jnp.bool_) if x.dtype == jnp.bool_ else gathered


def _run_sharded(fn, arrays, *, per_image, reduction, axis_name):
    """Runs ``fn(*arrays, axis_name=...)``, under ``shard_map`` if the batch is explicit.

    Under ``jit`` with inputs on a mesh with ``Explicit`` axes, the sharding is part of
    the type: the per-batch problem merges the sharded batch axis into the pixel axis (a
    reshape with no defined sharding), and the per-image problem maps over it. Both are
    then computed as inside ``shard_map``, over the mesh axes that shard the batch, with
    those axes as ``axis_name`` (the errors of every shard are gathered per batch, the mean
    over images is global). Axes that shard other dimensions are gathered first. Inputs on
    ``Auto`` meshes, or not sharded, take the plain path. ``arrays`` holds the logits,
    labels and ``where`` (batch-sharded; None entries skipped) then replicated options.
    """
    sharding = _sharding.explicit_sharding(arrays[0])
    if sharding is None:
        return fn(*arrays, axis_name=axis_name)
    mesh = sharding.mesh
    batch_axes = _sharding.mesh_axes(sharding.spec[0])
    batch_spec = P(batch_axes or None)
    on_batch = NamedSharding(mesh, batch_spec)
    if not batch_axes:
        gathered = [a if a is None or i >= 3 else jax.sharding.reshard(a, on_batch)
                    for i, a in enumerate(arrays)]  # fmt: skip
        return fn(*gathered, axis_name=axis_name)
    present = [i for i, a in enumerate(arrays) if a is not None]
    batched = [jax.sharding.reshard(arrays[i], on_batch) for i in present if i < 3]
    option_indices = [i for i in present if i >= 3]
    options = [jax.sharding.reshard(arrays[i], NamedSharding(mesh, P())) for i in option_indices]
    inner_axis = (*_sharding.mesh_axes(axis_name), *batch_axes)

    def local(*values):
        full = [None] * len(arrays)
        for i, value in zip(present, values, strict=True):
            full[i] = value
        return fn(*full, axis_name=inner_axis)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(*[batch_spec] * len(batched), *[P()] * len(options)),
        out_specs=batch_spec if reduction == "none" and per_image else P(),
        axis_names=set(batch_axes),
    )(*batched, *options)


def _per_image_mean(values: jax.Array, has_pixels: jax.Array, reduction: str, axis_name):
    """Mean over images that have valid pixels (``values`` are 0 for the others)."""
    counts = has_pixels.astype(values.dtype)
    return _reduce.weighted_reduce(values * counts, counts, reduction, axis_name)


def _class_mask(counts: jax.Array, classes: str | tuple[int, ...]) -> jax.Array:
    """Which (image, class) entries enter the class mean."""
    if classes == "present":
        return counts > 0
    if classes == "all":
        return jnp.ones(counts.shape, jnp.bool_)
    chosen = np.zeros((counts.shape[-1],), np.bool_)
    chosen[list(classes)] = True
    return jnp.broadcast_to(jnp.asarray(chosen), counts.shape)


@functools.partial(
    jax.jit,
    static_argnames=(
        "per_image",
        "classes",
        "activation",
        "ignore_index",
        "reduction",
        "axis_name",
    ),
)
def _lovasz_softmax(
    logits, labels, where, class_weights, *, per_image, classes, activation, ignore_index,
    reduction, axis_name,
):  # fmt: skip
    inputs = _checks.prepare(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    probs, valid = inputs.probs, inputs.valid
    batch, num_classes = probs.shape[0], probs.shape[-1]
    if _checks.is_integer_labels(inputs.labels):
        fg = inputs.labels[..., None] == inputs.label_values.reshape((1,) * valid.ndim + (-1,))
        fg = fg & valid[..., None]
        errors = jnp.abs(fg.astype(probs.dtype) - probs)
    else:
        fg = jnp.where(valid[..., None], inputs.labels, 0)
        errors = jnp.abs(fg - probs)
    rows = batch if per_image else 1
    # (rows, classes, pixels): one sorted problem per (image, class) or per class.
    errors = jnp.moveaxis(errors.reshape(rows, -1, num_classes), -1, 1)
    fg = jnp.moveaxis(fg.reshape(rows, -1, num_classes), -1, 1)
    valid = valid.reshape(rows, -1)
    if not per_image:
        errors, fg, valid = (_gather(a, axis_name) for a in (errors, fg, valid))
        errors, fg, valid = (jnp.concatenate(list(a), axis=-1)[None] for a in (errors, fg, valid))
    per_class = jax.vmap(functools.partial(_lovasz_flat, hinge=False), in_axes=(0, 0, None))
    losses = jax.vmap(per_class)(errors, fg, valid)  # (rows, classes)
    counts = jnp.sum(fg, axis=-1, dtype=jnp.float32)
    weights = _class_mask(counts, classes).astype(losses.dtype)
    if class_weights is not None:
        weights = weights * class_weights.astype(losses.dtype).reshape(1, num_classes)
    weighted = weights * losses
    if reduction == "none":
        return weighted if per_image else weighted[0]
    if not per_image:
        if reduction == "sum":
            return jnp.sum(weighted)
        return _reduce.safe_divide(jnp.sum(weighted), jnp.sum(weights))
    if reduction == "sum":
        return _stats.psum(jnp.sum(weighted), axis_name)
    image_loss = _reduce.safe_divide(jnp.sum(weighted, axis=-1), jnp.sum(weights, axis=-1))
    return _per_image_mean(image_loss, jnp.any(valid, axis=-1), "mean", axis_name)


@_arguments.normalised
def lovasz_softmax_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    per_image: bool = False,
    classes: str | Sequence[int] = "present",
    activation: str | None = "softmax",
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
) -> jax.Array:
    r"""Lovász-Softmax loss (Berman et al. 2018): a convex surrogate of mean IoU.

    For each class ``c`` the pixel errors :math:`m_i = |y_{ic} - p_{ic}|` are sorted in
    decreasing order :math:`\pi` and weighted by the Lovász gradient of the Jaccard
    loss:

    .. math::
        L_c = \sum_i m_{\pi_i} \left(J_c(\pi_{1..i}) - J_c(\pi_{1..i-1})\right),
        \qquad J_c(S) = \frac{|S|}{|\{y = c\} \cup S|}

    then averaged over classes: those present in the labels (``classes="present"``,
    the reference default; a class with no valid pixel leaves the mean), all classes
    (``"all"``), or the listed class indices; ``class_weights`` make it a weighted
    mean. With ``per_image=False`` (the reference default) the pixels of the whole
    batch form one problem per class; with ``per_image=True`` each image is one
    problem and the loss is the mean over images that have a valid pixel. Excluded
    pixels (``ignore_index``, ``where``, labels out of range) leave the loss exactly as
    if they had been sliced out. No class present (everything excluded) gives 0 and a
    zero gradient.

    Args:
      logits: ``(batch, *spatial, classes)`` float logits.
      labels: integer ``(batch, *spatial)``, or dense one-hot ``(batch, *spatial,
        classes)`` (soft labels enter the formula as given; the Lovász extension is
        exact for hard labels).
      per_image: one problem per image (True) or per batch (False).
      classes: ``"present"``, ``"all"`` or a sequence of class indices.
      activation: ``"softmax"`` (the reference), ``"sigmoid"`` (independent channels,
        one channel a binary mask with label 1 the foreground) or None (probabilities).
      class_weights: ``(classes,)`` non-negative weights of the class mean.
      ignore_index: integer label whose pixels are excluded.
      where: boolean ``(batch, *spatial)``; pixels where False are excluded.
      reduction: ``"mean"`` (as above), ``"sum"`` or ``"none"``: the weighted
        per-class losses ``w_c L_c`` (0 for classes left out), ``(batch, classes)``
        with ``per_image``, ``(classes,)`` without.
      axis_name: mapped axis name(s) inside ``shard_map``/``pmap``. Per image, the
        mean over images becomes global; per batch, the errors of every device are
        gathered (``all_gather``) so the sort is over the global batch. Average
        gradients with ``pmean``.

    Returns:
      A float32 scalar, or the ``"none"`` values.

    Examples:
      >>> import jax, jaxseg
      >>> logits = jax.random.normal(jax.random.key(0), (2, 16, 16, 4))
      >>> labels = jax.random.randint(jax.random.key(1), (2, 16, 16), 0, 4)
      >>> loss, grads = jax.value_and_grad(jaxseg.lovasz_softmax_loss)(logits, labels)
      >>> loss.shape, grads.shape
      ((), (2, 16, 16, 4))

    References:
      Berman, Rannen Triki, Blaschko. The Lovász-Softmax loss: A tractable surrogate
      for the optimization of the intersection-over-union measure in neural networks.
      CVPR 2018.
    """
    _checks.check_logits_labels(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    _checks.check_option("reduction", reduction, _checks.REDUCTIONS)
    num_classes = jnp.shape(logits)[-1]
    _checks.check_class_weights(class_weights, num_classes)
    if isinstance(classes, str):
        _checks.check_option("classes", classes, ("present", "all"))
    else:
        classes = tuple(int(c) for c in classes)
        if not classes or any(not 0 <= c < num_classes for c in classes):
            raise ValueError(
                f"`classes` must be 'present', 'all' or a non-empty sequence of class "
                f"indices in [0, {num_classes}); got {classes!r}."
            )
    return _run_sharded(
        functools.partial(
            _lovasz_softmax,
            per_image=bool(per_image),
            classes=classes,
            activation=activation,
            ignore_index=ignore_index,
            reduction=reduction,
        ),
        (
            jnp.asarray(logits),
            jnp.asarray(labels),
            None if where is None else jnp.asarray(where),
            None if class_weights is None else jnp.asarray(class_weights),
        ),
        per_image=bool(per_image),
        reduction=reduction,
        axis_name=axis_name,
    )


@functools.partial(jax.jit, static_argnames=("per_image", "ignore_index", "reduction", "axis_name"))
def _lovasz_hinge(logits, labels, where, *, per_image, ignore_index, reduction, axis_name):
    dtype = _checks.compute_dtype(logits.dtype)
    x = logits[..., 0].astype(dtype)
    valid = _checks.valid_mask(labels, 1, "sigmoid", ignore_index, where)
    if _checks.is_integer_labels(labels):
        fg = (labels.astype(jnp.int32) == 1) & valid
        signs = 2 * fg.astype(dtype) - 1
    else:
        fg = jnp.where(valid, labels[..., 0].astype(dtype), 0)
        signs = 2 * fg - 1
    errors = 1 - x * signs
    rows = x.shape[0] if per_image else 1
    errors, fg, valid = (a.reshape(rows, -1) for a in (errors, fg, valid))
    if not per_image:
        errors, fg, valid = (_gather(a, axis_name).reshape(1, -1) for a in (errors, fg, valid))
    losses = jax.vmap(functools.partial(_lovasz_flat, hinge=True))(errors, fg, valid)
    if reduction == "none":
        return losses if per_image else losses[0]
    if not per_image:
        return losses[0]
    if reduction == "sum":
        return _stats.psum(jnp.sum(losses), axis_name)
    return _per_image_mean(losses, jnp.any(valid, axis=-1), "mean", axis_name)


@_arguments.normalised
def lovasz_hinge_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    per_image: bool = True,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
) -> jax.Array:
    r"""Lovász hinge loss (Berman et al. 2018) for one binary (sigmoid) channel.

    The hinge errors :math:`m_i = \max(0, 1 - x_i s_i)`, with :math:`s_i = 2 y_i - 1`
    and ``x`` the logits (no activation), are sorted in decreasing order and weighted
    by the Lovász gradient of the Jaccard loss of the foreground (see
    :func:`lovasz_softmax_loss`). ``per_image=True`` is the reference default
    (segmentation_models_pytorch's ``LovaszLoss`` defaults to False): the loss is the
    mean over images that have a valid pixel; with False the pixels of the batch form
    one problem.

    Args:
      logits: ``(batch, *spatial, 1)`` float logits.
      labels: integer ``(batch, *spatial)`` (label 1 the foreground, 0 the background)
        or dense ``(batch, *spatial, 1)`` in {0, 1}.
      per_image: one problem per image (True) or per batch (False).
      ignore_index: integer label whose pixels are excluded (labels other than 0, 1
        are excluded as well).
      where: boolean ``(batch, *spatial)``; pixels where False are excluded.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(batch,)`` per image, a scalar
        per batch).
      axis_name: mapped axis name(s), as :func:`lovasz_softmax_loss`.

    Returns:
      A float32 scalar, or the ``"none"`` values.

    Examples:
      >>> import jax, jaxseg
      >>> logits = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
      >>> labels = jax.random.bernoulli(jax.random.key(1), 0.3, (2, 16, 16)).astype(int)
      >>> jaxseg.lovasz_hinge_loss(logits, labels).shape
      ()

    References:
      Berman, Rannen Triki, Blaschko. The Lovász-Softmax loss: A tractable surrogate
      for the optimization of the intersection-over-union measure in neural networks.
      CVPR 2018.
    """
    _checks.check_logits_labels(
        logits, labels, activation="sigmoid", ignore_index=ignore_index, where=where
    )
    _checks.check_option("reduction", reduction, _checks.REDUCTIONS)
    if jnp.shape(logits)[-1] != 1:
        raise ValueError(
            "`lovasz_hinge_loss` takes one binary channel: `logits` of shape (batch, "
            f"*spatial, 1); got shape {jnp.shape(logits)}. Use lovasz_softmax_loss for "
            "several classes."
        )
    return _run_sharded(
        functools.partial(
            _lovasz_hinge,
            per_image=bool(per_image),
            ignore_index=ignore_index,
            reduction=reduction,
        ),
        (
            jnp.asarray(logits),
            jnp.asarray(labels),
            None if where is None else jnp.asarray(where),
        ),
        per_image=bool(per_image),
        reduction=reduction,
        axis_name=axis_name,
    )
