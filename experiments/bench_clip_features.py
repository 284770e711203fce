"""Image-feature extraction speed: the CLIP image tower in JAX vs transformers' PyTorch model.

    python -m experiments.bench_clip_features --size b32 --batch 16 --threads 1 --runs 5

One random-initialised ``CLIPVisionModelWithProjection`` (ViT-B/32 at 224 by default) is saved
with ``save_pretrained`` to a temp folder and loaded on both sides: by transformers (eager fp32,
``torch.inference_mode``) and by :func:`jaxgrad.port.hf_clip.load_pretrained` (one jitted
forward). Both get the same ``[B, 3, 224, 224]`` pixel_values; the embeddings are checked equal
first (max abs difference printed), then timed **interleaved** (one JAX sample, one torch
sample, in turn) with :func:`jaxgrad.inspect.bench.interleave`: warm-up apart, ``block_until_ready`` on
the JAX side, medians. Threads: ``--threads N`` runs the process on N cores
(``os.sched_setaffinity`` before jax starts, which sizes XLA's pool to them) and gives torch N
(``torch.set_num_threads``). The load average before and after is printed beside the figures:
on a shared CPU they are noisy.

The PyTorch code being timed::

    with torch.inference_mode():
        model(pixel_values=x).image_embeds     # CLIPVisionModelWithProjection, eval, fp32
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile

from experiments._support.bench_threads import pin_threads
from jaxgrad.report.cli import CheckedConfig, option, run_main


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    """Feature extraction, JAX vs transformers' PyTorch tower, interleaved."""

    size: str = option("b32", "tower shape (b32: ViT-B/32 at 224)", choices=("b32", "b16", "tiny"))
    batch: int = option(16, "images per call", ge=1)
    runs: int = option(5, "timed samples per side", ge=1)
    warmup: int = option(1, "untimed calls per side", ge=0)
    threads: int = option(1, "threads for both frameworks (0 = each its own default)", ge=0)
    out: str | None = option(None, "write the results as JSON here")

    @classmethod
    def tiny(cls) -> Config:
        return cls(size="tiny", batch=2, runs=2, warmup=1)


def main(cfg: Config) -> dict:
    if cfg.threads:  # before jax starts its backend, which sizes XLA's pool to these cores
        pin_threads(cfg.threads)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers as T
    from flax import nnx

    from jaxgrad.inspect.bench import interleave
    from jaxgrad.port.hf_clip import CLIPVisionConfig, load_pretrained

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    shape = getattr(CLIPVisionConfig, cfg.size if cfg.size == "tiny" else f"vit_{cfg.size}")()
    load_before = os.getloadavg()
    torch.manual_seed(0)
    tm = T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(**vars(shape))).eval()
    with tempfile.TemporaryDirectory() as d:
        tm.save_pretrained(d)
        tower = load_pretrained(d)
    s = shape.image_size
    x = np.random.default_rng(0).normal(size=(cfg.batch, 3, s, s)).astype(np.float32)
    xt, xj = torch.from_numpy(x), jnp.asarray(x)
    graphdef, state = nnx.split(tower)
    fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))

    def run_jax():
        return fwd(state, xj)

    def run_torch():
        with torch.inference_mode():
            return tm(pixel_values=xt).image_embeds

    diff = float(np.abs(np.asarray(run_jax()) - run_torch().numpy()).max())
    t = interleave({"jax": run_jax, "torch": run_torch}, runs=cfg.runs, warmup=cfg.warmup)
    jt, jc, tt, tc = t["jax"]["wall"], t["jax"]["cpu"], t["torch"]["wall"], t["torch"]["cpu"]
    j_med, t_med = statistics.median(jt), statistics.median(tt)
    res = {
        "size": cfg.size, "batch": cfg.batch, "threads": cfg.threads, "runs": cfg.runs,
        "max_abs_diff": diff, "jax_img_per_s": cfg.batch / j_med,
        "torch_img_per_s": cfg.batch / t_med,
        "jax_ms": [1e3 * t for t in jt], "torch_ms": [1e3 * t for t in tt],
        "jax_over_torch_speed": t_med / j_med, "jax_cpu_s": jc, "torch_cpu_s": tc,
        "jax_over_torch_cpu": statistics.median(tc) / statistics.median(jc),
        # each torch sample over the JAX sample of its round: robust to slow load drifts
        "paired_ratio_median": statistics.median(t / j for t, j in zip(tt, jt)),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "transformers": T.__version__},
        "device": str(jax.devices()[0]),
    }  # fmt: skip
    print(
        f"CLIP image tower {cfg.size}, batch {cfg.batch}, {cfg.threads or 'default'} "
        f"thread(s), {cfg.runs} interleaved samples each; max |jax - torch| {diff:.1e}\n"
        f"  JAX (jit):        {res['jax_img_per_s']:8.1f} img/s  (median {1e3 * j_med:.0f} ms)\n"
        f"  PyTorch (eager):  {res['torch_img_per_s']:8.1f} img/s  (median {1e3 * t_med:.0f} ms)\n"
        f"  JAX / PyTorch speed: {res['jax_over_torch_speed']:.2f}x of medians, "
        f"{res['paired_ratio_median']:.2f}x median of paired samples, "
        f"{res['jax_over_torch_cpu']:.2f}x in CPU seconds per call "
        f"({statistics.median(jc):.2f} vs {statistics.median(tc):.2f}); load average "
        f"{load_before[0]:.1f} before, {res['loadavg_after'][0]:.1f} after",
        flush=True,
    )
    if cfg.out:
        from jaxgrad.report.io import atomic_write_json

        atomic_write_json(cfg.out, res)
    return res


if __name__ == "__main__":
    run_main(main, Config)
