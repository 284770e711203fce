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
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxgrad.data.mix import mix_images, mix_targets
from jaxgrad.data.pipeline import augment, normalize
from jaxgrad.losses.classification import cross_entropy, labels_valid
from jaxgrad.models.vit import ViT, ViTConfig
from jaxgrad.training.checkpoint import Checkpointer, load_params
from jaxgrad.training.guard import skip_nonfinite
from jaxgrad.training.loop import abstract_params, make_evaluate, make_run_chunk
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state

__all__ = [
    "Hyper",
    "classifier_loss",
    "classifier_metric",
    "evaluate",
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


def load_trained(path: str | os.PathLike, default: ViTConfig) -> tuple[ViTConfig, Any, Any]:
    """``(vit config, graphdef, params)`` of a trained ViT: a ``ckpt/`` directory (its latest
    readable checkpoint; the model config comes from the recorded run config) or a
    ``vit_params.npz`` (config from the ``vit_config.json`` beside it, else ``default``)."""
    path = Path(path)
    if path.is_dir():
        ckpt = Checkpointer(path)
        c = ckpt.read_meta().get("config")
        if c is None:
            raise ValueError(f"{path}: written by an older jaxgrad (no recorded config); "
                             "evaluate its vit_params.npz instead")  # fmt: skip
        vit = ViTConfig(**{f.name: c[f"vit_{f.name}"] for f in dataclasses.fields(ViTConfig)})
        hyper = Hyper(**{f.name: c[f.name] for f in dataclasses.fields(Hyper)})
        graphdef, abstract, _ = abstract_params(ViT, vit)
        opt = make_optimizer(hyper, 1)
        state = jax.eval_shape(lambda p: init_train_state(p, opt), abstract)
        like = {"state": state, "keys": named_keys(0, "init", "step", "data")}
        return vit, graphdef, ckpt.restore_latest(like)[0]["state"].params
    side = path.with_name("vit_config.json")
    vit = ViTConfig(**json.loads(side.read_text())) if side.exists() else default
    graphdef, abstract, _ = abstract_params(ViT, vit)
    return vit, graphdef, load_params(path, abstract)
