"""Peer implementations of the benchmarked losses: optax, a naive JAX seed, MONAI, smp, torch.

Every JAX peer takes `(logits, labels)` as jaxseg does: channels-last logits
`(batch, *spatial, classes)` and int32 labels `(batch, *spatial)`, and returns a
scalar. Every torch peer takes channels-first logits `(batch, classes, *spatial)`
and the labels in the layout named by its `label_layout`. The work timed is the
same for all of them: integer labels in, scalar loss and gradient out, so the
one-hot encoding that optax and the seed need is part of their time.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp

# MONAI's defaults, used by the seed so that its values are comparable.
SMOOTH = 1e-5
GAMMA = 2.0

JaxLoss = Callable[[jax.Array, jax.Array], jax.Array]


def _spatial_axes(logits: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, logits.ndim - 1))


# --- the hardware limit -----------------------------------------------------------


def exp_roofline(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """One elementwise exp over the logits: the cheapest loss-shaped fwd+bwd.

    Its gradient is exp(x) again, so forward and backward fuse into one pass that
    reads the logits once and writes a gradient of the same size: the least any
    loss over these logits can cost. `labels` is unused; it keeps the signature.
    """
    del labels
    return jnp.sum(jnp.exp(logits).astype(jnp.float32))


# --- optax ------------------------------------------------------------------------


def optax_dice(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """optax `dice_loss` on one-hot targets, averaged over the batch."""
    import optax

    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    # optax reduces over classes only and returns one value per sample.
    return jnp.mean(optax.losses.dice_loss(logits, targets, smooth=SMOOTH))


def optax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """optax `softmax_cross_entropy_with_integer_labels`, averaged over pixels."""
    import optax

    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))


def optax_dice_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """optax Dice plus optax cross-entropy: the Dice+CE a user assembles from optax."""
    return optax_dice(logits, labels) + optax_cross_entropy(logits, labels)


def optax_available() -> tuple[bool, str]:
    """Whether optax provides the two losses used here, and a note if not."""
    try:
        import optax
    except ImportError as err:
        return False, f"optax not importable: {err}"
    missing = [
        name
        for name in ("dice_loss", "softmax_cross_entropy_with_integer_labels")
        if not hasattr(optax.losses, name)
    ]
    if missing:
        return False, f"optax {optax.__version__} lacks optax.losses.{', '.join(missing)}"
    return True, ""


# --- the naive "seed" JAX version -------------------------------------------------
# What a first port from PyTorch looks like: float one-hot labels, a Python loop
# over classes, sums in the input dtype. It is the baseline jaxseg set out to beat.


def seed_dice(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample, per-class soft Dice with a Python loop over classes."""
    classes = logits.shape[-1]
    axes = _spatial_axes(logits)
    probs = jax.nn.softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(labels, classes, dtype=logits.dtype)
    losses = []
    for c in range(classes):
        p, t = probs[..., c], onehot[..., c]
        intersection = jnp.sum(p * t, axis=axes)
        denominator = jnp.sum(p, axis=axes) + jnp.sum(t, axis=axes)
        losses.append(1.0 - (2.0 * intersection + SMOOTH) / (denominator + SMOOTH))
    return jnp.mean(jnp.stack(losses, axis=-1)).astype(jnp.float32)


def seed_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy through log_softmax and a float one-hot."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return -jnp.mean(jnp.sum(onehot * logp, axis=-1)).astype(jnp.float32)


def seed_focal(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax focal loss, -(1 - p_t)^gamma log p_t, through a float one-hot."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    logp_t = jnp.sum(onehot * logp, axis=-1)
    return -jnp.mean((1.0 - jnp.exp(logp_t)) ** GAMMA * logp_t).astype(jnp.float32)


def seed_dice_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Seed Dice plus seed cross-entropy."""
    return seed_dice(logits, labels) + seed_cross_entropy(logits, labels)


def seed_dice_focal(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Seed Dice plus seed softmax focal loss."""
    return seed_dice(logits, labels) + seed_focal(logits, labels)


def seed_lovasz_softmax(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Lovász-softmax over the whole batch, classes present in the label (Berman 2018).

    A direct port of the reference PyTorch code: one full sort per class in a
    Python loop; absent classes are masked out of the mean instead of skipped,
    since a value-dependent `continue` cannot run under `jit`.
    """
    classes = logits.shape[-1]
    probs = jax.nn.softmax(logits, axis=-1).reshape(-1, classes)
    flat_labels = labels.reshape(-1)
    losses, present = [], []
    for c in range(classes):
        fg = (flat_labels == c).astype(probs.dtype)
        errors = jnp.abs(fg - probs[:, c])
        order = jnp.argsort(-errors)
        errors_sorted, fg_sorted = errors[order], fg[order]
        gts = jnp.sum(fg_sorted)
        intersection = gts - jnp.cumsum(fg_sorted)
        union = gts + jnp.cumsum(1.0 - fg_sorted)
        jaccard = 1.0 - intersection / union
        grad = jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(jnp.dot(errors_sorted, grad))
        present.append(gts > 0)
    losses_arr = jnp.stack(losses).astype(jnp.float32)
    present_arr = jnp.stack(present)
    return jnp.sum(jnp.where(present_arr, losses_arr, 0.0)) / jnp.maximum(jnp.sum(present_arr), 1)


# --- torch peers ------------------------------------------------------------------

TorchLoss = Callable[..., object]


def load_smp_losses() -> types.ModuleType:
    """Import `segmentation_models_pytorch.losses` without its package `__init__`.

    smp's top-level `__init__` imports its model zoo and torchvision, which the
    bench does not need (and which is not installed); the losses subpackage only
    needs torch. A stub parent module with the right `__path__` lets Python find
    the subpackage without running the parent's `__init__`.
    """
    name = "segmentation_models_pytorch"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError(f"{name} is not installed")
        stub = types.ModuleType(name)
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = stub
    return importlib.import_module(f"{name}.losses")


def torch_peers() -> tuple[dict[str, list[tuple[str, TorchLoss, str, str]]], list[str]]:
    """Torch peers per loss group, and notes on the ones that could not be loaded.

    Each entry is `(name, loss_module, label_layout, note)`; `label_layout` is
    "index" for `(batch, *spatial)` int64 labels or "channel" for MONAI's
    `(batch, 1, *spatial)`.
    """
    import torch.nn.functional as F

    peers: dict[str, list[tuple[str, TorchLoss, str, str]]] = {}
    notes: list[str] = []

    def add(group: str, name: str, loss: TorchLoss, layout: str, note: str = "") -> None:
        peers.setdefault(group, []).append((name, loss, layout, note))

    add("cross_entropy", "torch F.cross_entropy", F.cross_entropy, "index")

    try:
        from monai import losses as monai_losses

        onehot = {"to_onehot_y": True}
        add("dice_loss", "MONAI DiceLoss", monai_losses.DiceLoss(softmax=True, **onehot), "channel")
        add(
            "dice_ce",
            "MONAI DiceCELoss",
            monai_losses.DiceCELoss(softmax=True, **onehot),
            "channel",
        )
        add(
            "dice_focal",
            "MONAI DiceFocalLoss",
            monai_losses.DiceFocalLoss(softmax=True, **onehot),
            "channel",
            "focal term is sigmoid per channel",
        )
        add(
            "focal_loss",
            "MONAI FocalLoss",
            monai_losses.FocalLoss(use_softmax=True, **onehot),
            "channel",
            "mean over pixels and classes: 1/C of the per-pixel mean",
        )
    except Exception as err:  # any import failure only drops the peer
        notes.append(f"MONAI skipped: {type(err).__name__}: {err}")

    try:
        smp = load_smp_losses()
        add(
            "dice_loss",
            "smp DiceLoss",
            smp.DiceLoss("multiclass", from_logits=True),
            "index",
            "batch Dice (sums over the batch)",
        )
        add(
            "focal_loss",
            "smp FocalLoss",
            smp.FocalLoss("multiclass"),
            "index",
            "one-vs-rest sigmoid focal, loop over classes",
        )
        add("lovasz_softmax_loss", "smp LovaszLoss", smp.LovaszLoss("multiclass"), "index")
    except Exception as err:
        notes.append(f"smp skipped: {type(err).__name__}: {err}")
    return peers, notes


def jax_peers() -> tuple[dict[str, list[tuple[str, JaxLoss, str]]], list[str]]:
    """JAX peers per loss group as `(name, loss, note)`, and notes on missing ones."""
    peers: dict[str, list[tuple[str, JaxLoss, str]]] = {
        "dice_loss": [("seed-style", seed_dice, "")],
        "dice_ce": [("seed-style", seed_dice_ce, "")],
        "dice_focal": [("seed-style", seed_dice_focal, "softmax focal")],
        "cross_entropy": [("seed-style", seed_cross_entropy, "")],
        "focal_loss": [("seed-style", seed_focal, "softmax focal")],
        "lovasz_softmax_loss": [("seed-style", seed_lovasz_softmax, "")],
    }
    notes = []
    ok, why = optax_available()
    if ok:
        peers["dice_loss"].insert(0, ("optax", optax_dice, "one-hot targets"))
        peers["dice_ce"].insert(0, ("optax", optax_dice_ce, "dice_loss + softmax CE"))
        peers["cross_entropy"].insert(0, ("optax", optax_cross_entropy, ""))
    else:
        notes.append(f"optax skipped: {why}")
    return peers, notes
