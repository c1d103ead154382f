"""Peer oracles: MONAI and PyTorch on channels-first copies, optax in JAX, and the jaxseg side.

Every helper returns ``(value, gradient w.r.t. the logits)`` as float64 NumPy arrays,
the gradient channels-last like the logits. With a ``cotangent`` the gradient is that
of ``sum(cotangent * value)`` (for ``reduction="none"``). torch and MONAI are imported
lazily and skipped with a clear reason when missing: they are test oracles, never a
dependency of jaxseg.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

_TORCH_REASON = "torch is a test oracle only (pip install 'jaxseg[test]')"
_MONAI_REASON = "MONAI is a test oracle only (pip install 'jaxseg[test]')"


def torch():
    return pytest.importorskip("torch", reason=_TORCH_REASON)


def monai_losses():
    torch()
    return pytest.importorskip("monai.losses", reason=_MONAI_REASON)


def optax():
    return pytest.importorskip("optax", reason="optax is a test oracle (pip install optax)")


# ---------------------------------------------------------------------------------------
# Layout


def channels_first(x):
    """``(batch, *spatial, classes)`` -> ``(batch, classes, *spatial)``."""
    return np.moveaxis(np.asarray(x), -1, 1)


def channels_last(x):
    return np.moveaxis(np.asarray(x), 1, -1)


def _logits_tensor(logits):
    t = torch()
    return t.tensor(channels_first(logits).astype(np.float64), requires_grad=True)


def _target_tensor(labels):
    """Integer labels -> ``(batch, 1, *spatial)`` int64; dense -> channels-first float64."""
    t = torch()
    labels = np.asarray(labels)
    if labels.dtype.kind in "iub":
        return t.tensor(labels[:, None].astype(np.int64))
    return t.tensor(channels_first(labels).astype(np.float64))


def _backward(out, x, cotangent, grad_layout):
    t = torch()
    if cotangent is None:
        out.sum().backward()
    else:
        cotangent = t.tensor(np.asarray(cotangent, np.float64))
        if cotangent.numel() == out.numel():  # e.g. MONAI's (B, C, 1, 1) for jaxseg's (B, C)
            cotangent = cotangent.reshape(out.shape)
        (out * cotangent).sum().backward()
    grad = x.grad.detach().numpy()
    return out.detach().numpy().astype(np.float64), grad_layout(grad).astype(np.float64)


# ---------------------------------------------------------------------------------------
# MONAI


def monai(name, logits, labels, *, cotangent=None, **options):
    """``monai.losses.<name>(**options)`` on channels-first float64 copies.

    Integer labels are passed as ``(batch, 1, *spatial)`` (use ``to_onehot_y=True``
    for several channels; one channel takes the 0/1 mask as it is).
    """
    loss = getattr(monai_losses(), name)(**options)
    x = _logits_tensor(logits)
    target = _target_tensor(labels)
    if np.shape(logits)[-1] == 1 and target.dtype != x.dtype:
        target = target.to(x.dtype)
    return _backward(loss(x, target), x, cotangent, channels_last)


def torch_value_and_grad(loss, logits, labels):
    """``loss(x, target)`` (a torch function of channels-first float64 logits and the
    target of :func:`monai`) and its gradient, channels-last."""
    x = _logits_tensor(logits)
    return _backward(loss(x, _target_tensor(labels)), x, None, channels_last)


def torch_hessian_vector_product(loss, logits, labels, direction):
    """``H v`` of ``loss(x, target)`` (a torch function of channels-first float64 logits
    and the target of :func:`monai`) at ``logits``, along ``direction``; channels-last."""
    t = torch()
    x = t.tensor(channels_first(logits).astype(np.float64))
    v = t.tensor(channels_first(direction).astype(np.float64))
    target = _target_tensor(labels)
    _, hv = t.autograd.functional.hvp(lambda a: loss(a, target), x, v)
    return channels_last(hv.numpy()).astype(np.float64)


# ---------------------------------------------------------------------------------------
# PyTorch


def torch_cross_entropy(logits, labels, *, cotangent=None, weight=None, **options):
    """``torch.nn.functional.cross_entropy`` on channels-first float64 copies."""
    t = torch()
    x = _logits_tensor(logits)
    labels = np.asarray(labels)
    if labels.dtype.kind in "iub":
        target = t.tensor(labels.astype(np.int64))
    else:
        target = t.tensor(channels_first(labels).astype(np.float64))
    if weight is not None:
        weight = t.tensor(np.asarray(weight, np.float64))
    out = t.nn.functional.cross_entropy(x, target, weight=weight, **options)
    return _backward(out, x, cotangent, channels_last)


def torch_bce_with_logits(
    logits, targets, *, cotangent=None, weight=None, pos_weight=None, **options
):
    """``binary_cross_entropy_with_logits``; elementwise, so channels-last is kept.

    (In PyTorch's channels-first layout a per-class ``pos_weight`` must be reshaped to
    ``(C, 1, ...)``; channels-last it broadcasts against the last axis as given.)
    """
    t = torch()
    x = t.tensor(np.asarray(logits, np.float64), requires_grad=True)
    y = t.tensor(np.asarray(targets, np.float64))
    as_tensor = lambda v: None if v is None else t.tensor(np.asarray(v, np.float64))
    out = t.nn.functional.binary_cross_entropy_with_logits(
        x, y, weight=as_tensor(weight), pos_weight=as_tensor(pos_weight), **options
    )
    return _backward(out, x, cotangent, lambda g: g)


# ---------------------------------------------------------------------------------------
# optax (JAX, float32)


def optax_value_and_grad(name, logits, labels, **options):
    """``optax.losses.<name>(logits, labels, **options).mean()`` and its gradient."""
    fn = getattr(optax().losses, name)
    value, grad = jit(jax.value_and_grad(lambda x, y: jnp.mean(fn(x, y, **options))))(
        jnp.asarray(logits), jnp.asarray(labels)
    )
    return np.float64(value), np.asarray(grad, np.float64)


# ---------------------------------------------------------------------------------------
# The jaxseg side, compiled once per (loss, static options)

# The tests compile hundreds of small value-and-gradient programs; LLVM's optimisation
# level changes how fast the code runs, not what it computes, and level 0 compiles in
# about 60% of the time. Library calls made directly by the tests keep the defaults.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def jit(fn, **kwargs):
    """``jax.jit`` with the tests' fast-compile options."""
    return jax.jit(fn, compiler_options=COMPILER_OPTIONS, **kwargs)


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, jax.Array))


class Request(NamedTuple):
    """One jaxseg evaluation: ``loss(logits, labels, **options)`` and its gradient."""

    loss: Callable
    logits: np.ndarray
    labels: np.ndarray
    options: dict
    cotangent: np.ndarray | None = None

    def split(self):
        """The static part (hashable) and the traced arguments."""
        arrays = {k: v for k, v in self.options.items() if _is_array(v)}
        static = tuple(sorted((k, v) for k, v in self.options.items() if k not in arrays))
        spec = (self.loss, static, self.cotangent is not None)
        args = (
            jnp.asarray(self.logits),
            jnp.asarray(self.labels),
            {k: jnp.asarray(v) for k, v in arrays.items()},
            None if self.cotangent is None else jnp.asarray(self.cotangent, jnp.float32),
        )
        return spec, args


def _value_and_grad(spec, logits, labels, arrays, cotangent):
    loss, static, with_cotangent = spec

    def objective(x):
        out = loss(x, labels, **dict(static), **arrays)
        return (jnp.sum(out * cotangent) if with_cotangent else out), out

    (_, out), grad = jax.value_and_grad(objective, has_aux=True)(logits)
    return out, grad


@functools.cache
def _compiled(specs):
    return jit(lambda args: [_value_and_grad(s, *a) for s, a in zip(specs, args, strict=True)])


def jaxseg_many(requests):
    """Values and gradients of several :class:`Request` s, compiled as one program.

    Compiling a family of cases together takes about half the time of compiling them
    one by one. Array-valued options (``where``, ``class_weights``, ...) are traced, the
    others static. Returns ``[(value, grad)]`` as float64 NumPy arrays.
    """
    specs, args = zip(*(Request(*r).split() for r in requests), strict=True)
    results = _compiled(tuple(specs))(list(args))
    return [(np.asarray(v, np.float64), np.asarray(g, np.float64)) for v, g in results]


def jaxseg_value_and_grad(loss, logits, labels, *, cotangent=None, **options):
    """``loss(logits, labels, **options)`` and its gradient under one ``jit``."""
    return jaxseg_many([Request(loss, logits, labels, options, cotangent)])[0]


def family(build):
    """Decorates ``build() -> {case: (Request, extra)}`` into a cached evaluation.

    The decorated function returns ``{case: (extra, (value, grad))}``, computed once
    for all cases as one compiled program (parametrised tests read their own case).
    """

    @functools.cache
    def results():
        built = build()
        values = jaxseg_many([request for request, _ in built.values()])
        return {
            case: (extra, value)
            for (case, (_, extra)), value in zip(built.items(), values, strict=True)
        }

    return results


RTOL, ATOL = 1e-5, 1e-6


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    """float64 comparison with strict shapes; the tolerance of the parity tests."""
    np.testing.assert_allclose(
        np.asarray(actual, np.float64),
        np.asarray(expected, np.float64),
        rtol=rtol,
        atol=atol,
        strict=True,
    )


def assert_masked_equals_sliced(masked_entry, sliced_entry):
    """Excluding the last two columns equals slicing them away, values and gradients.

    ``masked_entry`` is ``((expected, where), (value, grad))`` of the masked call and
    ``sliced_entry`` ``(_, (value, grad))`` of the call on the sliced inputs. The mean is
    over fewer pixels either way: gradients agree on the kept pixels and are exactly
    zero on the excluded ones.
    """
    (expected, where), (masked, masked_grad) = masked_entry
    _, (sliced, sliced_grad) = sliced_entry
    assert_close(masked, sliced)
    assert_close(masked, expected)
    assert_close(masked_grad[..., :-2, :], sliced_grad)
    assert np.all(masked_grad[~where] == 0)
