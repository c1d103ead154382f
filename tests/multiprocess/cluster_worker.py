"""One process of the 2-process cluster of ``test_cluster.py`` (4 CPU devices each).

Usage: ``python cluster_worker.py PORT PROCESS_ID NUM_PROCESSES OUT.json``

Every process builds the same global batch from a seed, keeps only its own rows, and
forms the global array with ``jax.make_array_from_process_local_data``: the shards that
a loss reduces over come from different processes. Each batch-coupled loss and the
metric state are computed over the 8 devices of the cluster three ways (``jit`` on a
mesh with ``Auto`` axes, ``jit`` on a mesh with ``Explicit`` axes, ``shard_map`` with
``axis_name``) and once on this process's first device alone on the whole batch, the
reference. The results go to ``OUT.json``; the test compares them.
"""

from __future__ import annotations

import faulthandler
import functools
import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxseg  # noqa: E402

AXIS = "data"
BATCH = 16

# LLVM's optimisation level changes how fast the code runs, not what it computes; level 0
# compiles in about 60% of the time (as tests/peers.py does for the other tests).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# name -> (loss, options, binary): every loss whose value couples the samples of a batch.
CASES = {
    "dice_batch": (jaxseg.dice_loss, {"batch": True}, False),
    "generalized_dice": (jaxseg.generalized_dice_loss, {}, False),
    "generalized_dice_batch": (jaxseg.generalized_dice_loss, {"batch": True}, False),
    "tversky_batch": (jaxseg.tversky_loss, {"batch": True, "alpha": 0.3, "beta": 0.7}, False),
    "cross_entropy_ignore": (jaxseg.cross_entropy, {"ignore_index": 2}, False),
    "dice_ce_ignore_batch": (jaxseg.dice_ce, {"batch": True, "ignore_index": 2}, False),
    "dice_focal_batch": (jaxseg.dice_focal, {"batch": True}, False),
    "lovasz_softmax_per_batch": (jaxseg.lovasz_softmax_loss, {}, False),
    "lovasz_hinge_per_batch": (jaxseg.lovasz_hinge_loss, {"per_image": False}, True),
}


def global_batch(dtype):
    """The same batch on every process: logits-like inputs, labels, parameters."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 8, 6, 3)).astype(dtype)
    y = rng.integers(0, 3, size=(BATCH, 8, 6)).astype(np.int32)
    # Unequal class volumes and a class absent from some samples (and from the rows of
    # one process), so that per-shard statistics differ from global ones.
    y[np.arange(BATCH) % 3 == 0] = np.minimum(y[np.arange(BATCH) % 3 == 0], 1)
    y[: BATCH // 4] = np.where(y[: BATCH // 4] == 2, 0, y[: BATCH // 4])
    params = (np.array([1.0, 2.0, 0.5], dtype), np.array([0.1, -0.2, 0.3], dtype))
    return x, y, params


def objective(loss_fn, options, binary, axis_name=None):
    def f(params, x, y):
        scale, shift = params
        if binary:
            x, y, scale, shift = x[..., :1], (y > 0).astype(jnp.int32), scale[:1], shift[:1]
        logits = x * scale.reshape(1, 1, 1, -1) + shift.reshape(1, 1, 1, -1)
        return loss_fn(logits, y, axis_name=axis_name, **options)

    return f


def to_global(mesh, spec, array):
    """This process's rows of ``array`` as one global array sharded by ``spec``."""
    sharding = NamedSharding(mesh, spec)
    if spec == P():
        return jax.make_array_from_process_local_data(sharding, array, array.shape)
    rows = sorted(
        {index[0].indices(array.shape[0])[:2] for index in
         sharding.addressable_devices_indices_map(array.shape).values()}
    )  # fmt: skip
    start, stop = rows[0][0], rows[-1][1]
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:], strict=False)), rows
    assert stop - start < array.shape[0], "each process must hold only part of the batch"
    return jax.make_array_from_process_local_data(sharding, array[start:stop], array.shape)


def host(tree):
    return jax.tree.map(lambda a: np.asarray(a).tolist(), tree)


def all_losses(axis_name=None):
    """Every case's value and gradient in one function: one program per mode to compile."""

    def f(params, x, y):
        out = {}
        for name, (loss_fn, options, binary) in CASES.items():
            case = objective(loss_fn, options, binary, axis_name)
            out[name] = jax.value_and_grad(case)(params, x, y)
        return out

    return f


def loss_results(mesh_auto, mesh_explicit):
    results = {}
    for dtype in ("float32", "float64"):
        x, y, params = global_batch(dtype)
        reference = jax.device_put((params, x, y), jax.local_devices()[0])
        got = {"want": jit(all_losses())(*reference)}
        for mode, mesh in (("jit_auto", mesh_auto), ("jit_explicit", mesh_explicit)):
            args = (
                jax.tree.map(lambda a, m=mesh: to_global(m, P(), a), params),
                to_global(mesh, P(AXIS), x),
                to_global(mesh, P(AXIS), y),
            )
            got[mode] = jit(all_losses())(*args)
            log(f"{dtype} {mode}")
        sharded = all_losses(AXIS)

        @functools.partial(
            jax.shard_map, mesh=mesh_auto, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P()
        )
        def step(params, x, y, sharded=sharded):
            # Gradients are averaged with pmean, never summed with psum.
            return jax.lax.pmean(sharded(params, x, y), AXIS)

        args = (
            jax.tree.map(lambda a: to_global(mesh_auto, P(), a), params),
            to_global(mesh_auto, P(AXIS), x),
            to_global(mesh_auto, P(AXIS), y),
        )
        got["shard_map"] = jit(step)(*args)
        log(f"{dtype} shard_map")
        for name in CASES:
            results[f"{name}/{dtype}"] = {mode: host(got[mode][name]) for mode in got}
    return results


def log(message):
    print(f"process {jax.process_index()}: {message}", flush=True)


def metric_results(mesh_auto, mesh_explicit):
    rng = np.random.default_rng(1)
    predictions = rng.integers(0, 4, size=(BATCH, 9, 7)).astype(np.int32)
    labels = rng.integers(0, 4, size=(BATCH, 9, 7)).astype(np.int32)
    labels[: BATCH // 2] = np.minimum(labels[: BATCH // 2], 2)  # class 3 on one process only
    state0 = jaxseg.metrics.metric_state(4)
    update = functools.partial(jaxseg.metrics.update, ignore_index=2)

    def summary(state):
        counts = {k: v.tolist() for k, v in jaxseg.metrics.exact_counts(state).items()}
        return {"counts": counts, "state": host(state._asdict())}

    results = {"want": summary(update(state0, predictions, labels))}
    for mode, mesh in (("jit_auto", mesh_auto), ("jit_explicit", mesh_explicit)):
        p, y = (to_global(mesh, P(AXIS), a) for a in (predictions, labels))
        results[mode] = summary(jit(update)(state0, p, y))

    @functools.partial(
        jax.shard_map, mesh=mesh_auto, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P()
    )
    def sharded_update(state, p, y):
        return update(state, p, y, axis_name=AXIS)

    p, y = (to_global(mesh_auto, P(AXIS), a) for a in (predictions, labels))
    results["shard_map"] = summary(jit(sharded_update)(state0, p, y))
    return results


def main(port: str, process_id: str, num_processes: str, out: str) -> None:
    # A hang prints where each thread is, before the test ends the process.
    faulthandler.dump_traceback_later(570, exit=True)
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=int(num_processes),
        process_id=int(process_id),
        initialization_timeout=60,
        heartbeat_timeout_seconds=20,
    )
    assert jax.process_count() == int(num_processes), jax.process_count()
    assert jax.local_device_count() == 4 and jax.device_count() == 4 * int(num_processes)
    shape, names = (jax.device_count(),), (AXIS,)
    mesh_auto = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,))
    mesh_explicit = jax.make_mesh(shape, names, axis_types=(AxisType.Explicit,))
    results = {
        "process_index": jax.process_index(),
        "device_count": jax.device_count(),
        "losses": loss_results(mesh_auto, mesh_explicit),
        "metrics": metric_results(mesh_auto, mesh_explicit),
    }
    with open(out, "w") as file:
        json.dump(results, file)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
