r"""Metrics on hard predictions: confusion matrix, Dice and IoU scores, a mergeable state.

Everything here scores integer class maps, ``(batch, *spatial)`` with 1 to 3 spatial
axes (:func:`predictions_from_logits` turns logits into one). Per-(sample, class)
counts come from the statistics core (:func:`jaxseg._stats.compute_stats`), which
counts hard maps exactly in int32; the scores are float32 ratios of those counts.

Conventions, shared by every function of this module:

- A pixel counts unless ``where`` is False there, its label equals ``ignore_index``, or
  its label lies outside ``[0, num_classes)``. An excluded pixel leaves every count.
- A prediction outside ``[0, num_classes)`` belongs to no class: a miss (false negative)
  for the pixel's label class, as MONAI scores label maps. :func:`confusion_matrix`
  has no column for it and leaves such pixels out.
- Empty classes follow MONAI's ``DiceMetric`` and ``MeanIoU``. With
  ``ignore_empty=True`` (the default) a class absent from a sample's label scores NaN
  and NaNs are left out of every mean; with ``ignore_empty=False`` it scores 1.0 when
  the prediction lacks it too and 0.0 when the prediction has it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import _arguments, _checks, _confusion_formulas, _instances, _overlap, _sharding, _stats
from jaxseg._stats import OverlapStats

ArrayLike = jax.typing.ArrayLike
AxisName = str | tuple[str, ...] | None

# Dataset-level counts outgrow int32 (2^31 voxels is about 27 CT volumes of 512x512x300)
# and int64 needs jax_enable_x64, so the state keeps each count as two int32 words:
# value = high * 2^16 + low with 0 <= low < 2^16. high holds 31 bits: exact to 2^47.
_LOW_BITS = 16
_LOW_MASK = (1 << _LOW_BITS) - 1
_COUNTS = ("tp", "fp", "fn", "tn")


# ------------------------------------------------------------------------------ checks


def _class_maps(
    predictions: ArrayLike,
    labels: ArrayLike,
    where: ArrayLike | None,
    ignore_index: Any,
    num_classes: int,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Checks two class maps (and ``where``) and returns them as int32 arrays.

    The int32 cast does not wrap: 64-bit values outside ``[0, num_classes)`` become -1
    (out of range) first, so the label ``2**32 + 1`` is not read as class 1.
    """
    predictions = _arguments.as_array("predictions", predictions)
    labels = _arguments.as_array("labels", labels)
    _checks.check_class_maps(predictions, labels, ranks=(2, 3, 4))
    _checks.check_where(where, labels.shape)
    where = None if where is None else jnp.asarray(where)
    return (
        _checks.class_map_int32(predictions, num_classes),
        _checks.class_map_int32(labels, num_classes),
        where,
    )


# ---------------------------------------------------------------------- class maps


@_arguments.normalised
def predictions_from_logits(
    logits: ArrayLike, *, activation: str | None = "softmax", threshold: float = 0.5
) -> jax.Array:
    """Hard predictions: the class map of ``(batch, *spatial, classes)`` logits.

    - ``"softmax"``: the argmax over classes (the softmax is monotone, so it is skipped).
    - ``"sigmoid"`` with one channel: a binary mask, 1 where ``sigmoid(x) > threshold``.
    - ``None`` (probabilities given) with one channel: 1 where ``x > threshold``.
    - ``"sigmoid"`` or ``None`` with several channels: the argmax, as for
      ``"softmax"`` (jaxseg reads several sigmoid channels with integer labels as the
      one-hot code of exclusive classes). Multi-label outputs, whose channels may
      overlap, have no class map: threshold each channel (``probs > t``) instead.

    Ties go to the lowest class, as ``jnp.argmax`` does; ``threshold`` is strict, as in
    MONAI's ``DiceHelper`` and torchmetrics.

    Args:
      logits: float ``(batch, *spatial, classes)``, 1 to 3 spatial axes.
      activation: ``"softmax"``, ``"sigmoid"`` or ``None``.
      threshold: in [0, 1], the probability above which a one-channel pixel is 1.

    Returns:
      int32 ``(batch, *spatial)`` class map.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg import metrics
      >>> metrics.predictions_from_logits(jnp.array([[[0.0, 2.0], [1.0, -1.0]]]))
      Array([[1, 0]], dtype=int32)
      >>> metrics.predictions_from_logits(jnp.array([[[0.3], [-2.0]]]), activation="sigmoid")
      Array([[1, 0]], dtype=int32)
    """
    _checks.check_option("activation", activation, _checks.ACTIVATIONS)
    logits = _arguments.as_array("logits", logits)
    chex.assert_type(
        logits,
        float,
        custom_message=f"`logits` must be a floating array; got dtype {logits.dtype}.",
        exception_type=ValueError,
    )
    shape_message = (
        "`logits` must have shape (batch, *spatial, classes) with 1 to 3 spatial axes "
        f"(rank 3 to 5) and no empty axis; got shape {logits.shape}."
    )
    chex.assert_rank(logits, {3, 4, 5}, custom_message=shape_message, exception_type=ValueError)
    if 0 in logits.shape:
        raise ValueError(shape_message)
    if activation == "softmax" and logits.shape[-1] < 2:
        raise ValueError(
            "`activation='softmax'` needs at least 2 classes on the last axis of `logits`; "
            f"got shape {logits.shape}. Use activation='sigmoid' for one channel."
        )
    return _predictions_from_logits(logits, threshold, activation=activation)


@functools.partial(jax.jit, static_argnames=("activation",))
def _predictions_from_logits(logits, threshold, *, activation):
    if logits.shape[-1] > 1:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = logits[..., 0].astype(_checks.compute_dtype(logits.dtype))
    probs = jax.nn.sigmoid(x) if activation == "sigmoid" else x
    return (probs > threshold).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_index"))
def _confusion_matrix(predictions, labels, where, *, num_classes, ignore_index):
    valid = _checks.valid_mask(labels, num_classes, "softmax", ignore_index, where)
    valid &= (predictions >= 0) & (predictions < num_classes)
    # Excluded pixels point past the end, where mode="drop" discards them.
    index = jnp.where(valid, labels * num_classes + predictions, num_classes * num_classes)
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32)
    counts = counts.at[index.reshape(-1)].add(1, mode="drop")
    return counts.reshape(num_classes, num_classes)


@_arguments.normalised
def confusion_matrix(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
    """Confusion matrix of two class maps, summed over the batch.

    Entry ``[i, j]`` counts the valid pixels whose label is ``i`` and whose prediction
    is ``j`` (rows the label, columns the prediction, as scikit-learn and torchmetrics).
    It is a scatter-add of ``label * C + prediction`` into ``C * C`` bins: static
    shapes, no boolean indexing, jittable. Per class, ``tp`` is the diagonal, ``fn`` the
    row sum minus it and ``fp`` the column sum minus it.

    A pixel is counted only when its label and its prediction both lie in ``[0, C)``,
    its label differs from ``ignore_index`` and ``where`` is True there. (The overlap
    scores count an out-of-range prediction as a miss instead.) Counts are int32:
    exact up to 2^31 - 1 pixels per call; sum calls with the state of
    :func:`metric_state` beyond that.

    Args:
      predictions: integer class map ``(batch, *spatial)``.
      labels: integer class map of the same shape.
      num_classes: the number of classes ``C`` (static).
      ignore_index: a label whose pixels are left out.
      where: boolean ``(batch, *spatial)``; False leaves a pixel out.

    Returns:
      int32 ``(C, C)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg import metrics
      >>> metrics.confusion_matrix(jnp.array([[0, 1, 1, 2]]), jnp.array([[0, 1, 2, 2]]), 3)
      Array([[1, 0, 0],
             [0, 1, 0],
             [0, 1, 1]], dtype=int32)
    """
    _checks.check_num_classes(num_classes)
    predictions, labels, where = _class_maps(
        predictions, labels, where, ignore_index, int(num_classes)
    )
    # A scatter over an explicitly sharded batch is not defined: the maps are gathered.
    predictions, labels, where = _sharding.replicated(predictions, labels, where)
    return _confusion_matrix(
        predictions, labels, where, num_classes=int(num_classes), ignore_index=ignore_index
    )


# ------------------------------------------------------------------- overlap scores


def _class_stats(predictions, labels, where, num_classes, ignore_index) -> OverlapStats:
    """Exact int32 ``(batch, classes)`` counts from the statistics core."""
    valid = _checks.valid_mask(labels, num_classes, "softmax", ignore_index, where)
    classes = jnp.arange(num_classes, dtype=jnp.int32)
    return _stats.compute_stats(predictions, labels, valid, classes)


def _score(stats: OverlapStats, kind: str, ignore_empty: bool) -> jax.Array:
    """Dice or IoU of (integer or float) counts with MONAI's empty-class convention."""
    f32 = OverlapStats(*(jnp.asarray(s, jnp.float32) for s in stats))
    score = _overlap.dice_score if kind == "dice" else _overlap.iou_score
    # Without smoothing, the losses' ratio already gives 1 when both maps are empty
    # (0/0) and 0 for a prediction on an empty label: MONAI's ignore_empty=False.
    value = score(f32, 0.0, 0.0)
    if ignore_empty:
        value = jnp.where(f32.label_sum > 0, value, jnp.nan)
    return value


@functools.partial(
    jax.jit,
    static_argnames=("kind", "num_classes", "include_background", "ignore_index", "ignore_empty"),
)
def _scores(
    predictions,
    labels,
    where,
    *,
    kind,
    num_classes,
    include_background,
    ignore_index,
    ignore_empty,
):
    stats = _class_stats(predictions, labels, where, num_classes, ignore_index)
    value = _score(stats, kind, ignore_empty)
    return value if include_background else value[:, 1:]


def _call_scores(kind, predictions, labels, num_classes, **options) -> jax.Array:
    _checks.check_num_classes(num_classes, options["include_background"])
    predictions, labels, where = _class_maps(
        predictions, labels, options.pop("where"), options["ignore_index"], int(num_classes)
    )
    return _scores(predictions, labels, where, kind=kind, num_classes=int(num_classes), **options)


@_arguments.normalised
def dice_score(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    include_background: bool = True,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    ignore_empty: bool = True,
    per_component: bool = False,
) -> jax.Array:
    r"""Dice coefficient of hard predictions, per sample and class.

    .. math::
        D_{bc} = \frac{2\,tp_{bc}}{2\,tp_{bc} + fp_{bc} + fn_{bc}}
               = \frac{2 |P_{bc} \cap L_{bc}|}{|P_{bc}| + |L_{bc}|}

    Equals MONAI ``DiceMetric(include_background=..., reduction="none",
    ignore_empty=..., ignore_index=...)`` on one-hot channels-first copies, and
    ``1 - dice_loss(one_hot(predictions), labels, activation=None, smooth_nr=0,
    smooth_dr=0, reduction="none")`` wherever the label has the class.

    Args:
      predictions: integer (or boolean) class map ``(batch, *spatial)``, 1 to 3
        spatial axes.
      labels: integer class map of the same shape.
      num_classes: the number of classes ``C``, background included (static).
      include_background: False drops class 0 from the output.
      ignore_index: a label whose pixels are left out (of every class's counts).
      where: boolean ``(batch, *spatial)``; False leaves a pixel out.
      ignore_empty: True: NaN where the class is absent from the sample's label.
        False: 1.0 there if the prediction lacks the class too, else 0.0.
      per_component: MONAI ``DiceMetric(per_component=True)`` (static): for binary maps
        (``num_classes=2``, 2 or 3 spatial axes), the mean over the connected components
        of the label's foreground (8- or 26-connected) of the Dice in each component's
        Voronoi region, one value per sample, ``(batch, 1)`` whatever
        ``include_background``; see :func:`jaxseg._instances.per_component_dice`. Not
        combinable with ``ignore_index`` or ``where`` (MONAI ignores them there).

    Returns:
      float32 ``(batch, C')``, ``C' = C - 1`` without the background; ``(batch, 1)``
      with ``per_component=True``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg import metrics
      >>> labels = jnp.array([[0, 0, 1, 1]])
      >>> metrics.dice_score(jnp.array([[0, 1, 1, 1]]), labels, 3)
      Array([[0.6666667, 0.8      ,       nan]], dtype=float32)
      >>> metrics.dice_score(jnp.array([[0, 1, 1, 1]]), labels, 3, ignore_empty=False)
      Array([[0.6666667, 0.8      , 1.       ]], dtype=float32)
      >>> two_lesions = jnp.array([[[1, 1, 0, 0, 0, 0, 1, 0]]])
      >>> found_one = jnp.array([[[1, 1, 0, 0, 0, 0, 0, 0]]])
      >>> metrics.dice_score(found_one, two_lesions, 2, per_component=True)
      Array([[0.5]], dtype=float32)
    """
    if per_component:
        return _per_component_scores(
            predictions, labels, num_classes, ignore_index, where, ignore_empty
        )
    return _call_scores(
        "dice",
        predictions,
        labels,
        num_classes,
        include_background=include_background,
        ignore_index=ignore_index,
        where=where,
        ignore_empty=ignore_empty,
    )


def _per_component_scores(predictions, labels, num_classes, ignore_index, where, ignore_empty):
    if num_classes != 2:
        raise ValueError(
            "`per_component=True` scores binary maps (MONAI needs 2 channels): "
            f"`num_classes` must be 2; got {num_classes!r}."
        )
    if ignore_index is not None or where is not None:
        raise ValueError("`per_component=True` does not support `ignore_index` or `where`.")
    predictions, labels, _ = _class_maps(predictions, labels, None, None, num_classes)
    predictions, labels = _sharding.replicated(predictions, labels)  # components span a map
    return _instances.per_component_dice(predictions, labels, ignore_empty=ignore_empty)


@_arguments.normalised
def iou_score(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    include_background: bool = True,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    ignore_empty: bool = True,
) -> jax.Array:
    r"""IoU (Jaccard index) of hard predictions, per sample and class.

    .. math::
        J_{bc} = \frac{tp_{bc}}{tp_{bc} + fp_{bc} + fn_{bc}}
               = \frac{|P_{bc} \cap L_{bc}|}{|P_{bc} \cup L_{bc}|}

    Equals MONAI ``MeanIoU(include_background=..., reduction="none",
    ignore_empty=...)`` on one-hot channels-first copies. With ``ignore_index`` the
    pixels of that label leave every class, as in MONAI's ``DiceMetric``; MONAI's
    ``MeanIoU`` only blanks the channel of an in-range ``ignore_index`` (see the README's
    differences table). Options, shapes and empty-class convention as
    :func:`dice_score`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg import metrics
      >>> labels = jnp.array([[0, 0, 1, 1]])
      >>> metrics.iou_score(jnp.array([[0, 1, 1, 1]]), labels, 2)
      Array([[0.5      , 0.6666667]], dtype=float32)
    """
    return _call_scores(
        "iou",
        predictions,
        labels,
        num_classes,
        include_background=include_background,
        ignore_index=ignore_index,
        where=where,
        ignore_empty=ignore_empty,
    )


@jax.jit
def _mean_over_samples_of_class_means(values: jax.Array) -> jax.Array:
    """MONAI's ``reduction="mean"``: NaN-skipping mean over classes, then over samples."""
    defined = ~jnp.isnan(values)
    per_class = jnp.sum(defined, axis=-1)
    sample_mean = jnp.sum(jnp.where(defined, values, 0), axis=-1) / jnp.maximum(per_class, 1)
    has_any = per_class > 0
    count = jnp.sum(has_any)
    total = jnp.sum(jnp.where(has_any, sample_mean, 0))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


@_arguments.normalised
def mean_dice(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    include_background: bool = True,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    ignore_empty: bool = True,
) -> jax.Array:
    """Mean Dice of a batch: each sample's mean over its defined classes, then the mean.

    NaN entries of :func:`dice_score` (classes absent from a sample's label with
    ``ignore_empty=True``) are left out: each sample averages its non-NaN classes, and
    samples with none are left out of the batch mean. This is MONAI
    ``DiceMetric(reduction="mean")``, except that a batch with no defined entry gives
    NaN here and 0.0 in MONAI. Options as :func:`dice_score`.

    For a dataset, accumulate a :func:`metric_state` instead: see :func:`compute`.

    Returns:
      A float32 scalar.
    """
    return _mean_over_samples_of_class_means(
        dice_score(
            predictions,
            labels,
            num_classes,
            include_background=include_background,
            ignore_index=ignore_index,
            where=where,
            ignore_empty=ignore_empty,
        )
    )


@_arguments.normalised
def mean_iou(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    include_background: bool = True,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    ignore_empty: bool = True,
) -> jax.Array:
    """Mean IoU of a batch (MONAI ``MeanIoU(reduction="mean")``); as :func:`mean_dice`."""
    return _mean_over_samples_of_class_means(
        iou_score(
            predictions,
            labels,
            num_classes,
            include_background=include_background,
            ignore_index=ignore_index,
            where=where,
            ignore_empty=ignore_empty,
        )
    )


# -------------------------------------------------------------------- metric state


class MetricState(NamedTuple):
    """Mergeable statistics of a whole evaluation: a pytree of integer counts.

    Summing counts over the dataset and taking ratios at the end gives the exact global
    (dataset-level) scores. Averaging per-batch scores does not: the result depends on
    how the data were batched and sharded, gives a small batch the weight of a large
    one, and a batch missing a class contributes NaN or an arbitrary 1.0 for it. Counts
    add exactly, in any order, across batches, hosts and devices.

    Each count is kept as two int32 words, ``[high, low]`` on the last axis, with value
    ``high * 2**16 + low``: exact up to 2^47 (about 1.4e14) pixels per class without
    ``jax_enable_x64``. Read them with :func:`exact_counts`.

    Attributes:
      tp: int32 ``(classes, 2)``: pixels of the class in both label and prediction.
      fp: int32 ``(classes, 2)``: predicted as the class, labelled otherwise.
      fn: int32 ``(classes, 2)``: labelled as the class, predicted otherwise.
      tn: int32 ``(classes, 2)``: in neither.
      dice_sum: float32 ``(classes,)``: the sum over samples whose label has the class
        of that sample's Dice (for the per-sample mean, MONAI's ``"mean_batch"``).
      iou_sum: float32 ``(classes,)``: the same for IoU.
      label_present: int32 ``(classes,)``: samples whose label has the class.
      both_empty: int32 ``(classes,)``: samples where neither label nor prediction has it.
      num_samples: int32 ``()``: samples seen.
    """

    tp: jax.Array
    fp: jax.Array
    fn: jax.Array
    tn: jax.Array
    dice_sum: jax.Array
    iou_sum: jax.Array
    label_present: jax.Array
    both_empty: jax.Array
    num_samples: jax.Array

    @property
    def num_classes(self) -> int:
        return self.tp.shape[0]


@_arguments.normalised
def metric_state(num_classes: int) -> MetricState:
    """The empty state for ``num_classes`` classes (background included).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg import metrics
      >>> state = metrics.metric_state(3)
      >>> for _ in range(2):
      ...     state = metrics.update(state, jnp.array([[0, 1, 2, 2]]), jnp.array([[0, 1, 1, 2]]))
      >>> metrics.compute(state)["dice"]
      Array([1.       , 0.6666667, 0.6666667], dtype=float32)
    """
    _checks.check_num_classes(num_classes)
    words = jnp.zeros((num_classes, 2), jnp.int32)
    floats = jnp.zeros((num_classes,), jnp.float32)
    ints = jnp.zeros((num_classes,), jnp.int32)
    return MetricState(
        words, words, words, words, floats, floats, ints, ints, jnp.zeros((), jnp.int32)
    )


def _normalised(high: jax.Array, low: jax.Array) -> jax.Array:
    """``[high, low]`` words with the carry of ``low`` moved into ``high``."""
    return jnp.stack([high + (low >> _LOW_BITS), low & _LOW_MASK], axis=-1)


def _batch_words(values: jax.Array) -> jax.Array:
    """Sums non-negative int32 ``(batch, classes)`` counts into ``(classes, 2)`` words.

    Each part sums to less than ``batch * 2^16``: exact for batches below 32767. The
    explicit dtype keeps the state int32 under ``jax_enable_x64`` (a stable loop carry).
    """
    high = jnp.sum(values >> _LOW_BITS, axis=0, dtype=jnp.int32)
    return _normalised(high, jnp.sum(values & _LOW_MASK, axis=0, dtype=jnp.int32))


def _add_words(a: jax.Array, b: jax.Array) -> jax.Array:
    return _normalised(a[..., 0] + b[..., 0], a[..., 1] + b[..., 1])


def _words_to_float(words: jax.Array) -> jax.Array:
    return words[..., 0].astype(jnp.float32) * float(1 << _LOW_BITS) + words[..., 1]


@jax.jit
def _merge(a: MetricState, b: MetricState) -> MetricState:
    return MetricState(
        *(_add_words(x, y) for x, y in zip(a[:4], b[:4], strict=True)),
        *(x + y for x, y in zip(a[4:], b[4:], strict=True)),
    )


def _check_state(state: Any, name: str = "state") -> None:
    if not isinstance(state, MetricState):
        raise ValueError(
            f"`{name}` must be a MetricState (from jaxseg.metrics.metric_state); got "
            f"{type(state).__name__}."
        )


def merge(a: MetricState, b: MetricState) -> MetricState:
    """Adds two states: the state of the union of their data.

    Associative and commutative; the counts are exact, so any merge order gives the
    same counts bit for bit (the float sums of per-sample scores agree to rounding).
    Use it to combine states of several hosts, workers or evaluation shards.
    """
    _check_state(a, "a")
    _check_state(b, "b")
    if a.num_classes != b.num_classes:
        raise ValueError(f"cannot merge states of {a.num_classes} and {b.num_classes} classes.")
    return _merge(a, b)


@functools.partial(jax.jit, static_argnames=("ignore_index", "axis_name"))
def _update(state, predictions, labels, where, *, ignore_index, axis_name):
    stats = _class_stats(predictions, labels, where, state.num_classes, ignore_index)
    present = stats.label_sum > 0
    increment = MetricState(
        *(_batch_words(getattr(stats, name)) for name in _COUNTS),
        dice_sum=jnp.sum(jnp.where(present, _score(stats, "dice", True), 0), axis=0),
        iou_sum=jnp.sum(jnp.where(present, _score(stats, "iou", True), 0), axis=0),
        label_present=jnp.sum(present, axis=0, dtype=jnp.int32),
        both_empty=jnp.sum(~present & (stats.pred_sum == 0), axis=0, dtype=jnp.int32),
        num_samples=jnp.asarray(predictions.shape[0], jnp.int32),
    )
    # Summing the increment (normalised words, low < 2^16) keeps every device's copy of
    # the state identical: the state of the global batch.
    return _merge(state, _stats.psum(increment, axis_name))


@_arguments.normalised
def update(
    state: MetricState,
    predictions: ArrayLike,
    labels: ArrayLike,
    *,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    axis_name: AxisName = None,
) -> MetricState:
    """Adds a batch of class maps to ``state``; pure, returns the new state.

    Args:
      state: a :class:`MetricState` (from :func:`metric_state`).
      predictions: integer class map ``(batch, *spatial)``.
      labels: integer class map of the same shape.
      ignore_index: a label whose pixels are left out.
      where: boolean ``(batch, *spatial)``; False leaves a pixel out.
      axis_name: inside ``shard_map``/``pmap``, the mapped axis name(s): the batch
        counts are ``psum``-ed, so every device holds the state of the global batch.
        Without it, keep one state per shard and :func:`merge` them.

    A sample must have fewer than 2^31 pixels and a batch (per device) fewer than
    32767 samples; the accumulated counts are exact up to 2^47.
    """
    _check_state(state)
    predictions, labels, where = _class_maps(
        predictions, labels, where, ignore_index, state.num_classes
    )
    return _update(
        state, predictions, labels, where, ignore_index=ignore_index, axis_name=axis_name
    )


def _divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator``, NaN where the denominator is 0 (the ratio is undefined)."""
    nonzero = denominator > 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1), jnp.nan)


@functools.partial(jax.jit, static_argnames=("include_background", "ignore_empty"))
def _compute(state, *, include_background, ignore_empty):
    tp, fp, fn, tn = (_words_to_float(getattr(state, name)) for name in _COUNTS)
    total = tp + fp + fn + tn
    stats = OverlapStats(tp, fp, fn, total)
    samples = state.num_samples.astype(jnp.float32)
    if ignore_empty:
        sample_dice = _divide(state.dice_sum, state.label_present.astype(jnp.float32))
        sample_iou = _divide(state.iou_sum, state.label_present.astype(jnp.float32))
    else:
        sample_dice = _divide(state.dice_sum + state.both_empty, samples)
        sample_iou = _divide(state.iou_sum + state.both_empty, samples)
    per_class = {
        "dice": _score(stats, "dice", ignore_empty),
        "iou": _score(stats, "iou", ignore_empty),
        "precision": _divide(tp, tp + fp),
        "recall": _divide(tp, tp + fn),
        "specificity": _divide(tn, tn + fp),
        "sample_dice": sample_dice,
        "sample_iou": sample_iou,
    }
    if not include_background:
        per_class = {key: value[1:] for key, value in per_class.items()}
    means = {
        f"mean_{key}": jnp.nanmean(per_class[key])
        for key in ("dice", "iou", "precision", "recall", "specificity")
    }
    # Every pixel has one label, so sum_c tp_c counts the correct pixels of any class.
    accuracy = _divide(jnp.sum(tp), total[0])
    return {**per_class, **means, "accuracy": accuracy}


@functools.partial(jax.jit, static_argnames=("names", "include_background"))
def _state_scores(state, beta, *, names, include_background):
    tp, fp, fn, tn = (_words_to_float(getattr(state, name)) for name in _COUNTS)
    scores = _confusion_formulas.scores_of_counts(tp, fp, tn, fn, names, beta)
    return scores if include_background else {k: v[1:] for k, v in scores.items()}


def _family_scores(
    state: MetricState, metrics: str | Sequence[str], *, include_background: bool, beta: Any
) -> dict[str, jax.Array]:
    """``compute(state, metrics=...)``: the named metrics of the state's global counts."""
    names = _confusion_formulas.metric_names(metrics)
    return _state_scores(
        state, jnp.asarray(beta, jnp.float32), names=names, include_background=include_background
    )


@_arguments.normalised
def compute(
    state: MetricState,
    *,
    include_background: bool = True,
    ignore_empty: bool = True,
    metrics: str | tuple[str, ...] | None = None,
    beta: float | jax.Array = 1.0,
) -> dict[str, jax.Array]:
    r"""Scores of the accumulated state: global per-class scores, their means, and more.

    Global scores are ratios of the counts summed over every pixel of every sample (the
    dataset seen as one sample): ``dice`` :math:`2tp / (2tp + fp + fn)`, ``iou``
    :math:`tp / (tp + fp + fn)`, ``precision`` :math:`tp / (tp + fp)`, ``recall``
    (sensitivity) :math:`tp / (tp + fn)`, ``specificity`` :math:`tn / (tn + fp)`.
    Entries whose denominator is 0 are NaN; ``dice`` and ``iou`` follow the empty-class
    convention of :func:`dice_score` for a class absent from every label (NaN with
    ``ignore_empty``, else 1.0 or 0.0).

    Returns:
      A dict of float32 arrays:

      - ``"dice"``, ``"iou"``, ``"precision"``, ``"recall"``, ``"specificity"``:
        ``(C',)`` global scores (``C' = C - 1`` without the background).
      - ``"mean_dice"``, ``"mean_iou"``, ``"mean_precision"``, ``"mean_recall"``,
        ``"mean_specificity"``: scalars, their means over non-NaN classes (NaN if none).
      - ``"sample_dice"``, ``"sample_iou"``: ``(C',)`` per-sample scores averaged over
        samples: over samples whose label has the class with ``ignore_empty``
        (MONAI ``DiceMetric(reduction="mean_batch")``; NaN if none, MONAI gives 0),
        over all samples otherwise.
      - ``"accuracy"``: scalar pixel accuracy over all classes, :math:`\sum_c tp_c / N`.
      - The confusion-matrix family of :data:`CONFUSION_METRICS` under MONAI's names in
        snake_case (``"sensitivity"``, ``"negative_predictive_value"``,
        ``"matthews_correlation_coefficient"``, ...), each ``(C',)`` from the global
        counts, as MONAI ``ConfusionMatrixMetric(compute_sample=False,
        reduction="sum_batch")``; all but ``"accuracy"``, which keeps its meaning above.

    With ``metrics`` (a name or a tuple of names, static), it returns instead exactly
    the named confusion-matrix metrics (:data:`CONFUSION_METRICS`, ``"fbeta_score"`` with
    ``beta``, or MONAI's aliases), each a float32 ``(C',)`` array of the global counts.
    There ``"accuracy"`` is per class, :math:`(tp_c + tn_c) / N`, as MONAI's. See
    :func:`confusion_metrics` for the formulas and the per-sample values.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxseg import metrics
      >>> state = metrics.update(metrics.metric_state(2), jnp.array([[0, 1, 1, 1]]),
      ...                        jnp.array([[0, 0, 1, 1]]))
      >>> state = metrics.update(state, jnp.array([[1, 1, 0, 0]]), jnp.array([[1, 1, 1, 0]]))
      >>> metrics.compute(state)["negative_predictive_value"]
      Array([0.8      , 0.6666667], dtype=float32)
      >>> metrics.compute(state, metrics=("accuracy", "fbeta_score"), beta=2.0)["accuracy"]
      Array([0.75, 0.75], dtype=float32)
    """
    _check_state(state)
    if not include_background and state.num_classes < 2:
        raise ValueError("`include_background=False` needs a state of at least 2 classes.")
    if metrics is not None:
        return _family_scores(state, metrics, include_background=include_background, beta=beta)
    family = _family_scores(
        state,
        _confusion_formulas.STATE_DEFAULTS,
        include_background=include_background,
        beta=beta,
    )
    result = _compute(state, include_background=include_background, ignore_empty=ignore_empty)
    return {**family, **result}


def exact_counts(state: MetricState) -> dict[str, np.ndarray]:
    """The exact counts of ``state`` as NumPy int64 ``(classes,)`` arrays, on the host.

    Not jittable (it reads the values); inside ``jit``, :func:`compute` converts the
    counts to float32 itself.

    Returns:
      ``{"tp": ..., "fp": ..., "fn": ..., "tn": ...}``.
    """
    _check_state(state)
    counts = {}
    for name in _COUNTS:
        words = np.asarray(getattr(state, name), dtype=np.int64)
        counts[name] = (words[..., 0] << _LOW_BITS) + words[..., 1]
    return counts
