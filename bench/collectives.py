"""Bytes of every collective in the compiled program of one data-parallel train step.

Usage: ``python -m bench.collectives [--json out.json]`` (8 CPU devices; a few minutes
on two cores, most of it compiling the U-Net step).

Two steps, each compiled by XLA for a batch sharded over 8 devices along ``data`` with
replicated parameters (plain ``jit``, ``NamedSharding``):

- ``dice_ce(batch=True)`` on logits ``(16, 96, 96, C)`` through a per-class scale and
  shift (2 C parameters), and
- the U-Net step of ``examples/unet`` (``dice_ce`` with its defaults, Adam update).

The collectives of the compiled HLO (``all-reduce``, ``all-gather``, ``reduce-scatter``,
``all-to-all``, ``collective-permute``) are listed with the bytes of their results, per
device. The loss's own collectives are those of the same loss differentiated with
respect to its logits alone (no parameter to reduce); the rest of the step's collectives
is the gradient all-reduce. Payload bytes are the sizes of the reduced arrays; a ring
all-reduce moves about ``2 (n - 1) / n`` times them over each device's links.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxseg  # noqa: E402

COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
)
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}  # fmt: skip
_OP = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")


def collectives(hlo: str) -> list[dict]:
    """``{"op", "shapes", "bytes"}`` for each collective instruction of an HLO module."""
    found = []
    for line in hlo.splitlines():
        match = _OP.search(line)
        if match is None:
            continue
        shapes = _SHAPE.findall(match.group(1))
        if match.group(3):  # an async start: its tuple holds the operands and results
            shapes = shapes[len(shapes) // 2 :]
        size = sum(_BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                   for t, dims in shapes)  # fmt: skip
        found.append(
            {
                "op": match.group(2),
                "shapes": [f"{t}[{dims}]" for t, dims in shapes],
                "bytes": size,
            }
        )
    return found


def summary(ops: list[dict]) -> dict:
    return {
        "count": len(ops),
        "bytes": sum(op["bytes"] for op in ops),
        "ops": ops,
    }


def mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()[:8]), ("data",))


def dice_ce_step(num_classes: int = 4) -> dict:
    """Collectives of dice_ce(batch=True): the loss alone and a step with 2 C parameters."""
    shard = NamedSharding(mesh(), P("data"))
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.device_put(jax.random.normal(keys[0], (16, 96, 96, num_classes)), shard)
    y = jax.device_put(jax.random.randint(keys[1], (16, 96, 96), 0, num_classes), shard)
    params = (jnp.ones((num_classes,)), jnp.zeros((num_classes,)))

    def loss(logits, labels):
        return jaxseg.dice_ce(logits, labels, batch=True)

    def step(params, x, y):
        def objective(p):
            return loss(x * p[0] + p[1], y)

        value, grads = jax.value_and_grad(objective)(params)
        return value, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

    own = collectives(jax.jit(jax.value_and_grad(loss)).lower(x, y).compile().as_text())
    total = collectives(jax.jit(step).lower(params, x, y).compile().as_text())
    return {
        "name": f"dice_ce(batch=True), logits (16, 96, 96, {num_classes}) on 8 devices",
        "parameters": 2 * num_classes,
        "loss_own": summary(own),
        "step": summary(total),
    }


def unet_step() -> dict:
    """Collectives of the examples/unet train step (dice_ce, Adam) on 8 devices."""
    from flax import nnx

    from examples.unet import train
    from examples.unet.configs import default

    config = default.get_config()
    parallel = train.DataParallel(jax.devices()[:8])
    model, optimizer = train.create_model_and_optimizer(config, parallel.replicated)
    graphdef, state = nnx.split((model, optimizer))
    shape = (config.batch_size, config.crop, config.crop)
    images = jax.device_put(jnp.zeros((*shape, 1)), parallel.batch)
    labels = jax.device_put(jnp.zeros(shape, jnp.int32), parallel.batch)

    def step(state, images, labels):
        model, optimizer = nnx.merge(graphdef, state)

        def objective(model):
            return jaxseg.dice_ce(model(images), labels)

        value, grads = nnx.value_and_grad(objective)(model)
        optimizer.update(model, grads)
        return value, nnx.state((model, optimizer))

    total = collectives(jax.jit(step).lower(state, images, labels).compile().as_text())
    logits = jax.device_put(jnp.zeros((*shape, 3)), parallel.batch)
    own = collectives(
        jax.jit(jax.value_and_grad(jaxseg.dice_ce)).lower(logits, labels).compile().as_text()
    )
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return {
        "name": f"U-Net step (examples/unet: batch {config.batch_size}, crop {config.crop}, "
        "dice_ce, Adam) on 8 devices",
        "parameters": num_params,
        "loss_own": summary(own),
        "step": summary(total),
    }


def report(result: dict) -> str:
    own, step = result["loss_own"], result["step"]
    rest = step["bytes"] - own["bytes"]
    lines = [
        result["name"],
        f"  parameters: {result['parameters']} ({4 * result['parameters']} bytes float32)",
        f"  loss's own collectives: {own['count']} ops, {own['bytes']} bytes",
    ]
    lines += [f"    {op['op']}: {', '.join(op['shapes'])} = {op['bytes']} B" for op in own["ops"]]
    lines.append(f"  whole step: {step['count']} ops, {step['bytes']} bytes")
    lines += [f"    {op['op']}: {len(op['shapes'])} arrays = {op['bytes']} B" for op in step["ops"]]
    lines.append(f"  gradient all-reduce (step - loss's own): {rest} bytes")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--skip-unet", action="store_true")
    args = parser.parse_args()
    assert jax.device_count() >= 8, jax.devices()
    results = [dice_ce_step()]
    if not args.skip_unet:
        results.append(unet_step())
    for result in results:
        print(report(result))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"jax": jax.__version__, "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
