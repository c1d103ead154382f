"""Tests for jaxseg._components: connected-component labelling against scipy.ndimage.label."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg._components import _connected_components
from jaxseg.metrics import connected_components

ndimage = pytest.importorskip("scipy.ndimage")

# (spatial ndim, connectivity, rank of scipy's generate_binary_structure)
CASES = [(1, 2, 1), (2, 4, 1), (2, 8, 2), (3, 6, 1), (3, 18, 2), (3, 26, 3)]
SHAPES = {1: (57,), 2: (23, 31), 3: (9, 11, 13)}


def _scipy_labels(mask: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    structure = ndimage.generate_binary_structure(mask.ndim - 1, rank)
    out = [ndimage.label(m, structure) for m in mask]
    return np.stack([o[0] for o in out]), np.array([o[1] for o in out])


@pytest.mark.parametrize(("ndim", "connectivity", "rank"), CASES)
@pytest.mark.parametrize("density", [0.3, 0.55])
def test_same_labels_as_scipy(ndim, connectivity, rank, density):
    rng = np.random.default_rng(ndim * 100 + connectivity)
    mask = rng.random((3, *SHAPES[ndim])) < density
    result = connected_components(mask, connectivity=connectivity)
    labels, count = _scipy_labels(mask, rank)
    # Same numbering as SciPy (raster order of first pixels), hence the same partition.
    np.testing.assert_array_equal(np.asarray(result.labels), labels)
    np.testing.assert_array_equal(np.asarray(result.count), count)
    assert not np.any(np.asarray(result.overflow))


@pytest.mark.parametrize(("ndim", "connectivity", "rank"), CASES[1:])
def test_many_small_components(ndim, connectivity, rank):
    # A lattice of isolated pixels and tiny blobs: hundreds of components per sample.
    rng = np.random.default_rng(7)
    spatial = (40, 44) if ndim == 2 else (12, 14, 16)
    mask = np.zeros((2, *spatial), bool)
    lattice = tuple(slice(0, None, 3) for _ in spatial)
    mask[(slice(None), *lattice)] = rng.random(mask[(slice(None), *lattice)].shape) < 0.9
    # Diagonal touches: joined under the full connectivity only.
    mask[(slice(None), *(slice(1, None, 6) for _ in spatial))] = True
    result = connected_components(mask, connectivity=connectivity)
    labels, count = _scipy_labels(mask, rank)
    assert count.min() > 100
    np.testing.assert_array_equal(np.asarray(result.labels), labels)
    np.testing.assert_array_equal(np.asarray(result.count), count)


def test_default_connectivity_is_scipy_default():
    mask = np.eye(5, dtype=bool)[None]
    result = connected_components(mask)
    labels, count = ndimage.label(mask[0])
    np.testing.assert_array_equal(np.asarray(result.labels[0]), labels)
    assert int(result.count[0]) == count == 5


def test_cap_reports_overflow_and_keeps_first_components():
    mask = np.zeros((2, 6, 6), bool)
    mask[0, ::2, ::2] = True  # 9 isolated pixels
    mask[1, :2, :2] = True  # one component
    result = connected_components(mask, max_components=4)
    reference, _ = _scipy_labels(mask, 1)
    np.testing.assert_array_equal(np.asarray(result.count), [9, 1])
    np.testing.assert_array_equal(np.asarray(result.overflow), [True, False])
    np.testing.assert_array_equal(np.asarray(result.labels), np.where(reference > 4, 0, reference))


def test_empty_and_full_masks():
    mask = np.zeros((2, 5, 4, 3), bool)
    mask[1] = True
    result = connected_components(mask, connectivity=26)
    np.testing.assert_array_equal(np.asarray(result.count), [0, 1])
    np.testing.assert_array_equal(np.asarray(result.labels), mask.astype(np.int32))


def _serpentine(folds: int, width: int) -> np.ndarray:
    mask = np.zeros((2 * folds + 1, width), bool)
    mask[::2] = True
    for k in range(folds):
        mask[2 * k + 1, width - 1 if k % 2 == 0 else 0] = True
    return mask


def _spiral(n: int) -> np.ndarray:
    mask = np.zeros((n, n), bool)
    top, bottom, left, right = 0, n - 1, 0, n - 1
    while top <= bottom and left <= right:
        mask[top, left : right + 1] = True
        mask[top : bottom + 1, right] = True
        if bottom > top:
            mask[bottom, left : right + 1] = True
        if right > left + 1:
            mask[top + 2 : bottom + 1, left] = True
        top, bottom, left, right = top + 2, bottom - 2, left + 2, right - 2
        if top <= bottom and left >= 2:
            mask[top, left - 2 : left] = True
    return mask


@pytest.mark.parametrize(
    "mask", [_serpentine(128, 32), _serpentine(64, 64).T, _spiral(129)], ids=["h", "v", "spiral"]
)
def test_long_snakes_converge_in_few_rounds(mask):
    components, rounds = _connected_components(
        jnp.asarray(mask[None]), connectivity=4, max_components=None
    )
    labels, count = ndimage.label(mask)
    assert count == 1 and mask.sum() > 4000
    np.testing.assert_array_equal(np.asarray(components.labels[0]), labels)
    # Hooking moves whole trees: thousands of pixels long, a handful of rounds.
    assert int(rounds) <= 4


def test_jit_and_vmap():
    rng = np.random.default_rng(3)
    mask = rng.random((2, 3, 10, 12)) < 0.5
    run = jax.jit(jax.vmap(lambda m: connected_components(m, connectivity=8).labels))
    expected = np.stack([_scipy_labels(m, 2)[0] for m in mask])
    np.testing.assert_array_equal(np.asarray(run(mask)), expected)


@pytest.mark.parametrize(
    ("kwargs", "mask", "match"),
    [
        ({}, np.zeros((1, 4, 4), np.int32), "boolean"),
        ({}, np.zeros((4,), bool), "rank 2 to 4"),
        ({"connectivity": 6}, np.zeros((1, 4, 4), bool), r"\(4, 8\)"),
        ({"connectivity": 8}, np.zeros((1, 4, 4, 4), bool), r"\(6, 18, 26\)"),
        ({"max_components": 0}, np.zeros((1, 4, 4), bool), "max_components"),
    ],
)
def test_errors(kwargs, mask, match):
    with pytest.raises(ValueError, match=match):
        connected_components(mask, **kwargs)
