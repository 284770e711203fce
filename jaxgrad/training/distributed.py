"""Multi-process training on JAX's distributed runtime (``torchrun`` + ``DistributedSampler``).

PyTorch's ``torchrun --nproc-per-node 2 train.py`` / ``init_process_group("gloo")`` becomes one
call at the top of the program, before any other JAX call::

    multi = initialize(coordinator, num_processes, process_id)   # False: a single process
    mesh = make_mesh()                       # every device of every process, process order
    rows = local_rows(mesh, global_batch)    # the rows of each global batch this process feeds
    batch = shard_batch(host_batch[rows], mesh)   # -> global jax.Array (make_array_from_...)
    if is_main(): print(...)                 # logs, progress bars, output files: process 0

Each process runs the same program on its own devices; ``jax.jit`` compiles one SPMD program
for the global mesh and the gradient all-reduce crosses processes (gloo on CPU, NCCL on GPU,
ICI/DCN on TPU). Training is therefore the training of one process over all the devices:
the same global batch gives the same params, up to float32 reduction order.

How a process learns its place, in this order:

1. explicit arguments (``--coordinator host:port --num-processes N --process-id I``);
2. the environment variables :data:`ENV_COORDINATOR`, :data:`ENV_NUM_PROCESSES`,
   :data:`ENV_PROCESS_ID` (set by ``python -m experiments.launch``);
3. a cluster JAX detects itself: SLURM (``srun``), Open MPI (``mpirun``), a Cloud TPU pod
   slice, a Kubernetes JobSet; then ``jax.distributed.initialize()`` is called with no
   arguments and JAX reads host, count and rank from the cluster;
4. otherwise nothing is initialised: one process, its local devices.

Failures are bounded: when a peer dies, the coordination service stops hearing its heartbeat
and, after ``heartbeat_timeout_s``, ends every other process with an error naming the lost
task (``/job:jax_worker/replica:0/task:<process id>``); a peer that dies inside a collective
usually breaks the collective first (gloo reports the closed connection). See
docs/results/reliability.md for the measured times.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxgrad.report.rank import is_main
from jaxgrad.training.parallel import batch_sharding, replicated

__all__ = [
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "barrier",
    "detect_cluster",
    "initialize",
    "is_main",
    "local_rows",
    "main_print",
    "process_local",
    "replicate",
]

#: ``host:port`` of process 0's coordination service (set by the local launcher)
ENV_COORDINATOR = "JAXGRAD_COORDINATOR"
#: how many processes take part (set by the local launcher)
ENV_NUM_PROCESSES = "JAXGRAD_NUM_PROCESSES"
#: this process's rank, 0 .. N-1 (set by the local launcher)
ENV_PROCESS_ID = "JAXGRAD_PROCESS_ID"


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env.get(name, "1"))
    except ValueError:
        return 1


def detect_cluster(env: Mapping[str, str] | None = None) -> str | None:
    """The multi-process cluster this process was started in, or None.

    ``"slurm"``: inside ``srun`` with more than one task; ``"openmpi"``: ``mpirun -np N>1``;
    ``"tpu"``: a multi-host Cloud TPU slice (``TPU_WORKER_HOSTNAMES`` lists several hosts);
    ``"k8s"``: a Kubernetes JobSet pod. A one-task allocation is no cluster: nothing to join.
    """
    env = os.environ if env is None else env
    if "SLURM_STEP_ID" in env and _int_env(env, "SLURM_STEP_NUM_TASKS") > 1:
        return "slurm"
    if _int_env(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return "openmpi"
    if len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        return "tpu"
    if "KUBERNETES_SERVICE_HOST" in env and "JOBSET_NAME" in env:
        return "k8s"
    return None


def _explicit(coordinator, num_processes, process_id, env) -> tuple | None:
    """(coordinator, num_processes, process_id) from arguments, else the launcher's env."""
    given = {
        "--coordinator": coordinator,
        "--num-processes": num_processes,
        "--process-id": process_id,
    }
    if all(v is None for v in given.values()):
        names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
        if not any(n in env for n in names):
            return None
        missing = [n for n in names if n not in env]
        if missing:
            raise ValueError(f"environment sets some of {names} but not {missing}: set all three")
        try:
            return env[ENV_COORDINATOR], int(env[ENV_NUM_PROCESSES]), int(env[ENV_PROCESS_ID])
        except ValueError as e:
            raise ValueError(f"{ENV_NUM_PROCESSES} / {ENV_PROCESS_ID} must be integers: {e}") from e
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"multi-process run needs all of {list(given)}; missing {missing}")
    return coordinator, num_processes, process_id


def _check(coordinator: str, num_processes: int, process_id: int) -> None:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"--coordinator must be host:port (e.g. 10.0.0.1:12355), got {coordinator!r}"
        )
    if num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be in 0..{num_processes - 1}, got {process_id}")


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    env: Mapping[str, str] | None = None,
    init_timeout_s: int = 60,
    heartbeat_timeout_s: int = 20,
) -> bool:
    """Join the distributed runtime when launched as one of several processes; True if joined.

    Call it before any other JAX call (it must precede backend start-up). See the module
    docstring for how the place of this process is found. ``init_timeout_s`` bounds the wait
    for every peer to connect; ``heartbeat_timeout_s`` bounds how long the others run on after
    a peer stops answering (JAX's default is 100 s). Raises RuntimeError naming the
    coordinator when it cannot be bound (port in use) or reached (wrong host, peers missing).
    """
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    explicit = _explicit(coordinator, num_processes, process_id, env)
    if explicit is None:
        cluster = detect_cluster(env)
        if cluster is None:
            return False
        kwargs: dict[str, Any] = {}
        where = f"the {cluster} cluster's environment"
    else:
        _check(*explicit)
        coordinator, num_processes, process_id = explicit
        if num_processes == 1:
            return False
        kwargs = dict(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
        where = f"coordinator {coordinator} (process {process_id} of {num_processes})"
    if explicit is not None:
        _probe(coordinator, process_id, init_timeout_s)
    try:
        jax.distributed.initialize(
            **kwargs,
            initialization_timeout=init_timeout_s,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
        )
    except Exception as e:  # JaxRuntimeError / RuntimeError / ValueError from the runtime
        if "rpc server" in str(e).lower():
            hint = "the coordinator port is in use: pick a free one (the launcher does)"
        else:
            hint = "see the runtime's message above"
        raise RuntimeError(f"could not join the distributed runtime at {where}: {hint}") from e
    return jax.process_count() > 1


def _probe(coordinator: str, process_id: int, timeout_s: float) -> None:
    """Fail with a clear error before the runtime would abort the process without one.

    Process 0 checks that it can bind the coordinator port; the others wait up to
    ``timeout_s`` for something to listen there (the runtime's own client kills the process
    with a bare DEADLINE_EXCEEDED when the coordinator never answers).
    """
    host, _, port = coordinator.rpartition(":")
    host = host.strip("[]")
    if process_id == 0:
        family, anyhost = (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "")
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                s.bind((anyhost, int(port)))
            except OSError as e:
                raise RuntimeError(
                    f"coordinator port {port} is in use on this host ({e.strerror}): pick a free "
                    "--coordinator port (the launcher does), or stop what holds it"
                ) from e
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"process {process_id}: nothing answers at coordinator {coordinator} after "
                    f"{timeout_s:g} s ({e.strerror or e}): is process 0 running with the same "
                    "--coordinator, and is that host reachable from here?"
                ) from e
            time.sleep(0.5)


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op in a single process): e.g. after process 0
    has prepared a run directory the others are about to use."""
    if jax.distributed.is_initialized() and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def main_print(*args: Any, **kwargs: Any) -> None:
    """``print`` in process 0 only (flushed, so launcher-prefixed output keeps its order)."""
    if is_main():
        print(*args, **kwargs, flush=True)


def local_rows(mesh: Mesh, global_size: int, *, batch_axis: int = 0) -> slice:
    """The rows of a global batch of ``global_size`` that this process passes to
    :func:`jaxgrad.training.parallel.shard_batch`: the union of the slices its own devices hold.

    One process: ``slice(0, global_size)``. With a mesh over ``jax.devices()`` (process order)
    process ``p`` of ``P`` gets the contiguous ``p``-th block. Raises ValueError when the rows of
    this process's devices are not one contiguous block (a mesh in another device order).
    """
    sharding = batch_sharding(mesh, batch_axis=batch_axis)
    shape = (1,) * batch_axis + (global_size,)
    idx = sharding.addressable_devices_indices_map(shape).values()
    spans = sorted({(i[batch_axis].start or 0, i[batch_axis].stop or global_size) for i in idx})
    if not spans:
        raise ValueError(
            f"process {jax.process_index()} has no device in the mesh: in a multi-process run "
            "the mesh must span every process (leave --devices unset)"
        )
    lo, hi = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != hi - lo:
        raise ValueError(
            f"process {jax.process_index()}'s devices hold rows {spans} of the global batch: "
            "not one contiguous block; build the mesh over jax.devices() in their order"
        )
    return slice(int(lo), int(hi))


def process_local(batch: Any, mesh: Mesh, *, batch_axis: int = 0) -> Any:
    """This process's share of a host-side global batch (numpy pytree): ``x[local_rows]``."""
    leaves = jax.tree.leaves(batch)
    size = np.shape(leaves[0])[batch_axis]
    rows = local_rows(mesh, size, batch_axis=batch_axis)
    index = (slice(None),) * batch_axis + (rows,)
    return jax.tree.map(lambda x: x[index], batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf (numpy, jax.Array or typed PRNG key array) onto every device of ``mesh``.

    Multi-process: each process passes the same values (same seed, same data) and the result is
    one global, fully replicated array per leaf. ``jax.device_put`` alone refuses a local
    jax.Array onto devices of other processes, so leaves go through host memory (keys as their
    key data, re-wrapped with their own implementation).
    """
    sharding = replicated(mesh)

    def put(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(put, tree)
