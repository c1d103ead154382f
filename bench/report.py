"""Machine description and the written results: markdown table, JSON of raw numbers, bar chart."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

GROUP_ORDER = (
    "roofline",
    "dice_loss",
    "dice_ce",
    "dice_focal",
    "cross_entropy",
    "focal_loss",
    "lovasz_softmax_loss",
)

# One colour per family of implementation in the chart.
FAMILY_COLOURS = {
    "jaxseg": "#1f77b4",
    "optax": "#2ca02c",
    "seed-style": "#7f7f7f",
    "MONAI": "#d62728",
    "smp": "#9467bd",
    "torch": "#ff7f0e",
    "roofline": "#000000",
}


def family(name: str) -> str:
    """The family of an implementation name ("MONAI DiceLoss" -> "MONAI")."""
    if name.startswith("exp"):
        return "roofline"
    return name.split(" ")[0]


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, falling back to `platform.processor()`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def core_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def versions() -> dict[str, str]:
    """Versions of python and of every package the bench touches."""
    found = {"python": platform.python_version()}
    for dist in ("jax", "jaxlib", "optax", "torch", "monai", "segmentation_models_pytorch"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def machine_info(torch_device: str) -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, JAX backend and device, torch device."""
    import jax

    device = jax.devices()[0]
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": core_count(),
        "os": platform.platform(),
        "jax_backend": jax.default_backend(),
        "jax_device_kind": device.device_kind,
        "jax_device_count": jax.device_count(),
        "torch_device": torch_device,
        # Other processes on the cores make every time longer and noisier.
        "load_average_1_5_15": list(os.getloadavg()),
    }
    if torch_device.startswith("cuda"):
        import torch

        info["torch_device_name"] = torch.cuda.get_device_name(0)
    return info


def machine_tag(machine: dict[str, Any]) -> str:
    """A file-name-safe tag such as `cpu-intel-xeon-processor-2c` or `gpu-nvidia-h100`."""
    if machine["jax_backend"] == "cpu":
        raw = f"cpu-{machine['cpu_model']}-{machine['cores']}c"
    else:
        raw = f"{machine['jax_backend']}-{machine['jax_device_kind']}"
    raw = re.sub(r"\(r\)|\(tm\)|cpu @.*|@.*", "", raw.lower())
    return re.sub(r"[^a-z0-9]+", "-", raw).strip("-")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:.3g}" if seconds < 1.0 else f"{seconds * 1e3:.0f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _mib(nbytes: int | None) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(row: dict[str, Any]) -> tuple[int, int]:
        group = GROUP_ORDER.index(row["group"]) if row["group"] in GROUP_ORDER else 99
        return group, 0 if row["name"] == "jaxseg" else 1

    return sorted(rows, key=key)


def workload_table(result: dict[str, Any], bandwidth: float | None) -> list[str]:
    """Markdown lines for one workload: one row per implementation."""
    lines = [
        "| loss | implementation | median ms | IQR ms | n | jaxseg / this | × exp roofline "
        "| compile s | temp MiB | temp × logits | % of stream BW | loss value | note |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in _sorted_rows(result["rows"]):
        memory = row.get("memory") or {}
        temp = memory.get("temp_size_in_bytes")
        multiple = "—" if temp is None else f"{temp / result['logits_bytes']:.2f}"
        efficiency = "—"
        if bandwidth and row.get("median_s"):
            efficiency = f"{100 * row['min_bytes'] / row['median_s'] / bandwidth:.1f}"
        compile_s = row.get("compile_s")
        value = row.get("loss_value")
        lines.append(
            f"| {row['group']} | {row['name']} | {_ms(row.get('median_s'))} "
            f"| {_ms(row.get('iqr_s'))} | {len(row['samples_s'])} "
            f"| {_ratio(row.get('jaxseg_over_this'))} "
            f"| {_ratio(row.get('over_roofline'))} "
            f"| {'—' if compile_s is None else f'{compile_s:.2f}'} | {_mib(temp)} | {multiple} "
            f"| {efficiency} | {'—' if value is None else f'{value:.5g}'} | {row['note']} |"
        )
    return lines


def summary_table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: per workload and jaxseg function, its median over each peer's."""
    lines = [
        "| workload | loss | jaxseg ms | jaxseg / peer (below 1: jaxseg faster) |",
        "|---|---|--:|---|",
    ]
    for result in results:
        rows = result["rows"]
        for group in GROUP_ORDER[1:]:
            ours = [r for r in rows if r["group"] == group and r["name"] == "jaxseg"]
            if not ours:
                continue
            peers = [r for r in rows if r["group"] == group and r["name"] != "jaxseg"]
            cells = ", ".join(f"{r['name']} {_ratio(r.get('jaxseg_over_this'))}" for r in peers)
            roof = _ratio(ours[0].get("over_roofline"))
            lines.append(
                f"| {result['workload']['title']} | {group} | {_ms(ours[0]['median_s'])} "
                f"| {cells}; exp roofline {roof} |"
            )
    if len(lines) == 2:
        lines.append("| — | — | — | no jaxseg function ran |")
    return lines


def markdown(payload: dict[str, Any]) -> str:
    """The full markdown report."""
    machine, settings = payload["machine"], payload["settings"]
    bandwidth = payload.get("bandwidth") or {}
    bw = bandwidth.get("bytes_per_s")
    version_text = ", ".join(f"{k} {v}" for k, v in payload["versions"].items())
    lines = [
        f"# jaxseg benchmark — {payload['date']}",
        "",
        f"- Machine: {machine['cpu_model']}, {machine['cores']} cores; JAX backend "
        f"`{machine['jax_backend']}` ({machine['jax_device_kind']}); torch on "
        f"`{machine['torch_device']}` with {settings['torch_threads']} threads.",
        f"- Versions: {version_text}.",
        f"- Settings: up to {settings['repeats']} interleaved rounds, a timing budget of "
        f"{settings['budget_s']:.0f} s per workload (implementations slower than their share "
        f"take part in fewer rounds, at least {settings['min_samples']}; `n` is the sample "
        f"count), up to {settings['warmup']} warm-up calls; wall time {payload['wall_s']:.0f} s, "
        f"CPU time {payload['cpu_s']:.0f} s; load average at the start "
        f"{machine['load_average_1_5_15'][0]:.1f} on {machine['cores']} cores.",
    ]
    if settings["quick"]:
        lines.append(
            "- **Quick mode**: tiny shapes, one dtype per workload in turn, XLA backend "
            "optimisation level 0, JAX peers on the first workload only. A smoke test of the "
            "bench; do not quote these numbers."
        )
    if bw:
        lines.append(
            f"- Stream bandwidth ({bandwidth['method']}, "
            f"{bandwidth['buffer_bytes'] / 2**20:.0f} MiB): {bw / 1e9:.1f} GB/s."
        )
    lines += [
        "",
        "Each time is one forward+backward pass (`jax.jit(jax.value_and_grad(f))` for JAX, "
        "`loss.backward()` for torch) from integer labels to a scalar loss and the logits' "
        "gradient, blocked until ready. Compilation is timed separately "
        "(`jit(...).lower(...).compile()`); then all implementations of a workload are warmed "
        "up and run interleaved in balanced orders (`bench.timing.balanced_orders`), in one "
        "process. Medians and interquartile ranges "
        "over the rounds. `jaxseg / this` is jaxseg's median over that row's median in the same "
        "run (below 1: jaxseg is faster). `× exp roofline` is the row's median over one fused "
        "elementwise `exp` forward+backward over the same logits. Memory is XLA's "
        "`compiled.memory_analysis()` temporary buffers (for torch on CUDA, the allocator's "
        "peak over one pass above what it held before), also as a multiple of the logits' "
        "bytes. `% of stream BW` is the least traffic of the pass (read logits and labels, "
        "write the gradient) over the time, as a share of the measured stream bandwidth. "
        "Torch peers run channels-first in float32 in every workload, bfloat16 ones "
        "included (CPU torch has no fast bfloat16 path).",
        "",
    ]
    if payload["notes"]:
        lines += ["Skipped or missing:", ""] + [f"- {n}" for n in payload["notes"]] + [""]
    lines += ["## Summary", ""] + summary_table(payload["results"]) + [""]
    for result in payload["results"]:
        lines += [f"## {result['workload']['title']}", ""]
        lines += workload_table(result, bw) + [""]
    return "\n".join(lines)


def chart(payload: dict[str, Any], path: Path) -> None:
    """A bar chart of median times, one panel per workload, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    results = payload["results"]
    if not results:
        return
    fig, axes = plt.subplots(len(results), 1, figsize=(13, 3.2 * len(results)), squeeze=False)
    for ax, result in zip(axes[:, 0], results, strict=True):
        rows = [r for r in _sorted_rows(result["rows"]) if r.get("median_s")]
        roof = [r for r in rows if r["group"] == "roofline"]
        rows = [r for r in rows if r["group"] != "roofline"]
        positions, ticks, tick_labels, x = [], [], [], 0.0
        for group in GROUP_ORDER[1:]:
            members = [r for r in rows if r["group"] == group]
            if not members:
                continue
            start = x
            for _ in members:
                positions.append(x)
                x += 1.0
            ticks.append((start + x - 1.0) / 2)
            tick_labels.append(group)
            x += 1.0
        ax.bar(
            positions,
            [r["median_s"] * 1e3 for r in rows],
            # Whiskers from the first to the third quartile: the spread the table reports.
            yerr=[
                [(r["median_s"] - r["q1_s"]) * 1e3 for r in rows],
                [(r["q3_s"] - r["median_s"]) * 1e3 for r in rows],
            ],
            color=[FAMILY_COLOURS.get(family(r["name"]), "#bcbd22") for r in rows],
        )
        if roof:
            ax.axhline(roof[0]["median_s"] * 1e3, color="black", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_ylabel("ms, fwd+bwd")
        ax.set_xticks(ticks, tick_labels)
        ax.set_title(result["workload"]["title"], fontsize=10)
    handles = [Patch(color=c, label=f) for f, c in FAMILY_COLOURS.items() if f != "roofline"]
    handles.append(Patch(color="black", label="exp roofline (dashed)"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False)
    machine = payload["machine"]
    fig.text(
        0.5,
        0.005,
        f"{payload['date']} · {machine['cpu_model']}, {machine['cores']} cores · "
        f"JAX {machine['jax_backend']} · torch {machine['torch_device']} float32",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(payload: dict[str, Any], out: Path, suffix: str = "") -> list[Path]:
    """Write `<tag>-<date><suffix>.{md,json}` and `latest<suffix>.{md,json,png}` under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{machine_tag(payload['machine'])}-{payload['date']}{suffix}"
    text = markdown(payload)
    raw = json.dumps(payload, indent=1, sort_keys=False)
    written = []
    for name, content in (
        (f"{stem}.md", text),
        (f"{stem}.json", raw),
        (f"latest{suffix}.md", text),
        (f"latest{suffix}.json", raw),
    ):
        (out / name).write_text(content + "\n")
        written.append(out / name)
    png = out / f"latest{suffix}.png"
    chart(payload, png)
    written.append(png)
    return written


def today() -> str:
    """The date in ISO form, local time."""
    return datetime.date.today().isoformat()
