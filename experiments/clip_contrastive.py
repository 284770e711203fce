"""CLIP-style contrastive training: an image tower and a custom text encoder (seed 000).

Run (seconds, synthetic images):   python -m experiments.clip_contrastive --tiny
Real images (CIFAR-10 JPEG folder): python -m experiments.clip_contrastive --data folder \\
                                        --data-dir data/train
A pretrained transformers CLIP (save_pretrained folder), frozen, features cached once:
    python -m experiments.clip_contrastive --image-encoder clip --image-weights DIR --freeze-image
  fine-tuned, each tower at its own lr:  ... --image-encoder clip --image-weights DIR --image-lr 1e-5
Options: --loss clip|siglip|siglip-ring|seed, --freeze-image (the seed's .detach()), --clip-norm 1.0.
Data-parallel over every device of every process (``--batch-size`` is the global batch)::

    python -m experiments.launch --processes 2 --devices-per-process 2 -- clip_contrastive --tiny

The PyTorch it reproduces (seed 000)::

    image_features = clip_model.get_image_features(pixel_values)      # .detach() to freeze
    text_features = my_text_encoder(input_ids)
    logits = image_features @ text_features.T
    loss = torch.nn.CrossEntropyLoss()(logits, torch.arange(len(logits)))
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    for group in optimizer.param_groups: print(group['params'])       # is my encoder in it?

Here: one pure ``loss_fn(params, batch, key)`` over the ``nnx.split`` params of both towers,
``jaxgrad.training.step.make_train_step`` with the ``logit_scale`` clamp as its post-update projection,
``jax.lax.stop_gradient`` for ``.detach()`` plus ``jaxgrad.autodiff.freeze.optimizer_with_frozen`` so a
frozen tower carries no optimizer state, and ``jaxgrad.inspect.coverage`` to print what the optimizer
updates. With several devices the batch is split over the mesh's ``data`` axis and the
loss is written on the global ``[B, D]`` features: jit (GSPMD) all-gathers them, so each image
is scored against all B captions and the gradient flows back through the gather
(``jaxgrad.tasks.clip_parallel``). Captions are drawn on the device from templates each step; evaluation is zero-shot
classification of held-out images (one prompt per class, and the mean of all prompts) and
image↔text retrieval recall@1/5.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time

import jax.numpy as jnp

from experiments._support.clip_setup import load_data, report_groups, setup
from experiments._support.common import Row, fmt
from jaxgrad.data.captions import TEMPLATES
from jaxgrad.data.dataset import ImageDataset
from jaxgrad.data.pipeline import take
from jaxgrad.errors import ConfigError
from jaxgrad.inspect.doctor import diagnose
from jaxgrad.models.clip import MAX_LOGIT_SCALE, TEXT_TOWER
from jaxgrad.port.hf_random import HAVE_TRANSFORMERS, save_random_clip
from jaxgrad.report.cli import option, run_main, to_dict
from jaxgrad.report.plan import Plan
from jaxgrad.report.plots import run_title
from jaxgrad.report.progress import Progress
from jaxgrad.tasks.clip import CLIP_LOSSES, CLIP_STEP
from jaxgrad.tasks.clip_eval import make_evaluator, plot_clip_run
from jaxgrad.tasks.clip_parallel import batch_layout, place_for_training
from jaxgrad.training.distributed import initialize, main_print
from jaxgrad.training.lifecycle import Run
from jaxgrad.training.loop import make_run_chunk, train_steps
from jaxgrad.training.parallel import make_mesh
from jaxgrad.training.params_file import save_params
from jaxgrad.training.runs import RunFlags
from jaxgrad.training.step import TrainState, init_train_state
from jaxgrad.training.xla import RUN_ONCE


@dataclasses.dataclass(frozen=True)
class Config(RunFlags):
    data: str = option("synthetic", "image source", choices=("synthetic", "folder"))
    data_dir: str = option("data/train", "root/<class>/<image> folder for --data folder")
    n_images: int = option(
        6000, "images (synthetic: generated; folder: random subset, 0=all)", ge=0
    )
    n_val: int = option(1000, "held-out images for zero-shot accuracy and retrieval", gt=0)
    loss: str = option(
        "clip",
        "clip: symmetric CE; siglip: sigmoid, bias init -10; siglip-ring: the same loss with "
        "text chunks passed around the devices (no [B, B] matrix); seed: the seed's one-way CE "
        "(times the learned exp(logit_scale): our features are unit-norm)",
        choices=CLIP_LOSSES,
    )
    image_encoder: str = option(
        "vit",
        "vit: a small ViT trained from scratch; clip: the pretrained transformers CLIP vision "
        "tower in --image-weights (the seed's clip_model.get_image_features)",
        choices=("vit", "clip"),
    )
    image_weights: str = option(
        "", "--image-encoder clip: a save_pretrained folder (config.json + model.safetensors)"
    )
    freeze_image: bool = option(
        False,
        "the seed's .detach(): vit: stop_gradient + image params frozen; clip: the tower's "
        "features computed once, cached in --feature-cache, only the text tower trains",
    )
    feature_cache: str = option(
        "runs/feature_cache", "folder of cached frozen-tower features (keyed by weights + data)"
    )
    image_lr: float | None = option(
        None, "peak lr of the image tower, its own param group (none: --lr for all)", gt=0
    )
    clip_norm: float | None = option(1.0, "clip the global gradient norm to this (none: off)", gt=0)
    steps: int = option(600, "optimizer steps", gt=0)
    batch_size: int = option(
        128, "global pairs per step (the B×B similarity matrix), split over every device"
    )
    lr: float = option(1e-3, "AdamW peak learning rate (cosine decay after warmup)", gt=0)
    warmup_steps: int = option(50, "linear warmup steps", ge=0)
    weight_decay: float = option(0.1, "AdamW decay on ≥2-D weights only (open_clip's rule)", ge=0)
    embed_dim: int = option(128, "shared embedding width (clip: the tower's projection_dim)", gt=0)
    image_dim: int = option(128, "ViT width", gt=0)
    image_depth: int = option(4, "ViT blocks", gt=0)
    patch_size: int = option(4, "ViT patch size (32/4 = 64 patches)", gt=0)
    text_dim: int = option(128, "text encoder width", gt=0)
    text_depth: int = option(2, "text encoder blocks", gt=0)
    heads: int = option(4, "attention heads in both towers", gt=0)
    max_len: int = option(16, "caption length in tokens (the templates need at most 12)", gt=0)
    augment: bool = option(True, "random crop + flip on training images (vit only)")
    eval_every: int = option(100, "steps between zero-shot evaluations", gt=0)
    log_every: int = option(10, "steps between JSONL training records", gt=0)
    steps_per_dispatch: int = option(50, "max train steps scanned per device dispatch", gt=0)
    seed: int = option(0, "one seed for init, data order, captions, augmentation")
    out_dir: str = option("runs/clip_contrastive", "JSONL metrics, PNG curves, final JSON")
    fast_compile: bool = option(False, "XLA backend opt level 0: ~2x faster compiles, slower steps")

    def __post_init__(self):
        super().__post_init__()
        if self.text_dim % self.heads or self.image_dim % self.heads:
            raise ValueError(
                f"--text-dim and --image-dim must be divisible by --heads={self.heads}"
            )
        if self.batch_size < 2:
            raise ValueError("--batch-size must be >= 2: a contrastive batch needs negatives")
        if self.data == "synthetic" and self.n_images == 0:
            raise ValueError(
                "--n-images 0 (all) needs --data folder; synthetic images need a count"
            )
        if self.n_images and self.batch_size > self.n_images:
            raise ValueError(
                f"--batch-size {self.batch_size} is larger than the training set "
                f"(--n-images {self.n_images}): lower --batch-size or raise --n-images"
            )
        if self.image_encoder == "clip" and not self.image_weights:
            raise ValueError(
                "--image-encoder clip needs --image-weights DIR (a transformers save_pretrained "
                "folder, e.g. a snapshot in ~/.cache/huggingface/hub)"
            )
        if self.image_lr is not None and self.freeze_image:
            raise ValueError("--image-lr has no effect with --freeze-image: pass one of them")

    @classmethod
    def tiny(cls) -> Config:
        """Seconds on a CPU; a throwaway run: re-run, it replaces a previous tiny CLIP run in its
        --out-dir, and nothing else."""
        return cls(
            n_images=400, n_val=100, steps=150, batch_size=32, lr=3e-3, warmup_steps=10,
            embed_dim=32, image_dim=32, image_depth=1, patch_size=8, text_dim=32, text_depth=1,
            heads=2, eval_every=75, log_every=10, progress=False, fast_compile=True, augment=False,
            out_dir="runs/clip_contrastive_tiny", overwrite=None, tiny_run=True,
        )  # fmt: skip


def main(cfg: Config) -> dict:
    # first, before any other JAX call; process 0 alone prints and writes
    multi = initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)
    if multi and cfg.devices is not None:
        raise ConfigError("--devices: a multi-process run uses every device of every process")
    mesh = make_mesh(cfg.devices)  # one "data" axis over every device of every process
    batch_layout(cfg.batch_size, mesh)  # refuses a batch that does not split over the mesh
    train, val = load_data(cfg)
    if cfg.batch_size > len(train):  # before anything is written
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is larger than the training set "
            f"({len(train)} images after --n-val {cfg.n_val}): lower --batch-size"
        )
    run = Run(cfg.out_dir, experiment="clip_contrastive", tiny=cfg.tiny_run,
              overwrite=bool(cfg.overwrite), rerun_tiny=cfg.overwrite is None)  # fmt: skip
    try:
        return _train(cfg, train, val, run, mesh)
    except BaseException:
        run.abort()
        raise


def _train(cfg: Config, train: ImageDataset, val: ImageDataset, run: Run, mesh) -> dict:
    main_print(
        f"data: {train.source} | train {len(train)} | val {len(val)} | {train.num_classes} classes"
    )
    s = setup(cfg, train, val, mesh=mesh)
    layout = batch_layout(cfg.batch_size, mesh)
    opt = s.optimizer
    main_print(f"loss={cfg.loss} image_encoder={cfg.image_encoder} "
               f"freeze_image={cfg.freeze_image} clip_norm={cfg.clip_norm}")  # fmt: skip
    for part, c in (s.inputs.cache or {}).items():
        how = "hit, read" if c.hit else "computed, wrote"  # process 0 writes the cache
        main_print(f"feature cache ({part}): {how} {c.path}")
    main_print(f"vocabulary: {len(s.tokenizer)} words; {len(TEMPLATES)} caption templates")
    groups = report_groups(cfg, s)
    evaluate = make_evaluator(
        s.graphdef, s.rest, val, s.captions, seed=cfg.seed, fast=cfg.fast_compile,
        images=s.inputs.val, image_input=s.inputs.kind, class_names=train.class_names,
        mesh=mesh,
    )  # fmt: skip
    state: TrainState = init_train_state(s.params, opt)
    data = (s.inputs.train, train.labels)
    if cfg.doctor:  # which leaves get a gradient, and what the optimizer does with each
        first = take(*map(jnp.asarray, data), jnp.arange(cfg.batch_size))
        diagnose(s.loss_fn, s.params, first, s.keys["step"], opt)
    # params, keys and the dataset on every device of every process; each batch is split
    # over the mesh inside the step (make_run_chunk(mesh=)), the loss sees the global batch
    state, keys, data = place_for_training(state, s.keys, data, mesh)
    opts = RUN_ONCE if cfg.fast_compile else None
    run_chunk = make_run_chunk(s.loss_fn, opt, mesh=mesh, **CLIP_STEP, compiler_options=opts)
    log, out = run.logger, run.out
    run.clear_metrics()  # one run per file
    ev = evaluate(state.params)  # step 0: the untrained towers, near chance
    log.log(step=0, **{f"val/{k}": v for k, v in ev.items()})
    hist = {"step": [], "loss": [], "eval_step": [0], "zs": [ev["zeroshot_acc"]],
            "zs_ens": [ev["zeroshot_ens_acc"]]}  # fmt: skip
    bar = Progress(cfg.steps, desc="clip", show=("loss", "logit_scale"), enabled=cfg.progress)
    last: dict[str, float] = {}
    trainable = sum(g["params"] - g["frozen"] for g in groups)
    plan = Plan(name=f"CLIP, image tower {cfg.image_encoder}" + " frozen" * cfg.freeze_image
                + f" · {layout.describe()}", params=trainable, steps_per_epoch=cfg.steps,
                smaller=(f"--steps {max(1, cfg.steps // 10)}", 0.1))  # fmt: skip
    plan.announce()

    def on_chunk(start: int, done: int, m: dict) -> None:
        k = len(m["loss"])
        for j in range(k):  # global step numbers (1-based) of this chunk's steps
            step = start + done - k + j + 1
            if step % cfg.log_every == 0 or step == 1:
                rec = {name: float(v[j]) for name, v in m.items()}
                log.log(step=step, **rec)
                hist["step"].append(step)
                hist["loss"].append(rec["loss"])
        if not last:  # the first finished chunk: how long the whole run will take
            plan.first_chunk(steps=done, seconds=time.perf_counter() - t0)
        last.update({name: float(v[-1]) for name, v in m.items()})
        bar(start + done, m)

    t0 = time.perf_counter()
    for start in range(0, cfg.steps, cfg.eval_every):  # train to the next evaluation point
        stop = min(start + cfg.eval_every, cfg.steps)
        state, _ = train_steps(
            run_chunk, state, data, start=start, stop=stop, batch_size=cfg.batch_size,
            max_chunk=cfg.steps_per_dispatch, data_key=keys["data"], step_key=keys["step"],
            on_chunk=functools.partial(on_chunk, start),
        )  # fmt: skip
        ev = evaluate(state.params)
        log.log(step=stop, **{f"val/{k}": v for k, v in ev.items()})
        hist["eval_step"].append(stop)
        hist["zs"].append(ev["zeroshot_acc"])
        hist["zs_ens"].append(ev["zeroshot_ens_acc"])
        (bar.write if bar.bar is not None else main_print)(  # process 0 only
            f"step {stop}: " + ", ".join(f"{k} {v:.3f}" for k, v in ev.items())
        )
    bar.close()
    seconds = time.perf_counter() - t0
    chance = 1.0 / train.num_classes
    save_params(out / "clip_params.npz", state.params)  # the torch.save(state_dict) equivalent
    final = {
        "config": {**to_dict(cfg), **layout.record()}, "source": train.source,
        "train_seconds": seconds,
        "classes": list(train.class_names),  # the zero-shot prompts' names, label order
        "last_train": last, "val": ev, "param_groups": groups, "chance": chance,
        "first_loss": hist["loss"][0] if hist["loss"] else None,
        "feature_cache": None if s.inputs.cache is None else {
            part: {"hit": c.hit, "path": str(c.path)} for part, c in s.inputs.cache.items()
        },
    }  # fmt: skip
    flags = ["--freeze-image"] * cfg.freeze_image + [f"--image-lr {cfg.image_lr}"] * bool(
        cfg.image_lr)  # fmt: skip
    encoder = f"pretrained CLIP tower ({cfg.image_weights})" if cfg.image_encoder == "clip" else (
        "ViT from scratch")  # fmt: skip
    title = run_title("CLIP contrastive", source=train.source, flags=flags, loss=cfg.loss,
                      image=encoder)  # fmt: skip
    plot_clip_run(out / "curves.png", hist, loss=cfg.loss, title=title, chance=chance)
    run.finish(final, name="final.json")  # written last: the run is complete when it is there
    main_print(f"done in {seconds:.1f} s; zero-shot val acc {ev['zeroshot_acc']:.3f} "
               f"(ensemble {ev['zeroshot_ens_acc']:.3f}, chance {chance:.3f}); "
               f"outputs in {out}/")  # fmt: skip
    return final


def tour() -> list[Row]:
    """A tiny run on synthetic images (labelled so): the seed's questions, answered by its logs;
    then the seed's own setup, a pretrained transformers CLIP tower frozen from its feature cache
    (a tiny random-init checkpoint written to a temp dir: needs torch + transformers)."""
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
        Row(f"CLIP zero-shot, {len(TEMPLATES)}-prompt ensemble (synthetic, not CIFAR)",
            f"> 2x chance {chance:.2f}", f"{acc:.2f}", acc > 2 * chance),
        _pretrained_row(),
    ]  # fmt: skip


def _pretrained_row() -> Row:
    scenario, seed_says = "CLIP: pretrained HF tower .detach(), cached", "text loss falls"
    if not HAVE_TRANSFORMERS:
        return Row(scenario, seed_says, "skipped: transformers not installed", False, skipped=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(
            Config.tiny(), image_encoder="clip", image_weights=str(save_random_clip(tmp)),
            freeze_image=True, feature_cache=f"{tmp}/cache", steps=60, eval_every=60,
            out_dir="runs/tour/clip_pretrained",
        )  # fmt: skip
        final = main(cfg)
    first, last = final["first_loss"], final["last_train"]
    ok = last["loss"] < first and last["grad_norm_image"] == 0.0
    return Row(scenario, seed_says, f"{first:.2f} -> {last['loss']:.2f}, |g_image| 0", ok)


if __name__ == "__main__":
    run_main(main, Config)
