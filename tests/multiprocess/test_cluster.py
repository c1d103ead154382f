"""Losses and metrics on a batch whose shards come from two processes of one JAX cluster.

Two local processes with 4 CPU devices each form one cluster on 127.0.0.1
(``jax.distributed.initialize``); each feeds its own rows of the global batch
(``cluster_worker.py``). The losses that couple samples and the metric state, computed
over the 8 devices under ``jit`` (``Auto`` and ``Explicit`` mesh axes) and under
``shard_map`` with ``axis_name``, must equal one process on the whole batch: values and
gradients to 1e-10 in float64 and 2e-5 in float32. A process that fails or hangs fails
the test with its output; every process is ended.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("cluster_worker.py")
REPO = Path(__file__).resolve().parents[2]
NUM_PROCESSES = 2
TIMEOUT_S = 600  # about a minute on two idle cores; generous for a loaded machine
TOLERANCE = {"float32": 2e-5, "float64": 1e-10}
MODES = ("jit_auto", "jit_explicit", "shard_map")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _output(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def run_cluster(tmp_path: Path, num_processes: int = NUM_PROCESSES) -> list[dict]:
    """Runs the workers to completion; any failure or timeout ends them all and raises."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    logs = [tmp_path / f"process{i}.log" for i in range(num_processes)]
    outs = [tmp_path / f"process{i}.json" for i in range(num_processes)]
    processes = []
    try:
        for i in range(num_processes):
            with open(logs[i], "w") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, str(WORKER), str(port), str(i), str(num_processes),
                         str(outs[i])],
                        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT_S
        failed = None
        while any(p.poll() is None for p in processes):
            failed = next((i for i, p in enumerate(processes) if p.poll() not in (None, 0)), None)
            if failed is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    report = "\n".join(
        f"--- process {i} (exit {p.returncode}) ---\n{_output(logs[i])}"
        for i, p in enumerate(processes)
    )
    if failed is not None or any(p.returncode != 0 for p in processes):
        pytest.fail(f"a process of the cluster failed or hung:\n{report}")
    return [json.loads(out.read_text()) for out in outs]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_cluster(tmp_path_factory.mktemp("cluster"))


def test_the_processes_formed_one_cluster(results):
    assert sorted(r["process_index"] for r in results) == list(range(NUM_PROCESSES))
    assert all(r["device_count"] == 4 * NUM_PROCESSES for r in results)


def _close(got, want, tolerance, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance / 10, err_msg=what)


def test_losses_and_gradients_equal_one_process_on_the_whole_batch(results):
    names = sorted(results[0]["losses"])
    assert len(names) == 2 * 9, names
    for result in results:
        for name in names:
            entry = result["losses"][name]
            tolerance = TOLERANCE[name.split("/")[1]]
            (want_value, want_grads) = entry["want"]
            assert np.all(np.isfinite(want_value)) and abs(want_value) > 1e-3, (name, want_value)
            for mode in MODES:
                value, grads = entry[mode]
                _close(value, want_value, tolerance, f"{name} {mode} value")
                for g, w in zip(grads, want_grads, strict=True):
                    _close(g, w, tolerance, f"{name} {mode} gradient")


def test_metric_state_equals_one_process_on_the_whole_batch(results):
    for result in results:
        metrics = result["metrics"]
        want = metrics["want"]
        assert want["counts"]["tp"][3] > 0  # class 3 is only in the second process's rows
        for mode in MODES:
            assert metrics[mode]["counts"] == want["counts"], mode
            for name, value in want["state"].items():
                _close(metrics[mode]["state"][name], value, 1e-6, f"{mode} {name}")
