r"""Distance-based segmentation metrics: Hausdorff distance and normalised surface Dice.

Both metrics compare the *boundaries* of a predicted and a reference mask, so they are
built from two pieces that are public as well:

- :func:`boundary_mask`, the surface pixels of a mask (face connectivity, as MONAI);
- :func:`euclidean_distance_transform`, an exact, jittable Euclidean distance transform
  with voxel spacing.

Everything has static shapes and no Python branch on values: the metrics run under
``jit`` and ``vmap`` on any backend. Empty masks give ``+inf`` distances inside and
MONAI's NaN/inf/0 conventions at the output; they never produce a NaN by accident.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxseg import _arguments, _checks, _sharding

__all__ = [
    "average_surface_distance",
    "boundary_mask",
    "euclidean_distance_transform",
    "hausdorff_distance",
    "surface_dice",
]


# --------------------------------------------------------------------------- checks


def _check_mask(mask: jax.Array, name: str) -> None:
    if mask.dtype != jnp.bool_:
        raise ValueError(
            f"`{name}` must be a boolean array of shape (H, W) or (H, W, D); got dtype "
            f"{mask.dtype}. Pass e.g. `labels == k` for the pixels of class k."
        )
    chex.assert_rank(
        mask,
        {2, 3},
        custom_message=f"`{name}` must have 2 or 3 spatial axes, shape (H, W) or (H, W, D); "
        f"got shape {mask.shape}. Use jax.vmap for a batch of masks.",
        exception_type=ValueError,
    )


def _spacing_vector(spacing: ArrayLike | None, ndim: int) -> jax.Array:
    """``spacing`` (None, a scalar or ``(ndim,)``) as a float32 ``(ndim,)`` array."""
    if spacing is None:
        return jnp.ones((ndim,), jnp.float32)
    shape = np.shape(spacing)
    if shape not in ((), (ndim,)):
        raise ValueError(
            f"`spacing` must be a scalar or have shape ({ndim},), one entry per spatial "
            f"axis; got shape {shape}."
        )
    return jnp.broadcast_to(jnp.asarray(spacing, jnp.float32), (ndim,))


def _class_maps(predictions: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Checks two integer class maps; narrow integer maps are widened to int32.

    64-bit maps keep their dtype: classes are compared in it, so no value wraps.
    """
    for name, x in (("predictions", predictions), ("labels", labels)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(
                f"`{name}` must be an integer class map of shape (batch, H, W) or "
                f"(batch, H, W, D); got dtype {x.dtype}. Take the argmax of the logits "
                "over the class axis first."
            )
    _checks.check_class_maps(predictions, labels, ranks=(3, 4))

    def widened(x: jax.Array) -> jax.Array:
        if jnp.iinfo(x.dtype).bits < 32:
            return x.astype(jnp.int32)
        return x

    return widened(predictions), widened(labels)


def _batch_spacing(spacing: ArrayLike | None, batch: int, ndim: int) -> jax.Array:
    """``spacing`` (None, scalar, ``(ndim,)`` or ``(batch, ndim)``) as ``(batch, ndim)``."""
    if spacing is None:
        return jnp.ones((batch, ndim), jnp.float32)
    shape = np.shape(spacing)
    if shape not in ((), (ndim,), (batch, ndim)):
        raise ValueError(
            f"`spacing` must be a scalar, have shape ({ndim},) (one entry per spatial "
            f"axis) or ({batch}, {ndim}) (one row per sample); got shape {shape}."
        )
    return jnp.broadcast_to(jnp.asarray(spacing, jnp.float32), (batch, ndim))


# ----------------------------------------------------------------- distance transform


def _nearest_true_squared(mask: jax.Array, axis: int, step: jax.Array) -> jax.Array:
    """Squared distance to the nearest True pixel on the same line along ``axis``.

    A forward running max of the indices of True pixels gives the previous one and a
    backward running min the next one: exact and O(n), unlike the general passes.
    """
    n = mask.shape[axis]
    index_shape = [1] * mask.ndim
    index_shape[axis] = n
    index = jnp.arange(n, dtype=jnp.int32).reshape(index_shape)
    # Farther than any real gap, and small enough for int32 arithmetic.
    far = 2 * n + 1
    previous = lax.cummax(jnp.where(mask, index, -far), axis=axis)
    following = lax.cummin(jnp.where(mask, index, far), axis=axis, reverse=True)
    gap = jnp.minimum(index - previous, following - index)
    return jnp.where(gap > n, jnp.inf, jnp.square(step * gap.astype(jnp.float32)))


def _lower_envelope_pass(values: jax.Array, axis: int, step: jax.Array) -> jax.Array:
    """One exact pass of the separable squared EDT along ``axis``.

    out(i) = min_j values(j) + (step * (i - j))**2, the min-plus convolution of each
    line with a sampled parabola (Felzenszwalb & Huttenlocher 2012, eq. 4). It is
    evaluated by brute force over j, O(n**2) per line: exact, static shapes, and each
    step of the loop is one elementwise update of the whole array (every line and
    every leading batch axis at once), so memory stays O(size) and no (n, n) block
    per line is ever materialised.
    """
    moved = jnp.moveaxis(values, axis, 0)
    n = moved.shape[0]
    position = jnp.arange(n, dtype=jnp.float32).reshape((n,) + (1,) * (moved.ndim - 1))

    def relax(j: jax.Array, best: jax.Array) -> jax.Array:
        # +inf (no True pixel on the line) stays +inf: inf + finite, never inf - inf.
        # jnp.asarray: without jit (jax.disable_jit) the loop index is a Python int.
        cost = jnp.square(step * (position - jnp.asarray(j, jnp.float32)))
        return jnp.minimum(best, moved[j][None] + cost)

    # The j = i term costs 0, so `moved` itself is a valid starting upper bound.
    # A symbolic length runs as a plain loop.
    unroll = max(1, min(n, 8)) if _checks.static_sizes(n) else 1
    out = lax.fori_loop(0, n, relax, moved, unroll=unroll)
    return jnp.moveaxis(out, 0, axis)


def _squared_distance_transform(mask: jax.Array, spacing: jax.Array) -> jax.Array:
    """Squared Euclidean distance to the nearest True pixel, float32, +inf if none.

    The spatial axes are the last ``len(spacing)`` axes of ``mask``; any leading axes
    are a batch, transformed independently.
    """
    ndim = spacing.shape[0]
    lead = mask.ndim - ndim
    spatial = mask.shape[lead:]
    # The O(n) pass goes along the longest axis, the O(n**2) passes along the others
    # (with symbolic sizes along the last axis).
    first = int(np.argmax(spatial)) if _checks.static_sizes(*spatial) else ndim - 1
    values = _nearest_true_squared(mask, lead + first, spacing[first])
    for axis in range(ndim):
        if axis != first:
            values = _lower_envelope_pass(values, lead + axis, spacing[axis])
    return values


@jax.jit
def _distance_transform(mask: jax.Array, spacing: jax.Array) -> jax.Array:
    return jnp.sqrt(_squared_distance_transform(mask, spacing))


@_arguments.normalised
def euclidean_distance_transform(mask: ArrayLike, *, spacing: ArrayLike | None = None) -> jax.Array:
    r"""Exact Euclidean distance from every pixel to the nearest True pixel of ``mask``.

    .. math::
        \mathrm{EDT}(x) = \min_{y:\ \mathrm{mask}(y)} \
          \sqrt{\textstyle\sum_a (s_a (x_a - y_a))^2}

    with :math:`s` the spacing. Pixels of the mask are at distance 0. This is the
    *opposite* input convention to ``scipy.ndimage.distance_transform_edt(x)``, which
    measures the distance to the nearest *zero*:
    ``euclidean_distance_transform(m, spacing=s)`` equals
    ``distance_transform_edt(~m, sampling=s)``.

    The transform is the exact separable algorithm of Felzenszwalb & Huttenlocher:
    one pass per axis of a min-plus convolution with a sampled parabola. The pass along
    the longest axis is a linear-time nearest-neighbour scan; the others are a
    brute-force minimum, O(n) per pixel for an axis of length n, vectorised over the
    whole array: suited to accelerators, and on CPU of the order of SciPy's C code
    (within about 2x for 512² images, faster for 96³ volumes).

    Args:
      mask: boolean array of shape ``(H, W)`` or ``(H, W, D)``. Use ``jax.vmap`` for a
        batch of masks.
      spacing: ``None`` (unit spacing), a positive scalar (isotropic), or one positive
        value per axis, shape ``(ndim,)``. May be traced: a new spacing does not
        recompile.

    Returns:
      float32 array of the shape of ``mask``. If ``mask`` has no True pixel, every
      distance is ``+inf`` (never NaN).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.metrics import euclidean_distance_transform
      >>> mask = jnp.zeros((3, 4), bool).at[0, 0].set(True)
      >>> euclidean_distance_transform(mask, spacing=(2.0, 1.0))
      Array([[0.       , 1.       , 2.       , 3.       ],
             [2.       , 2.236068 , 2.828427 , 3.6055512],
             [4.       , 4.1231055, 4.472136 , 5.       ]], dtype=float32)

    References:
      Felzenszwalb & Huttenlocher, "Distance Transforms of Sampled Functions",
      Theory of Computing 8, 2012.
    """
    mask = jnp.asarray(mask)
    _check_mask(mask, "mask")
    (mask,) = _sharding.replicated(mask)  # padding a sharded axis is not defined
    return _distance_transform(mask, _spacing_vector(spacing, mask.ndim))


# -------------------------------------------------------------------------- boundaries


def _boundary(mask: jax.Array, ndim: int) -> jax.Array:
    """Surface pixels of the last ``ndim`` axes of ``mask`` (leading axes: a batch)."""
    interior = mask
    for axis in range(mask.ndim - ndim, mask.ndim):
        n = mask.shape[axis]
        # Outside the array counts as background, as binary_erosion(border_value=0).
        widths = [(0, 0)] * mask.ndim
        widths[axis] = (1, 1)
        padded = jnp.pad(mask, widths)
        interior = interior & lax.slice_in_dim(padded, 0, n, axis=axis)
        interior = interior & lax.slice_in_dim(padded, 2, n + 2, axis=axis)
    return mask & ~interior


@_arguments.normalised
def boundary_mask(mask: ArrayLike) -> jax.Array:
    r"""The surface pixels of a mask: in the mask, with a face neighbour outside it.

    .. math::
        \partial M = M \setminus (M \ominus B)

    where :math:`\ominus B` is the binary erosion by the face-connected cross (4
    neighbours in 2D, 6 in 3D) and pixels outside the array count as background, so a
    mask touching the border has a surface there. This is MONAI's ``get_mask_edges``
    without sub-voxel areas (``binary_erosion(m) ^ m``); its cropping to the bounding
    box of the foreground does not change which pixels are edges.

    Args:
      mask: boolean array of shape ``(H, W)`` or ``(H, W, D)``.

    Returns:
      boolean array of the shape of ``mask``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.metrics import boundary_mask
      >>> mask = jnp.zeros((5, 5), bool).at[1:4, 1:4].set(True)
      >>> boundary_mask(mask).astype(int)
      Array([[0, 0, 0, 0, 0],
             [0, 1, 1, 1, 0],
             [0, 1, 0, 1, 0],
             [0, 1, 1, 1, 0],
             [0, 0, 0, 0, 0]], dtype=int32)
    """
    mask = jnp.asarray(mask)
    _check_mask(mask, "mask")
    (mask,) = _sharding.replicated(mask)  # padding a sharded axis is not defined
    return _boundary_mask(mask)


@jax.jit
def _boundary_mask(mask: jax.Array) -> jax.Array:
    return _boundary(mask, mask.ndim)


# ----------------------------------------------------------------------------- metrics


def _class_boundaries(
    prediction: jax.Array, label: jax.Array, num_classes: int, include_background: bool
) -> tuple[jax.Array, jax.Array]:
    """Boundaries of every kept class of one sample, two ``(classes', *spatial)`` masks."""
    ndim = prediction.ndim
    first = 0 if include_background else 1
    classes = jnp.arange(first, num_classes, dtype=prediction.dtype)
    classes = classes.reshape((-1,) + (1,) * ndim)
    return (
        _boundary(prediction[None] == classes, ndim),
        _boundary(label[None] == classes, ndim),
    )


def _surface_distances(
    prediction_edges: jax.Array, label_edges: jax.Array, spacing: jax.Array, directed: bool
) -> tuple[jax.Array, jax.Array]:
    """Distances from each surface pixel to the other surface, one row per direction.

    Returns ``(distances, valid)`` of shape ``(directions, classes', pixels)``: row 0
    from the prediction's surface to the label's, row 1 (unless ``directed``) the
    reverse; ``valid`` marks the surface pixels the row is about.
    """
    flat = (prediction_edges.shape[0], -1)
    targets, sources = [label_edges], [prediction_edges]
    if not directed:
        targets.append(prediction_edges)
        sources.append(label_edges)
    squared = _squared_distance_transform(jnp.stack(targets), spacing)
    distances = jnp.sqrt(squared).reshape((len(targets), *flat))
    valid = jnp.stack(sources).reshape((len(sources), *flat))
    return distances, valid


# The bit pattern of float32 +inf. For non-negative float32 values the int32 bit
# patterns sort exactly as the values do, so order statistics can work on integers.
_INF_BITS = 0x7F800000


def _kth_smallest(keys: jax.Array, k: jax.Array) -> jax.Array:
    """The ``k``-th smallest (0-based) int32 key of each row, by bisection on the value.

    Exact in 31 counting passes over the row, O(31 n) instead of a sort's O(n log n)
    data movement, which dominates on CPU for whole-image rows.
    """
    low = jnp.zeros(k.shape, jnp.int32)
    high = jnp.full(k.shape, _INF_BITS, jnp.int32)

    def halve(_: int, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        low, high = bounds
        middle = low + (high - low) // 2
        enough = jnp.sum(keys <= middle[..., None], axis=-1, dtype=jnp.int32) > k
        return jnp.where(enough, low, middle + 1), jnp.where(enough, middle, high)

    # The search interval [0, bits(+inf)] holds < 2**31 keys: 31 halvings close it.
    low, _ = lax.fori_loop(0, 31, halve, (low, high))
    return low


def _interpolated_percentile(
    distances: jax.Array, valid: jax.Array, quantile: float | jax.Array
) -> jax.Array:
    """``np.percentile`` (linear) over the valid entries of the last axis.

    The number of valid entries varies, so with static shapes the invalid ones are set
    to +inf (ranked last), the rank q * (count - 1) is computed from the count, and the
    two order statistics around it are selected exactly (:func:`_kth_smallest`). Both
    are clipped to valid entries, so no inf - inf is formed; rows with no valid entry
    return 0, which the caller replaces.
    """
    count = jnp.sum(valid, axis=-1, dtype=jnp.int32)
    values = jnp.where(valid, distances, jnp.inf)
    keys = lax.bitcast_convert_type(values, jnp.int32)
    last = jnp.maximum(count - 1, 0)
    rank = jnp.asarray(quantile, jnp.float32) * last.astype(jnp.float32)
    below = jnp.minimum(jnp.floor(rank).astype(jnp.int32), last)
    above = jnp.minimum(below + 1, last)
    weight = rank - below.astype(jnp.float32)
    low_key = _kth_smallest(keys, below)
    low = lax.bitcast_convert_type(low_key, jnp.float32)
    # The next order statistic is the same value when it is repeated, else the
    # smallest value above it.
    repeated = jnp.sum(keys <= low_key[..., None], axis=-1, dtype=jnp.int32) > above
    following = jnp.min(jnp.where(keys > low_key[..., None], values, jnp.inf), axis=-1)
    high = jnp.where(repeated, low, following)
    usable = count > 0
    low = jnp.where(usable, low, 0.0)
    high = jnp.where(usable, high, 0.0)
    return low + weight * (high - low)


@functools.partial(
    jax.jit, static_argnames=("num_classes", "maximum", "include_background", "directed")
)
def _hausdorff_distance(
    predictions: jax.Array,
    labels: jax.Array,
    spacing: jax.Array,
    quantile: jax.Array,
    *,
    num_classes: int,
    maximum: bool,
    include_background: bool,
    directed: bool,
) -> jax.Array:
    def one_sample(prediction: jax.Array, label: jax.Array, step: jax.Array) -> jax.Array:
        prediction_edges, label_edges = _class_boundaries(
            prediction, label, num_classes, include_background
        )
        distances, valid = _surface_distances(prediction_edges, label_edges, step, directed)
        if maximum:
            per_direction = jnp.max(jnp.where(valid, distances, 0.0), axis=-1)
        else:
            per_direction = _interpolated_percentile(distances, valid, quantile)
        value = jnp.max(per_direction, axis=0)
        spatial = tuple(range(1, prediction.ndim + 1))
        prediction_empty = ~jnp.any(prediction_edges, axis=spatial)
        label_empty = ~jnp.any(label_edges, axis=spatial)
        # MONAI 1.6.1: one empty side gives a set of +inf distances, whose maximum is
        # inf and whose torch.quantile is NaN; both empty gives NaN.
        one_empty = jnp.inf if maximum else jnp.nan
        value = jnp.where(prediction_empty | label_empty, one_empty, value)
        return jnp.where(prediction_empty & label_empty, jnp.nan, value)

    return jax.vmap(one_sample)(predictions, labels, spacing)


@_arguments.normalised
def hausdorff_distance(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    percentile: float | None = 95.0,
    include_background: bool = False,
    spacing: ArrayLike | None = None,
    directed: bool = False,
) -> jax.Array:
    r"""Hausdorff distance (95th percentile by default) between class boundaries.

    For each sample and class, with :math:`\partial P` and :math:`\partial L` the surface
    pixels (:func:`boundary_mask`) of the predicted and the reference mask and
    :math:`d(x, S) = \min_{y \in S} \lVert s \odot (x - y) \rVert_2`:

    .. math::
        \mathrm{HD}_q = \max\big( Q_q\{d(x, \partial L) : x \in \partial P\},\
                                  Q_q\{d(y, \partial P) : y \in \partial L\} \big)

    where :math:`Q_q` is the q-th percentile with linear interpolation
    (``np.percentile``, ``torch.quantile``) and :math:`Q_{100} = \max` gives the
    Hausdorff distance itself. ``directed=True`` keeps only the first term. The set
    sizes vary, so under ``jit`` the distances of the whole image are kept, non-surface
    pixels set to +inf (ranked last), and the two order statistics around the rank
    q·(count − 1) are selected exactly by bisection, then interpolated.

    Matches MONAI ``HausdorffDistanceMetric(include_background=..., percentile=...,
    directed=..., distance_metric="euclidean")`` on one-hot channels-first copies,
    including its empty-mask conventions (MONAI 1.6.1):

    ========================  =====================  ======================
    class present in          ``percentile`` set     ``percentile=None``
    ========================  =====================  ======================
    both                      HD_q                   HD
    only one                  NaN                    +inf
    neither                   NaN                    NaN
    ========================  =====================  ======================

    NaN entries are skipped by MONAI's means (``jnp.nanmean``); note that a missed
    object therefore does not raise the mean HD95. One difference: MONAI treats
    ``percentile=0`` as "no percentile" (the maximum); here it is the minimum.

    Args:
      predictions: integer class map, shape ``(batch, H, W)`` or ``(batch, H, W, D)``.
      labels: integer class map of the same shape.
      num_classes: number of classes C (static). Values outside ``[0, C)`` belong to
        no class.
      percentile: in ``[0, 100]``, or ``None`` for the maximum. Whether it is None is
        static; its value may be traced (a new value does not recompile).
      include_background: keep class 0 (static).
      spacing: ``None`` (unit), a scalar, one value per spatial axis ``(ndim,)``, or
        one row per sample ``(batch, ndim)``. May be traced.
      directed: only the distances from the prediction's surface to the label's.

    Returns:
      float32 array ``(batch, C')`` with ``C' = C - 1`` without the background.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.metrics import hausdorff_distance
      >>> labels = jnp.zeros((1, 8, 8), jnp.int32).at[0, 2:5, 2:5].set(1)
      >>> predictions = jnp.zeros((1, 8, 8), jnp.int32).at[0, 2:5, 3:7].set(1)
      >>> hausdorff_distance(predictions, labels, 2, percentile=None)
      Array([[2.]], dtype=float32)

    References:
      Huttenlocher, Klanderman & Rucklidge, "Comparing Images Using the Hausdorff
      Distance", IEEE TPAMI 15(9), 1993.
    """
    predictions, labels = _class_maps(predictions, labels)
    _checks.check_num_classes(num_classes, include_background)
    quantile = jnp.asarray(100.0 if percentile is None else percentile, jnp.float32) / 100.0
    spacing = _batch_spacing(spacing, predictions.shape[0], predictions.ndim - 1)
    predictions, labels = _sharding.replicated(predictions, labels)
    return _hausdorff_distance(
        predictions,
        labels,
        spacing,
        quantile,
        num_classes=int(num_classes),
        maximum=percentile is None,
        include_background=bool(include_background),
        directed=bool(directed),
    )


def _empty_surfaces(
    value: jax.Array, prediction_edges: jax.Array, label_edges: jax.Array, one_empty: float
) -> jax.Array:
    """MONAI's values for empty surfaces: ``one_empty`` if one is empty, NaN if both are."""
    spatial = tuple(range(1, prediction_edges.ndim))
    prediction_empty = ~jnp.any(prediction_edges, axis=spatial)
    label_empty = ~jnp.any(label_edges, axis=spatial)
    value = jnp.where(prediction_empty | label_empty, one_empty, value)
    return jnp.where(prediction_empty & label_empty, jnp.nan, value)


def _pairwise_sum(values: jax.Array) -> jax.Array:
    """Sum over the last axis by pairwise halving: float32 error O(log n), not O(n).

    A plain float32 reduction over a whole volume's surface distances (2.6e5 entries for
    64^3) was off by 1.4e-5 relative against float64; halving keeps it near 1e-7, as
    torch's cascade sum in MONAI. The zero padding to a power of two is exact.
    """
    n = values.shape[-1]
    if not _checks.static_sizes(n):  # halving needs a static length
        return jnp.sum(values, axis=-1)
    size = 1 << max(0, (n - 1).bit_length())
    values = jnp.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, size - n)])
    while values.shape[-1] > 1:
        half = values.shape[-1] // 2
        values = values[..., :half] + values[..., half:]
    return values[..., 0]


@functools.partial(jax.jit, static_argnames=("num_classes", "include_background", "symmetric"))
def _average_surface_distance(
    predictions: jax.Array,
    labels: jax.Array,
    spacing: jax.Array,
    *,
    num_classes: int,
    include_background: bool,
    symmetric: bool,
) -> jax.Array:
    def one_sample(prediction: jax.Array, label: jax.Array, step: jax.Array) -> jax.Array:
        prediction_edges, label_edges = _class_boundaries(
            prediction, label, num_classes, include_background
        )
        distances, valid = _surface_distances(prediction_edges, label_edges, step, not symmetric)
        # One mean over the pooled distances of both directions (MONAI concatenates them),
        # not the mean of the two directed means.
        total = _pairwise_sum(jnp.sum(jnp.where(valid, distances, 0.0), axis=0))
        count = jnp.sum(valid, axis=(0, 2), dtype=jnp.float32)
        value = total / jnp.maximum(count, 1.0)
        # MONAI 1.6.1: one empty surface gives a set of +inf distances (mean +inf); both
        # empty give no distance (mean NaN).
        return _empty_surfaces(value, prediction_edges, label_edges, jnp.inf)

    return jax.vmap(one_sample)(predictions, labels, spacing)


@_arguments.normalised
def average_surface_distance(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    symmetric: bool = False,
    spacing: ArrayLike | None = None,
    include_background: bool = False,
) -> jax.Array:
    r"""Average surface distance between class boundaries.

    For each sample and class, with :math:`\partial P` and :math:`\partial L` the surface
    pixels (:func:`boundary_mask`) of the predicted and the reference mask and
    :math:`d(x, S) = \min_{y \in S} \lVert s \odot (x - y) \rVert_2` (:math:`s` the
    spacing):

    .. math::
        \mathrm{ASD} = \frac{1}{|\partial P|} \sum_{x \in \partial P} d(x, \partial L),
        \qquad
        \mathrm{ASSD} = \frac{\sum_{x \in \partial P} d(x, \partial L)
                              + \sum_{y \in \partial L} d(y, \partial P)}
                             {|\partial P| + |\partial L|}

    ``symmetric=False`` gives the directed mean from the prediction's surface to the
    label's; ``symmetric=True`` the mean over both sets of distances pooled (not the
    mean of the two directed means). Distances come from the exact EDT
    (:func:`euclidean_distance_transform`) of each surface, so they are exact Euclidean
    distances in float32, as MONAI's KD-tree gives them.

    Matches MONAI ``SurfaceDistanceMetric(include_background=..., symmetric=...,
    distance_metric="euclidean", reduction="none")`` on one-hot channels-first copies,
    including its empty-mask conventions (MONAI 1.6.1): +inf when the class is present
    in only one of prediction and label, NaN when in neither. MONAI's means skip NaN but
    not +inf (``jnp.nanmean`` does the same).

    Args:
      predictions: integer class map, shape ``(batch, H, W)`` or ``(batch, H, W, D)``.
      labels: integer class map of the same shape.
      num_classes: number of classes C (static). Values outside ``[0, C)`` belong to
        no class.
      symmetric: pool the distances of both directions (static).
      spacing: ``None`` (unit), a scalar, one value per spatial axis ``(ndim,)``, or
        one row per sample ``(batch, ndim)``. May be traced.
      include_background: keep class 0 (static).

    Returns:
      float32 array ``(batch, C')`` with ``C' = C - 1`` without the background.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.metrics import average_surface_distance
      >>> labels = jnp.zeros((1, 8, 8), jnp.int32).at[0, 2:5, 2:5].set(1)
      >>> predictions = jnp.zeros((1, 8, 8), jnp.int32).at[0, 2:5, 3:7].set(1)
      >>> average_surface_distance(predictions, labels, 2)
      Array([[0.9]], dtype=float32)
      >>> average_surface_distance(predictions, labels, 2, symmetric=True, spacing=(1.0, 2.0))
      Array([[1.3333334]], dtype=float32)

    References:
      Heimann et al., "Comparison and Evaluation of Methods for Liver Segmentation From
      CT Datasets", IEEE TMI 28(8), 2009.
    """
    predictions, labels = _class_maps(predictions, labels)
    predictions, labels = _sharding.replicated(predictions, labels)
    _checks.check_num_classes(num_classes, include_background)
    spacing = _batch_spacing(spacing, predictions.shape[0], predictions.ndim - 1)
    return _average_surface_distance(
        predictions,
        labels,
        spacing,
        num_classes=int(num_classes),
        include_background=bool(include_background),
        symmetric=bool(symmetric),
    )


@functools.partial(jax.jit, static_argnames=("num_classes", "include_background"))
def _surface_dice(
    predictions: jax.Array,
    labels: jax.Array,
    spacing: jax.Array,
    tolerance: jax.Array,
    *,
    num_classes: int,
    include_background: bool,
) -> jax.Array:
    first = 0 if include_background else 1
    threshold = tolerance[first:].reshape((1, -1, 1))

    def one_sample(prediction: jax.Array, label: jax.Array, step: jax.Array) -> jax.Array:
        prediction_edges, label_edges = _class_boundaries(
            prediction, label, num_classes, include_background
        )
        distances, valid = _surface_distances(prediction_edges, label_edges, step, False)
        # The distance to an empty surface is +inf, beyond any finite tolerance: a class
        # present on one side only scores 0 without a special case.
        correct = jnp.sum(valid & (distances <= threshold), axis=(0, 2), dtype=jnp.float32)
        total = jnp.sum(valid, axis=(0, 2), dtype=jnp.float32)
        # Neither surface exists: NaN, as MONAI (0/0 guarded so no NaN leaks otherwise).
        return jnp.where(total > 0, correct / jnp.maximum(total, 1.0), jnp.nan)

    return jax.vmap(one_sample)(predictions, labels, spacing)


@_arguments.normalised
def surface_dice(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    tolerance: ArrayLike,
    include_background: bool = False,
    spacing: ArrayLike | None = None,
) -> jax.Array:
    r"""Normalised surface Dice: the fraction of both surfaces within a tolerance.

    With :math:`\partial P`, :math:`\partial L` the surface pixels
    (:func:`boundary_mask`) of the predicted and reference masks, :math:`d(x, S)` the
    Euclidean distance (with spacing) from :math:`x` to the nearest pixel of :math:`S`
    and :math:`\tau` the tolerance:

    .. math::
        \mathrm{NSD} = \frac{|\{x \in \partial P : d(x, \partial L) \le \tau\}|
                            + |\{y \in \partial L : d(y, \partial P) \le \tau\}|}
                           {|\partial P| + |\partial L|}

    The size of a surface is its number of pixels (MONAI's ``use_subvoxels=False``,
    not DeepMind's surface-element areas). Matches MONAI
    ``SurfaceDiceMetric(class_thresholds=[tolerance] * C', include_background=...,
    distance_metric="euclidean")`` on one-hot channels-first copies, with its
    conventions: NaN when the class is absent from both the prediction and the label,
    0 when it is present in only one of them.

    Args:
      predictions: integer class map, shape ``(batch, H, W)`` or ``(batch, H, W, D)``.
      labels: integer class map of the same shape.
      num_classes: number of classes C (static). Values outside ``[0, C)`` belong to
        no class.
      tolerance: non-negative acceptable deviation in the units of ``spacing`` (pixels
        by default): a scalar, or one value per class, shape ``(C,)`` (background
        included, ignored when dropped). May be traced.
      include_background: keep class 0 (static).
      spacing: ``None`` (unit), a scalar, one value per spatial axis ``(ndim,)``, or
        one row per sample ``(batch, ndim)``. May be traced.

    Returns:
      float32 array ``(batch, C')`` in ``[0, 1]`` or NaN, ``C' = C - 1`` without the
      background.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.metrics import surface_dice
      >>> labels = jnp.zeros((1, 8, 8), jnp.int32).at[0, 2:5, 2:5].set(1)
      >>> predictions = jnp.zeros((1, 8, 8), jnp.int32).at[0, 2:5, 3:7].set(1)
      >>> surface_dice(predictions, labels, 2, tolerance=1.0)
      Array([[0.8333333]], dtype=float32)

    References:
      Nikolov et al., "Clinically Applicable Segmentation of Head and Neck Anatomy for
      Radiotherapy: Deep Learning Algorithm Development and Validation Study",
      Journal of Medical Internet Research 23(7), 2021.
    """
    predictions, labels = _class_maps(predictions, labels)
    _checks.check_num_classes(num_classes, include_background)
    tolerance_shape = np.shape(tolerance)
    if tolerance_shape not in ((), (num_classes,)):
        raise ValueError(
            f"`tolerance` must be a scalar or have shape ({num_classes},), one value per "
            f"class (background included); got shape {tolerance_shape}."
        )
    tolerance = jnp.broadcast_to(jnp.asarray(tolerance, jnp.float32), (num_classes,))
    spacing = _batch_spacing(spacing, predictions.shape[0], predictions.ndim - 1)
    predictions, labels = _sharding.replicated(predictions, labels)
    return _surface_dice(
        predictions,
        labels,
        spacing,
        tolerance,
        num_classes=int(num_classes),
        include_background=bool(include_background),
    )
