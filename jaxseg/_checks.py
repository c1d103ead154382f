"""Validation and normalisation of inputs: the bottom layer under every loss and metric.

Everything here runs at trace time on static information (shapes, dtypes, Python
option values) and raises ``ValueError`` with the argument's name, the shape or value
it got and what was expected. Value problems that only exist at run time (labels out
of range, non-finite logits) cannot raise inside ``jit``; :func:`validate_values`
expresses them as ``checkify`` checks for the checked mode (:func:`jaxseg.checked`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

ACTIVATIONS = ("softmax", "sigmoid", None)
REDUCTIONS = ("mean", "sum", "none")


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x))


def check_option(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raises if ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)!r}; got {value!r}.")


def check_nonnegative(name: str, value: Any) -> None:
    """Raises if a concrete (Python or NumPy) ``value`` has a negative or NaN entry.

    Traced values cannot be inspected and are accepted as they are.
    """
    if value is None or isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value, dtype=np.float64)
    if np.any(np.isnan(arr)) or np.any(arr < 0):
        raise ValueError(f"`{name}` must be >= 0; got {value!r}.")


def check_unit_interval(name: str, value: Any) -> None:
    """Raises if a concrete ``value`` lies outside [0, 1]."""
    if value is None or isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value, dtype=np.float64)
    if np.any(np.isnan(arr)) or np.any(arr < 0) or np.any(arr > 1):
        raise ValueError(f"`{name}` must lie in [0, 1]; got {value!r}.")


def is_integer_labels(labels: Any) -> bool:
    """True for class-index labels (integer or boolean dtype), False for dense labels."""
    dtype = jnp.asarray(labels).dtype if not hasattr(labels, "dtype") else labels.dtype
    return bool(jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_)


def compute_dtype(dtype: Any) -> Any:
    """Float32 for half precision and float32 inputs; float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)


def widen(x: jax.Array) -> jax.Array:
    """``x`` in its compute dtype, for the fused (custom-VJP) paths and compound losses.

    For bfloat16 the gradient is rounded back to bfloat16 (round to nearest even, as
    ``astype``) with integer operations: XLA's CPU backend compiles the float32 to
    bfloat16 conversion into scalar code inside large loops (measured: bfloat16
    ``dice_ce`` 23 ms with ``astype``, 6 ms with this). It is a custom VJP, so
    forward-mode autodiff of these paths needs float32 or float64 logits.
    """
    if x.dtype == jnp.bfloat16:
        return _widen_bfloat16(x)
    return x.astype(compute_dtype(x.dtype))


@jax.custom_vjp
def _widen_bfloat16(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32)


def _widen_bfloat16_fwd(x):
    return _widen_bfloat16(x), None


def _widen_bfloat16_bwd(_, g):
    return (round_to_bfloat16(g),)


_widen_bfloat16.defvjp(_widen_bfloat16_fwd, _widen_bfloat16_bwd)


def round_to_bfloat16(x: jax.Array) -> jax.Array:
    """float32 to bfloat16, round to nearest even, bit for bit as ``x.astype(bfloat16)``.

    Adds ``0x7fff`` plus the lowest kept bit to the float32 bits and keeps the upper 16:
    ties go to the even neighbour, overflow goes to infinity; NaNs are kept NaN.
    """
    x = x.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    # A NaN keeps its sign and becomes quiet (the select stays in integers: a select in
    # bfloat16 would bring XLA's conversion back).
    rounded = jnp.where(jnp.isnan(x), (bits >> 16) | 0x0040, rounded)
    return jax.lax.bitcast_convert_type(rounded.astype(jnp.uint16), jnp.bfloat16)


def check_per_class(name: str, value: Any, num_classes: int) -> None:
    """Raises if ``value`` is neither a scalar nor a vector of ``num_classes`` entries."""
    if value is None:
        return
    shape = _shape(value)
    if shape not in ((), (num_classes,)):
        raise ValueError(
            f"`{name}` must be a scalar or have shape ({num_classes},), one entry per "
            f"class; got shape {shape}."
        )


def check_num_classes(num_classes: Any, include_background: bool = True) -> None:
    """Raises unless ``num_classes`` is a Python int, at least 2 without background."""
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool):
        raise ValueError(f"`num_classes` must be a Python int; got {num_classes!r}.")
    minimum = 1 if include_background else 2
    if num_classes < minimum:
        raise ValueError(
            f"`num_classes` must be >= {minimum} with include_background="
            f"{include_background}; got {num_classes}."
        )


def check_class_weights(class_weights: Any, num_classes: int) -> None:
    """Raises unless ``class_weights`` is None or a non-negative ``(num_classes,)`` vector."""
    if class_weights is None:
        return
    shape = _shape(class_weights)
    if shape != (num_classes,):
        raise ValueError(
            f"`class_weights` must have shape ({num_classes},), one weight per class "
            f"(background included); got shape {shape}."
        )
    check_nonnegative("class_weights", class_weights)


def check_logits_labels(
    logits: Any,
    labels: Any,
    *,
    activation: str | None,
    ignore_index: int | None,
    where: Any,
) -> None:
    """Static checks shared by every loss taking ``(logits, labels)``.

    Args:
      logits: ``(batch, *spatial, classes)`` floating array, 1 to 3 spatial axes.
      labels: integer ``(batch, *spatial)`` or floating ``(batch, *spatial, classes)``.
      activation: ``"softmax"``, ``"sigmoid"`` or ``None``.
      ignore_index: only with integer labels.
      where: ``None`` or a boolean ``(batch, *spatial)`` array.
    """
    check_option("activation", activation, ACTIVATIONS)
    shape = _shape(logits)
    dtype = jnp.result_type(logits)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"`logits` must be a floating array (float32, bfloat16, float16 or float64); "
            f"got dtype {dtype}."
        )
    if not 3 <= len(shape) <= 5:
        raise ValueError(
            "`logits` must have shape (batch, *spatial, classes) with 1 to 3 spatial "
            f"axes (rank 3 to 5); got shape {shape} (rank {len(shape)})."
        )
    num_classes = shape[-1]
    if num_classes < 1 or 0 in shape:
        raise ValueError(f"`logits` must not have an empty axis; got shape {shape}.")
    if activation == "softmax" and num_classes < 2:
        raise ValueError(
            "`activation='softmax'` needs at least 2 classes on the last axis of "
            f"`logits`; got shape {shape}. Use activation='sigmoid' for one channel."
        )
    label_shape = _shape(labels)
    if is_integer_labels(labels):
        if label_shape != shape[:-1]:
            raise ValueError(
                f"integer `labels` must have shape {shape[:-1]} (the shape of `logits` "
                f"without its class axis); got shape {label_shape}."
            )
    elif jnp.issubdtype(jnp.result_type(labels), jnp.floating):
        if label_shape != shape:
            hint = ""
            if label_shape[:-1] == shape[:-1]:
                hint = f" ({label_shape[-1]} classes in `labels`, {num_classes} in `logits`)"
            elif label_shape == shape[:-1]:
                hint = " (class indices must have an integer dtype)"
            raise ValueError(
                f"dense `labels` must have the shape of `logits`, {shape}; got shape "
                f"{label_shape}{hint}."
            )
        if ignore_index is not None:
            raise ValueError(
                "`ignore_index` needs integer class-index labels; got dense labels of "
                f"shape {label_shape}. Use `where` to exclude pixels of dense labels."
            )
    else:
        raise ValueError(
            f"`labels` must be integer or floating; got dtype {jnp.result_type(labels)}."
        )
    if ignore_index is not None and not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(f"`ignore_index` must be an int or None; got {ignore_index!r}.")
    check_where(where, shape[:-1])


def check_where(where: Any, expected: tuple[int, ...]) -> None:
    """Raises unless ``where`` is None or a boolean array of shape ``expected``."""
    if where is None:
        return
    if jnp.result_type(where) != jnp.bool_:
        raise ValueError(
            f"`where` must be a boolean array of shape {expected}; got dtype "
            f"{jnp.result_type(where)}."
        )
    if _shape(where) != expected:
        raise ValueError(f"`where` must have shape {expected}; got shape {_shape(where)}.")


def label_values(num_channels: int, activation: str | None) -> np.ndarray:
    """The integer label that each channel stands for.

    With one channel and a sigmoid (or no) activation the channel is the foreground of
    a binary mask: label 1. Otherwise channel ``c`` is class ``c``.
    """
    if num_channels == 1 and activation != "softmax":
        return np.array([1], dtype=np.int32)
    return np.arange(num_channels, dtype=np.int32)


def num_label_values(num_channels: int, activation: str | None) -> int:
    """How many integer label values are valid: 2 for a binary channel, else ``C``."""
    return 2 if (num_channels == 1 and activation != "softmax") else num_channels


class Prepared(NamedTuple):
    """Inputs normalised for the statistics core and the pixel losses.

    Attributes:
      probs: ``(batch, *spatial, classes)`` probabilities in the compute dtype.
      labels: integer ``(batch, *spatial)`` or dense ``(batch, *spatial, classes)``
        labels in the compute dtype.
      valid: boolean ``(batch, *spatial)``: pixels that count.
      label_values: ``(classes,)`` the integer label of each channel.
    """

    probs: jax.Array
    labels: jax.Array
    valid: jax.Array
    label_values: jax.Array


def valid_mask(
    labels: jax.Array,
    num_channels: int,
    activation: str | None,
    ignore_index: int | None,
    where: jax.Array | None,
) -> jax.Array:
    """Boolean ``(batch, *spatial)`` mask of the pixels that count.

    A pixel is excluded when ``where`` is False there, when its integer label equals
    ``ignore_index``, or when its integer label is out of range (such labels cannot
    raise inside ``jit``; the checked mode reports them).
    """
    if is_integer_labels(labels):
        labels = labels.astype(jnp.int32)
        # 0 <= label < n as one unsigned comparison: XLA's CPU backend recomputes one
        # comparison against a constant inside each loop that reads it, but computes the
        # ``and`` of two once and stores it (measured: the fused dice_ce pass on
        # (8, 256, 256, 4) then needs a 0.5 MiB mask more temporary memory).
        valid = labels.astype(jnp.uint32) < num_label_values(num_channels, activation)
        if ignore_index is not None:
            valid &= labels != ignore_index
    else:
        valid = jnp.ones(labels.shape[:-1], dtype=jnp.bool_)
    if where is not None:
        valid &= where
    return valid


def prepare(
    logits: jax.Array,
    labels: jax.Array,
    *,
    activation: str | None,
    ignore_index: int | None,
    where: jax.Array | None,
) -> Prepared:
    """Applies the activation and builds the validity mask (masking comes after it)."""
    dtype = compute_dtype(logits.dtype)
    x = logits.astype(dtype)
    if activation == "softmax":
        probs = jax.nn.softmax(x, axis=-1)
    elif activation == "sigmoid":
        probs = jax.nn.sigmoid(x)
    else:
        probs = x
    num_channels = logits.shape[-1]
    valid = valid_mask(labels, num_channels, activation, ignore_index, where)
    if is_integer_labels(labels):
        labels = labels.astype(jnp.int32)
    else:
        labels = labels.astype(dtype)
    return Prepared(probs, labels, valid, jnp.asarray(label_values(num_channels, activation)))


def validate_values(
    logits: jax.Array,
    labels: jax.Array,
    *,
    activation: str | None = "softmax",
    ignore_index: int | None = None,
) -> None:
    """Run-time value checks, as ``checkify.check``; active only under ``checkify``.

    Checks that logits are finite, that integer labels lie in range (or equal
    ``ignore_index``), that dense labels lie in [0, 1], and that inputs already holding
    probabilities (``activation=None``) lie in [0, 1].
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    checkify.check(
        jnp.all(jnp.isfinite(logits)),
        "`logits` has {n} non-finite entries (NaN or inf).",
        n=jnp.sum(~jnp.isfinite(logits)),
    )
    if activation is None:
        checkify.check(
            jnp.all((logits >= 0) & (logits <= 1)),
            "`logits` must hold probabilities in [0, 1] with activation=None.",
        )
    num_channels = logits.shape[-1]
    if is_integer_labels(labels):
        n_values = num_label_values(num_channels, activation)
        ok = (labels >= 0) & (labels < n_values)
        if ignore_index is not None:
            ok |= labels == ignore_index
        bad = jnp.where(ok, 0, labels.astype(jnp.int32))
        checkify.check(
            jnp.all(ok),
            f"`labels` must lie in [0, {n_values})"
            + (f" or equal ignore_index={ignore_index}" if ignore_index is not None else "")
            + "; found {n} labels out of range, e.g. {example}.",
            n=jnp.sum(~ok),
            example=bad.reshape(-1)[jnp.argmax(~ok.reshape(-1))],
        )
    else:
        checkify.check(
            jnp.all((labels >= 0) & (labels <= 1)),
            "dense `labels` must lie in [0, 1]; found {n} entries outside.",
            n=jnp.sum(~((labels >= 0) & (labels <= 1))),
        )


def _default_option(fn: Any, name: str, fallback: Any) -> Any:
    """The default of keyword ``name`` in ``fn``'s signature, or ``fallback``."""
    try:
        parameter = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return fallback
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return fallback
    return parameter.default


def checked(loss_fn):
    """The checked mode: wraps a loss so that value problems raise instead of hiding.

    ``checked(f)(logits, labels, **options)`` runs :func:`validate_values` and ``f``
    under ``jax.experimental.checkify`` and raises ``checkify.JaxRuntimeError`` naming
    the problem (non-finite logits, labels out of range, dense labels outside [0, 1]).
    Without it, out-of-range labels are excluded like ``ignore_index`` (no NaN), and
    non-finite logits propagate to the loss. Call it outside ``jit`` (it jits ``f``
    itself). The activation and ``ignore_index`` that decide the valid label range are
    the options passed, else ``f``'s defaults; a loss without an ``activation`` option
    (such as :func:`jaxseg.bce_log_dice`) takes one channel as a binary mask.

    Examples:
      >>> import jax.numpy as jnp, jaxseg
      >>> checked_dice = jaxseg.checked(jaxseg.dice_loss)
      >>> checked_dice(jnp.zeros((1, 2, 2)), jnp.array([[0, 5]]))
      Traceback (most recent call last):
      ...
      jax._src.checkify.JaxRuntimeError: `labels` must lie in [0, 2); ...
    """
    # "sigmoid" gives the only valid label range for one channel (a binary mask) and the
    # same range as "softmax" for several, without asking for probabilities.
    default_activation = _default_option(loss_fn, "activation", "sigmoid")
    default_ignore_index = _default_option(loss_fn, "ignore_index", None)

    def run(logits, labels, **options):
        def body(logits, labels):
            validate_values(
                logits,
                labels,
                activation=options.get("activation", default_activation),
                ignore_index=options.get("ignore_index", default_ignore_index),
            )
            return loss_fn(logits, labels, **options)

        error, value = jax.jit(checkify.checkify(body, errors=checkify.user_checks))(logits, labels)
        error.throw()
        return value

    run.__name__ = f"checked_{getattr(loss_fn, '__name__', 'loss')}"
    run.__doc__ = f"Checked mode of {getattr(loss_fn, '__name__', 'a loss')}."
    return run
