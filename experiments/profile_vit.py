"""Where the ViT train step's time goes on CPU, per op family, JAX beside PyTorch eager fp32.

Run: ``python -m experiments.profile_vit --size reduced --batch 64`` (about 2 minutes on 2
cores). JAX side: ``jaxgrad.inspect.bench.profile_jit`` (jax.profiler trace of the compiled step, XLA
ops bucketed by ``jaxgrad.inspect.bench.OP_KINDS``) scaled to the step's CPU-clock median; PyTorch
side: ``torch.profiler`` self CPU time per ``aten::`` op over the same steps
(``torch.set_num_threads(--torch-threads)``), bucketed by :data:`TORCH_KINDS`. The table is
ms per step per family; the docs/results/vit_cpu_profile.md breakdown comes from it.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp

from experiments._support import vit_bench
from experiments._support.bench_torch import time_torch
from jaxgrad.inspect.bench import bench_jit, profile_jit
from jaxgrad.report.cli import CheckedConfig, option, run_main
from jaxgrad.report.tables import print_table
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state, make_train_step
from jaxgrad.training.xla import WIDE_VECTORS

#: torch ops -> the families of jaxgrad.inspect.bench.OP_KINDS (first match wins)
TORCH_KINDS = (
    ("dropout RNG", r"bernoulli|dropout|uniform|native_dropout"),
    ("matmul", r"::mm$|::addmm|::bmm|::matmul|::linear|::baddbmm"),
    ("softmax/norm/gelu", r"softmax|layer_norm|gelu|::exp|::erf|::sum|::mean|log_softmax|nll"),
    ("layout/copy", r"copy_|clone|contiguous|transpose|permute|::t$|reshape|view|cat|expand"),
)


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    size: str = option("reduced", "ViT size (experiments.bench --size)",
                       choices=("seed", "reduced", "tiny"))  # fmt: skip
    batch: int = option(64, "batch size", gt=0)
    steps: int = option(5, "profiled steps on each side", gt=0)
    torch_threads: int = option(1, "torch.set_num_threads", gt=0)
    seed: int = option(0, "seed for parameters, data and dropout")
    layout: str = option("auto", "ViTConfig.layout of the JAX step (auto: heads on CPU)",
                         choices=("auto", "heads", "packed"))  # fmt: skip

    @classmethod
    def tiny(cls) -> Config:
        return cls(size="tiny", batch=8, steps=2)


def jax_families(cfg: Config) -> tuple[dict[str, float], float]:
    """``({family: ms per step}, ms per step on the CPU clock)`` of the faithful JAX step."""
    keys = named_keys(jax.random.key(cfg.seed), "init", "step", "data")
    vit = vit_bench.vit_config(cfg.size, "highest", cfg.layout)
    params = vit_bench.vit_params(vit, keys["init"])
    opt = vit_bench.adam()
    step = make_train_step(vit_bench.vit_loss(vit), opt, compiler_options=WIDE_VECTORS)
    data = vit_bench.synthetic(keys["data"], (cfg.batch,), vit)
    fresh = lambda: init_train_state(jax.tree.map(jnp.copy, params), opt)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        t = bench_jit(step, fresh(), data, keys["step"], name="jax", items=cfg.batch, carry=True,
                      runs=cfg.steps, warmup=1, clock="cpu")  # fmt: skip
        prof = profile_jit(step, fresh(), data, keys["step"], carry=True)
    return {k: v * t.ms_per_step for k, v in prof["op_time_share"].items()}, t.ms_per_step


def torch_families(cfg: Config) -> tuple[dict[str, float], float]:
    """``({family: self-CPU ms per step}, ms per step on the CPU clock)`` of torch eager."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    vit = vit_bench.vit_config(cfg.size, "highest")
    ((_, _, t),) = time_torch(vit, variants=("eager",), batches=(cfg.batch,), runs=cfg.steps,
                              warmup=1, threads=cfg.torch_threads, seed=cfg.seed, clock="cpu",
                              skipped=[])  # fmt: skip
    from experiments._support.torch_vit import from_vit_config

    torch.manual_seed(cfg.seed)
    model = from_vit_config(vit).train()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(cfg.batch, vit.channels, vit.image_size, vit.image_size)
    y = torch.randint(0, vit.num_classes, (cfg.batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(cfg.steps):
            step()
    fam: dict[str, float] = {}
    for ev in p.key_averages():
        kind = next((k for k, pat in TORCH_KINDS if re.search(pat, ev.key)), "other")
        fam[kind] = fam.get(kind, 0.0) + ev.self_cpu_time_total / 1e3 / cfg.steps
    total = sum(fam.values()) or 1.0  # the profiler's overhead: scale to the timed step
    return {k: v / total * t.ms_per_step for k, v in fam.items()}, t.ms_per_step


def main(cfg: Config) -> dict:
    jx, jms = jax_families(cfg)
    tx, tms = torch_families(cfg)
    kinds = sorted(set(jx) | set(tx), key=lambda k: -jx.get(k, 0.0))
    rows = [(k, f"{jx.get(k, 0):.0f}", f"{tx.get(k, 0):.0f}") for k in kinds]
    rows.append(("step (CPU clock)", f"{jms:.0f}", f"{tms:.0f}"))
    print(f"ViT {cfg.size}, batch {cfg.batch}, ms per step per op family "
          f"(torch {cfg.torch_threads} thread(s))")  # fmt: skip
    print_table(rows, ("op family", "jax ms", "torch eager ms"), right=("jax ms", "torch eager ms"))
    return {"jax": jx, "torch": tx, "jax_ms": jms, "torch_ms": tms}


if __name__ == "__main__":
    run_main(main, Config)
