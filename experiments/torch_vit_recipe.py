"""The PyTorch twin of ``experiments.vit_cifar10 --recipe NAME``: the same model, recipe and
held-out split, trained by vit-pytorch's ``ViT`` in eager PyTorch, for a side-by-side.

Run (needs torch; a folder of CIFAR-10 JPEGs, ``<root>/<class>/<image>``)::

    python -m experiments.torch_vit_recipe --recipe cpu --data-dir data/train --threads 2

What is the same as the JAX run: the ViT (``experiments._support.torch_vit``, vit-pytorch's
layer names and shapes), the recipe's values (AdamW decaying only weight matrices, linear
warm-up then cosine to 0 per step, label smoothing, reflect-pad-4 crop + flip, batch size,
epochs, dropping the last partial batch), the training images and the ``--n-val`` validation
images (``jaxgrad.data.load_classification_data`` with the same seed), scored every epoch.
What differs: initialisation and data order come from torch's generator, so the curves agree
in distribution, not digit by digit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import numpy as np

from experiments._support.torch_vit import from_vit_config
from jaxgrad.data.sources import load_classification_data
from jaxgrad.errors import ConfigError
from jaxgrad.report.cli import CheckedConfig, option, run_main
from jaxgrad.tasks.classifier import RECIPES


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    recipe: str = option("cpu", "the vit_cifar10 recipe to train", choices=tuple(RECIPES))
    data: str = option(
        "folder",
        "folder (root/<class>/<image>) | synthetic (the smoke test)",
        choices=("folder", "synthetic"),
    )
    data_dir: str | None = option(None, "image folder root/<class>/<image> (--data folder)")
    cache_dir: str | None = option(None, "decoded image-folder cache (default ~/.cache/jaxgrad)")
    n_val: int = option(5000, "images held out for validation (as vit_cifar10 --n-val)", gt=0)
    train_limit: int | None = option(None, "train on N random training images only", gt=0)
    epochs: int | None = option(None, "override the recipe's epochs", gt=0)
    threads: int = option(2, "torch.set_num_threads", gt=0)
    seed: int = option(0, "split seed (as vit_cifar10 --seed) and torch.manual_seed")
    eval_batch_size: int = option(500, "evaluation batch size", gt=0)

    @classmethod
    def tiny(cls) -> Config:
        """Seconds: one epoch on 256 synthetic images (not CIFAR-10), 64 held out."""
        return cls(data="synthetic", train_limit=256, n_val=64, epochs=1)


def lr_factor(schedule: str, warm: int, total: int, t: int) -> float:
    """The learning rate at update ``t`` over the peak: optax's
    ``warmup_cosine_decay_schedule(0, 1, warm, total)`` for "cosine", else 1."""
    if schedule != "cosine":
        return 1.0
    if t < warm:
        return t / warm
    return 0.5 * (1 + math.cos(math.pi * min(t - warm, total - warm) / max(total - warm, 1)))


def _augment(torch, x, gen):
    """Reflect-pad 4, random 32x32 crop, random horizontal flip, per image; ``[B, C, H, W]``."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (b,), generator=gen)
    dx = torch.randint(0, 9, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, x.shape[1], h, w + 8)
    crop = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, x.shape[1], h, w)
    crop = crop.gather(3, cols)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], crop.flip(3), crop)


def main(cfg: Config) -> dict:
    # checked here, not in __post_init__: the default config (data folder) is parsed first
    if cfg.data == "folder" and cfg.data_dir is None:
        raise ConfigError("--data folder needs --data-dir (a folder of <class>/<image> files)")
    try:
        import torch
    except ImportError as e:  # torch is optional for jaxgrad
        raise ConfigError("the PyTorch twin needs torch: pip install torch") from e
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    h = RECIPES[cfg.recipe]
    vit = h.vit()
    epochs = cfg.epochs or h.epochs
    train, val, _ = load_classification_data(
        cfg.data, data_dir=cfg.data_dir, n_val=cfg.n_val, seed=cfg.seed, synthetic_size=1200,
        train_limit=cfg.train_limit, cache_dir=cfg.cache_dir, progress=False,
    )  # fmt: skip

    def tensor(images):  # uint8 [N, H, W, C] -> float [N, C, H, W] in [-1, 1], as normalize()
        return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    xs, ys = tensor(train.images), torch.from_numpy(train.labels.astype(np.int64))
    xv, yv = tensor(val.images), torch.from_numpy(val.labels.astype(np.int64))
    model = from_vit_config(dataclasses.replace(vit, dtype="float32"))
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim == 2]  # Linear weights = flax kernels
    rest = [p for p in model.parameters() if p.ndim != 2]
    wd = h.weight_decay if h.optimizer == "adamw" else 0.0
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                             {"params": rest, "weight_decay": 0.0}], lr=h.lr)  # fmt: skip
    spe = len(train) // h.batch_size
    total = epochs * spe
    warm = max(min(int(h.warmup_epochs * spe), total - 1), 1)

    factor = functools.partial(lr_factor, h.schedule, warm, total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=h.label_smoothing)
    print(f"torch {torch.__version__}, {cfg.threads} threads | recipe {cfg.recipe}: {n_params:,} "
          f"parameters, {epochs} epochs x {spe} steps, batch {h.batch_size}")  # fmt: skip
    history, t_start, c_start = [], time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        t0, total_loss = time.perf_counter(), 0.0
        for s in range(spe):
            idx = order[s * h.batch_size : (s + 1) * h.batch_size]
            x = _augment(torch, xs[idx], gen) if h.augment else xs[idx]
            loss = loss_fn(model(x), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item()
        model.eval()
        with torch.no_grad():
            correct = sum(
                (model(xv[i : i + cfg.eval_batch_size]).argmax(-1) == yv[i : i + cfg.eval_batch_size])
                .sum().item() for i in range(0, len(val), cfg.eval_batch_size)
            )  # fmt: skip
        row = dict(epoch=epoch + 1, loss=total_loss / spe, val_accuracy=correct / len(val),
                   epoch_s=time.perf_counter() - t0, wall_s=time.perf_counter() - t_start,
                   cpu_s=time.process_time() - c_start)  # fmt: skip
        history.append(row)
        print(f"Epoch [{epoch + 1}/{epochs}], loss {row['loss']:.4f}, Val Accuracy: "
              f"{100 * row['val_accuracy']:.2f}% ({row['epoch_s']:.1f} s, {row['wall_s']:.0f} s "
              f"in all, {row['cpu_s']:.0f} CPU-s)")  # fmt: skip
    return {"params": n_params, "history": history}


if __name__ == "__main__":
    run_main(main, Config)
