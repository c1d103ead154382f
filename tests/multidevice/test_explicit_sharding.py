"""The public API under ``jit`` with inputs on a mesh whose axis is ``Explicit``.

With ``Explicit`` axes (the default of ``jax.make_mesh`` in recent JAX) the sharding is
part of each array's type, and an operation whose output sharding is not defined (a
reshape that merges the sharded batch axis, a ``vmap`` over it that builds unsharded
constants) fails at trace time instead of being resolved by XLA. Every public function
is called here under ``jit`` on inputs sharded over 8 devices along the batch, and its
value (and gradient, for losses) is compared with the same call on unsharded inputs.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import peers
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxseg

NUM_DEVICES = 8
AXIS = "data"

pytestmark = pytest.mark.skipif(
    jax.device_count() < NUM_DEVICES,
    reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8",
)


def _mesh():
    return jax.make_mesh((NUM_DEVICES,), (AXIS,), axis_types=(AxisType.Explicit,))


def _data():
    keys = jax.random.split(jax.random.key(3), 4)
    x = jax.random.normal(keys[0], (16, 12, 10, 3))
    y = jax.random.randint(keys[1], (16, 12, 10), 0, 3)
    y = jnp.where(jnp.arange(16).reshape(16, 1, 1) % 3 == 0, jnp.minimum(y, 1), y)
    where = jax.random.bernoulli(keys[2], 0.8, (16, 12, 10))
    return x, y.astype(jnp.int32), where


def _binary(x, y):
    return x[..., :1], (y > 0).astype(jnp.int32)


# name -> (function, options, binary): losses called as f(logits, labels, **options).
LOSSES = {
    "dice_loss": (jaxseg.dice_loss, {}, False),
    "dice_loss_batch_where": (jaxseg.dice_loss, {"batch": True, "use_where": True}, False),
    "iou_loss": (jaxseg.iou_loss, {"include_background": False}, False),
    "jaccard_loss": (jaxseg.jaccard_loss, {"batch": True}, False),
    "tversky_loss": (jaxseg.tversky_loss, {"batch": True, "alpha": 0.3, "beta": 0.7}, False),
    "generalized_dice_loss": (jaxseg.generalized_dice_loss, {"batch": True}, False),
    "cross_entropy": (jaxseg.cross_entropy, {"ignore_index": 2}, False),
    "focal_loss": (jaxseg.focal_loss, {"activation": "sigmoid"}, False),
    "dice_ce": (jaxseg.dice_ce, {"batch": True, "ignore_index": 2}, False),
    "dice_focal": (jaxseg.dice_focal, {"use_where": True}, False),
    "bce_log_dice": (jaxseg.bce_log_dice, {}, True),
    "lovasz_softmax_loss": (jaxseg.lovasz_softmax_loss, {}, False),
    "lovasz_softmax_loss_per_image": (
        jaxseg.lovasz_softmax_loss,
        {"per_image": True, "ignore_index": 2},
        False,
    ),
    "lovasz_softmax_loss_where_weights": (
        jaxseg.lovasz_softmax_loss,
        {"use_where": True, "class_weights": jnp.array([0.5, 1.0, 2.0])},
        False,
    ),
    "lovasz_softmax_loss_none": (
        jaxseg.lovasz_softmax_loss,
        {"per_image": True, "reduction": "none"},
        False,
    ),
    "lovasz_hinge_loss": (jaxseg.lovasz_hinge_loss, {}, True),
    "lovasz_hinge_loss_per_batch": (jaxseg.lovasz_hinge_loss, {"per_image": False}, True),
    "lovasz_hinge_loss_none": (jaxseg.lovasz_hinge_loss, {"reduction": "none"}, True),
    "combine": (jaxseg.combine(jaxseg.dice_loss, jaxseg.lovasz_softmax_loss), {}, False),
    "log_transform": (jaxseg.log_transform(jaxseg.dice_loss), {"batch": True}, False),
    "with_components": (
        lambda x, y, **o: jaxseg.with_components(jaxseg.dice_ce)(x, y, **o)[0],
        {},
        False,
    ),
    "overlap_stats": (lambda x, y, **o: jaxseg.overlap_stats(x, y, **o).tp.sum(), {}, False),
    "mcc_loss": (jaxseg.mcc_loss, {"batch": True, "use_where": True}, False),
    "topk_cross_entropy": (jaxseg.topk_cross_entropy, {"k": 20.0, "ignore_index": 2}, False),
    "asymmetric_unified_focal_loss": (jaxseg.asymmetric_unified_focal_loss, {}, False),
    "generalized_wasserstein_dice_loss": (
        lambda x, y, **o: jaxseg.generalized_wasserstein_dice_loss(x, y, 1.0 - jnp.eye(3), **o),
        {"use_where": True},
        False,
    ),
    "boundary_loss": (jaxseg.boundary_loss, {"use_where": True}, False),
    "hausdorff_dt_loss": (jaxseg.hausdorff_dt_loss, {"batch": True}, False),
    "cldice_loss": (jaxseg.cldice_loss, {}, False),
    "dice_cldice": (jaxseg.dice_cldice, {"ignore_index": 2}, False),
    "regions_from_labels": (
        lambda x, y, **o: jaxseg.dice_loss(
            x[..., :2], jaxseg.regions_from_labels(y, ((1, 2), (2,))), activation="sigmoid"
        ),
        {},
        False,
    ),
}


def _sharded(*arrays):
    mesh = _mesh()
    return [jax.device_put(a, NamedSharding(mesh, P(AXIS))) for a in arrays]


def _call(loss_fn, options, x, y, where):
    options = dict(options)
    if options.pop("use_where", False):
        options["where"] = where
    return lambda logits: jnp.sum(loss_fn(logits, y, **options))


def _assert_sharding_changes_nothing(loss_of, x, y, where):
    """``value_and_grad`` of ``loss_of(logits, labels, where)`` in the logits: equal on
    unsharded and batch-sharded inputs, the gradient sharded as the logits."""
    # The same program on unsharded and on sharded inputs (peers.jit: fast compilation).
    run = peers.jit(lambda a, b, w: jax.value_and_grad(lambda z: loss_of(z, b, w))(a))
    want = run(x, y, where)
    xs, ys, ws = _sharded(x, y, where)
    assert jax.typeof(xs).sharding.spec[0] == AXIS
    got = run(xs, ys, ws)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=2e-5, atol=1e-7)
    assert jax.typeof(got[1]).sharding.spec[0] == AXIS


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_under_explicit_sharding(name):
    loss_fn, options, binary = LOSSES[name]
    x, y, where = _data()
    if binary:
        x, y = _binary(x, y)
    _assert_sharding_changes_nothing(
        lambda a, b, w: _call(loss_fn, options, a, b, w)(a), x, y, where
    )


@pytest.mark.parametrize(
    "loss_fn", [jaxseg.dice_loss, jaxseg.dice_ce, jaxseg.dice_focal, jaxseg.cross_entropy]
)
@pytest.mark.parametrize("num_classes", [12, 30])
def test_softmax_engine_above_the_unrolled_cutoff_under_explicit_sharding(loss_fn, num_classes):
    # Above the cutoff the label-class sums are segment sums; over the flattened batch
    # they would merge the sharded batch axis, so there they are taken per sample.
    keys = jax.random.split(jax.random.key(5), 3)
    x = 3 * jax.random.normal(keys[0], (16, 6, 5, num_classes))
    y = jax.random.randint(keys[1], (16, 6, 5), 0, num_classes)
    where = jax.random.bernoulli(keys[2], 0.8, (16, 6, 5))
    _assert_sharding_changes_nothing(lambda a, b, w: loss_fn(a, b, where=w), x, y, where)


def test_lovasz_unreduced_values_keep_the_batch_sharding():
    x, y, _ = _data()
    want = jaxseg.lovasz_softmax_loss(x, y, per_image=True, reduction="none")
    xs, ys = _sharded(x, y)
    got = peers.jit(
        lambda a, b: jaxseg.lovasz_softmax_loss(a, b, per_image=True, reduction="none")
    )(xs, ys)
    assert got.shape == (16, 3)
    assert jax.typeof(got).sharding.spec[0] == AXIS
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_lovasz_with_explicit_sharding_outside_jit_and_over_spatial_axes():
    x, y, _ = _data()
    want = jaxseg.lovasz_softmax_loss(x, y)
    xs, ys = _sharded(x, y)
    np.testing.assert_allclose(jaxseg.lovasz_softmax_loss(xs, ys), want, rtol=2e-5)
    # Batch and first spatial axis sharded: the spatial axis is gathered first.
    mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(AxisType.Explicit,) * 2)
    xs = jax.device_put(x, NamedSharding(mesh, P("a", "b")))
    ys = jax.device_put(y, NamedSharding(mesh, P("a", "b")))
    for per_image in (False, True):
        want = jaxseg.lovasz_softmax_loss(x, y, per_image=per_image)
        got = peers.jit(lambda a, b, p=per_image: jaxseg.lovasz_softmax_loss(a, b, per_image=p))(
            xs, ys
        )
        np.testing.assert_allclose(got, want, rtol=2e-5)


def _metric_data():
    keys = jax.random.split(jax.random.key(5), 2)
    predictions = jax.random.randint(keys[0], (16, 9, 7), 0, 4).astype(jnp.int32)
    labels = jax.random.randint(keys[1], (16, 9, 7), 0, 4).astype(jnp.int32)
    return predictions, labels


# name -> f(predictions, labels) -> pytree; metrics on class maps.
METRICS = {
    "confusion_matrix": lambda p, y: jaxseg.metrics.confusion_matrix(p, y, 4, ignore_index=2),
    "dice_score": lambda p, y: jaxseg.metrics.dice_score(p, y, 4),
    "iou_score": lambda p, y: jaxseg.metrics.iou_score(p, y, 4),
    "mean_dice": lambda p, y: jaxseg.metrics.mean_dice(p, y, 4),
    "mean_iou": lambda p, y: jaxseg.metrics.mean_iou(p, y, 4),
    "update_merge_compute": lambda p, y: jaxseg.metrics.compute(
        jaxseg.metrics.merge(
            jaxseg.metrics.update(jaxseg.metrics.metric_state(4), p, y),
            jaxseg.metrics.update(jaxseg.metrics.metric_state(4), y, p),
        )
    ),
    "hausdorff_distance": lambda p, y: jaxseg.metrics.hausdorff_distance(p, y, 4),
    "surface_dice": lambda p, y: jaxseg.metrics.surface_dice(p, y, 4, tolerance=1.0),
    "boundary_mask": lambda p, y: jaxseg.metrics.boundary_mask(p == 1),
    "euclidean_distance_transform": lambda p, y: jaxseg.metrics.euclidean_distance_transform(
        p == 1, spacing=(1.0, 1.0, 2.0)
    ),
    "predictions_from_logits": lambda p, y: jaxseg.metrics.predictions_from_logits(
        jax.nn.one_hot(p, 4) + 0.1 * y[..., None]
    ),
    "average_surface_distance": lambda p, y: jaxseg.metrics.average_surface_distance(
        p, y, 4, symmetric=True
    ),
    "confusion_metrics": lambda p, y: jaxseg.metrics.confusion_metrics(p, y, 4),
    "fbeta_score": lambda p, y: jaxseg.metrics.fbeta_score(p, y, 4, beta=2.0),
    "generalized_dice_score": lambda p, y: jaxseg.metrics.generalized_dice_score(p, y, 4),
    "absolute_volume_difference": lambda p, y: jaxseg.metrics.absolute_volume_difference(p, y, 4),
    "connected_components": lambda p, y: jaxseg.metrics.connected_components(y > 1),
    "panoptic_quality": lambda p, y: jaxseg.metrics.panoptic_quality(
        jnp.stack([p, jnp.minimum(p, 2)], axis=-1),
        jnp.stack([y, jnp.minimum(y, 2)], axis=-1),
        num_classes=3,
    ),
    "lesion_wise_scores": lambda p, y: jaxseg.metrics.lesion_wise_scores(
        p > 1, y > 1, dilation=1, min_size=2.0
    ),
    "dice_score_per_component": lambda p, y: jaxseg.metrics.dice_score(
        p > 1, y > 1, 2, per_component=True
    ),
}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metrics_under_explicit_sharding(name):
    p, y = _metric_data()
    want = METRICS[name](p, y)
    got = peers.jit(METRICS[name])(*_sharded(p, y))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_checked_mode_under_explicit_sharding():
    """The checked mode (it jits itself) on sharded inputs: same value; a bad label found."""
    x, y, _ = _data()
    checked = jaxseg.checked(jaxseg.dice_ce)
    want = jaxseg.dice_ce(x, y, ignore_index=2)
    np.testing.assert_allclose(checked(*_sharded(x, y), ignore_index=2), want, rtol=2e-5)
    bad = y.at[5, 3, 4].set(7)
    with pytest.raises(Exception, match="e.g. 7"):
        checked(*_sharded(x, bad))


def test_deep_supervision_under_explicit_sharding():
    x, y, _ = _data()
    pyramid = [x, x[:, ::2, ::2]]
    loss = jaxseg.deep_supervision(jaxseg.dice_ce)
    want = jax.value_and_grad(lambda ps: loss(ps, y))(pyramid)
    got = peers.jit(jax.value_and_grad(lambda ps, b: loss(ps, b)))(_sharded(*pyramid), *_sharded(y))
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-7)


def test_every_public_function_is_covered():
    """A public function added later must join one of the tables above."""
    covered = {name.split("_per_")[0] for name in LOSSES} | set(METRICS)
    covered |= {
        "lovasz_softmax_loss",
        "lovasz_hinge_loss",
        "deep_supervision",
        "metric_state",
        "update",
        "merge",
        "compute",
        "exact_counts",
        "OverlapStats",
        "CombinedLoss",
        "MetricState",
    }
    public = {
        name
        for module in (jaxseg, jaxseg.metrics)
        for name, value in vars(module).items()
        if not name.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value))
    }
    # validate_values runs inside the checked mode (the "checked" row above); the named
    # tuples are results; brats_regions builds a static tuple of label sets.
    covered |= {"checked", "validate_values", "Components", "PanopticQuality"}
    covered |= {"LesionWiseScores"}
    covered |= {"brats_regions"}
    assert public <= covered, sorted(public - covered)
