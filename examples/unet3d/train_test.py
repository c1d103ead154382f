"""Tests of the 3D example: template, labels, patches, windows, a short run."""

import json

import numpy as np

from examples.unet3d import input_pipeline, train


def test_tissue_classes_take_the_most_probable_tissue():
    t1 = np.array([0.0, 1.0, 1.0, 1.0, 0.05])
    gm = np.array([0.9, 0.6, 0.2, 0.1, 0.9])
    wm = np.array([0.0, 0.3, 0.7, 0.1, 0.0])
    # Outside the brain (T1 <= 10% of its maximum) is background whatever the maps say.
    np.testing.assert_array_equal(input_pipeline.tissue_classes(t1, gm, wm), [0, 1, 2, 3, 0])


def test_windows_cover_the_volume_with_half_overlap():
    corners = input_pipeline.window_corners((40, 24, 24), 24, 12)
    assert sorted({c[0] for c in corners}) == [0, 12, 16]  # the last one flush with the end
    assert {c[1] for c in corners} == {0} and len(corners) == 3
    covered = np.zeros((40, 24, 24), int)
    for c in corners:
        covered[c[0] : c[0] + 24, c[1] : c[1] + 24, c[2] : c[2] + 24] += 1
    assert covered.min() >= 1


def test_template_volume_and_held_out_slab():
    volume = input_pipeline.load_volume()
    assert all(s % 8 == 0 for s in volume.labels.shape)
    assert set(np.unique(volume.labels)) == {0, 1, 2, 3}
    slabs, held_out = input_pipeline.split(volume, patch=24)
    depth = sum(s.labels.shape[2] for s in slabs) + held_out.labels.shape[2]
    assert depth == volume.labels.shape[2] and held_out.labels.shape[2] >= 24
    # Grey and white matter both fill a good part of the held-out slab.
    fractions = np.bincount(held_out.labels.ravel(), minlength=4) / held_out.labels.size
    assert fractions[1] > 0.1 and fractions[2] > 0.1, fractions
    batch = next(iter(input_pipeline.training_loader(slabs, 16, 2, seed=0)))
    assert batch["image"].shape == (2, 16, 16, 16, 1) and batch["labels"].shape == (2, 16, 16, 16)


def test_a_short_run_writes_the_figure_and_per_class_metrics(tmp_path):
    argv = ["--steps", "4", "--batch-size", "2", "--patch", "16", "--features", "4", "8"]
    summary = train.main([*argv, "--eval-every", "4", "--out", str(tmp_path)])
    assert (tmp_path / "unet3d_mni.png").is_file() and (tmp_path / "checkpoints/4").is_dir()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert list(saved["final"]) == list(input_pipeline.CLASS_NAMES)
    for name in input_pipeline.CLASS_NAMES[1:]:
        scores = saved["final"][name]
        assert 0 <= scores["dice"] <= 1
        # A class the 4-step model never predicts has no surface: NaN, as in MONAI.
        assert np.isnan(scores["hd95_mm"]) or scores["hd95_mm"] >= 0
        assert np.isnan(scores["surface_dice"]) or 0 <= scores["surface_dice"] <= 1
    assert len(summary["history"]["train_loss"]) == 4
    assert all(np.isfinite(summary["history"]["train_loss"]))
