"""3D evaluation metrics: jaxseg against MONAI and SciPy on one volume.

    python -m bench.metrics3d                      # 64^3, writes bench/results/metrics3d.md
    python -m bench.metrics3d --size 48 --repeats 3 --out /tmp/metrics3d.md   # smoke test

Timed, each on the same blobby 3D volume (one sample, channels-last for jaxseg,
channels-first copies for MONAI):

- ``hausdorff_distance`` (HD95, 3 classes without the background): MONAI
  ``HausdorffDistanceMetric(percentile=95)`` and a SciPy reference (boundary by
  ``binary_erosion``, ``distance_transform_edt``, ``np.percentile``);
- ``connected_components`` (26-connected): ``scipy.ndimage.label``;
- ``panoptic_quality`` (instance + class channels, 3 classes): MONAI
  ``PanopticQualityMetric``.

Method: jaxseg functions are compiled ahead of time (compile time reported apart,
temporary memory from XLA's buffer assignment), every implementation is warmed up,
then calls are interleaved in balanced orders (``bench.timing.balanced_orders``) and the median of
the rounds is reported, with the spread (min-max). Every call blocks until done.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from bench import timing
from jaxseg import metrics


def make_volume(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    fields = ndimage.gaussian_filter(rng.standard_normal((4, *shape)), (0, 3, 3, 3))
    noise = ndimage.gaussian_filter(rng.standard_normal((4, *shape)), (0, 3, 3, 3))
    labels = fields.argmax(0).astype(np.int32)
    predictions = (fields + 0.4 * noise).argmax(0).astype(np.int32)
    blobs = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5) > 0.08
    noisy = blobs ^ (rng.random(shape) < 0.01)
    instance_label, _ = ndimage.label(blobs)
    instance_pred, _ = ndimage.label(noisy)
    return {
        "labels": labels[None],
        "predictions": predictions[None],
        "mask": blobs[None],
        "panoptic_label": np.stack([instance_label, labels * (instance_label > 0)], -1)[None],
        "panoptic_pred": np.stack([instance_pred, predictions * (instance_pred > 0)], -1)[None],
    }


def scipy_hd95(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = []
    for c in range(1, num_classes):
        p, y = predictions[0] == c, labels[0] == c
        edge_p = p ^ ndimage.binary_erosion(p)
        edge_y = y ^ ndimage.binary_erosion(y)
        to_y = ndimage.distance_transform_edt(~edge_y)[edge_p]
        to_p = ndimage.distance_transform_edt(~edge_p)[edge_y]
        out.append(max(np.percentile(to_y, 95), np.percentile(to_p, 95)))
    return np.array(out)


def compiled_jax(fn, *args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    try:
        temp = compiled.memory_analysis().temp_size_in_bytes
    except Exception:  # noqa: BLE001 - backends without buffer statistics
        temp = None

    def call():
        return jax.block_until_ready(compiled(*args))

    return call, compile_s, temp


def implementations(volume: dict[str, np.ndarray]) -> dict[str, list[tuple[str, object, dict]]]:
    import torch
    from monai.metrics import HausdorffDistanceMetric, PanopticQualityMetric

    torch.set_num_threads(max(1, torch.get_num_threads()))
    preds, labels = jnp.asarray(volume["predictions"]), jnp.asarray(volume["labels"])
    mask = jnp.asarray(volume["mask"])
    pan_pred, pan_label = (
        jnp.asarray(volume["panoptic_pred"]),
        jnp.asarray(volume["panoptic_label"]),
    )

    groups: dict[str, list[tuple[str, object, dict]]] = {}

    call, comp, temp = compiled_jax(
        lambda p, y: metrics.hausdorff_distance(p, y, 4, percentile=95.0), preds, labels
    )
    one_hot = lambda x: torch.nn.functional.one_hot(torch.as_tensor(x).long(), 4).movedim(-1, 1)  # noqa: E731
    tp_, ty_ = one_hot(volume["predictions"]), one_hot(volume["labels"])
    monai_hd = HausdorffDistanceMetric(include_background=False, percentile=95.0)
    groups["hausdorff_distance (HD95, 3 classes)"] = [
        ("jaxseg", call, {"compile_s": comp, "temp": temp}),
        ("MONAI HausdorffDistanceMetric", lambda: monai_hd(tp_, ty_), {}),
        (
            "SciPy EDT + np.percentile",
            lambda: scipy_hd95(volume["predictions"], volume["labels"], 4),
            {},
        ),
    ]

    call, comp, temp = compiled_jax(
        lambda m: metrics.connected_components(m, connectivity=26).labels, mask
    )
    full = ndimage.generate_binary_structure(3, 3)
    groups["connected_components (26-connected)"] = [
        ("jaxseg", call, {"compile_s": comp, "temp": temp}),
        ("scipy.ndimage.label", lambda: ndimage.label(volume["mask"][0], full), {}),
    ]

    call, comp, temp = compiled_jax(
        lambda p, y: metrics.panoptic_quality(p, y, num_classes=3).pq, pan_pred, pan_label
    )
    monai_pq = PanopticQualityMetric(num_classes=3)
    cf = lambda x: torch.as_tensor(np.moveaxis(x, -1, 1))  # noqa: E731
    mp, my = cf(volume["panoptic_pred"]), cf(volume["panoptic_label"])
    groups["panoptic_quality (3 classes)"] = [
        ("jaxseg", call, {"compile_s": comp, "temp": temp}),
        ("MONAI PanopticQualityMetric", lambda: monai_pq(mp, my), {}),
    ]
    return groups


def run(groups, repeats: int) -> dict[str, list[dict]]:
    results = {}
    for group, impls in groups.items():
        for _, fn, _ in impls:
            fn()  # warm-up
        samples = {name: [] for name, _, _ in impls}
        orders = timing.balanced_orders(len(impls))
        for round_index in range(repeats):
            for index in orders[round_index % len(orders)]:
                name, fn, _ = impls[index]
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
        results[group] = [
            {
                "name": name,
                "median_ms": 1e3 * statistics.median(samples[name]),
                "min_ms": 1e3 * min(samples[name]),
                "max_ms": 1e3 * max(samples[name]),
                **extra,
            }
            for name, _, extra in impls
        ]
    return results


def markdown(results, size: int, repeats: int, volume: dict[str, np.ndarray]) -> str:
    import monai
    import scipy
    import torch

    n_instances = int(volume["panoptic_label"][..., 0].max())
    lines = [
        f"# 3D evaluation metrics: jaxseg, MONAI, SciPy ({datetime.date.today()})",
        "",
        f"Volume {size}^3, one sample, 4 classes; {n_instances} reference instances for "
        f"panoptic quality. {repeats} interleaved rounds, median (min-max).",
        f"Machine: {platform.processor() or platform.machine()}, JAX backend "
        f"{jax.default_backend()} ({jax.devices()[0].device_kind}); jax {jax.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), MONAI "
        f"{monai.__version__}, SciPy {scipy.__version__}. Load average at the end "
        f"(1/5/15 min): {' / '.join(f'{x:.1f}' for x in os.getloadavg())} on "
        f"{os.cpu_count()} cores.",
        "",
        "| metric | implementation | median ms | min-max ms | compile s | XLA temp MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for group, rows in results.items():
        for row in rows:
            compile_s = f"{row['compile_s']:.2f}" if "compile_s" in row else ""
            temp = row.get("temp")
            temp_s = f"{temp / 2**20:.1f}" if temp is not None else ""
            lines.append(
                f"| {group} | {row['name']} | {row['median_ms']:.1f} | "
                f"{row['min_ms']:.1f}-{row['max_ms']:.1f} | {compile_s} | {temp_s} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/metrics3d.md"))
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    volume = make_volume(args.size)
    results = run(implementations(volume), args.repeats)
    text = markdown(results, args.size, args.repeats, volume)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
