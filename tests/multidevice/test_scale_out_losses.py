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
import numpy as np
import pytest
from _compare import (
    AXIS,
    assert_close,
    batch,
    jit_on_sharded_arrays,
    needs_8_devices,
    objective,
    shard_map_step,
    single_device,
)

import jaxseg

jax.config.update("jax_enable_x64", True)

pytestmark = needs_8_devices

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
@pytest.fixture(scope="module", params=["float64"])
def data(request):
    # The hardest pixels sit on the first shards, so per-device top k would differ.
    return batch(request.param, hard_first_shards=True)


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


def test_topk_without_axis_name_is_biased(data):
    """Per-device top k averaged is not the global top k (the psum matters)."""
    want = objective(jaxseg.topk_cross_entropy, {"k": 10.0})(*data)
    got, _ = shard_map_step(jaxseg.topk_cross_entropy, {"k": 10.0}, None)(*data)
    assert abs(float(got) - float(want)) > 1e-3
