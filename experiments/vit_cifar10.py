r"""The seed's ViT on CIFAR-10 (vit-pytorch), trained and evaluated in JAX.

Run (seed recipe, CIFAR-10 downloaded into ./data, test accuracy each epoch like the seed):
    python -m experiments.vit_cifar10 --data cifar10 --data-dir data --download
An image folder (root/<class>/<image>.jpg, 5,000 held out for validation):
    python -m experiments.vit_cifar10 --data folder --data-dir data/train
The strong recipe (AdamW, warm-up + cosine, label smoothing, crop + flip, bf16, batch 512):
    python -m experiments.vit_cifar10 --recipe strong --data folder --data-dir data/train
No data at hand (embedded synthetic images, NOT CIFAR-10): ``--data synthetic`` (the default).
Evaluate a saved model on any CIFAR-format or image-folder directory:
    python -m experiments.vit_cifar10 --eval-only --checkpoint runs/vit_cifar10/vit_params.npz \
        --data-dir data/train

The PyTorch it reproduces::

    model = ViT(image_size=32, patch_size=4, num_classes=10, dim=512, depth=6, heads=8,
                mlp_dim=1024, dropout=0.1, emb_dropout=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)      # batch 64, 10 epochs
    for epoch in range(10):
        model.train()
        for images, labels in train_loader:                         # ToTensor + Normalize(0.5)
            loss = criterion(model(images), labels)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        model.eval(); ...  # accuracy on the test set
    torch.save(model.state_dict(), "vit_model.pth")

Differences, on purpose: images are channels-last ``[B, 32, 32, 3]``; each epoch drops the last
partial batch (781 steps of 64 instead of 781 + one of 16) so every step has one shape.
Outputs (``--out-dir``, default runs/vit_cifar10; ``--tiny``: runs/vit_cifar10_tiny, replaced
by the next tiny run, which replaces nothing but a tiny ViT run): .jaxgrad-run.json (the run
marker: experiment, tiny or not, run id), metrics.jsonl, curves.png, ckpt/ (orbax, one per epoch, each with the
run's config), vit_params.npz + vit_config.json (the ``torch.save(state_dict)`` equivalent),
summary.json. A directory holding a run needs ``--resume`` (same config; ``--epochs`` may grow,
other changes only via ``--resume-override lr,batch_size``, logged) or ``--overwrite`` (only a
ViT run's folder: one without a jaxgrad run marker, or another experiment's, is refused).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from experiments._support.common import Row
from jaxgrad.data import ImageDataset
from jaxgrad.data.sources import check_fits, load_classification_data
from jaxgrad.errors import ConfigError
from jaxgrad.inspect.doctor import diagnose
from jaxgrad.models.vit import ViT, ViTConfig, count_params
from jaxgrad.report.cli import option, run_main, to_dict
from jaxgrad.report.io import atomic_write_json
from jaxgrad.report.plan import Plan
from jaxgrad.report.plots import plot_run_curves, run_title
from jaxgrad.report.progress import Progress
from jaxgrad.tasks.classifier import (
    RECIPES,
    Hyper,
    classifier_loss,
    evaluate,
    evaluate_checkpoint,
    make_optimizer,
    recipe_values,
    run_chunk_for,
)
from jaxgrad.training.distributed import initialize, main_print, replicate
from jaxgrad.training.guard import check_nonfinite
from jaxgrad.training.lifecycle import EpochRun
from jaxgrad.training.loop import init_params, steps_per_epoch, train_epoch
from jaxgrad.training.parallel import make_mesh, place_state, replicated
from jaxgrad.training.params_file import save_params
from jaxgrad.training.rng import named_keys
from jaxgrad.training.runs import RunFlags, resolved_config
from jaxgrad.training.step import init_train_state


def _by_recipe(name: str, help: str, **bounds):
    """A flag over the recipe's value of ``name`` (None: the recipe's; the help says each's)."""
    return option(None, f"{help} (recipes: {recipe_values(name)})", **bounds)


@dataclasses.dataclass(frozen=True)
class Config(RunFlags):
    recipe: str = option("seed", "training recipe: jaxgrad.tasks.classifier.RECIPES[name] (its "
                         "values below)", choices=tuple(RECIPES))  # fmt: skip
    data: str = option(
        "synthetic",
        "synthetic (embedded, NOT CIFAR-10) | cifar10 (python format; test split scored) | "
        "folder (root/<class>/<image>; --n-val held out)",
        choices=("synthetic", "cifar10", "folder"),
    )
    data_dir: str | None = option(None, "CIFAR-10 directory (or its archive's) / image folder")
    download: bool = option(False, "download CIFAR-10 into --data-dir if it is not there")
    n_val: int = option(5000, "images held out for validation (folder and synthetic data)", gt=0)
    synthetic_size: int = option(12000, "number of synthetic images (train + validation)", gt=0)
    train_limit: int | None = option(
        None, "train on N random training images only (quick runs)", gt=0
    )
    cache_dir: str | None = option(None, "decoded image-folder cache (default ~/.cache/jaxgrad)")
    model: str = option("seed", f"ViT: seed = the recipe's model (patch size "
                        f"{recipe_values('patch_size')}; dropout {recipe_values('dropout')}; "
                        "width etc. below) or tiny", choices=("seed", "tiny"))  # fmt: skip
    dim: int | None = _by_recipe("dim", "model width", gt=0)
    depth: int | None = _by_recipe("depth", "number of blocks", gt=0)
    heads: int | None = _by_recipe("heads", "attention heads", gt=0)
    mlp_dim: int | None = _by_recipe("mlp_dim", "MLP width", gt=0)
    epochs: int | None = _by_recipe("epochs", "epochs", gt=0)
    batch_size: int | None = _by_recipe(
        "batch_size", "global batch size, split over every device", gt=0
    )
    lr: float | None = _by_recipe("lr", "peak learning rate", gt=0)
    weight_decay: float | None = _by_recipe("weight_decay", "AdamW decay of weight matrices", ge=0)
    warmup_epochs: float | None = _by_recipe("warmup_epochs", "linear warm-up epochs", ge=0)
    label_smoothing: float | None = _by_recipe("label_smoothing", "label smoothing", ge=0, lt=1)
    augment: bool | None = _by_recipe("augment", "random crop (reflect pad 4) + flip")
    dtype: str | None = _by_recipe("dtype", "compute dtype float32|bfloat16")
    mix: float | None = _by_recipe("mix", "probability of mixup/cutmix per batch", ge=0, le=1)
    attn_dropout: bool | None = _by_recipe("attn_dropout", "attention dropout (off: fused kernel)")
    eval_batch_size: int = option(500, "evaluation batch size (memory only, not numerics)", gt=0)
    steps_per_dispatch: int = option(64, "max train steps scanned per device dispatch", gt=0)
    seed: int = option(0, "seed for init, dropout, data order and the synthetic data")
    out_dir: str = option("runs/vit_cifar10", "where metrics, plots, checkpoints and params go")
    keep: int = option(3, "checkpoints kept", gt=0)
    resume: bool = option(False, "continue from the latest complete checkpoint in --out-dir/ckpt")
    resume_or_start: bool = option(
        False, "with --resume: start fresh (with a notice) when there is no complete checkpoint"
    )
    resume_override: tuple[str, ...] = option(
        (), "with --resume: config fields allowed to differ, e.g. lr,batch_size (logged)"
    )
    eval_only: bool = option(False, "only evaluate --checkpoint on --data-dir, no training")
    checkpoint: str | None = option(None, "--eval-only: a vit_params.npz or a ckpt/ directory")
    nonfinite_guard: bool = option(
        True, "skip updates with a NaN/inf loss, gradient, update or new parameter (counted)"
    )
    max_nonfinite: int = option(20, "stop when this many steps in a row were skipped", gt=0)

    def __post_init__(self):
        super().__post_init__()
        if self.data != "synthetic" and self.data_dir is None and not self.eval_only:
            raise ValueError(f"--data {self.data} needs --data-dir (add --download for cifar10)")
        if self.eval_only and (self.checkpoint is None or self.data_dir is None):
            raise ValueError("--eval-only needs --checkpoint PATH and --data-dir DIR")
        if self.dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"--dtype must be float32 or bfloat16, got {self.dtype}")
        if self.data == "synthetic" and self.n_val >= self.synthetic_size:
            raise ValueError(f"--n-val {self.n_val} must be smaller than --synthetic-size "
                             f"{self.synthetic_size} (images held out of the synthetic set)")  # fmt: skip

    @classmethod
    def tiny(cls) -> Config:
        """A seconds-long run on synthetic data: tiny ViT, 1,200 images, 3 epochs, written to
        runs/vit_cifar10_tiny (replaced by the next --tiny run unless --resume)."""
        return cls(
            model="tiny", synthetic_size=1200, n_val=200, epochs=3, batch_size=40, lr=2e-3,
            steps_per_dispatch=20, progress=False, out_dir="runs/vit_cifar10_tiny",
            overwrite=None, tiny_run=True,
        )  # fmt: skip

    def hyper(self) -> Hyper:
        """The recipe (``RECIPES[recipe]``) with every flag that was given on top."""
        names = [f.name for f in dataclasses.fields(Hyper) if hasattr(self, f.name)]
        given = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        return dataclasses.replace(RECIPES[self.recipe], **given)

    def vit(self) -> ViTConfig:
        """The recipe's model (``--model tiny``: the tiny ViT) with the model flags given on top."""
        h, names = self.hyper(), ("dim", "depth", "heads", "mlp_dim", "attn_dropout")
        tiny = dataclasses.replace(ViTConfig.tiny(), dtype=h.dtype)
        over = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        return dataclasses.replace(h.vit() if self.model == "seed" else tiny, **over)

    def recorded(self, train: ImageDataset) -> dict:
        """What a checkpoint must match to be resumed: model, recipe and hyper-parameters, data
        source, size and class names (label i's name), seed (flat, so ``--resume-override
        lr,batch_size`` names fields)."""
        data = dict(data=self.data, data_source=train.source, n_train=len(train))
        data.update(classes=list(train.class_names))
        data.update(n_val=self.n_val, train_limit=self.train_limit, seed=self.seed)
        if self.data == "synthetic":
            data["synthetic_size"] = self.synthetic_size
        vit = {f"vit_{k}": v for k, v in self.vit().as_record().items()}
        return resolved_config({"recipe": self.recipe, "model": self.model,
                                **dataclasses.asdict(self.hyper()), **vit, **data})  # fmt: skip


def load_data(cfg: Config) -> tuple[ImageDataset, ImageDataset, str]:
    """``(train, eval set, eval name)``: CIFAR-10 scored on its test split (as the seed), image
    folders and the synthetic set on ``--n-val`` held-out training images."""
    return load_classification_data(
        cfg.data, data_dir=cfg.data_dir, n_val=cfg.n_val, seed=cfg.seed, download=cfg.download,
        synthetic_size=cfg.synthetic_size, train_limit=cfg.train_limit, cache_dir=cfg.cache_dir,
        progress=cfg.progress,
    )  # fmt: skip


def _check_fits(ds: ImageDataset, vit: ViTConfig) -> None:
    check_fits(ds, image_shape=(vit.image_size,) * 2 + (vit.channels,), num_classes=vit.num_classes)


def main(cfg: Config) -> dict:
    """Train (or with ``eval_only`` just evaluate); return the final metrics."""
    multi = initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)  # before any JAX
    if cfg.eval_only:  # every image of --data-dir, classes matched to the model's by name
        ev = evaluate_checkpoint(cfg.checkpoint, cfg.data_dir, batch_size=cfg.eval_batch_size,
                                 cache_dir=cfg.cache_dir, progress=cfg.progress)  # fmt: skip
        main_print(f"{ev['scored']}: accuracy {100 * ev['accuracy']:.2f}% on {ev['n']} images "
                   f"of {ev['data']}")  # fmt: skip
        return ev
    h, vit = cfg.hyper(), cfg.vit()
    if multi and cfg.devices is not None:
        raise ConfigError("--devices: a multi-process run uses every device of every process")
    mesh = make_mesh(cfg.devices)  # one "data" axis over every process; jit splits each batch
    if h.batch_size % mesh.size:
        raise ConfigError(
            f"--batch-size {h.batch_size} does not split over {mesh.size} devices: use a "
            f"multiple of {mesh.size}, or --devices that divides {h.batch_size}"
        )
    train, evals, eval_name = load_data(cfg)  # before the run directory: a bad one writes nothing
    _check_fits(train, vit)
    _check_fits(evals, vit)
    rerun_tiny = cfg.overwrite is None and not cfg.resume  # the tiny re-run: a tiny run only
    run = EpochRun(cfg.out_dir, experiment="vit_cifar10", tiny=cfg.tiny_run, resume=cfg.resume,
                   overwrite=bool(cfg.overwrite), rerun_tiny=rerun_tiny, keep=cfg.keep,
                   resume_or_start=cfg.resume_or_start, resume_override=cfg.resume_override)  # fmt: skip
    try:
        return _train(cfg, h, vit, mesh, run, (train, evals, eval_name))
    except BaseException:
        run.abort()
        raise


def _train(cfg: Config, h: Hyper, vit: ViTConfig, mesh, run: EpochRun, sets) -> dict:
    train, evals, eval_name = sets
    keys = named_keys(cfg.seed, "init", "step", "data")
    graphdef, params, _ = init_params(ViT, vit, keys["init"])
    spe = steps_per_epoch(len(train), h.batch_size)
    optimizer = make_optimizer(h, spe)
    state = init_train_state(params, optimizer)
    main_print(f"ViT ({vit.dtype}) | recipe {cfg.recipe}: {h}\n"
               f"train: {len(train)} images, {eval_name}: {len(evals)} | data: {train.source} | "
               f"{jax.process_count()} processes x {jax.local_device_count()} devices")  # fmt: skip
    if cfg.doctor:  # which leaves get a gradient, and what the optimizer does with each
        first = {"images": jnp.asarray(train.images[: h.batch_size]),
                 "labels": jnp.asarray(train.labels[: h.batch_size])}  # fmt: skip
        loss_fn = classifier_loss(
            graphdef, label_smoothing=h.label_smoothing, use_augment=h.augment
        )
        diagnose(loss_fn, params, first, keys["step"], optimizer)
    like = {"state": state, "keys": keys}
    if mesh.size > 1:  # global arrays on every device of every process, BEFORE the restore
        like = {"state": place_state(state, mesh), "keys": replicate(keys, mesh)}
    tree, history, start = run.start(like, cfg.recorded(train))  # every process restores
    state, keys = tree["state"], tree["keys"]
    data = (train.images, train.labels)  # numpy: each process puts the whole dataset
    eval_data = (evals.images, evals.labels)
    if mesh.size > 1:  # on all its devices; batches are split in the step
        data, eval_data = jax.device_put((data, eval_data), replicated(mesh))
    else:
        data, eval_data = jax.tree.map(jnp.asarray, (data, eval_data))
    # a constant schedule does not depend on the number of epochs: one program for any count
    h_prog = dataclasses.replace(h, epochs=0) if h.schedule == "constant" else h
    run_chunk = run_chunk_for(graphdef, h_prog, spe, mesh if mesh.size > 1 else None)
    plan = Plan(name=f"ViT {vit.describe()}, {cfg.recipe} recipe", params=count_params(params),
                steps_per_epoch=spe, epochs=max(h.epochs - start, 1), smaller=_smaller(cfg, vit))  # fmt: skip
    plan.announce()
    bar = Progress(h.epochs * spe, desc="vit", show=("loss", "accuracy"), enabled=cfg.progress,
                   initial=start * spe)  # fmt: skip
    t_start = time.perf_counter()
    plan.start()

    def on_chunk(done: int, metrics: dict) -> None:  # done: steps of this epoch
        plan.chunk_done((epoch - start) * spe + done)
        bar(done, metrics)

    for epoch in range(start, h.epochs):
        t0 = time.perf_counter()
        bar.set_epoch(epoch, h.epochs, steps_before=epoch * spe)
        state, steps = train_epoch(
            run_chunk, state, data, epoch=epoch, batch_size=h.batch_size,
            max_chunk=cfg.steps_per_dispatch, data_key=keys["data"], step_key=keys["step"],
            on_chunk=on_chunk,
        )  # fmt: skip
        t_train = time.perf_counter() - t0
        guard, step = {}, (epoch + 1) * spe
        if h.nonfinite_guard:  # raises NonFiniteError (params still finite) after many skips
            guard = check_nonfinite(state.opt_state, max_in_a_row=cfg.max_nonfinite, step=step)
        ev = evaluate(graphdef, cfg.eval_batch_size, state.params, *eval_data)
        record = {
            "epoch": epoch + 1, "train_loss": float(steps["loss"].mean()),
            "train_accuracy": float(steps["accuracy"].mean()), f"{eval_name}_loss": ev["loss"],
            f"{eval_name}_accuracy": ev["accuracy"], "train_seconds": t_train,
            "epoch_seconds": time.perf_counter() - t0,
            "images_per_second": len(steps["loss"]) * h.batch_size / t_train,
            "step_losses": steps["loss"], "data": train.source, **guard,
        }  # fmt: skip
        history.append({k: v for k, v in record.items() if k != "step_losses"})
        run.log(**record)
        (bar.write if bar.bar is not None else main_print)(
            f"Epoch [{epoch + 1}/{h.epochs}], loss {record['train_loss']:.4f}, "
            f"{eval_name.capitalize()} Accuracy: {100 * ev['accuracy']:.2f}% "
            f"({record['epoch_seconds']:.1f} s) [{train.source}]"
        )
        run.save(epoch + 1, {"state": state, "keys": keys}, history)
        plan.epoch_done(epoch + 1 - start)
    bar.close()
    out = Path(cfg.out_dir)
    model = {"vit": vit.as_record(), "class_names": list(train.class_names)}
    save_params(out / "vit_params.npz", state.params, meta=model)  # needs nothing beside it
    atomic_write_json(out / "vit_config.json", {**model["vit"], "class_names": list(train.class_names)})  # fmt: skip
    if history:
        title = run_title(f"ViT {cfg.model}, {cfg.recipe} recipe", source=train.source)
        curve = lambda k: ([r["epoch"] for r in history], [r[k] for r in history])  # noqa: E731
        plot_run_curves(out / "curves.png", title=title, chance=1 / vit.num_classes,
                        loss={"train": curve("train_loss"), eval_name: curve(f"{eval_name}_loss")},
                        accuracy={"train": curve("train_accuracy"),
                                  eval_name: curve(f"{eval_name}_accuracy")})  # fmt: skip
    summary = {
        **(history[-1] if history else {}), "data": train.source, "eval_split": eval_name,
        "wall_seconds": time.perf_counter() - t_start, "flags": to_dict(cfg),
        "hyper": dataclasses.asdict(h), "params": count_params(state.params),
        "device": jax.devices()[0].device_kind,
    }  # fmt: skip
    return run.finish(summary)


def _smaller(cfg: Config, vit: ViTConfig) -> tuple[str, float] | None:
    """A ~7-minute CPU variant of a seed-sized run, and its cost relative to this run."""
    if vit.dim <= 96:
        return None
    per_image = lambda d, depth: depth * d * d  # noqa: E731 - FLOPs per image scale ~ depth*dim^2
    frac = per_image(96, 3) / per_image(vit.dim, vit.depth)
    if cfg.train_limit is None or cfg.train_limit > 10000:
        return "--dim 96 --depth 3 --train-limit 10000", frac * 10000 / 45000
    return "--dim 96 --depth 3", frac


def tour() -> list[Row]:
    """The tiny config on synthetic data (the tour needs no download)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(Config.tiny(), out_dir=tmp)
        res = main(cfg)
    acc = res["val_accuracy"]
    return [
        Row(
            "ViT train + eval (tiny, SYNTHETIC data, NOT CIFAR-10)",
            "seed: 10 epochs real CIFAR-10 → 25.4% test acc (H100)",
            f"{cfg.epochs} epochs synthetic → {100 * acc:.1f}% val acc (chance 10%)",
            acc > 0.3,
        )
    ]


if __name__ == "__main__":
    run_main(main, Config)  # a refusal: one line "error: ...", exit 2 (--traceback for the trace)
