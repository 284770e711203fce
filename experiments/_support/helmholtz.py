"""The Helmholtz problem of Wang, Teng & Perdikaris (2021), shared by ``experiments.pinn_helmholtz``
(the runnable study) and ``experiments.bench_pinn`` (its step, timed): exact solution, forcing,
points drawn per step, the loss terms and the networks. Not runnable itself.

``cfg`` is anything with the fields the functions read (``a1, a2, lam, batch, laplacian,
width, depth``): ``pinn_helmholtz.Config`` or :class:`Problem`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxgrad.losses.pde import forward_laplacian, laplacian
from jaxgrad.models.mlp import MLP, ModifiedMLP

__all__ = ["STD", "Problem", "exact_u", "forcing", "make_model", "make_terms_fn", "sample"]

STD = 1 / math.sqrt(3)  # std of U(-1, 1): the authors' sigma_X from 1e5 samples, in closed form


@dataclasses.dataclass(frozen=True)
class Problem:
    """The problem's fields with the authors' values (``pinn_helmholtz.Config`` has them too)."""

    a1: float = 1.0  # frequency of the exact solution in x
    a2: float = 4.0  # frequency in y (4 makes the residual stiff)
    lam: float = 1.0  # Helmholtz λ in u_xx + u_yy + λu = f
    width: int = 50  # hidden width
    depth: int = 3  # hidden layers
    batch: int = 128  # points per edge and residual points per step
    laplacian: str = "forward"  # "forward" (one pass) or "jvp" (jvp of jvp per axis)


def exact_u(xy: jax.Array, cfg: Problem) -> jax.Array:
    """``[N, 2] -> [N]``: sin(a1 π x) sin(a2 π y)."""
    return jnp.sin(cfg.a1 * jnp.pi * xy[:, 0]) * jnp.sin(cfg.a2 * jnp.pi * xy[:, 1])


def forcing(xy: jax.Array, cfg: Problem) -> jax.Array:
    """``[N, 2] -> [N]``: f = Δu + λu for the exact u."""
    k2 = (cfg.a1 * jnp.pi) ** 2 + (cfg.a2 * jnp.pi) ** 2
    return (cfg.lam - k2) * exact_u(xy, cfg)


def sample(key: jax.Array, cfg: Problem) -> dict:
    """One step's points: ``xy_res [B, 2]``, ``f_res [B]``, ``xy_bc [4, B, 2]``, ``g_bc [4, B]``."""
    k_res, k_bc = jax.random.split(key)
    xy_res = jax.random.uniform(k_res, (cfg.batch, 2), minval=-1.0, maxval=1.0)
    t = jax.random.uniform(k_bc, (4, cfg.batch), minval=-1.0, maxval=1.0)
    one = jnp.ones_like(t[0])
    xy_bc = jnp.stack(  # edges y = -1, x = 1, y = 1, x = -1
        [
            jnp.stack([t[0], -one], -1),
            jnp.stack([one, t[1]], -1),
            jnp.stack([t[2], one], -1),
            jnp.stack([-one, t[3]], -1),
        ]
    )
    g_bc = jax.vmap(lambda p: exact_u(p, cfg))(xy_bc)
    return {"xy_res": xy_res, "f_res": forcing(xy_res, cfg), "xy_bc": xy_bc, "g_bc": g_bc}


def make_terms_fn(cfg: Problem):
    """``(params, graphdef, batch) -> {"res": L_r, "bc": Σ_edges L_bc}`` (mean squares)."""

    def terms_fn(params, graphdef, batch):
        model = nnx.merge(graphdef, params)
        u = lambda p: model(p[None])[0, 0]
        xy = batch["xy_res"]
        if cfg.laplacian == "forward":
            u_res, _, lap = forward_laplacian(u, xy)
        else:
            u_res, lap = jax.vmap(u)(xy), laplacian(u, xy)
        r = lap + cfg.lam * u_res - batch["f_res"]
        u_bc = model(batch["xy_bc"].reshape(-1, 2)).reshape(batch["g_bc"].shape)
        bc = jnp.sum(jnp.mean((u_bc - batch["g_bc"]) ** 2, axis=1))
        return {"res": jnp.mean(r**2), "bc": bc}

    return terms_fn


def make_model(arch: str, cfg: Problem, key: jax.Array) -> nnx.Module:
    layers = (2,) + (cfg.width,) * cfg.depth + (1,)
    kw = {"rngs": nnx.Rngs(params=key), "mean": (0.0, 0.0), "std": (STD, STD)}
    if arch == "mlp":
        return MLP(layers, **kw)
    return ModifiedMLP(layers, form="code" if arch == "modified_code" else "paper", **kw)
