"""CLIP-style contrastive training: a ViT image tower and a custom text encoder (seed 000).

Run (seconds, synthetic images):   python -m experiments.clip_contrastive --tiny
Real images (CIFAR-10 JPEG folder): python -m experiments.clip_contrastive --data folder \\
                                        --data-dir data/train
Options: --loss clip|siglip|seed, --freeze-image (the seed's .detach()), --clip-norm 1.0.

The PyTorch it reproduces (seed 000)::

    image_features = clip_model.get_image_features(pixel_values)      # .detach() to freeze
    text_features = my_text_encoder(input_ids)
    logits = image_features @ text_features.T
    loss = torch.nn.CrossEntropyLoss()(logits, torch.arange(len(logits)))
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    for group in optimizer.param_groups: print(group['params'])       # is my encoder in it?

Here: one pure ``loss_fn(params, batch, key)`` over the ``nnx.split`` params of both towers,
``jaxgrad.train.make_train_step`` with the ``logit_scale`` clamp as its post-update projection,
``jax.lax.stop_gradient`` for ``.detach()`` plus ``jaxgrad.freeze.optimizer_with_frozen`` so a
frozen tower carries no optimizer state, and ``jaxgrad.coverage`` to print what the optimizer
updates. Captions are drawn on the device from templates each step; evaluation is zero-shot
classification of held-out images (one prompt per class, and the mean of all prompts) and
image↔text retrieval recall@1/5.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from experiments.common import Row, fmt
from jaxgrad.cli import option, parse, positive, to_dict
from jaxgrad.contrastive import MAX_LOGIT_SCALE, retrieval_metrics
from jaxgrad.data.captions import TEMPLATES, Tokenizer, caption_table
from jaxgrad.data.dataset import ImageDataset, train_val_split
from jaxgrad.data.imagefolder import load_image_folder
from jaxgrad.data.pipeline import normalize, take
from jaxgrad.data.synthetic import make_synthetic
from jaxgrad.distributed import initialize, is_main, main_print
from jaxgrad.doctor import diagnose
from jaxgrad.io import JsonlLogger, atomic_write_json
from jaxgrad.loop import init_params, make_evaluate, make_run_chunk, train_steps
from jaxgrad.models.clip import TEXT_TOWER, ClipConfig, ClipModel
from jaxgrad.models.text import TextConfig
from jaxgrad.models.vit import ViTConfig
from jaxgrad.plots import plot_curves
from jaxgrad.rng import named_keys
from jaxgrad.tables import print_table
from jaxgrad.tasks import CLIP_STEP, clip_loss_fn, clip_optimizer, param_groups
from jaxgrad.train import TrainState, init_train_state
from jaxgrad.xla import RUN_ONCE


@dataclasses.dataclass(frozen=True)
class Config:
    data: str = option("synthetic", "image source", choices=("synthetic", "folder"))
    data_dir: str = option("data/train", "root/<class>/<image> folder for --data folder")
    n_images: int = option(6000, "images used (synthetic: generated; folder: random subset, 0=all)")
    n_val: int = option(1000, "held-out images for zero-shot accuracy and retrieval")
    loss: str = option(
        "clip",
        "clip: symmetric CE; siglip: sigmoid, bias init -10; seed: the seed's one-way CE "
        "(times the learned exp(logit_scale): our features are unit-norm)",
        choices=("clip", "siglip", "seed"),
    )
    freeze_image: bool = option(False, "the seed's .detach(): stop_gradient + image params frozen")
    clip_norm: float | None = option(1.0, "clip the global gradient norm to this (none: off)")
    steps: int = option(600, "optimizer steps")
    batch_size: int = option(128, "pairs per step (the B×B similarity matrix)")
    lr: float = option(1e-3, "AdamW peak learning rate (cosine decay after warmup)")
    warmup_steps: int = option(50, "linear warmup steps")
    weight_decay: float = option(0.1, "AdamW decay on ≥2-D weights only (open_clip's rule)")
    embed_dim: int = option(128, "shared embedding width")
    image_dim: int = option(128, "ViT width")
    image_depth: int = option(4, "ViT blocks")
    patch_size: int = option(4, "ViT patch size (32/4 = 64 patches)")
    text_dim: int = option(128, "text encoder width")
    text_depth: int = option(2, "text encoder blocks")
    heads: int = option(4, "attention heads in both towers")
    max_len: int = option(16, "caption length in tokens (the templates need at most 12)")
    augment: bool = option(True, "random crop + flip on training images")
    eval_every: int = option(100, "steps between zero-shot evaluations")
    log_every: int = option(10, "steps between JSONL training records")
    steps_per_dispatch: int = option(50, "max train steps scanned per device dispatch")
    seed: int = option(0, "one seed for init, data order, captions, augmentation")
    out_dir: str = option("runs/clip_contrastive", "JSONL metrics, PNG curves, final JSON")
    progress: bool = option(True, "tqdm progress bar")
    fast_compile: bool = option(False, "XLA backend opt level 0: ~2x faster compiles, slower steps")
    doctor: bool = option(False, "print the gradient-flow doctor's report before training")
    coordinator: str | None = option(
        None, "multi-process: host:port of process 0 (None: launcher env / cluster / one process)"
    )
    num_processes: int | None = option(None, "multi-process: process count (None: env / 1)")
    process_id: int | None = option(None, "multi-process: this process's rank (None: env / 0)")

    def __post_init__(self):
        positive(self, "n_val", "steps", "batch_size", "lr", "embed_dim", "eval_every")
        positive(self, "image_dim", "image_depth", "text_dim", "text_depth", "heads", "log_every")
        positive(self, "clip_norm", "patch_size", "max_len", "steps_per_dispatch")
        if self.n_images < 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("--n-images, --warmup-steps, --weight-decay must be >= 0")
        if self.text_dim % self.heads or self.image_dim % self.heads:
            raise ValueError(
                f"--text-dim and --image-dim must be divisible by --heads={self.heads}"
            )
        if self.batch_size < 2:
            raise ValueError("--batch-size must be >= 2: a contrastive batch needs negatives")

    @classmethod
    def tiny(cls) -> Config:
        return cls(
            n_images=400, n_val=100, steps=150, batch_size=32, lr=3e-3, warmup_steps=10,
            embed_dim=32, image_dim=32, image_depth=1, patch_size=8, text_dim=32, text_depth=1,
            heads=2, eval_every=75, log_every=10, progress=False, fast_compile=True, augment=False,
        )  # fmt: skip


def load_data(cfg: Config) -> tuple[ImageDataset, ImageDataset]:
    """``(train, val)`` image sets; folder subsets are drawn by ``cfg.seed``."""
    if cfg.data == "synthetic":
        ds = make_synthetic(cfg.n_images + cfg.n_val, seed=cfg.seed)
    else:
        if not Path(cfg.data_dir).is_dir():
            raise FileNotFoundError(
                f"--data-dir {cfg.data_dir} is not a folder; extract the images first, e.g. "
                "mkdir -p data && tar -xzf ../shared/data/cifar10-train-jpeg.tar.gz -C data"
            )
        ds = load_image_folder(cfg.data_dir)
        if cfg.n_images and cfg.n_images + cfg.n_val < len(ds):
            pick = np.random.default_rng(cfg.seed).permutation(len(ds))[: cfg.n_images + cfg.n_val]
            ds = ds.subset(np.sort(pick))
    return train_val_split(ds, cfg.n_val, seed=cfg.seed)


def model_config(cfg: Config, vocab_size: int, image_size: int) -> ClipConfig:
    image = ViTConfig(
        image_size=image_size, patch_size=cfg.patch_size, dim=cfg.image_dim,
        depth=cfg.image_depth, heads=cfg.heads, dim_head=cfg.image_dim // cfg.heads,
        mlp_dim=2 * cfg.image_dim, dropout=0.0, emb_dropout=0.0,
    )  # fmt: skip
    text = TextConfig(
        vocab_size=vocab_size, max_len=cfg.max_len, dim=cfg.text_dim, depth=cfg.text_depth,
        heads=cfg.heads, mlp_dim=2 * cfg.text_dim,
    )  # fmt: skip
    bias = -10.0 if cfg.loss == "siglip" else None  # SigLIP's initial bias
    return ClipConfig(image=image, text=text, embed_dim=cfg.embed_dim, logit_bias_init=bias)


def make_evaluator(
    graphdef, rest, val: ImageDataset, captions, *, seed: int, fast: bool = False, chunk: int = 500
):
    """``evaluate(params) -> metrics``: zero-shot top-1 (1 prompt, ensemble), recall@1/5.

    Held-out images are encoded ``chunk`` at a time (``jaxgrad.loop.make_evaluate``), then
    every prompt of every class and one fixed caption per image (for retrieval) in one text
    batch, scored in a second jitted program.
    """
    ids, cmask = captions
    t_all, c, length = ids.shape
    n_ret = min(len(val), 1000)  # retrieval over at most 1000 pairs
    t = np.random.default_rng(seed).integers(0, t_all, n_ret)  # the same captions every time
    all_ids = jnp.concatenate([ids.reshape(-1, length), ids[t, val.labels[:n_ret]]])
    all_mask = jnp.concatenate([cmask.reshape(-1, length), cmask[t, val.labels[:n_ret]]])
    opts = RUN_ONCE if fast else None
    model = lambda params: nnx.merge(graphdef, params, rest)
    embed = make_evaluate(
        lambda params, images, _: {"img": model(params).encode_image(normalize(images))},
        batch_size=chunk, reduce="stack", compiler_options=opts,
    )  # fmt: skip

    @functools.partial(jax.jit, compiler_options=opts)
    def metrics(params, img, labels):
        txt_all = model(params).encode_text(all_ids, all_mask)
        cls, txt = txt_all[: t_all * c].reshape(t_all, c, -1), txt_all[t_all * c :]
        ens = cls.mean(axis=0)  # prompt ensemble: mean of unit vectors, renormalised
        ens = ens / jnp.linalg.norm(ens, axis=-1, keepdims=True)
        lab = labels[:n_ret]
        return {
            "zeroshot_acc": jnp.mean(jnp.argmax(img @ cls[0].T, axis=1) == labels),
            "zeroshot_ens_acc": jnp.mean(jnp.argmax(img @ ens.T, axis=1) == labels),
            **retrieval_metrics(
                image_features=img[:n_ret], text_features=txt, image_labels=lab, text_labels=lab
            ),
        }

    images, labels = jnp.asarray(val.images), jnp.asarray(val.labels)

    def evaluate(params) -> dict[str, float]:
        img = embed(params, images, labels)["img"]
        return {k: float(v) for k, v in metrics(params, img, labels).items()}

    return evaluate


class Setup(NamedTuple):
    """What ``main``, the tour and the tests build from a config (:func:`setup`)."""

    keys: dict[str, jax.Array]  # "init", "data", "step" (the per-step key)
    tokenizer: Tokenizer
    captions: tuple[jax.Array, jax.Array]  # ids, mask [T, C, L]
    graphdef: Any
    params: Any
    rest: Any
    loss_fn: Any  # jaxgrad.tasks.clip_loss_fn
    optimizer: Any  # jaxgrad.tasks.clip_optimizer
    frozen: Any  # the bool mask the optimizer freezes (all False without --freeze-image)


def setup(cfg: Config, train: ImageDataset) -> Setup:
    """Model, captions, params, loss and optimizer for ``cfg`` (shared by main, tour, tests)."""
    keys = named_keys(cfg.seed, "init", "data", "step")
    tok, ids, cmask = caption_table(train.class_names, max_len=cfg.max_len)
    mcfg = model_config(cfg, len(tok), train.images.shape[1])
    opts = RUN_ONCE if cfg.fast_compile else None
    graphdef, params, rest = init_params(ClipModel, mcfg, keys["init"], compiler_options=opts)
    captions = (jnp.asarray(ids), jnp.asarray(cmask))
    loss_fn = clip_loss_fn(graphdef, rest, captions, loss=cfg.loss,
                           freeze_image=cfg.freeze_image, use_augment=cfg.augment)  # fmt: skip
    opt, frozen = clip_optimizer(
        params, steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm, freeze_image=cfg.freeze_image,
    )  # fmt: skip
    return Setup(keys, tok, captions, graphdef, params, rest, loss_fn, opt, frozen)


def main(cfg: Config) -> dict:
    # multi-process: every process trains the same model on its first device (not yet data-
    # parallel: CLIP's steps are not split over processes); process 0 writes and prints
    initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)  # before any other JAX call
    out = Path(cfg.out_dir)
    train, val = load_data(cfg)
    main_print(
        f"data: {train.source} | train {len(train)} | val {len(val)} | {train.num_classes} classes"
    )
    s = setup(cfg, train)
    opt = s.optimizer
    main_print(f"loss={cfg.loss} freeze_image={cfg.freeze_image} clip_norm={cfg.clip_norm}")
    main_print(f"vocabulary: {len(s.tokenizer)} words; {len(TEMPLATES)} caption templates")
    groups = param_groups(opt, s.params, s.frozen)
    print_table(
        [(g["module"], g["leaves"], f"{g['params']:,}", f"{g['state_floats']:,}",
          "FROZEN (not in optimizer)" if g["frozen"] == g["params"] else "trainable")
         for g in groups], ("module", "leaves", "params", "optimizer state", "status"),
        title="what the optimizer updates", right=("leaves", "params", "optimizer state"),
    )  # fmt: skip
    evaluate = make_evaluator(
        s.graphdef, s.rest, val, s.captions, seed=cfg.seed, fast=cfg.fast_compile
    )
    state: TrainState = init_train_state(s.params, opt)
    data = (jnp.asarray(train.images), jnp.asarray(train.labels))
    if cfg.doctor:  # which leaves get a gradient, and what the optimizer does with each
        first = take(*data, jnp.arange(cfg.batch_size))
        diagnose(s.loss_fn, s.params, first, s.keys["step"], opt)
    opts = RUN_ONCE if cfg.fast_compile else None
    run = make_run_chunk(s.loss_fn, opt, **CLIP_STEP, compiler_options=opts)
    out.mkdir(parents=True, exist_ok=True)
    log = JsonlLogger(out / "metrics.jsonl")
    if is_main():
        log.path.write_text("")  # one run per file
    ev = evaluate(state.params)  # step 0: the untrained towers, near chance
    log.log(step=0, **{f"val/{k}": v for k, v in ev.items()})
    hist = {"step": [], "loss": [], "eval_step": [0], "zs": [ev["zeroshot_acc"]],
            "zs_ens": [ev["zeroshot_ens_acc"]]}  # fmt: skip
    bar = tqdm(total=cfg.steps, disable=not (cfg.progress and is_main()), desc="clip")
    last: dict[str, float] = {}

    def on_chunk(start: int, done: int, m: dict) -> None:
        k = len(m["loss"])
        for j in range(k):  # global step numbers (1-based) of this chunk's steps
            step = start + done - k + j + 1
            if step % cfg.log_every == 0 or step == 1:
                rec = {name: float(v[j]) for name, v in m.items()}
                log.log(step=step, **rec)
                hist["step"].append(step)
                hist["loss"].append(rec["loss"])
        last.update({name: float(v[-1]) for name, v in m.items()})
        bar.update(k)
        bar.set_postfix(loss=f"{last['loss']:.3f}", logit_scale=f"{last['logit_scale']:.2f}")

    t0 = time.perf_counter()
    for start in range(0, cfg.steps, cfg.eval_every):  # train to the next evaluation point
        stop = min(start + cfg.eval_every, cfg.steps)
        state, _ = train_steps(
            run, state, data, start=start, stop=stop, batch_size=cfg.batch_size,
            max_chunk=cfg.steps_per_dispatch, data_key=s.keys["data"], step_key=s.keys["step"],
            on_chunk=functools.partial(on_chunk, start),
        )  # fmt: skip
        ev = evaluate(state.params)
        log.log(step=stop, **{f"val/{k}": v for k, v in ev.items()})
        hist["eval_step"].append(stop)
        hist["zs"].append(ev["zeroshot_acc"])
        hist["zs_ens"].append(ev["zeroshot_ens_acc"])
        if is_main():
            tqdm.write(f"step {stop}: " + ", ".join(f"{k} {v:.3f}" for k, v in ev.items()))
    bar.close()
    seconds = time.perf_counter() - t0
    final = {
        "config": to_dict(cfg), "source": train.source, "train_seconds": seconds,
        "last_train": last, "val": ev, "param_groups": groups,
        "chance": 1.0 / train.num_classes,
    }  # fmt: skip
    atomic_write_json(out / "final.json", final)
    plot_curves(
        out / "curves.png",
        {
            "train loss": {cfg.loss: (hist["step"], hist["loss"])},
            "zero-shot val accuracy": {
                "1 prompt": (hist["eval_step"], hist["zs"]),
                f"{len(TEMPLATES)}-prompt ensemble": (hist["eval_step"], hist["zs_ens"]),
            },
        },
        title=f"CLIP-style training on {train.source}",
    )
    main_print(f"done in {seconds:.1f} s; zero-shot val acc {ev['zeroshot_acc']:.3f} "
          f"(ensemble {ev['zeroshot_ens_acc']:.3f}, chance {1 / train.num_classes:.3f}); "
          f"outputs in {out}/")  # fmt: skip
    return final


def tour() -> list[Row]:
    """A tiny run on synthetic images (labelled so): the seed's questions, answered by its logs."""
    final = main(dataclasses.replace(Config.tiny(), out_dir="runs/tour/clip_contrastive"))
    last, acc, chance = final["last_train"], final["val"]["zeroshot_ens_acc"], final["chance"]
    text = next(g for g in final["param_groups"] if g["module"] == TEXT_TOWER)
    return [
        Row("CLIP: grad reaches custom text encoder", "text grads non-zero",
            f"|g_text| {fmt(last['grad_norm_text'])}", last["grad_norm_text"] > 0),
        Row("CLIP: text encoder in the optimizer", "in param_groups",
            f"Adam state {text['state_floats']:,} = 2 x {text['params']:,}",
            text["state_floats"] == 2 * text["params"]),
        Row("CLIP: logit_scale clamp [0, ln 100]", "clamp_(0, 4.6052)",
            fmt(last["logit_scale"]), 0.0 <= last["logit_scale"] <= MAX_LOGIT_SCALE),
        Row("CLIP zero-shot (synthetic, not CIFAR)", f"> 2x chance {chance:.2f}", f"{acc:.2f}",
            acc > 2 * chance),
    ]  # fmt: skip


if __name__ == "__main__":
    main(parse(Config))
