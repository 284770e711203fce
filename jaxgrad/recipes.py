"""The image classifier's training recipe as library pieces: the hyper-parameters, the
optimizer they make, the jitted K-step program and the evaluation (``experiments.vit_cifar10``
resolves a recipe and its flags into a :class:`Hyper`; tests and benchmarks build the same
optimizer and program from one)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import optax

from jaxgrad.checkpoint import Checkpointer, load_params
from jaxgrad.errors import CheckpointError
from jaxgrad.guard import skip_nonfinite
from jaxgrad.loop import abstract_params, make_evaluate, make_run_chunk
from jaxgrad.models.vit import ViT, ViTConfig
from jaxgrad.rng import named_keys
from jaxgrad.tasks import classifier_loss, classifier_metric
from jaxgrad.train import init_train_state

__all__ = ["Hyper", "Trained", "evaluate", "load_trained", "make_optimizer", "run_chunk_for"]


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
    NaN/inf gradient skips its step (``jaxgrad.guard``, counted in the optimizer state).
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
    """A trained ViT as :func:`load_trained` read it; ``scored`` says which file and epoch."""

    vit: ViTConfig
    graphdef: Any
    params: Any
    scored: str  # "ckpt/2 (epoch 2)", "ckpt/1 (epoch 1; newer ckpt/2 unreadable)", the .npz


def load_trained(path: str | os.PathLike, default: ViTConfig) -> Trained:
    """``(vit config, graphdef, params, scored)`` of a trained ViT: a ``ckpt/`` directory (its
    latest readable checkpoint, ``scored`` naming its epoch and any newer one skipped as
    corrupt; the model config comes from the recorded run config) or a ``vit_params.npz``
    (config from the ``vit_config.json`` beside it, else ``default``)."""
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
        return Trained(vit, graphdef, tree["state"].params, scored)
    side = path.with_name("vit_config.json")
    vit = ViTConfig(**json.loads(side.read_text())) if side.exists() else default
    graphdef, abstract, _ = abstract_params(ViT, vit)
    return Trained(vit, graphdef, load_params(path, abstract), str(path))
