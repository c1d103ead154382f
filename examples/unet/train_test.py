"""Tests of the U-Net example: data, model, a few training steps, data parallelism."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from examples.unet import input_pipeline, train
from examples.unet.models import UNet

REPO = Path(__file__).resolve().parents[2]


def test_instances_to_classes_marks_contours():
    instances = np.zeros((6, 8), np.int64)
    instances[1:5, 1:4] = 1
    instances[1:5, 4:7] = 2  # touches instance 1 along a vertical edge
    classes = input_pipeline.instances_to_classes(instances, boundary_width=1)
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 2, 2, 2, 2, 2, 2, 0],
            [0, 2, 1, 2, 2, 1, 2, 0],
            [0, 2, 1, 2, 2, 1, 2, 0],
            [0, 2, 2, 2, 2, 2, 2, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(classes, expected)


def test_boundary_width_grows_inwards():
    instances = np.zeros((7, 7), np.int64)
    instances[1:6, 1:6] = 3
    classes = input_pipeline.instances_to_classes(instances, boundary_width=2)
    expected = np.zeros((7, 7), np.int64)
    expected[1:6, 1:6] = 2
    expected[3, 3] = 1
    np.testing.assert_array_equal(classes, expected)


def test_instances_at_the_image_border_get_no_boundary_there():
    classes = input_pipeline.instances_to_classes(np.ones((3, 3), np.int64))
    np.testing.assert_array_equal(classes, np.ones((3, 3)))


def test_splits_hold_out_the_right_quarter():
    train_split, validation = input_pipeline.load_splits()
    assert train_split.image.shape == train_split.labels.shape == (512, 384)
    assert validation.image.shape == validation.labels.shape == (512, 128)
    assert train_split.image.dtype == np.float32
    assert set(np.unique(validation.labels)) == {0, 1, 2}
    boundary = np.mean(train_split.labels == 2)
    assert 0.02 < boundary < 0.1  # small and imbalanced, as documented


def test_training_loader_is_deterministic_and_augmented():
    train_split, _ = input_pipeline.load_splits()
    first = next(iter(input_pipeline.training_loader(train_split, 48, 3, seed=7)))
    again = next(iter(input_pipeline.training_loader(train_split, 48, 3, seed=7)))
    other = next(iter(input_pipeline.training_loader(train_split, 48, 3, seed=8)))
    assert first["image"].shape == (3, 48, 48, 1) and first["labels"].shape == (3, 48, 48)
    assert first["labels"].dtype == np.int32
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["labels"], again["labels"])
    assert not np.array_equal(first["image"], other["image"])


def test_the_iterator_state_restores_the_position():
    train_split, _ = input_pipeline.load_splits()
    iterator = iter(input_pipeline.training_loader(train_split, 32, 2, seed=0))
    next(iterator)
    state = iterator.get_state()
    want = next(iterator)
    resumed = iter(input_pipeline.training_loader(train_split, 32, 2, seed=0))
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], want["image"])


def test_unet_is_channels_last_and_fully_convolutional():
    # Abstract evaluation: eager initialisation would compile one program per shape.
    logits = nnx.eval_shape(
        lambda: UNet(1, 3, features=(4, 8), rngs=nnx.Rngs(0))(jnp.zeros((2, 16, 24, 1)))
    )
    assert logits.shape == (2, 16, 24, 3)


TINY = ["--batch-size", "4", "--crop", "32", "--eval-every", "15"]
RUN = ["--steps", "30", *TINY, "--checkpoint-every", "20"]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """One uninterrupted 30-step run, shared by the tests below: (summary, output dir)."""
    out = tmp_path_factory.mktemp("whole")
    return train.main([*RUN, "--out", str(out)]), out


def test_training_reduces_the_loss_and_writes_outputs(whole_run):
    # Tiny crops keep each step a few milliseconds; compiling dominates this test.
    summary, tmp_path = whole_run
    losses = summary["history"]["train_loss"]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert summary["history"]["step"] == [15, 30]

    for name in ("unet_nuclei.png", "metrics.json", "checkpoints/20", "checkpoints/30"):
        assert (tmp_path / name).exists(), name
    saved_summary = json.loads((tmp_path / "metrics.json").read_text())
    assert saved_summary["config"]["crop"] == 32
    assert set(saved_summary["final"]) == set(input_pipeline.CLASS_NAMES)

    # The checkpoint holds the trained parameters, the optimizer state and its step.
    config, _ = train.parse_args(["--steps", "30", *TINY])
    model, optimizer = train.create_model_and_optimizer(config)
    fresh = np.array(model.head.kernel[...])  # the initialisation, before the restore
    manager = train.checkpoint_manager(tmp_path / "checkpoints", 20)
    step, history = train.restore_checkpoint(manager, model, optimizer)
    assert step == 30 and int(optimizer.step[...]) == 30
    assert history["train_loss"] == losses
    assert not np.array_equal(model.head.kernel[...], fresh)
    images = jnp.zeros((1, 32, 32, 1))
    assert np.isfinite(np.asarray(model(images))).all()


def test_resume_continues_with_the_losses_of_an_uninterrupted_run(whole_run, tmp_path):
    whole = whole_run[0]["history"]["train_loss"]
    # Stopped after step 5 (between two scheduled checkpoints and before the first
    # evaluation, at step 15), then resumed to step 30.
    stopped = train.main([*RUN, "--out", str(tmp_path), "--stop-at", "5"])
    assert len(stopped["history"]["window"]) == 5
    resumed = train.main([*RUN, "--out", str(tmp_path), "--resume"])
    # Model, optimizer and data iterator come back from step 5: the same next batches,
    # the same updates, the same losses (the programs are the same, so to the bit).
    assert resumed["history"]["train_loss"] == whole, (resumed["history"]["train_loss"], whole)
    assert resumed["history"]["step"] == [15, 30]


DATA_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json
    import jax
    from examples.unet import train
    from examples.unet.configs import default

    assert jax.device_count() == 8, jax.devices()
    # Two levels of a narrow U-Net: what is compared is the sharding, not the model.
    config = dataclasses.replace(
        default.get_config(), steps=4, batch_size=8, crop=32, warmup_steps=2, features=(8, 16)
    )
    single = train.train_losses(config)
    sharded = train.train_losses(dataclasses.replace(config, data_parallel=True))
    try:
        train.DataParallel().shard_batch(jax.numpy.zeros((4, 2)))
        raise AssertionError("a batch of 4 over 8 devices must be rejected")
    except ValueError:
        pass
    print(json.dumps({"single": single, "sharded": sharded}))
    """
)


@pytest.mark.multidevice
def test_data_parallel_matches_single_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(
        [env.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
    ).strip()
    result = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    # The sharded batch reduces in another order: equal up to float32 rounding.
    np.testing.assert_allclose(losses["sharded"], losses["single"], rtol=1e-5, atol=1e-6)
