r"""The softmax engine: one pass over the logits for every softmax loss with integer labels.

The Dice family, the cross-entropy and the focal loss, with softmax and integer labels,
all need a few sums and per-pixel values of one softmax. This module computes them,
for any number of classes, from one pass over logits of shape ``(batch, *spatial, C)``
(the class axis minor, as the logits lie in memory).

Forward
-------
Per pixel ``i`` of sample ``b``, with label ``y``, validity ``v`` (0 or 1) and class
weights ``w``, everything relative to the pixel's maximum ``m = max_c x_c`` (so adding a
constant to all logits of a pixel changes nothing, up to offsets of 1e30):

.. math::
    e_c = e^{x_c - m}, \quad b = \sum_{c:\, e_c < 1} e_c, \quad
    k = |\{c : e_c = 1\}|, \quad s = b + k, \quad p_c = e_c / s, \quad
    \log p_y = (x_y - m) - \log s,

    1 - p_y = \begin{cases} b / s & x_y = m \text{ and } k = 1 \\
    1 - p_y & \text{otherwise,} \end{cases}
    \qquad
    q = \sum_c w_c \log p_c = \sum_c w_c (x_c - m) - W \log s,

and per (sample, class)

.. math::
    \mathrm{pred}_{bc} = \sum_i v_i\, p_{ic}, \qquad
    \mathrm{tp}_{bc} = \sum_{i:\, y_i = c} v_i\, p_{i y_i}, \qquad
    n_{bc} = \sum_{i:\, y_i = c} v_i \ (\text{int32}).

One exponential per element: ``e`` is computed once, stored, and every consumer reads
it (``s``, ``p = e / s`` in the gradient, the matrix-vector products), as optax's
cross-entropy does. An exponential costs about 3 ns per element on XLA's CPU backend
(measured: 2.1M float32 elements, ``exp`` 5.2-7.0 ms of CPU time, a multiply 1.55 ms),
so this is what sets the time above a few classes. Measured against the former engine,
which recomputed ``p = exp((x - m) - log s)`` where it was needed (two or three
exponentials per element), time over optax CE (CPU time, interleaved in one process,
``jit(value_and_grad)``, about 8 MiB of float32 logits), before / after:
``cross_entropy`` 1.04 / 0.91 at 19 classes, 1.93 / 0.93 at 117; ``dice_ce`` 1.58 /
1.18 and 2.27 / 1.61; ``dice_loss`` 1.44 / 1.13 and 2.12 / 1.52; ``focal_loss``
1.47 / 1.21 and 2.14 / 1.45. The stored ``e`` costs no temporary memory when XLA
writes the gradient over it, and 1.0x the logits when it cannot. XLA (its buffer
assignment: ``HloLiveRange::GetLastPosition`` and ``BufferAssigner::LiveRangeInterferes``)
lets the gradient's loop write over ``e`` only if that loop reads ``e`` at the last
scheduled position of ``e``'s value; a bitcast of ``e`` (a reshape that keeps the bytes,
such as the ``(b, n, C)`` view of ``(b, *spatial, C)``) is such a position, so any
bitcast of ``e`` read by another instruction keeps ``e`` apart, and so does a gradient
loop that bitcasts its output.

``pred`` is a sum of matrix-vector products, ``sum_i (v_i / s_i) e_ic``, that read ``e``
in its own shape (:func:`_dot`): one product per row of the last spatial axis (batch
axes ``(b, *spatial[:-1])``), summed over the rows. XLA's CPU backend runs a dot as one
read of ``e``, where a reduction over the pixel axes with the class axis minor is a
strided loop or a library reduction (measured, forward only, on 8 MiB of float32: 0.60
ms for the dot against 2.0 ms for ``jnp.sum(e * w[..., None], axis=(1, 2))`` at 19
classes, 0.48 against 1.16 ms at 117); its transpose in the backward pass is a dot too.
Per sample over the ``(b, n, C)`` view, the products are a little faster (0.58 / 0.61
ms forward and 0.31 / 0.55 ms backward at 19 classes, 0.36 / 0.46 and 0.20 / 0.33 at
117) but keep ``e`` apart; the engine uses them only where per-row products would not
avoid a bitcast either (a batch or spatial axis of length 1, which XLA drops
from a dot with a bitcast), and there over rows of at most 1024 pixels, so that no sum
adds more terms in sequence (:func:`_row_dot`; the segment sums below take blocks of
1024 pixels for the same reason). Measured, ``jit(value_and_grad)``, interleaved in one
process, temporary memory over the logits and time over optax CE, per sample / per
row: ``dice_loss`` 1.32x / 0.42x and 1.15 / 1.21 at 19 classes, 1.09x / 0.13x and 1.30
/ 1.18 at 64, 1.05x / 0.07x and 1.54 / 1.68 at 117; ``dice_ce`` 1.42x / 0.53x and 1.18
/ 1.29, 1.13x / 0.16x and 1.58 / 1.49, 1.07x / 0.09x and 1.73 / 1.80.

``tp`` and ``n`` are segment sums of per-pixel values indexed by the label,
O(pixels) whatever the class count (a masked class-axis sum would be O(pixels x
classes) and a float one-hot a copy of the logits). ``log p_y`` is a gather
(``take_along_axis``) of ``x``.

``1 - p_y`` (the focal factor) never cancels: ``s`` is summed in two parts, the terms
below 1 (``b``) and the number of terms equal to 1 (``k``, at least 1). When the label
is the only class with ``e = 1``, the other classes are exactly those in ``b``, so
``1 - p_y = b / s``; otherwise ``p_y <= 1/2`` and ``1 - p_y`` is at least 1/2. It is
floored at the smallest normal float (below it ``log p_y`` and its derivative are 0
too). Above the cutoff both parts come from one variadic reduction over the class axis
(``_split_sum``), which XLA compiles as one loop computing the masked terms in place,
and the focal loss takes ``s`` from it. Only the focal loss needs the split
(``focal=True``): without it, from ``MIN_PLAIN_SUM_CLASSES`` (24) classes up, ``s`` is a
plain ``jnp.sum``, a library reduction that is faster there (the constant's comment
gives the measurements), and below that the split loop is the faster one. Measured
against ``s`` as a ``jnp.sum`` plus the focal sum as a second one (which XLA's CPU
backend hands to a library reduction that stores the masked terms first), CPU time over
optax CE, interleaved, before / after: ``focal_loss`` 1.28 / 1.04 at 19 classes and 1.62
/ 1.04 at 117, ``dice_focal`` 1.55 / 1.40 and 2.25 / 1.64; ``focal_loss`` temporary
memory 1.32x / 0.42x and 1.05x / 0.07x the logits (no masked copy, so ``e`` goes in the
gradient's buffer). A NaN logit stays in ``b`` (``e >= 1`` is false for it), so it
reaches ``s`` and the loss.

``q`` (label smoothing) needs ``x - m`` stored for its reduction, so it is computed only
when the cross-entropy asks for it (``smooth``, traced: ``label_smoothing != 0``, a
``lax.cond``): without it ``cross_entropy`` has 0.02x the logits of temporary memory at
117 classes and 0.11x at 19 (1.04x and 1.26x with it). The cross-entropy and focal
losses ask for the per-pixel values only (``overlap=False``), the focal loss alone for
``log(1 - p_y)`` (``focal=True``); XLA drops the outputs a loss does not use.

Few classes (at most ``MAX_UNROLLED_CLASSES``, 7): the same formulas, with the class
axis unrolled. The per-pixel reductions over classes (``m``, ``s``, ``x_y`` as a select
summed over the class slices, ``q``) are elementwise operations on the ``C`` class
slices; ``pred_sum``, ``tp`` and the label counts are per-class (masked) sums taken in
one variadic ``lax.reduce`` over the pixels (primal values only), and in the tangent
rule per-class pixel sums of class slices, whose transposes are elementwise and fuse
into the gradient loop. ``tp`` is written as ``pred_sum``'s terms where the label is
the class (``tp_c = sum_{i: y_i = c} v_i p_ic``, its tangent the same of
``v_i p_ic (dx_ic - dot_i)``, :func:`_class_slice_sums`), so that the gradient loop
reads ``p`` only at the index it writes and no plane of ``p_y`` is stored for the
overlap losses. Measured against ``tp`` as a sum of ``v p_y`` (a plane of its own),
``jit(value_and_grad)``, temporary memory over the logits, before / after:
``dice_loss`` 0.75x / 0.50x at ``(8, 256, 256, 4)`` and 1.50x / 1.00x at
``(8, 362, 362, 2)``, ``dice_ce`` 1.00x / 0.75x, ``dice_focal`` 1.75x / 1.50x (then
0.50x and 1.25x with :func:`_reciprocal_sum`); time over optax CE, interleaved in one
process, both changes: ``dice_loss`` 0.50 / 0.44 at 4 classes and 0.71 / 0.55 at 7,
``dice_ce`` 0.61 / 0.47 and 0.86 / 0.71, ``dice_focal`` 0.90 / 0.81 and 1.29 / 1.23.
``e`` is stored and read as above the
cutoff, and the tangent of ``pred_sum`` divides by ``s`` where it could multiply by
``1 / s``, so that XLA writes the gradient over ``e`` (``_tangent`` gives the
measurement). XLA's CPU backend hands a ``jnp.sum`` / ``jnp.max`` over the class axis to
a library reduction ("ynn_fusion" in the compiled HLO) that needs its operand stored
(``x - m``, a copy of the logits, and a plane per reduction input), and any reduction of
a masked plane stores the plane; the segment sums store an index plane and a values
plane. So the normaliser of the cross-entropy's and focal loss's mean comes from the
label counts too (:func:`label_weight_sum`). Measured on ``(8, 256, 256, 4)`` float32
``jit(value_and_grad)``, temporary memory as a multiple of the logits' bytes, unrolled /
not: ``dice_ce`` 1.00 / 3.00, ``cross_entropy`` 0.50 / 1.00. The constant's comment
gives the measurements behind the cutoff.

Derivatives
-----------
The engine is a ``jax.custom_jvp``: its tangent rule is linear in ``dx`` (and in the
class weights' tangent ``dw``). With the per-pixel ``dot = sum_c p_c dx_c``:

.. math::
    d \log p_y = dx_y - dot, \qquad d \log(1 - p_y) = -r\, d\log p_y, \quad
    r = p_y / (1 - p_y),

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
elementwise pass over ``e``, written as the tangent rule's transposes (selects,
broadcasts and multiplies, no scatter), which XLA fuses into one loop. Forward-mode
autodiff (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) uses the rule as it is.
Each term of the rule is written in the form whose transpose is cheapest: ``dx_y`` as
a select summed over classes (its transpose is a select, where a gather's would be a
scatter), ``dot`` and ``sum_c w_c dx_c`` as sums over the class axis (their transposes
are broadcasts), the second term of ``dpred`` as a matrix-vector product (its
transpose is one too).

Why a custom JVP and not a custom VJP: with a custom VJP the pass's values are explicit
residuals that XLA must store; with the JVP rule transposed inside one ``jit`` program,
XLA sees forward and backward together and schedules them as one program. Measured
with ``bench/engine_variants.py`` (the same formulas as a hand-written custom VJP) on the
former engine, ``jit(value_and_grad)`` on about 8 MiB of float32 logits, interleaved in
one process on a loaded 2-core machine, custom JVP time over custom VJP time: 0.67 (CE),
0.72 (Dice + CE) at 4 classes; 0.56, 0.78 at 19; 0.49, 0.29 at 117. On this engine (``e``
stored; 20 rounds in balanced orders) the cross-entropy is as fast either way (0.98, 1.00,
0.98 at 4, 19, 117 classes), the losses with overlap terms faster with the custom JVP
(``dice_ce`` 0.71, 0.92, 0.72; ``dice_focal`` 0.79, 0.89, 0.79), the focal loss alone a
little slower (1.13, 1.15, 1.09), and the custom JVP stores as much or less everywhere
(``dice_ce`` 0.50x against 2.00x the logits at 4 classes, 0.07x against 1.07x at 117). So
the engine is a custom JVP, and forward-mode autodiff works on every loss built on it.

Second derivatives (``jax.hessian``, Hessian-vector products) differentiate the tangent
rule and so the forward pass, with ``m`` held constant (``e`` has the tangent ``e dx``;
every output is invariant to ``m``); :func:`_split_reduction` gives ``s`` the tangent of
``sum_c e_c``. In reverse mode the cotangent of ``pred_sum`` is computed once, not in
the gradient loop (:func:`_cotangent_stored`).

Precision: sums accumulate in the compute dtype (float32 for float32 and bfloat16
logits, float64 for float64). Half-precision logits are widened to float32 inside the
pass, and their per-pixel maximum is taken before widening (exact, and XLA's CPU backend
then stores no float32 copy of the logits for the maximum's reduction; measured,
bfloat16, CPU time over optax CE on the same bfloat16 logits, before / after:
``cross_entropy`` 0.96 / 0.75 at 19 classes and 0.78 / 0.60 at 117, ``dice_loss`` 1.25 /
0.93 and 1.09 / 0.86).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from jaxseg import _checks, _reduce, _sharding
from jaxseg._stats import OverlapStats


class SoftmaxTerms(NamedTuple):
    """What the softmax losses need, from one pass; see the module docstring.

    Attributes:
      pred_sum: ``(batch, classes)`` ``sum_i v p_ic``.
      tp: ``(batch, classes)`` ``sum_{i: y_i = c} v p_iy``.
      label_sum: ``(batch, classes)`` int32 ``sum_{i: y_i = c} v``.
      log_p: ``(batch, *spatial)`` ``log p_y`` (label clipped into range; mask it).
      log1m_p: ``(batch, *spatial)`` ``log(1 - p_y)`` (the focal factor's logarithm;
        zeros unless asked for with ``focal=True``).
      weighted_log_p: ``(batch, *spatial)`` ``sum_c w_c log p_c`` (label smoothing).
    """

    pred_sum: jax.Array
    tp: jax.Array
    label_sum: jax.Array
    log_p: jax.Array
    log1m_p: jax.Array
    weighted_log_p: jax.Array


# Up to this many classes the class axis is unrolled (module docstring, "Few classes").
# Measured with this engine, jit(value_and_grad), about 8 MiB of float32 logits, CPU time
# over optax CE (interleaved, same process) and temporary memory over the logits, for
# cross_entropy / dice_loss / dice_ce / focal_loss / dice_focal, with the cutoff below
# and at or above the class count:
#   6 classes: time 0.61/1.18/1.44/0.74/1.33 (generic), 0.41/0.64/0.80/0.86/1.26 (unrolled);
#              memory 0.67/2.00/2.33/1.33/3.00, 0.33/0.50/0.67/0.83/1.17
#   7 classes: time 0.64/1.13/1.52/0.87/1.34, 0.46/0.73/0.87/0.86/1.26;
#              memory 0.57/1.86/2.14/1.14/2.71, 0.29/0.43/0.57/0.71/1.00
#   8 classes: time 0.71/1.08/1.05/0.82/1.14, 0.54/0.75/1.00/1.01/1.57;
#              memory 0.50/1.75/2.00/1.00/2.50, 0.25/0.50/0.63/0.63/1.00
#   cross_entropy / dice_ce / focal_loss / dice_focal time, generic then unrolled:
#   10 classes 0.82/1.17/0.97/1.26, 0.82/1.51/1.39/2.08; 12 classes 0.86/1.15/0.91/1.22,
#   0.90/1.64/1.53/2.24; 16 classes 0.88/1.26/1.03/1.27, 1.78/3.26/4.28/5.67.
# Unrolled stores less at every count up to 12; it is faster up to 7 classes
# (focal_loss within 0.12), and from 8 classes the focal terms, from 10 every compound,
# lose time.
MAX_UNROLLED_CLASSES = 7

# From this many classes, where the focal factor is not asked for (the cross-entropy and
# Dice losses), s is a plain jnp.sum over the class axis (a library reduction) instead of
# the split variadic reduction. Measured on 8 MiB of float32 e, split / plain, ms: 0.39 /
# 0.49 at 12 classes, 0.31 / 0.40 at 16, 0.34 / 0.35 at 19, 0.33 / 0.28 at 24, 0.36 /
# 0.23 at 32, 0.24 / 0.14 at 117; jit(value_and_grad) time over optax CE, split /
# plain: cross_entropy 0.92 / 0.87 at 117 classes and 0.96 / 0.91 at 150 (one int32
# plane less: 0.03x -> 0.02x the logits), dice_ce 1.85 / 1.76 and 1.84 / 1.80; at 8
# classes plain was slower (cross_entropy 0.54 / 0.64). The focal loss keeps the split
# as its only reduction.
MIN_PLAIN_SUM_CLASSES = 24


def _pixels(a: jax.Array) -> jax.Array:
    """``(b, *spatial)`` as ``(b, n)``."""
    return a.reshape(a.shape[0], -1)


def _cells(a: jax.Array) -> jax.Array:
    """``(b, *spatial, C)`` as ``(b, n, C)``."""
    return a.reshape(a.shape[0], -1, a.shape[-1])


def _row(w: jax.Array, ndim: int) -> jax.Array:
    """A ``(C,)`` vector shaped to broadcast over ``ndim``-dimensional class-minor arrays."""
    return w.reshape((1,) * (ndim - 1) + (-1,))


def _dot(p: jax.Array, v: jax.Array) -> jax.Array:
    """``sum_i v_i p_ic``: ``(b, C)``, from matrix-vector products that read ``p`` as it is.

    One product per row of the last spatial axis (batch axes ``(b, *spatial[:-1])``),
    summed over the rows, where the batch and every spatial axis are longer than 1 and
    the last is at most ``_reduce.ROW`` long; otherwise products over
    rows of the ``(b, n, C)`` view (:func:`_row_dot`). Why (module docstring): XLA
    writes the gradient over ``e`` only when no bitcast of ``e`` is read; the
    ``(b, n, C)`` view is one, and so is dropping an axis of length 1, which XLA does to
    every dot that has one, so there the per-row products would only be slower. A
    symbolic size (``jax.export``) counts as longer than 1, and a symbolic last axis
    as short enough.
    """
    width = p.shape[-2]
    long_row = _checks.static_sizes(width) and width > _reduce.ROW
    if p.ndim == 3 or 1 in p.shape[:-1] or long_row:
        return _row_dot(_cells(p), _pixels(v))
    row_axis = p.ndim - 2
    batch = tuple(range(row_axis))
    rows = jax.lax.dot_general(p, v, (((row_axis,), (row_axis,)), (batch, batch)))
    return jnp.sum(rows, axis=batch[1:])


def _row_dot(p: jax.Array, v: jax.Array) -> jax.Array:
    """``sum_i v_i p_ic`` of ``(b, n, C)`` and ``(b, n)``: products over rows of pixels.

    One product adds its terms in sequence: over a sample's ``n`` pixels in one product
    the Dice loss's per-class sums were off by 8e-5 relative at ``(1, 64, 64, 64, 14)``
    and 2.7e-3 at ``(1, 128, 128, 128, 14)`` in float32 (its loss by 1e-4). So the pixels
    are split into rows of ``_reduce.row_length(n)`` and the products' rows summed; a
    length with no such row is summed by a library reduction (which stores ``v p``).
    """
    batch, n, num_classes = p.shape
    row = _reduce.row_length(n)
    if row is None:
        return jnp.sum(p * v[..., None], axis=1)
    rows = jax.lax.dot_general(
        p.reshape(batch, n // row, row, num_classes),
        v.reshape(batch, n // row, row),
        (((2,), (2,)), ((0, 1), (0, 1))),
    )
    return jnp.sum(rows, axis=1)


def _unrolled(num_classes: int) -> bool:
    return num_classes <= MAX_UNROLLED_CLASSES


def _class_sum(a: jax.Array, keepdims: bool = False) -> jax.Array:
    """``(b, n, C)`` summed over the class axis (unrolled up to the cutoff)."""
    if _unrolled(a.shape[-1]):
        slices = [a[..., c : c + 1] if keepdims else a[..., c] for c in range(a.shape[-1])]
        return functools.reduce(jnp.add, slices)
    return jnp.sum(a, axis=-1, keepdims=keepdims)


def _class_max(a: jax.Array) -> jax.Array:
    if _unrolled(a.shape[-1]):
        return functools.reduce(jnp.maximum, [a[..., c] for c in range(a.shape[-1])])
    return jnp.max(a, axis=-1)


def _split_sum(e: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(s, b, k)``: ``b`` sums the terms ``e_c < 1``, ``k`` counts those equal to 1, s = b + k.

    For a label that is the only class with ``e = 1``, ``1 - p_y = b / s`` (no
    cancellation). Above the cutoff one variadic reduction over the class axis, which
    XLA compiles as one loop that computes its operands in place (a ``jnp.sum`` of the
    masked terms would be handed to a library reduction that stores them first); up to
    it, sums of the class slices.
    """
    if not _unrolled(e.shape[-1]):
        return _split_reduction(e)
    # e >= 1 (not e < 1) so that a NaN stays in the first part, and in s.
    top = e >= 1
    below = jnp.where(top, 0, e)
    # s summed directly: the slice sums are elementwise, and b + k measured slower at 4
    # classes (dice_focal 1.61x optax CE against 1.26x).
    return _class_sum(e), _class_sum(below), _class_sum(top.astype(jnp.int32))


@jax.custom_jvp
def _split_reduction(e: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`_split_sum` above the cutoff: one variadic reduction over the class axis.

    A custom JVP, ``(sum_c de_c, sum_{c: e_c < 1} de_c, 0)``: second derivatives
    (``jax.hessian``, Hessian-vector products) differentiate the engine's forward pass,
    where ``e = exp(x - m)`` has the tangent ``e dx`` (``m`` is held constant) and
    ``s = b + k`` must have the tangent of ``sum_c e_c``; the count ``k`` has none. JAX's
    own derivative of the variadic reduction raised a ``TypeError`` (jax 0.10), and
    ``s = b + k`` differentiated as written would drop the terms equal to 1.
    """
    top = e >= 1  # a NaN stays in b, and in s
    below = jnp.where(top, 0, e)
    zeros = (jnp.zeros((), e.dtype), jnp.zeros((), jnp.int32))
    below, ones = jax.lax.reduce(
        (below, top.astype(jnp.int32)),
        zeros,
        lambda a, b: (a[0] + b[0], a[1] + b[1]),
        (e.ndim - 1,),
    )
    return below + ones.astype(e.dtype), below, ones


@_split_reduction.defjvp
def _split_reduction_jvp(primals, tangents):
    (e,), (de,) = primals, tangents
    out = _split_reduction(e)
    d_below = jnp.sum(jnp.where(e >= 1, 0, de), axis=-1)
    no_tangent = np.zeros(out[2].shape, jax.dtypes.float0)
    return out, (jnp.sum(de, axis=-1), d_below, no_tangent)


def _pixel_sums(planes: list[jax.Array]) -> list[jax.Array]:
    """``(batch, *spatial)`` planes summed over the pixels, computed in place.

    One variadic reduction (:func:`jaxseg._reduce.row_sums`), where a plain ``jnp.sum``
    of a masked plane is handed to a library reduction that needs the plane stored (see
    the module docstring). Returns ``(batch,)`` sums.
    """
    rows = _reduce.row_sums([_pixels(t) for t in planes])
    return [jnp.sum(t, axis=-1) for t in rows]


def _segment_sum(values: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """``(batch, n)`` values summed by ``(batch, n)`` labels in ``[0, C)``: ``(batch, C)``.

    One segment sum over the segments ``(b K + k) C + y`` of the flattened batch, ``k``
    the block of ``_reduce.ROW`` pixels (``K`` blocks per sample), then a sum over the
    blocks: a segment sum adds its terms in sequence, and one segment per class and
    sample was off by 3.5e-5 relative at ``(1, 128, 128, 128, 14)`` in float32. Its
    index is one int32 plane, where a segment sum per sample (a ``vmap``) indexes by
    ``(sample, label)`` pairs, two int32 planes, and XLA copies its values into a
    ``(n, 1, 1)`` plane. Measured, temporary memory over the logits, per sample / flat,
    ``jit(value_and_grad)``, ``(8, H, W, C)``: ``dice_loss`` 1.00x / 0.63x at 8 classes,
    0.42x / 0.26x at 19; ``dice_ce`` 1.25x / 0.88x and 0.53x / 0.37x; ``dice_focal``
    1.75x / 1.38x and 0.74x / 0.58x. Merging the batch into the pixels is undefined when
    an array is sharded over an ``Explicit`` mesh axis, so there the sums stay per sample.
    A symbolic ``n`` is one block.
    """
    values, labels = _pixels(values), _pixels(labels)
    batch, n = values.shape
    blocks = -(-n // _reduce.ROW) if _checks.static_sizes(n) else 1
    if blocks > 1:
        block = jnp.arange(n, dtype=labels.dtype)[None] // _reduce.ROW
        labels = labels + block * num_classes
    segments = blocks * num_classes
    if any(_sharding.explicit_sharding(a) is not None for a in (values, labels)):
        sums = jax.vmap(lambda v, y: jax.ops.segment_sum(v, y, num_segments=segments))(
            values, labels
        )
    else:
        ids = labels + (jnp.arange(batch, dtype=labels.dtype) * segments)[:, None]
        sums = jax.ops.segment_sum(
            values.reshape(-1), ids.reshape(-1), num_segments=batch * segments
        )
    return jnp.sum(sums.reshape(batch, blocks, num_classes), axis=1)


def _label_sums(values: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """``sum_{i: y_i = c} values_i``: ``(batch, C)``, O(pixels) at any class count."""
    if _unrolled(num_classes):
        zero = jnp.zeros((), values.dtype)
        planes = [jnp.where(labels == c, values, zero) for c in range(num_classes)]
        return jnp.stack(_pixel_sums(planes), axis=1)
    return _segment_sum(values, labels, num_classes)


def _clip_labels(labels: jax.Array, num_classes: int) -> jax.Array:
    """Labels as int32 in ``[0, C)`` (the others are excluded by the validity mask)."""
    return jnp.clip(labels.astype(jnp.int32), 0, num_classes - 1)


def _label_counts(valid: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """``n_bc = sum_{i: y_i = c} v_i``: ``(batch, C)`` int32, for clipped ``labels``.

    The Dice terms and the pixel losses' normaliser (:func:`label_weight_sum`) build it
    with this one expression, so that ``dice_ce`` computes it once.
    """
    return _label_sums(valid.astype(jnp.int32), labels, num_classes)


def _overlap_sums(e: jax.Array, u: jax.Array, tp_values: jax.Array, labels: jax.Array):
    """``pred_sum = sum_i u_i e_ic`` and ``tp = sum_{i: y_i = c} tp_values_i`` (primal).

    Up to the cutoff ``tp_values_i = u_i e_{i y_i}`` (``v p_y``) is not used: the
    ``2 C`` sums of :func:`_class_slice_sums` in one variadic reduction. Above it a
    matrix-vector product (one read of ``e``: XLA's CPU backend runs it on its dot
    path, see the module docstring) and a segment sum, as in the tangent rule (their
    transposes: a matrix-vector product and a gather).
    """
    num_classes = e.shape[-1]
    if _unrolled(num_classes):
        sums = _pixel_sums(_class_slice_sums([u * e[..., c] for c in range(num_classes)], labels))
        return jnp.stack(sums[:num_classes], axis=1), jnp.stack(sums[num_classes:], axis=1)
    return _dot(e, u), _segment_sum(tp_values, labels, num_classes)


def _class_slice_sums(t: list[jax.Array], labels: jax.Array) -> list[jax.Array]:
    """Per class ``c``, the plane ``t_c`` and ``t_c`` where the label is ``c``.

    Summed over the pixels they are ``pred_c = sum_i t_ic`` and ``tp_c = sum_{i: y_i =
    c} t_ic``: with ``t_ic = u_i e_ic = v_i p_ic`` the forward sums; in the tangent rule
    (the unrolled path) the sums of its second term ``u_i e_ic``, ``u = v dot / s``. Their
    transposes are elementwise and read ``e`` only at the index that the gradient loop
    writes (``e_ic`` times the cotangents of ``pred_c`` and, where ``c = y``, ``tp_c``),
    so that no per-pixel value of the label class (``p_y``) is stored for them. (A
    matrix-vector product and a gather there instead, as above the cutoff, measured on
    an earlier engine: ``dice_loss`` at ``(8, 256, 256, 4)`` 0.90x optax CE's time and
    1.75x the logits of temporary memory, against 0.75x and 1.26x.)
    """
    zero = jnp.zeros((), t[0].dtype)
    return t + [jnp.where(labels == c, a, zero) for c, a in enumerate(t)]


class _Pass(NamedTuple):
    """The per-pixel primal values of one pass (each ``(b, n)``)."""

    top: jax.Array  # m = max_c x_c
    log_s: jax.Array  # log sum_c e^(x_c - m)
    log_p: jax.Array  # log p_y
    p_y: jax.Array
    log1m: jax.Array | None  # log(1 - p_y), 1 - p_y floored at the smallest normal float
    # (focal only)
    weighted: jax.Array  # sum_c w_c log p_c
    s: jax.Array  # sum_c e^(x_c - m)
    inv_s: jax.Array  # 1 / s
    e: jax.Array  # (b, n, C) e^(x_c - m)


def _reciprocal_sum(e: jax.Array, s: jax.Array) -> jax.Array:
    """``1 / s``; up to the cutoff from the class slices' sum divided before its reshape.

    The cross-entropy's and the Dice loss's passes in ``dice_ce`` (and ``dice_focal``)
    are one computation only where XLA sees the same instructions in both. Its reshape
    mover turned ``1 / s`` of the reshaped slice sum into a division of shape ``(...,
    1)`` followed by a reshape in the pass whose only use of ``1 / s`` is its gradient
    (the cross-entropy's), not in the other, so the two were computed and stored apart.
    Divided before the reshape, they are one. Measured, ``jit(value_and_grad)``,
    temporary memory over the logits, before / after: ``dice_ce`` 0.75x / 0.50x at
    ``(8, 256, 256, 4)``, ``dice_focal`` 1.50x / 1.25x.
    """
    if not _unrolled(e.shape[-1]):
        return 1 / s
    return (1 / _class_sum(e, keepdims=True))[..., 0]


def _hit(y: jax.Array, num_classes: int) -> jax.Array:
    """``[c = y]`` as a ``(b, n, C)`` comparison (computed in place by its consumers)."""
    return y[..., None] == _row(jnp.arange(num_classes, dtype=y.dtype), y.ndim + 1)


def _pass(x, top, y, weights, smooth, focal: bool) -> _Pass:
    num_classes = x.shape[-1]
    hit = _hit(y, num_classes)
    z = x - top[..., None]
    e = jnp.exp(z)
    if focal:
        s, below, ones = _split_sum(e)
    elif num_classes < MIN_PLAIN_SUM_CLASSES:
        s = _split_sum(e)[0]
    else:
        s = jnp.sum(e, axis=-1)
    log_s = jnp.log(s)
    if _unrolled(num_classes):
        x_y = _class_sum(jnp.where(hit, x, 0))
    else:
        x_y = jnp.take_along_axis(x, y[..., None], axis=-1)[..., 0]
    # (x - m) - log s, in this order: m + log s would round away log s for |m| >> 1.
    log_p = (x_y - top) - log_s
    p_y = jnp.exp(log_p)
    # 1 - p_y without cancellation: when y is the only class with e = 1, 1 - p_y is the
    # sum of the other terms, those below 1, over s; otherwise p_y <= 1/2 and 1 - p_y is
    # exact enough.
    log1m = None
    if focal:
        rest = jnp.where((x_y == top) & (ones == 1), below / s, 1 - p_y)
        log1m = jnp.log(jnp.maximum(rest, jnp.finfo(x.dtype).tiny))
    # Only when asked for (a traced flag): the sum needs x - m stored for its reduction.
    weighted = jax.lax.cond(
        smooth,
        lambda: _class_sum(z * _row(weights, x.ndim)) - jnp.sum(weights) * log_s,
        lambda: jnp.zeros_like(log_s),
    )
    return _Pass(top, log_s, log_p, p_y, log1m, weighted, s, _reciprocal_sum(e, s), e)


def _forward(x, top, y, v, weights, smooth, overlap: bool, focal: bool):
    f = _pass(x, top, y, weights, smooth, focal)
    log1m = jnp.zeros_like(f.log_p) if f.log1m is None else f.log1m
    pixel = (f.log_p, log1m, f.weighted)
    if not overlap:
        return pixel, f
    pred_sum, tp = _overlap_sums(f.e, v * f.inv_s, v * f.p_y, y)
    return (pred_sum, tp, *pixel), f


def _tangent(x, y, v, weights, f: _Pass, overlap: bool, dx, dw):
    """The outputs' tangents, linear in ``dx`` and ``dw`` (module docstring, Derivatives).

    JAX transposes this rule for reverse mode, so each term is written in the form whose
    transpose is cheapest (see the module docstring).
    """
    num_classes = x.shape[-1]
    w = _row(weights, x.ndim)
    p = f.e * f.inv_s[..., None]
    dot = jnp.sum(p * dx, axis=-1)
    hit = _hit(y, num_classes)
    dx_y = jnp.sum(jnp.where(hit, dx, 0), axis=-1)
    w_dx = jnp.sum(dx * w, axis=-1)
    d_log_p = dx_y - dot
    d_log1m = jnp.zeros_like(d_log_p)
    if f.log1m is not None:
        # r = p_y / (1 - p_y) as exp(log p_y - log(1 - p_y)): then 1 - p_y has one use,
        # its logarithm, and XLA stores no plane of it (nor of p_y) beside those of
        # log(1 - p_y) and r. Measured, jit(value_and_grad), temporary memory over the
        # logits, division / exp: focal_loss 1.00x / 0.75x at 8 classes, 0.80x / 0.60x at
        # 10; dice_focal 1.38x / 1.25x at 8, 1.10x / 1.00x at 10, 0.58x / 0.53x at 19; time over
        # optax CE (interleaved, one process) 0.68 / 0.58 (focal_loss) and 0.82 / 0.67
        # (dice_focal) at 4 classes, within noise at 8-117. Relative error of r: that of
        # exp of a difference of logarithms, about 1e-7 |log(1 - p_y)|.
        d_log1m = -jnp.exp(f.log_p - f.log1m) * d_log_p
    d_weighted = w_dx - jnp.sum(weights) * dot
    if dw is not None:
        z = x - f.top[..., None]
        d_weighted = d_weighted + jnp.sum(z * _row(dw, x.ndim), axis=-1)
        d_weighted = d_weighted - jnp.sum(dw) * f.log_s
    pixel = (d_log_p, d_log1m, d_weighted)
    if not overlap:
        return pixel
    # d pred_c = sum_i v_i p_ic (dx_ic - dot_i), the second term as sum_i u_i e_ic. Up to
    # the cutoff u = v dot / s, divided by s rather than multiplied by 1 / s: transposed,
    # sum_c e_ic g_c / s_i then ends in a division, which XLA does not recompute for each
    # class of the gradient loop; it becomes a per-pixel plane, the loop reads e only at
    # the index it writes, and XLA writes the gradient over e. Measured at
    # (8, 256, 256, 4), temporary memory over the logits, multiplied / divided: dice_loss
    # 1.51x / 0.75x, dice_ce 1.75x / 1.00x, dice_focal 2.50x / 1.75x (time within this
    # machine's noise: 0.55x / 0.50x, 0.62x / 0.64x optax CE). Above the cutoff the
    # matrix-vector product's output is a plane either way, and the multiply stores one
    # plane less (dice_loss 1.00x against 1.13x the logits at 8 classes, 0.42x against
    # 0.47x at 19) and measured 2-4% faster (8, 19, 117 classes). Up to the cutoff,
    # d tp_c is the same sum where the label is c (_class_slice_sums).
    if _unrolled(num_classes):
        u = v * dot / f.s
        first = p * dx * v[..., None]
        second = _class_slice_sums([u * f.e[..., c] for c in range(num_classes)], y)
        pixel_axes = tuple(range(1, x.ndim - 1))
        second = jnp.stack([jnp.sum(a, axis=pixel_axes) for a in second], axis=1)
        d_pred = jnp.sum(first, axis=pixel_axes) - second[:, :num_classes]
        d_tp = jnp.sum(jnp.where(hit, first, 0), axis=pixel_axes)
        return (_cotangent_stored(d_pred), d_tp - second[:, num_classes:], *pixel)
    u = v * dot * f.inv_s
    d_pred_e = _dot(f.e, u)
    d_tp = _segment_sum(v * f.p_y * d_log_p, y, num_classes)
    d_pred = jnp.sum(_cells(p * dx * v[..., None]), axis=1) - d_pred_e
    return (_cotangent_stored(d_pred), d_tp, *pixel)


def _cotangent_stored(t: jax.Array) -> jax.Array:
    """``t`` times the identity matrix, so that its cotangent is computed once and stored.

    In reverse mode the cotangent of ``pred_sum`` (per (sample, class): the loss's
    derivative, about fifteen operations for the Dice loss) is read by the gradient loop,
    which runs over every element of ``e``. XLA fuses such a cheap elementwise producer
    into its consumer, so the loop recomputed it for each element. The transpose of this
    product is the cotangent times the identity, a dot, which XLA does not fuse into its
    consumers: the cotangent is computed once (``C x C`` multiply-adds per sample, exact
    at full precision; a non-finite entry makes its row non-finite, as the gradient's
    per-pixel sum over the classes already does). Measured, ``jit(value_and_grad)``, about 8
    MiB of float32 logits: the gradient loop alone (profiler, three runs each) 616-664 us
    before and 384-456 us after at 14 classes (``dice_ce``); time over optax CE,
    interleaved in one process, before / after, ``dice_loss`` 1.58 / 1.48, 1.49 / 1.39 and
    1.50 / 1.35 at 117 classes (three runs), 1.55 / 1.38 at 150; ``dice_ce`` 1.69 / 1.49,
    1.56 / 1.48, 1.55 / 1.41 and 1.61 / 1.49; from 4 to 64 classes and in 3D within this
    machine's noise. Temporary memory unchanged (0.06x the logits at 117 classes).
    """
    eye = np.eye(t.shape[-1], dtype=t.dtype)
    return jax.lax.dot(t, eye, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.custom_jvp, nondiff_argnums=(6, 7))
def _engine(x, top, y, v, weights, smooth, overlap, focal):
    return _forward(x, top, y, v, weights, smooth, overlap, focal)[0]


def _engine_jvp(overlap, focal, primals, tangents):
    # The maximum's tangent is not used: every output is invariant to it.
    x, top, y, v, weights, smooth = primals
    dx, _, _, _, dw, _ = tangents
    out, f = _forward(x, top, y, v, weights, smooth, overlap, focal)
    if isinstance(dx, SymbolicZero) and isinstance(dw, SymbolicZero):
        return out, tuple(jnp.zeros_like(o) for o in out)
    dx = jnp.zeros_like(x) if isinstance(dx, SymbolicZero) else dx
    dw = None if isinstance(dw, SymbolicZero) else dw
    return out, _tangent(x, y, v, weights, f, overlap, dx, dw)


_engine.defjvp(_engine_jvp, symbolic_zeros=True)


def softmax_terms(
    logits: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    weights: jax.Array,
    *,
    overlap: bool = True,
    smooth: jax.Array | bool = True,
    focal: bool = True,
) -> SoftmaxTerms:
    """The engine's terms for ``softmax(logits)`` against integer labels.

    Args:
      logits: ``(batch, *spatial, classes)`` float; half precision is widened to float32
        (:func:`jaxseg._checks.widen`), its per-pixel maximum taken before widening.
      labels: ``(batch, *spatial)`` integer; values outside ``[0, classes)`` must be
        excluded by ``valid``.
      valid: ``(batch, *spatial)`` bool.
      weights: ``(classes,)`` class weights of ``weighted_log_p``.
      overlap: compute ``pred_sum``, ``tp`` and ``label_sum`` (the overlap losses'
        sums); without them (the cross-entropy and focal losses) they are ``None``.
      smooth: compute ``weighted_log_p`` (zeros without it); may be traced.
      focal: compute ``log1m_p`` (zeros without it; then, from
        ``MIN_PLAIN_SUM_CLASSES`` classes, ``s`` is a plain sum instead of the split one).

    Returns:
      :class:`SoftmaxTerms`.
    """
    batch, num_classes = logits.shape[0], logits.shape[-1]
    spatial = logits.shape[1:-1]
    x = _checks.widen(logits)
    # The maximum of the logits as given: a bfloat16 maximum is exact, and taken before
    # widening it needs no float32 copy of the logits (XLA's CPU backend stores the
    # operand of a maximum over the class axis).
    top = jax.lax.stop_gradient(_class_max(logits)).astype(x.dtype)
    y = _clip_labels(labels, num_classes)
    v = valid.astype(x.dtype)
    weights = weights.astype(x.dtype)
    out = _engine(x, top, y, v, weights, jnp.asarray(smooth, bool), overlap, focal)
    pixel = lambda a: a.reshape(batch, *spatial)
    log_p, log1m_p, weighted = (pixel(a) for a in out[-3:])
    if not overlap:
        return SoftmaxTerms(None, None, None, log_p, log1m_p, weighted)
    counts = _label_counts(valid, y, num_classes)
    return SoftmaxTerms(out[0], out[1], counts, log_p, log1m_p, weighted)


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
    overlap: bool,
    smooth: jax.Array | bool = False,
    focal: bool = False,
) -> tuple[SoftmaxTerms, jax.Array]:
    """:func:`softmax_terms` of a loss's inputs, and the validity mask.

    Every loss calls it with the same arguments for the same inputs (the class weights
    included, which only ``weighted_log_p`` uses), so that when several losses see the
    same logits in one ``jit`` (``dice_ce``, ``dice_focal``) XLA computes the pass once.
    """
    num_classes = logits.shape[-1]
    valid = _checks.valid_mask(labels, num_classes, "softmax", ignore_index, where)
    weights = jnp.ones((num_classes,)) if class_weights is None else class_weights
    terms = softmax_terms(
        logits, labels, valid, weights, overlap=overlap, smooth=smooth, focal=focal
    )
    return terms, valid


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


def label_weight_sum(
    labels: jax.Array, valid: jax.Array, class_weights: jax.Array | None, num_classes: int, dtype
) -> jax.Array:
    """``sum_i v_i w_{y_i}``: the normaliser of the cross-entropy's and focal loss's mean.

    Up to the cutoff from the per-class label counts, ``sum_c w_c n_c``: one variadic
    reduction over the labels, computed in place, where a sum of the gathered weights
    is a plane that XLA stores (measured, ``(8, 362, 362, 2)``: ``cross_entropy`` 1.5x
    / 1.0x the logits of temporary memory and 0.20x / 0.12x optax CE's time, plane /
    counts; ``dice_ce`` shares the counts with its Dice term). Above it the plane (1/C of
    the logits; the counts' segment sum measured 3-8% slower at 8-117 classes). Exact in
    the class weights: their derivative is the counts.
    """
    y = _clip_labels(labels, num_classes)
    if _unrolled(num_classes):
        counts = jnp.sum(_label_counts(valid, y, num_classes), axis=0)
        if class_weights is None:
            return jnp.sum(counts).astype(dtype)
        return jnp.sum(counts.astype(dtype) * class_weights.astype(dtype))
    weight = jnp.ones((), dtype) if class_weights is None else label_gather(class_weights, y)
    return jnp.sum(jnp.where(valid, weight.astype(dtype), 0))
