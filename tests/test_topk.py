"""Tests of jaxseg._topk: top-k cross-entropy (nnU-Net v2 ``TopKLoss``).

Oracles: nnU-Net v2's ``TopKLoss`` code reproduced in torch (``cross_entropy`` with
``reduction="none"``, ``torch.topk`` of ``int(n * k / 100)`` values, their mean) on
channels-first float64 copies, values and gradients; a float64 NumPy reference (a full
sort of the valid per-pixel values); ``numpy.sort`` for the exact k-th value.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import peers
import pytest
import references as ref
from peers import assert_close

import jaxseg
from jaxseg._topk import kth_largest


def nnunet_topk(logits, labels, *, k=10.0, weight=None, label_smoothing=0.0, ignore_index=-100):
    """nnU-Net v2 ``TopKLoss.forward`` (nnunetv2/training/loss/robust_ce_loss.py)."""
    torch = peers.torch()
    x = torch.tensor(peers.channels_first(logits).astype(np.float64), requires_grad=True)
    target = torch.tensor(np.asarray(labels)[:, None].astype(np.int64))[:, 0].long()
    if weight is not None:
        weight = torch.tensor(np.asarray(weight, np.float64))
    res = torch.nn.functional.cross_entropy(
        x,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    num_voxels = np.prod(res.shape, dtype=np.int64)
    res, _ = torch.topk(res.view((-1,)), int(num_voxels * k / 100), sorted=False)
    out = res.mean()
    out.backward()
    return float(out.detach()), peers.channels_last(x.grad.numpy()).astype(np.float64)


def topk_reference(logits, labels, *, k=10.0, activation="softmax", **options):
    """Mean of the K = max(1, floor(n k / 100)) largest valid per-pixel CE values."""
    values = ref.cross_entropy(logits, labels, activation=activation, reduction="none", **options)
    num_classes = np.shape(logits)[-1]
    valid = ref.valid_mask(
        labels, num_classes, activation, options.get("ignore_index"), options.get("where")
    )
    if values.ndim > valid.ndim:
        valid = np.broadcast_to(valid[..., None], values.shape)
    kept = np.sort(values[valid])[::-1]
    count = max(1, int(np.floor(np.float32(len(kept)) * np.float32(k) / np.float32(100))))
    return kept[:count].mean()


# case: (ndim, classes, options)
TORCH_CASES = {
    "2d-3-classes": (2, 3, {}),
    "3d-4-classes-k5.5": (3, 4, {"k": 5.5}),
    "2d-2-classes-k100": (2, 2, {"k": 100.0}),
    "3d-6-classes-weights-smoothing": (
        3,
        6,
        {
            "k": 20.0,
            "class_weights": np.linspace(0.5, 2.0, 6).astype(np.float32),
            "label_smoothing": 0.1,
        },
    ),
}


@peers.family
def torch_family():
    built = {}
    for case, (ndim, classes, options) in TORCH_CASES.items():
        shape = {2: (2, 8, 9), 3: (2, 5, 6, 4)}[ndim]
        x = ref.random_logits(classes=classes, seed=ndim + classes, shape=shape)
        y = ref.random_labels(classes=classes, seed=ndim * classes, shape=shape)
        built[case] = (peers.Request(jaxseg.topk_cross_entropy, x, y, options), (x, y))
    return built


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_topk_matches_nnunet_and_reference(case):
    _, _, options = TORCH_CASES[case]
    (x, y), (value, grad) = torch_family()[case]
    torch_options = {
        "k": options.get("k", 10.0),
        "weight": options.get("class_weights"),
        "label_smoothing": options.get("label_smoothing", 0.0),
    }
    t_value, t_grad = nnunet_topk(x, y, **torch_options)
    assert np.all(np.isfinite(grad))
    assert_close(value, t_value)
    assert_close(grad, t_grad)
    assert_close(value, topk_reference(x, y, **options))


def test_k100_is_cross_entropy():
    x = ref.random_logits(2, 3, seed=5)
    y = ref.random_labels(2, 3, seed=6)
    assert_close(jaxseg.topk_cross_entropy(x, y, k=100.0), ref.cross_entropy(x, y))


REFERENCE_CASES = {
    "ignore-index": {"ignore_index": 1, "k": 15.0},
    "where": {"k": 10.0},
    "sigmoid": {"activation": "sigmoid", "k": 25.0},
    "one-percent-at-least-one": {"k": 1.0},
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_topk_matches_reference(case):
    options = dict(REFERENCE_CASES[case])
    classes = 1 if case == "sigmoid" else 3
    x = ref.random_logits(2, classes, seed=7)
    y = ref.random_labels(2, classes, seed=8)
    if case == "where":
        options["where"] = np.random.default_rng(9).random(y.shape) > 0.4
    if case == "sigmoid":
        x = np.concatenate([x, -x], -1)  # two independent channels
        y = (y[..., None] == np.arange(2)).astype(np.float32)
    assert_close(jaxseg.topk_cross_entropy(x, y, **options), topk_reference(x, y, **options))


def test_reductions_and_selection():
    x = ref.random_logits(2, 3, seed=10, shape=(2, 10, 10))
    y = ref.random_labels(2, 3, seed=11, shape=(2, 10, 10))
    selected = np.asarray(jaxseg.topk_cross_entropy(x, y, k=7.0, reduction="none"))
    values = ref.cross_entropy(x, y, reduction="none")
    assert selected.shape == values.shape
    assert np.count_nonzero(selected) == 14  # floor(200 * 7 / 100)
    assert selected[selected > 0].min() >= np.sort(values.ravel())[-14] * (1 - 1e-6)
    assert_close(jaxseg.topk_cross_entropy(x, y, k=7.0, reduction="sum"), selected.sum())


def test_ties_share_the_remaining_slots():
    # Every pixel has the same CE (log 3): K = 3 of 10 slots, each pixel a share 3/10.
    x = np.zeros((1, 10, 3), np.float32)
    y = np.random.default_rng(12).integers(0, 3, (1, 10)).astype(np.int32)
    value, grad = jax.value_and_grad(jaxseg.topk_cross_entropy)(jnp.asarray(x), y, k=30.0)
    assert_close(value, np.log(3.0))
    onehot = (y[..., None] == np.arange(3)).astype(np.float64)
    assert_close(grad, (1 / 3 - onehot) / 10)  # the gradient of the mean over all pixels


@pytest.mark.parametrize("count", [1, 7, 50, 200])
def test_kth_largest_is_exact(count):
    rng = np.random.default_rng(count)
    values = rng.exponential(size=200).astype(np.float32)
    values[:20] = values[20:40]  # ties
    values[40:50] = 0.0
    values[50] = -0.0
    valid = rng.random(200) > 0.1
    got = jax.jit(kth_largest)(values, valid, jnp.int32(min(count, valid.sum())))
    assert float(got) == np.sort(values[valid])[::-1][min(count, valid.sum()) - 1]


def test_all_excluded_is_zero_with_zero_gradient():
    x = jnp.asarray(ref.random_logits(2, 3, seed=13))
    y = ref.random_labels(2, 3, seed=14)
    where = np.zeros(y.shape, bool)
    value, grad = jax.value_and_grad(jaxseg.topk_cross_entropy)(x, y, where=where)
    assert float(value) == 0.0
    assert np.all(np.asarray(grad) == 0)


def test_bad_k_raises():
    x = np.zeros((1, 4, 2), np.float32)
    y = np.zeros((1, 4), np.int32)
    for k in (0.0, -1.0, 101.0):
        with pytest.raises(ValueError, match="`k`"):
            jaxseg.topk_cross_entropy(x, y, k=k)


@functools.cache
def _sharded(k):
    return jax.vmap(
        lambda x, y: jaxseg.topk_cross_entropy(x, y, k=k, axis_name="devices"),
        axis_name="devices",
    )


def test_axis_name_gives_the_global_top_k():
    """Four shards of one sample each: the global k-th value, not per-shard top k."""
    shape = (4, 9, 8)
    x = ref.random_logits(classes=3, seed=15, shape=shape)
    x[0] *= 4  # the hardest pixels concentrate on one shard
    y = ref.random_labels(classes=3, seed=16, shape=shape)
    sharded = lambda x: _sharded(10.0)(x.reshape(4, 1, 9, 8, 3), y.reshape(4, 1, 9, 8))
    values, grads = jax.vmap(jax.value_and_grad(lambda x, i: sharded(x)[i]), (None, 0))(
        jnp.asarray(x), jnp.arange(4)
    )
    t_value, t_grad = nnunet_topk(x, y, k=10.0)
    assert_close(values, np.full(4, t_value))
    assert_close(grads[0], t_grad)


def test_dice_topk_combination():
    """SegLoss's DiceTopK: dice_loss + topk_cross_entropy; deep supervision over it."""
    x = ref.random_logits(2, 3, seed=17)
    y = ref.random_labels(2, 3, seed=18)
    dice_topk = jaxseg.combine(jaxseg.dice_loss, jaxseg.topk_cross_entropy)
    dice = ref.overlap_loss("dice", x, y, smooth_nr=1e-5, smooth_dr=1e-5)
    total, parts = jaxseg.with_components(dice_topk)(x, y, k=20.0)
    assert_close(parts["topk_cross_entropy"], topk_reference(x, y, k=20.0))
    assert_close(total, dice + topk_reference(x, y, k=20.0))
    small = ref.random_logits(2, 3, seed=19, shape=(2, 3, 3))
    supervised = jaxseg.deep_supervision(jaxseg.topk_cross_entropy, weights=(0.5, 0.5))
    expected = 0.5 * topk_reference(x, y) + 0.5 * topk_reference(small, y[:, 1::2, 1::2])
    assert_close(supervised([x, small], y), expected)
