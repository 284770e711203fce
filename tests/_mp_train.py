"""A tiny ViT trained data-parallel over every device of every process (tests/test_distributed).

Run alone (1 process, its local CPU devices) or through the launcher::

    python -m experiments.launch --processes 2 --devices-per-process 2 -- \
        tests/_mp_train.py --steps 4 --out /tmp/p.npz --ckpt-dir /tmp/ckpt

Every process builds the same global batches (numpy, seeded by the step) and feeds only its own
rows (:func:`jaxgrad.training.distributed.process_local`); process 0 prints and writes ``--out``; every
process takes part in the orbax save and restore. ``--resume`` continues from the latest
checkpoint whatever the process count was when it was written (same global batch).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import optax
from flax import nnx

from jaxgrad.models.vit import ViT, ViTConfig
from jaxgrad.report.cli import CheckedConfig, option, parse
from jaxgrad.training.checkpoint import Checkpointer
from jaxgrad.training.distributed import initialize, is_main, main_print, process_local
from jaxgrad.training.parallel import data_parallel, make_mesh, place_state, shard_batch
from jaxgrad.training.params_file import save_params
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state, make_train_step


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    steps: int = option(4, "train until this many steps in total (counting resumed ones)", gt=0)
    global_batch: int = option(8, "images per step over all processes (divisible by devices)", gt=0)
    seed: int = option(0, "init / dropout / data seed")
    ckpt_dir: str = option("", "orbax checkpoint folder ('' = no checkpoints)")
    resume: bool = option(False, "continue from the latest checkpoint in --ckpt-dir")
    out: str = option("", "write the final params here (.npz, process 0 only; '' = don't)")
    step_sleep: float = option(0.0, "seconds to sleep after each step (failure tests)")
    coordinator: str | None = option(None, "host:port of process 0 (None: env / cluster)")
    num_processes: int | None = option(None, "process count (None: env / cluster / 1)")
    process_id: int | None = option(None, "this process's rank (None: env / cluster / 0)")

    @classmethod
    def tiny(cls) -> Config:
        return cls()


VIT = ViTConfig(image_size=8, patch_size=4, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32)


def global_batch(cfg: Config, step: int) -> dict:
    """The same ``[B, 8, 8, 3]`` images and labels in every process, whatever the count."""
    rng = np.random.default_rng((cfg.seed, step))
    x = rng.standard_normal((cfg.global_batch, 8, 8, 3), np.float32)
    return {"x": x, "y": rng.integers(0, 10, cfg.global_batch).astype(np.int32)}


def main(cfg: Config) -> dict:
    initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)
    keys = named_keys(cfg.seed, "init", "dropout")
    graphdef, params = nnx.split(ViT(VIT, rngs=nnx.Rngs(params=keys["init"])), nnx.Param)

    def loss_fn(params, batch, key):
        logits = nnx.merge(graphdef, params)(batch["x"], deterministic=False, rngs=key)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return loss, {}

    opt = optax.adam(1e-2)
    mesh = make_mesh()
    step_fn = data_parallel(make_train_step(loss_fn, opt, jit=False), mesh)
    state = place_state(init_train_state(params, opt), mesh)
    ckpt = Checkpointer(cfg.ckpt_dir) if cfg.ckpt_dir else None
    if cfg.resume:
        if ckpt is None:
            raise ValueError("--resume needs --ckpt-dir")
        tree, meta = ckpt.restore({"state": state})
        if meta["global_batch"] != cfg.global_batch:
            raise ValueError(
                f"checkpoint was trained with --global-batch {meta['global_batch']}, "
                f"not {cfg.global_batch}: resume with the same global batch"
            )
        state = place_state(tree["state"], mesh)
    main_print(
        f"processes {jax.process_count()} x devices {jax.local_device_count()} "
        f"= {jax.device_count()}; starting at step {int(state.step)}"
    )
    while int(state.step) < cfg.steps:
        step = int(state.step)
        batch = shard_batch(process_local(global_batch(cfg, step), mesh), mesh)
        state, metrics = step_fn(state, batch, keys["dropout"])
        main_print(f"step {step + 1} loss {float(metrics['loss']):.6f}")
        time.sleep(cfg.step_sleep)
    if ckpt is not None:
        ckpt.save(int(state.step), {"state": state}, meta={"global_batch": cfg.global_batch})
        ckpt.close()
    if cfg.out and is_main():
        save_params(cfg.out, state.params)
    return {"step": int(state.step)}


if __name__ == "__main__":
    main(parse(Config))
