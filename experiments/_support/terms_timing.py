"""Per-term gradients vs one summed gradient, JAX and PyTorch timed in turns: the reusable
core of ``python -m experiments.bench_terms`` (which documents the variants), also run by
``experiments.gpu_suite``. Not runnable itself; PyTorch is imported only when timed."""

from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgrad.inspect.bench import compile_timed, interleave
from jaxgrad.losses.pde import forward_laplacian, laplacian
from jaxgrad.losses.terms import TERM_GRAD_METHODS, term_grads
from jaxgrad.models.mlp import MLP

LAPLACIANS = ("forward", "jvp")

#: what each variant computes (printed beside the numbers)
ALGORITHMS = {
    "jax sum": "jax.grad(Σ L_i): one gradient",
    "jax split": "term_grads(method='split'): K jax.grad, forward shared by XLA CSE",
    "jax vmap": "term_grads(method='vmap'): one vjp, vmap over K one-hot cotangents",
    "jax jacrev": "term_grads(method='jacrev'): jax.jacrev over the dict of terms",
    "torch sum": "autograd.grad(Σ L_i, params): one gradient",
    "torch loop": "K x autograd.grad(L_i, params, retain_graph=True)",
}


def _shapes(size: str) -> tuple[tuple[int, ...], int]:
    return ((2, 50, 50, 50, 1), 128) if size == "seed" else ((2, 8, 8, 1), 16)


def problem(k: int, size: str, key: jax.Array, lap: str = "forward"):
    """``(terms_fn, params, points [K, N, 2], targets [K, N], graphdef)`` for K terms."""
    layers, n = _shapes(size)
    k_init, k_pts, k_tgt = jax.random.split(key, 3)
    graphdef, params = nnx.split(MLP(layers, rngs=nnx.Rngs(params=k_init)), nnx.Param)
    pts = jax.random.uniform(k_pts, (k, n, 2), minval=-1.0, maxval=1.0)
    tgt = jax.random.normal(k_tgt, (k, n))

    def terms_fn(p, pts, tgt):
        model = nnx.merge(graphdef, p)
        u = lambda q: model(q[None])[0, 0]
        delta = forward_laplacian(u, pts[0])[2] if lap == "forward" else laplacian(u, pts[0])
        out = {"t0": jnp.mean((delta - tgt[0]) ** 2)}
        for i in range(1, pts.shape[0]):
            out[f"t{i}"] = jnp.mean((model(pts[i])[:, 0] - tgt[i]) ** 2)
        return out

    return terms_fn, params, pts, tgt, graphdef


def torch_loop(params, pts, tgt, *, summed: bool = False):
    """The seed's PyTorch answer as a callable, on a CPU copy of the same weights and points
    (``summed``: one ``autograd.grad`` of the summed loss instead, PyTorch's own baseline)."""
    import torch

    ws = [
        (torch.tensor(np.asarray(lin["kernel"])), torch.tensor(np.asarray(lin["bias"])))
        for lin in (params["linears"][i] for i in sorted(params["linears"]))
    ]
    leaves = [t.requires_grad_() for pair in ws for t in pair]
    x = [torch.tensor(np.asarray(p)) for p in pts]
    y = [torch.tensor(np.asarray(t)) for t in tgt]

    def net(h):
        for w, b in ws[:-1]:
            h = torch.tanh(h @ w + b)
        return h @ ws[-1][0] + ws[-1][1]

    def call():
        xr = x[0].clone().requires_grad_()
        u = net(xr)[:, 0]
        (du,) = torch.autograd.grad(u.sum(), xr, create_graph=True)
        lap = sum(
            torch.autograd.grad(du[:, d].sum(), xr, create_graph=True)[0][:, d] for d in range(2)
        )
        terms = [((lap - y[0]) ** 2).mean()]
        terms += [((net(x[i])[:, 0] - y[i]) ** 2).mean() for i in range(1, len(x))]
        if summed:
            return torch.autograd.grad(sum(terms), leaves)
        # the residual does not depend on the output bias: allow_unused, as the seed would need
        return [
            torch.autograd.grad(
                t, leaves, retain_graph=i < len(terms) - 1, allow_unused=True,
                materialize_grads=True,
            )
            for i, t in enumerate(terms)
        ]  # fmt: skip

    return call


def programs(k: int, size: str, lap: str = "forward") -> tuple[dict, tuple]:
    """``({variant: compiled program}, args)`` for K terms; compile time is not timed later."""
    terms_fn, params, pts, tgt, _ = problem(k, size, jax.random.key(k), lap)

    def summed(p, pts, tgt):
        return sum(terms_fn(p, pts, tgt).values())

    jitted = {"jax sum": jax.jit(jax.grad(summed))}
    for m in TERM_GRAD_METHODS:
        jitted[f"jax {m}"] = jax.jit(functools.partial(term_grads, terms_fn, method=m))
    args = (params, pts, tgt)
    return {name: compile_timed(f, *args)[0] for name, f in jitted.items()}, args


def run(
    *,
    k_values: tuple[int, ...] = (2, 3, 5),
    size: str = "seed",
    runs: int = 50,
    warmup: int = 5,
    with_torch: bool = True,
    clock: str = "wall",
    torch_threads: int = 1,
    lap: str = "forward",
) -> list[dict]:
    """One row per (K, variant): median ms, p10/p90 and the ratio to the same framework's
    summed gradient (``experiments.bench_terms`` and ``experiments.gpu_suite`` call this)."""
    rows = []
    has_torch = with_torch and importlib.util.find_spec("torch") is not None
    if has_torch and torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    for k in k_values:
        compiled, args = programs(k, size, lap)
        calls = {name: functools.partial(c, *args) for name, c in compiled.items()}
        if has_torch:  # in the same rounds: load hits both frameworks alike
            calls |= {"torch sum": torch_loop(*args, summed=True), "torch loop": torch_loop(*args)}
        got = interleave(calls, runs=runs, warmup=warmup)  # wall and CPU seconds of each call
        times = {name: np.asarray(t[clock]) for name, t in got.items()}
        for name, t in times.items():
            base = float(np.median(times[name.split()[0] + " sum"]))
            rows.append(
                {"scenario": "terms", "k": k, "variant": name, "algorithm": ALGORITHMS[name],
                 "ms": 1e3 * float(np.median(t)),
                 "p10_ms": 1e3 * float(np.percentile(t, 10)),
                 "p90_ms": 1e3 * float(np.percentile(t, 90)),
                 "ratio": float(np.median(t)) / base, "runs": runs, "clock": clock}
            )  # fmt: skip
    return rows
