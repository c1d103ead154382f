"""Compile, warm up and time forward+backward passes, interleaved across implementations.

Method: every JAX implementation is compiled ahead of time with
`jax.jit(jax.value_and_grad(f)).lower(...).compile()` (its compile time is
measured separately and never mixed into the run times), then every
implementation of a workload is warmed up, then the runs are interleaved: every
round runs each implementation once, in the orders of :func:`balanced_orders`
(a Williams design: over its rows every implementation runs directly after each
other one equally often, and equally often in each position of a round).
Interleaving spreads slow drifts of the machine (frequency, other tenants, page
cache) over all implementations instead of biasing whichever ran last; the
balanced orders spread what one run leaves behind for the next (caches, the
allocator's free lists, another framework's spinning threads). A rotated
round-robin does not: each implementation then follows the same one in every
round but one. Measured with it (the class-count sweep's 11 implementations,
117 classes, 44 rounds, two runs each), jaxseg's times over optax CE read
1.09 / 1.23 (`cross_entropy`) and 1.73 / 1.68 (`dice_loss`), and the exp
roofline 1.57 / 1.49, against 0.83 / 0.95, 1.30 / 1.38 and 1.09 / 1.26 in
balanced orders. Each call blocks until its results are ready.

A time budget per workload bounds the run: implementations whose calls take
seconds (Lovász sorts, smp's per-class focal loop) take part in fewer rounds,
evenly spaced, and never fewer than three.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Prepared:
    """One implementation, ready to run on one workload."""

    group: str
    name: str
    framework: str  # "jax" or "torch"
    note: str
    step: Callable[[], Any]  # one forward+backward; returns the loss as a 0-d array
    compile_s: float | None = None
    memory: dict[str, int] | None = None
    loss_value: float | None = None
    inner: int = 1  # calls per timed sample, so that a sample is long enough to time
    estimate_s: float = 0.0  # steady-state time of one call, from the warm-up
    planned: int = 0  # rounds this implementation takes part in
    samples: list[float] = dataclasses.field(default_factory=list)


def _memory_stats(compiled: Any) -> dict[str, int] | None:
    """XLA's static buffer assignment for a compiled executable, if the backend has one."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return None
    if stats is None:
        return None
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    return {f: int(getattr(stats, f)) for f in fields if hasattr(stats, f)}


def prepare_jax(
    group: str,
    name: str,
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    logits: jax.Array,
    labels: jax.Array,
    note: str = "",
    compiler_options: dict[str, Any] | None = None,
) -> Prepared:
    """Compile `value_and_grad(loss)` for these arrays and wrap one blocking call."""
    start = time.perf_counter()
    lowered = jax.jit(jax.value_and_grad(loss)).lower(logits, labels)
    compiled = lowered.compile(compiler_options) if compiler_options else lowered.compile()
    compile_s = time.perf_counter() - start

    def step() -> jax.Array:
        value, grad = compiled(logits, labels)
        jax.block_until_ready((value, grad))
        return value

    return Prepared(
        group, name, "jax", note, step, compile_s=compile_s, memory=_memory_stats(compiled)
    )


def prepare_torch(
    group: str,
    name: str,
    loss: Callable[..., Any],
    logits_cf: np.ndarray,
    labels: np.ndarray,
    label_layout: str,
    device: str,
    note: str = "",
) -> Prepared:
    """Wrap `loss(x, y).backward()` on channels-first float32 copies of the workload."""
    import torch

    x = torch.tensor(logits_cf, dtype=torch.float32, device=device, requires_grad=True)
    y = torch.tensor(labels, dtype=torch.int64, device=device)
    if label_layout == "channel":
        y = y.unsqueeze(1)
    cuda = device.startswith("cuda")

    def step() -> Any:
        x.grad = None
        value = loss(x, y)
        value.backward()
        if cuda:
            torch.cuda.synchronize()
        return value.detach()

    memory = None
    if cuda:
        # The CUDA caching allocator's peak over one pass, above what is held
        # before it: the counterpart of XLA's temporary buffers (gradient included).
        step()
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        memory = {"temp_size_in_bytes": int(torch.cuda.max_memory_allocated() - held)}
    return Prepared(group, name, "torch", note, step, memory=memory)


def warm_up(prepared: Prepared, calls: int, min_sample_s: float) -> None:
    """Run a few calls, record the loss value and a time estimate, choose calls per sample.

    The first call pays for lazy initialisation and allocation; the next ones
    estimate the steady time. A first call slower than a second already is its
    own estimate (allocation is a small part of it), and calls slower than a
    quarter second get one more call only: more would add minutes and teach nothing.
    """
    start = time.perf_counter()
    value = prepared.step()
    elapsed = time.perf_counter() - start
    # float() reads a 0-d JAX array or torch tensor on any device (CUDA included).
    prepared.loss_value = float(value)
    if elapsed < 1.0:
        elapsed = math.inf
        for index in range(max(calls - 1, 1)):
            if index > 0 and elapsed > 0.25:
                break
            start = time.perf_counter()
            prepared.step()
            elapsed = min(elapsed, time.perf_counter() - start)
    prepared.estimate_s = elapsed
    # Sub-millisecond calls are timed in batches so that timer resolution and
    # Python overhead around perf_counter stay negligible.
    prepared.inner = int(min(max(math.ceil(min_sample_s / max(elapsed, 1e-7)), 1), 100))


def plan_samples(prepared: list[Prepared], rounds: int, budget_s: float, min_samples: int) -> None:
    """Choose how many of the rounds each implementation takes part in.

    Every implementation gets an equal share of the time budget, capped at one
    sample per round and floored at `min_samples`: fast implementations run in
    every round, and a 10-second Lovász pass does not stretch the whole run.
    """
    share = budget_s / max(len(prepared), 1)
    for item in prepared:
        per_sample = item.estimate_s * item.inner
        item.planned = int(min(max(share // max(per_sample, 1e-9), min_samples), rounds))


def _runs_in_round(planned: int, rounds: int, index: int) -> bool:
    # True in exactly `planned` of the `rounds` rounds, spread evenly over them,
    # so a slow implementation's samples still span the whole timing phase.
    return (index * planned) // rounds != ((index + 1) * planned) // rounds


def balanced_orders(count: int) -> list[list[int]]:
    """Orders of ``count`` implementations in which each follows each other equally often.

    A Williams design (Williams 1949, balanced for first-order carry-over): the first
    row is ``0, 1, n-1, 2, n-2, ...``, row ``r`` adds ``r`` modulo ``n``; for an odd
    ``n`` the rows' reverses follow. Over the ``n`` rows (``2 n`` for odd ``n``) every
    implementation runs directly after every other one exactly once (twice), and
    once (twice) in each position. Rounds cycle through the rows, so the balance is
    exact when the number of rounds is a multiple of their number.

    Example: ``balanced_orders(4)`` is ``[[0, 1, 3, 2], [1, 2, 0, 3], [2, 3, 1, 0],
    [3, 0, 2, 1]]``.

    Reference: E. J. Williams, Experimental designs balanced for the estimation of
    residual effects of treatments. Australian Journal of Scientific Research A 2
    (1949) 149-168.
    """
    if count == 0:
        return []
    first, low, high = [0], 1, count - 1
    for position in range(1, count):
        if position % 2:
            first.append(low)
            low += 1
        else:
            first.append(high)
            high -= 1
    rows = [[(item + shift) % count for item in first] for shift in range(count)]
    if count % 2:
        rows += [row[::-1] for row in rows]
    return rows


def run_interleaved(prepared: list[Prepared], rounds: int) -> None:
    """Append per-call times to each implementation's samples, in balanced orders."""
    orders = balanced_orders(len(prepared))
    for round_index in range(rounds if orders else 0):
        # Collect between rounds, never inside a timed sample.
        gc.collect()
        gc.disable()
        try:
            for index in orders[round_index % len(orders)]:
                item = prepared[index]
                if not _runs_in_round(item.planned, rounds, round_index):
                    continue
                start = time.perf_counter()
                for _ in range(item.inner):
                    item.step()
                item.samples.append((time.perf_counter() - start) / item.inner)
        finally:
            gc.enable()


def summarize(samples: list[float]) -> dict[str, float]:
    """Median, quartiles and IQR of a list of times in seconds."""
    q1, median, q3 = np.percentile(np.asarray(samples), [25, 50, 75])
    return {
        "median_s": float(median),
        "q1_s": float(q1),
        "q3_s": float(q3),
        "iqr_s": float(q3 - q1),
    }


def measure_bandwidth(quick: bool = False) -> dict[str, float | str]:
    """Device memory bandwidth from a large device-to-device streaming copy.

    `y = x + 1` over a buffer much larger than any cache reads and writes every
    byte once (a plain copy would be forwarded or aliased by JAX). The best of
    several runs is taken: the aim is the attainable peak, the roofline.
    """
    backend = jax.default_backend()
    # 1 GiB saturates HBM on a GPU or TPU; on a CPU 256 MiB already dwarfs the caches.
    nbytes = (1 << 30) if backend in ("gpu", "cuda", "rocm", "tpu") else (256 << 20)
    if quick:
        nbytes //= 4
    x = jnp.zeros((nbytes // 4,), jnp.float32)
    stream = jax.jit(lambda a: a + 1.0).lower(x).compile()
    jax.block_until_ready(stream(x))
    best = math.inf
    for _ in range(10):
        start = time.perf_counter()
        jax.block_until_ready(stream(x))
        best = min(best, time.perf_counter() - start)
    del x
    moved = 2 * nbytes
    return {
        "method": "jit(x + 1) over float32, read + write, best of 10",
        "buffer_bytes": nbytes,
        "bytes_moved": moved,
        "best_s": best,
        "bytes_per_s": moved / best,
    }
