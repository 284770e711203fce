"""The pieces of ``experiments.vit_cifar10``: loss, optimizer, on-device epochs, evaluation.

Everything that touches the data runs on the device: the dataset is two device arrays
(uint8 images, int32 labels); an epoch is a permutation drawn from ``fold_in(data_key,
epoch)``; each dispatch gathers ``K`` batches and runs ``K`` train steps in one ``lax.scan``
(``jaxgrad.train.make_multi_step``), with crop/flip and normalization inside the step. The host
only enqueues work; it reads metrics one chunk behind (for the progress bar) so the device
never waits for it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from jaxgrad.data import augment, epoch_indices, eval_indices, normalize, take
from jaxgrad.guard import skip_nonfinite
from jaxgrad.parallel import with_batch_sharding
from jaxgrad.train import TrainState, make_multi_step

__all__ = [
    "Hyper",
    "cached_run_chunk",
    "chunk_plan",
    "make_evaluate",
    "make_loss_fn",
    "make_optimizer",
    "make_run_chunk",
    "train_epoch",
]


@dataclasses.dataclass(frozen=True)
class Hyper:
    """The resolved training hyper-parameters (a recipe with the command line's overrides)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str  # "adam" (the seed: torch.optim.Adam, no weight decay) or "adamw"
    weight_decay: float
    warmup_epochs: float
    schedule: str  # "constant" or "cosine" (warm-up then cosine decay to 0)
    label_smoothing: float
    augment: bool
    dtype: str
    nonfinite_guard: bool = True  # skip updates whose gradients have NaN/inf


def make_loss_fn(graphdef: nnx.GraphDef, *, label_smoothing: float, use_augment: bool):
    """``loss_fn(params, batch, key) -> (loss, {"accuracy"})`` on a uint8 batch.

    ``batch = {"images": uint8 [B, H, W, 3], "labels": int32 [B]}``; the key drives the
    augmentation (when on) and dropout. Cross entropy as ``nn.CrossEntropyLoss(label_smoothing=)``.
    """

    def loss_fn(params, batch, key):
        aug_key, dropout_key = jax.random.split(key)
        images = batch["images"]
        if use_augment:
            images = augment(aug_key, images)
        model = nnx.merge(graphdef, params)
        logits = model(normalize(images), deterministic=False, rngs=dropout_key)
        onehot = jax.nn.one_hot(batch["labels"], logits.shape[-1], dtype=logits.dtype)
        if label_smoothing:
            onehot = optax.smooth_labels(onehot, label_smoothing)
        loss = optax.softmax_cross_entropy(logits, onehot).mean()
        acc = (logits.argmax(-1) == batch["labels"]).mean(dtype=jnp.float32)
        return loss, {"accuracy": acc}

    return loss_fn


def make_optimizer(h: Hyper, steps_per_epoch: int) -> optax.GradientTransformation:
    """The seed's ``torch.optim.Adam(lr=1e-3)``, or AdamW with warm-up + cosine.

    AdamW decays only weight matrices (``kernel`` leaves): biases, LayerNorm parameters and the
    cls/position embeddings are left alone, as in most ViT recipes.
    """
    total = h.epochs * steps_per_epoch
    if h.schedule == "cosine":
        warmup = min(int(h.warmup_epochs * steps_per_epoch), total - 1)
        lr = optax.warmup_cosine_decay_schedule(0.0, h.lr, max(warmup, 1), max(total, 2))
    else:
        lr = h.lr
    if h.optimizer == "adam":
        opt = optax.adam(lr)
        return skip_nonfinite(opt) if h.nonfinite_guard else opt
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )
    opt = optax.adamw(lr, weight_decay=h.weight_decay, mask=decay_mask)
    # jaxgrad.guard: a NaN/inf gradient skips its step (counted in the optimizer state)
    return skip_nonfinite(opt) if h.nonfinite_guard else opt


def chunk_plan(steps: int, max_chunk: int) -> list[int]:
    """How many scanned steps each dispatch of an epoch runs.

    Prefer equal chunks (the largest divisor of ``steps`` up to ``max_chunk``: one compiled
    program; 781 steps of batch 64 → 71 chunks of 11); when that divisor is tiny (``steps``
    prime, say) use full chunks plus one remainder chunk (a second, smaller program).
    """
    cap = min(steps, max_chunk)
    k = max(d for d in range(1, cap + 1) if steps % d == 0)
    if 8 * k >= cap:
        return [k] * (steps // k)
    return [cap] * (steps // cap) + ([steps % cap] if steps % cap else [])


def cached_run_chunk(graphdef: nnx.GraphDef, h: Hyper, steps_per_epoch: int, mesh=None) -> Callable:
    """:func:`make_run_chunk` for a (model, recipe), compiled once per process (a resumed or
    repeated run in the same process, e.g. in tests, reuses the compiled program)."""
    if h.schedule == "constant":  # the number of epochs does not change the program
        h = dataclasses.replace(h, epochs=0)
    return _run_chunk_for(graphdef, h, steps_per_epoch, mesh)


@functools.lru_cache(maxsize=8)
def _run_chunk_for(graphdef: nnx.GraphDef, h: Hyper, steps_per_epoch: int, mesh) -> Callable:
    loss_fn = make_loss_fn(graphdef, label_smoothing=h.label_smoothing, use_augment=h.augment)
    if mesh is not None:  # data parallel: each step's batch is split over the devices
        loss_fn = with_batch_sharding(loss_fn, mesh)
    return make_run_chunk(loss_fn, make_optimizer(h, steps_per_epoch))


def make_run_chunk(loss_fn, optimizer) -> Callable:
    """``run(state, images, labels, idx [K, B], key) -> (state, metrics [K])``, one dispatch.

    Gathering the K batches from the device-resident dataset happens inside the same program
    as the K scanned train steps; the incoming state is donated (updated in place).
    """
    multi = make_multi_step(loss_fn, optimizer, jit=False)

    def run(state, images, labels, idx, key):
        return multi(state, take(images, labels, idx), key)

    return jax.jit(run, donate_argnums=(0,))


def train_epoch(
    run_chunk: Callable,
    state: TrainState,
    data: tuple[jax.Array, jax.Array],
    *,
    epoch: int,
    batch_size: int,
    max_chunk: int,
    data_key: jax.Array,
    dropout_key: jax.Array,
    progress: bool = True,
    desc: str = "",
) -> tuple[TrainState, dict[str, np.ndarray]]:
    """One pass over ``data`` in a fresh order; returns the new state and per-step metrics."""
    images, labels = data
    idx = epoch_indices(jax.random.fold_in(data_key, epoch), labels.shape[0], batch_size)
    steps = idx.shape[0]
    chunks, start = [], 0
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False)
    for c, k in enumerate(chunk_plan(steps, max_chunk)):
        state, metrics = run_chunk(state, images, labels, idx[start : start + k], dropout_key)
        start += k
        chunks.append(metrics)
        if progress and c > 0:  # the previous chunk is done or nearly: reading it barely waits
            prev = chunks[-2]
            bar.set_postfix(
                loss=f"{float(prev['loss'].mean()):.3f}",
                acc=f"{float(prev['accuracy'].mean()):.3f}",
            )
        bar.update(k)
    bar.close()
    stacked = jax.device_get({k_: jnp.concatenate([m[k_] for m in chunks]) for k_ in chunks[0]})
    return state, stacked


@functools.lru_cache(maxsize=8)
def make_evaluate(graphdef: nnx.GraphDef, *, batch_size: int) -> Callable:
    """``evaluate(params, images, labels) -> {"loss", "accuracy", "n"}`` over every image once.

    One jitted ``lax.scan`` over fixed-size batches; the padding of the last batch is masked.
    Deterministic model (``model.eval()`` + ``torch.no_grad()``: nothing else is needed in JAX).
    """

    @jax.jit
    def _sums(params, images, labels, idx, mask):
        model = nnx.merge(graphdef, params)

        def body(carry, xs):
            i, m = xs
            logits = model(normalize(images[i]))
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[i])
            correct = logits.argmax(-1) == labels[i]
            w = m.astype(jnp.float32)
            return (carry[0] + (ce * w).sum(), carry[1] + (correct * w).sum()), None

        zero = jnp.zeros((), jnp.float32)
        (loss, correct), _ = jax.lax.scan(body, (zero, zero), (idx, mask))
        return loss, correct

    def evaluate(params: Any, images: jax.Array, labels: jax.Array) -> dict[str, float]:
        n = int(labels.shape[0])
        idx, mask = eval_indices(n, min(batch_size, n))
        loss, correct = _sums(params, images, labels, jnp.asarray(idx), jnp.asarray(mask))
        return {"loss": float(loss) / n, "accuracy": float(correct) / n, "n": n}

    return evaluate


def steps_per_epoch(n: int, batch_size: int) -> int:
    if n < batch_size:
        raise ValueError(
            f"--batch-size {batch_size} is larger than the training set ({n} images); lower it"
        )
    return n // batch_size
