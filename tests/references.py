"""Float64 NumPy references, written from the formulas of DESIGN.md.

Independent of jaxseg's code: no vmap, no statistics core, no shared helpers. Arrays
are channels-last, as in jaxseg: logits ``(batch, *spatial, classes)``, integer labels
``(batch, *spatial)`` or dense labels of the logits' shape.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------
# Activations, labels, masks


def log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(x):
    return np.exp(log_softmax(x))


def log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def sigmoid(x):
    return np.exp(log_sigmoid(x))


def activate(logits, activation):
    if activation == "softmax":
        return softmax(logits)
    if activation == "sigmoid":
        return sigmoid(logits)
    return np.asarray(logits, np.float64)


def is_integer(labels) -> bool:
    return np.asarray(labels).dtype.kind in "iub"


def dense_labels(labels, num_channels, activation):
    """Integer labels as float64 one-hot; one sigmoid channel is the mask ``label == 1``."""
    labels = np.asarray(labels)
    if not is_integer(labels):
        return labels.astype(np.float64)
    if num_channels == 1 and activation != "softmax":
        return (labels == 1)[..., None].astype(np.float64)
    return (labels[..., None] == np.arange(num_channels)).astype(np.float64)


def valid_mask(labels, num_channels, activation, ignore_index=None, where=None):
    """Pixels that count: in-range labels, not ``ignore_index``, ``where`` True."""
    labels = np.asarray(labels)
    if is_integer(labels):
        n_values = 2 if (num_channels == 1 and activation != "softmax") else num_channels
        valid = (labels >= 0) & (labels < n_values)
        if ignore_index is not None:
            valid &= labels != ignore_index
    else:
        valid = np.ones(labels.shape[:-1], bool)
    if where is not None:
        valid &= np.asarray(where, bool)
    return valid


def _spatial_axes(x):
    return tuple(range(1, x.ndim - 1))


def _divide(numerator, denominator, if_zero):
    numerator, denominator = np.broadcast_arrays(
        np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    )
    out = np.full(numerator.shape, float(if_zero))
    nonzero = denominator != 0
    out[nonzero] = numerator[nonzero] / denominator[nonzero]
    return out


def _reduce(values, norm, reduction):
    """``"none"``, ``"sum"``, or ``"mean"`` as ``sum(values) / norm`` (0 when norm is 0)."""
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    return _divide(values.sum(), norm, 0.0)


# ---------------------------------------------------------------------------------------
# Overlap statistics


def masked_maps(logits, labels, *, activation="softmax", ignore_index=None, where=None):
    """``(p * v, y * v, v)``: activated prediction and one-hot label, zero where excluded."""
    num_channels = np.shape(logits)[-1]
    p = activate(logits, activation)
    y = dense_labels(labels, num_channels, activation)
    v = valid_mask(labels, num_channels, activation, ignore_index, where)[..., None]
    return p * v, y * v, v


def stats(
    logits,
    labels,
    *,
    activation="softmax",
    ignore_index=None,
    where=None,
    squared=False,
    soft_label=False,
    batch=False,
):
    """``(tp, fp, fn, total)``, each ``(batch, classes)`` (``(classes,)`` with ``batch``)."""
    p, y, v = masked_maps(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    axes = _spatial_axes(p)
    if squared:
        tp = (p * y).sum(axes)
        pred_sum, label_sum = (p**2).sum(axes), (y**2).sum(axes)
    else:
        pred_sum, label_sum = p.sum(axes), y.sum(axes)
        if soft_label:
            tp = (pred_sum + label_sum - np.abs(p - y).sum(axes)) / 2
        else:
            tp = (p * y).sum(axes)
    total = np.broadcast_to(v.sum(axes), tp.shape).astype(np.float64)
    out = (tp, pred_sum - tp, label_sum - tp, total)
    if batch:
        out = tuple(s.sum(0) for s in out)
    return out


# ---------------------------------------------------------------------------------------
# Overlap losses


def _overlap_score(kind, tp, fp, fn, *, smooth_nr, smooth_dr, alpha, beta, gamma):
    """The loss of one (sample, class) entry from its statistics; 0/0 scores 1."""
    if kind == "dice":
        return 1 - _divide(2 * tp + smooth_nr, 2 * tp + fp + fn + smooth_dr, 1.0)
    if kind == "iou":
        return 1 - _divide(tp + smooth_nr, tp + fp + fn + smooth_dr, 1.0)
    if kind == "tversky":
        base = 1 - _divide(tp + smooth_nr, tp + alpha * fp + beta * fn + smooth_dr, 1.0)
        return base if gamma == 1 else np.maximum(base, 0) ** gamma
    raise ValueError(kind)


def overlap_loss(
    kind,
    logits,
    labels,
    *,
    activation="softmax",
    smooth_nr=1e-5,
    smooth_dr=1e-5,
    include_background=True,
    batch=False,
    class_weights=None,
    ignore_index=None,
    where=None,
    reduction="mean",
    squared=False,
    soft_label=False,
    empty="smooth",
    alpha=0.5,
    beta=0.5,
    gamma=1.0,
):
    """Dice (``kind="dice"``), IoU (``"iou"``) or Tversky (``"tversky"``) loss.

    Per (sample, class) ``L = w_c * score``; ``"mean"`` is ``sum(w L) / sum(w)`` over
    the entries that count. ``empty="exclude"`` gives empty-label entries weight 0;
    ``"complement"`` scores ``(1 - p) v`` against ``(1 - y) v`` for them, computed here
    from the complemented maps themselves.
    """
    common = dict(activation=activation, ignore_index=ignore_index, where=where)
    num_classes = np.shape(logits)[-1]
    params = dict(smooth_nr=smooth_nr, smooth_dr=smooth_dr, alpha=alpha, beta=beta, gamma=gamma)
    tp, fp, fn, _ = stats(
        logits, labels, squared=squared, soft_label=soft_label, batch=batch, **common
    )
    loss = _overlap_score(kind, tp, fp, fn, **params)
    label_volume = tp + fn
    if empty == "complement":
        p, y, v = masked_maps(logits, labels, **common)
        pc, yc = (1 - p) * v, (1 - y) * v
        axes = _spatial_axes(p)
        tpc = (pc * yc).sum(axes)
        fpc, fnc = pc.sum(axes) - tpc, yc.sum(axes) - tpc
        if batch:
            tpc, fpc, fnc = tpc.sum(0), fpc.sum(0), fnc.sum(0)
        loss = np.where(label_volume <= 0, _overlap_score(kind, tpc, fpc, fnc, **params), loss)
    weights = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, float)
    weights = np.broadcast_to(weights, loss.shape).astype(np.float64)
    if empty == "exclude":
        weights = np.where(label_volume <= 0, 0.0, weights)
    if not include_background:
        loss, weights = loss[..., 1:], weights[..., 1:]
    return _reduce(weights * loss, weights.sum(), reduction)


def generalized_dice_loss(
    logits,
    labels,
    *,
    weight_type="square",
    activation="softmax",
    smooth_nr=1e-5,
    smooth_dr=1e-5,
    include_background=True,
    batch=False,
    class_weights=None,
    ignore_index=None,
    where=None,
    reduction="mean",
    soft_label=False,
):
    """Sudre et al.: one value per sample; an empty class takes the sample's largest weight."""
    tp, fp, fn, _ = stats(
        logits,
        labels,
        activation=activation,
        ignore_index=ignore_index,
        where=where,
        soft_label=soft_label,
        batch=batch,
    )
    if not include_background:
        tp, fp, fn = tp[..., 1:], fp[..., 1:], fn[..., 1:]
    volume = np.atleast_2d(tp + fn)
    if weight_type == "uniform":
        w = np.ones_like(volume)
    else:
        power = 2 if weight_type == "square" else 1
        w = np.zeros_like(volume)
        for b in range(volume.shape[0]):
            present = volume[b] > 0
            w[b, present] = 1 / volume[b, present] ** power
            w[b, ~present] = w[b, present].max() if present.any() else 0.0
    w = w.reshape(tp.shape)
    if class_weights is not None:
        cw = np.asarray(class_weights, np.float64)
        w = w * (cw if include_background else cw[1:])
    numerator = 2 * (w * tp).sum(-1) + smooth_nr
    denominator = (w * (2 * tp + fp + fn)).sum(-1) + smooth_dr
    loss = 1 - _divide(numerator, denominator, 1.0)
    return _reduce(loss, loss.size, reduction)


# ---------------------------------------------------------------------------------------
# Pixel losses


def _class_vector(value, num_classes):
    return np.broadcast_to(np.asarray(value, np.float64), (num_classes,))


def cross_entropy(
    logits,
    labels,
    *,
    activation="softmax",
    class_weights=None,
    ignore_index=None,
    where=None,
    reduction="mean",
    label_smoothing=0.0,
    pos_weight=None,
):
    """Softmax CE (PyTorch weighting and smoothing) or binary CE per channel."""
    x = np.asarray(logits, np.float64)
    num_classes = x.shape[-1]
    y = dense_labels(labels, num_classes, activation)
    v = valid_mask(labels, num_classes, activation, ignore_index, where)
    w = _class_vector(1.0 if class_weights is None else class_weights, num_classes)
    eps = label_smoothing
    if activation == "softmax":
        smoothed = (1 - eps) * y + eps / num_classes
        loss = -(w * smoothed * log_softmax(x)).sum(-1) * v
        norm = ((w * y).sum(-1) * v).sum()
    else:
        smoothed = (1 - eps) * y + eps / 2
        q = _class_vector(1.0 if pos_weight is None else pos_weight, num_classes)
        loss = -w * (q * smoothed * log_sigmoid(x) + (1 - smoothed) * log_sigmoid(-x))
        loss = loss * v[..., None]
        norm = v.sum() * num_classes
    return _reduce(loss, norm, reduction)


def focal_loss(
    logits,
    labels,
    *,
    gamma=2.0,
    alpha=None,
    activation="softmax",
    class_weights=None,
    ignore_index=None,
    where=None,
    reduction="mean",
):
    """``-alpha_t (1 - p_t)^gamma log p_t`` written directly with probabilities."""
    x = np.asarray(logits, np.float64)
    num_classes = x.shape[-1]
    y = dense_labels(labels, num_classes, activation)
    v = valid_mask(labels, num_classes, activation, ignore_index, where)
    w = _class_vector(1.0 if class_weights is None else class_weights, num_classes)
    if activation == "softmax":
        p = softmax(x)
        if alpha is None:
            a = np.ones(num_classes)
        elif np.ndim(alpha) == 0:
            a = np.array([1 - alpha] + [alpha] * (num_classes - 1), np.float64)
        else:
            a = np.asarray(alpha, np.float64)
        loss = -(w * a * y * (1 - p) ** gamma * log_softmax(x)).sum(-1) * v
        norm = ((w * y).sum(-1) * v).sum()
    else:
        p = sigmoid(x)
        p_t = p * y + (1 - p) * (1 - y)
        bce = -(y * log_sigmoid(x) + (1 - y) * log_sigmoid(-x))
        loss = w * (1 - p_t) ** gamma * bce
        if alpha is not None:
            a = _class_vector(alpha, num_classes)
            loss = (a * y + (1 - a) * (1 - y)) * loss
        loss = loss * v[..., None]
        norm = v.sum() * num_classes
    return _reduce(loss, norm, reduction)


# ---------------------------------------------------------------------------------------
# Random inputs shared by the tests: small shapes, one per spatial rank

SHAPES = {1: (3, 11), 2: (2, 6, 7), 3: (2, 5, 4, 3)}  # (batch, *spatial)


def random_logits(ndim=2, classes=3, seed=0, scale=2.0, shape=None):
    shape = SHAPES[ndim] if shape is None else shape
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((*shape, classes))).astype(np.float32)


def random_labels(ndim=2, classes=3, seed=1, shape=None):
    """Integer labels in ``[0, classes)``; one sigmoid channel (classes=1) gives 0/1."""
    shape = SHAPES[ndim] if shape is None else shape
    rng = np.random.default_rng(seed)
    return rng.integers(0, max(classes, 2), shape).astype(np.int32)


def soft_labels(ndim=2, classes=3, seed=2, shape=None):
    """Dense soft labels: a Dirichlet draw per pixel (sums to 1 over classes)."""
    shape = SHAPES[ndim] if shape is None else shape
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(classes), size=shape).astype(np.float32)


def with_empty_classes(labels, absent):
    """Relabels so that class ``c`` is absent from sample ``b`` for each ``(b, c)``."""
    labels = np.array(labels)
    for b, c in absent:
        sample = labels[b]
        sample[sample == c] = 0 if c != 0 else 1
    return labels
