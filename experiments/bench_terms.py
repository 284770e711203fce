"""Benchmark: K per-term gradients vs one gradient of the summed loss, in JAX and in PyTorch.

Run: ``python -m experiments.bench_terms`` (CPU is fine; ``--tiny`` for seconds). Output: a
printed table and ``runs/bench_terms/bench_terms.json``.

The network is the Helmholtz PINN ([2, 50, 50, 50, 1], tanh). Term 0 is the PDE residual
(Laplacian by :func:`jaxgrad.losses.pde.forward_laplacian`, ``--laplacian jvp`` for jvp of jvp) on
128 points; terms 1..K-1 are boundary mean squares on 128 points each. Jitted, same inputs,
compile apart, warm-up, ``block_until_ready``; every variant of both frameworks is timed in
turns (:func:`jaxgrad.inspect.bench.interleave`: one call each per round, the order reversed
every other round), median of ``--runs`` rounds. Each framework's
per-term gradients are compared with *its own* summed gradient:

- ``jax sum``: ``jax.grad`` of ``Σ_i L_i`` (one gradient; the JAX rows' baseline);
- ``jax split`` / ``jax vmap`` / ``jax jacrev``: :func:`jaxgrad.losses.terms.term_grads`;
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
import os
from pathlib import Path

from experiments._support.terms_timing import LAPLACIANS, run
from jaxgrad.inspect.bench import CLOCKS, device_info
from jaxgrad.report.cli import CheckedConfig, option, run_main, to_dict
from jaxgrad.report.io import atomic_write_json
from jaxgrad.report.tables import print_table


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    k: tuple[int, ...] = option((2, 3, 5), "numbers of loss terms")
    size: str = option(
        "seed", "network/points: the Helmholtz PINN or tiny", choices=("seed", "tiny")
    )
    runs: int = option(50, "timed samples (median reported)", gt=0)
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
        super().__post_init__()
        if not self.k or min(self.k) < 1:
            raise ValueError(f"--k needs term counts >= 1, got {self.k}")

    @classmethod
    def tiny(cls) -> Config:
        return cls(size="tiny", runs=5, warmup=1, out="")


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
    run_main(main, Config)
