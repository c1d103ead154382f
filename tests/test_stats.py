"""Tests of jaxseg._stats: the per-(sample, class) overlap statistics core.

Oracles: the float64 NumPy references of ``references.py`` and exact integer counts
from ``numpy.bincount``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import references as ref
from peers import assert_close

import jaxseg
from jaxseg import _stats


def assert_stats(stats, expected):
    tp, fp, fn, total = expected
    assert_close(stats.tp, tp)
    assert_close(stats.fp, fp)
    assert_close(stats.fn, fn)
    assert_close(stats.total, total)


STATS_CASES = {
    "softmax-2d": dict(ndim=2),
    "softmax-1d-where-ignore": dict(ndim=1, where=True, ignore_index=1),
    "sigmoid-binary-3d": dict(ndim=3, classes=1, activation="sigmoid"),
    "sigmoid-multichannel-squared": dict(ndim=2, activation="sigmoid", squared=True),
    "probabilities-batch": dict(ndim=3, activation=None, batch=True),
    "soft-labels-l1": dict(ndim=2, labels="soft", soft_label=True),
    "soft-labels-squared-batch-where": dict(
        ndim=1, labels="soft", squared=True, batch=True, where=True
    ),
    "out-of-range-labels-excluded": dict(ndim=2, labels="out-of-range"),
}


@pytest.mark.parametrize("case", list(STATS_CASES), ids=list(STATS_CASES))
def test_overlap_stats_match_float64_reference(case):
    options = dict(STATS_CASES[case])
    ndim, classes = options.pop("ndim"), options.pop("classes", 3)
    kind = options.pop("labels", "int")
    x = ref.random_logits(ndim, classes, seed=ndim)
    if options.get("activation", "softmax") is None:
        x = ref.softmax(x).astype(np.float32)
    y = {
        "int": ref.random_labels(ndim, classes),
        "soft": ref.soft_labels(ndim, classes),
        "out-of-range": ref.random_labels(ndim, classes + 2),
    }[kind]
    if options.pop("where", False):
        options["where"] = np.random.default_rng(3).random(ref.SHAPES[ndim]) < 0.6
    stats = jaxseg.overlap_stats(x, y, **options)
    expected_shape = (classes,) if options.get("batch") else (ref.SHAPES[ndim][0], classes)
    assert stats.tp.shape == expected_shape and stats.tp.dtype == jnp.float32
    assert_stats(stats, ref.stats(x, y, **options))


def test_derived_statistics():
    x = ref.random_logits(2, 3, seed=4)
    y = ref.random_labels(2, 3, seed=5)
    where = np.random.default_rng(6).random(y.shape) < 0.8
    stats = jaxseg.overlap_stats(x, y, where=where)
    p, onehot, v = ref.masked_maps(x, y, where=where)
    axes = (1, 2)
    assert_close(stats.pred_sum, p.sum(axes))
    assert_close(stats.label_sum, onehot.sum(axes))
    # True negatives: sum over valid pixels of (1 - p)(1 - y).
    assert_close(stats.tn, ((1 - p) * (1 - onehot) * v).sum(axes))
    assert_close(stats.total, np.broadcast_to(v.sum(axes), (2, 3)))


def test_docstring_example_and_hand_counts():
    stats = jaxseg.overlap_stats(jnp.zeros((1, 4, 2)), jnp.array([[0, 0, 1, 1]]))
    assert_close(stats.tp, [[1.0, 1.0]])
    assert_close(stats.fp, [[1.0, 1.0]])
    assert_close(stats.fn, [[1.0, 1.0]])
    assert_close(stats.total, [[4.0, 4.0]])


def test_hard_predictions_give_exact_integer_counts():
    # Integer class maps on both sides: int32 counts equal to a confusion matrix.
    classes = 4
    rng = np.random.default_rng(7)
    pred = rng.integers(0, classes, (3, 9, 8)).astype(np.int32)
    labels = rng.integers(0, classes, (3, 9, 8)).astype(np.int32)
    valid = rng.random(labels.shape) < 0.75
    stats = jax.jit(_stats.compute_stats)(pred, labels, valid, jnp.arange(classes))
    assert stats.tp.dtype == jnp.int32 and stats.tp.shape == (3, classes)
    for b in range(3):
        keep = valid[b]
        confusion = np.bincount(
            labels[b][keep] * classes + pred[b][keep], minlength=classes**2
        ).reshape(classes, classes)
        tp = np.diag(confusion)
        np.testing.assert_array_equal(stats.tp[b], tp)
        np.testing.assert_array_equal(stats.fp[b], confusion.sum(0) - tp)
        np.testing.assert_array_equal(stats.fn[b], confusion.sum(1) - tp)
        np.testing.assert_array_equal(stats.total[b], np.full(classes, keep.sum()))
        np.testing.assert_array_equal(
            stats.tn[b], keep.sum() - confusion.sum(0) - confusion.sum(1) + tp
        )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    # 3001 pixels of probability 1: bfloat16 cannot hold 3001 (nor float16 beyond 2048).
    probs = jnp.ones((1, 3001, 1), dtype)
    labels = jnp.ones((1, 3001), jnp.int32)
    stats = jaxseg.overlap_stats(probs, labels, activation=None)
    assert stats.tp.dtype == jnp.float32
    assert float(stats.tp[0, 0]) == 3001.0 and float(stats.fp[0, 0]) == 0.0


def test_batch_sums_over_axis_name_inside_vmap():
    # vmap with an axis name behaves as pmap: each shard sees the global batch sums.
    x = ref.random_logits(2, 3, seed=8, shape=(4, 5, 6))
    y = ref.random_labels(2, 3, seed=9, shape=(4, 5, 6))
    shards = lambda a: a.reshape(2, 2, *a.shape[1:])
    per_shard = jax.vmap(
        lambda x, y: jaxseg.overlap_stats(x, y, batch=True, axis_name="shards"),
        axis_name="shards",
    )(shards(x), shards(y))
    expected = ref.stats(x, y, batch=True)
    for shard in range(2):
        assert_stats(jax.tree.map(lambda s, i=shard: s[i], per_shard), expected)


def test_vmap_over_a_leading_axis_equals_a_loop():
    xs = np.stack([ref.random_logits(1, 3, seed=s) for s in range(3)])
    ys = np.stack([ref.random_labels(1, 3, seed=10 + s) for s in range(3)])
    fn = jax.jit(lambda x, y: jaxseg.overlap_stats(x, y, squared=True))
    mapped = jax.vmap(fn)(xs, ys)
    for i in range(3):
        looped = fn(xs[i], ys[i])
        jax.tree.map(lambda a, b, i=i: assert_close(a[i], b), mapped, looped)
        assert_stats(
            jax.tree.map(lambda s, i=i: s[i], mapped), ref.stats(xs[i], ys[i], squared=True)
        )


def test_gradient_of_tp_is_the_label_through_the_activation():
    # d tp_c / d p = v * onehot: with activation=None the gradient is the masked label.
    probs = ref.softmax(ref.random_logits(1, 3, seed=12)).astype(np.float32)
    y = ref.random_labels(1, 3, seed=13)
    where = np.random.default_rng(14).random(y.shape) < 0.5
    grad = jax.grad(lambda p: jnp.sum(jaxseg.overlap_stats(p, y, activation=None, where=where).tp))(
        probs
    )
    _, onehot, _ = ref.masked_maps(probs, y, activation=None, where=where)
    assert_close(grad, onehot)
