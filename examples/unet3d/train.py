"""Trains a 3D U-Net on the MNI ICBM152 2009a template with ``jaxseg.dice_ce``.

Usage::

    python -m examples.unet3d.train                  # about 5 minutes on 2 idle CPU cores
    python -m examples.unet3d.train --processes 2    # 2 local processes, one JAX cluster
    python -m examples.unet3d.train --resume         # continue from the last checkpoint

Patch-based training (random ``patch``^3 cubes of 2 mm voxels from the training slabs,
left-right flips), and evaluation by sliding-window inference over the whole held-out
slab: windows of the patch size with half-patch overlap, softmax probabilities averaged
where windows overlap. The held-out slab is scored per class with Dice, the 95th
percentile Hausdorff distance (HD95, in mm) and the surface Dice at 2 mm tolerance, all
from :mod:`jaxseg.metrics`. Data, checkpoints and processes work as in
:mod:`examples.unet.train` (grain sharded by process, orbax, ``--processes``).
"""

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import jaxseg
from examples.unet import train as train2d
from examples.unet.models import UNet
from examples.unet3d import input_pipeline

CLASS_COLOURS = ("black", "tab:orange", "whitesmoke", "tab:blue")
CURVE_COLOURS = ("tab:gray", "tab:orange", "tab:olive", "tab:blue")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that decides a run; sized for two CPU cores."""

    seed: int = 0
    steps: int = 240
    batch_size: int = 4
    patch: int = 24  # a multiple of 4 (two poolings)
    learning_rate: float = 1e-2  # 3e-3 left white matter unlearnt after 240 steps
    warmup_steps: int = 20
    loss: str = "dice_ce"
    features: tuple[int, ...] = (8, 16, 32)
    eval_every: int = 80
    surface_tolerance_mm: float = 2.0
    data_parallel: bool = False


@nnx.jit
def window_probabilities(model: UNet, windows: jax.Array) -> jax.Array:
    return jax.nn.softmax(model(windows), axis=-1)


def sliding_window_predict(model, image: np.ndarray, window: int, place) -> np.ndarray:
    """Class map ``(X, Y, Z)`` of ``image``: overlapping windows, probabilities averaged."""
    corners = input_pipeline.window_corners(image.shape, window, window // 2)
    cubes = np.stack([image[tuple(slice(c, c + window) for c in corner)] for corner in corners])[
        ..., None
    ]
    probabilities = np.asarray(window_probabilities(model, place(cubes)))
    total = np.zeros((*image.shape, probabilities.shape[-1]), np.float32)
    count = np.zeros(image.shape, np.float32)
    for corner, p in zip(corners, probabilities, strict=True):
        box = tuple(slice(c, c + window) for c in corner)
        total[box] += p
        count[box] += 1
    return np.argmax(total / count[..., None], axis=-1).astype(np.int32)


def held_out_scores(prediction: np.ndarray, labels: np.ndarray, tolerance: float) -> dict:
    """Per-class Dice (all classes), HD95 and surface Dice (foreground classes), in mm."""
    p, y = jnp.asarray(prediction)[None], jnp.asarray(labels)[None]
    num_classes, spacing = input_pipeline.NUM_CLASSES, (input_pipeline.SPACING_MM,) * 3
    metrics = jaxseg.metrics
    return {
        "dice": np.asarray(metrics.dice_score(p, y, num_classes))[0].tolist(),
        "hd95_mm": np.asarray(
            metrics.hausdorff_distance(p, y, num_classes, percentile=95.0, spacing=spacing)
        )[0].tolist(),
        "surface_dice": np.asarray(
            metrics.surface_dice(p, y, num_classes, tolerance=tolerance, spacing=spacing)
        )[0].tolist(),
    }


def train_and_evaluate(
    config: Config,
    out: Path,
    *,
    checkpoint_every: int = 80,
    resume: bool = False,
    stop_at: int | None = None,
) -> dict:
    start = time.perf_counter()
    lead = jax.process_index() == 0
    volume = input_pipeline.load_volume()
    slabs, held_out = input_pipeline.split(volume, config.patch)
    batches = iter(
        input_pipeline.training_loader(slabs, config.patch, config.batch_size, config.seed)
    )
    parallel = train2d.data_parallel(config)
    model, optimizer = train2d.create_model_and_optimizer(
        config,
        parallel and parallel.replicated,
        num_classes=input_pipeline.NUM_CLASSES,
        spatial_dims=3,
    )
    place = parallel.replicate_array if parallel else jnp.asarray
    manager = train2d.checkpoint_manager(out / "checkpoints", checkpoint_every)
    history: dict[str, list] = {"step": [], "train_loss": [], "scores": []}
    first = 1
    if resume and manager.latest_step() is not None:
        step, history = train2d.restore_checkpoint(manager, model, optimizer, batches)
        first = step + 1
    losses: list = []
    progress = tqdm(
        range(first, config.steps + 1), desc="train", unit="step", disable=not lead,
        initial=first - 1, total=config.steps, dynamic_ncols=True,
    )  # fmt: skip
    prediction = None
    for step in progress:
        images, labels = train2d.next_batch(batches, parallel)
        losses.append(train2d.train_step(model, optimizer, images, labels, loss=config.loss))
        if step % config.eval_every == 0 or step == config.steps:
            prediction = sliding_window_predict(model, held_out.image, config.patch, place)
            scores = held_out_scores(prediction, held_out.labels, config.surface_tolerance_mm)
            history["step"].append(step)
            history["scores"].append(scores)
            if lead:
                progress.write(
                    f"step {step:4d}  loss {float(losses[-1]):.4f}  Dice "
                    + " ".join(f"{d:.3f}" for d in scores["dice"])
                    + "  HD95 mm " + " ".join(f"{d:.1f}" for d in scores["hd95_mm"])
                )  # fmt: skip
        if step % checkpoint_every == 0 or step in (config.steps, stop_at):
            history["train_loss"].extend(float(x) for x in losses)
            losses = []
            train2d.save_checkpoint(manager, step, model, optimizer, batches, history, force=True)
        if step == stop_at:
            manager.close()
            return {"history": history}
    progress.close()
    manager.close()
    if prediction is None:
        prediction = sliding_window_predict(model, held_out.image, config.patch, place)
    wall_time = time.perf_counter() - start
    final = history["scores"][-1]
    names = input_pipeline.CLASS_NAMES
    summary = {
        "config": dataclasses.asdict(config),
        "processes": jax.process_count(),
        "devices": [str(d) for d in jax.devices()],
        "volume_shape": list(volume.labels.shape),
        "held_out_shape": list(held_out.labels.shape),
        "wall_time_s": wall_time,
        "final": {
            name: {
                "dice": final["dice"][c],
                # HD95 and surface Dice leave the background out.
                "hd95_mm": final["hd95_mm"][c - 1] if c else None,
                "surface_dice": final["surface_dice"][c - 1] if c else None,
            }
            for c, name in enumerate(names)
        },
        "history": history,
    }
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        save_figure(out / "unet3d_mni.png", held_out, prediction, history, config)
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        print(f"{config.steps} steps in {wall_time:.1f} s (loading, compilation, evaluation)")
        for name, values in summary["final"].items():
            print(f"  {name:13s} " + "  ".join(f"{k} {v:.3f}" for k, v in values.items() if v))
        print(f"figure: {out / 'unet3d_mni.png'}; metrics: {out / 'metrics.json'}")
    return summary


def save_figure(path, held_out, prediction, history, config) -> None:
    """Axial and coronal slices of image, label and prediction; loss and Dice curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = ListedColormap(CLASS_COLOURS)
    figure = plt.figure(figsize=(14, 7), layout="constrained")
    grid = figure.add_gridspec(2, 4, width_ratios=(1, 1, 1, 1.3))
    z, y = held_out.labels.shape[2] // 2, held_out.labels.shape[1] // 2
    views = (
        ("axial", lambda a: a[:, :, z].T),
        ("coronal", lambda a: a[:, y, :].T),
    )
    for row, (view, take) in enumerate(views):
        panels = (
            (f"held-out image ({view})", held_out.image, "gray", 1),
            ("label", held_out.labels, colours, 3),
            ("prediction", prediction, colours, 3),
        )
        for col, (title, data, cmap, vmax) in enumerate(panels):
            axis = figure.add_subplot(grid[row, col])
            axis.imshow(take(data), cmap=cmap, vmin=0, vmax=vmax, origin="lower")
            axis.set_title(title)
            axis.set_axis_off()
    loss_axis = figure.add_subplot(grid[0, 3])
    losses = np.asarray(history["train_loss"])
    loss_axis.plot(np.arange(1, losses.size + 1), losses, color="tab:blue")
    loss_axis.set(xlabel="step", ylabel=f"training loss ({config.loss})", yscale="log")
    loss_axis.grid(alpha=0.3)
    dice_axis = figure.add_subplot(grid[1, 3])
    dice = np.asarray([s["dice"] for s in history["scores"]])
    for c, name in enumerate(input_pipeline.CLASS_NAMES):
        dice_axis.plot(history["step"], dice[:, c], "o-", color=CURVE_COLOURS[c], label=name)
    dice_axis.set(xlabel="step", ylabel="held-out Dice", ylim=(0, 1))
    dice_axis.grid(alpha=0.3)
    dice_axis.legend(loc="lower right")
    figure.suptitle(
        "jaxseg 3D U-Net on the MNI ICBM152 2009a template (Fonov et al. 2009, 2011), "
        f"{input_pipeline.SPACING_MM:g} mm voxels, sliding-window inference on a held-out slab"
    )
    figure.savefig(path, dpi=90)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--patch", type=int, default=defaults.patch, help="cube side, voxels")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument(
        "--features", type=int, nargs="+", default=list(defaults.features), help="per level"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/unet3d"))
    train2d.add_cluster_arguments(parser)
    parser.set_defaults(checkpoint_every=80)
    args = parser.parse_args(argv)
    multiple = 2 ** (len(args.features) - 1)
    if args.patch % multiple:
        parser.error(f"--patch {args.patch} must be a multiple of {multiple}")
    config = dataclasses.replace(
        defaults,
        steps=args.steps,
        batch_size=args.batch_size,
        patch=args.patch,
        learning_rate=args.learning_rate,
        seed=args.seed,
        eval_every=args.eval_every,
        features=tuple(args.features),
        warmup_steps=min(defaults.warmup_steps, args.steps // 2),
    )
    return config, args


def main(argv: Sequence[str] | None = None) -> dict:
    return train2d.run("examples.unet3d.train", argv, parse_args, train_and_evaluate)


if __name__ == "__main__":
    main()
