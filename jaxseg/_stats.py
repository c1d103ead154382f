"""The statistics core: per-(sample, class) sufficient statistics of overlap.

Every overlap loss (Dice, IoU, Tversky, generalized Dice) and every overlap metric is
a cheap function of four numbers per (sample, class): true positives, false positives,
false negatives and the count of valid pixels. They are computed by one kernel that
sees one class map of one sample, lifted with ``jax.vmap`` over classes and over the
batch. Labels given as class indices are compared with the class id inside the
kernel, so no float one-hot of the labels is ever built.

Sums accumulate in float32 whatever the input dtype (bfloat16 and float16 sums over a
volume overflow or round badly), and in int32 when both maps are hard, so that metric
counts are exact. Summing statistics, not losses, is what makes batch Dice, global
Dice across devices and mergeable metrics exact.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxseg import _arguments, _checks


class OverlapStats(NamedTuple):
    """Sufficient statistics of overlap, one entry per (sample, class).

    With ``squared=True`` the prediction and label sums are sums of squares, so that
    ``2 tp + fp + fn = sum(p^2) + sum(y^2)``; with ``soft_label=True`` ``tp`` is the L1
    form ``(sum p + sum y - sum |p - y|) / 2``. In every case ``tp + fp`` is the
    prediction sum and ``tp + fn`` the label sum.

    Attributes:
      tp: true positives, ``sum v p y``.
      fp: false positives, ``sum v p - tp``.
      fn: false negatives, ``sum v y - tp``.
      total: the number of valid pixels ``sum v`` (the same for every class).
    """

    tp: jax.Array
    fp: jax.Array
    fn: jax.Array
    total: jax.Array

    @property
    def tn(self) -> jax.Array:
        """True negatives, ``total - tp - fp - fn`` (exact for linear sums)."""
        return self.total - self.tp - self.fp - self.fn

    @property
    def label_sum(self) -> jax.Array:
        return self.tp + self.fn

    @property
    def pred_sum(self) -> jax.Array:
        return self.tp + self.fp


def _class_map(x: jax.Array, class_id: jax.Array) -> jax.Array:
    """A class-index map becomes the boolean map of one class; a dense map is kept."""
    if _checks.is_integer_labels(x):
        return x == class_id
    return x


def _class_stats(
    pred: jax.Array,
    target: jax.Array,
    valid: jax.Array,
    class_id: jax.Array,
    *,
    squared: bool,
    soft_label: bool,
) -> OverlapStats:
    """The kernel: statistics of one class map of one sample, all arrays ``(*spatial,)``."""
    p = _class_map(pred, class_id)
    y = _class_map(target, class_id)
    if p.dtype == jnp.bool_ and y.dtype == jnp.bool_:
        # Hard maps: exact integer counts (metrics rely on exactness).
        p, y = p & valid, y & valid
        tp = jnp.sum(p & y, dtype=jnp.int32)
        pred_sum = jnp.sum(p, dtype=jnp.int32)
        label_sum = jnp.sum(y, dtype=jnp.int32)
        total = jnp.sum(valid, dtype=jnp.int32)
        return OverlapStats(tp, pred_sum - tp, label_sum - tp, total)

    acc = jnp.promote_types(jnp.float32, jnp.result_type(p, y))
    zero = jnp.zeros((), acc)
    p = jnp.where(valid, p.astype(acc), zero)
    y = jnp.where(valid, y.astype(acc), zero)
    tp = jnp.sum(p * y)
    if squared:
        pred_sum, label_sum = jnp.sum(p * p), jnp.sum(y * y)
    else:
        pred_sum, label_sum = jnp.sum(p), jnp.sum(y)
        # For a hard label (a class-index map) the L1 identity equals sum(p y): skip it.
        if soft_label and not _checks.is_integer_labels(target):
            tp = 0.5 * (pred_sum + label_sum - jnp.sum(jnp.abs(p - y)))
    total = jnp.sum(valid, dtype=acc)
    return OverlapStats(tp, pred_sum - tp, label_sum - tp, total)


def compute_stats(
    pred: jax.Array,
    target: jax.Array,
    valid: jax.Array,
    label_values: jax.Array,
    *,
    squared: bool = False,
    soft_label: bool = False,
) -> OverlapStats:
    """Statistics for every (sample, class).

    Args:
      pred: dense ``(batch, *spatial, classes)`` probabilities, or an integer class map
        ``(batch, *spatial)`` (hard predictions).
      target: dense ``(batch, *spatial, classes)`` labels, or integer ``(batch, *spatial)``.
      valid: boolean ``(batch, *spatial)``; pixels where it is False leave every sum.
      label_values: ``(classes,)`` the integer label that each class stands for.
      squared: sums of squares for the prediction and label sums.
      soft_label: L1 form of ``tp``, exact for soft (non-binary) dense labels.

    Returns:
      :class:`OverlapStats` with fields of shape ``(batch, classes)``.
    """
    kernel = lambda p, y, v, c: _class_stats(p, y, v, c, squared=squared, soft_label=soft_label)
    class_axis = lambda x: None if _checks.is_integer_labels(x) else -1
    per_class = jax.vmap(kernel, in_axes=(class_axis(pred), class_axis(target), None, 0))
    per_sample = jax.vmap(per_class, in_axes=(0, 0, 0, None))
    return per_sample(pred, target, valid, jnp.asarray(label_values))


def sum_over_batch(stats: OverlapStats, axis_name: str | tuple[str, ...] | None) -> OverlapStats:
    """Sums ``(batch, classes)`` statistics over the batch, and over ``axis_name``."""
    summed = jax.tree.map(lambda s: jnp.sum(s, axis=0), stats)
    return psum(summed, axis_name)


def psum(tree, axis_name: str | tuple[str, ...] | None):
    """``jax.lax.psum`` over ``axis_name``, or the identity when it is None."""
    if axis_name is None:
        return tree
    return jax.lax.psum(tree, axis_name)


def stats_of_probabilities(
    logits, labels, where, *, activation, ignore_index, squared, soft_label
) -> OverlapStats:
    """Activation, mask, then :func:`compute_stats`: the generic path from logits."""
    inputs = _checks.prepare(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    stats = compute_stats(
        inputs.probs,
        inputs.labels,
        inputs.valid,
        inputs.label_values,
        squared=squared,
        soft_label=soft_label,
    )
    return stats


@_arguments.normalised
def overlap_stats(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    activation: str | None = "softmax",
    ignore_index: int | None = None,
    where: jax.typing.ArrayLike | None = None,
    squared: bool = False,
    soft_label: bool = False,
    batch: bool = False,
    axis_name: str | tuple[str, ...] | None = None,
) -> OverlapStats:
    r"""Per-(sample, class) overlap statistics of soft predictions.

    .. math::
        tp_{bc} = \sum_i v_{bi}\, p_{bic}\, y_{bic}, \quad
        fp_{bc} = \sum_i v_{bi}\, p_{bic} - tp_{bc}, \quad
        fn_{bc} = \sum_i v_{bi}\, y_{bic} - tp_{bc}

    where ``p`` is the activation of the logits, ``y`` the (one-hot) labels and ``v``
    the validity mask (``where``, ``ignore_index``). Every overlap loss of jaxseg is a
    function of these; summing them (over the batch, over devices, over batches of a
    validation set) before taking ratios gives exact global scores.

    Args:
      logits: ``(batch, *spatial, classes)``.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, classes)``.
      activation: ``"softmax"``, ``"sigmoid"`` or ``None`` (probabilities given).
      ignore_index: integer label to exclude.
      where: boolean ``(batch, *spatial)``; False excludes a pixel.
      squared: prediction and label sums of squares (``squared`` Dice).
      soft_label: L1 form of ``tp`` for soft labels.
      batch: sum over the batch: fields of shape ``(classes,)``.
      axis_name: mapped axis to sum over when ``batch`` (inside ``shard_map``/``pmap``).

    Returns:
      :class:`OverlapStats`, fields ``(batch, classes)`` or ``(classes,)`` with ``batch``.

    Examples:
      >>> import jax.numpy as jnp, jaxseg
      >>> logits = jnp.zeros((1, 4, 2)); labels = jnp.array([[0, 0, 1, 1]])
      >>> jaxseg.overlap_stats(logits, labels).tp
      Array([[1., 1.]], dtype=float32)
    """
    _checks.check_logits_labels(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    return _overlap_stats(
        jnp.asarray(logits),
        jnp.asarray(labels),
        None if where is None else jnp.asarray(where),
        activation=activation,
        ignore_index=ignore_index,
        squared=squared,
        soft_label=soft_label,
        batch=batch,
        axis_name=axis_name,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "activation",
        "ignore_index",
        "squared",
        "soft_label",
        "batch",
        "axis_name",
    ),
)
def _overlap_stats(
    logits, labels, where, *, activation, ignore_index, squared, soft_label, batch, axis_name
):
    stats = stats_of_probabilities(
        logits,
        labels,
        where,
        activation=activation,
        ignore_index=ignore_index,
        squared=squared,
        soft_label=soft_label,
    )
    return sum_over_batch(stats, axis_name) if batch else stats
