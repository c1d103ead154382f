"""Trains the U-Net on fluorescence nuclei with a jaxseg loss.

Usage::

    python -m examples.unet.train                      # dice_ce, a few minutes on 2 CPU cores
    python -m examples.unet.train --loss dice_focal --steps 1000
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m examples.unet.train --data-parallel  # batch sharded over 8 host devices

The same code runs on CPU, GPU and TPU. With ``--data-parallel`` the batch is sharded
over all local devices along a ``data`` mesh axis and the parameters are replicated;
``train_step`` stays a plain ``jit`` and XLA inserts the cross-device reductions, so
the loss and the update equal the single-device ones up to float rounding.
"""

import argparse
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

import jaxseg
from examples.unet import input_pipeline
from examples.unet.configs import default
from examples.unet.models import UNet

# Label maps and Dice curves share the class colours (background drawn grey as a curve).
CLASS_COLOURS = ("black", "tab:green", "gold")
CURVE_COLOURS = ("tab:gray", "tab:green", "goldenrod")

# The --loss choices: jaxseg losses with their defaults (softmax over the 3 classes,
# background included, per-sample Dice as in MONAI).
LOSSES: dict[str, Callable[..., jax.Array]] = {
    "dice_ce": jaxseg.dice_ce,
    "dice_focal": jaxseg.dice_focal,
    "dice": jaxseg.dice_loss,
    "ce": jaxseg.cross_entropy,
}


def create_model_and_optimizer(config: default.Config) -> tuple[UNet, nnx.Optimizer]:
    """A freshly initialised U-Net and its Adam optimizer (warmup, then cosine decay)."""
    warmup_steps = min(config.warmup_steps, config.steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(config.steps, warmup_steps + 1),  # optax counts the warmup in
        end_value=0.01 * config.learning_rate,
    )

    def create() -> tuple[UNet, nnx.Optimizer]:
        model = UNet(
            1, input_pipeline.NUM_CLASSES, features=config.features, rngs=nnx.Rngs(config.seed)
        )
        return model, nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)

    # Eager initialisation compiles one small XLA program per parameter shape: over 20 s
    # on two CPU cores. One jitted program gives the same values (up to float rounding
    # in the initialisers); it runs once, so on CPU it is compiled without optimisation,
    # about 4 s against 40 s with it.
    graphdef, _ = nnx.split(nnx.eval_shape(create))
    lowered = jax.jit(lambda: nnx.state(create())).lower()
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
    return nnx.merge(graphdef, lowered.compile(options)())


@functools.partial(nnx.jit, static_argnames="loss")
def train_step(
    model: UNet, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array, loss: str
) -> jax.Array:
    """One optimizer step on a batch; returns the loss before the update."""
    loss_fn = LOSSES[loss]

    def objective(model: UNet) -> jax.Array:
        return loss_fn(model(images), labels)

    value, grads = nnx.value_and_grad(objective)(model)
    optimizer.update(model, grads)
    return value


@nnx.jit
def predict(model: UNet, images: jax.Array) -> jax.Array:
    """Hard class maps ``(batch, H, W)``."""
    return jnp.argmax(model(images), axis=-1)


def validation_scores(predictions: jax.Array, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class Dice and IoU ``(classes,)`` of hard predictions ``(1, H, W)``.

    The held-out region is one sample, so the ``(batch, classes)`` scores have one row.
    """
    num_classes = input_pipeline.NUM_CLASSES
    labels = jnp.asarray(labels)[None]
    return {
        "dice": np.asarray(jaxseg.metrics.dice_score(predictions, labels, num_classes))[0],
        "iou": np.asarray(jaxseg.metrics.iou_score(predictions, labels, num_classes))[0],
    }


class DataParallel:
    """Places arrays for data parallelism over all local devices (a 1-D ``data`` mesh)."""

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        self.mesh = Mesh(np.asarray(devices or jax.devices()), ("data",))
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def replicate(self, *modules: nnx.Module) -> None:
        """Copies the state of ``modules`` (parameters, optimizer moments) to every device."""
        state = nnx.state(modules)
        nnx.update(modules, jax.device_put(state, self.replicated))

    def shard_batch(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
        size = self.mesh.size
        if arrays[0].shape[0] % size:
            raise ValueError(
                f"batch size {arrays[0].shape[0]} is not divisible by the {size} devices"
            )
        return tuple(jax.device_put(x, self.batch) for x in arrays)


def train_losses(config: default.Config) -> list[float]:
    """The losses of ``config.steps`` training steps, with no evaluation (for tests)."""
    model, optimizer = create_model_and_optimizer(config)
    train, _ = input_pipeline.load_splits()
    batches = input_pipeline.random_crops(train, config.crop, config.batch_size, config.seed)
    parallel = DataParallel() if config.data_parallel else None
    if parallel:
        parallel.replicate(model, optimizer)
    losses = []
    for _ in range(config.steps):
        images, labels = next(batches)
        if parallel:
            images, labels = parallel.shard_batch(images, labels)
        losses.append(train_step(model, optimizer, images, labels, loss=config.loss))
    return [float(x) for x in losses]


def train_and_evaluate(config: default.Config, out: Path) -> dict:
    """Trains, evaluates every ``config.eval_every`` steps, writes a figure and a checkpoint."""
    if config.loss not in LOSSES:
        raise ValueError(f"loss={config.loss!r}; expected one of {sorted(LOSSES)}")
    multiple = 2 ** (len(config.features) - 1)  # each pooling halves the size
    if config.crop % multiple:
        raise ValueError(f"crop={config.crop} must be a multiple of {multiple}")
    start = time.perf_counter()
    train, validation = input_pipeline.load_splits()
    batches = input_pipeline.random_crops(train, config.crop, config.batch_size, config.seed)
    model, optimizer = create_model_and_optimizer(config)
    validation_images = validation.image[None, :, :, None]
    parallel = DataParallel() if config.data_parallel else None
    if parallel:
        parallel.replicate(model, optimizer)
        validation_images = jax.device_put(validation_images, parallel.replicated)
        print(f"data parallel over {parallel.mesh.size} devices: {jax.devices()}")

    # "loss" is the mean training loss since the previous evaluation; "train_loss" has
    # every step.
    history: dict[str, list] = {"step": [], "loss": [], "dice": [], "iou": [], "train_loss": []}
    window: list[jax.Array] = []
    progress = tqdm(range(1, config.steps + 1), desc="train", unit="step", dynamic_ncols=True)
    for step in progress:
        images, labels = next(batches)
        if parallel:
            images, labels = parallel.shard_batch(images, labels)
        window.append(train_step(model, optimizer, images, labels, loss=config.loss))
        if step % 10 == 0:
            # Reading a value waits for the device; every 10 steps keeps dispatch async.
            progress.set_postfix(loss=f"{float(window[-1]):.4f}")
        if step % config.eval_every == 0 or step == config.steps:
            predictions = predict(model, validation_images)
            scores = validation_scores(predictions, validation.labels)
            window_losses = [float(x) for x in window]
            mean_loss = float(np.mean(window_losses))
            history["train_loss"].extend(window_losses)
            window = []
            history["step"].append(step)
            history["loss"].append(mean_loss)
            history["dice"].append(scores["dice"].tolist())
            history["iou"].append(scores["iou"].tolist())
            progress.write(
                f"step {step:5d}  loss {mean_loss:.4f}  "
                + "  ".join(
                    f"{name} dice {d:.3f} iou {i:.3f}"
                    for name, d, i in zip(
                        input_pipeline.CLASS_NAMES, scores["dice"], scores["iou"], strict=True
                    )
                )
            )
    progress.close()

    out.mkdir(parents=True, exist_ok=True)
    figure_path = out / "unet_nuclei.png"
    checkpoint_path = out / "params.npz"
    metrics_path = out / "metrics.json"
    save_figure(figure_path, validation, np.asarray(predictions)[0], history, config)
    save_checkpoint(checkpoint_path, model)
    wall_time = time.perf_counter() - start
    summary = {
        "config": dataclasses.asdict(config),
        "devices": [str(d) for d in jax.devices()],
        "wall_time_s": wall_time,
        "final": {
            name: {"dice": history["dice"][-1][c], "iou": history["iou"][-1][c]}
            for c, name in enumerate(input_pipeline.CLASS_NAMES)
        },
        "history": history,
    }
    metrics_path.write_text(json.dumps(summary, indent=2))
    print(f"{config.steps} steps in {wall_time:.1f} s (compilation, evaluation, outputs included)")
    print(f"figure:     {figure_path}")
    print(f"checkpoint: {checkpoint_path}")
    print(f"metrics:    {metrics_path}")
    return summary


def _flat_params(model: nnx.Module) -> dict[tuple, jax.Array]:
    return traverse_util.flatten_dict(nnx.state(model, nnx.Param).to_pure_dict())


def save_checkpoint(path: Path, model: nnx.Module) -> None:
    """Saves the parameters as a flat ``.npz``, one array per path (``encoders/0/conv1/kernel``)."""
    flat = _flat_params(model)
    np.savez(path, **{"/".join(map(str, key)): np.asarray(value) for key, value in flat.items()})


def load_checkpoint(path: Path, model: nnx.Module) -> None:
    """Loads parameters written by :func:`save_checkpoint` into ``model`` in place."""
    with np.load(path) as saved:
        flat = {key: jnp.asarray(saved["/".join(map(str, key))]) for key in _flat_params(model)}
    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, traverse_util.unflatten_dict(flat))
    nnx.update(model, params)


def save_figure(
    path: Path,
    validation: input_pipeline.Split,
    predictions: np.ndarray,
    history: dict[str, list],
    config: default.Config,
) -> None:
    """Image, label and prediction of the held-out region, and the training curves."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; also safe on headless CI
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = ListedColormap(CLASS_COLOURS)
    figure = plt.figure(figsize=(13, 6.5), layout="constrained")
    grid = figure.add_gridspec(2, 3, width_ratios=(1, 1, 1))
    panels = (
        ("held-out image", validation.image, "gray", None),
        ("label", validation.labels, colours, 2),
        ("prediction", predictions, colours, 2),
    )
    image_grid = grid[:, :2].subgridspec(1, 3)
    for i, (title, data, cmap, vmax) in enumerate(panels):
        axis = figure.add_subplot(image_grid[0, i])
        axis.imshow(data, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        axis.set_title(title)
        axis.set_axis_off()

    loss_axis = figure.add_subplot(grid[0, 2])
    losses = np.asarray(history["train_loss"])
    steps = np.arange(1, losses.size + 1)
    loss_axis.plot(steps, losses, color="tab:blue", alpha=0.3, label="per step")
    if losses.size >= 20:
        smooth = np.convolve(losses, np.ones(20) / 20, mode="valid")
        loss_axis.plot(steps[19:], smooth, color="tab:blue", label="mean of 20 steps")
    loss_axis.legend(loc="upper right")
    loss_axis.set(xlabel="step", ylabel=f"training loss ({config.loss})", yscale="log")
    loss_axis.grid(alpha=0.3)
    dice_axis = figure.add_subplot(grid[1, 2])
    dice = np.asarray(history["dice"])
    for c, name in enumerate(input_pipeline.CLASS_NAMES):
        dice_axis.plot(history["step"], dice[:, c], "o-", color=CURVE_COLOURS[c], label=name)
    dice_axis.set(xlabel="step", ylabel="validation Dice", ylim=(0, 1))
    dice_axis.grid(alpha=0.3)
    dice_axis.legend(loc="lower right")
    figure.suptitle("jaxseg U-Net on 2018 Data Science Bowl nuclei (stardist sample)")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None = None) -> tuple[default.Config, Path]:
    defaults = default.get_config()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--crop", type=int, default=defaults.crop, help="square crop side")
    parser.add_argument("--loss", choices=sorted(LOSSES), default=defaults.loss)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument(
        "--data-parallel",
        action="store_true",
        help="shard the batch over all local devices (parameters replicated)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/unet"))
    args = parser.parse_args(argv)
    config = dataclasses.replace(
        defaults,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        loss=args.loss,
        learning_rate=args.learning_rate,
        seed=args.seed,
        eval_every=args.eval_every,
        data_parallel=args.data_parallel,
    )
    return config, args.out


def main(argv: Sequence[str] | None = None) -> dict:
    config, out = parse_args(argv)
    return train_and_evaluate(config, out)


if __name__ == "__main__":
    main()
