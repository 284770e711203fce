"""Frozen CLIP image tower: training the text encoder from the feature cache vs running the
frozen tower in every step (steps/s, interleaved), on whatever device JAX finds.

    python -m experiments.bench_clip_frozen --size b32 --batch 32 --runs 5 --threads 1

Both sides train the same text encoder with the same loss and optimizer
(``jaxgrad.tasks.clip.clip_loss_fn`` / ``clip_optimizer`` / ``make_train_step``):

- **cache**: ``batch["images"]`` holds the tower's ``[B, E]`` features, read from the cache that
  ``--freeze-image`` writes once (:func:`jaxgrad.tasks.features.cached_features`); no tower runs;
- **tower**: ``batch["images"]`` holds CLIP pixel_values ``[B, 3, S, S]``; the frozen tower runs
  forward in every step (``stop_gradient`` + the optimizer's frozen mask), which is PyTorch's
  ``clip_model.get_image_features(x).detach()`` inside the loop.

The tower is random-initialised in JAX (speed does not depend on the weights; no torch needed).
The one-time extraction that fills the cache is timed too and printed as the number of steps
after which the cache has paid for itself. Threads: ``--threads N`` runs the process on N cores
(``os.sched_setaffinity`` before jax starts, which sizes XLA's pool to them). Wall medians, a median of paired ratios and CPU seconds per step are printed
with the load average before and after: on a shared CPU the figures are noisy.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

from experiments._support.bench_threads import pin_threads
from jaxgrad.report.cli import CheckedConfig, option, run_main


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    """Frozen tower from the feature cache vs the tower in every step, interleaved."""

    size: str = option("b32", "tower shape (b32: ViT-B/32 at 224)", choices=("b32", "b16", "tiny"))
    batch: int = option(32, "pairs per step (a contrastive batch needs negatives)", ge=2)
    runs: int = option(5, "timed samples per side", ge=1)
    steps_per_run: int = option(2, "steps per sample", ge=1)
    threads: int = option(1, "XLA CPU threads (0 = XLA's default)", ge=0)
    out: str | None = option(None, "write the results as JSON here")

    @classmethod
    def tiny(cls) -> Config:
        return cls(size="tiny", batch=4, runs=2, steps_per_run=1)


def main(cfg: Config) -> dict:
    if cfg.threads:  # before jax starts its backend, which sizes XLA's pool to these cores
        pin_threads(cfg.threads)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxgrad.data.captions import caption_table
    from jaxgrad.inspect.bench import interleave
    from jaxgrad.models.clip import ClipConfig, ClipModel
    from jaxgrad.models.text import TextConfig
    from jaxgrad.port.hf_clip import CLIPVisionConfig
    from jaxgrad.tasks.clip import CLIP_STEP, clip_loss_fn, clip_optimizer
    from jaxgrad.tasks.features import extract_features
    from jaxgrad.training.loop import init_params
    from jaxgrad.training.step import init_train_state, make_train_step

    shape = getattr(CLIPVisionConfig, cfg.size if cfg.size == "tiny" else f"vit_{cfg.size}")()
    load_before = os.getloadavg()
    names = [f"class{i}" for i in range(10)]
    tok, ids, cmask = caption_table(names, max_len=16)
    captions = (jnp.asarray(ids), jnp.asarray(cmask))
    text = TextConfig(vocab_size=len(tok), max_len=16, dim=128, depth=2, heads=4, mlp_dim=256)
    key = jax.random.key(0)
    rng = np.random.default_rng(0)
    s, b = shape.image_size, cfg.batch
    pixels = jnp.asarray(rng.normal(size=(b, 3, s, s)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 10, b).astype(np.int32))

    steps, states, batches = {}, {}, {}
    for side, image in (("tower", shape), ("cache", None)):
        mcfg = ClipConfig(image=image, text=text, embed_dim=shape.projection_dim)
        graphdef, params, rest = init_params(ClipModel, mcfg, key)
        kind = "pixels" if image is not None else "features"
        loss_fn = clip_loss_fn(graphdef, rest, captions, loss="clip", freeze_image=True,
                               use_augment=False, image_input=kind)  # fmt: skip
        opt, _ = clip_optimizer(params, steps=1000, lr=1e-3, warmup_steps=10, weight_decay=0.1,
                                clip_norm=1.0, freeze_image=image is not None)  # fmt: skip
        steps[side] = make_train_step(loss_fn, opt, **CLIP_STEP, donate=False)
        states[side] = init_train_state(params, opt)
        if image is not None:
            tower = nnx.merge(graphdef, params, rest).image_encoder
    t0 = time.perf_counter()
    feats = extract_features(tower, np.asarray(pixels), batch_size=b)  # what the cache holds
    extract_s = time.perf_counter() - t0  # includes its compilation: the one-time cost
    batches = {"tower": {"images": pixels, "labels": labels},
               "cache": {"images": jnp.asarray(feats), "labels": labels}}  # fmt: skip
    calls = {side: (lambda side=side: steps[side](states[side], batches[side], key))
             for side in steps}  # fmt: skip
    t = interleave(calls, runs=cfg.runs, warmup=1, calls_per_run=cfg.steps_per_run)
    wall, cpu = {side: t[side]["wall"] for side in t}, {side: t[side]["cpu"] for side in t}
    med = {side: statistics.median(wall[side]) for side in wall}
    cpu_med = {side: statistics.median(cpu[side]) for side in cpu}
    paired = statistics.median(t / c for t, c in zip(wall["tower"], wall["cache"]))
    res = {
        "size": cfg.size, "batch": b, "threads": cfg.threads, "runs": cfg.runs,
        "steps_per_s_cache": 1 / med["cache"], "steps_per_s_tower": 1 / med["tower"],
        "cache_over_tower_speed": med["tower"] / med["cache"], "paired_ratio_median": paired,
        "cache_over_tower_cpu": cpu_med["tower"] / cpu_med["cache"],
        "ms_cache": [1e3 * t for t in wall["cache"]], "ms_tower": [1e3 * t for t in wall["tower"]],
        "one_batch_extraction_s": extract_s,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "jax": jax.__version__, "device": str(jax.devices()[0]),
    }  # fmt: skip
    print(
        f"frozen CLIP tower {cfg.size} (batch {b}, {cfg.threads or 'default'} thread(s), "
        f"{cfg.runs} interleaved samples x {cfg.steps_per_run} steps, {res['device']})\n"
        f"  text encoder from the feature cache: {res['steps_per_s_cache']:8.2f} steps/s "
        f"(median {1e3 * med['cache']:.1f} ms)\n"
        f"  frozen tower run in every step:      {res['steps_per_s_tower']:8.2f} steps/s "
        f"(median {1e3 * med['tower']:.1f} ms)\n"
        f"  cache / tower: {res['cache_over_tower_speed']:.1f}x of medians, {paired:.1f}x median "
        f"of paired samples, {res['cache_over_tower_cpu']:.1f}x in CPU seconds per step; "
        f"load average {load_before[0]:.1f} before, {res['loadavg_after'][0]:.1f} after",
        flush=True,
    )
    if cfg.out:
        from jaxgrad.report.io import atomic_write_json

        atomic_write_json(cfg.out, res)
    return res


if __name__ == "__main__":
    run_main(main, Config)
