"""Every jaxseg loss on one batch: value and gradient norm, under jit.

Run: ``python examples/quickstart.py`` (or ``make quickstart``).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

import jaxseg


def main() -> None:
    key_logits, key_labels = jax.random.split(jax.random.key(0))
    logits = jax.random.normal(key_logits, (4, 64, 64, 3))
    labels = jax.random.randint(key_labels, (4, 64, 64), 0, 3)
    binary_logits = logits[..., :1]
    binary_labels = (labels > 0).astype(jnp.int32)

    multiclass = {
        "dice_loss": jaxseg.dice_loss,
        "dice_loss(batch=True)": functools.partial(jaxseg.dice_loss, batch=True),
        "iou_loss": jaxseg.iou_loss,
        "tversky_loss(0.3, 0.7)": functools.partial(jaxseg.tversky_loss, alpha=0.3, beta=0.7),
        "generalized_dice_loss": jaxseg.generalized_dice_loss,
        "cross_entropy": jaxseg.cross_entropy,
        "focal_loss": jaxseg.focal_loss,
        "dice_ce": jaxseg.dice_ce,
        "dice_focal": jaxseg.dice_focal,
        "lovasz_softmax_loss": jaxseg.lovasz_softmax_loss,
    }
    binary = {
        "dice_loss(sigmoid)": functools.partial(jaxseg.dice_loss, activation="sigmoid"),
        "cross_entropy(sigmoid)": functools.partial(jaxseg.cross_entropy, activation="sigmoid"),
        "focal_loss(sigmoid)": functools.partial(jaxseg.focal_loss, activation="sigmoid"),
        "bce_log_dice": jaxseg.bce_log_dice,
        "lovasz_hinge_loss": jaxseg.lovasz_hinge_loss,
    }
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"multi-class logits {logits.shape}, binary logits {binary_logits.shape}\n")
    print(f"{'loss':<26}{'value':>10}{'|grad|':>12}{'compile+run ms':>16}")
    for table, x, y in ((multiclass, logits, labels), (binary, binary_logits, binary_labels)):
        for name, loss_fn in table.items():
            start = time.perf_counter()
            value, grad = jax.jit(jax.value_and_grad(loss_fn))(x, y)
            value.block_until_ready()
            ms = 1e3 * (time.perf_counter() - start)
            print(
                f"{name:<26}{float(value):>10.4f}{float(jnp.linalg.norm(grad)):>12.3e}{ms:>16.0f}"
            )


if __name__ == "__main__":
    main()
