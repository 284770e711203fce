"""Helmholtz PINN training step: jaxgrad vs PyTorch eager and torch.compile, interleaved.

Run: ``python -m experiments.bench_pinn`` (a few minutes on 2 cores); ``--tiny`` for seconds.

The step is ``experiments.pinn_helmholtz``'s (tanh MLP 2-50-50-50-1, 128 points per edge and
128 residual points drawn each step, Adam; ``annealed`` adds learning-rate annealing every 10
steps); the PyTorch anchor is ``experiments._support.bench_pinn_torch`` (Laplacian by double backward,
1 thread). Every contender runs ``block`` steps per sample, one contender after the other in
the same process, ``runs`` rounds, so load changes hit all of them alike. JAX runs the way the
experiment does: chunks of steps in one ``lax.scan`` per call (``--jax-chunk``, annealed:
``period`` steps + the λ update per call); ``--jax-chunk 1`` dispatches every step, like
PyTorch. Reported: median steps/s with the p10-p90 range, CPU seconds per 1,000 steps
(process time: a second busy thread shows up here), and the ratio to torch.compile.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments._support import helmholtz as helm
from jaxgrad.inspect.bench import interleave
from jaxgrad.losses.terms import term_grads
from jaxgrad.losses.weighting import lr_annealing, weighted_sum
from jaxgrad.report.cli import CheckedConfig, option, run_main
from jaxgrad.report.tables import print_table
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state, make_multi_step

CONTENDERS = ("jax-forward", "jax-jvp", "torch-eager", "torch-compile")


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    variants: tuple[str, ...] = option(
        ("plain", "annealed"), "PINN variants", choices=("plain", "annealed")
    )
    contenders: tuple[str, ...] = option(
        CONTENDERS,
        "jax-forward: jaxgrad.losses.pde.forward_laplacian; jax-jvp: jvp of jvp; torch-*: the anchor",
        choices=CONTENDERS,
    )
    block: int = option(500, "steps per timed sample", gt=0)
    runs: int = option(7, "interleaved rounds (samples per contender)", gt=0)
    warmup: int = option(1, "untimed rounds first (compilation, caches)", ge=0)
    jax_chunk: int = option(100, "plain JAX steps per dispatch (one lax.scan); 1 = per step", gt=0)
    torch_threads: int = option(1, "torch.set_num_threads (0 = leave torch's default)")
    width: int = option(50, "hidden width", gt=0)
    depth: int = option(3, "hidden layers", gt=0)
    batch: int = option(128, "points per edge and residual points per step", gt=0)
    period: int = option(10, "annealing update every N steps", gt=0)

    def __post_init__(self):
        super().__post_init__()
        if self.block % self.jax_chunk or self.block % self.period:
            raise ValueError(
                f"--block ({self.block}) must be a multiple of --jax-chunk ({self.jax_chunk}) "
                f"and --period ({self.period})"
            )

    @classmethod
    def tiny(cls) -> Config:
        return cls(block=20, runs=2, jax_chunk=10, width=16, depth=2, batch=32)


def make_jax_block(cfg: Config, *, annealed: bool, laplacian: str, seed: int = 0):
    """A no-argument ``run()`` doing ``cfg.block`` PINN steps (blocks until done)."""
    hcfg = helm.Problem(width=cfg.width, depth=cfg.depth, batch=cfg.batch, laplacian=laplacian)
    keys = named_keys(seed, "init", "data")
    graphdef, params = nnx.split(helm.make_model("mlp", hcfg, keys["init"]), nnx.Param)
    terms_fn = helm.make_terms_fn(hcfg)
    terms = lambda p, b: terms_fn(p, graphdef, b)

    def loss_fn(p, batch, key):
        values = terms(p, batch)
        return weighted_sum(values, batch["weights"]), {}

    opt = optax.adam(optax.exponential_decay(1e-3, 1000, 0.9))
    multi = make_multi_step(loss_fn, opt, jit=False)
    rule = lr_annealing("res", period=cfg.period) if annealed else None
    length = cfg.period if annealed else cfg.jax_chunk

    @functools.partial(jax.jit, donate_argnums=0)
    def chunk(state, wstate, start):
        ks = jax.vmap(lambda s: jax.random.fold_in(keys["data"], s))(start + jnp.arange(length))
        batches = jax.vmap(lambda k: helm.sample(k, hcfg))(ks)
        batches["weights"] = {n: jnp.broadcast_to(w, (length,)) for n, w in wstate[0].items()}
        state, _ = multi(state, batches, keys["data"])
        if rule is not None:  # as pinn_common.train: the rule after the chunk's last step
            last = jax.tree_util.tree_map(lambda x: x[-1], batches)
            grads = term_grads(terms, state.params, last)
            new = rule.update(grads, wstate[1], start + length - 1)
            wstate = (new.weights, new)
        return state, wstate

    w0 = {"res": jnp.float32(1.0), "bc": jnp.float32(1.0)}
    ws0 = rule.init(["bc", "res"]) if rule else None
    carry = {"state": init_train_state(params, opt), "w": (w0, ws0), "start": 0}

    def run():
        for _ in range(cfg.block // length):
            carry["state"], carry["w"] = chunk(carry["state"], carry["w"], carry["start"])
            carry["start"] += length
        jax.block_until_ready(carry["state"].params)

    return run


def make_torch_block(cfg: Config, *, annealed: bool, variant: str):
    from experiments._support.bench_pinn_torch import make_torch_step

    step = make_torch_step(
        variant, annealed=annealed, width=cfg.width, depth=cfg.depth, batch=cfg.batch,
        period=cfg.period, threads=cfg.torch_threads,
    )  # fmt: skip

    def run():
        for _ in range(cfg.block):
            step()

    return run


def bench(cfg: Config) -> list[dict]:
    """Time every contender x variant, interleaved; return one row dict per pair."""
    runners = {}
    for v in cfg.variants:
        for c in cfg.contenders:
            annealed = v == "annealed"
            if c.startswith("jax"):
                lap = c.split("-")[1]
                runners[(v, c)] = make_jax_block(cfg, annealed=annealed, laplacian=lap)
            else:
                runners[(v, c)] = make_torch_block(cfg, annealed=annealed, variant=c[6:])
    t = interleave(runners, runs=cfg.runs, warmup=cfg.warmup)
    rows = []
    for (v, c), ts in t.items():
        rate = cfg.block / np.asarray(ts["wall"])
        rows.append({
            "variant": v, "contender": c, "steps_per_s": float(np.median(rate)),
            "p10": float(np.percentile(rate, 10)), "p90": float(np.percentile(rate, 90)),
            "cpu_s_per_1k": float(np.median(ts["cpu"]) / cfg.block * 1000),
        })  # fmt: skip
    return rows


def main(cfg: Config) -> list[dict]:
    rows = bench(cfg)
    ref = {r["variant"]: r["steps_per_s"] for r in rows if r["contender"] == "torch-compile"}
    table = []
    for r in rows:
        ratio = f"{r['steps_per_s'] / ref[r['variant']]:.2f}x" if r["variant"] in ref else "-"
        table.append([
            r["variant"], r["contender"], f"{r['steps_per_s']:.0f}",
            f"{r['p10']:.0f}-{r['p90']:.0f}", f"{r['cpu_s_per_1k']:.2f}", ratio,
        ])  # fmt: skip
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print_table(
        table,
        ["variant", "contender", "steps/s", "p10-p90", "CPU s / 1k steps", "vs torch.compile"],
        title=f"Helmholtz PINN step ({cfg.runs} interleaved rounds of {cfg.block} steps; "
        f"JAX {cfg.jax_chunk} steps per dispatch; torch threads {cfg.torch_threads}; "
        f"load {load}; jax {jax.__version__})",
        right=("steps/s", "p10-p90", "CPU s / 1k steps", "vs torch.compile"),
    )
    return rows


if __name__ == "__main__":
    run_main(main, Config)
