"""The image-classification task (``experiments.vit_cifar10``) in one place: its loss
(:func:`classifier_loss`), metric (:func:`classifier_metric`), hyper-parameters
(:class:`Hyper`), the optimizer they make, the jitted K-step program, the evaluation and
:func:`load_trained`. The experiment resolves a recipe and its flags into a :class:`Hyper`;
tests and benchmarks build the same optimizer and program from one, and the benchmark times
these very functions.

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

from jaxgrad.data.classes import match_classes, warn_unrecorded
from jaxgrad.data.dataset import ImageDataset
from jaxgrad.data.mix import mix_images, mix_targets
from jaxgrad.data.pipeline import augment, normalize
from jaxgrad.data.sources import check_fits
from jaxgrad.errors import CheckpointError
from jaxgrad.losses.classification import cross_entropy, labels_valid
from jaxgrad.models.vit import ViT, ViTConfig
from jaxgrad.training.checkpoint import Checkpointer, load_params
from jaxgrad.training.guard import skip_nonfinite
from jaxgrad.training.loop import abstract_params, make_evaluate, make_run_chunk
from jaxgrad.training.params_meta import read_params_meta
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state

__all__ = [
    "Hyper",
    "Trained",
    "classifier_loss",
    "classifier_metric",
    "evaluate",
    "evaluate_saved",
    "load_trained",
    "make_optimizer",
    "run_chunk_for",
]


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
    """Training hyper-parameters; the defaults are the seed's recipe (a recipe with the command
    line's overrides is resolved by the experiment's ``Config.hyper``)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam" (the seed: torch.optim.Adam, no weight decay) or "adamw"
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    schedule: str = "constant"  # "constant" or "cosine" (warm-up then cosine decay to 0)
    label_smoothing: float = 0.0
    augment: bool = False
    dtype: str = "float32"
    nonfinite_guard: bool = True  # skip updates with a NaN/inf loss/grad/update/new param
    mix: float = 0.0  # probability a batch is mixed by mixup or cutmix (jaxgrad.data.mix)
    arch: tuple = ()  # the recipe's model: ((ViTConfig field, value), ...) over --model seed


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
    return make_run_chunk(loss_fn, make_optimizer(h, steps_per_epoch), mesh=mesh)


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
        vit = ViTConfig(**{f.name: c[f"vit_{f.name}"] for f in dataclasses.fields(ViTConfig)})
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
    """A sidecar that says another model than the file's own config is refused (issue 21: an
    edited ``pool`` or ``heads``/``dim_head`` keeps every shape, so nothing else would notice)."""
    diffs = [f"{k} {embedded.get(k, '<absent>')!r} -> {v!r}" for k, v in sorted(sidecar.items())
             if embedded.get(k, "<absent>") != v]  # fmt: skip
    if diffs:
        raise CheckpointError(
            f"{side} disagrees with the config embedded in {path} ({path.name} -> {side.name}: "
            f"{', '.join(diffs)}); the embedded one is what the params were trained with: "
            f"delete {side} (the params file needs nothing beside it) or restore it"
        )


def evaluate_saved(trained: Trained, ds: ImageDataset, *, model: str, batch_size: int) -> dict:
    """``{"loss", "accuracy", "n"}`` of a :func:`load_trained` model on ``ds``, whose classes
    are matched to the model's label indices by name (:func:`jaxgrad.data.classes.match_classes`;
    a model without recorded names: by sorted order, with a one-line warning)."""
    if trained.class_names is not None:
        ds = match_classes(ds, trained.class_names, model=f"the model {model}")
    else:
        where = trained.sidecar or Path(model).with_name("vit_config.json")
        warn_unrecorded(
            ds, model=f"the model {model}", how=f'add "class_names": [...] (label order) to {where}'
        )
    vit = trained.vit
    check_fits(ds, image_shape=(vit.image_size,) * 2 + (vit.channels,), num_classes=vit.num_classes)
    images, labels = jax.numpy.asarray(ds.images), jax.numpy.asarray(ds.labels)
    return evaluate(trained.graphdef, batch_size, trained.params, images, labels)
