"""Checks of inputs: shapes, ranks, dtypes, label values, and the checked mode.

Arguments reach these checks already normalised by :func:`jaxseg._arguments.normalised`
(arrays converted, option types and ranges checked by name). Two parts here:

- Trace-time checks of shapes, ranks and dtypes, written as chex assertions
  (``exception_type=ValueError`` and a message that names the argument, the shape it
  got and the shape expected); they cost nothing under ``jit``.
- Value problems that only exist at run time (labels out of range, non-finite logits)
  cannot raise inside ``jit``; :func:`validate_values` expresses them as ``checkify``
  checks for the checked mode (:func:`checked`).

Also the validity mask of the pixels that count, label helpers, and the bfloat16
widening of the fused paths.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxseg import _arguments

ACTIVATIONS = ("softmax", "sigmoid", None)
REDUCTIONS = ("mean", "sum", "none")


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x))


def static_sizes(*sizes: Any) -> bool:
    """Whether every size is known while tracing (a Python int).

    Under ``jax.export`` with symbolic shapes (``jax.export.symbolic_shape("b, h, w")``)
    an axis size is a symbolic expression: a choice made from its value (a comparison,
    ``np.argmax``, a static loop length or a padding to a power of two) is undefined, and
    the functions that make one take a path that needs none.
    """
    return all(isinstance(n, int) for n in sizes)


# --------------------------------------------------------------------------------------
# Trace-time checks of shapes, ranks and dtypes (chex assertions).


def _assert(assertion: Callable[..., None], *args: Any, message: str, **kwargs: Any) -> None:
    """A chex assertion raising ``ValueError`` with ``message`` (which names the argument)."""
    assertion(*args, **kwargs, custom_message=message, exception_type=ValueError)


def check_option(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raises if ``value`` is not one of ``allowed``."""
    try:
        ok = value in allowed
    except TypeError:  # an unhashable value compared with a tuple of strings
        ok = False
    if not ok or isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"`{name}` must be one of {tuple(allowed)!r}; got {_arguments.show(value)}."
        )


def check_nonnegative(name: str, value: Any) -> None:
    """Raises if a concrete (Python or NumPy) ``value`` has a negative or NaN entry.

    Traced values cannot be inspected and are accepted as they are.
    """
    if value is None or _arguments.is_tracer(value):
        return
    arr = np.asarray(value, dtype=np.float64)
    if np.any(np.isnan(arr)) or np.any(arr < 0):
        raise ValueError(f"`{name}` must be >= 0; got {_arguments.show(value)}.")


def is_integer_labels(labels: Any) -> bool:
    """True for class-index labels (integer or boolean dtype), False for dense labels."""
    dtype = jnp.asarray(labels).dtype if not hasattr(labels, "dtype") else labels.dtype
    return bool(jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_)


def compute_dtype(dtype: Any) -> Any:
    """Float32 for half precision and float32 inputs; float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)


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
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, (bool, np.bool_)):
        raise ValueError(f"`num_classes` must be a Python int; got {num_classes!r}.")
    minimum = 1 if include_background else 2
    if num_classes < minimum:
        raise ValueError(
            f"`num_classes` must be >= {minimum} with include_background="
            f"{include_background}; got {num_classes}."
        )


def check_class_weights(class_weights: Any, num_classes: int) -> None:
    """Raises unless ``class_weights`` is None or a ``(num_classes,)`` vector.

    Its values (finite, >= 0) are checked by the ``class_weights`` rule of :func:`normalised`.
    """
    if class_weights is None:
        return
    _assert(
        chex.assert_shape,
        class_weights,
        (num_classes,),
        message=f"`class_weights` must have shape ({num_classes},), one weight per class "
        f"(background included); got shape {_shape(class_weights)}.",
    )


def check_logits_labels(
    logits: Any,
    labels: Any,
    *,
    activation: str | None,
    ignore_index: int | None,
    where: Any,
) -> None:
    """Static checks shared by every loss taking ``(logits, labels)`` (chex assertions).

    Args:
      logits: ``(batch, *spatial, classes)`` floating array, 1 to 3 spatial axes.
      labels: integer ``(batch, *spatial)`` or floating ``(batch, *spatial, classes)``.
      activation: ``"softmax"``, ``"sigmoid"`` or ``None``.
      ignore_index: only with integer labels.
      where: ``None`` or a boolean ``(batch, *spatial)`` array.
    """
    check_option("activation", activation, ACTIVATIONS)
    logits = _arguments.as_array("logits", logits)
    labels = _arguments.as_array("labels", labels)
    shape = logits.shape
    _assert(
        chex.assert_type,
        logits,
        float,
        message="`logits` must be a floating array (float32, bfloat16, float16 or "
        f"float64); got dtype {logits.dtype}.",
    )
    _assert(
        chex.assert_rank,
        logits,
        {3, 4, 5},
        message="`logits` must have shape (batch, *spatial, classes) with 1 to 3 spatial "
        f"axes (rank 3 to 5); got shape {shape} (rank {len(shape)}).",
    )
    num_classes = shape[-1]
    if 0 in shape:
        raise ValueError(f"`logits` must not have an empty axis; got shape {shape}.")
    if activation == "softmax" and num_classes < 2:
        raise ValueError(
            "`activation='softmax'` needs at least 2 classes on the last axis of "
            f"`logits`; got shape {shape}. Use activation='sigmoid' for one channel."
        )
    label_shape = labels.shape
    if is_integer_labels(labels):
        _assert(
            chex.assert_shape,
            labels,
            shape[:-1],
            message=f"integer `labels` must have shape {shape[:-1]} (the shape of `logits` "
            f"without its class axis); got shape {label_shape}.",
        )
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        hint = ""
        if label_shape[:-1] == shape[:-1]:
            hint = f" ({label_shape[-1]} classes in `labels`, {num_classes} in `logits`)"
        elif label_shape == shape[:-1]:
            hint = " (class indices must have an integer dtype)"
        _assert(
            chex.assert_shape,
            labels,
            shape,
            message=f"dense `labels` must have the shape of `logits`, {shape}; got shape "
            f"{label_shape}{hint}.",
        )
        if ignore_index is not None:
            raise ValueError(
                "`ignore_index` needs integer class-index labels; got dense labels of "
                f"shape {label_shape}. Use `where` to exclude pixels of dense labels."
            )
    else:
        raise ValueError(f"`labels` must be integer or floating; got dtype {labels.dtype}.")
    check_where(where, shape[:-1])


def check_loss_inputs(
    logits: Any,
    labels: Any,
    *,
    activation: str | None,
    ignore_index: int | None,
    where: Any,
    class_weights: Any,
    reduction: str,
) -> None:
    """The checks every loss of ``(logits, labels)`` shares: inputs, reduction, weights."""
    check_logits_labels(
        logits, labels, activation=activation, ignore_index=ignore_index, where=where
    )
    check_option("reduction", reduction, REDUCTIONS)
    check_class_weights(class_weights, _shape(logits)[-1])


def check_where(where: Any, expected: tuple[int, ...]) -> None:
    """Raises unless ``where`` is None or a boolean array of shape ``expected``."""
    if where is None:
        return
    where = _arguments.as_array("where", where)
    _assert(
        chex.assert_type,
        where,
        bool,
        message=f"`where` must be a boolean array of shape {expected}; got dtype {where.dtype}.",
    )
    _assert(
        chex.assert_shape,
        where,
        expected,
        message=f"`where` must have shape {expected}; got shape {where.shape}.",
    )


def check_class_maps(predictions: jax.Array, labels: jax.Array, *, ranks: Sequence[int]) -> None:
    """Chex checks of two integer class maps of one shape (``(batch, *spatial)``)."""
    spatial = f"{min(ranks) - 1} to {max(ranks) - 1}"
    for name, x in (("predictions", predictions), ("labels", labels)):
        if not is_integer_labels(x):
            raise ValueError(
                f"`{name}` must be an integer (or boolean) class map of shape "
                f"(batch, *spatial); got dtype {x.dtype}. Turn logits into a class map "
                "with jaxseg.metrics.predictions_from_logits(logits)."
            )
        _assert(
            chex.assert_rank,
            x,
            set(ranks),
            message=f"`{name}` must have shape (batch, *spatial) with {spatial} spatial "
            f"axes (rank {min(ranks)} to {max(ranks)}); got shape {x.shape} (rank {x.ndim}).",
        )
    _assert(
        chex.assert_equal_shape,
        [predictions, labels],
        message=f"`predictions` and `labels` must have the same shape; got "
        f"{predictions.shape} for `predictions` and {labels.shape} for `labels`.",
    )


# --------------------------------------------------------------------------------------
# Half precision.


def widen(x: jax.Array) -> jax.Array:
    """``x`` in its compute dtype (float32 for half precision), for the softmax engine and
    the compound losses.

    A plain ``astype``: its derivative is ``astype`` (the gradient is rounded back to the
    input dtype, to nearest even), and every JAX transformation goes through it. It
    replaced a custom JVP whose tangent map was a ``linear_call`` rounding the bfloat16
    gradient with integer operations (XLA's CPU backend converted float32 to bfloat16
    with scalar code): ``linear_call`` has no batching rule, so ``vmap`` with a
    derivative, ``jacfwd`` and ``hessian`` raised ``NotImplementedError`` on bfloat16
    logits. Measured against it (bfloat16, ``jit(value_and_grad)``, interleaved in one
    process, time over optax CE on the same logits), custom / plain: ``dice_ce`` 0.40 /
    0.46 at 4 classes, 1.36 / 1.35 at 19, 1.06 / 1.08 at 117; ``cross_entropy`` 0.21 /
    0.22, 0.95 / 0.88, 0.52 / 0.49; ``dice_loss`` 0.42 / 0.43, 1.26 / 1.22, 0.81 / 0.87,
    and 0.67-0.74 / 0.73-0.78 at 64 (three runs); ``focal_loss`` and ``dice_focal`` within
    0.05 at 2, 8 and 64.
    """
    return x.astype(compute_dtype(x.dtype))


# --------------------------------------------------------------------------------------
# Labels: values, range, validity.


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


def labels_in_range(labels: jax.Array, n: int) -> jax.Array:
    """``0 <= labels < n``, compared in the labels' own dtype (no wrapping cast).

    Integer labels of any width (int8 to int64, unsigned, bool) are compared without a
    cast to int32 first, which would map the int64 label ``2**32 + 1`` to the valid
    class 1. The two bounds are one unsigned comparison of the same width: XLA's CPU
    backend recomputes one comparison against a constant inside each loop that reads
    it, but computes the ``and`` of two once and stores it (measured: the fused
    dice_ce pass on (8, 256, 256, 4) then needs a 0.5 MiB mask more temporary memory).
    """
    if labels.dtype == jnp.bool_:
        return jnp.ones(labels.shape, jnp.bool_) if n >= 2 else ~labels
    bits = jnp.iinfo(labels.dtype).bits
    unsigned = jnp.dtype(f"uint{bits}")
    if n > jnp.iinfo(unsigned).max:  # every non-negative value of the dtype is in range
        if jnp.issubdtype(labels.dtype, jnp.unsignedinteger):
            return jnp.ones(labels.shape, jnp.bool_)
        return labels >= 0
    return labels.astype(unsigned) < np.array(n, unsigned)


def labels_equal(labels: jax.Array, value: int) -> jax.Array:
    """``labels == value`` in the labels' own dtype; all False if the dtype cannot hold it."""
    if labels.dtype == jnp.bool_:
        return labels == bool(value) if value in (0, 1) else jnp.zeros(labels.shape, jnp.bool_)
    info = jnp.iinfo(labels.dtype)
    if not info.min <= value <= info.max:
        return jnp.zeros(labels.shape, jnp.bool_)
    return labels == np.array(value, labels.dtype)


def class_map_int32(x: jax.Array, num_classes: int) -> jax.Array:
    """An integer class map as int32, values outside ``[0, num_classes)`` mapped to -1.

    Only 64-bit maps need the mapping (a cast would wrap ``2**32 + 1`` to 1); narrower
    ones are cast as they are (their out-of-range values stay out of range).
    """
    if x.dtype != jnp.bool_ and jnp.iinfo(x.dtype).bits > 32:
        x = jnp.where(labels_in_range(x, num_classes), x, -1)
    return x.astype(jnp.int32)


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
    raise inside ``jit``; the checked mode reports them). Labels are compared in their
    own dtype (:func:`labels_in_range`), so a later int32 cast only sees valid labels.
    """
    if is_integer_labels(labels):
        valid = labels_in_range(labels, num_label_values(num_channels, activation))
        if ignore_index is not None:
            valid &= ~labels_equal(labels, ignore_index)
    else:
        # ones_like keeps the labels' sharding (an Explicit mesh axis included).
        valid = jnp.ones_like(labels[..., 0], dtype=jnp.bool_)
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


# --------------------------------------------------------------------------------------
# Value checks and the checked mode.


def _check_labels_in_range(
    labels: jax.Array, n_values: int, ignore_index: int | None, name: str = "labels"
) -> None:
    ok = labels_in_range(labels, n_values)
    if ignore_index is not None:
        ok |= labels_equal(labels, ignore_index)
    # The example keeps the labels' own dtype: an int64 label 2**32 + 1 is shown as is.
    # It is the largest offending label, a reduction (an index into the flattened labels
    # would be a dynamic slice, undefined on an explicitly sharded batch).
    if labels.dtype == jnp.bool_:
        labels = labels.astype(jnp.int32)
    lowest = jnp.array(jnp.iinfo(labels.dtype).min, labels.dtype)
    checkify.check(
        jnp.all(ok),
        f"`{name}` must lie in [0, {n_values})"
        + (f" or equal ignore_index={ignore_index}" if ignore_index is not None else "")
        + "; found {n} labels out of range, e.g. {example}.",
        n=jnp.sum(~ok),
        example=jnp.max(jnp.where(ok, lowest, labels)),
    )


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
    probabilities (``activation=None``) lie in [0, 1]. ``logits`` may be a list or
    tuple of arrays (the outputs of :func:`jaxseg.deep_supervision`): each is checked,
    and the label range is the first one's.
    """
    scales = _arguments.as_array_or_arrays("logits", logits)
    scales = scales if isinstance(scales, tuple) else (scales,)
    labels = _arguments.as_array("labels", labels)
    for i, x in enumerate(scales):
        name = "logits" if len(scales) == 1 else f"logits[{i}]"
        checkify.check(
            jnp.all(jnp.isfinite(x)),
            f"`{name}` has {{n}} non-finite entries (NaN or inf).",
            n=jnp.sum(~jnp.isfinite(x)),
        )
        if activation is None:
            checkify.check(
                jnp.all((x >= 0) & (x <= 1)),
                f"`{name}` must hold probabilities in [0, 1] with activation=None.",
            )
    num_channels = scales[0].shape[-1]
    if is_integer_labels(labels):
        _check_labels_in_range(labels, num_label_values(num_channels, activation), ignore_index)
    else:
        outside = ~((labels >= 0) & (labels <= 1))
        checkify.check(
            ~jnp.any(outside),
            "dense `labels` must lie in [0, 1]; found {n} entries outside.",
            n=jnp.sum(outside),
        )


def validate_class_maps(
    predictions: jax.Array,
    labels: jax.Array,
    num_classes: int,
    *,
    ignore_index: int | None = None,
) -> None:
    """Run-time checks of two class maps (metrics), as ``checkify.check``.

    Labels must lie in ``[0, num_classes)`` or equal ``ignore_index`` (plain mode
    excludes the others); predictions must lie in ``[0, num_classes)`` (plain mode
    counts the others as a miss).
    """
    _check_labels_in_range(_arguments.as_array("labels", labels), num_classes, ignore_index)
    _check_labels_in_range(
        _arguments.as_array("predictions", predictions), num_classes, None, "predictions"
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


def _bind(fn: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """``fn``'s arguments by name (defaults applied; ``**options`` entries spread)."""
    try:
        signature = inspect.signature(fn)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return dict(kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(parameter.name, {}))
    return arguments


def _value_checks(fn: Any, args: tuple, kwargs: dict) -> Callable[[dict], None] | None:
    """The run-time checks that apply to a call of ``fn``, as a function of its arguments."""
    arguments = _bind(fn, args, kwargs)
    if "logits" in arguments and "labels" in arguments:
        # "sigmoid" gives the only valid label range for one channel (a binary mask) and
        # the same range as "softmax" for several, without asking for probabilities.
        activation = arguments.get("activation", _default_option(fn, "activation", "sigmoid"))
        ignore_index = arguments.get("ignore_index")

        def check(a):
            validate_values(
                a["logits"], a["labels"], activation=activation, ignore_index=ignore_index
            )

        return check
    if "predictions" in arguments and "labels" in arguments:
        state = arguments.get("state")
        num_classes = arguments.get("num_classes", getattr(state, "num_classes", None))
        if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool):
            return None
        ignore_index = arguments.get("ignore_index")

        def check(a):
            validate_class_maps(
                a["predictions"], a["labels"], int(num_classes), ignore_index=ignore_index
            )

        return check
    if "logits" in arguments:
        return lambda a: checkify.check(
            jnp.all(jnp.isfinite(_arguments.as_array("logits", a["logits"]))),
            "`logits` has {n} non-finite entries (NaN or inf).",
            n=jnp.sum(~jnp.isfinite(_arguments.as_array("logits", a["logits"]))),
        )
    return None


def checked(fn: Callable) -> Callable:
    """The checked mode: wraps a public function so that value problems raise.

    ``checked(f)(*args, **options)`` runs ``f`` and the value checks that apply to it
    under ``jax.experimental.checkify`` and raises ``checkify.JaxRuntimeError`` naming
    the problem and an offending value:

    - losses, combinators and compound losses (``f(logits, labels, ...)``, ``logits``
      one array or, for :func:`jaxseg.deep_supervision`, one per scale): non-finite
      logits, integer labels out of range (compared in their own dtype, so an int64
      label ``2**32 + 1`` is reported as itself), dense labels outside [0, 1],
      probabilities outside [0, 1] with ``activation=None``
      (:func:`validate_values`);
    - metrics on class maps (``f(predictions, labels, num_classes, ...)`` and
      :func:`jaxseg.metrics.update`): labels and predictions outside ``[0, C)``
      (labels equal to ``ignore_index`` excepted);
    - :func:`jaxseg.metrics.predictions_from_logits`: non-finite logits.

    Other functions (distance transforms, metric states) have no value problem to
    report and run as they are. Without the checked mode, out-of-range labels are
    excluded like ``ignore_index`` (no NaN) and non-finite logits propagate to the loss.
    Call it outside ``jit`` (it jits ``f`` itself: array arguments are traced, the
    others are static). The activation and ``ignore_index`` that decide the valid label
    range are the options passed, else ``f``'s defaults; a loss without an
    ``activation`` option (such as :func:`jaxseg.bce_log_dice`) takes one channel as a
    binary mask.

    Examples:
      >>> import jax.numpy as jnp, jaxseg
      >>> checked_dice = jaxseg.checked(jaxseg.dice_loss)
      >>> checked_dice(jnp.zeros((1, 2, 2)), jnp.array([[0, 5]]))
      Traceback (most recent call last):
      ...
      jax._src.checkify.JaxRuntimeError: `labels` must lie in [0, 2); ...
    """

    def run(*args: Any, **kwargs: Any) -> Any:
        checks = _value_checks(fn, args, kwargs)
        if checks is None:
            return fn(*args, **kwargs)
        leaves, treedef = jax.tree.flatten((args, kwargs))
        traced = [isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves]
        static = [None if t else leaf for t, leaf in zip(traced, leaves, strict=True)]

        def body(arrays):
            it = iter(arrays)
            full = [next(it) if t else s for t, s in zip(traced, static, strict=True)]
            call_args, call_kwargs = jax.tree.unflatten(treedef, full)
            checks(_bind(fn, call_args, call_kwargs))
            return fn(*call_args, **call_kwargs)

        arrays = [leaf for t, leaf in zip(traced, leaves, strict=True) if t]
        checked_body = checkify.checkify(body, errors=checkify.user_checks)
        error, value = jax.jit(checked_body)(arrays)
        error.throw()
        return value

    name = getattr(fn, "__name__", "function")
    run.__name__ = run.__qualname__ = f"checked_{name}"
    run.__doc__ = f"Checked mode of {name}."
    return run
