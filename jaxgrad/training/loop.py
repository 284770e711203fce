"""The one training loop: model init, K steps per dispatch from a device-resident dataset,
epochs (or step ranges spanning epochs) with a progress callback, a scanned evaluation.

The dataset is two device arrays (uint8 images ``[N, H, W, C]``, int32 labels ``[N]``); epoch
``e``'s order is a permutation from ``fold_in(data_key, e)`` (the last partial batch dropped);
each dispatch gathers ``K`` batches and runs ``K`` train steps (``make_multi_step``) in one
program whose incoming state is donated. The host reads each chunk's metrics one chunk behind,
so it never stalls the device and a progress bar fed by ``on_chunk`` advances when steps have
*finished*. Compiler flags belong here and to experiments, never to models.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgrad.data.pipeline import epoch_indices, eval_indices, take
from jaxgrad.training.parallel import with_batch_sharding
from jaxgrad.training.step import TrainState, make_multi_step
from jaxgrad.training.xla import RUN_ONCE

__all__ = [
    "INIT_OPTIONS",
    "abstract_params",
    "chunk_plan",
    "init_params",
    "make_evaluate",
    "make_run_chunk",
    "steps_per_epoch",
    "train_epoch",
    "train_steps",
]

#: the jitted init runs once: skip XLA's expensive backend passes (3-4x faster compile on CPU;
#: the same random bits, floats made of them may differ from an optimised build in the last ulp)
INIT_OPTIONS = {**RUN_ONCE, "xla_llvm_disable_expensive_passes": True}

#: ``on_chunk(steps_done, metrics)``, once a chunk has finished: its per-step metrics (numpy)
OnChunk = Callable[[int, dict[str, np.ndarray]], None]


def abstract_params(model_cls: type, cfg: Any) -> tuple[nnx.GraphDef, Any, Any]:
    """``(graphdef, params, rest)`` of ``model_cls(cfg, rngs=...)`` as shapes (nothing
    allocated): templates to restore checkpoints or load saved params into."""
    return nnx.split(nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)


def init_params(
    model_cls: type, cfg: Any, key: jax.Array, *, compiler_options: dict | None = INIT_OPTIONS
) -> tuple[nnx.GraphDef, Any, Any]:
    """``nnx.split(model_cls(cfg, rngs=nnx.Rngs(params=key)), nnx.Param, ...)`` built in one jit.

    The eager constructor's parameters from one compiled program, cached per ``(model_cls,
    cfg, compiler_options)`` (``cfg`` hashable: a frozen dataclass), instead of a dispatch and a
    compilation per initializer. ``rest``: any non-``Param`` state (empty for most models).
    """
    opts = tuple(sorted((compiler_options or {}).items()))
    graphdef, init = _jitted_init(model_cls, cfg, opts)
    return graphdef, *init(key)


@functools.lru_cache(maxsize=16)
def _jitted_init(model_cls: type, cfg: Any, opts: tuple):
    graphdef = abstract_params(model_cls, cfg)[0]
    make = lambda k: nnx.split(model_cls(cfg, rngs=nnx.Rngs(params=k)), nnx.Param, ...)[1:]
    return graphdef, jax.jit(make, compiler_options=dict(opts) or None)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches in ``n`` examples (the last partial batch is dropped)."""
    if n < batch_size:
        raise ValueError(
            f"--batch-size {batch_size} is larger than the training set ({n} images); lower it"
        )
    return n // batch_size


def chunk_plan(steps: int, max_chunk: int) -> list[int]:
    """How many scanned steps each dispatch of ``steps`` runs.

    Prefer equal chunks (the largest divisor of ``steps`` up to ``max_chunk``: one compiled
    program; 781 steps of batch 64 → 71 chunks of 11); when that divisor is tiny (``steps``
    prime, say) use full chunks plus one remainder chunk (a second, smaller program).
    """
    cap = min(steps, max_chunk)
    k = max(d for d in range(1, cap + 1) if steps % d == 0)
    if 8 * k >= cap:
        return [k] * (steps // k)
    return [cap] * (steps // cap) + ([steps % cap] if steps % cap else [])


def make_run_chunk(
    loss_fn: Callable,
    optimizer: Any,
    *,
    mesh: Any = None,
    compiler_options: dict | None = None,
    **step_options: Any,
) -> Callable:
    """``run(state, images, labels, idx [K, B], step_key) -> (state, metrics [K])``: one
    dispatch gathers the K batches and runs the K scanned steps (``make_multi_step``: step keys
    ``fold_in(step_key, state.step)``; ``step_options`` as there); the state is donated.
    ``mesh`` (``jaxgrad.training.parallel.make_mesh``, > 1 device): each batch is split over its
    ``data`` axis.
    """
    if mesh is not None and mesh.size > 1:
        loss_fn = with_batch_sharding(loss_fn, mesh)
    multi = make_multi_step(loss_fn, optimizer, jit=False, **step_options)

    def run(state, images, labels, idx, step_key):
        return multi(state, take(images, labels, idx), step_key)

    return jax.jit(run, donate_argnums=(0,), compiler_options=compiler_options)


def train_steps(
    run_chunk: Callable,
    state: TrainState,
    data: tuple[jax.Array, jax.Array],
    *,
    start: int,
    stop: int,
    batch_size: int,
    max_chunk: int,
    data_key: jax.Array,
    step_key: jax.Array,
    on_chunk: OnChunk | None = None,
) -> tuple[TrainState, dict[str, np.ndarray]]:
    """Run global steps ``start .. stop-1`` -> ``(state, per-step metrics [stop - start])``.

    Step ``s`` trains on batch ``s % spe`` of epoch ``s // spe`` (``spe`` full batches per
    epoch), so any split of a run into ranges (at evaluation points, say) trains on the same
    batches. ``on_chunk(steps_done, metrics)`` runs one chunk behind: chunk ``c`` is read only
    after chunk ``c + 1`` was dispatched, so the host waits only for work that is finishing.
    """
    images, labels = data
    n = labels.shape[0]
    spe = steps_per_epoch(n, batch_size)
    if not 0 <= start < stop:
        raise ValueError(f"train_steps: need 0 <= start < stop, got start={start}, stop={stop}")
    first, last = start // spe, (stop - 1) // spe
    orders = [epoch_indices(jax.random.fold_in(data_key, e), n, batch_size) for e in range(first, last + 1)]  # fmt: skip
    idx = orders[0] if len(orders) == 1 else jnp.concatenate(orders)
    idx = idx[start - first * spe : stop - first * spe]
    done, pending, chunks = 0, None, []

    def report(item):
        steps_done, metrics = item
        host = jax.device_get(metrics)  # waits only for this (earlier) chunk
        chunks.append(host)
        if on_chunk is not None:
            on_chunk(steps_done, host)

    for k in chunk_plan(stop - start, max_chunk):
        state, metrics = run_chunk(state, images, labels, idx[done : done + k], step_key)
        done += k
        if pending is not None:
            report(pending)
        pending = (done, metrics)
    report(pending)
    return state, {name: np.concatenate([m[name] for m in chunks]) for name in chunks[0]}


def train_epoch(
    run_chunk: Callable,
    state: TrainState,
    data: tuple[jax.Array, jax.Array],
    *,
    epoch: int,
    batch_size: int,
    **kwargs: Any,
) -> tuple[TrainState, dict[str, np.ndarray]]:
    """One pass over ``data`` in the order of ``fold_in(data_key, epoch)``: :func:`train_steps`
    (same keyword arguments ``max_chunk``, ``data_key``, ``step_key``, ``on_chunk``) over the
    epoch's steps; returns the new state and the epoch's per-step metrics."""
    spe = steps_per_epoch(data[1].shape[0], batch_size)
    return train_steps(run_chunk, state, data, start=epoch * spe, stop=(epoch + 1) * spe,
                       batch_size=batch_size, **kwargs)  # fmt: skip


def make_evaluate(
    batch_metric: Callable,
    *,
    batch_size: int,
    reduce: str = "sum",
    compiler_options: dict | None = None,
) -> Callable:
    """``evaluate(params, images, labels)``: ``batch_metric`` over every example once.

    ``batch_metric(params, images [B, ...], labels [B]) -> dict`` of per-example values. One
    jitted ``lax.scan`` over fixed-size batches, the last one's padding masked.
    ``reduce="sum"``: each value summed over the examples (cross-entropy, correct counts);
    ``"stack"``: the values ``[n, ...]`` in data order (image embeddings).
    """
    if reduce not in ("sum", "stack"):
        raise ValueError(f"make_evaluate: reduce must be 'sum' or 'stack', got {reduce!r}")

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def _scan(params, images, labels, idx, mask):
        def body(carry, xs):
            i, m = xs
            out = batch_metric(params, images[i], labels[i])
            if reduce == "stack":
                return carry, out
            w = m.astype(jnp.float32)
            sums = jax.tree.map(lambda v: (v.astype(jnp.float32) * w).sum(), out)
            return jax.tree.map(jnp.add, carry, sums), None

        shapes = jax.eval_shape(batch_metric, params, images[idx[0]], labels[idx[0]])
        zero = jax.tree.map(lambda _: jnp.zeros((), jnp.float32), shapes)
        carry, stacked = jax.lax.scan(body, zero, (idx, mask))
        if reduce == "sum":
            return carry
        return jax.tree.map(lambda v: v.reshape(-1, *v.shape[2:]), stacked)

    def evaluate(params: Any, images: jax.Array, labels: jax.Array) -> Any:
        n = int(labels.shape[0])
        idx, mask = eval_indices(n, min(batch_size, n))
        out = _scan(params, images, labels, jnp.asarray(idx), jnp.asarray(mask))
        return out if reduce == "sum" else jax.tree.map(lambda v: v[:n], out)

    return evaluate
