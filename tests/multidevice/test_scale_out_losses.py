"""The losses of issue 18 across 8 devices (run with 8 host devices, see Makefile).

As tests/multidevice/test_scale_out.py: the loss and its gradient with respect to
replicated parameters (a per-class scale and shift of the logits), by ``jit`` over
sharded global arrays and by ``shard_map`` with ``axis_name`` (gradients averaged with
``pmean``), equal the single-device result on the whole batch. For the top-k loss this
is the global k-th value (the bitwise search with one ``psum`` per bit, 63 bits in
float64); for MCC with ``batch=True`` the global confusion sums.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxseg

jax.config.update("jax_enable_x64", True)

NUM_DEVICES = 8
AXIS = "data"

pytestmark = pytest.mark.skipif(
    jax.device_count() < NUM_DEVICES,
    reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8",
)

DISTANCES = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]])

CASES = {
    "mcc": (jaxseg.mcc_loss, {}),
    "mcc_batch_ignore": (jaxseg.mcc_loss, {"batch": True, "ignore_index": 2}),
    "wasserstein_gdl": (
        functools.partial(jaxseg.generalized_wasserstein_dice_loss, distance_matrix=DISTANCES),
        {"weighting_mode": "GDL"},
    ),
    "unified_focal": (jaxseg.asymmetric_unified_focal_loss, {"ignore_index": 2}),
    "topk": (jaxseg.topk_cross_entropy, {"k": 10.0}),
    "topk_ignore": (jaxseg.topk_cross_entropy, {"k": 3.0, "ignore_index": 2}),
}
# float64 only: the collectives are exact (to 1e-10); the float32 paths (a 31-bit
# search) are tested on one device with vmap's axis_name in the test modules.
TOLERANCE = {"float64": 1e-10}


@pytest.fixture(scope="module", params=sorted(TOLERANCE))
def data(request):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (16, 12, 10, 3), dtype=request.param)
    # The hardest pixels sit on the first shards, so per-device top k would differ.
    x = x * (1 + 3 * (jnp.arange(16) < 4)).reshape(16, 1, 1, 1).astype(x.dtype)
    y = jax.random.randint(keys[1], (16, 12, 10), 0, 3)
    y = jnp.where(jnp.arange(16).reshape(16, 1, 1) % 3 == 0, jnp.minimum(y, 1), y)
    params = (jnp.array([1.0, 2.0, 0.5], x.dtype), jnp.array([0.1, -0.2, 0.3], x.dtype))
    return params, x, y.astype(jnp.int32)


def _objective(loss_fn, options, axis_name=None):
    def objective(params, x, y):
        scale, shift = params
        logits = x * scale.reshape(1, 1, 1, -1) + shift.reshape(1, 1, 1, -1)
        return loss_fn(logits, y, axis_name=axis_name, **options)

    return objective


def _assert_close(got, want):
    rtol = TOLERANCE[str(jnp.result_type(want[0]))]
    np.testing.assert_allclose(got[0], want[0], rtol=rtol, atol=rtol / 10)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol / 10)


def _mesh():
    return Mesh(np.array(jax.devices()[:NUM_DEVICES]), (AXIS,))


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_with_sharded_global_arrays(name, data):
    params, x, y = data
    loss_fn, options = CASES[name]
    want = jax.value_and_grad(_objective(loss_fn, options))(params, x, y)
    shard = NamedSharding(_mesh(), P(AXIS))
    xs, ys = jax.device_put(x, shard), jax.device_put(y, shard)
    got = jax.jit(jax.value_and_grad(_objective(loss_fn, options)))(params, xs, ys)
    _assert_close(got, want)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shard_map_with_axis_name(name, data):
    params, x, y = data
    loss_fn, options = CASES[name]
    want = jax.value_and_grad(_objective(loss_fn, options))(params, x, y)
    objective = _objective(loss_fn, options, AXIS)

    @functools.partial(
        jax.shard_map, mesh=_mesh(), in_specs=(P(), P(AXIS), P(AXIS)), out_specs=(P(), P())
    )
    def step(params, x, y):
        loss, grads = jax.value_and_grad(objective)(params, x, y)
        return jax.lax.pmean(loss, AXIS), jax.lax.pmean(grads, AXIS)

    _assert_close(jax.jit(step)(params, x, y), want)


def test_topk_without_axis_name_is_biased(data):
    """Per-device top k averaged is not the global top k (the psum matters)."""
    params, x, y = data
    want = _objective(jaxseg.topk_cross_entropy, {"k": 10.0})(params, x, y)

    @functools.partial(jax.shard_map, mesh=_mesh(), in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P())
    def local(params, x, y):
        return jax.lax.pmean(_objective(jaxseg.topk_cross_entropy, {"k": 10.0})(params, x, y), AXIS)

    assert abs(float(jax.jit(local)(params, x, y)) - float(want)) > 1e-3
