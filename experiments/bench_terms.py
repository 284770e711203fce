"""Benchmark: K per-term gradients vs one gradient of the summed loss, in JAX and in PyTorch.

Run: ``python -m experiments.bench_terms`` (CPU is fine; ``--tiny`` for seconds). Output: a
printed table and ``runs/bench_terms/bench_terms.json``.

The network is the Helmholtz PINN ([2, 50, 50, 50, 1], tanh). Term 0 is the PDE residual
(Laplacian by :func:`jaxgrad.pde.forward_laplacian`, ``--laplacian jvp`` for jvp of jvp) on
128 points; terms 1..K-1 are boundary mean squares on 128 points each. Jitted, same inputs,
compile apart, warm-up, ``block_until_ready``; every variant of both frameworks is timed in
turns (round-robin, one call each per round), median of ``--runs`` rounds. Each framework's
per-term gradients are compared with *its own* summed gradient:

- ``jax sum``: ``jax.grad`` of ``Σ_i L_i`` (one gradient; the JAX rows' baseline);
- ``jax split`` / ``jax vmap`` / ``jax jacrev``: :func:`jaxgrad.terms.term_grads`;
- ``torch sum``: ``torch.autograd.grad(Σ_i L_i, params)`` (the PyTorch rows' baseline);
- ``torch loop``: the PyTorch answer of seed 002 on the same network, weights and points::

      u = net(x_all)                   # one forward (residual needs create_graph=True)
      for i, term in enumerate(terms):  # K backward passes
          g_i = torch.autograd.grad(term, params, retain_graph=i < K - 1)

PyTorch runs on ``--torch-threads`` threads (default 1: idle OpenMP workers otherwise spin
and, on a busy machine, slow down whatever runs next).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgrad.bench import compile_timed, device_info
from jaxgrad.cli import check_config, option, parse, positive, to_dict
from jaxgrad.io import atomic_write_json
from jaxgrad.models.mlp import MLP
from jaxgrad.pde import forward_laplacian, laplacian
from jaxgrad.tables import print_table
from jaxgrad.terms import TERM_GRAD_METHODS, term_grads

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

#: ``wall``: elapsed seconds; ``cpu``: this process's CPU seconds, all threads.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclasses.dataclass(frozen=True)
class Config:
    k: tuple[int, ...] = option((2, 3, 5), "numbers of loss terms")
    size: str = option(
        "seed", "network/points: the Helmholtz PINN or tiny", choices=("seed", "tiny")
    )
    runs: int = option(50, "timed samples (median reported)")
    warmup: int = option(5, "untimed calls after compilation")
    torch: bool = option(True, "also time PyTorch's retain_graph loop when torch is installed")
    torch_threads: int = option(1, "torch.set_num_threads (0 = leave torch's default)")
    laplacian: str = option(
        "forward", "the residual's Laplacian: forward_laplacian or jvp of jvp", choices=LAPLACIANS
    )
    clock: str = option(
        "wall", "wall seconds, or this process's CPU seconds (shared machines)", choices=CLOCKS
    )
    out: str = option("runs/bench_terms/bench_terms.json", "JSON output path ('' = none)")

    def __post_init__(self):
        check_config(self)  # finite floats, bounds of option(...)
        positive(self, "runs")
        if not self.k or min(self.k) < 1:
            raise ValueError(f"--k needs term counts >= 1, got {self.k}")

    @classmethod
    def tiny(cls) -> Config:
        return cls(size="tiny", runs=5, warmup=1, out="")


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


def interleaved(
    calls: dict, *, runs: int, warmup: int, sync: dict, clock: str = "wall"
) -> dict[str, np.ndarray]:
    """Seconds per call of every ``calls[name]()``, taken in turns (round-robin) so that load
    from other processes hits every variant alike; ``sync[name]`` waits for the result.

    ``clock="cpu"`` counts this process's CPU seconds (all threads) instead of wall time: on a
    shared, overloaded machine wall time mostly measures the scheduler; CPU time measures the
    work each variant does."""
    now = CLOCKS[clock]
    for _ in range(warmup):
        for name, call in calls.items():
            sync[name](call())
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            t0 = now()
            sync[name](call())
            times[name].append(now() - t0)
    return {name: np.asarray(t) for name, t in times.items()}


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
    summed gradient (the general bench calls this with ``size``, ``runs`` and ``warmup``)."""
    rows = []
    has_torch = with_torch and importlib.util.find_spec("torch") is not None
    if has_torch and torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    for k in k_values:
        compiled, args = programs(k, size, lap)
        calls = {name: functools.partial(c, *args) for name, c in compiled.items()}
        sync = {name: jax.block_until_ready for name in calls}
        if has_torch:  # in the same round-robin: load hits both frameworks alike
            calls |= {"torch sum": torch_loop(*args, summed=True), "torch loop": torch_loop(*args)}
            sync |= {"torch sum": lambda _: None, "torch loop": lambda _: None}
        times = interleaved(calls, runs=runs, warmup=warmup, sync=sync, clock=clock)
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


def main(cfg: Config) -> list[dict]:
    rows = run(k_values=cfg.k, size=cfg.size, runs=cfg.runs, warmup=cfg.warmup,
               with_torch=cfg.torch, clock=cfg.clock, torch_threads=cfg.torch_threads,
               lap=cfg.laplacian)  # fmt: skip
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    table = [
        [r["k"], r["variant"], f"{r['ms']:.3f}", f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}",
         f"{r['ratio']:.2f}x", r["algorithm"]]
        for r in rows
    ]  # fmt: skip
    print_table(
        table,
        ["K", "variant", "median ms", "p10-p90 ms", "vs own sum", "algorithm"],
        title=f"per-term gradients vs the same framework's summed gradient ({cfg.clock} clock, "
        f"{cfg.runs} interleaved rounds, torch threads {cfg.torch_threads}, load {load})",
        right=("K", "median ms", "p10-p90 ms", "vs own sum"),
    )
    if cfg.out:
        atomic_write_json(
            Path(cfg.out), {"config": to_dict(cfg), "device": device_info(), "rows": rows}
        )
    return rows


if __name__ == "__main__":
    main(parse(Config))
