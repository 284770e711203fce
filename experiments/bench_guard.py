"""Benchmark: the jitted ViT train step with and without the label check and the wider guard.

Run: ``python -m experiments.bench_guard`` (CPU is fine; ``--tiny`` for seconds). Prints
medians and the new/old ratio of wall and CPU time per step; returns them from ``main``.

- ``old``: one-hot ``optax.softmax_cross_entropy`` (with label smoothing) and
  ``optax.apply_if_finite`` (the older guard: gradients only);
- ``new``: :func:`jaxgrad.losses.classification.cross_entropy` (NaN loss for an out-of-range label) and
  :func:`jaxgrad.training.guard.skip_nonfinite` (loss, gradient, update and new params), with the loss
  passed as ``value=`` by :func:`jaxgrad.training.step.make_train_step`.

The two steps run interleaved (old, new, new, old, ...), each sample ``--steps`` donated steps
then ``block_until_ready``, after compilation and warm-up; the PyTorch equivalent is the seed's
``loss = criterion(model(images), labels); loss.backward(); optimizer.step()``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxgrad.data.pipeline import normalize
from jaxgrad.inspect.bench import interleave
from jaxgrad.losses.classification import cross_entropy
from jaxgrad.models.vit import ViT, ViTConfig
from jaxgrad.report.cli import CheckedConfig, option, run_main
from jaxgrad.training.guard import skip_nonfinite
from jaxgrad.training.loop import init_params
from jaxgrad.training.step import init_train_state, make_train_step


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    dim: int = option(128, "ViT width (small enough for a shared CPU)", gt=0)
    depth: int = option(2, "transformer blocks", gt=0)
    batch_size: int = option(64, "the seed's batch size", gt=0)
    label_smoothing: float = option(0.1, "smoothing of both losses", ge=0, lt=1)
    samples: int = option(30, "timed samples per variant (medians reported)", gt=0)
    steps: int = option(5, "train steps per sample", gt=0)
    warmup: int = option(3, "untimed steps after compilation")

    @classmethod
    def tiny(cls) -> Config:
        return cls(dim=32, depth=1, batch_size=16, samples=4, steps=2, warmup=1)


def make_step(cfg: Config, new: bool):
    vit = ViTConfig(dim=cfg.dim, depth=cfg.depth, heads=4, mlp_dim=2 * cfg.dim, dim_head=32)
    graphdef, params, _ = init_params(ViT, vit, jax.random.key(0))

    def loss_fn(p, batch, key):
        logits = nnx.merge(graphdef, p)(normalize(batch["images"]), deterministic=False, rngs=key)
        if new:
            return cross_entropy(logits, batch["labels"], label_smoothing=cfg.label_smoothing), {}
        onehot = jax.nn.one_hot(batch["labels"], logits.shape[-1], dtype=logits.dtype)
        onehot = optax.smooth_labels(onehot, cfg.label_smoothing)
        return optax.softmax_cross_entropy(logits, onehot).mean(), {}

    opt = optax.adam(1e-3)
    opt = skip_nonfinite(opt) if new else optax.apply_if_finite(opt, 2**31 - 1)
    return make_train_step(loss_fn, opt), init_train_state(params, opt)


def main(cfg: Config) -> dict:
    rng = np.random.default_rng(0)
    batch = {
        "images": jnp.asarray(rng.integers(0, 256, (cfg.batch_size, 32, 32, 3), np.uint8)),
        "labels": jnp.asarray(rng.integers(0, 10, (cfg.batch_size,), np.int32)),
    }
    key = jax.random.key(1)
    steps, states = {}, {}
    for name in ("old", "new"):
        steps[name], states[name] = make_step(cfg, name == "new")

    def call(name):
        states[name], _ = steps[name](states[name], batch, key)
        return states[name]

    t = interleave({n: functools.partial(call, n) for n in steps}, runs=cfg.samples,
                   warmup=cfg.warmup, calls_per_run=cfg.steps)  # fmt: skip
    med = {n: (np.median(t[n]["wall"]), np.median(t[n]["cpu"])) for n in t}
    out = {
        "old_ms": {"wall": med["old"][0] * 1e3, "cpu": med["old"][1] * 1e3},
        "new_ms": {"wall": med["new"][0] * 1e3, "cpu": med["new"][1] * 1e3},
        "ratio_wall": float(med["new"][0] / med["old"][0]),
        "ratio_cpu": float(med["new"][1] / med["old"][1]),
    }
    for n in ("old", "new"):
        print(f"{n}: {out[n + '_ms']['wall']:.2f} ms wall, {out[n + '_ms']['cpu']:.2f} ms CPU "
              "per step (median)")  # fmt: skip
    print(f"new/old: wall {out['ratio_wall']:.3f}, CPU {out['ratio_cpu']:.3f}")
    return out


if __name__ == "__main__":
    run_main(main, Config)
