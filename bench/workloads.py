"""Benchmark workloads: shapes, dtypes and the data every implementation sees."""

from __future__ import annotations

import dataclasses

import numpy as np

# Channels-last shapes (batch, *spatial, classes), as jaxseg takes them.
FULL_SHAPES: dict[str, tuple[int, ...]] = {
    "2d": (8, 256, 256, 4),
    "3d": (2, 96, 96, 96, 4),
    "manyclass": (4, 128, 128, 32),
}

# Small shapes of the same ranks for `--quick`: a smoke test of the whole
# pipeline, not a measurement (dispatch overhead dominates at this size). The
# many-class case keeps 8 classes: the seed's per-class Python loop is unrolled
# into the program, and its compile time grows with the class count.
QUICK_SHAPES: dict[str, tuple[int, ...]] = {
    "2d": (2, 32, 32, 4),
    "3d": (1, 16, 16, 16, 4),
    "manyclass": (2, 16, 16, 8),
}

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark case: a logits shape and the dtype the JAX implementations get."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def classes(self) -> int:
        """Number of classes (the last axis of the logits)."""
        return self.shape[-1]

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Shape of the integer labels, (batch, *spatial)."""
        return self.shape[:-1]

    @property
    def title(self) -> str:
        """Short human-readable name, e.g. `2d (8, 256, 256, 4) float32`."""
        return f"{self.name} {self.shape} {self.dtype}"

    def logits_bytes(self) -> int:
        """Bytes of the logits in the JAX dtype (the unit of the memory multiples)."""
        itemsize = 2 if self.dtype == "bfloat16" else 4
        return int(np.prod(self.shape)) * itemsize

    def label_bytes(self) -> int:
        """Bytes of the int32 labels."""
        return int(np.prod(self.label_shape)) * 4

    def data(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Float32 logits and int32 labels, identical for every implementation.

        The logits are rounded to the workload dtype and back, so that the
        float32 copies handed to torch in a bfloat16 workload hold the same values.
        """
        rng = np.random.default_rng(seed)
        logits = rng.normal(scale=2.0, size=self.shape).astype(np.float32)
        if self.dtype == "bfloat16":
            import ml_dtypes  # shipped with jaxlib

            logits = logits.astype(ml_dtypes.bfloat16).astype(np.float32)
        labels = rng.integers(0, self.classes, size=self.label_shape, dtype=np.int32)
        return logits, labels


def make_workloads(names: list[str], dtypes: list[str], quick: bool) -> list[Workload]:
    """The cross product of workload names and dtypes, in the order given.

    With `quick`, each workload runs once and the dtypes take turns (2d float32,
    3d bfloat16, many-class float32): compilation dominates a smoke test (about
    16 programs per workload), and one pass through each rank and each dtype
    covers the code.
    """
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise ValueError(f"unknown workloads {unknown}; choose from {sorted(shapes)}")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"unknown dtypes {bad}; choose from {list(DTYPES)}")
    if quick:
        return [Workload(n, shapes[n], dtypes[i % len(dtypes)]) for i, n in enumerate(names)]
    return [Workload(n, shapes[n], d) for n in names for d in dtypes]
