"""The MNI ICBM152 2009a template: a T1 brain volume with grey- and white-matter maps.

The nilearn wheel ships the symmetric ICBM152 2009a non-linear template (T1 image and
tissue probability maps, 197 x 233 x 189 voxels of 1 mm) under
``nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz``. The files are
located through ``importlib.metadata`` and read with nibabel; nilearn itself is never
imported (install it with ``pip install --no-deps nilearn``).

The volume is averaged down to 2 mm voxels and cropped to the brain (the T1 image of this
release is brain-extracted). Four classes come from the probability maps (the most
probable of): 0 background (outside the brain), 1 grey matter, 2 white matter, 3 other
brain tissue (the brain's remaining probability: cerebrospinal fluid of the ventricles
and sulci, vessels). An axial slab is held out for validation (:data:`HELD_OUT`); training
draws random patches that lie wholly in the slabs below and above it.

References:
    Fonov, Evans, McKinstry, Almli and Collins, "Unbiased nonlinear average
    age-appropriate brain templates from birth to adulthood", NeuroImage 47, S102, 2009.
    Fonov, Evans, Botteron, Almli, McKinstry, Collins and the BDCG, "Unbiased average
    age-appropriate atlases for pediatric studies", NeuroImage 54(1), 313-327, 2011.
    Collins, Zijdenbos, Baaré and Evans, "ANIMAL+INSECT: Improved Cortical Structure
    Segmentation", IPMI 1999.
    Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal
    Neurological Institute, McGill University (see the template's licence).
"""

import dataclasses
import functools
from pathlib import Path

import grain
import numpy as np

from examples.unet import input_pipeline as unet_input_pipeline

NUM_CLASSES = 4
CLASS_NAMES = ("background", "grey matter", "white matter", "other brain tissue")
SPACING_MM = 2.0
# The held-out axial slab, as fractions of the cropped height (inferior to superior):
# it crosses the ventricles, deep grey matter and cortex.
HELD_OUT = (0.40, 0.70)
_FILES = {
    kind: f"nilearn/datasets/data/mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    for kind in ("t1", "gm", "wm")
}


@dataclasses.dataclass(frozen=True)
class Volume:
    """An image ``(X, Y, Z)`` float32 in [0, 1] and its labels ``(X, Y, Z)`` int32."""

    image: np.ndarray
    labels: np.ndarray


def data_files() -> dict[str, Path]:
    """Paths of the T1 image and the grey- and white-matter maps in the nilearn wheel."""
    paths = unet_input_pipeline.package_files("nilearn", list(_FILES.values()), "the template")
    return dict(zip(_FILES, paths, strict=True))


def _downsample(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``^3 blocks (trailing voxels that do not fill a block dropped)."""
    shape = [s // factor for s in volume.shape]
    volume = volume[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    return volume.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean((1, 3, 5))


def tissue_classes(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """The most probable of background, grey matter, white matter and other brain tissue.

    ``gm`` and ``wm`` are probabilities; the brain is where the (brain-extracted) T1
    intensity exceeds 10% of its maximum, and other brain tissue takes the brain's
    remaining probability.
    """
    brain = (t1 > 0.1 * t1.max()).astype(np.float32)
    other = brain * np.clip(1 - gm - wm, 0, 1)
    probabilities = np.stack([1 - brain, gm * brain, wm * brain, other], axis=-1)
    return np.argmax(probabilities, axis=-1).astype(np.int32)


@functools.cache  # a few seconds of decompression; the arrays are not modified
def load_volume(multiple: int = 8) -> Volume:
    """The 2 mm volume cropped to the brain, each side a multiple of ``multiple``."""
    import nibabel  # an example dependency, not one of jaxseg's

    paths = data_files()
    arrays = {k: np.asarray(nibabel.load(p).dataobj, np.float32) / 255 for k, p in paths.items()}
    factor = int(SPACING_MM)
    t1, gm, wm = (_downsample(arrays[k], factor) for k in ("t1", "gm", "wm"))
    labels = tissue_classes(t1, gm, wm)
    # Crop to the brain's bounding box, grown to a multiple of `multiple` per axis.
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(np.any(labels > 0, axis=other))
        low, high = int(present[0]), int(present[-1]) + 1
        size = -(-(high - low) // multiple) * multiple
        low = max(0, min(low - (size - (high - low)) // 2, labels.shape[axis] - size))
        box.append(slice(low, low + size))
    box = tuple(box)
    image = t1[box] / max(float(t1.max()), 1e-6)
    return Volume(image.astype(np.float32), labels[box])


def split(volume: Volume, patch: int) -> tuple[list[Volume], Volume]:
    """Training slabs (below and above the held-out one) and the held-out slab.

    The held-out slab's height is rounded to a multiple of 8 (three pooling levels).
    """
    depth = volume.labels.shape[2]
    low = round(HELD_OUT[0] * depth / 8) * 8
    high = low + max(8, round((HELD_OUT[1] - HELD_OUT[0]) * depth / 8) * 8)
    slabs = [np.s_[..., :low], np.s_[..., high:]]
    train = [Volume(volume.image[s], volume.labels[s]) for s in slabs]
    train = [v for v in train if v.labels.shape[2] >= patch]
    held_out = Volume(volume.image[..., low:high], volume.labels[..., low:high])
    return train, held_out


class RandomPatch(grain.transforms.RandomMap):
    """A random ``patch``^3 cube of a random training slab, left-right flipped at random.

    Slabs are drawn in proportion to the number of patch positions they hold.
    """

    def __init__(self, slabs: list[Volume], patch: int):
        self.slabs, self.patch = slabs, patch
        positions = np.array([np.prod([s - patch + 1 for s in v.labels.shape]) for v in slabs])
        self.weights = positions / positions.sum()

    def random_map(self, element: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        del element
        volume = self.slabs[int(rng.choice(len(self.slabs), p=self.weights))]
        corner = [int(rng.integers(s - self.patch + 1)) for s in volume.labels.shape]
        window = tuple(slice(c, c + self.patch) for c in corner)
        image, labels = volume.image[window], volume.labels[window]
        if rng.integers(2):  # the template is symmetric: a left-right flip is a new sample
            image, labels = image[::-1], labels[::-1]
        return {
            "image": np.ascontiguousarray(image, np.float32)[..., None],
            "labels": np.ascontiguousarray(labels, np.int32),
        }


def training_loader(
    slabs: list[Volume], patch: int, batch_size: int, seed: int, num_records: int = 1 << 30
) -> grain.DataLoader:
    """This process's batches of patches (``batch_size`` is the global batch)."""
    return unet_input_pipeline.random_map_loader(
        RandomPatch(slabs, patch), batch_size, seed, num_records
    )


def window_corners(shape: tuple[int, ...], window: int, stride: int) -> list[tuple[int, ...]]:
    """Corners of ``window``^3 cubes with ``stride`` that cover ``shape`` (the last one
    on each axis flush with the end)."""
    axes = []
    for size in shape:
        starts = list(range(0, max(size - window, 0) + 1, stride))
        if starts[-1] + window < size:
            starts.append(size - window)
        axes.append(starts)
    return [tuple(c) for c in np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)]
