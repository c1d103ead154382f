"""Benchmark jaxseg's losses against optax, a naive JAX seed, MONAI, smp and the exp roofline.

Usage:
    python -m bench.run                         # 3 workloads x {float32, bfloat16}
    python -m bench.run --quick                 # small shapes, smoke test (< 60 s)
    python -m bench.run --workloads 2d --dtypes float32 --repeats 30
    python -m bench.run --sweep [--quick]       # class-count sweep (bench/sweep.py)

Writes `<out>/<machine-tag>-<date>.{md,json}`, `<out>/latest.{md,json,png}`
(with `--quick`: the same names with a `-quick` suffix, so a smoke test never
overwrites real results). See `bench/timing.py` for the timing method.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Must precede the first JAX backend initialisation: on a GPU, JAX would otherwise
# grab most of the memory up front and starve the torch peers sharing the device.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import peers, report, timing  # noqa: E402
from bench.workloads import DTYPES, FULL_SHAPES, Workload, make_workloads  # noqa: E402

# jaxseg functions benchmarked, one per loss group (the group is the function's name).
JAXSEG_FUNCTIONS = (
    "dice_loss",
    "dice_ce",
    "dice_focal",
    "cross_entropy",
    "focal_loss",
    "lovasz_softmax_loss",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workloads",
        default=",".join(FULL_SHAPES),
        help=f"comma-separated subset of {','.join(FULL_SHAPES)} (default: all)",
    )
    parser.add_argument(
        "--dtypes",
        default=",".join(DTYPES),
        help="comma-separated subset of float32,bfloat16 (bfloat16 applies to JAX only)",
    )
    parser.add_argument(
        "--losses",
        default=",".join(JAXSEG_FUNCTIONS),
        help=f"comma-separated subset of {','.join(JAXSEG_FUNCTIONS)} (default: all)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved rounds per workload, the most samples per implementation "
        "(default: 15, 3 with --quick)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="timing budget per workload in seconds, shared equally by the implementations; "
        "slow ones get fewer samples, at least --min-samples (default: 30, 2 with --quick)",
    )
    parser.add_argument(
        "--min-samples", type=int, default=3, help="fewest samples per implementation"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up calls per implementation (default: 3, 2 with --quick)",
    )
    parser.add_argument(
        "--min-sample-ms",
        type=float,
        default=None,
        help="shorter calls are repeated within one timed sample (default: 20, 0 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, a smoke test")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="the class-count sweep of the softmax losses (bench/sweep.py) instead",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the torch peers")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="output folder (default: bench/results)",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 15
    if args.budget_s is None:
        args.budget_s = 2.0 if args.quick else 30.0
    if args.warmup is None:
        args.warmup = 2 if args.quick else 3
    args.min_samples = min(args.min_samples, args.repeats)
    if args.min_sample_ms is None:
        args.min_sample_ms = 0.0 if args.quick else 20.0
    return args


def setup_torch() -> tuple[str, int]:
    """Pick torch's device (CUDA only if available) and use every core on CPU."""
    try:
        import torch
    except ImportError:
        return "unavailable", 0
    threads = report.core_count()
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, threads


def jaxseg_functions(groups: list[str], notes: list[str]) -> dict[str, Any]:
    """The jaxseg functions that exist now; a note for each one that does not."""
    try:
        import jaxseg
    except Exception as err:  # a half-written package must not stop the bench
        notes.append(f"jaxseg not importable ({type(err).__name__}: {err}); jaxseg rows skipped")
        return {}
    found = {}
    for name in groups:
        fn = getattr(jaxseg, name, None)
        if fn is None:
            notes.append(f"jaxseg.{name} is missing; skipped")
        else:
            found[name] = fn
    return found


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160] if text else ''}"


def bench_workload(
    workload: Workload,
    groups: list[str],
    ours: dict[str, Any],
    jax_peers: dict[str, list[tuple[str, Any, str]]] | None,
    torch_peers: dict[str, list[tuple[str, Any, str, str]]],
    torch_device: str,
    args: argparse.Namespace,
    notes: list[str],
) -> dict[str, Any]:
    """Compile, warm up and time every implementation of one workload, interleaved."""
    started = time.perf_counter()
    logits_np, labels_np = workload.data()
    logits = jnp.asarray(logits_np, dtype=workload.dtype)
    labels = jnp.asarray(labels_np)
    logits_cf = np.ascontiguousarray(np.moveaxis(logits_np, -1, 1))

    # A smoke test needs programs that run, not fast ones: on CPU, the lowest XLA
    # backend optimisation level roughly halves compile time, which dominates `--quick`.
    cpu = jax.default_backend() == "cpu"
    options = {"xla_backend_optimization_level": 0} if args.quick and cpu else None

    def jax_case(group: str, name: str, fn: Any, note: str = "") -> Callable[[], timing.Prepared]:
        return lambda: timing.prepare_jax(group, name, fn, logits, labels, note, options)

    def torch_case(group: str, name: str, loss: Any, layout: str, note: str) -> Any:
        note = "; ".join(filter(None, ["float32", note]))
        return lambda: timing.prepare_torch(
            group, name, loss, logits_cf, labels_np, layout, torch_device, note
        )

    cases: list[tuple[str, Callable[[], timing.Prepared]]] = [
        ("exp roofline", jax_case("roofline", "exp fwd+bwd", peers.exp_roofline))
    ]
    for group in groups:
        if group in ours:
            cases.append((f"jaxseg.{group}", jax_case(group, "jaxseg", ours[group])))
        for name, fn, note in (jax_peers or {}).get(group, []):
            cases.append((f"{group} {name}", jax_case(group, name, fn, note)))
        for name, loss, layout, note in torch_peers.get(group, []):
            cases.append((f"{group} {name}", torch_case(group, name, loss, layout, note)))

    def skip(label: str, err: BaseException) -> None:
        notes.append(f"{workload.title}: {label} skipped ({_first_line(err)})")
        print(f"  skip {label}: {_first_line(err)}", flush=True)

    # Compiling two programs at once overlaps one's Python tracing with the other's
    # XLA compilation (which releases the GIL); it would distort the compile times,
    # so only the smoke test does it.
    workers = min(2, report.core_count()) if args.quick else 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [(label, pool.submit(build)) for label, build in cases]
    prepared: list[timing.Prepared] = []
    for label, future in futures:
        # Warm-ups run one at a time, after all compilation, on a quiet machine.
        try:
            item = future.result()
            timing.warm_up(item, args.warmup, args.min_sample_ms / 1e3)
        except Exception as err:  # one broken implementation skips one row
            skip(label, err)
            continue
        prepared.append(item)

    prepare_s = time.perf_counter() - started
    print(
        f"  {len(prepared)} implementations compiled and warmed up in {prepare_s:.0f} s; timing...",
        flush=True,
    )
    timing.plan_samples(prepared, args.repeats, args.budget_s, args.min_samples)
    timing.run_interleaved(prepared, args.repeats)
    timed_s = time.perf_counter() - started - prepare_s

    rows = []
    for item in prepared:
        row: dict[str, Any] = {
            "group": item.group,
            "name": item.name,
            "framework": item.framework,
            "note": item.note,
            "compile_s": item.compile_s,
            "memory": item.memory,
            "loss_value": item.loss_value,
            "inner": item.inner,
            "samples_s": item.samples,
            **timing.summarize(item.samples),
        }
        # Least traffic of one pass: read logits and labels once, write the gradient.
        if item.framework == "jax":
            logits_bytes, label_bytes = workload.logits_bytes(), workload.label_bytes()
        else:
            logits_bytes, label_bytes = logits_np.nbytes, 2 * workload.label_bytes()
        row["min_bytes"] = 2 * logits_bytes + (0 if item.group == "roofline" else label_bytes)
        rows.append(row)

    roofline = next((r for r in rows if r["group"] == "roofline"), None)
    for row in rows:
        mine = next((r for r in rows if r["group"] == row["group"] and r["name"] == "jaxseg"), None)
        row["jaxseg_over_this"] = (
            mine["median_s"] / row["median_s"] if mine and row["group"] != "roofline" else None
        )
        row["over_roofline"] = row["median_s"] / roofline["median_s"] if roofline else None

    return {
        "workload": {
            "name": workload.name,
            "shape": list(workload.shape),
            "dtype": workload.dtype,
            "title": workload.title,
        },
        "logits_bytes": workload.logits_bytes(),
        "prepare_s": prepare_s,
        "timing_s": timed_s,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the reports; returns the process exit code."""
    args = parse_args(argv)
    if args.sweep:
        from bench import sweep

        rounds = None if "--repeats" not in (sys.argv if argv is None else argv) else args.repeats
        dtypes = [d for d in args.dtypes.split(",") if d]
        return sweep.main(args.quick, dtypes, args.out, not args.no_torch, rounds)
    started = time.perf_counter()
    workloads = make_workloads(
        [w for w in args.workloads.split(",") if w],
        [d for d in args.dtypes.split(",") if d],
        args.quick,
    )
    groups = [g for g in args.losses.split(",") if g]
    unknown = sorted(set(groups) - set(JAXSEG_FUNCTIONS))
    if unknown:
        raise SystemExit(f"unknown loss groups {unknown}; choose from {list(JAXSEG_FUNCTIONS)}")

    notes: list[str] = []
    ours = jaxseg_functions(groups, notes)
    jax_peers, jax_notes = peers.jax_peers()
    notes += jax_notes
    torch_device, torch_threads = ("disabled", 0) if args.no_torch else setup_torch()
    torch_peers: dict[str, list[tuple[str, Any, str, str]]] = {}
    if torch_device not in ("disabled", "unavailable"):
        torch_peers, torch_notes = peers.torch_peers()
        notes += torch_notes
    elif torch_device == "unavailable":
        notes.append("torch not importable; torch peers skipped")
    for note in notes:
        print(f"note: {note}", flush=True)

    machine = report.machine_info(torch_device)
    print(
        f"JAX backend {machine['jax_backend']} ({machine['jax_device_kind']}), "
        f"torch {torch_device}, {machine['cores']} cores",
        flush=True,
    )
    bandwidth = timing.measure_bandwidth(args.quick)
    print(f"stream bandwidth {bandwidth['bytes_per_s'] / 1e9:.1f} GB/s", flush=True)

    results = []
    for workload in workloads:
        print(f"== {workload.title}", flush=True)
        # The JAX peers' code depends on neither rank, class count nor dtype: a smoke
        # test compiles them for the first workload only, since compilation is most
        # of its time. jaxseg and the roofline still run everywhere.
        skip_peers = args.quick and workload != workloads[0]
        result = bench_workload(
            workload,
            groups,
            ours,
            None if skip_peers else jax_peers,
            torch_peers,
            torch_device,
            args,
            notes,
        )
        results.append(result)
        print("\n".join(report.workload_table(result, bandwidth["bytes_per_s"])), flush=True)

    payload = {
        "date": report.today(),
        "machine": machine,
        "versions": report.versions(),
        "settings": {
            "workloads": [w.title for w in workloads],
            "repeats": args.repeats,
            "budget_s": args.budget_s,
            "min_samples": args.min_samples,
            "warmup": args.warmup,
            "min_sample_ms": args.min_sample_ms,
            "quick": args.quick,
            "torch_threads": torch_threads,
            "argv": sys.argv[1:] if argv is None else argv,
        },
        "bandwidth": bandwidth,
        "notes": notes,
        "results": results,
        "wall_s": time.perf_counter() - started,
        # CPU time of this process: next to the wall time and the load average at
        # the start, it tells whether other processes competed for the cores.
        "cpu_s": time.process_time(),
    }
    written = report.write_all(payload, args.out, suffix="-quick" if args.quick else "")
    print("\n".join(["", "## Summary", *report.summary_table(results)]))
    print(f"\nwrote {', '.join(str(p) for p in written)} in {payload['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
