r"""The softmax engine: one pass over the logits for every softmax loss with integer labels.

The Dice family, the cross-entropy and the focal loss, with softmax and integer labels,
all need a few sums and per-pixel values of one softmax. This module computes them,
for any number of classes, from one pass over logits of shape ``(batch, pixels, C)``
(the spatial axes flattened, the class axis minor, as the logits lie in memory).

Forward
-------
Per pixel ``i`` of sample ``b``, with label ``y``, validity ``v`` (0 or 1) and class
weights ``w``, everything relative to the pixel's maximum ``m = max_c x_c`` (so adding a
constant to all logits of a pixel changes nothing, up to offsets of 1e30):

.. math::
    z_c = x_c - m, \quad s = \sum_c e^{z_c}, \quad p_c = e^{z_c - \log s}, \quad
    \log p_y = z_y - \log s, \quad
    \log(1 - p_y) = \log \textstyle\sum_{c \ne y} p_c,

    q = \sum_c w_c \log p_c = \sum_c w_c z_c - W \log s \quad (W = \textstyle\sum_c w_c),

and per (sample, class)

.. math::
    \mathrm{pred}_{bc} = \sum_i v_i\, p_{ic}, \qquad
    \mathrm{tp}_{bc} = \sum_{i:\, y_i = c} v_i\, p_{i y_i}, \qquad
    n_{bc} = \sum_{i:\, y_i = c} v_i \ (\text{int32}).

``pred`` is a matrix-vector product ``einsum("bnc,bn->bc", p, v)``: XLA's CPU backend
runs it as a dot, one read of ``p``, where a reduction over the pixel axis with the
class axis minor is a strided loop (measured, forward only, on 8 MiB of float32 ``p``:
8.0 ms against 32.8 ms for ``jnp.sum(p * v[..., None], axis=1)`` at 4 classes, 0.94 vs
0.76 ms at 19, 0.74 vs 0.90 ms at 117; its transpose in the backward pass is a dot
too). ``tp`` and ``n`` are segment
sums of per-pixel values indexed by the label, O(pixels) whatever the class count (a
masked class-axis sum would be O(pixels x classes) and a float one-hot a copy of the
logits). ``log p_y`` is a gather (``take_along_axis``) of ``x``. ``sum_{c != y} p_c`` is
its own masked sum (not ``1 - p_y``, which cancels when ``p_y`` is close to 1) and is
floored at the smallest normal float: below it ``log p_y`` and its derivative are 0 too.
Neither ``z`` nor ``e^z`` is stored: each consumer recomputes it from ``x``, and ``p`` is
a second exponential rather than ``e^z / s`` (see :func:`_pass` for the measurements).
XLA drops the outputs a loss does not use.

Few classes (at most ``MAX_UNROLLED_CLASSES``, 5): the same formulas, with the class
axis unrolled. The per-pixel reductions over classes (``m``, ``s``, ``x_y`` as a select
summed over the class slices, ``sum_{c != y} p_c``, ``sum_c w_c z_c``) are elementwise
operations on the ``C`` class slices, and ``pred_sum``, ``tp`` and the label counts are per-class
(masked) sums taken in one variadic ``lax.reduce`` over the pixels (primal values only;
the tangent rule is unchanged: ``d pred`` a matrix-vector product, ``d tp`` a segment
sum). XLA's CPU backend hands a
``jnp.sum`` / ``jnp.max`` over the class axis to a library reduction ("ynn_fusion" in
the compiled HLO) that needs its operand stored: ``x - m``, a copy of the logits, and a
plane per reduction input; the segment sums store an index plane and a values plane.
Measured on ``(8, 256, 256, 4)`` float32 ``jit(value_and_grad)``, temporary memory as a
multiple of the logits' bytes, before / after: ``dice_ce`` 3.00 / 1.75,
``cross_entropy`` 1.25 / 0.25, ``dice_loss`` 2.00 / 1.75, ``focal_loss`` 2.50 / 2.00;
time over optax CE ``dice_ce`` 1.55 / 0.94 (interleaved, loaded machine). The rest of
the temporary memory at 4 classes is one stored ``p`` (1.0x: the transpose of ``d pred``,
a matrix-vector product, reads it and the gradient loop reads it again; XLA does not
write the gradient over it) and per-pixel planes (0.25x each). Above the cutoff
unrolling loses (19 classes: ``cross_entropy`` 2.05x against 0.26x, and slower); the
constant's comment gives the measurements behind the cutoff.

Derivatives
-----------
The engine is a ``jax.custom_jvp``: its tangent rule is linear in ``dx`` (and in the
class weights' tangent ``dw``). With the per-pixel ``dot = sum_c p_c dx_c``:

.. math::
    d \log p_y = dx_y - dot, \qquad d \log(1 - p_y) = -r\, d\log p_y, \quad
    r = p_y / \textstyle\sum_{c \ne y} p_c,

    dq = \sum_c w_c\, dx_c - W\, dot + \sum_c dw_c \log p_c, \qquad
    d\mathrm{pred}_{bc} = \sum_i v_i\, p_{ic} (dx_{ic} - dot_i), \qquad
    d\mathrm{tp}_{bc} = \sum_{i:\, y_i = c} v_i\, p_{i y_i}\, d\log p_{y_i}.

JAX transposes this rule for reverse mode. With cotangents ``g_pred``, ``g_tp`` (per
(sample, class)) and ``g_lp``, ``g_l1m``, ``g_q`` (per pixel), and the per-pixel
coefficient ``a = g_lp - r g_l1m + v p_y g_tp[y]`` (a gather of ``g_tp``):

.. math::
    \frac{\partial L}{\partial x_c} = [c = y]\, a + w_c\, g_q + v\, p_c\, g_{pred,c}
    - p_c \big(a + W g_q + v \textstyle\sum_k p_k\, g_{pred,k}\big),

one matrix-vector product (``sum_k p_k g_pred,k``, only for an overlap loss) and one
elementwise pass over ``p``, written as the tangent rule's transposes (selects,
broadcasts and multiplies, no scatter), which XLA fuses into one loop. Forward-mode
autodiff (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) uses the rule as it is.
Each term of the rule is written in the form whose transpose is cheapest: ``dx_y`` as
a select summed over classes (its transpose is a select, where a gather's would be a
scatter), ``dot`` and ``sum_c w_c dx_c`` as sums over the class axis (their transposes
are broadcasts), the second term of ``dpred`` as a matrix-vector product (its
transpose is one too).

Why a custom JVP and not a custom VJP: with a custom VJP the pass's values are explicit
residuals that XLA must store; with the JVP rule transposed inside one ``jit`` program,
XLA sees forward and backward together and recomputes ``p`` from ``x`` where that is
cheaper than storing it. Measured with ``bench/engine_variants.py`` (the same formulas
as a hand-written custom VJP), ``jit(value_and_grad)`` on about 8 MiB of float32 logits,
interleaved in one process on a loaded 2-core machine, custom JVP time over custom VJP
time: 0.67 (CE), 0.72 (Dice + CE) at 4 classes; 0.56, 0.78 at 19; 0.49, 0.29 at 117;
temporary memory of ``cross_entropy`` 0.05x against 1.07x the logits at 117 classes.
So the engine is a custom JVP, and forward-mode autodiff works on every loss built on it.
(bfloat16 logits are widened by ``_checks.widen``, a custom VJP that rounds the
gradient back to bfloat16 with integer operations: forward mode needs float32 or float64
logits there.)

Precision: sums accumulate in the compute dtype (float32 for float32 and bfloat16
logits, float64 for float64).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxseg import _checks
from jaxseg._stats import OverlapStats


class SoftmaxTerms(NamedTuple):
    """What the softmax losses need, from one pass; see the module docstring.

    Attributes:
      pred_sum: ``(batch, classes)`` ``sum_i v p_ic``.
      tp: ``(batch, classes)`` ``sum_{i: y_i = c} v p_iy``.
      label_sum: ``(batch, classes)`` int32 ``sum_{i: y_i = c} v``.
      log_p: ``(batch, *spatial)`` ``log p_y`` (label clipped into range; mask it).
      log1m_p: ``(batch, *spatial)`` ``log(1 - p_y)`` (the focal factor's logarithm).
      weighted_log_p: ``(batch, *spatial)`` ``sum_c w_c log p_c`` (label smoothing).
    """

    pred_sum: jax.Array
    tp: jax.Array
    label_sum: jax.Array
    log_p: jax.Array
    log1m_p: jax.Array
    weighted_log_p: jax.Array


# Up to this many classes the class axis is unrolled (see the module docstring, "Few
# classes"). Measured jit(value_and_grad), about 8 MiB of float32 logits, temporary memory
# as a multiple of the logits and time over optax CE (interleaved, same process, loaded
# machine), unrolled against not, for dice_ce / cross_entropy / dice_loss / focal_loss /
# dice_focal:
#   2 classes: 2.50/1.00/2.50/3.00/4.00 vs 5.00/2.50/3.00/4.00/5.00;
#              time 0.73/0.29/0.56/0.53/0.75 vs 1.03/0.44/0.57/0.67/1.26
#   4 classes: 1.75/0.25/1.75/2.00/2.50 vs 3.00/1.25/2.00/2.50/3.00;
#              time 0.94/0.44/0.93/0.80/1.17 vs 1.55/1.16/1.21/1.23/1.74
#   5 classes: 1.60/0.20/1.60/1.80/2.20 vs 2.60/1.00/1.80/2.20/2.60;
#              time 1.37/0.62/1.22/0.95/1.44 vs 1.73/1.19/1.43/1.40/1.79
# With the class-axis reductions unrolled (tp still a segment sum): at 8 classes faster
# but focal_loss memory 2.50 vs 1.75; at 12 focal_loss 2.33 vs 1.50; at 19 slower and
# cross_entropy 2.05 vs 0.26. So the cutoff is 5 (6 and 7 not measured). (pred_sum in
# the variadic reduction: 2 classes dice_ce 2.50 vs 3.00 with the dot, 4 and 5 equal.)
MAX_UNROLLED_CLASSES = 5


def _unrolled(num_classes: int) -> bool:
    return num_classes <= MAX_UNROLLED_CLASSES


def _class_reduce(op, a: jax.Array) -> jax.Array:
    """``(b, n, C)`` reduced over the class axis by ``op`` (``jnp.add`` or ``jnp.maximum``)."""
    num_classes = a.shape[-1]
    if _unrolled(num_classes):
        return functools.reduce(op, [a[..., c] for c in range(num_classes)])
    return jnp.sum(a, axis=-1) if op is jnp.add else jnp.max(a, axis=-1)


# The pixel sums of the unrolled path are taken over this many contiguous blocks of
# pixels, then over the blocks, so that rounding grows with n / BLOCKS terms in sequence.
_BLOCKS = 128


def _pixel_sums(planes: list[jax.Array]) -> list[jax.Array]:
    """``(batch, n)`` planes summed over the pixel axis in one variadic reduction.

    XLA compiles a variadic ``lax.reduce`` as one loop that computes its operands in
    place, where a plain ``jnp.sum`` of a masked plane is handed to a library reduction
    that needs the plane stored (see the module docstring). Primal values only: the
    tangent rule uses ``jnp.sum``.
    """
    batch, n = planes[0].shape
    blocks = _BLOCKS if n % _BLOCKS == 0 else 1
    parts = tuple(t.reshape(batch, blocks, n // blocks) for t in planes)
    inits = tuple(jnp.zeros((), t.dtype) for t in parts)
    partial = jax.lax.reduce(
        parts, inits, lambda a, b: tuple(u + w for u, w in zip(a, b, strict=True)), (2,)
    )
    return [jnp.sum(t, axis=1) for t in partial]


def _segment_sum(values: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """``(batch, n)`` values summed by ``(batch, n)`` labels in ``[0, C)``: ``(batch, C)``.

    One segment sum per sample (a ``vmap``), not one over ``batch * C`` segments of the
    flattened batch: merging the batch axis into the pixels is undefined when the batch
    is sharded over an ``Explicit`` mesh axis. Same temporary memory (measured at 19 and
    117 classes, ``jit(value_and_grad(dice_ce))``), and no slower within this machine's
    noise.
    """
    return jax.vmap(lambda v, y: jax.ops.segment_sum(v, y, num_segments=num_classes))(
        values, labels
    )


class _Pass(NamedTuple):
    """The primal values of one pass, shared by the outputs and the tangent rule."""

    top: jax.Array  # (b, n, 1) m = max_c x_c
    p: jax.Array  # (b, n, C) softmax
    hit: jax.Array  # (b, n, C) bool [c = y], compared in place, never stored
    log_s: jax.Array  # (b, n)
    log_p: jax.Array  # (b, n)
    p_y: jax.Array  # (b, n)
    rest: jax.Array  # (b, n) sum_{c != y} p_c, floored
    vf: jax.Array  # (b, n) validity as 0/1


def _pass(x, labels, valid) -> _Pass:
    num_classes = x.shape[-1]
    # x - m is never an array of its own: each consumer recomputes it from x, so XLA
    # stores one (b, n, C) array, p (measured on (8, 117, 117, 4) float32: a stored x - m
    # was 1.0x the logits of temporary memory in cross_entropy).
    top = _class_reduce(jnp.maximum, x)[..., None]
    log_s = jnp.log(_class_reduce(jnp.add, jnp.exp(x - top)))
    # exp(x - m - log s), not e / s: a second exponential that XLA fuses into each
    # consumer of p, where a division of e would make XLA store both e and p (measured
    # on (8, 47, 47, 117) float32: dice_ce temporary memory 2.09x the logits with e / s).
    # (x - m) - log s, in this order: m + log s would round away log s for |m| >> 1.
    p = jnp.exp((x - top) - log_s[..., None])
    y = jnp.clip(labels, 0, num_classes - 1)
    hit = y[..., None] == jnp.arange(num_classes, dtype=y.dtype).reshape(1, 1, -1)
    if _unrolled(num_classes):
        x_y = _class_reduce(jnp.add, jnp.where(hit, x, 0))
    else:
        x_y = jnp.take_along_axis(x, y[..., None], axis=-1)[..., 0]
    log_p = (x_y - top[..., 0]) - log_s
    # 1 - p_y as the sum of the other probabilities (no cancellation as p_y -> 1), from p
    # rather than from e: a second consumer of e would make XLA store e beside p
    # (measured on (8, 47, 47, 117) float32: focal_loss temporary memory 2.03x the logits).
    rest = _class_reduce(jnp.add, jnp.where(hit, 0, p))
    rest = jnp.maximum(rest, jnp.finfo(x.dtype).tiny)
    return _Pass(top, p, hit, log_s, log_p, jnp.exp(log_p), rest, valid.astype(x.dtype))


def _log_p_dot(x, f: _Pass, weights):
    """``sum_c u_c log p_c = sum_c u_c (x_c - m) - log s sum_c u_c`` for a vector ``u``."""
    relative = _class_reduce(jnp.add, (x - f.top) * weights.reshape(1, 1, -1))
    return relative - jnp.sum(weights) * f.log_s


def _outputs(x, f: _Pass, labels, weights):
    num_classes = f.p.shape[-1]
    y = jnp.clip(labels, 0, num_classes - 1)
    if _unrolled(num_classes):
        zero = jnp.zeros((), x.dtype)
        sums = _pixel_sums(
            [f.vf * f.p[..., c] for c in range(num_classes)]
            + [jnp.where(y == c, f.vf * f.p_y, zero) for c in range(num_classes)]
        )
        pred_sum = jnp.stack(sums[:num_classes], axis=1)
        tp = jnp.stack(sums[num_classes:], axis=1)
    else:
        pred_sum = jnp.einsum("bnc,bn->bc", f.p, f.vf)
        tp = _segment_sum(f.vf * f.p_y, y, num_classes)
    log1m_p = jnp.log(f.rest)
    return pred_sum, tp, f.log_p, log1m_p, _log_p_dot(x, f, weights)


@jax.custom_jvp
def _engine(x, labels, valid, weights):
    return _outputs(x, _pass(x, labels, valid), labels, weights)


def _engine_jvp(primals, tangents):
    x, labels, valid, weights = primals
    dx, _, _, dw = tangents
    f = _pass(x, labels, valid)
    out = _outputs(x, f, labels, weights)
    num_classes = x.shape[-1]
    y = jnp.clip(labels, 0, num_classes - 1)
    zero_pixel = jnp.zeros_like(f.log_s)
    if isinstance(dx, SymbolicZero):
        d_pred = jnp.zeros_like(out[0])
        d_log_p = dot = zero_pixel
        d_weighted = zero_pixel
    else:
        dot = jnp.sum(f.p * dx, axis=-1)
        d_log_p = jnp.sum(jnp.where(f.hit, dx, 0), axis=-1) - dot
        d_pred = jnp.sum(f.p * dx * f.vf[..., None], axis=1) - jnp.einsum(
            "bnc,bn->bc", f.p, f.vf * dot
        )
        d_weighted = jnp.sum(dx * weights.reshape(1, 1, -1), axis=-1) - jnp.sum(weights) * dot
    if not isinstance(dw, SymbolicZero):
        d_weighted = d_weighted + _log_p_dot(x, f, dw)
    d_tp = _segment_sum(f.vf * f.p_y * d_log_p, y, num_classes)
    d_log1m = -(f.p_y / f.rest) * d_log_p
    return out, (d_pred, d_tp, d_log_p, d_log1m, d_weighted)


_engine.defjvp(_engine_jvp, symbolic_zeros=True)


def softmax_terms(
    logits: jax.Array, labels: jax.Array, valid: jax.Array, weights: jax.Array
) -> SoftmaxTerms:
    """The engine's terms for ``softmax(logits)`` against integer labels.

    Args:
      logits: ``(batch, *spatial, classes)`` float32 or float64 (widen half precision
        first).
      labels: ``(batch, *spatial)`` integer; values outside ``[0, classes)`` must be
        excluded by ``valid``.
      valid: ``(batch, *spatial)`` bool.
      weights: ``(classes,)`` class weights of ``weighted_log_p``.

    Returns:
      :class:`SoftmaxTerms`.
    """
    batch, num_classes = logits.shape[0], logits.shape[-1]
    spatial = logits.shape[1:-1]
    x = logits.reshape(batch, -1, num_classes)
    y = labels.astype(jnp.int32).reshape(batch, -1)
    v = valid.reshape(batch, -1)
    pred_sum, tp, log_p, log1m_p, weighted = _engine(x, y, v, weights.astype(x.dtype))
    y_in = jnp.clip(y, 0, num_classes - 1)
    if _unrolled(num_classes):
        counts = jnp.stack(
            _pixel_sums([(v & (y_in == c)).astype(jnp.int32) for c in range(num_classes)]),
            axis=1,
        )
    else:
        counts = _segment_sum(v.astype(jnp.int32), y_in, num_classes)
    pixel = lambda a: a.reshape(batch, *spatial)
    return SoftmaxTerms(pred_sum, tp, counts, pixel(log_p), pixel(log1m_p), pixel(weighted))


def applies(activation: str | None, labels: jax.Array) -> bool:
    """Whether the engine serves this call: softmax over logits with integer labels."""
    return activation == "softmax" and _checks.is_integer_labels(labels)


def terms_of(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int | None,
    where: jax.Array | None,
    class_weights: jax.Array | None,
) -> tuple[SoftmaxTerms, jax.Array]:
    """:func:`softmax_terms` of a loss's inputs, and the validity mask.

    Every loss calls it with the same arguments for the same inputs (the class weights
    included, which only ``weighted_log_p`` uses), so that when several losses see the
    same logits in one ``jit`` (``dice_ce``, ``dice_focal``) XLA computes the pass once.
    """
    num_classes = logits.shape[-1]
    x = _checks.widen(logits)
    valid = _checks.valid_mask(labels, num_classes, "softmax", ignore_index, where)
    weights = (
        jnp.ones((num_classes,), x.dtype)
        if class_weights is None
        else class_weights.astype(x.dtype)
    )
    return softmax_terms(x, labels, valid, weights), valid


def overlap_stats(terms: SoftmaxTerms) -> OverlapStats:
    """:class:`~jaxseg._stats.OverlapStats` from the engine's sums."""
    dtype = terms.tp.dtype
    label_sum = terms.label_sum.astype(dtype)
    # Every valid pixel has a label in [0, C) (valid_mask excludes the others).
    total = jnp.sum(terms.label_sum, axis=-1, keepdims=True).astype(dtype)
    return OverlapStats(
        terms.tp,
        terms.pred_sum - terms.tp,
        label_sum - terms.tp,
        jnp.broadcast_to(total, label_sum.shape),
    )


def label_gather(values: jax.Array, labels: jax.Array) -> jax.Array:
    """``values[y]`` per pixel for a ``(classes,)`` vector (labels clipped into range)."""
    return jnp.take(values, labels.astype(jnp.int32), mode="clip")
