"""Differential operators on a pointwise field ``u: [D] -> ()`` at a batch of points ``[N, D]``.

PyTorch PINN code writes ``u_x = autograd.grad(u, x, create_graph=True)`` and again for
``u_xx``. Here the field is a function of one point and the operators are derivatives of that
function, vectorised over points with ``vmap``. Second derivatives use forward-over-forward
``jax.jvp`` along each axis (D cheap passes, no D×D Hessian), which XLA fuses with the
network's forward pass; training then takes ``jax.grad`` of a loss built from them.

Wrap a network ``model: [N, D] -> [N, 1]`` as ``u = lambda p: model(p[None])[0, 0]``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["check_points", "gradient", "laplacian", "normal_derivative", "second_derivative"]

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
