"""Benchmark: K per-term gradients vs one gradient of the summed loss (and PyTorch's loop).

Run: ``python -m experiments.bench_terms`` (CPU is fine; ``--tiny`` for seconds). Output: a
printed table and ``runs/bench_terms/bench_terms.json``.

The network is the Helmholtz PINN ([2, 50, 50, 50, 1], tanh). Term 0 is the PDE residual
(Laplacian by forward-over-forward jvp) on 128 points; terms 1..K-1 are boundary mean squares
on 128 points each. Timed, jitted, same inputs, compile apart, warm-up, ``block_until_ready``,
median of ``--runs`` samples (:func:`jaxgrad.bench.bench_jit`):

- ``sum``: ``jax.grad`` of ``Σ_i L_i`` (one gradient; the baseline of every ratio);
- ``split`` / ``vmap`` / ``jacrev``: :func:`jaxgrad.terms.term_grads` with that method;
- ``torch``: the PyTorch answer of seed 002 on the same network, weights and points::

      u = net(x_all)                   # one forward (residual needs create_graph=True)
      for i, term in enumerate(terms):  # K backward passes
          g_i = torch.autograd.grad(term, params, retain_graph=i < K - 1)
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
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
from jaxgrad.pde import laplacian
from jaxgrad.tables import print_table
from jaxgrad.terms import TERM_GRAD_METHODS, term_grads

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


def problem(k: int, size: str, key: jax.Array):
    """``(terms_fn, params, points [K, N, 2], targets [K, N], graphdef)`` for K terms."""
    layers, n = _shapes(size)
    k_init, k_pts, k_tgt = jax.random.split(key, 3)
    graphdef, params = nnx.split(MLP(layers, rngs=nnx.Rngs(params=k_init)), nnx.Param)
    pts = jax.random.uniform(k_pts, (k, n, 2), minval=-1.0, maxval=1.0)
    tgt = jax.random.normal(k_tgt, (k, n))

    def terms_fn(p, pts, tgt):
        model = nnx.merge(graphdef, p)
        u = lambda q: model(q[None])[0, 0]
        out = {"t0": jnp.mean((laplacian(u, pts[0]) - tgt[0]) ** 2)}
        for i in range(1, pts.shape[0]):
            out[f"t{i}"] = jnp.mean((model(pts[i])[:, 0] - tgt[i]) ** 2)
        return out

    return terms_fn, params, pts, tgt, graphdef


def torch_loop(params, pts, tgt):
    """The seed's PyTorch answer as a callable, on a CPU copy of the same weights and points."""
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
        # the residual does not depend on the output bias: allow_unused, as the seed would need
        return [
            torch.autograd.grad(
                t, leaves, retain_graph=i < len(terms) - 1, allow_unused=True,
                materialize_grads=True,
            )
            for i, t in enumerate(terms)
        ]  # fmt: skip

    return call


def programs(k: int, size: str) -> tuple[dict, tuple]:
    """``({variant: compiled program}, args)`` for K terms; compile time is not timed later."""
    terms_fn, params, pts, tgt, _ = problem(k, size, jax.random.key(k))

    def summed(p, pts, tgt):
        return sum(terms_fn(p, pts, tgt).values())

    jitted = {"sum": jax.jit(jax.grad(summed))}
    for m in TERM_GRAD_METHODS:
        jitted[m] = jax.jit(functools.partial(term_grads, terms_fn, method=m))
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
) -> list[dict]:
    """One row per (K, variant): median ms, p10/p90 and the ratio to ``sum`` (the general bench
    calls this with ``size``, ``runs`` and ``warmup``)."""
    rows = []
    has_torch = with_torch and importlib.util.find_spec("torch") is not None
    for k in k_values:
        compiled, args = programs(k, size)
        calls = {name: functools.partial(c, *args) for name, c in compiled.items()}
        sync = {name: jax.block_until_ready for name in calls}
        times = interleaved(calls, runs=runs, warmup=warmup, sync=sync, clock=clock)
        if has_torch:
            # timed apart: PyTorch's OpenMP workers keep spinning after each call and would
            # slow down whichever JAX program ran next in the round-robin
            times |= interleaved(
                {"torch": torch_loop(*args)}, runs=runs, warmup=warmup,
                sync={"torch": lambda _: None}, clock=clock,
            )  # fmt: skip
        base = float(np.median(times["sum"]))
        for name, t in times.items():
            rows.append(
                {"scenario": "terms", "k": k, "variant": name, "ms": 1e3 * float(np.median(t)),
                 "p10_ms": 1e3 * float(np.percentile(t, 10)),
                 "p90_ms": 1e3 * float(np.percentile(t, 90)),
                 "ratio": float(np.median(t)) / base, "runs": runs, "clock": clock}
            )  # fmt: skip
    return rows


def main(cfg: Config) -> list[dict]:
    rows = run(k_values=cfg.k, size=cfg.size, runs=cfg.runs, warmup=cfg.warmup,
               with_torch=cfg.torch, clock=cfg.clock)  # fmt: skip
    print(f"clock: {cfg.clock}")
    cells = [
        (r["k"], r["variant"], f"{r['ms']:.3f}", f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}",
         f"{r['ratio']:.2f}x")
        for r in rows
    ]  # fmt: skip
    heads = ("K", "variant", "median ms", "p10-p90 ms", "vs sum")
    print_table(cells, heads, right=("K", "median ms", "p10-p90 ms", "vs sum"))
    if cfg.out:
        atomic_write_json(
            Path(cfg.out), {"config": to_dict(cfg), "device": device_info(), "rows": rows}
        )
    return rows


if __name__ == "__main__":
    main(parse(Config))
