"""Argument normalisation by name: the first step of every public entry point.

:func:`normalised` is a decorator that turns array arguments given as Python lists,
tuples, scalars or NumPy arrays into JAX arrays once, and checks the type and range of
every option by its name (:data:`RULES`, :data:`PREFIX_RULES`), with an error that
names the argument. A rule is the only check of its argument's type and range; shapes,
ranks and dtypes are checked afterwards by the functions (:mod:`jaxseg._checks`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a string for a number, a float for an int, ...).

    Both a ``TypeError`` and a ``ValueError``: code that catches either keeps working.
    """


def is_tracer(x: Any) -> bool:
    """True for a traced value (under ``jit``, ``grad``, ...), whose entries are unknown."""
    return isinstance(x, jax.core.Tracer)


def show(value: Any) -> str:
    """A short description of ``value`` for a message: its repr when small, else a summary."""
    if isinstance(value, (list, tuple)) and _count_leaves(value, 17) > 16:
        return f"a {type(value).__name__} of shape {np.shape(value)}"
    if isinstance(value, (np.ndarray, jax.Array)) and not is_tracer(value) and value.size > 16:
        arr = np.asarray(value, dtype=np.float64)
        return f"an array of shape {arr.shape} with entries in [{arr.min()}, {arr.max()}]"
    return repr(value)


def _count_leaves(value: Any, limit: int) -> int:
    """The number of scalars in a nested list, counting up to ``limit``."""
    count = 0
    stack = [value]
    while stack and count < limit:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            count += 1
    return count


# --------------------------------------------------------------------------------------
# Arrays and options, one argument at a time.


def as_array(name: str, value: Any) -> jax.Array:
    """``value`` as a JAX array, or an error naming ``name`` (never the whole value).

    JAX arrays (and tracers) pass unchanged; NumPy arrays and scalars, Python scalars,
    and (nested) lists and tuples of numbers or arrays are converted with
    ``jnp.asarray``. Anything else (None, strings, ragged or non-numeric lists) raises
    :class:`ArgumentTypeError`.
    """
    if isinstance(value, jax.Array):
        return value
    if isinstance(value, np.ndarray) and not (
        np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_
    ):
        raise ArgumentTypeError(f"`{name}` must hold numbers; got dtype {value.dtype}.")
    if value is None or isinstance(value, (str, bytes, Mapping)):
        raise ArgumentTypeError(
            f"`{name}` must be an array (or a nested list of numbers); got "
            f"{type(value).__name__}{'' if value is None else ' ' + show(value)}."
        )
    try:
        array = jnp.asarray(value)
    except (TypeError, ValueError, OverflowError):
        what = type(value).__name__
        raise ArgumentTypeError(
            f"`{name}` must be an array, or a nested list of numbers of one rectangular "
            f"shape; got a {what} that cannot be converted (ragged, or with entries that "
            "are not numbers)."
        ) from None
    if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == jnp.bool_):
        raise ArgumentTypeError(f"`{name}` must hold numbers; got dtype {array.dtype}.")
    return array


def as_optional_array(name: str, value: Any) -> jax.Array | None:
    """:func:`as_array`, with None kept as None."""
    return None if value is None else as_array(name, value)


def as_array_or_arrays(name: str, value: Any) -> Any:
    """One array, or a list/tuple of arrays (the outputs of several scales) as a tuple.

    A list or tuple whose entries are all arrays (JAX or NumPy) is kept as a tuple of
    arrays, each converted; anything else is converted as one array.
    """
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (jax.Array, np.ndarray)) for v in value)
    ):
        return tuple(as_array(f"{name}[{i}]", v) for i, v in enumerate(value))
    return as_array(name, value)


def as_scales(name: str, value: Any) -> tuple[jax.Array, ...]:
    """A list or tuple of arrays, one per output scale, each converted by :func:`as_array`."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            f"`{name}` must be a non-empty list or tuple of arrays, one per output scale, "
            f"the first at full resolution; got {type(value).__name__}."
        )
    return tuple(as_array(f"{name}[{i}]", v) for i, v in enumerate(value))


def as_int(name: str, value: Any, *, optional: bool = False) -> int | None:
    """A Python int (NumPy integers accepted); bools and floats raise."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(
            f"`{name}` must be an int{' or None' if optional else ''}; got "
            f"{type(value).__name__} {value!r}."
        )
    return int(value)


def as_bool(name: str, value: Any) -> bool:
    """A Python bool (NumPy bools accepted); anything else raises."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(
            f"`{name}` must be a bool (True or False); got {type(value).__name__} {value!r}."
        )
    return bool(value)


def as_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    per_class: bool = False,
    optional: bool = False,
) -> Any:
    """A real number option, checked: type, shape, finiteness and range.

    Python numbers are kept as they are (a ``jit`` argument traces them); NumPy values,
    lists and tuples become arrays. Strings, bools, None (unless ``optional``) and
    non-numeric arrays raise :class:`ArgumentTypeError`; a shape other than a scalar
    (or, with ``per_class``, any shape: the caller checks it against the class count),
    a non-finite entry or an entry outside the range raise ``ValueError``. The range is
    ``[low, high]``, ``(low, high]`` with ``low_open``, and unbounded on a side whose
    bound is None. Traced values are checked for type and shape only.
    """
    if value is None:
        if optional:
            return None
        raise ArgumentTypeError(f"`{name}` must be a number; got None.")
    original = value
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
        raise ArgumentTypeError(f"`{name}` must be a number; got {type(value).__name__} {value!r}.")
    if not isinstance(value, (int, float, np.integer, np.floating)):
        if not isinstance(value, (jax.Array, np.ndarray)):
            try:
                value = np.asarray(value)
            except (TypeError, ValueError):
                value = np.asarray(None, dtype=object)
        dtype = value.dtype
        if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
            raise ArgumentTypeError(
                f"`{name}` must be a real number or an array of real numbers; got "
                f"{type(value).__name__ if dtype == np.dtype(object) else f'dtype {dtype}'}."
            )
        if not per_class and np.ndim(value) != 0:
            raise ValueError(f"`{name}` must be a scalar; got shape {np.shape(value)}.")
    if is_tracer(value):
        return value
    arr = np.asarray(value, dtype=np.float64)
    wanted = _range_words(low, high, low_open)
    if not np.all(np.isfinite(arr)):
        also = "" if wanted is None else " and " + wanted.removeprefix("be ")
        raise ValueError(f"`{name}` must be finite{also}; got {show(original)}.")
    ok = np.ones(arr.shape, bool)
    if low is not None:
        ok &= arr > low if low_open else arr >= low
    if high is not None:
        ok &= arr <= high
    if not np.all(ok):
        raise ValueError(f"`{name}` must {wanted}; got {show(original)}.")
    return value


def _range_words(low: float | None, high: float | None, low_open: bool) -> str | None:
    """The range ``low`` (excluded with ``low_open``) to ``high`` (included) in words.

    ``"lie in (0, 100]"`` with both bounds, ``"be > 0"`` or ``"be <= 1"`` with one, None
    with none.
    """
    if low is not None and high is not None:
        return f"lie in {'(' if low_open else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"be {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"be <= {high:g}"
    return None


Rule = Callable[[str, Any], Any]


def number(**bounds: Any) -> Rule:
    """A rule for a real-number option: :func:`as_number` with these ``bounds``."""
    return lambda name, value: as_number(name, value, **bounds)


def _optional_int(name: str, value: Any) -> int | None:
    return as_int(name, value, optional=True)


def _num_classes(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"`{name}` must be a Python int; got {value!r}.")
    return int(value)


def count(*, optional: bool = False, low: int = 0) -> Rule:
    """A rule for an integer option (a count or a size) that must be ``>= low``."""

    def rule(name: str, value: Any) -> int | None:
        value = as_int(name, value, optional=optional)
        if value is not None and value < low:
            raise ValueError(f"`{name}` must be an int >= {low}; got {value!r}.")
        return value

    return rule


NONNEGATIVE = number(low=0)
NONNEGATIVE_PER_CLASS = number(low=0, per_class=True, optional=True)
UNIT_INTERVAL = number(low=0, high=1)

#: The rule of each argument name, applied by :func:`normalised` to the arguments a
#: caller passes (defaults are trusted). A rule maps ``(name, value)`` to the normalised
#: value or raises an error naming the argument. Names absent here pass unchanged
#: (their values are checked by the function, e.g. ``check_option`` for strings).
RULES: dict[str, Rule] = {
    # Arrays.
    "logits": as_array,
    "labels": as_array,
    "predictions": as_array,
    "mask": as_array,
    "where": as_optional_array,
    "pixel_weights": as_optional_array,
    "distance_matrix": as_array,
    "predicted_instances": as_array,
    "label_instances": as_array,
    "class_weights": NONNEGATIVE_PER_CLASS,
    "pos_weight": NONNEGATIVE_PER_CLASS,
    # Real-number options (traced: never recompilation keys).
    "smooth_nr": NONNEGATIVE,
    "smooth_dr": NONNEGATIVE,
    "alpha": number(low=0, per_class=True, optional=True),
    "beta": NONNEGATIVE,
    "gamma": NONNEGATIVE,
    "label_smoothing": UNIT_INTERVAL,
    "eps": number(low=0, low_open=True),
    "threshold": UNIT_INTERVAL,
    "percentile": number(low=0, high=100, optional=True),
    "tolerance": number(low=0, per_class=True),
    "spacing": number(low=0, low_open=True, per_class=True, optional=True),
    "k": number(low=0, high=100, low_open=True),
    "weight": UNIT_INTERVAL,
    "delta": UNIT_INTERVAL,
    "epsilon": number(low=0, high=0.5),
    "smooth_harmonic": NONNEGATIVE,
    "smooth_numerator": NONNEGATIVE,
    "match_iou_threshold": UNIT_INTERVAL,
    "min_size": NONNEGATIVE,
    "missing_hd95": NONNEGATIVE,
    # Static options.
    "ignore_index": _optional_int,
    "num_classes": _num_classes,
    "iterations": count(),
    "dilation": count(),
    "connectivity": count(optional=True, low=1),
    "max_components": count(optional=True, low=1),
    "max_lesions": count(low=1),
    "include_background": as_bool,
    "batch": as_bool,
    "squared": as_bool,
    "soft_label": as_bool,
    "per_image": as_bool,
    "directed": as_bool,
    "ignore_empty": as_bool,
    "return_components": as_bool,
    "symmetric": as_bool,
    "log": as_bool,
}
#: Rules for every argument whose name starts with a prefix (the compound losses' term
#: weights ``lambda_dice``, ``lambda_ce``, ...).
PREFIX_RULES: dict[str, Rule] = {"lambda_": NONNEGATIVE}


def rule_for(name: str) -> Rule | None:
    """The rule of an argument name (:data:`RULES`, then :data:`PREFIX_RULES`), or None."""
    if name in RULES:
        return RULES[name]
    for prefix, rule in PREFIX_RULES.items():
        if name.startswith(prefix):
            return rule
    return None


def normalise_arguments(
    arguments: Mapping[str, Any], rules: Mapping[str, Rule | None] | None = None
) -> dict[str, Any]:
    """Applies the rule of each name in ``arguments`` (``rules`` first, then :data:`RULES`).

    Returns a new dict; names without a rule keep their value. A rule given as None in
    ``rules`` switches the default rule of that name off.
    """
    rules = rules or {}
    out = {}
    for name, value in arguments.items():
        rule = rules[name] if name in rules else rule_for(name)
        out[name] = value if rule is None else rule(name, value)
    return out


def normalised(fn: Callable | None = None, /, **rules: Rule | None) -> Callable:
    """Decorator: the one input-normalisation step of a public entry point.

    ``@normalised`` (or ``@normalised(name=rule, ...)`` to override or, with None,
    switch off the rule of some names) wraps ``fn`` so that each call:

    1. binds the arguments to ``fn``'s signature (a wrong call raises the usual
       ``TypeError``);
    2. applies to every argument the caller passed (defaults are trusted), including the
       entries of a ``**options`` parameter, the rule of its name: ``rules`` given here,
       else :data:`RULES` / :data:`PREFIX_RULES`. Array arguments (``logits``,
       ``labels``, ``predictions``, ``mask``, ``where``) become JAX arrays once (lists,
       tuples, NumPy arrays and scalars), with an error naming the argument when they
       cannot; number options are checked for type (numbers, not strings or bools),
       shape (scalars unless per class), finiteness and range; ints (``ignore_index``,
       ``num_classes``) and bools are checked for type (a bool is not an int);
    3. calls ``fn`` with the normalised arguments.

    Shapes and dtypes are then checked by ``fn`` itself (chex assertions such as
    :func:`jaxseg._checks.check_logits_labels`). The wrapper keeps ``fn``'s name, docstring and
    signature (``inspect.signature`` follows ``__wrapped__``), so option routing by
    signature (:mod:`jaxseg._combinators`) and the checked mode see ``fn``'s options.

    To apply it to a new public function: put ``@_arguments.normalised`` above its
    ``def``; name its arguments as the library does (``logits``, ``labels``, ``where``,
    ``class_weights``, ``smooth_nr``, ...) and they get the library's rules; add a rule
    to :data:`RULES` for a new option name, or pass one here, e.g.
    ``@_arguments.normalised(alpha=_arguments.number(low=0, high=1, per_class=True,
    optional=True))``.
    """
    if fn is None:
        return functools.partial(normalised, **rules)
    signature = inspect.signature(fn)
    var_keyword = next(
        (p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None
    )

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        arguments = bound.arguments
        extra = arguments.pop(var_keyword, None) if var_keyword else None
        arguments.update(normalise_arguments(arguments, rules))
        if extra:
            arguments[var_keyword] = normalise_arguments(extra, rules)
        return fn(*bound.args, **bound.kwargs)

    return wrapper
