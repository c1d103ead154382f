"""The asymmetric unified focal loss (Yeung et al. 2022): focal CE plus focal Tversky.

Two asymmetric terms: a focal cross-entropy that suppresses the easy background
(``(1 - p_0)^gamma``) but keeps the full cross-entropy of the foreground, and a focal
Tversky loss that enhances the foreground (``(1 - TI)^(1 - gamma)``, a power below 1)
but not the background. Class 0 is the background; every other class is foreground
(MONAI reads channels 0 and 1 only). Probabilities are clipped to ``[eps, 1 - eps]``
before either term, as in the reference code and MONAI.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxseg import _arguments, _checks, _overlap, _reduce, _stats

AxisName = str | tuple[str, ...] | None
ArrayLike = jax.typing.ArrayLike


def _two_channels(x: jax.Array) -> jax.Array:
    """One foreground channel ``p`` becomes ``[1 - p, p]`` (background first)."""
    return jnp.concatenate([1 - x, x], axis=-1)


@functools.partial(
    jax.jit, static_argnames=("activation", "ignore_index", "reduction", "axis_name")
)
def _asymmetric_unified_focal_loss(
    logits,
    labels,
    where,
    weight,
    gamma,
    delta,
    epsilon,
    *,
    activation,
    ignore_index,
    reduction,
    axis_name,
):
    inputs = _checks.prepare(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    probs, labels, valid = inputs.probs, inputs.labels, inputs.valid
    if probs.shape[-1] == 1:
        probs = _two_channels(probs)
        if not _checks.is_integer_labels(labels):
            labels = _two_channels(labels)
    num_classes = probs.shape[-1]
    probs = jnp.clip(probs, epsilon, 1 - epsilon)
    dtype = probs.dtype

    # Focal cross-entropy per pixel and class: (1 - delta) (1 - p_0)^gamma CE_0 for the
    # background, delta CE_c for the others; per sample, the mean over valid pixels and
    # classes (MONAI's mean over the (batch, 2, *spatial) stack).
    classes = jnp.arange(num_classes).reshape((1,) * (probs.ndim - 1) + (num_classes,))
    if _checks.is_integer_labels(labels):
        y = (labels[..., None] == classes).astype(dtype)
    else:
        y = labels
    is_background = classes == 0
    modulator = jnp.where(is_background, (1 - probs) ** gamma, 1)
    class_weight = jnp.where(is_background, 1 - delta, delta)
    focal = jnp.where(valid[..., None], class_weight * modulator * (-y * jnp.log(probs)), 0)
    spatial = tuple(range(1, probs.ndim - 1))
    count = jnp.sum(valid, axis=spatial, dtype=dtype)[:, None]
    focal = _reduce.safe_divide(jnp.sum(focal, axis=spatial), count)  # (batch, classes)

    # Focal Tversky from the statistics core (of the clipped probabilities).
    stats = _stats.compute_stats(probs, labels, valid, jnp.arange(num_classes))
    tversky = (stats.tp + epsilon) / (
        stats.tp + delta * stats.fn + (1 - delta) * stats.fp + epsilon
    )
    tversky_loss = jnp.where(
        jnp.arange(num_classes) == 0, 1 - tversky, _overlap._safe_power(1 - tversky, 1 - gamma)
    )

    loss = weight * focal + (1 - weight) * tversky_loss
    return _reduce.weighted_reduce(loss, jnp.ones_like(loss), reduction, axis_name)


@_arguments.normalised(gamma=_arguments.UNIT_INTERVAL)
def asymmetric_unified_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    weight: float = 0.5,
    gamma: float = 0.5,
    delta: float = 0.7,
    epsilon: float = 1e-7,
    activation: str | None = "softmax",
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    axis_name: AxisName = None,
) -> jax.Array:
    r"""Asymmetric unified focal loss (Yeung et al. 2022), per (sample, class).

    With probabilities clipped to :math:`[\epsilon, 1 - \epsilon]`, class 0 the
    background and every other class foreground, per sample ``b`` and class ``c``:

    .. math::
        F_{bc} = \frac{1}{N_b} \sum_i -\beta_c\, m_{ic}\, y_{ic} \log p_{ic}, \quad
        \beta_0 = 1 - \delta,\ m_{i0} = (1 - p_{i0})^{\gamma}; \quad
        \beta_c = \delta,\ m_{ic} = 1 \ (c \geq 1)

    .. math::
        TI_{bc} = \frac{tp + \epsilon}{tp + \delta\, fn + (1 - \delta)\, fp + \epsilon},
        \quad T_{b0} = 1 - TI_{b0}, \quad T_{bc} = (1 - TI_{bc})^{1 - \gamma}

    .. math::
        L_{bc} = \lambda\, F_{bc} + (1 - \lambda)\, T_{bc}

    ``N_b`` is the sample's valid pixel count and ``lambda`` the ``weight``; ``"mean"``
    is the mean over ``(b, c)``, so the focal part is a mean over pixels and classes
    (MONAI's mean over its ``(batch, 2, *spatial)`` stack, half the sum over the two
    channels of the original code): MONAI's
    ``weight * AsymmetricFocalLoss + (1 - weight) * AsymmetricFocalTverskyLoss``.
    One channel (binary) becomes ``[1 - p, p]``. MONAI
    ``AsymmetricUnifiedFocalLoss(to_onehot_y=True, weight, gamma, delta)`` given the
    probabilities on channels-first copies gives the same values and gradients for
    two classes (see the differences table for more classes and ``ignore_index``).
    ``weight``, ``gamma``, ``delta`` and ``epsilon`` are traced.

    Args:
      logits: ``(batch, *spatial, classes)`` float logits; one channel is binary.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, classes)``.
      weight: ``lambda``, the weight of the focal cross-entropy term.
      gamma: focal parameter of both terms, in [0, 1].
      delta: weight of false negatives in the Tversky index and of the foreground in
        the cross-entropy, in [0, 1].
      epsilon: probability clip and Tversky smoothing.
      activation: ``"softmax"``, ``"sigmoid"`` or ``None`` (probabilities given).
      ignore_index: integer label whose pixels are excluded.
      where: boolean ``(batch, *spatial)``; pixels where False are excluded.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``: ``(batch, classes)`` (two
        classes for one binary channel).
      axis_name: mapped axis name(s): the mean over samples becomes global.

    Returns:
      A float32 scalar, or the ``"none"`` values.

    Examples:
      >>> import jax, jaxseg
      >>> logits = jax.random.normal(jax.random.key(0), (2, 8, 8, 2))
      >>> labels = jax.random.randint(jax.random.key(1), (2, 8, 8), 0, 2)
      >>> jaxseg.asymmetric_unified_focal_loss(logits, labels, reduction="none").shape
      (2, 2)

    References:
      Yeung, Sala, Schönlieb, Rundo. Unified Focal loss: Generalising Dice and cross
      entropy-based losses to handle class imbalanced medical image segmentation.
      Computerized Medical Imaging and Graphics 95, 2022.
    """
    _checks.check_logits_labels(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    _checks.check_option("reduction", reduction, _checks.REDUCTIONS)
    return _asymmetric_unified_focal_loss(
        jnp.asarray(logits),
        jnp.asarray(labels),
        None if where is None else jnp.asarray(where),
        weight,
        gamma,
        delta,
        epsilon,
        activation=activation,
        ignore_index=ignore_index,
        reduction=reduction,
        axis_name=axis_name,
    )
