"""Data-parallel training on ``jax.sharding``: the same train step, a batch split over devices.

PyTorch needs ``DistributedDataParallel`` (one process per GPU, a ``DistributedSampler``, gradient
all-reduce hooks). JAX compiles one SPMD program for all devices: describe *where* the data
lives and ``jax.jit`` inserts the gradient all-reduce itself. No ``pmap``, no per-device code::

    mesh = make_mesh(devices=None)                           # all devices on one "data" axis
    step = data_parallel(make_train_step(loss_fn, opt, jit=False), mesh)
    state = place_state(init_train_state(params, opt), mesh)  # replicated (or shard_params=True)
    state, metrics = step(state, shard_batch(batch, mesh), key)

The loss is the mean over the *global* batch, exactly as on one device, so N-way training
matches 1-device training for the same global batch up to float32 reduction order. Random draws
inside the loss (dropout) are identical too: ``jax_threefry_partitionable`` (default on) makes
random bits independent of how an array is sharded. On one device every function here is a
no-op placement and the step is the plain jitted step.

Multi-host (several machines, e.g. a TPU pod or GPUs on several nodes): call
``jax.distributed.initialize()`` first thing in every process (arguments are auto-detected on
Cloud TPU and SLURM; otherwise pass ``coordinator_address``, ``num_processes``, ``process_id``).
``jax.devices()`` then lists every device of every host, :func:`make_mesh` spans them all, and
each process passes only *its own* slice of the global batch to :func:`shard_batch` (e.g. its
``1 / jax.process_count()`` share of the data order), which assembles the global array with
``jax.make_array_from_process_local_data``. Everything else is unchanged.
:mod:`jaxgrad.training.distributed` does the joining (explicit, launcher or cluster environment) and
gives each process its rows (``process_local``); ``python -m experiments.launch`` tries it on
one machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA",
    "batch_sharding",
    "data_parallel",
    "make_mesh",
    "place_state",
    "replicated",
    "shard_batch",
    "state_shardings",
    "with_batch_sharding",
]

#: the mesh axis the batch is split along (and, with ``shard_params=True``, the params)
DATA = "data"


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``devices`` devices (all when None), axis name ``"data"``.

    The axis is ``AxisType.Auto``: jit propagates shardings through any loss function, so
    models need no sharding annotations. Raises ValueError when more devices are asked for
    than exist, saying how to get more on CPU.
    """
    available = jax.devices()
    n = len(available) if devices is None else devices
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"--devices must be a positive integer, got {devices!r}")
    if n > len(available):
        raise ValueError(
            f"asked for {n} devices but only {len(available)} {available[0].platform} device(s) "
            "are visible: use --devices <= that number, or on CPU simulate more with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} (set before jax is imported)."
        )
    return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,), devices=available[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh`` (params and optimizer state for plain DP)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, *, batch_axis: int = 0) -> NamedSharding:
    """Split dimension ``batch_axis`` over the "data" axis (1 for ``make_multi_step``'s ``[K, B]``)."""
    return NamedSharding(mesh, P(*([None] * batch_axis), DATA))


def _fsdp_spec(shape: tuple[int, ...], n: int, min_size: int) -> P:
    """Shard the largest dimension divisible by ``n``; small or indivisible leaves replicate."""
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % n == 0:
            return P(*([None] * d), DATA)
    return P()


def state_shardings(
    state: Any, mesh: Mesh, *, shard_params: bool = False, min_size: int = 2**14
) -> Any:
    """Shardings for a train state (any pytree): replicated, or FSDP-style sharded.

    With ``shard_params=True`` every leaf with at least ``min_size`` elements is split along
    its largest dimension divisible by the device count (ZeRO-3/FSDP: each device stores 1/N of
    the params *and* of the Adam moments, which have the params' shapes); jit all-gathers
    them for the forward pass. Numerically the same training as replicated params.
    """
    n = mesh.shape[DATA]

    def leaf(x):
        if not shard_params or not hasattr(x, "shape"):
            return replicated(mesh)
        return NamedSharding(mesh, _fsdp_spec(tuple(x.shape), n, min_size))

    return jax.tree.map(leaf, state)


def place_state(
    state: Any, mesh: Mesh, *, shard_params: bool = False, min_size: int = 2**14
) -> Any:
    """``jax.device_put`` the state onto ``mesh`` with :func:`state_shardings`."""
    return jax.device_put(
        state, state_shardings(state, mesh, shard_params=shard_params, min_size=min_size)
    )


def shard_batch(batch: Any, mesh: Mesh, *, batch_axis: int = 0) -> Any:
    """Put a batch pytree on ``mesh``, split along ``batch_axis`` over the "data" axis.

    Single process: ``batch`` is the global batch. Multi-process: ``batch`` is this process's
    slice; the global batch is the concatenation over processes (in process order). Raises
    ValueError when the (global) batch does not divide evenly over the devices.
    """
    n = mesh.shape[DATA]
    sharding = batch_sharding(mesh, batch_axis=batch_axis)
    procs = jax.process_count()
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
        shape = np.shape(leaf)
        if len(shape) <= batch_axis:
            raise ValueError(
                f"batch leaf {jax.tree_util.keystr(path) or '<root>'} has shape {shape}: it "
                f"needs a batch dimension at axis {batch_axis} to be split over devices."
            )
        size = shape[batch_axis] * procs
        if size % n:
            raise ValueError(
                f"global batch size {size} (leaf {jax.tree_util.keystr(path) or '<root>'}) is "
                f"not divisible by the {n} devices of the mesh: choose a --batch-size that is "
                f"a multiple of {n}, or --devices that divides {size}."
            )
    if procs == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def with_batch_sharding(loss_fn: Callable, mesh: Mesh, *, batch_axis: int = 0) -> Callable:
    """Wrap ``loss_fn(params, batch, key)`` so its batch is split over the mesh inside jit.

    For steps that build their batch on the device (e.g. gathering it from a replicated
    dataset with an index array): ``jax.lax.with_sharding_constraint`` tells jit that the batch
    is split along ``batch_axis``, and the rest of the step (forward, gradient all-reduce,
    update) follows by propagation. A 1-device mesh returns ``loss_fn`` unchanged.
    """
    if mesh.size == 1:
        return loss_fn
    sharding = batch_sharding(mesh, batch_axis=batch_axis)

    def sharded_loss(params, batch, key):
        return loss_fn(params, jax.lax.with_sharding_constraint(batch, sharding), key)

    return sharded_loss


def data_parallel(
    step: Callable,
    mesh: Mesh,
    *,
    state_sharding: Any = None,
    batch_axis: int = 0,
    donate: bool = True,
) -> Callable:
    """Jit an *unjitted* ``step(state, batch, key) -> (state, metrics)`` for ``mesh``.

    ``step`` is :func:`jaxgrad.training.step.make_train_step` (``batch_axis=0``) or
    :func:`jaxgrad.training.step.make_multi_step` (``batch_axis=1``) built with ``jit=False``; the same
    function, compiled once with explicit in/out shardings: the state stays where
    ``state_sharding`` says (default: replicated; pass :func:`state_shardings` output for FSDP),
    the batch is split over devices, the key and metrics are replicated. Uncommitted inputs
    (fresh ``jnp`` arrays) are moved by jit; arrays committed elsewhere (``device_put`` to one
    device, restored from a checkpoint) make jit raise a sharding mismatch: place them with
    :func:`place_state` / :func:`shard_batch` first (once, not per step).
    """
    if isinstance(step, jax.stages.Wrapped):
        raise TypeError(
            "data_parallel needs the plain step function: build it with "
            "make_train_step(..., jit=False) (or make_multi_step(..., jit=False)); "
            "data_parallel compiles it with the mesh's shardings."
        )
    state_sh = replicated(mesh) if state_sharding is None else state_sharding
    rep = replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(state_sh, batch_sharding(mesh, batch_axis=batch_axis), rep),
        out_shardings=(state_sh, rep),
        donate_argnums=(0,) if donate else (),
    )
