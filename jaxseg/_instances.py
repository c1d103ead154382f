r"""Instance-aware metrics: panoptic quality, per-component Dice, BraTS lesion-wise scores.

These metrics score *objects* (nuclei, lesions, connected components) rather than
pixels, so they need an object matching, done here on device with static shapes:

- :func:`panoptic_quality` matches predicted and reference instances by IoU > 0.5,
  which makes the matching unique (Kirillov et al. 2019), so it needs no pairwise
  matrix: the overlapping (reference, prediction) pairs are found by one sort of the
  pixels' pair keys, and their intersections are the sorted runs' lengths.
  ``O(size log size)`` per sample, no cap on the number of instances.
- :func:`per_component_dice` (``dice_score(..., per_component=True)``) splits the
  image into the Voronoi regions of the reference's connected components and scores
  each region.
- :func:`lesion_wise_scores` matches predicted lesions to dilated reference lesions
  as the BraTS 2023 evaluation does and scores each with Dice and HD95.

What can be merged across batches, hosts and devices is stated in each docstring:
counts of matched objects add across *samples*; nothing here can be merged across
tiles or shards of *one* sample, because an object crossing a tile boundary is one
object.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxseg import _components

__all__ = ["PanopticQuality", "panoptic_quality"]

PANOPTIC_REDUCTIONS = (
    "none",
    "mean",
    "sum",
    "mean_batch",
    "sum_batch",
    "mean_channel",
    "sum_channel",
)


# ------------------------------------------------------------------ panoptic quality


class PanopticQuality(NamedTuple):
    """Result of :func:`panoptic_quality`, every field of the reduced shape.

    Attributes:
      pq: panoptic quality, ``iou_sum / (tp + fp/2 + fn/2 + smooth)``.
      sq: segmentation quality, ``iou_sum / (tp + smooth)``.
      rq: recognition quality, ``tp / (tp + fp/2 + fn/2 + smooth)``.
      tp: matched pairs (reference and predicted instances with IoU > threshold).
      fp: predicted instances left unmatched.
      fn: reference instances left unmatched.
      iou_sum: sum of the IoUs of the matched pairs.
    """

    pq: jax.Array
    sq: jax.Array
    rq: jax.Array
    tp: jax.Array
    fp: jax.Array
    fn: jax.Array
    iou_sum: jax.Array


def _dense_instance_ids(
    classes: jax.Array, instances: jax.Array, num_classes: int
) -> tuple[jax.Array, jax.Array]:
    """Ids 1..n for the distinct (class, instance) pairs of one flat sample, 0 elsewhere.

    A pixel belongs to an instance when its class lies in ``[1, C]`` and its instance id
    is nonzero; an instance id used in two classes makes two instances (as MONAI scores
    ``(class == c) * instance`` class by class). Returns the ids and the number of
    instances of each class, ``(C + 2,)`` indexed by class.
    """
    size = classes.shape[0]
    valid = (classes >= 1) & (classes <= num_classes) & (instances != 0)
    key_class = jnp.where(valid, classes, num_classes + 1)
    key_instance = jnp.where(valid, instances, 0)
    order = jnp.arange(size, dtype=jnp.int32)
    sorted_class, sorted_instance, permutation = lax.sort(
        (key_class, key_instance, order), num_keys=2
    )
    changed = (sorted_class[1:] != sorted_class[:-1]) | (
        sorted_instance[1:] != sorted_instance[:-1]
    )
    first = jnp.concatenate([jnp.ones((1,), bool), changed]) & (sorted_class <= num_classes)
    rank = jnp.cumsum(first, dtype=jnp.int32)
    ids = (
        jnp.zeros((size,), jnp.int32)
        .at[permutation]
        .set(jnp.where(sorted_class <= num_classes, rank, 0))
    )
    per_class = jax.ops.segment_sum(
        first.astype(jnp.int32), sorted_class, num_segments=num_classes + 2
    )
    return ids, per_class


def _panoptic_counts(
    predicted: jax.Array, label: jax.Array, threshold: jax.Array, num_classes: int
) -> jax.Array:
    """``(C, 4)`` float32 ``[tp, fp, fn, iou_sum]`` of one sample, ``(*spatial, 2)`` inputs."""
    predicted = predicted.reshape(-1, 2)
    label = label.reshape(-1, 2)
    size = predicted.shape[0]
    pred_ids, pred_count = _dense_instance_ids(predicted[:, 1], predicted[:, 0], num_classes)
    true_ids, true_count = _dense_instance_ids(label[:, 1], label[:, 0], num_classes)
    ones = jnp.ones((size,), jnp.int32)
    pred_size = jax.ops.segment_sum(ones, pred_ids, num_segments=size + 1)
    true_size = jax.ops.segment_sum(ones, true_ids, num_segments=size + 1)
    # A pixel joins the pair (its reference instance, its predicted instance) only when
    # both have the same class: instances of different classes never match.
    paired = (true_ids > 0) & (pred_ids > 0) & (predicted[:, 1] == label[:, 1])
    key_true = jnp.where(paired, true_ids, size + 1)
    key_pred = jnp.where(paired, pred_ids, 0)
    key_true, key_pred, pair_class = lax.sort(
        (key_true, key_pred, jnp.where(paired, label[:, 1], 0)), num_keys=2
    )
    in_pair = key_true <= size
    changed = (key_true[1:] != key_true[:-1]) | (key_pred[1:] != key_pred[:-1])
    first = jnp.concatenate([jnp.ones((1,), bool), changed]) & in_pair
    run = jnp.cumsum(first, dtype=jnp.int32)
    intersection = jax.ops.segment_sum(in_pair.astype(jnp.int32), run, num_segments=size + 1)[run]
    union = true_size[jnp.minimum(key_true, size)] + pred_size[key_pred] - intersection
    # float32 IoU compared with a float32 threshold, as MONAI's torch tensors.
    iou = intersection.astype(jnp.float32) / jnp.maximum(union, 1).astype(jnp.float32)
    # IoU > threshold >= 0.5 makes the match unique: each instance has at most one
    # partner covering more than half of the union.
    matched = first & (iou > threshold)
    tp = jax.ops.segment_sum(matched.astype(jnp.int32), pair_class, num_segments=num_classes + 2)
    iou_sum = jax.ops.segment_sum(
        jnp.where(matched, iou, 0.0), pair_class, num_segments=num_classes + 2
    )
    tp, iou_sum = tp[1 : num_classes + 1], iou_sum[1 : num_classes + 1]
    fp = pred_count[1 : num_classes + 1] - tp
    fn = true_count[1 : num_classes + 1] - tp
    return jnp.stack([tp, fp, fn, iou_sum], axis=-1).astype(jnp.float32)


def _reduce_counts(counts: jax.Array, reduction: str) -> jax.Array:
    """MONAI's ``do_metric_reduction`` of ``(batch, C, 4)`` counts (never NaN)."""
    if reduction == "none":
        return counts
    axes = {"mean": (0, 1), "sum": (0, 1), "mean_batch": 0, "sum_batch": 0}.get(reduction, 1)
    return (
        jnp.mean(counts, axis=axes) if reduction.startswith("mean") else jnp.sum(counts, axis=axes)
    )


@functools.partial(jax.jit, static_argnames=("num_classes", "reduction"))
def _panoptic_quality(predicted, label, threshold, smooth, *, num_classes, reduction):
    counts = jax.vmap(_panoptic_counts, in_axes=(0, 0, None, None))(
        predicted, label, threshold, num_classes
    )
    counts = _reduce_counts(counts, reduction)
    tp, fp, fn, iou_sum = (counts[..., k] for k in range(4))
    detected = tp + 0.5 * fp + 0.5 * fn + smooth
    return PanopticQuality(
        pq=iou_sum / detected,
        sq=iou_sum / (tp + smooth),
        rq=tp / detected,
        tp=tp,
        fp=fp,
        fn=fn,
        iou_sum=iou_sum,
    )


def _check_panoptic_input(x: jax.Array, name: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"`{name}` must be an integer array; got dtype {x.dtype}.")
    if not 4 <= x.ndim <= 5 or x.shape[-1] != 2:
        raise ValueError(
            f"`{name}` must have shape (batch, H, W, 2) or (batch, H, W, D, 2): instance ids "
            f"in [..., 0] and classes in [..., 1]; got shape {x.shape}."
        )


def panoptic_quality(
    predicted_instances: ArrayLike,
    label_instances: ArrayLike,
    *,
    num_classes: int,
    match_iou_threshold: float | jax.Array = 0.5,
    reduction: str = "mean_batch",
    smooth_numerator: float | jax.Array = 1e-6,
) -> PanopticQuality:
    r"""Panoptic quality (PQ), segmentation quality (SQ) and recognition quality (RQ).

    Per sample and class, a predicted and a reference instance *match* when their IoU
    exceeds the threshold (at least 0.5, so a match is unique). With TP the matched
    pairs, FP the unmatched predictions and FN the unmatched references:

    .. math::
        \mathrm{PQ} = \frac{\sum_{(p, g) \in TP} \mathrm{IoU}(p, g)}
                           {|TP| + \tfrac12 |FP| + \tfrac12 |FN| + \epsilon},\quad
        \mathrm{SQ} = \frac{\sum_{TP} \mathrm{IoU}}{|TP| + \epsilon},\quad
        \mathrm{RQ} = \frac{|TP|}{|TP| + \tfrac12 |FP| + \tfrac12 |FN| + \epsilon}

    Matches MONAI ``PanopticQualityMetric(num_classes, metric_name=("pq", "sq", "rq"),
    reduction=..., match_iou_threshold=..., smooth_numerator=...)`` on channels-first
    copies: its input format (instance ids and class map as two channels), its
    per-class counts, its ``reduction`` of the counts *before* the ratios (default
    ``"mean_batch"``: per class, the batch means of tp, fp, fn and iou_sum) and its
    ``smooth_numerator`` (which MONAI adds to the denominators). MONAI's
    ``metric_name`` selects fields here: ``"pq"``/``"panoptic_quality"`` is ``.pq``,
    ``"sq"`` ``.sq``, ``"rq"`` ``.rq``; its ``return_confusion_matrix=True`` is
    ``(tp, fp, fn, iou_sum)``. MONAI's thresholds below 0.5 (a Hungarian matching on
    the host) are not supported.

    Merging: with ``reduction="none"`` the fields ``tp``, ``fp``, ``fn``, ``iou_sum`` are
    per (sample, class) and add exactly across samples, batches, hosts and devices
    (``iou_sum`` to float rounding); PQ, SQ and RQ of a dataset are the ratios of the
    summed counts (MONAI ``reduction="sum_batch"``). PQ values themselves do not add,
    and a sample cannot be split into tiles: an instance crossing a tile boundary would
    count twice.

    Args:
      predicted_instances: integer ``(batch, *spatial, 2)`` with 2 or 3 spatial axes:
        ``[..., 0]`` the instance id (0 = no instance; ids need not be contiguous and
        may be reused across classes) and ``[..., 1]`` the class, 1..C (0 and values
        outside [1, C] are background).
      label_instances: the reference, same shape and format.
      num_classes: C, the number of classes without the background (static).
      match_iou_threshold: in [0.5, 1]; pairs with IoU strictly above it match. May be
        traced.
      reduction: ``"mean_batch"`` (default), ``"sum_batch"`` (per class, over the
        batch), ``"mean"``, ``"sum"`` (over batch and classes), ``"mean_channel"``,
        ``"sum_channel"`` (per sample, over classes) or ``"none"``.
      smooth_numerator: the constant added to the denominators (MONAI's name).

    Returns:
      :class:`PanopticQuality` of float32 arrays: ``(batch, C)`` with
      ``reduction="none"``, ``(C,)`` for the batch reductions, ``(batch,)`` for the
      channel ones, scalars for ``"mean"`` and ``"sum"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg.metrics import panoptic_quality
      >>> label = jnp.zeros((1, 4, 6, 2), jnp.int32)
      >>> label = label.at[0, :2, :2].set(jnp.array([1, 1])).at[0, :, 4:].set(jnp.array([2, 1]))
      >>> pred = jnp.zeros((1, 4, 6, 2), jnp.int32)
      >>> pred = pred.at[0, :2, :3].set(jnp.array([5, 1])).at[0, 3, :2].set(jnp.array([7, 1]))
      >>> result = panoptic_quality(pred, label, num_classes=1)
      >>> result.tp, result.fp, result.fn
      (Array([1.], dtype=float32), Array([1.], dtype=float32), Array([1.], dtype=float32))
      >>> result.pq, result.sq, result.rq
      (Array([0.33333328], dtype=float32), Array([0.66666603], dtype=float32), Array([0.49999976], dtype=float32))

    References:
      Kirillov, He, Girshick, Rother & Dollár, "Panoptic Segmentation", CVPR 2019.
    """
    predicted_instances = jnp.asarray(predicted_instances)
    label_instances = jnp.asarray(label_instances)
    _check_panoptic_input(predicted_instances, "predicted_instances")
    _check_panoptic_input(label_instances, "label_instances")
    if predicted_instances.shape != label_instances.shape:
        raise ValueError(
            "`predicted_instances` and `label_instances` must have the same shape; got "
            f"{predicted_instances.shape} and {label_instances.shape}."
        )
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 1
    ):
        raise ValueError(
            f"`num_classes` must be a positive int (classes without the background); got {num_classes!r}."
        )
    if reduction not in PANOPTIC_REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {PANOPTIC_REDUCTIONS}; got {reduction!r}.")
    if not isinstance(match_iou_threshold, jax.core.Tracer):
        value = float(np.asarray(match_iou_threshold))
        if not 0.5 <= value <= 1.0:
            raise ValueError(
                f"`match_iou_threshold` must lie in [0.5, 1] (a unique matching); got "
                f"{match_iou_threshold!r}. MONAI's Hungarian matching below 0.5 is not supported."
            )
    return _panoptic_quality(
        predicted_instances.astype(jnp.int32),
        label_instances.astype(jnp.int32),
        jnp.asarray(match_iou_threshold, jnp.float32),
        jnp.asarray(smooth_numerator, jnp.float32),
        num_classes=int(num_classes),
        reduction=reduction,
    )
