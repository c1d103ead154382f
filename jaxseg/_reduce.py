"""Reductions shared by every loss: weighted means that are exact across devices.

A mean is always a ratio of two sums, ``sum(w * value) / sum(w)``; with ``axis_name``
both sums are ``psum``-ed, so a loss inside ``shard_map``/``pmap`` equals the loss of
the whole global batch. An empty denominator (every pixel or entry excluded) gives 0,
not NaN, and a zero gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg import _stats


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator``, and 0 where the denominator is 0 (NaN-free gradient)."""
    nonzero = denominator != 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1), 0)


def weighted_reduce(
    values: jax.Array,
    weights: jax.Array,
    reduction: str,
    axis_name: str | tuple[str, ...] | None,
    *,
    weight_sum: jax.Array | None = None,
) -> jax.Array:
    """Reduces ``values`` as ``reduction`` asks.

    Args:
      values: per-element values, already multiplied by their weights.
      weights: the weights (broadcastable to ``values``); the normaliser of the mean.
      reduction: ``"mean"`` (``sum(values) / sum(weights)``), ``"sum"`` or ``"none"``.
      axis_name: mapped axes whose shards the sums run over (not for ``"none"``).
      weight_sum: ``sum(weights)`` when the caller has it (then ``weights`` is unused).
    """
    if reduction == "none":
        return values
    total = _stats.psum(jnp.sum(values), axis_name)
    if reduction == "sum":
        return total
    if weight_sum is None:
        weight_sum = jnp.sum(jnp.broadcast_to(weights, values.shape))
    norm = _stats.psum(weight_sum, axis_name)
    return safe_divide(total, norm.astype(total.dtype))
