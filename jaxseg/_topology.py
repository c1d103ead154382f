r"""Topology-preserving losses: soft clDice and Dice + clDice (Shit et al. 2021).

The soft skeleton is built from min- and max-pooling with stride 1 (MONAI 1.6.1's
``soft_skel``, after the authors' code):

- ``erode``: the minimum over the face-connected cross, computed as the minimum of
  one 3-pixel window per spatial axis (2D: ``min(pool(3, 1), pool(1, 3))``);
- ``dilate``: the maximum over the full 3^n box;
- ``open = dilate(erode(x))``; ``skel = relu(x - open(x))``, then ``iterations``
  times: ``x = erode(x)``, ``delta = relu(x - open(x))``,
  ``skel = skel + relu(delta - skel * delta)``.

Pixels outside the image do not take part in a window (PyTorch's implicit ``-inf``
padding of ``max_pool``). Excluded pixels (``ignore_index``/``where``) are treated the
same way: they are set to 1 before each erosion and to 0 before each dilation, which,
for values in [0, 1], leaves every window's result at the kept pixels unchanged, so
excluding a box of pixels equals cropping it away. Everything is differentiable
(``reduce_window`` min/max route the gradient to the chosen pixel, as ``max_pool``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseg import _arguments, _checks, _reduce
from jaxseg._combinators import combine
from jaxseg._overlap import dice_loss

AxisName = str | tuple[str, ...] | None
ArrayLike = jax.typing.ArrayLike
Result = jax.Array | tuple[jax.Array, dict[str, jax.Array]]


# --------------------------------------------------------------------------------------
# Soft morphology on channels-last (batch, *spatial, classes) arrays.


def _pool(x: jax.Array, axes: tuple[int, ...], op: str) -> jax.Array:
    """Min or max over a 3-pixel window along each of ``axes`` (stride 1, same size)."""
    window = [1] * x.ndim
    padding = [(0, 0)] * x.ndim
    for axis in axes:
        window[axis] = 3
        padding[axis] = (1, 1)
    # A concrete identity lets lax pick its differentiable min/max window primitives.
    if op == "min":
        init, reducer = np.array(np.inf, x.dtype), lax.min
    else:
        init, reducer = np.array(-np.inf, x.dtype), lax.max
    return lax.reduce_window(x, init, reducer, tuple(window), (1,) * x.ndim, tuple(padding))


def soft_erode(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Minimum over the face-connected cross; excluded pixels count as 1 (no effect)."""
    x = jnp.where(valid, x, 1)
    spatial = range(1, x.ndim - 1)
    pooled = [_pool(x, (axis,), "min") for axis in spatial]
    # Nested pairwise minima, in MONAI's order (gradients split alike on ties).
    out = pooled[0]
    for p in pooled[1:]:
        out = jnp.minimum(out, p)
    return out


def soft_dilate(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Maximum over the 3^n box; excluded pixels count as 0 (no effect)."""
    x = jnp.where(valid, x, 0)
    return _pool(x, tuple(range(1, x.ndim - 1)), "max")


def soft_skeleton(x: jax.Array, valid: jax.Array, iterations: int) -> jax.Array:
    """MONAI's ``soft_skel`` of a ``(batch, *spatial, classes)`` map in [0, 1].

    Args:
      x: the map, channels last.
      valid: boolean ``(batch, *spatial, 1)``; excluded pixels take part in no window.
      iterations: number of erosions (static).
    """

    def open_(v):
        return soft_dilate(soft_erode(v, valid), valid)

    skel = jax.nn.relu(x - open_(x))
    for _ in range(iterations):
        x = soft_erode(x, valid)
        delta = jax.nn.relu(x - open_(x))
        skel = skel + jax.nn.relu(delta - skel * delta)
    return skel


# --------------------------------------------------------------------------------------
# clDice


@functools.partial(
    jax.jit,
    static_argnames=(
        "activation",
        "ignore_index",
        "include_background",
        "iterations",
        "reduction",
        "axis_name",
    ),
)
def _cldice_loss(
    logits,
    labels,
    where,
    smooth_nr,
    smooth_dr,
    smooth_harmonic,
    *,
    activation,
    ignore_index,
    include_background,
    iterations,
    reduction,
    axis_name,
):
    prepared = _checks.prepare(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    p = prepared.probs
    if _checks.is_integer_labels(prepared.labels):
        values = prepared.label_values.reshape((1,) * prepared.labels.ndim + (-1,))
        y = (prepared.labels[..., None] == values).astype(p.dtype)
    else:
        y = prepared.labels
    if not include_background and p.shape[-1] > 1:
        p, y = p[..., 1:], y[..., 1:]
    valid = prepared.valid[..., None]
    # Excluded pixels may hold anything (labels out of range, garbage probabilities).
    p = jnp.where(valid, p, 0)
    y = jnp.where(valid, y, 0)
    skel_pred = soft_skeleton(p, valid, iterations)
    skel_true = lax.stop_gradient(soft_skeleton(y, valid, iterations))
    axes = tuple(range(1, p.ndim))

    def masked_sum(v):
        return jnp.sum(jnp.where(valid, v, 0), axis=axes)

    precision = (masked_sum(skel_pred * y) + smooth_nr) / (masked_sum(skel_pred) + smooth_dr)
    sensitivity = (masked_sum(skel_true * p) + smooth_nr) / (masked_sum(skel_true) + smooth_dr)
    harmonic = _reduce.safe_divide(
        2 * precision * sensitivity, precision + sensitivity + smooth_harmonic
    )
    loss = 1 - harmonic
    return _reduce.weighted_reduce(loss, jnp.ones((), loss.dtype), reduction, axis_name)


@_arguments.normalised
def cldice_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    iterations: int = 3,
    smooth_nr: float = 1.0,
    smooth_dr: float = 1.0,
    smooth_harmonic: float = 1e-4,
    activation: str | None = "softmax",
    include_background: bool = True,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
) -> jax.Array:
    r"""Soft clDice loss (Shit et al. 2021): Dice between skeletons and masks.

    With :math:`S_P, S_Y` the soft skeletons (module docstring) of the probabilities
    and of the labels, and sums over the valid pixels and the kept channels of one
    sample:

    .. math::
        T_{prec} = \frac{\sum S_P\, y + s_{nr}}{\sum S_P + s_{dr}}, \quad
        T_{sens} = \frac{\sum S_Y\, p + s_{nr}}{\sum S_Y + s_{dr}}, \quad
        L_b = 1 - \frac{2\, T_{prec} T_{sens}}{T_{prec} + T_{sens} + s_h}

    :math:`s_h` is ``smooth_harmonic`` (MONAI's ``smooth``, 1e-4). The label skeleton
    carries no gradient. One value per sample: the channels are pooled into the sums,
    not averaged (MONAI). With the same options this equals MONAI 1.6.1
    ``SoftclDiceLoss(iter_=iterations, ...)`` on channels-first copies with one-hot
    targets. MONAI pools 2D and 3D; here 1D takes a 3-pixel window as well.

    Args:
      logits: ``(batch, *spatial, classes)`` float logits, 1 to 3 spatial axes.
      labels: integer class indices ``(batch, *spatial)`` or dense labels in [0, 1] of
        the logits' shape.
      iterations: number of erosions of the skeleton, >= 0 (static).
      smooth_nr: added to both numerators (may be traced).
      smooth_dr: added to both denominators (may be traced).
      smooth_harmonic: added to the harmonic mean's denominator (may be traced).
      activation: ``"softmax"``, ``"sigmoid"`` or ``None`` (probabilities given).
      include_background: False drops channel 0 (ignored for one channel, as MONAI).
      ignore_index: integer label whose pixels are excluded.
      where: boolean ``(batch, *spatial)``; pixels where False are excluded (they
        take part in no pooling window and leave every sum).
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(batch,)``).
      axis_name: mapped axis name(s) inside ``shard_map``/``pmap``: the batch mean is
        global.

    Returns:
      A float32 scalar in [0, 1], or ``(batch,)`` values.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxseg
      >>> labels = jnp.zeros((1, 7, 7), jnp.int32).at[0, 3, 1:6].set(1)  # a vessel
      >>> perfect = jax.nn.one_hot(labels, 2)
      >>> broken = perfect.at[0, 3, 3].set(jnp.array([1.0, 0.0]))
      >>> loss = lambda p: jaxseg.cldice_loss(p, labels, activation=None,
      ...                                     include_background=False)
      >>> float(loss(perfect)) < float(loss(broken))
      True

    References:
      Shit, Paetzold, Sekuboyina, Ezhov, Unger, Zhylka, Pluim, Bauer, Menze. clDice -
      a Novel Topology-Preserving Loss Function for Tubular Structure Segmentation.
      CVPR 2021.
    """
    _checks.check_logits_labels(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    _checks.check_option("reduction", reduction, _checks.REDUCTIONS)
    return _cldice_loss(
        jnp.asarray(logits),
        jnp.asarray(labels),
        None if where is None else jnp.asarray(where),
        smooth_nr,
        smooth_dr,
        smooth_harmonic,
        activation=activation,
        ignore_index=ignore_index,
        include_background=bool(include_background),
        iterations=int(iterations),
        reduction=reduction,
        axis_name=axis_name,
    )


_DICE_CLDICE = combine(dice=dice_loss, cldice=cldice_loss)


@_arguments.normalised(alpha=_arguments.UNIT_INTERVAL)
def dice_cldice(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: float = 0.5,
    iterations: int = 3,
    smooth_nr: float = 1.0,
    smooth_dr: float = 1.0,
    smooth_harmonic: float = 1e-4,
    activation: str | None = "softmax",
    include_background: bool = True,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
    return_components: bool = False,
) -> Result:
    r"""Dice + clDice: :math:`(1 - \alpha)\, L_{dice} + \alpha\, L_{clDice}`.

    :math:`L_{dice}` is :func:`jaxseg.dice_loss` (per sample and class, then the mean)
    and :math:`L_{clDice}` is :func:`cldice_loss`, both with the same smoothing terms
    (default 1, as MONAI), activation, background choice and masking. With the same
    options this equals MONAI 1.6.1 ``SoftDiceclDiceLoss(iter_=iterations, alpha=...)``
    on channels-first copies with one-hot targets.

    Args:
      logits: ``(batch, *spatial, classes)`` float logits.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, classes)``.
      alpha: weight of the clDice term, in [0, 1] (may be traced).
      iterations, smooth_harmonic: clDice term only, as :func:`cldice_loss`.
      smooth_nr, smooth_dr, activation, include_background, ignore_index, where,
        axis_name: both terms (``include_background`` is ignored for one channel).
      reduction: ``"mean"`` or ``"sum"`` (of each term's values, then weighted).
      return_components: also return ``{"dice": L_dice, "cldice": L_clDice}``.

    Returns:
      A float32 scalar, or ``(scalar, components)``.

    Examples:
      >>> import jax, jaxseg
      >>> logits = jax.random.normal(jax.random.key(0), (2, 16, 16, 2))
      >>> labels = jax.random.randint(jax.random.key(1), (2, 16, 16), 0, 2)
      >>> loss, grads = jax.value_and_grad(jaxseg.dice_cldice)(logits, labels)
      >>> loss.shape, grads.shape
      ((), (2, 16, 16, 2))

    References:
      Shit et al. clDice - a Novel Topology-Preserving Loss Function for Tubular
      Structure Segmentation. CVPR 2021.
    """
    _checks.check_option("reduction", reduction, ("mean", "sum"))
    if np.shape(logits)[-1:] == (1,):
        # One channel has no background to drop (MONAI warns and keeps it).
        include_background = True
    return _DICE_CLDICE.evaluate(
        logits, labels, (1 - jnp.asarray(alpha, jnp.float32), alpha),
        return_components=return_components, iterations=int(iterations),
        smooth_nr=smooth_nr, smooth_dr=smooth_dr, smooth_harmonic=smooth_harmonic,
        activation=activation, include_background=include_background,
        ignore_index=ignore_index, where=where, reduction=reduction, axis_name=axis_name,
    )  # fmt: skip
