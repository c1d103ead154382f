"""Class-count sweep: jaxseg's softmax losses against optax, a naive JAX focal and torch/MONAI.

Usage:
    python -m bench.run --sweep            # the full sweep (about 10 minutes on 2 cores)
    python -m bench.run --sweep --quick    # 4, 19 and 117 classes, float32, a smoke test
    make bench-sweep

Workloads: 2D logits of about 8 MiB in float32, ``(8, H, W, C)`` with ``H W C = 2**18``,
at 2, 4, 5, 8, 14, 19, 32, 64, 117 and 150 classes, and 3D ``(1, 64, 64, 64, C)`` at 14
and 117 classes; float32 and bfloat16 (torch runs in float32 only). Every implementation
is ``value_and_grad`` from integer labels. Per workload, all implementations are
compiled, warmed up, then timed in interleaved rounds (each sample at least 20 ms of
calls) in the balanced orders of :func:`bench.timing.balanced_orders`: each
implementation runs after each other one equally often and equally often in each
position. The number of rounds is the smallest multiple of the orders' number (22 for
the 11 float32 implementations, 18 for the 9 bfloat16 ones) from 30 up, fewer where a
20 s timing budget per workload would be exceeded (whole multiples where the budget
allows one, at least 3 rounds). Ratios to optax CE are of medians measured in the same
rounds, in the same process. Temporary memory is XLA's
``memory_analysis().temp_size_in_bytes``, as a multiple of the logits' bytes.

Writes ``<out>/sweep-<tag>.{md,json}`` and ``<out>/latest-sweep.{md,json,png}`` (with
``--quick``: ``-quick`` suffixes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from bench import peers, report, timing
from bench.workloads import Workload

CLASS_COUNTS = (2, 4, 5, 8, 14, 19, 32, 64, 117, 150)
CLASS_COUNTS_3D = (14, 117)
QUICK_CLASS_COUNTS = (4, 19, 117)
PIXELS_TIMES_CLASSES = 2**18  # per sample: 8 samples x 2**18 float32 = 8 MiB

JAXSEG = ("cross_entropy", "dice_loss", "dice_ce", "focal_loss", "dice_focal")
BASELINE = "optax CE"
ROUND_BUDGET_S = 20.0  # timing budget per workload, seconds


def shape_2d(classes: int) -> tuple[int, ...]:
    side = max(int(round((PIXELS_TIMES_CLASSES / classes) ** 0.5)), 1)
    return (8, side, side, classes)


def workloads(quick: bool, dtypes: list[str]) -> list[Workload]:
    counts = QUICK_CLASS_COUNTS if quick else CLASS_COUNTS
    out = [Workload(f"2d-{c}", shape_2d(c), d) for d in dtypes for c in counts]
    if not quick:
        out += [Workload(f"3d-{c}", (1, 64, 64, 64, c), d) for d in dtypes for c in CLASS_COUNTS_3D]
    return out


def implementations(workload: Workload, with_torch: bool) -> list[tuple[str, str, Any]]:
    """``(name, framework, loss)``: jaxseg's losses, the JAX peers, torch (float32 runs)."""
    import jaxseg

    impls = [("roofline", "jax", peers.exp_roofline)]
    impls += [(f"jaxseg {n}", "jax", getattr(jaxseg, n)) for n in JAXSEG]
    ok, _ = peers.optax_available()
    if ok:
        impls += [(BASELINE, "jax", peers.optax_cross_entropy)]
        impls += [("optax Dice", "jax", peers.optax_dice)]
    impls += [("naive JAX focal", "jax", peers.seed_focal)]
    if with_torch and workload.dtype == "float32":
        import torch.nn.functional as F

        impls += [("torch CE", "torch", (F.cross_entropy, "index"))]
        try:
            from monai import losses as monai_losses

            impls += [
                (
                    "MONAI DiceCE",
                    "torch",
                    (monai_losses.DiceCELoss(softmax=True, to_onehot_y=True), "channel"),
                )
            ]
        except Exception:  # MONAI is optional for the bench
            pass
    return impls


def _round_count(requested: int, design: int, per_round_s: float) -> int:
    """Rounds: a multiple of the balanced orders' number ``design``, within the budget.

    The smallest multiple from ``requested`` up; where the budget does not allow it,
    the most whole multiples that fit, else as many rounds as fit (at least 3).
    """
    wanted = -(-requested // design) * design
    fit = int(ROUND_BUDGET_S // max(per_round_s, 1e-9))
    if fit >= wanted:
        return wanted
    whole = fit // design * design
    return whole if whole else max(fit, 3)


def bench_one(workload: Workload, rounds: int, with_torch: bool) -> dict[str, Any]:
    logits_np, labels_np = workload.data()
    logits = jnp.asarray(logits_np, dtype=workload.dtype)
    labels = jnp.asarray(labels_np)
    logits_cf = np.ascontiguousarray(np.moveaxis(logits_np, -1, 1))
    prepared = []
    for name, framework, loss in implementations(workload, with_torch):
        if framework == "jax":
            item = timing.prepare_jax("sweep", name, loss, logits, labels)
        else:
            fn, layout = loss
            item = timing.prepare_torch("sweep", name, fn, logits_cf, labels_np, layout, "cpu")
        # Samples of at least 20 ms and 30 rounds: with 10 ms and 10 rounds two idle runs
        # of the same programs differed by up to 0.24 in a ratio at 117 classes.
        timing.warm_up(item, 2, 0.02)
        prepared.append(item)
    # A 3D workload at 117 classes takes seconds per round: the rounds are capped by a
    # time budget (at least 3), so the whole sweep stays near 10 minutes.
    per_round = sum(p.estimate_s * p.inner for p in prepared)
    rounds = _round_count(rounds, len(timing.balanced_orders(len(prepared))), per_round)
    for item in prepared:
        item.planned = rounds  # every implementation in every round
    timing.run_interleaved(prepared, rounds)
    medians = {p.name: float(np.median(p.samples)) for p in prepared}
    base = medians.get(BASELINE)
    rows = []
    for p in prepared:
        temp = (p.memory or {}).get("temp_size_in_bytes")
        rows.append(
            {
                "name": p.name,
                "median_ms": medians[p.name] * 1e3,
                "iqr_ms": float(np.subtract(*np.percentile(p.samples, [75, 25]))) * 1e3,
                "over_optax_ce": medians[p.name] / base if base else None,
                "temp_over_logits": None if temp is None else temp / workload.logits_bytes(),
                "loss_value": p.loss_value,
            }
        )
    return {
        "name": workload.name,
        "shape": list(workload.shape),
        "classes": workload.classes,
        "dtype": workload.dtype,
        "rounds": rounds,
        "logits_bytes": workload.logits_bytes(),
        "rows": rows,
    }


def _table(results: list[dict[str, Any]]) -> list[str]:
    names = [r["name"] for r in results[0]["rows"]] if results else []
    header = "| workload | dtype | " + " | ".join(names) + " |"
    lines = [header, "|" + "---|" * (len(names) + 2)]
    for res in results:
        cells = []
        for row in res["rows"]:
            ratio = "" if row["over_optax_ce"] is None else f" ({row['over_optax_ce']:.2f}x)"
            cells.append(f"{row['median_ms']:.2f}{ratio}")
        lines.append(
            f"| {res['name']} {tuple(res['shape'])} | {res['dtype']} | " + " | ".join(cells) + " |"
        )
    lines += ["", "XLA temporary memory / logits bytes:", "", header, lines[1]]
    for res in results:
        cells = [
            "" if row["temp_over_logits"] is None else f"{row['temp_over_logits']:.2f}"
            for row in res["rows"]
        ]
        lines.append(f"| {res['name']} | {res['dtype']} | " + " | ".join(cells) + " |")
    return lines


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9), sharex=True)
    for col, dtype in enumerate(("float32", "bfloat16")):
        chosen = [r for r in results if r["dtype"] == dtype and r["name"].startswith("2d")]
        if not chosen:
            continue
        classes = [r["classes"] for r in chosen]
        for name in [row["name"] for row in chosen[0]["rows"]]:
            ms = [
                next((x["median_ms"] for x in r["rows"] if x["name"] == name), np.nan)
                for r in chosen
            ]
            temp = [
                next((x["temp_over_logits"] for x in r["rows"] if x["name"] == name), None)
                for r in chosen
            ]
            style = "-" if name.startswith("jaxseg") else "--"
            axes[0, col].plot(classes, ms, style, marker="o", label=name)
            if all(t is not None for t in temp):
                axes[1, col].plot(classes, temp, style, marker="o", label=name)
        axes[0, col].set_title(f"2D, ~8 MiB float32-equivalent logits, {dtype}")
        axes[0, col].set_ylabel("ms, forward + backward (median)")
        axes[0, col].set_yscale("log")
        axes[1, col].set_ylabel("XLA temp memory / logits bytes")
        axes[1, col].set_xlabel("classes")
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.set_xticks(CLASS_COUNTS, [str(c) for c in CLASS_COUNTS])
            ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(quick: bool, dtypes: list[str], out: Path, with_torch: bool, rounds: int | None) -> int:
    rounds = rounds or (4 if quick else 30)
    if with_torch:
        import torch

        torch.set_num_threads(report.core_count())
    started = time.perf_counter()
    results = []
    for workload in workloads(quick, dtypes):
        t0 = time.perf_counter()
        res = bench_one(workload, rounds, with_torch)
        results.append(res)
        summary = ", ".join(
            f"{r['name']} {r['median_ms']:.1f} ms"
            + ("" if r["over_optax_ce"] is None else f" ({r['over_optax_ce']:.2f}x)")
            for r in res["rows"]
        )
        print(f"{workload.title} [{time.perf_counter() - t0:.0f} s]: {summary}", flush=True)
    payload = {
        "date": report.today(),
        "machine": report.machine_info("cpu" if with_torch else "disabled"),
        "versions": report.versions(),
        "rounds": rounds,
        "quick": quick,
        "results": results,
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time(),
    }
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if quick else ""
    text = "\n".join(
        [
            f"# Class-count sweep {payload['date']}",
            "",
            "Medians in ms of jit(value_and_grad) from integer labels; (ratio to optax CE,"
            " same rounds, same process).",
            "",
            *_table(results),
            "",
        ]
    )
    for stem in (f"sweep-{report.today()}{suffix}", f"latest-sweep{suffix}"):
        (out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
        (out / f"{stem}.md").write_text(text)
    try:
        plot(results, out / f"latest-sweep{suffix}.png")
    except ImportError:
        print("matplotlib missing: no plot")
    print(text)
    print(f"wall {payload['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(
        main("--quick" in sys.argv, ["float32", "bfloat16"], Path("bench/results"), True, None)
    )
