"""Differential operators on a pointwise field ``u: [D] -> ()`` at a batch of points ``[N, D]``.

PyTorch PINN code writes ``u_x = autograd.grad(u, x, create_graph=True)`` and again for
``u_xx``. Here the field is a function of one point and the operators are derivatives of that
function, vectorised over points with ``vmap``. Second derivatives use forward-over-forward
``jax.jvp`` along each axis (D cheap passes, no D×D Hessian), which XLA fuses with the
network's forward pass; training then takes ``jax.grad`` of a loss built from them.

:func:`forward_laplacian` is the fast path for training (Li et al., "Forward Laplacian",
2023; the ``folx`` library): one forward pass carries, through every operation of ``u``, the
value, the D first derivatives and the running Laplacian, so a PINN step is a few large
operations instead of D nested jvp passes (and their reverse pass). It is exact: the same
derivatives by the chain rule, checked against :func:`laplacian` in float64.

Wrap a network ``model: [N, D] -> [N, 1]`` as ``u = lambda p: model(p[None])[0, 0]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.extend as jex
import jax.numpy as jnp

__all__ = [
    "check_points",
    "forward_laplacian",
    "gradient",
    "laplacian",
    "normal_derivative",
    "second_derivative",
]

Field = Callable[[jax.Array], jax.Array]


def check_points(x: jax.Array, *, dim: int | None = None, name: str = "points") -> None:
    """Raise ValueError unless ``x`` is a floating ``[N, D]`` array (``D == dim`` if given)."""
    shape = jnp.shape(x)
    if len(shape) != 2 or (dim is not None and shape[1] != dim):
        want = f"[N, {dim}]" if dim is not None else "[N, D]"
        raise ValueError(
            f"{name} must have shape {want} (one row per point), got {shape}: "
            "reshape a single point with x[None] or stack coordinates with jnp.stack(..., -1)."
        )
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"{name} must be floating point to differentiate, got {jnp.result_type(x)}")


def _check_scalar_field(u: Field, x: jax.Array) -> None:
    out = jax.eval_shape(u, x[0])
    if out.shape != ():
        raise ValueError(
            f"the field must map one point [D] to a scalar (), got shape {out.shape}: wrap a "
            "network as lambda p: model(p[None])[0, 0]."
        )


def gradient(u: Field, x: jax.Array) -> jax.Array:
    """∇u at every point: ``[N, D] -> [N, D]``."""
    check_points(x)
    _check_scalar_field(u, x)
    return jax.vmap(jax.grad(u))(x)


def second_derivative(u: Field, x: jax.Array, axis: int) -> jax.Array:
    """∂²u/∂x_axis² at every point: ``[N, D] -> [N]`` (forward-over-forward jvp)."""
    check_points(x)
    _check_scalar_field(u, x)
    e = jnp.zeros(x.shape[1], x.dtype).at[axis].set(1)

    def d2(p):
        du = lambda q: jax.jvp(u, (q,), (e,))[1]
        return jax.jvp(du, (p,), (e,))[1]

    return jax.vmap(d2)(x)


def laplacian(u: Field, x: jax.Array) -> jax.Array:
    """Δu = Σ_d ∂²u/∂x_d² at every point: ``[N, D] -> [N]``."""
    check_points(x)
    return sum(second_derivative(u, x, d) for d in range(x.shape[1]))


def normal_derivative(u: Field, x: jax.Array, normals: jax.Array) -> jax.Array:
    """∂u/∂n = ∇u · n at every point: ``x [N, D]``, ``normals [N, D]`` (or one ``[D]`` for all)
    → ``[N]``. The normals are used as given (pass unit outward normals)."""
    check_points(x)
    _check_scalar_field(u, x)
    normals = jnp.asarray(normals, x.dtype)
    if normals.ndim == 1:
        normals = jnp.broadcast_to(normals, x.shape)
    if normals.shape != x.shape:
        raise ValueError(
            f"normals must have the points' shape {x.shape} (or [D] = [{x.shape[1]}] for one "
            f"normal shared by all points), got {normals.shape}."
        )
    return jax.vmap(lambda p, n: jax.jvp(u, (p,), (n,))[1])(x, normals)


# --- forward Laplacian: a small interpreter over u's jaxpr ------------------------------------
# Every value that depends on the point x is a _Jet(v, g, lap): value v, first derivatives
# g [D, *v.shape] (one row per input axis), lap = Σ_d ∂²v/∂x_d². Values that do not depend on x
# (parameters, constants) stay plain arrays. Rules: linear primitives map all three parts;
# mul / dot_general use the product rule (lap gets 2·Σ_d g_a[d]·g_b[d]); calls (jit, custom_jvp)
# are entered; anything else is exact by jvp: g_d = f'[g_d], lap = f'[lap] + Σ_d f''[g_d, g_d].

_LINEAR = {  # jointly linear in their floating inputs; integer / bool inputs pass unchanged
    "add", "add_any", "sub", "neg", "broadcast_in_dim", "reshape", "squeeze", "expand_dims",
    "transpose", "slice", "dynamic_slice", "concatenate", "pad", "reduce_sum", "copy", "copy_p",
    "convert_element_type", "rev", "select_n", "cumsum", "real", "imag",
}  # fmt: skip
_BILINEAR = {"mul", "dot_general"}
_ELEMENTWISE = {  # smooth, one array in, same shape out: f' and f'' computed once, not per axis
    "tanh", "exp", "exp2", "log", "log1p", "expm1", "sin", "cos", "tan", "logistic", "sqrt",
    "rsqrt", "cbrt", "erf", "erfc", "integer_pow", "sinh", "cosh", "asinh", "atan", "square",
}  # fmt: skip
_CALLS = {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "checkpoint", "remat"}  # fmt: skip


class _Jet(NamedTuple):
    v: jax.Array
    g: jax.Array
    lap: jax.Array


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _bind(prim, params):
    return lambda *xs: prim.bind(*xs, **params)


def _linear(f, args) -> _Jet:
    """``f`` jointly linear in its floating inputs: constants enter the derivatives as 0."""
    val = lambda a: a.v if isinstance(a, _Jet) else a
    tan = lambda part: (
        lambda a: (
            getattr(a, part) if isinstance(a, _Jet) else (jnp.zeros_like(a) if _is_float(a) else a)
        )
    )
    gs = [a.g if isinstance(a, _Jet) else None for a in args]

    def one(*gd):
        return f(*[g if g is not None else tan("g")(a) for g, a in zip(gd, args)])

    g = jax.vmap(one, in_axes=[0 if g is not None else None for g in gs])(*gs)
    return _Jet(f(*map(val, args)), g, f(*map(tan("lap"), args)))


def _bilinear(f, a, b) -> _Jet:
    if not isinstance(b, _Jet):  # linear in a
        return _Jet(f(a.v, b), jax.vmap(lambda g: f(g, b))(a.g), f(a.lap, b))
    if not isinstance(a, _Jet):
        return _Jet(f(a, b.v), jax.vmap(lambda g: f(a, g))(b.g), f(a, b.lap))
    cross = jax.vmap(f)(a.g, b.g).sum(0)
    g = jax.vmap(lambda ga, gb: f(ga, b.v) + f(a.v, gb))(a.g, b.g)
    return _Jet(f(a.v, b.v), g, f(a.lap, b.v) + f(a.v, b.lap) + 2 * cross)


def _elementwise(f, a: _Jet) -> _Jet:
    """``f`` acting entry by entry: g = f'·g, lap = f'·lap + f''·Σ_d g_d²."""
    one = jnp.ones_like(a.v)
    df = lambda y: jax.jvp(f, (y,), (one,))
    y, d1 = df(a.v)
    d2 = jax.jvp(lambda z: df(z)[1], (a.v,), (one,))[1]
    # unrolled over the D axes: no broadcast against [D, ...] and no reduction over D, which
    # XLA:CPU turns into slow reduce fusions (forward and, transposed, backward)
    gs = [a.g[d] for d in range(a.g.shape[0])]
    return _Jet(y, jnp.stack([d1 * g for g in gs]), d1 * a.lap + d2 * sum(g * g for g in gs))


def _by_jvp(f, args) -> _Jet:
    """Any smooth single-output ``f``: first and second directional derivatives by jvp."""
    idx = [i for i, a in enumerate(args) if isinstance(a, _Jet)]

    def h(*ys):
        full = list(args)
        for i, y in zip(idx, ys):
            full[i] = y
        return f(*[a.v if isinstance(a, _Jet) else a for a in full])

    vs = tuple(args[i].v for i in idx)
    d1 = lambda gd: jax.jvp(h, vs, gd)[1]
    d2 = lambda gd: jax.jvp(lambda *ys: jax.jvp(h, ys, gd)[1], vs, gd)[1]
    gs = tuple(args[i].g for i in idx)
    lap = jax.jvp(h, vs, tuple(args[i].lap for i in idx))[1] + jax.vmap(d2)(gs).sum(0)
    return _Jet(h(*vs), jax.vmap(d1)(gs), lap)


def _eval(jaxpr, consts, args):
    env = {}
    read = lambda x: x.val if isinstance(x, jex.core.Literal) else env[x]
    for var, val in zip(jaxpr.constvars, consts):
        env[var] = val
    for var, val in zip(jaxpr.invars, args):
        env[var] = val
    for eqn in jaxpr.eqns:
        ins = [read(x) for x in eqn.invars]
        name, f = eqn.primitive.name, _bind(eqn.primitive, eqn.params)
        inexact = any(jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in eqn.outvars)
        if not any(isinstance(a, _Jet) for a in ins):
            outs = f(*ins)
        elif not inexact or name == "stop_gradient":  # comparisons, is_finite, ...: no derivative
            outs = f(*[a.v if isinstance(a, _Jet) else a for a in ins])
        elif name in _CALLS:
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            if isinstance(sub, jex.core.ClosedJaxpr):
                outs = _eval(sub.jaxpr, sub.consts, ins)
            else:
                outs = _eval(sub, [], ins)
        elif eqn.primitive.multiple_results:
            raise NotImplementedError(
                f"forward_laplacian cannot carry derivatives through the multi-output primitive "
                f"{name!r}: use jaxgrad.losses.pde.laplacian (jvp of jvp) for this field."
            )
        elif name in _LINEAR:
            outs = _linear(f, ins)
        elif name in _BILINEAR:
            outs = _bilinear(f, *ins)
        elif name in _ELEMENTWISE and len(ins) == 1:
            outs = _elementwise(f, ins[0])
        elif name == "div" and not isinstance(ins[1], _Jet):
            outs = _linear(lambda a, b=ins[1], f=f: f(a, b), ins[:1])
        else:
            outs = _by_jvp(f, ins)
        outs = outs if eqn.primitive.multiple_results else [outs]
        for var, val in zip(eqn.outvars, outs):
            env[var] = val
    return [read(x) for x in jaxpr.outvars]


def forward_laplacian(u: Field, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(u, ∇u, Δu)`` at every point in one forward pass: ``[N, D] -> ([N], [N, D], [N])``.

    Exact (the chain rule, carried forward through ``u``'s operations); differentiate a loss
    built from it with ``jax.grad`` as usual. Faster to train with than :func:`laplacian`
    because the value, the gradient and the Laplacian share one pass of large operations.
    Raises NotImplementedError naming the primitive if ``u`` uses a multi-output primitive
    on the point (e.g. a ``lax.scan``); use :func:`laplacian` there.
    """
    check_points(x)
    _check_scalar_field(u, x)
    n, dim = x.shape
    # Interpret the batched program vmap(u): its rows are independent by construction, so
    # seeding every row with the tangent e_d gives each point's own derivatives, and the
    # D tangents sit on a leading axis of every intermediate ([D, N, ...]: big, cheap ops).
    closed = jax.make_jaxpr(jax.vmap(u))(x)
    seed = jnp.broadcast_to(jnp.eye(dim, dtype=x.dtype)[:, None, :], (dim, n, dim))
    (out,) = _eval(closed.jaxpr, closed.consts, [_Jet(x, seed, jnp.zeros_like(x))])
    if not isinstance(out, _Jet):  # u does not depend on the point
        return out, jnp.zeros_like(x), jnp.zeros_like(out)
    return out.v, out.g.T, out.lap
