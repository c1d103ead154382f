"""Distance-map losses: jaxseg (exact EDT on the device, under jit) against MONAI (SciPy).

    python -m bench.distance_losses                       # (2, 64, 64, 64, 4), 10 rounds
    python -m bench.distance_losses --shape 2,96,96,96,4 --repeats 20 --out bench/results/x.md

What is timed: one forward+backward pass from integer labels to the scalar loss and its
gradient with respect to the logits, blocked until ready.

- jaxseg: ``jax.jit(jax.value_and_grad(loss))`` compiled ahead of time (compile time
  reported apart); the distance maps are computed inside the program, on the device.
- MONAI 1.6.1: ``loss(x, y).backward()`` on a channels-first float32 torch copy with
  ``softmax=True, to_onehot_y=True``; its distance maps come from
  ``scipy.ndimage.distance_transform_edt`` on the host, one sample and one class at a
  time (cuCIM only for CUDA tensors).

Runs are interleaved in balanced orders (``bench.timing``);
the table gives medians and interquartile ranges, jaxseg's median over MONAI's, the
compile time and XLA's ``memory_analysis()`` of the compiled program (temporary bytes,
also as a multiple of the logits' bytes). Labels are blobs (a smoothed random field's
argmax), so distances reach across whole structures as in real masks.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import platform

import jax
import jax.numpy as jnp
import numpy as np

import jaxseg
from bench import timing


def blob_labels(shape: tuple[int, ...], classes: int, seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = rng.standard_normal((*shape, classes)).astype(np.float32)
    size = (1,) + (9,) * (len(shape) - 1) + (1,)
    return np.argmax(ndimage.uniform_filter(field, size=size), axis=-1).astype(np.int32)


def monai_step(name: str, logits_cf: np.ndarray, labels: np.ndarray, **options):
    import torch
    from monai import losses

    loss = getattr(losses, name)(softmax=True, to_onehot_y=True, **options)
    x = torch.tensor(logits_cf, dtype=torch.float32, requires_grad=True)
    y = torch.tensor(labels[:, None].astype(np.int64))

    def step():
        x.grad = None
        value = loss(x, y)
        value.backward()
        return value.detach()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="2,64,64,64,4", help="channels-last logits shape")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--budget-s", type=float, default=120.0)
    parser.add_argument("--out", default="bench/results/distance_losses.md")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    classes = shape[-1]

    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=shape).astype(np.float32)
    labels = blob_labels(shape[:-1], classes)
    logits_cf = np.ascontiguousarray(np.moveaxis(logits, -1, 1))
    x, y = jnp.asarray(logits), jnp.asarray(labels)

    cases = [
        ("boundary_loss", jaxseg.boundary_loss, "BoundaryLoss", {}),
        ("hausdorff_dt_loss", jaxseg.hausdorff_dt_loss, "HausdorffDTLoss", {}),
    ]
    prepared = []
    for name, fn, monai_name, options in cases:
        prepared.append(timing.prepare_jax(name, "jaxseg", functools.partial(fn, **options), x, y))
        step = monai_step(monai_name, logits_cf, labels, **options)
        prepared.append(timing.Prepared(name, "MONAI", "torch", "SciPy EDT on the host", step))
    for item in prepared:
        timing.warm_up(item, calls=3, min_sample_s=0.05)
    timing.plan_samples(prepared, args.repeats, args.budget_s, min_samples=3)
    timing.run_interleaved(prepared, args.repeats)

    logits_bytes = int(np.prod(shape)) * 4
    device = jax.devices()[0]
    lines = [
        "# Distance-map losses: jaxseg (EDT on the device) vs MONAI 1.6.1 (SciPy on the host)",
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: {platform.machine()}, "
        f"JAX {jax.__version__} on {device.platform} ({device.device_kind}); MONAI on the "
        "CPU (torch float32). Workload: logits "
        f"{shape} float32 (channels last), integer blob labels, softmax, one "
        "forward+backward pass. Command: `python -m bench.distance_losses "
        f"--shape {args.shape} --repeats {args.repeats}`.",
        "",
        "| loss | implementation | median ms | IQR ms | samples | jaxseg / MONAI | "
        "compile s | XLA temp MiB (x logits) | loss value |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_group: dict[str, dict[str, timing.Prepared]] = {}
    for item in prepared:
        by_group.setdefault(item.group, {})[item.name] = item
    for group, items in by_group.items():
        medians = {k: timing.summarize(v.samples)["median_s"] for k, v in items.items()}
        for name, item in items.items():
            stats = timing.summarize(item.samples)
            ratio = f"{medians['jaxseg'] / medians['MONAI']:.2f}" if name == "jaxseg" else ""
            compile_s = f"{item.compile_s:.1f}" if item.compile_s is not None else ""
            temp = ""
            if item.memory and "temp_size_in_bytes" in item.memory:
                t = item.memory["temp_size_in_bytes"]
                temp = f"{t / 2**20:.1f} ({t / logits_bytes:.2f}x)"
            lines.append(
                f"| `{group}` | {name} | {1e3 * stats['median_s']:.1f} | "
                f"{1e3 * (stats['q3_s'] - stats['q1_s']):.1f} | {len(item.samples)} | {ratio} | "
                f"{compile_s} | {temp} | {item.loss_value:.6f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
