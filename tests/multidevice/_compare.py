"""Helpers of the 8-device tests: the mesh, the data, and the single-device comparison.

A case is a loss and its options. Its value and its gradient with respect to
replicated parameters (a per-class scale and shift of the logits) are computed on
inputs split over 8 devices and compared with the same function on one device over
the whole batch, without any collective: a missing or wrong ``psum`` fails.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

NUM_DEVICES = 8
AXIS = "data"

# float64 cases show the collectives are exact (to 1e-10); float32 cases differ from the
# single-device result only by the order of float32 sums (about 2e-6 relative).
TOLERANCE = {"float32": 2e-5, "float64": 1e-10}

needs_8_devices = pytest.mark.skipif(
    jax.device_count() < NUM_DEVICES,
    reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8",
)


def mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:NUM_DEVICES]), (AXIS,))


def sharded(*arrays: jax.Array) -> list[jax.Array]:
    """``arrays`` split along their first (batch) axis over the mesh."""
    shard = NamedSharding(mesh(), P(AXIS))
    return [jax.device_put(a, shard) for a in arrays]


def batch(dtype: str, *, hard_first_shards: bool = False):
    """``(params, logits, labels)``: 16 samples of 12 x 10 pixels and 3 classes.

    Unequal class volumes per sample, and a class absent from some samples, so that
    per-device statistics differ from global ones. With ``hard_first_shards`` the logits
    of the first 4 samples are 4 times larger: the hardest pixels sit on the first
    shards, so a per-device top k would differ from the global one.
    """
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (16, 12, 10, 3), dtype=dtype)
    if hard_first_shards:
        x = x * (1 + 3 * (jnp.arange(16) < 4)).reshape(16, 1, 1, 1).astype(x.dtype)
    y = jax.random.randint(keys[1], (16, 12, 10), 0, 3)
    y = jnp.where(jnp.arange(16).reshape(16, 1, 1) % 3 == 0, jnp.minimum(y, 1), y)
    params = (jnp.array([1.0, 2.0, 0.5], x.dtype), jnp.array([0.1, -0.2, 0.3], x.dtype))
    return params, x, y.astype(jnp.int32)


def objective(loss_fn, options, axis_name=None):
    """The loss of the logits ``x * scale + shift`` (per class) as a function of the params."""

    def loss_of_params(params, x, y):
        scale, shift = params
        logits = x * scale.reshape(1, 1, 1, -1) + shift.reshape(1, 1, 1, -1)
        return loss_fn(logits, y, axis_name=axis_name, **options)

    return loss_of_params


def single_device(loss_fn, options, params, x, y):
    """The reference: value and gradient on one device over the whole batch."""
    return jax.value_and_grad(objective(loss_fn, options))(params, x, y)


def jit_on_sharded_arrays(loss_fn, options, params, x, y):
    """Value and gradient by ``jit`` over global arrays sharded along the batch."""
    xs, ys = sharded(x, y)
    assert len(xs.sharding.device_set) == NUM_DEVICES
    return jax.jit(jax.value_and_grad(objective(loss_fn, options)))(params, xs, ys)


def shard_map_step(loss_fn, options, axis_name):
    """Value and gradient by ``shard_map`` over the batch, each averaged with ``pmean``.

    With ``axis_name=None`` the loss sees only its device's shard (no collective).
    """
    local = objective(loss_fn, options, axis_name)

    @functools.partial(
        jax.shard_map, mesh=mesh(), in_specs=(P(), P(AXIS), P(AXIS)), out_specs=(P(), P())
    )
    def step(params, x, y):
        loss, grads = jax.value_and_grad(local)(params, x, y)
        # Gradients are averaged with pmean, never summed with psum.
        return jax.lax.pmean(loss, AXIS), jax.lax.pmean(grads, AXIS)

    return jax.jit(step)


def assert_close(got, want):
    """``(value, gradient)`` pairs equal to the tolerance of the value's dtype."""
    rtol = TOLERANCE[str(jnp.result_type(want[0]))]
    np.testing.assert_allclose(got[0], want[0], rtol=rtol, atol=rtol / 10)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol / 10)
