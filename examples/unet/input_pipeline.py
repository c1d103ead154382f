"""Fluorescence nuclei from the 2018 Data Science Bowl, as shipped by ``stardist``.

The ``stardist`` wheel ships one 512x512 fluorescence image of cell nuclei and its
instance mask (``stardist/data/images/img2d.tif`` and ``mask2d.tif``) from the 2018
Kaggle Data Science Bowl, the files behind ``stardist.data.test_image_nuclei_2d``. They
are read from the installed distribution without importing ``stardist`` (its import
pulls TensorFlow and friends).

The instance mask becomes three semantic classes (:func:`instances_to_classes`):
0 background, 1 nucleus interior, 2 nucleus boundary. The right quarter of the image
(columns 384:512) is held out for validation; training samples random crops with
random flips and 90-degree rotations from the rest.

Training batches come from grain (:func:`training_loader`): record ``i`` is one random
crop drawn with a generator seeded by ``(seed, i)``, the sampler gives each JAX process
its own records (``ShardByJaxProcess``), and the iterator's position is a small state
that orbax checkpoints with the model, so a resumed run sees the same batches.

References:
    Caicedo et al., "Nucleus segmentation across imaging experiments: the 2018 Data
    Science Bowl", Nature Methods 16, 1247-1253, 2019.

    Schmidt, Weigert, Broaddus and Myers, "Cell Detection with Star-convex Polygons",
    MICCAI 2018 (the ``stardist`` package).
"""

import dataclasses
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np

NUM_CLASSES = 3
CLASS_NAMES = ("background", "nucleus", "boundary")
VALIDATION_START = 384  # first column of the held-out right quarter


@dataclasses.dataclass(frozen=True)
class Split:
    """An image ``(H, W)`` float32 and its class labels ``(H, W)`` int32."""

    image: np.ndarray
    labels: np.ndarray


def package_files(package: str, names: Sequence[str], contents: str) -> list[Path]:
    """Paths of the files ``names`` inside the installed wheel of ``package``.

    Raises ``FileNotFoundError`` when the package or one of the files is missing; the
    message says that ``contents`` ships with the wheel and how to install it.
    """
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as error:
        raise FileNotFoundError(
            f"{contents} ships with the {package} wheel: pip install --no-deps {package}"
        ) from error
    paths = [Path(distribution.locate_file(name)) for name in names]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the {package} installation")
    return paths


def data_files() -> tuple[Path, Path]:
    """Paths of the image and instance mask inside the installed ``stardist`` wheel."""
    names = [f"stardist/data/images/{name}.tif" for name in ("img2d", "mask2d")]
    image, mask = package_files("stardist", names, "the demo data")
    return image, mask


def normalize(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Maps the ``low`` and ``high`` percentiles to 0 and 1 (float32, not clipped).

    Percentiles rather than min/max, as in stardist's ``normalize``: a few hot pixels
    would otherwise set the scale.
    """
    lo, hi = np.percentile(image, (low, high))
    return ((image.astype(np.float32) - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One step of 4-connected binary dilation."""
    padded = np.pad(mask, 1)
    return mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]


def instances_to_classes(instances: np.ndarray, boundary_width: int = 2) -> np.ndarray:
    """Semantic classes from an instance mask ``(H, W)`` (0 is background).

    A pixel of an instance is on its contour when one of its 4-neighbours belongs to
    background or to another instance. *Boundary* (class 2) is the band of instance
    pixels at most ``boundary_width - 1`` 4-steps from a contour pixel; the other
    instance pixels are *interior* (class 1). With the default width of 2 the boundary
    is about 6% of the pixels: a small, imbalanced class, and the one that separates
    touching nuclei once the interior is labelled by connected components. (A one-pixel
    contour, 3%, also trains, but its Dice is capped by one-pixel misalignments and
    rises slowly.) Pixels outside the image count as the same instance (edge padding),
    so crops do not invent boundaries at the image border.
    """
    if boundary_width < 1:
        raise ValueError(f"boundary_width must be >= 1, got {boundary_width}")
    padded = np.pad(instances, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    neighbours = (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:])
    foreground = instances > 0
    boundary = np.zeros(instances.shape, dtype=bool)
    for neighbour in neighbours:
        boundary |= neighbour != centre
    boundary &= foreground
    for _ in range(boundary_width - 1):
        boundary = _dilate(boundary) & foreground
    classes = foreground.astype(np.int32)
    classes[boundary] = 2
    return classes


def load_splits(validation_start: int = VALIDATION_START) -> tuple[Split, Split]:
    """The training (left) and validation (right) parts of the image."""
    import tifffile  # an example dependency, not one of jaxseg's

    image_path, mask_path = data_files()
    image = normalize(tifffile.imread(image_path))
    # Classes come from the whole mask, so the split adds no boundary of its own.
    labels = instances_to_classes(tifffile.imread(mask_path).astype(np.int64))
    train = Split(image[:, :validation_start], labels[:, :validation_start])
    validation = Split(image[:, validation_start:], labels[:, validation_start:])
    return train, validation


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """A random element of the dihedral group: flips and 90-degree rotations."""
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k), np.rot90(labels, k)
    if rng.integers(2):
        image, labels = image[:, ::-1], labels[:, ::-1]
    return image, labels


class CropIndices(grain.sources.RandomAccessDataSource):
    """Record ``i`` is the index of the ``i``-th random crop (the crop is made by a map)."""

    def __init__(self, num_records: int):
        self._num_records = num_records

    def __len__(self) -> int:
        return self._num_records

    def __getitem__(self, index: int) -> int:
        return index

    def __repr__(self) -> str:  # grain checks it when a checkpoint is restored
        return f"CropIndices(num_records={self._num_records})"


class RandomCrop(grain.transforms.RandomMap):
    """An augmented ``crop x crop`` window of ``split``; the generator comes from grain."""

    def __init__(self, split: Split, crop: int):
        height, width = split.labels.shape
        if crop > min(height, width):
            raise ValueError(f"crop={crop} exceeds the training region {height}x{width}")
        self.split, self.crop = split, crop

    def random_map(self, element: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        del element  # the crop depends on the record only through grain's seeded rng
        height, width = self.split.labels.shape
        top = int(rng.integers(height - self.crop + 1))
        left = int(rng.integers(width - self.crop + 1))
        window = np.s_[top : top + self.crop, left : left + self.crop]
        image, labels = augment(self.split.image[window], self.split.labels[window], rng)
        return {
            "image": np.ascontiguousarray(image, np.float32)[..., None],
            "labels": np.ascontiguousarray(labels, np.int32),
        }


def training_loader(
    split: Split, crop: int, batch_size: int, seed: int, num_records: int = 1 << 30
) -> grain.DataLoader:
    """This process's batches of augmented crops, deterministic from ``seed``.

    ``batch_size`` is the global batch (see :func:`random_map_loader`). Yields
    ``{"image": (b, crop, crop, 1) float32, "labels": (b, crop, crop) int32}`` with
    ``b`` the per-process batch.
    """
    return random_map_loader(RandomCrop(split, crop), batch_size, seed, num_records)


def random_map_loader(
    random_map: grain.transforms.RandomMap, batch_size: int, seed: int, num_records: int
) -> grain.DataLoader:
    """This process's batches of ``random_map``'s samples, deterministic from ``seed``.

    Record ``i`` is the index ``i`` (:class:`CropIndices`); ``random_map`` makes its
    sample with grain's generator seeded by ``(seed, i)``. ``batch_size`` is the global
    batch; each of the ``jax.process_count()`` processes reads ``batch_size /
    process_count`` records of its own shard per step (grain's ``ShardByJaxProcess``).
    """
    import jax

    processes = jax.process_count()
    if batch_size % processes:
        raise ValueError(f"batch size {batch_size} is not divisible by {processes} processes")
    sampler = grain.samplers.IndexSampler(
        num_records=num_records,
        shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
        shuffle=False,
        num_epochs=1,
        seed=seed,
    )
    return grain.DataLoader(
        data_source=CropIndices(num_records),
        sampler=sampler,
        operations=[
            random_map,
            grain.transforms.Batch(batch_size // processes, drop_remainder=True),
        ],
        worker_count=0,  # samples cost microseconds; worker processes would cost more
    )
