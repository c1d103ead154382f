"""Exact losses and metrics across 8 devices (run with 8 host devices, see Makefile).

Each case computes the loss and its gradient with respect to replicated parameters
(a per-class scale and shift of the logits) three ways -- ``jit`` over sharded global
arrays, ``shard_map`` with ``axis_name``, ``pmap`` with ``axis_name`` -- and compares
them with the single-device result on the whole batch. The reference is the same
function on one device without any collective, so a missing or wrong ``psum`` fails.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compare import (
    AXIS,
    NUM_DEVICES,
    TOLERANCE,
    assert_close,
    batch,
    jit_on_sharded_arrays,
    mesh,
    needs_8_devices,
    objective,
    shard_map_step,
    sharded,
    single_device,
)
from jax.sharding import PartitionSpec as P

import jaxseg

# The float64 cases (the collectives are exact there) need 64-bit types.
jax.config.update("jax_enable_x64", True)

pytestmark = needs_8_devices


def _cases():
    cases = {
        "dice": (jaxseg.dice_loss, {}),
        "dice_batch": (jaxseg.dice_loss, {"batch": True}),
        "dice_no_background": (jaxseg.dice_loss, {"include_background": False}),
        "generalized_dice": (jaxseg.generalized_dice_loss, {}),
        "generalized_dice_batch": (jaxseg.generalized_dice_loss, {"batch": True}),
        "cross_entropy_ignore": (jaxseg.cross_entropy, {"ignore_index": 2}),
        "focal_sigmoid": (jaxseg.focal_loss, {"activation": "sigmoid"}),
        "tversky_batch": (jaxseg.tversky_loss, {"batch": True, "alpha": 0.3, "beta": 0.7}),
    }
    cases["lovasz_softmax"] = (jaxseg.lovasz_softmax_loss, {})
    cases["lovasz_softmax_per_image_ignore"] = (
        jaxseg.lovasz_softmax_loss,
        {"per_image": True, "ignore_index": 2},
    )
    cases["lovasz_softmax_all_classes"] = (jaxseg.lovasz_softmax_loss, {"classes": "all"})
    for name in ("dice_ce", "dice_focal"):
        cases[name] = (getattr(jaxseg, name), {})
        cases[name + "_ignore_batch"] = (getattr(jaxseg, name), {"ignore_index": 2, "batch": True})
    return cases


CASES = _cases()


@pytest.fixture(scope="module", params=sorted(TOLERANCE))
def data(request):
    return batch(request.param)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_with_sharded_global_arrays(name, data):
    loss_fn, options = CASES[name]
    want = single_device(loss_fn, options, *data)
    assert_close(jit_on_sharded_arrays(loss_fn, options, *data), want)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shard_map_with_axis_name(name, data):
    loss_fn, options = CASES[name]
    want = single_device(loss_fn, options, *data)
    assert_close(shard_map_step(loss_fn, options, AXIS)(*data), want)


@pytest.mark.parametrize(
    "name", ["dice_batch", "generalized_dice_batch", "cross_entropy_ignore", "tversky_batch"]
)
def test_shard_map_without_axis_name_is_biased(name, data):
    """The failure the collectives prevent: per-device losses averaged are not the loss.

    (Per-sample Dice is the exception: with equal shards the mean of per-device means
    is the global mean, so it is not listed.)
    """
    loss_fn, options = CASES[name]
    want = objective(loss_fn, options)(*data)
    got, _ = shard_map_step(loss_fn, options, None)(*data)
    assert abs(float(got) - float(want)) > 1e-4


@pytest.mark.parametrize("name", sorted(CASES))
def test_pmap_with_axis_name(name, data):
    params, x, y = data
    loss_fn, options = CASES[name]
    want = single_device(loss_fn, options, params, x, y)
    loss_of_params = objective(loss_fn, options, AXIS)

    def step(params, x, y):
        loss, grads = jax.value_and_grad(loss_of_params)(params, x, y)
        return loss, jax.lax.pmean(grads, AXIS)

    split = lambda a: a.reshape(NUM_DEVICES, -1, *a.shape[1:])
    loss, grads = jax.pmap(step, axis_name=AXIS, in_axes=(None, 0, 0))(params, split(x), split(y))
    np.testing.assert_allclose(loss, np.full(NUM_DEVICES, want[0]), rtol=2e-5)
    assert_close((loss[0], jax.tree.map(lambda g: g[0], grads)), want)


def _metric_batch():
    keys = jax.random.split(jax.random.key(1), 2)
    predictions = jax.random.randint(keys[0], (16, 9, 7), 0, 4)
    labels = jax.random.randint(keys[1], (16, 9, 7), 0, 4)
    # Some samples lack class 3 entirely, so per-sample averages see empty classes.
    labels = jnp.where(jnp.arange(16).reshape(16, 1, 1) % 4 == 0, jnp.minimum(labels, 2), labels)
    return predictions.astype(jnp.int32), labels.astype(jnp.int32)


def _assert_states_equal(got, want):
    got_counts, want_counts = jaxseg.metrics.exact_counts(got), jaxseg.metrics.exact_counts(want)
    for name in want_counts:
        np.testing.assert_array_equal(got_counts[name], want_counts[name])
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_metric_state_across_devices():
    """The state updated on 8 shards (three ways) equals the state of the whole batch."""
    predictions, labels = _metric_batch()
    ignore = 2
    state0 = jaxseg.metrics.metric_state(4)
    want = jaxseg.metrics.update(state0, predictions, labels, ignore_index=ignore)

    got_jit = jax.jit(lambda s, p, y: jaxseg.metrics.update(s, p, y, ignore_index=ignore))(
        state0, *sharded(predictions, labels)
    )
    _assert_states_equal(got_jit, want)

    @functools.partial(jax.shard_map, mesh=mesh(), in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P())
    def sharded_update(state, p, y):
        return jaxseg.metrics.update(state, p, y, ignore_index=ignore, axis_name=AXIS)

    _assert_states_equal(jax.jit(sharded_update)(state0, predictions, labels), want)

    split = lambda a: a.reshape(NUM_DEVICES, -1, *a.shape[1:])
    pmapped = jax.pmap(
        lambda s, p, y: jaxseg.metrics.update(s, p, y, ignore_index=ignore, axis_name=AXIS),
        axis_name=AXIS,
        in_axes=(None, 0, 0),
    )(state0, split(predictions), split(labels))
    _assert_states_equal(jax.tree.map(lambda leaf: leaf[0], pmapped), want)

    # Without axis_name each shard holds only its own counts: merging them is exact too.
    per_device = jax.pmap(
        lambda s, p, y: jaxseg.metrics.update(s, p, y, ignore_index=ignore),
        in_axes=(None, 0, 0),
    )(state0, split(predictions), split(labels))
    merged = state0
    for i in range(NUM_DEVICES):
        merged = jaxseg.metrics.merge(merged, jax.tree.map(lambda leaf, i=i: leaf[i], per_device))
    _assert_states_equal(merged, want)


@pytest.mark.parametrize("loss_name", ["bce_log_dice", "lovasz_hinge_loss"])
def test_binary_losses_across_devices(loss_name, data):
    params, x, y = data
    loss_fn = getattr(jaxseg, loss_name)
    binary = (jax.tree.map(lambda p: p[:1], params), x[..., :1], (y > 0).astype(jnp.int32))
    want = single_device(loss_fn, {}, *binary)
    assert_close(shard_map_step(loss_fn, {}, AXIS)(*binary), want)
