"""The image-classification task (``experiments.vit_cifar10``) in one place: its loss
(:func:`classifier_loss`), metric (:func:`classifier_metric`), hyper-parameters
(:class:`Hyper`, its recipes :data:`RECIPES`), the optimizer they make, the jitted K-step
program, the evaluation, :func:`load_trained` and ``--eval-only`` (:func:`evaluate_checkpoint`).
The experiment resolves a recipe and its flags into a :class:`Hyper`; tests and benchmarks build
the same optimizer and program from one, and the benchmark times these very functions.

The loss is ``loss_fn(params, batch, step_key) -> (loss, aux)`` on a uint8 batch
``{"images": [B, H, W, 3], "labels": int32 [B]}``; ``step_key`` is the per-step key
(``fold_in(key, step)`` inside the train step) and drives augmentation and dropout alike.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxgrad.data.cifar10 import is_cifar10_dir, load_cifar10
from jaxgrad.data.classes import match_classes, warn_unrecorded
from jaxgrad.data.imagefolder import load_image_folder
from jaxgrad.data.mix import mix_images, mix_targets
from jaxgrad.data.pipeline import augment, normalize
from jaxgrad.data.sources import check_fits
from jaxgrad.errors import CheckpointError
from jaxgrad.losses.classification import cross_entropy, labels_valid
from jaxgrad.models.vit import ViT, ViTConfig
from jaxgrad.training.checkpoint import Checkpointer
from jaxgrad.training.guard import skip_nonfinite
from jaxgrad.training.loop import abstract_params, make_evaluate, make_run_chunk
from jaxgrad.training.params_file import load_params, read_params_meta
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state
from jaxgrad.training.xla import WIDE_VECTORS

__all__ = ["RECIPES", "Hyper", "Trained", "classifier_loss", "classifier_metric", "evaluate",
           "evaluate_checkpoint", "load_trained", "make_optimizer", "recipe_values",
           "run_chunk_for"]  # fmt: skip


def classifier_loss(
    graphdef: nnx.GraphDef, *, label_smoothing: float, use_augment: bool, mix_prob: float = 0.0
):
    """``loss_fn(params, batch, step_key) -> (loss, {"accuracy"})``: the model in training mode
    (dropout on), ``nn.CrossEntropyLoss(label_smoothing=)``; crop + flip when ``use_augment``;
    with probability ``mix_prob`` a batch is mixed by mixup or cutmix (``jaxgrad.data.mix``;
    accuracy is still counted against the unmixed labels).
    """

    def loss_fn(params, batch, step_key):
        aug_key, dropout_key = jax.random.split(step_key)
        images = batch["images"]
        if use_augment:
            images = augment(aug_key, images)
        model = nnx.merge(graphdef, params)
        images = normalize(images)
        if mix_prob:
            images, lam = mix_images(jax.random.fold_in(aug_key, 1), images, prob=mix_prob)
        logits = model(images, deterministic=False, rngs=dropout_key)
        labels = batch["labels"]
        if mix_prob:  # soft targets: the label check is applied to the loss by hand
            onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
            if label_smoothing:
                onehot = optax.smooth_labels(onehot, label_smoothing)
            loss = optax.softmax_cross_entropy(logits, mix_targets(onehot, lam)).mean()
            loss = jnp.where(jnp.all(labels_valid(labels, logits.shape[-1])), loss, jnp.nan)
        else:
            # NaN for a label outside [0, num_classes): the guard skips the step and names labels
            loss = cross_entropy(logits, labels, label_smoothing=label_smoothing)
        acc = (logits.argmax(-1) == batch["labels"]).mean(dtype=jnp.float32)
        return loss, {"accuracy": acc}

    return loss_fn


def classifier_metric(graphdef: nnx.GraphDef):
    """Per-example ``{"loss", "correct"}`` of the deterministic model (``model.eval()`` +
    ``torch.no_grad()``: nothing else is needed in JAX), for ``make_evaluate(reduce="sum")``."""

    def metric(params, images, labels):
        logits = nnx.merge(graphdef, params)(normalize(images))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        ce = jnp.where(labels_valid(labels, logits.shape[-1]), ce, jnp.nan)  # never a silent 0
        return {"loss": ce, "correct": logits.argmax(-1) == labels}

    return metric


@dataclasses.dataclass(frozen=True)
class Hyper:
    """Training hyper-parameters; the recipes (:data:`RECIPES`) spell out every field, the
    experiment's ``Config.hyper`` puts the command line's flags on top of one."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str  # "adam" (the seed: torch.optim.Adam, no weight decay) or "adamw"
    weight_decay: float  # AdamW's, of weight matrices only
    warmup_epochs: float
    schedule: str  # "constant" or "cosine" (warm-up then cosine decay to 0)
    label_smoothing: float
    augment: bool  # random crop (reflect pad 4) + flip
    dtype: str  # compute dtype: "float32" or "bfloat16"
    nonfinite_guard: bool  # skip updates with a NaN/inf loss/grad/update/new param
    mix: float  # probability a batch is mixed by mixup or cutmix (jaxgrad.data.mix)
    arch: tuple  # the recipe's model: ((ViTConfig field, value), ...) over ViTConfig.seed()

    def vit(self) -> ViTConfig:
        """The recipe's model: the seed's ViT with ``arch`` on top, computing in ``dtype``."""
        return dataclasses.replace(ViTConfig.seed(), dtype=self.dtype, **dict(self.arch))


#: the ``--recipe`` choices, each a full preset: every value of a recipe is here, and only here
RECIPES = {
    # the seed's: Adam 1e-3 without warm-up (too hot for this transformer: the loss stalls near
    # 1.9 and test accuracy ~25%, measured with PyTorch on an H100), no augmentation, fp32,
    # batch 64, 10 epochs; the seed's ViT (12.7M params)
    "seed": Hyper(epochs=10, batch_size=64, lr=1e-3, optimizer="adam", weight_decay=0.0,
                  warmup_epochs=0.0, schedule="constant", label_smoothing=0.0, augment=False,
                  dtype="float32", nonfinite_guard=True, mix=0.0, arch=()),
    # AdamW + 5 warm-up epochs + cosine, label smoothing, crop+flip, bf16 compute, batch 512,
    # 100 epochs; the seed's ViT
    "strong": Hyper(epochs=100, batch_size=512, lr=1e-3, optimizer="adamw", weight_decay=0.05,
                    warmup_epochs=5.0, schedule="cosine", label_smoothing=0.1, augment=True,
                    dtype="bfloat16", nonfinite_guard=True, mix=0.0, arch=()),
    # the best a 2-core CPU does in 10 minutes (docs/results/vit.md): patch 8 (17 tokens),
    # dim 128, depth 4, mean pooling, no dropout; AdamW 2e-3, half an epoch of warm-up, cosine
    # over 21 epochs (69.26% in 9 min 25 s), crop+flip
    "cpu": Hyper(epochs=21, batch_size=128, lr=2e-3, optimizer="adamw", weight_decay=0.05,
                 warmup_epochs=0.5, schedule="cosine", label_smoothing=0.1, augment=True,
                 dtype="float32", nonfinite_guard=True, mix=0.0,
                 arch=(("patch_size", 8), ("dim", 128), ("depth", 4), ("heads", 4),
                       ("dim_head", 32), ("mlp_dim", 256), ("dropout", 0.0),
                       ("emb_dropout", 0.0), ("pool", "mean"))),
}  # fmt: skip


def recipe_values(name: str) -> str:
    """Each recipe's value of a :class:`Hyper` or recipe-model field, for ``--help``:
    ``recipe_values("epochs") == "seed 10, strong 100, cpu 10"``."""
    values = {r: getattr(h if hasattr(h, name) else h.vit(), name) for r, h in RECIPES.items()}
    return ", ".join(f"{r} {v}" for r, v in values.items())


def make_optimizer(h: Hyper, steps_per_epoch: int) -> optax.GradientTransformation:
    """The seed's ``torch.optim.Adam(lr=1e-3)``, or AdamW with warm-up + cosine.

    AdamW decays only weight matrices (``kernel`` leaves): biases, LayerNorm parameters and the
    cls/position embeddings are left alone, as in most ViT recipes. With ``nonfinite_guard`` a
    NaN/inf gradient skips its step (``jaxgrad.training.guard``, counted in the optimizer state).
    """
    total = h.epochs * steps_per_epoch
    if h.schedule == "cosine":
        warmup = min(int(h.warmup_epochs * steps_per_epoch), total - 1)
        lr = optax.warmup_cosine_decay_schedule(0.0, h.lr, max(warmup, 1), max(total, 2))
    else:
        lr = h.lr
    if h.optimizer == "adam":
        opt = optax.adam(lr)
    else:
        decay_mask = lambda params: jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[-1], "key", None) == "kernel", params
        )
        opt = optax.adamw(lr, weight_decay=h.weight_decay, mask=decay_mask)
    return skip_nonfinite(opt) if h.nonfinite_guard else opt


@functools.lru_cache(maxsize=8)
def run_chunk_for(graphdef, h: Hyper, steps_per_epoch: int, mesh=None):
    """The jitted K-step dispatch of a (model, recipe), compiled once per process (a resumed
    or repeated run in the same process, e.g. in tests, reuses the compiled program)."""
    loss_fn = classifier_loss(graphdef, label_smoothing=h.label_smoothing, use_augment=h.augment,
                              mix_prob=h.mix)  # fmt: skip
    return make_run_chunk(loss_fn, make_optimizer(h, steps_per_epoch), mesh=mesh,
                          compiler_options=WIDE_VECTORS)  # fmt: skip


@functools.lru_cache(maxsize=8)
def _sums(graphdef, batch_size: int):
    return make_evaluate(classifier_metric(graphdef), batch_size=batch_size)  # compiled once


def evaluate(graphdef, batch_size: int, params, images, labels) -> dict:
    """``{"loss", "accuracy", "n"}`` of the deterministic model over every image once."""
    n, s = int(labels.shape[0]), _sums(graphdef, batch_size)(params, images, labels)
    return {"loss": float(s["loss"]) / n, "accuracy": float(s["correct"]) / n, "n": n}


class Trained(NamedTuple):
    """A saved ViT as :func:`load_trained` reads it; ``scored`` says which file and epoch."""

    vit: ViTConfig
    graphdef: Any
    params: Any
    class_names: tuple[str, ...] | None  # label i's class; None: not recorded (older file)
    sidecar: Path | None  # the vit_config.json the config came from, if it came from one
    scored: str  # "ckpt/2 (epoch 2)", "ckpt/1 (epoch 1; newer ckpt/2 unreadable)", the .npz


def load_trained(path: str | os.PathLike) -> Trained:
    """A trained ViT from a ``ckpt/`` directory (its latest readable checkpoint; config and
    class names from the recorded run config) or a ``vit_params.npz`` (config and class names
    embedded in the file, hash-checked; a ``vit_config.json`` beside it must agree with them).
    A params file without an embedded config (an older jaxgrad's, a converted PyTorch model)
    needs the ``vit_config.json`` beside it. Raises CheckpointError naming the file."""
    path = Path(path)
    if path.is_dir():
        ckpt = Checkpointer(path)
        c = ckpt.read_meta().get("config")
        if c is None:
            raise CheckpointError(f"{path}: written by an older jaxgrad (no recorded config); "
                                  "evaluate its vit_params.npz instead")  # fmt: skip
        missing = [f"vit_{k}" for k in ViTConfig().as_record() if f"vit_{k}" not in c]
        if missing:
            raise CheckpointError(f"{path}: its recorded config lacks {', '.join(missing)} (an "
                                  "older or edited checkpoint); evaluate its vit_params.npz "
                                  "with a vit_config.json beside it instead")  # fmt: skip
        vit = ViTConfig(**{k: c[f"vit_{k}"] for k in ViTConfig().as_record()})
        hyper = Hyper(**{f.name: c[f.name] for f in dataclasses.fields(Hyper)})
        graphdef, abstract, _ = abstract_params(ViT, vit)
        opt = make_optimizer(hyper, 1)
        state = jax.eval_shape(lambda p: init_train_state(p, opt), abstract)
        like = {"state": state, "keys": named_keys(0, "init", "step", "data")}
        tree, meta, step = ckpt.restore_latest(like)
        skipped = [s for s in ckpt.all_steps() if s > step]
        scored = f"{path / str(step)} (epoch {meta.get('epoch', step)}" + (
            f"; newer {', '.join(str(path / str(s)) for s in skipped)} unreadable, skipped)"
            if skipped else ")"
        )  # fmt: skip
        names = c.get("classes")
        return Trained(vit, graphdef, tree["state"].params, tuple(names) if names else None,
                       None, scored)  # fmt: skip
    meta = read_params_meta(path)
    side = path.with_name("vit_config.json")
    sidecar = _read_sidecar(side) if side.exists() else None
    if meta is not None and "vit" in meta:
        embedded = {**meta["vit"], "class_names": meta.get("class_names")}
        if sidecar is not None:
            _check_sidecar(side, sidecar, embedded, path)
        fields, used = embedded, None
    elif sidecar is not None:
        fields, used = sidecar, side
    else:
        raise CheckpointError(
            f"{path} carries no model config (an older jaxgrad file or a converted PyTorch "
            f"model: a state_dict has none) and there is no {side.name} beside it; write the "
            f'ViT(...) arguments (pool included) and "class_names" into {side}'
        )
    names = fields.get("class_names")
    try:
        vit = ViTConfig(**{k: v for k, v in fields.items() if k != "class_names"})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{used or path}: not a ViT config ({e}); fix the file") from None
    graphdef, abstract, _ = abstract_params(ViT, vit)
    return Trained(vit, graphdef, load_params(path, abstract),
                   tuple(names) if names else None, used, str(path))  # fmt: skip


def _read_sidecar(side: Path) -> dict:
    try:
        raw = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{side}: not a readable JSON config ({e}); fix or delete it"
        ) from None
    names = raw.get("class_names") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or not (
        names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names))
    ):
        raise CheckpointError(f"{side}: expected a JSON object of ViT(...) fields with an "
                              "optional \"class_names\" list of strings; fix it")  # fmt: skip
    return raw


def _check_sidecar(side: Path, sidecar: dict, embedded: dict, path: Path) -> None:
    """A sidecar that says another model than the file's own config is refused (an
    edited ``pool`` or ``heads``/``dim_head`` keeps every shape, so nothing else would notice)."""
    diffs = [f"{k} {embedded.get(k, '<absent>')!r} -> {v!r}" for k, v in sorted(sidecar.items())
             if embedded.get(k, "<absent>") != v]  # fmt: skip
    if diffs:
        raise CheckpointError(
            f"{side} disagrees with the config embedded in {path} ({path.name} -> {side.name}: "
            f"{', '.join(diffs)}); the embedded one is what the params were trained with: "
            f"delete {side} (the params file needs nothing beside it) or restore it"
        )


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, *,
                        batch_size: int, cache_dir: str | None = None, progress: bool = True,
                        ) -> dict:  # fmt: skip
    """``--eval-only``: ``{"loss", "accuracy", "n", "data", "checkpoint", "scored", "classes"}``
    of a :func:`load_trained` model on every image of ``data_dir`` (a CIFAR-10 directory: its
    test split; an image folder: every image), whose classes are matched to the model's label
    indices by name (:func:`jaxgrad.data.classes.match_classes`; a model without recorded names:
    by sorted order, with a one-line warning)."""
    path, data_dir = Path(checkpoint), Path(data_dir)
    trained = load_trained(path)
    ds = (load_cifar10(data_dir, train=False) if is_cifar10_dir(data_dir)
          else load_image_folder(data_dir, cache_dir=cache_dir, progress=progress))  # fmt: skip
    if trained.class_names is not None:
        ds = match_classes(ds, trained.class_names, model=f"the model {path}")
    else:
        where = trained.sidecar or path.with_name("vit_config.json")
        how = f'add "class_names": [...] (label order) to {where}'
        warn_unrecorded(ds, model=f"the model {path}", how=how)
    vit = trained.vit
    check_fits(ds, image_shape=(vit.image_size,) * 2 + (vit.channels,), num_classes=vit.num_classes)
    images, labels = jax.numpy.asarray(ds.images), jax.numpy.asarray(ds.labels)
    ev = evaluate(trained.graphdef, batch_size, trained.params, images, labels)
    return {**ev, "data": ds.source, "checkpoint": str(path), "scored": trained.scored,
            "classes": list(ds.class_names)}  # fmt: skip
