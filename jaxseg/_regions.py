"""Region-based labels: integer labels to overlapping binary region masks.

nnU-Net's region-based training (and MONAI's BraTS recipe) trains one sigmoid channel
per region, a region being a set of label values: the BraTS whole tumour is every
tumour label, the tumour core drops the oedema, the enhancing tumour is one label.
Regions may overlap, so they are not classes of a softmax; the masks are dense labels
for any loss with ``activation="sigmoid"``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import _arguments, _checks

ArrayLike = jax.typing.ArrayLike


def brats_regions(et_label: int = 4) -> tuple[tuple[int, ...], ...]:
    """The BraTS regions in MONAI's channel order: tumour core, whole tumour, enhancing.

    Labels: 1 necrotic / non-enhancing core, 2 oedema, ``et_label`` the enhancing
    tumour (4 for BraTS 2018-2022, 3 for BraTS 2023), as MONAI's
    ``ConvertToMultiChannelBasedOnBratsClasses(et_label)``.

    Examples:
      >>> import jaxseg
      >>> jaxseg.brats_regions()
      ((1, 4), (1, 2, 4), (4,))
    """
    if et_label in (1, 2):
        raise ValueError(f"`et_label` cannot be 1 or 2 (core and oedema); got {et_label}.")
    return ((1, et_label), (1, 2, et_label), (et_label,))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _normalise(regions: Any) -> tuple[tuple[int, ...], ...]:
    """``regions`` as a tuple of non-empty tuples of ints (hashable: a static option)."""
    if _is_int(regions) or isinstance(regions, str) or not isinstance(regions, Sequence):
        raise ValueError(
            "`regions` must be a sequence of regions, each an int or a sequence of ints; "
            f"got {regions!r}."
        )
    out = []
    for region in regions:
        values = (region,) if _is_int(region) else region
        if (
            isinstance(values, str)
            or not isinstance(values, Sequence)
            or not values
            or not all(_is_int(v) for v in values)
        ):
            raise ValueError(
                "each region of `regions` must be an int or a non-empty sequence of ints; "
                f"got {region!r}."
            )
        out.append(tuple(int(v) for v in values))
    if not out:
        raise ValueError("`regions` must hold at least one region; got an empty sequence.")
    return tuple(out)


@functools.partial(jax.jit, static_argnames=("regions", "dtype"))
def _regions_from_labels(labels, *, regions, dtype):
    masks = [
        functools.reduce(jnp.logical_or, [labels == value for value in region])
        for region in regions
    ]
    return jnp.stack(masks, axis=-1).astype(dtype)


@_arguments.normalised
def regions_from_labels(
    labels: ArrayLike,
    regions: Sequence[int | Sequence[int]],
    *,
    dtype: Any = jnp.float32,
) -> jax.Array:
    r"""Integer labels to overlapping binary region masks, channels-last.

    .. math::
        R_{i r} = [\, l_i \in S_r \,]

    for each region ``r`` given as a set of label values :math:`S_r`. The result is a
    dense label for the sigmoid losses (``dice_loss(logits, masks,
    activation="sigmoid")``, ``cross_entropy``, ``dice_ce``, ...) with one logit channel
    per region, as nnU-Net's region-based training (its ``regions`` in
    ``dataset.json``). ``regions_from_labels(labels, brats_regions(et_label))`` equals
    MONAI ``ConvertToMultiChannelBasedOnBratsClasses(et_label)`` moved channels-last.
    Pixels to leave out of the loss (an ignore label) belong to no region: pass
    ``where=labels != ignore`` to the loss.

    Args:
      labels: integer ``(batch, *spatial)`` label map.
      regions: a sequence of regions, each an int or a sequence of ints (static).
      dtype: the dtype of the masks (float32 by default; ``bool`` for metrics).

    Returns:
      ``(batch, *spatial, len(regions))`` masks of ``dtype``.

    Examples:
      >>> import jax.numpy as jnp, jaxseg
      >>> labels = jnp.array([[0, 1, 2, 3]])
      >>> jaxseg.regions_from_labels(labels, [(1, 2, 3), (2, 3), 3], dtype=jnp.int32)
      Array([[[0, 0, 0],
              [1, 0, 0],
              [1, 1, 0],
              [1, 1, 1]]], dtype=int32)

    References:
      Isensee, Jäger, Full, Vollmuth, Maier-Hein. nnU-Net for Brain Tumor
      Segmentation. BrainLes 2020 (region-based training).
    """
    if not _checks.is_integer_labels(labels):
        raise ValueError(
            f"`labels` must be an integer label map; got dtype {jnp.result_type(labels)}."
        )
    regions = _normalise(regions)
    return _regions_from_labels(jnp.asarray(labels), regions=regions, dtype=jnp.dtype(dtype))
