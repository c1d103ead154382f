"""The softmax engine as shipped (custom_jvp) against the same math as a custom_vjp.

Usage: python -m bench.engine_variants 4,19,117 12   (class counts, interleaved rounds)

Both variants share the forward pass (jaxseg._softmax._forward); the custom_vjp
one writes the backward formula of the module docstring by hand and saves the pass's
values as residuals. Prints the median time of jit(value_and_grad) per loss and the XLA
temporary memory, both variants timed in the same balanced interleaved rounds.
"""

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxseg
from bench import timing
from jaxseg import _softmax as S


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def engine_vjp(x, top, y, v, weights, smooth, overlap, focal):
    return S._forward(x, top, y, v, weights, smooth, overlap, focal)[0]


def fwd(x, top, y, v, weights, smooth, overlap, focal):
    out, f = S._forward(x, top, y, v, weights, smooth, overlap, focal)
    return out, (x, y, v, weights, f)


def bwd(overlap, focal, res, g):
    x, y, v, weights, f = res
    if overlap:
        g_pred, g_tp, g_lp, g_l1m, g_q = g
    else:
        g_lp, g_l1m, g_q = g
    p = f.e * f.inv_s[..., None]
    a = g_lp if f.log1m is None else g_lp - jnp.exp(f.log_p - f.log1m) * g_l1m
    coef = a + jnp.sum(weights) * g_q
    dx = S._row(weights, x.ndim) * g_q[..., None]
    if overlap:
        per_pixel = lambda a: a.reshape(y.shape)
        a = a + v * f.p_y * per_pixel(jnp.take_along_axis(g_tp, S._pixels(y), axis=1))
        p_g = per_pixel(jnp.einsum("bnc,bc->bn", S._cells(p), g_pred))
        coef = a + jnp.sum(weights) * g_q + v * p_g
        per_class = g_pred.reshape((g_pred.shape[0],) + (1,) * (x.ndim - 2) + (-1,))
        dx = dx + p * v[..., None] * per_class
    dx = dx + jnp.where(S._hit(y, x.shape[-1]), a[..., None], 0) - p * coef[..., None]
    log_p = (x - f.top[..., None]) - f.log_s[..., None]
    dw = jnp.sum(log_p * g_q[..., None], axis=tuple(range(x.ndim - 1)))
    return dx, None, None, None, dw, None


engine_vjp.defvjp(fwd, bwd)
orig = S._engine
fns = {}
for mode in ("jvp", "vjp"):
    for name in ("cross_entropy", "dice_loss", "dice_ce", "focal_loss", "dice_focal"):
        fns[(mode, name)] = getattr(jaxseg, name)
for C in [int(c) for c in sys.argv[1].split(",")]:
    side = int(round((2**18 / C) ** 0.5))
    shape = (8, side, side, C)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32) * 2)
    y = jnp.asarray(rng.integers(0, C, shape[:-1]).astype(np.int32))
    comp = {}
    for (mode, name), f in fns.items():
        S._engine = orig if mode == "jvp" else engine_vjp
        jax.clear_caches()
        comp[(mode, name)] = (
            jax.jit(jax.value_and_grad(lambda a, b, f=f: f(a, b))).lower(x, y).compile()
        )
    S._engine = orig
    for c in comp.values():
        jax.block_until_ready(c(x, y))
    # check equal gradients
    for name in ("dice_ce", "dice_focal"):
        a = comp[("jvp", name)](x, y)[1]
        b = comp[("vjp", name)](x, y)[1]
        assert np.allclose(a, b, atol=1e-6), name
    ts = {k: [] for k in comp}
    keys = list(comp)
    orders = timing.balanced_orders(len(keys))
    for r in range(int(sys.argv[2])):
        for k in (keys[i] for i in orders[r % len(orders)]):
            t0 = time.perf_counter()
            jax.block_until_ready(comp[k](x, y))
            ts[k].append(time.perf_counter() - t0)
    for name in ("cross_entropy", "dice_loss", "dice_ce", "focal_loss", "dice_focal"):
        j, v = np.median(ts[("jvp", name)]), np.median(ts[("vjp", name)])
        tj = comp[("jvp", name)].memory_analysis().temp_size_in_bytes / x.nbytes
        tv = comp[("vjp", name)].memory_analysis().temp_size_in_bytes / x.nbytes
        print(
            f"C={C} {name}: custom_jvp {j * 1e3:.1f} ms temp {tj:.2f}x"
            f" | custom_vjp {v * 1e3:.1f} ms temp {tv:.2f}x | time ratio {j / v:.2f}",
            flush=True,
        )
