"""Combinators: new losses built from losses.

Each combinator takes loss functions ``f(logits, labels, **options)`` and returns a new
function with the same signature, pure and usable under ``jit``, ``grad``, ``vmap``:

- :func:`combine`: a weighted sum of terms, each optionally named and given its own
  options with ``functools.partial``;
- :func:`log_transform`: ``-log(1 - L)``, e.g. the log-Dice loss;
- :func:`deep_supervision`: a loss over several output scales, labels downsampled by
  nearest neighbour;
- :func:`with_components`: ``(loss, {name: term})`` for ``jax.value_and_grad(...,
  has_aux=True)``.

Options given at call time are routed by name: each goes to every term whose signature
accepts it, so ``include_background`` reaches a Dice term and not a cross-entropy term
(the nnU-Net and MONAI convention for compound losses), while ``where`` or
``ignore_index`` reach both. An option that no term accepts is a ``TypeError``.

The returned functions compile their whole body as one ``jax.jit`` program (terms share
the activation and fuse): array-valued and float options are traced (a new smoothing or
weight does not recompile), every other option (strings, ints, bools, None, tuples) is
static and part of the compilation key. Inputs and options are normalised first
(:func:`jaxseg._arguments.normalised`): lists become arrays, option types and ranges are
checked by name, and term weights must be finite numbers >= 0.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import _arguments, _checks

ArrayLike = jax.typing.ArrayLike
Loss = Callable[..., Any]

_COMPONENTS = "return_components"
_MISSING = object()


# --------------------------------------------------------------------------------------
# Introspection: names and accepted options of a loss.


def loss_name(loss: Loss) -> str:
    """The name of a loss: its ``__name__``, looking through ``functools.partial``."""
    while isinstance(loss, functools.partial):
        loss = loss.func
    return getattr(loss, "__name__", type(loss).__name__)


def accepted_options(loss: Loss) -> frozenset[str] | None:
    """The keyword options ``loss`` accepts besides ``(logits, labels)``; None for any.

    A combinator's output declares its options in an ``accepted_options`` attribute;
    otherwise the signature decides (``**kwargs`` accepts anything). ``return_components``
    is never routed: each combinator handles it itself.
    """
    declared = getattr(loss, "accepted_options", _MISSING)
    if declared is not _MISSING:
        return declared
    try:
        parameters = list(inspect.signature(loss).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    positional = [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    keywords = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return frozenset(keywords - set(positional[:2]) - {_COMPONENTS})


def supports_components(loss: Loss) -> bool:
    """True if ``loss`` takes ``return_components=True`` and then returns ``(value, dict)``."""
    if getattr(loss, "supports_components", False):
        return True
    try:
        return _COMPONENTS in inspect.signature(loss).parameters
    except (TypeError, ValueError):
        return False


def _route(options: Mapping[str, Any], accepted: frozenset[str] | None) -> dict[str, Any]:
    if accepted is None:
        return dict(options)
    return {name: value for name, value in options.items() if name in accepted}


def _check_options(options: Mapping[str, Any], accepted: frozenset[str] | None, what: str) -> None:
    if accepted is None:
        return
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"option(s) {unknown} are accepted by none of the terms of {what}; accepted "
            f"options: {sorted(accepted)}."
        )


# --------------------------------------------------------------------------------------
# One jit for a whole combinator body: array options traced, the others static.


def _split_options(options: Mapping[str, Any]) -> tuple[tuple[tuple[str, Any], ...], dict]:
    """Splits options into static ``(name, value)`` pairs and traced arrays and floats."""
    static, traced = [], {}
    for name in sorted(options):
        value = options[name]
        if isinstance(value, (jax.Array, np.ndarray, float, np.floating)):
            traced[name] = value
            continue
        if isinstance(value, list):
            value = tuple(value)
        try:
            hash(value)
        except TypeError:
            raise TypeError(
                f"option `{name}` must be an array or a hashable value (str, number, bool, "
                f"None, tuple); got {type(value).__name__}."
            ) from None
        static.append((name, value))
    return tuple(static), traced


class _OptionJit:
    """``jax.jit`` of ``body(*args, **options)`` with array options traced, others static."""

    def __init__(self, body: Callable[..., Any]):
        self._body = body
        self._jitted = jax.jit(self._run, static_argnames=("static",))

    def _run(self, args, traced, static):
        return self._body(*args, **traced, **dict(static))

    def __call__(self, *args: Any, **options: Any) -> Any:
        static, traced = _split_options(options)
        return self._jitted(args, traced, static=static)


# --------------------------------------------------------------------------------------
# combine


def _widen(x: Any) -> Any:
    """A float array in its compute dtype (see ``_checks.widen``); others unchanged."""
    if isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(x.dtype, jnp.floating):
        return _checks.widen(jnp.asarray(x))
    return x


class CombinedLoss:
    r"""A weighted sum of loss terms, made by :func:`combine`.

    Calling it as ``combined(logits, labels, **options)`` returns
    :math:`\sum_k w_k L_k`; with ``return_components=True`` it returns ``(total,
    {name: L_k})`` (the unweighted terms). :meth:`evaluate` takes other weights at
    call time (traced, so a weight schedule does not recompile).

    Attributes:
      names: the component names, in order.
      losses: the term functions.
      weights: the default weights.
      accepted_options: the union of the options the terms accept (None: any).
    """

    supports_components = True

    def __init__(self, names: Sequence[str], losses: Sequence[Loss], weights: Sequence[Any]):
        self.names = tuple(names)
        self.losses = tuple(losses)
        self.weights = tuple(weights)
        self._accepted = tuple(accepted_options(fn) for fn in self.losses)
        self.accepted_options = (
            None if any(a is None for a in self._accepted) else frozenset().union(*self._accepted)
        )
        self.__name__ = "+".join(self.names)
        self._jit = _OptionJit(self._evaluate)

    def __repr__(self) -> str:
        terms = ", ".join(
            f"{name}={loss_name(fn)}" for name, fn in zip(self.names, self.losses, strict=True)
        )
        return f"CombinedLoss({terms}, weights={self.weights})"

    def _evaluate(self, logits, labels, weights, **options):
        # Half-precision logits are widened once here, not in every term: the terms'
        # gradients then add up in float32 and are rounded to the input dtype once.
        logits = jax.tree.map(_widen, logits)
        values = {}
        for name, fn, accepted in zip(self.names, self.losses, self._accepted, strict=True):
            values[name] = jnp.asarray(fn(logits, labels, **_route(options, accepted)))
        shapes = {name: value.shape for name, value in values.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(
                f"the terms of a combined loss must return values of one shape; got {shapes}. "
                "Use a scalar reduction ('mean' or 'sum')."
            )
        total = sum(w * values[name] for w, name in zip(weights, self.names, strict=True))
        return total, values

    @functools.partial(_arguments.normalised, logits=_arguments.as_array_or_arrays)
    def evaluate(
        self,
        logits: Any,
        labels: ArrayLike,
        weights: Sequence[ArrayLike] | None = None,
        *,
        return_components: bool = False,
        **options: Any,
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Like calling the loss, with ``weights`` (one per term, traced) given at call time."""
        weights = self.weights if weights is None else _check_weights(weights, self.names)
        _check_options(options, self.accepted_options, repr(self))
        total, components = self._jit(logits, labels, weights, **options)
        return (total, components) if return_components else total

    def __call__(
        self, logits: Any, labels: ArrayLike, *, return_components: bool = False, **options: Any
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        return self.evaluate(
            logits, labels, self.weights, return_components=return_components, **options
        )


def _check_weights(weights: Any, names: Sequence[str]) -> tuple[Any, ...]:
    """One weight per term, each a finite number >= 0 (a scalar; traced values allowed)."""
    if isinstance(weights, (str, bytes)) or not isinstance(weights, (Sequence, np.ndarray)):
        if not isinstance(weights, jax.Array) or jnp.ndim(weights) != 1:
            raise _arguments.ArgumentTypeError(
                f"`weights` must be a sequence of numbers, one per term {tuple(names)}, or a "
                f"mapping from names to numbers; got {type(weights).__name__}."
            )
    weights = tuple(weights)
    if len(weights) != len(names):
        raise ValueError(
            f"`weights` must have one entry per term ({len(names)}: {tuple(names)}); got "
            f"{len(weights)}."
        )
    return tuple(
        _arguments.as_number(f"weights[{name!r}]", w, low=0)
        for name, w in zip(names, weights, strict=True)
    )


def _resolve_weights(weights: Any, names: Sequence[str]) -> tuple[Any, ...]:
    if weights is None:
        return (1.0,) * len(names)
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"`weights` names unknown terms {unknown}; the terms are {names}.")
        weights = tuple(weights.get(name, 1.0) for name in names)
    return _check_weights(weights, names)


def combine(
    *losses: Loss | tuple[str, Loss],
    weights: Sequence[ArrayLike] | Mapping[str, ArrayLike] | None = None,
    **named_losses: Loss,
) -> CombinedLoss:
    r"""A weighted sum of losses: :math:`L = \sum_k w_k L_k`.

    Terms are given positionally (a loss, named by its ``__name__``, or a ``(name,
    loss)`` pair) and/or as keywords (the keyword is the component name). Per-term
    options are bound with ``functools.partial``; options given at call time go to
    every term whose signature accepts them (and override the bound ones, as
    ``functools.partial`` does). The result has the signature ``(logits, labels, *,
    return_components=False, **options)``; with ``return_components=True`` it returns
    ``(total, {name: L_k})`` with the unweighted terms, ready for ``has_aux``.

    Args:
      *losses: loss functions or ``(name, loss)`` pairs.
      weights: one weight per term (positional terms first, then keyword terms), or a
        mapping from names to weights (missing names weigh 1). Default: 1 each.
      **named_losses: loss functions, keyed by their component name.

    Returns:
      A :class:`CombinedLoss`, callable as ``f(logits, labels, **options)``.

    Examples:
      >>> import functools, jax, jaxseg
      >>> loss = jaxseg.combine(
      ...     dice=functools.partial(jaxseg.dice_loss, include_background=False),
      ...     ce=jaxseg.cross_entropy, weights={"ce": 0.5})
      >>> logits = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
      >>> labels = jax.random.randint(jax.random.key(1), (2, 8, 8), 0, 3)
      >>> (total, parts), grads = jax.value_and_grad(
      ...     jaxseg.with_components(loss), has_aux=True)(logits, labels, ignore_index=2)
      >>> sorted(parts)
      ['ce', 'dice']
    """
    names, fns = [], []
    for term in losses:
        if isinstance(term, tuple):
            if len(term) != 2 or not isinstance(term[0], str):
                raise TypeError(
                    f"a positional term must be a loss or a (name, loss) pair; got {term!r}."
                )
            name, fn = term
        else:
            name, fn = loss_name(term), term
        names.append(name)
        fns.append(fn)
    for name, fn in named_losses.items():
        names.append(name)
        fns.append(fn)
    if not fns:
        raise ValueError("`combine` needs at least one loss.")
    for name, fn in zip(names, fns, strict=True):
        if not callable(fn):
            raise TypeError(f"term `{name}` must be callable; got {fn!r}.")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"component names must be unique; {duplicates} appear more than once. Name the "
            "terms with keywords, e.g. combine(dice=..., dice_batch=...)."
        )
    return CombinedLoss(names, fns, _resolve_weights(weights, names))


# --------------------------------------------------------------------------------------
# log_transform


def log_transform(loss: Loss, *, eps: float = 1e-7) -> Loss:
    r"""The log transform of a loss in [0, 1]: :math:`-\log(1 - L)`.

    Applied to :func:`jaxseg.dice_loss` this is the log-Dice loss :math:`-\log D` (of
    the mean Dice coefficient ``D = 1 - L``). ``1 - L`` is clamped below at ``eps`` (as
    segmentation_models_pytorch's ``log_loss`` clamps the score at ``1e-7``), so the
    value is finite at ``L = 1`` (at most ``-log(eps)``, 16.1 by default) and the
    gradient is 0 where the clamp is active instead of infinite.

    Args:
      loss: a loss ``f(logits, labels, **options)`` with values in [0, 1].
      eps: the clamp, > 0.

    Returns:
      ``g(logits, labels, **options) = -log(max(1 - f(logits, labels, **options), eps))``,
      named ``log_<name>``.

    Examples:
      >>> import jax, jaxseg
      >>> log_dice = jaxseg.log_transform(jaxseg.dice_loss)
      >>> logits = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
      >>> labels = jax.random.randint(jax.random.key(1), (2, 8, 8), 0, 3)
      >>> bool(log_dice(logits, labels) > jaxseg.dice_loss(logits, labels))
      True
    """
    eps = _arguments.as_number("eps", eps, low=0, low_open=True)
    if not callable(loss):
        raise TypeError(f"`loss` must be callable; got {type(loss).__name__}.")

    def body(logits, labels, **options):
        value = jnp.asarray(loss(logits, labels, **options))
        return -jnp.log(jnp.maximum(1 - value, eps))

    jitted = _OptionJit(body)
    accepted = accepted_options(loss)
    name = f"log_{loss_name(loss)}"

    @functools.partial(_arguments.normalised, logits=_arguments.as_array_or_arrays)
    def transformed(logits: Any, labels: ArrayLike, **options: Any) -> jax.Array:
        _check_options(options, accepted, name)
        return jitted(logits, labels, **options)

    transformed.__name__ = transformed.__qualname__ = name
    transformed.__doc__ = f"-log(1 - {loss_name(loss)}), clamped at 1 - L >= {eps}."
    transformed.accepted_options = accepted
    return transformed


# --------------------------------------------------------------------------------------
# deep_supervision


def nearest_indices(size_in: int, size_out: int, xp: Any = np) -> np.ndarray:
    """Source index of each output index for nearest-neighbour resizing.

    Pixel centres are aligned (PyTorch ``mode="nearest-exact"``, used by nnU-Net's
    ``DownsampleSegForDSTransform``): ``floor((i + 1/2) size_in / size_out)``, in exact
    integer arithmetic. For an integer factor ``f`` it is ``f i + f // 2``. ``xp`` is
    ``np`` (static sizes) or ``jnp`` (symbolic sizes, see ``_checks.static_sizes``).
    """
    i = xp.arange(size_out)
    return xp.minimum(((2 * i + 1) * size_in) // (2 * size_out), size_in - 1)


def resize_nearest(x: jax.Array, size: Sequence[int], first_axis: int = 1) -> jax.Array:
    """Nearest-neighbour resize of the axes ``first_axis, ...`` of ``x`` to ``size``.

    Regular index maps (any integer factor) are strided slices; others are gathers with
    static indices. Works for integer, boolean and float arrays alike.
    """
    for k, size_out in enumerate(size):
        axis = first_axis + k
        size_in = x.shape[axis]
        if size_in == size_out:
            continue
        if not _checks.static_sizes(size_in, size_out):
            # Symbolic sizes: the same indices, computed in the program.
            x = jnp.take(x, nearest_indices(size_in, size_out, xp=jnp), axis=axis)
            continue
        index = nearest_indices(size_in, size_out)
        step = int(index[1] - index[0]) if size_out > 1 else 1
        if np.array_equal(index, index[0] + step * np.arange(size_out)):
            x = jax.lax.slice_in_dim(x, int(index[0]), int(index[-1]) + 1, step, axis)
        else:
            x = jnp.take(x, jnp.asarray(index, jnp.int32), axis=axis)
    return x


def deep_supervision_weights(num_scales: int, weights: Any = None) -> tuple[Any, ...]:
    """The weight of each scale.

    ``None``: :math:`2^{-i}` normalised to sum 1 over every scale. ``"nnunet"``: the
    same with the lowest resolution zeroed before normalising (nnU-Net v2). A sequence:
    used as given (not normalised), one entry per scale.
    """
    if weights is None or isinstance(weights, str):
        if weights not in (None, "nnunet"):
            raise ValueError(f"`weights` must be None, 'nnunet' or a sequence; got {weights!r}.")
        w = np.array([0.5**i for i in range(num_scales)])
        if weights == "nnunet" and num_scales > 1:
            w[-1] = 0
        return tuple(float(v) for v in w / w.sum())
    weights = tuple(weights)
    if len(weights) != num_scales:
        raise ValueError(
            f"`weights` must have one entry per scale ({num_scales} outputs); got {len(weights)}."
        )
    return weights


def _check_scales(logits: Any, labels: Any) -> None:
    if not isinstance(logits, (list, tuple)) or not logits:
        raise ValueError(
            "`logits` must be a non-empty list or tuple of arrays, one per output scale, "
            f"the first at full resolution; got {type(logits).__name__}."
        )
    first = np.shape(logits[0])
    for i, x in enumerate(logits):
        shape = np.shape(x)
        if len(shape) != len(first) or shape[0] != first[0] or shape[-1] != first[-1]:
            raise ValueError(
                f"`logits[{i}]` must have shape (batch={first[0]}, *spatial, "
                f"classes={first[-1]}) with {len(first) - 2} spatial axes; got {shape}."
            )
        if any(s > f for s, f in zip(shape[1:-1], first[1:-1], strict=True)):
            raise ValueError(
                f"`logits[{i}]` has spatial shape {shape[1:-1]}, larger than the first "
                f"(full-resolution) output {first[1:-1]}."
            )
    label_shape = np.shape(labels)
    spatial = label_shape[1:] if _checks.is_integer_labels(labels) else label_shape[1:-1]
    if tuple(spatial) != tuple(first[1:-1]):
        raise ValueError(
            f"`labels` must have the spatial shape of `logits[0]`, {first[1:-1]}; got shape "
            f"{label_shape}."
        )


def deep_supervision(loss: Loss, weights: Sequence[ArrayLike] | str | None = None) -> Loss:
    r"""A loss over several output scales (deep supervision, as in nnU-Net).

    .. math::
        L = \sum_i w_i\, \mathrm{loss}(x_i, \downarrow_i y)

    where ``x_i`` is the ``i``-th output and :math:`\downarrow_i y` the labels (and the
    ``where`` mask) resized to its spatial shape by nearest neighbour with aligned pixel
    centres (for a factor ``f``, ``y[:, f//2::f, ...]``, as nnU-Net's
    ``nearest-exact``; non-integer factors use an index map). Integer and dense labels
    are both resized; nothing is interpolated, so one-hot labels stay one-hot.

    Default weights are :math:`2^{-i}` normalised to sum 1 over all scales. nnU-Net v2
    also zeroes the lowest-resolution output before normalising: ask for that with
    ``weights="nnunet"`` (for 5 scales, ``(8, 4, 2, 1, 0) / 15`` instead of
    ``(16, 8, 4, 2, 1) / 31``). Explicit weights are used as given.

    Args:
      loss: ``f(logits, labels, **options)``; a :func:`combine` result keeps its
        components.
      weights: None, ``"nnunet"``, or one weight per scale.

    Returns:
      ``g(logits, labels, *, return_components=False, **options)`` where ``logits`` is
      a list or tuple of ``(batch, *spatial_i, classes)`` arrays, the first at the
      labels' resolution. With ``return_components=True``: ``(total, components)``,
      the scale-weighted sums of ``loss``'s components (``{name: value}`` for a plain
      loss).

    Examples:
      >>> import jax, jaxseg
      >>> loss = jaxseg.deep_supervision(jaxseg.dice_ce)
      >>> k = jax.random.split(jax.random.key(0), 3)
      >>> outputs = [jax.random.normal(k[0], (2, 16, 16, 3)),
      ...            jax.random.normal(k[1], (2, 8, 8, 3))]
      >>> labels = jax.random.randint(k[2], (2, 16, 16), 0, 3)
      >>> loss(outputs, labels).shape
      ()

    References:
      Isensee, Jaeger, Kohl, Petersen, Maier-Hein. nnU-Net: a self-configuring method
      for deep learning-based biomedical image segmentation. Nature Methods 2021.
    """
    if isinstance(weights, str) or weights is None:
        deep_supervision_weights(1, weights)  # validates the string now
    else:
        weights = tuple(
            _arguments.as_number(f"weights[{i}]", w, low=0) for i, w in enumerate(weights)
        )
    if not callable(loss):
        raise TypeError(f"`loss` must be callable; got {type(loss).__name__}.")
    accepted = accepted_options(loss)
    components = supports_components(loss)
    name = loss_name(loss)

    def body(logits, labels, scale_weights, where=None, **options):
        totals, parts = [], []
        for x in logits:
            size = x.shape[1:-1]
            y = resize_nearest(labels, size)
            kwargs = dict(options)
            if where is not None:
                kwargs["where"] = resize_nearest(where, size)
            if components:
                value, comps = loss(x, y, return_components=True, **kwargs)
            else:
                value = loss(x, y, **kwargs)
                comps = {name: value}
            totals.append(value)
            parts.append(comps)
        total = sum(w * v for w, v in zip(scale_weights, totals, strict=True))
        combined = {
            key: sum(w * p[key] for w, p in zip(scale_weights, parts, strict=True))
            for key in parts[0]
        }
        return total, combined

    jitted = _OptionJit(body)

    @functools.partial(_arguments.normalised, logits=_arguments.as_scales)
    def supervised(
        logits: Sequence[ArrayLike],
        labels: ArrayLike,
        *,
        return_components: bool = False,
        **options: Any,
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        _check_options(options, accepted, f"deep_supervision({name})")
        _check_scales(logits, labels)
        where = options.get("where")
        if where is not None:
            _checks.check_where(where, tuple(np.shape(logits[0])[:-1]))
        scale_weights = deep_supervision_weights(len(logits), weights)
        total, comps = jitted(tuple(logits), labels, scale_weights, **options)
        return (total, comps) if return_components else total

    supervised.__name__ = supervised.__qualname__ = f"deep_supervision_{name}"
    supervised.accepted_options = accepted
    supervised.supports_components = True
    return supervised


# --------------------------------------------------------------------------------------
# with_components


def with_components(loss: Loss) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """``loss`` returning ``(value, {name: component})``, for ``has_aux=True``.

    A :func:`combine` or :func:`deep_supervision` result (or a compound loss such as
    :func:`jaxseg.dice_ce`) returns its components; any other loss returns ``{name:
    value}`` under its own name.

    Examples:
      >>> import jax, jaxseg
      >>> logits = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
      >>> labels = jax.random.randint(jax.random.key(1), (2, 8, 8), 0, 3)
      >>> (loss, parts), grads = jax.value_and_grad(
      ...     jaxseg.with_components(jaxseg.dice_ce), has_aux=True)(logits, labels)
      >>> sorted(parts)
      ['ce', 'dice']
    """
    normalise = functools.partial(_arguments.normalised, logits=_arguments.as_array_or_arrays)
    if supports_components(loss):

        @normalise
        def split(logits, labels, **options):
            return loss(logits, labels, return_components=True, **options)

    else:
        name = loss_name(loss)

        @normalise
        def split(logits, labels, **options):
            value = loss(logits, labels, **options)
            return value, {name: value}

    split.__name__ = split.__qualname__ = f"{loss_name(loss)}_with_components"
    return split
