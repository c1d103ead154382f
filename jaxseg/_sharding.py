"""Inputs sharded on a mesh with ``Explicit`` axes (``jax.make_mesh``'s default).

With ``Explicit`` axes the sharding is part of an array's type, and an operation whose
output sharding JAX cannot infer (a reshape that merges the sharded batch axis, a
scatter or reduction over it, padding it) fails at trace time instead of being
resolved by XLA as on an ``Auto`` mesh. Kernels that need the whole array take it
through :func:`replicated`; arrays that are not explicitly sharded pass unchanged, so
``Auto`` meshes, single devices and ``shard_map`` bodies keep their plain path.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec


def mesh_axes(entry: Any) -> tuple[str, ...]:
    """The mesh axis names of one ``PartitionSpec`` entry."""
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def explicit_sharding(x: Any) -> NamedSharding | None:
    """The sharding of ``x``'s type when it names an ``Explicit`` mesh axis, else None."""
    typeof = getattr(jax, "typeof", None)  # older JAX has no sharding in types
    if typeof is None or x is None:
        return None
    sharding = getattr(typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if not spec or not any(mesh_axes(entry) for entry in spec):
        return None
    return sharding


def replicated(*arrays: Any) -> tuple[Any, ...]:
    """``arrays`` with every explicitly sharded one gathered (replicated on its mesh)."""
    out = []
    for x in arrays:
        sharding = explicit_sharding(x)
        if sharding is not None:
            x = jax.sharding.reshard(x, NamedSharding(sharding.mesh, PartitionSpec()))
        out.append(x)
    return tuple(out)
