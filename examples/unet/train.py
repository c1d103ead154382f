"""Trains the U-Net on fluorescence nuclei with a jaxseg loss.

Usage::

    python -m examples.unet.train                      # dice_ce, a few minutes on 2 CPU cores
    python -m examples.unet.train --loss dice_focal --steps 1000
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m examples.unet.train --data-parallel  # batch sharded over 8 host devices
    python -m examples.unet.train --processes 2        # 2 local processes, one JAX cluster
    python -m examples.unet.train --resume             # continue from the last checkpoint
    python -m examples.unet.train --distributed        # on each host of a pod

The same code runs on CPU, GPU and TPU. With ``--data-parallel``, or with several
processes, the batch is sharded over all devices of the cluster along a ``data`` mesh
axis and the parameters are replicated; ``train_step`` stays a plain ``jit`` and XLA
inserts the cross-device reductions, so the loss and the update equal the single-device
ones up to float rounding. Each process reads its own share of every batch (grain,
``ShardByJaxProcess``) and the global batch is assembled with
``jax.make_array_from_process_local_data``. Orbax checkpoints the model, the optimizer
state, the step, the data iterator's position and the history every
``--checkpoint-every`` steps and at the end; ``--resume`` continues from the latest one
with the losses of an uninterrupted run.
"""

import argparse
import dataclasses
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
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


def create_model_and_optimizer(
    config: default.Config,
    sharding: jax.sharding.Sharding | None = None,
    *,
    num_classes: int = input_pipeline.NUM_CLASSES,
    spatial_dims: int = 2,
) -> tuple[UNet, nnx.Optimizer]:
    """A freshly initialised U-Net and its Adam optimizer (warmup, then cosine decay).

    With ``sharding`` (replicated over the cluster's mesh) every process holds the same
    global state: the initialisation runs as one program over the mesh.
    """
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
            1,
            num_classes,
            features=config.features,
            spatial_dims=spatial_dims,
            rngs=nnx.Rngs(config.seed),
        )
        return model, nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)

    # Eager initialisation compiles one small XLA program per parameter shape: over 20 s
    # on two CPU cores. One jitted program gives the same values (up to float rounding
    # in the initialisers); it runs once, so on CPU it is compiled without optimisation,
    # about 4 s against 40 s with it.
    graphdef, _ = nnx.split(nnx.eval_shape(create))
    lowered = jax.jit(lambda: nnx.state(create()), out_shardings=sharding).lower()
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


def instance_scores(predictions: jax.Array, labels: np.ndarray) -> dict[str, float]:
    """Average surface distance per class and the panoptic quality of the nuclei.

    The nuclei are the connected components (4-connected) of the interior class, which
    the boundary band separates: in the prediction and in the reference alike. PQ, SQ
    and RQ are those of these instances (one class), matched at IoU > 0.5.
    """
    num_classes = input_pipeline.NUM_CLASSES
    labels = jnp.asarray(labels)[None]
    asd = jaxseg.metrics.average_surface_distance(predictions, labels, num_classes, symmetric=True)[
        0
    ]

    def nuclei(class_map: jax.Array) -> jax.Array:
        interior = class_map == 1
        ids = jaxseg.metrics.connected_components(interior, connectivity=4).labels
        return jnp.stack([ids, interior.astype(ids.dtype)], axis=-1)

    pq = jaxseg.metrics.panoptic_quality(nuclei(predictions), nuclei(labels), num_classes=1)
    scores = {
        f"surface_distance_{name}": float(asd[c])
        for c, name in enumerate(input_pipeline.CLASS_NAMES[1:])
    }
    scores.update(panoptic_quality=float(pq.pq[0]), segmentation_quality=float(pq.sq[0]))
    scores.update(recognition_quality=float(pq.rq[0]))
    return scores


class DataParallel:
    """Places arrays for data parallelism over all devices of the cluster (a ``data`` mesh).

    With several processes each one passes its own rows of the batch, and
    ``make_array_from_process_local_data`` forms the global array: no process ever holds
    the whole batch.
    """

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        self.mesh = Mesh(np.asarray(devices or jax.devices()), ("data",))
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def replicate(self, *modules: nnx.Module) -> None:
        """Copies the state of ``modules`` (parameters, optimizer moments) to every device."""
        state = nnx.state(modules)
        nnx.update(modules, jax.tree.map(self.replicate_array, state))

    def replicate_array(self, x) -> jax.Array:
        """The same host value on every process: one replicated global array."""
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(self.replicated, x, x.shape)

    def shard_batch(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
        """Global arrays from this process's rows ``(batch / processes, ...)``."""
        size = self.mesh.size
        global_batch = arrays[0].shape[0] * jax.process_count()
        if global_batch % size:
            raise ValueError(f"batch size {global_batch} is not divisible by the {size} devices")
        return tuple(
            jax.make_array_from_process_local_data(self.batch, x, (global_batch, *x.shape[1:]))
            for x in arrays
        )


def data_parallel(config: default.Config) -> DataParallel | None:
    """The placement of a data-parallel run: with ``--data-parallel`` or several processes."""
    return DataParallel() if config.data_parallel or jax.process_count() > 1 else None


def next_batch(batches, parallel: DataParallel | None) -> tuple:
    """The next ``(images, labels)`` of ``batches``: global arrays when data-parallel."""
    batch = next(batches)
    images, labels = batch["image"], batch["labels"]
    return parallel.shard_batch(images, labels) if parallel else (images, labels)


def train_losses(config: default.Config) -> list[float]:
    """The losses of ``config.steps`` training steps, with no evaluation (for tests)."""
    parallel = data_parallel(config)
    model, optimizer = create_model_and_optimizer(config, parallel and parallel.replicated)
    train, _ = input_pipeline.load_splits()
    batches = iter(
        input_pipeline.training_loader(train, config.crop, config.batch_size, config.seed)
    )
    losses = []
    for _ in range(config.steps):
        images, labels = next_batch(batches, parallel)
        losses.append(train_step(model, optimizer, images, labels, loss=config.loss))
    return [float(x) for x in losses]


def checkpoint_manager(directory: Path, every: int) -> ocp.CheckpointManager:
    """Orbax checkpoints every ``every`` steps (two kept) in ``directory``.

    On a pod ``directory`` must be on storage that every host sees (a bucket or a
    shared file system): each process writes its shards of the state there, and its
    own data-iterator position (``process_<i>-of-<n>.json``).
    """
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=2, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


def save_checkpoint(manager, step, model, optimizer, batches, history, *, force=False) -> bool:
    """Model, optimizer (with its step), data iterator position and history at ``step``."""
    return manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(nnx.state((model, optimizer))),
            data=grain.checkpoint.CheckpointSave(batches),
            history=ocp.args.JsonSave(history),
        ),
        force=force,
    )


def restore_checkpoint(manager, model, optimizer, batches=None, step=None) -> tuple[int, dict]:
    """Loads the latest (or ``step``'s) checkpoint in place; returns the step and history."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    state = nnx.state((model, optimizer))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    items = {
        "state": ocp.args.StandardRestore(abstract),
        "history": ocp.args.JsonRestore(),
    }
    if batches is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(batches)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    nnx.update((model, optimizer), restored["state"])
    return step, restored["history"]


def train_and_evaluate(
    config: default.Config,
    out: Path,
    *,
    checkpoint_every: int = 50,
    resume: bool = False,
    stop_at: int | None = None,
) -> dict:
    """Trains, evaluates every ``config.eval_every`` steps, checkpoints, writes a figure.

    ``resume`` continues from the latest checkpoint in ``out/checkpoints``; ``stop_at``
    ends the run after that step's checkpoint, as a preemption would (for tests).
    """
    if config.loss not in LOSSES:
        raise ValueError(f"loss={config.loss!r}; expected one of {sorted(LOSSES)}")
    multiple = 2 ** (len(config.features) - 1)  # each pooling halves the size
    if config.crop % multiple:
        raise ValueError(f"crop={config.crop} must be a multiple of {multiple}")
    start = time.perf_counter()
    lead = jax.process_index() == 0
    train, validation = input_pipeline.load_splits()
    batches = iter(
        input_pipeline.training_loader(train, config.crop, config.batch_size, config.seed)
    )
    parallel = data_parallel(config)
    model, optimizer = create_model_and_optimizer(config, parallel and parallel.replicated)
    validation_images = validation.image[None, :, :, None]
    if parallel:
        validation_images = parallel.replicate_array(validation_images)
        if lead:
            print(
                f"data parallel over {parallel.mesh.size} devices in "
                f"{jax.process_count()} processes: {jax.devices()}"
            )
    manager = checkpoint_manager(out / "checkpoints", checkpoint_every)

    # "loss" is the mean training loss since the previous evaluation; "train_loss" has
    # every step; "window" the losses since the last evaluation (kept for a resume).
    history: dict[str, list] = {
        "step": [], "loss": [], "dice": [], "iou": [], "train_loss": [], "window": []
    }  # fmt: skip
    first = 1
    if resume and manager.latest_step() is not None:
        step, history = restore_checkpoint(manager, model, optimizer, batches)
        first = step + 1
        if lead:
            print(f"resumed from step {step} ({manager.directory})")
    window: list = list(history["window"])
    progress = tqdm(
        range(first, config.steps + 1),
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not lead,
        initial=first - 1,
        total=config.steps,
    )
    predictions = None
    for step in progress:
        images, labels = next_batch(batches, parallel)
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
            if lead:
                progress.write(
                    f"step {step:5d}  loss {mean_loss:.4f}  "
                    + "  ".join(
                        f"{name} dice {d:.3f} iou {i:.3f}"
                        for name, d, i in zip(
                            input_pipeline.CLASS_NAMES, scores["dice"], scores["iou"], strict=True
                        )
                    )
                )
        if step % checkpoint_every == 0 or step in (config.steps, stop_at):
            window = [float(x) for x in window]
            saved = dict(history, window=window)
            save_checkpoint(manager, step, model, optimizer, batches, saved, force=True)
        if step == stop_at:
            progress.close()
            manager.close()
            if lead:
                print(f"stopped after step {step}; checkpoint in {manager.directory}")
            return {"history": dict(history, window=[float(x) for x in window])}
    progress.close()
    manager.close()

    out.mkdir(parents=True, exist_ok=True)
    figure_path = out / "unet_nuclei.png"
    metrics_path = out / "metrics.json"
    if predictions is None:  # resumed after the last step: evaluate once
        predictions = predict(model, validation_images)
    history.pop("window", None)
    wall_time = time.perf_counter() - start
    summary = {
        "config": dataclasses.asdict(config),
        "processes": jax.process_count(),
        "devices": [str(d) for d in jax.devices()],
        "wall_time_s": wall_time,
        "final": {
            name: {"dice": history["dice"][-1][c], "iou": history["iou"][-1][c]}
            for c, name in enumerate(input_pipeline.CLASS_NAMES)
        },
        "history": history,
        "instances": instance_scores(predictions, validation.labels),
    }
    if lead:
        save_figure(figure_path, validation, np.asarray(predictions)[0], history, config)
        metrics_path.write_text(json.dumps(summary, indent=2))
        print("  ".join(f"{name} {value:.3f}" for name, value in summary["instances"].items()))
        print(f"{config.steps} steps in {wall_time:.1f} s (compilation, evaluation, outputs)")
        print(f"figure:      {figure_path}")
        print(f"checkpoints: {manager.directory}")
        print(f"metrics:     {metrics_path}")
    return summary


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


def parse_args(argv: Sequence[str] | None = None) -> tuple[default.Config, argparse.Namespace]:
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
    add_cluster_arguments(parser)
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
    return config, args


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the 2D and 3D examples: processes, checkpoints, resume."""
    parser.add_argument(
        "--processes", type=int, default=1, help="start N local processes as one JAX cluster"
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="jax.distributed.initialize() with the cluster found from the environment "
        "(TPU pods, Slurm, Open MPI): run the same command once per host",
    )
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop after this step's checkpoint, as a preemption would (then --resume)",
    )
    # Set by the launcher for each process it starts.
    parser.add_argument("--coordinator", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(module: str, argv: Sequence[str], processes: int) -> int:
    """Runs ``python -m module argv`` as ``processes`` local processes of one JAX cluster.

    Process 0 hosts the coordinator on a free port of 127.0.0.1. If one process fails,
    the others are ended (they would wait for it in a collective) and its exit status is
    returned.
    """
    argv = list(argv)
    for i, arg in enumerate(argv):  # drop "--processes N" / "--processes=N"
        if arg == "--processes":
            del argv[i : i + 2]
            break
        if arg.startswith("--processes="):
            del argv[i]
            break
    coordinator = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    children = [
        subprocess.Popen(
            [sys.executable, "-m", module, *argv, "--coordinator", coordinator,
             "--processes", str(processes), "--process-id", str(i)],
            env=env, start_new_session=True,
        )
        for i in range(processes)
    ]  # fmt: skip
    status = 0
    try:
        while any(child.poll() is None for child in children):
            failed = [child.returncode for child in children if child.poll() not in (None, 0)]
            if failed:
                status = failed[0]
                break
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return status or next((c.returncode for c in children if c.returncode), 0)


def initialize_cluster(args: argparse.Namespace) -> None:
    """Joins the JAX cluster described by the launcher's flags, or found on a pod."""
    if args.coordinator is not None:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.processes,
            process_id=args.process_id,
        )
    elif args.distributed:
        jax.distributed.initialize()


def run(module: str, argv: Sequence[str] | None, parse_args, train_and_evaluate) -> dict:
    """The command line of an example: parses ``argv``, then trains or launches.

    With ``--processes N`` (N > 1) it starts ``python -m module`` as N local processes of
    one JAX cluster (:func:`launch`) and returns the summary they wrote; otherwise this
    process joins its cluster, if any (:func:`initialize_cluster`), and returns
    ``train_and_evaluate(config, args.out, ...)``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config, args = parse_args(argv)
    if args.processes > 1 and args.coordinator is None:
        status = launch(module, argv, args.processes)
        if status:
            raise SystemExit(status)
        metrics = args.out / "metrics.json"
        return json.loads(metrics.read_text()) if metrics.exists() else {}
    initialize_cluster(args)
    return train_and_evaluate(
        config,
        args.out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        stop_at=args.stop_at,
    )


def main(argv: Sequence[str] | None = None) -> dict:
    return run("examples.unet.train", argv, parse_args, train_and_evaluate)


if __name__ == "__main__":
    main()
