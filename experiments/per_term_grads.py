"""Seed 002 (minimal form): the gradient of each loss term from one forward pass.

Run: ``python -m experiments.per_term_grads [--seed 0] [--size 10]``

The PyTorch it reproduces::

    x = torch.rand(1, 10, requires_grad=True)
    lossA = x.pow(2).sum(); lossB = x.mean()
    gradA = torch.autograd.grad(lossA, x, retain_graph=True)   # 2x
    gradB = torch.autograd.grad(lossB, x)                      # all 0.1

In JAX the forward pass returns a dict of losses; one ``jax.vjp`` gives a pullback, and
``vmap`` over one-hot cotangents ({"A": 1, "B": 0}, {"A": 0, "B": 1}) pulls back every term at
once — the per-term Jacobian, also available as ``jax.jacrev`` over the dict. Both are compared
with two separate ``jax.grad`` calls (two forward passes).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from experiments._support.common import Row, allclose, fmt
from jaxgrad.report.cli import CheckedConfig, option, run_main
from jaxgrad.training.rng import named_keys


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    seed: int = option(0, "seed for x (the seed uses torch.rand; ours is jax.random.uniform)")
    size: int = option(10, "number of entries of x, shape [1, size] (the seed's 10)", gt=0)

    @classmethod
    def tiny(cls) -> Config:
        return cls(size=4)


def losses(x: jax.Array) -> dict[str, jax.Array]:
    """``x: [1, N]`` → ``{"A": sum(x²), "B": mean(x)}`` (two scalar terms, one forward pass)."""
    return {"A": jnp.sum(x**2), "B": jnp.mean(x)}


def per_term_grads_vjp(x: jax.Array) -> dict[str, jax.Array]:
    """One forward (``jax.vjp``), then the pullback vmapped over one-hot cotangents."""
    out, vjp_fun = jax.vjp(losses, x)
    names = sorted(out)
    eye = jnp.eye(len(names), dtype=x.dtype)
    onehots = {n: eye[:, i] for i, n in enumerate(names)}  # each leaf [T]: row t selects term t
    (stacked,) = jax.vmap(vjp_fun)(onehots)  # [T, 1, N]
    return {n: stacked[i] for i, n in enumerate(names)}


def per_term_grads_jacrev(x: jax.Array) -> dict[str, jax.Array]:
    """The same Jacobian by ``jax.jacrev`` over the dict-valued loss."""
    return jax.jacrev(losses)(x)


def per_term_grads_separate(x: jax.Array) -> dict[str, jax.Array]:
    """Two ``jax.grad`` calls (two forward passes), the seed's two ``autograd.grad`` calls."""
    return {n: jax.grad(lambda x, n=n: losses(x)[n])(x) for n in ("A", "B")}


def main(cfg: Config) -> dict:
    x = jax.random.uniform(named_keys(cfg.seed, "data")["data"], (1, cfg.size), jnp.float32)
    one = jax.jit(per_term_grads_vjp)(x)
    jac = per_term_grads_jacrev(x)
    sep = per_term_grads_separate(x)
    print(f"x      = {fmt(x)}")
    print(f"gradA  = {fmt(one['A'])}   (2x = {fmt(2 * x)})")
    print(f"gradB  = {fmt(one['B'])}   (1/N = {1 / cfg.size:g})")
    agree = all(allclose(one[n], jac[n]) and allclose(one[n], sep[n]) for n in ("A", "B"))
    print(f"one vjp + vmap == jacrev == two jax.grad calls: {agree}")
    return {"x": x, "one_pass": one, "jacrev": jac, "separate": sep, "agree": agree}


def tour() -> list[Row]:
    cfg = Config()
    r = main(cfg)
    x, one = r["x"], r["one_pass"]
    err, b3 = float(jnp.max(jnp.abs(one["A"] - 2 * x))), fmt(one["B"][0, :3])[:-1] + ", ...]"
    return [
        Row("002 gradA = d sum(x²)/dx", "2x", f"2x (max err {err:.1g})",
            allclose(one["A"], 2 * x)),
        Row("002 gradB = d mean(x)/dx", "[0.1000, ... 0.1000]", b3,
            allclose(one["B"], jnp.full((1, cfg.size), 0.1))),
        Row("002 one pass vs two grads", "same", "same" if r["agree"] else "differ", r["agree"]),
    ]  # fmt: skip


if __name__ == "__main__":
    run_main(main, Config)
