"""Start N training processes on this machine, each with its own CPU devices (``torchrun``).

    python -m experiments.launch --processes 2 --devices-per-process 2 -- vit_cifar10 --tiny
    python -m experiments.launch --processes 2 -- tests/_mp_train.py --steps 4

The target is an experiment name (``vit_cifar10`` → ``python -m experiments.vit_cifar10``), a
dotted module, or a ``.py`` file. Every process gets the CPU platform with
``--devices-per-process`` devices, gloo cross-process collectives, and
``JAXGRAD_COORDINATOR`` / ``JAXGRAD_NUM_PROCESSES`` / ``JAXGRAD_PROCESS_ID`` (a free localhost
port for process 0), which :func:`jaxgrad.training.distributed.initialize` reads. Output lines are
prefixed ``[p<i>]``. The exit code is 0 only when every process exits 0; when one fails, the
others get ``--grace-s`` seconds to stop by themselves (the distributed runtime ends them once
the peer's heartbeat is missed) and are then killed, so a launch never hangs.

On a real cluster no launcher is needed: ``srun``/``mpirun``/a TPU slice start one process per
host and JAX reads the rest from the environment (README "Scaling out").
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from jaxgrad.report.cli import run_main
from jaxgrad.training.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID

__all__ = ["command_for", "free_port", "launch"]


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command_for(target: str, args: list[str]) -> list[str]:
    """``python`` argv for an experiment name, a dotted module or a ``.py`` path."""
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise SystemExit(f"launch: no such script {target}")
        return [sys.executable, target, *args]
    module = target if "." in target else f"experiments.{target}"
    return [sys.executable, "-m", module, *args]


def _describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _pump(i: int, proc: subprocess.Popen, lock: threading.Lock) -> None:
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"[p{i}] {line}")
            sys.stdout.flush()


def launch(
    cmd: list[str],
    *,
    processes: int,
    devices_per_process: int = 1,
    port: int = 0,
    grace_s: float = 60.0,
) -> int:
    """Run ``cmd`` as ``processes`` cooperating processes; 0 when all succeed, else the first
    failure's code (1 for a process killed by a signal)."""
    if processes < 1 or devices_per_process < 1:
        raise ValueError("--processes and --devices-per-process must be >= 1")
    address = f"127.0.0.1:{port or free_port()}"
    lock = threading.Lock()
    procs, pumps = [], []
    for i in range(processes):
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "JAX_NUM_CPU_DEVICES": str(devices_per_process),
            "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
            "PYTHONUNBUFFERED": "1",
            ENV_COORDINATOR: address,
            ENV_NUM_PROCESSES: str(processes),
            ENV_PROCESS_ID: str(i),
        }
        p = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        procs.append(p)
        pumps.append(threading.Thread(target=_pump, args=(i, p, lock), daemon=True))
        pumps[-1].start()
    print(
        f"launch: {processes} processes x {devices_per_process} CPU devices, "
        f"coordinator {address}: {' '.join(cmd)}",
        flush=True,
    )
    first_failure: tuple[int, int] | None = None
    deadline = None
    try:
        while any(p.poll() is None for p in procs):
            if first_failure is None:
                for i, p in enumerate(procs):
                    if p.poll() not in (None, 0):
                        first_failure = (i, p.returncode)
                        deadline = time.monotonic() + grace_s
                        print(
                            f"launch: process {i} failed ({_describe(p.returncode)}); the "
                            f"others stop within {grace_s:g} s or are killed",
                            flush=True,
                        )
                        break
            elif time.monotonic() > deadline:
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        print(
                            f"launch: killing process {i} (still running {grace_s:g} s "
                            f"after process {first_failure[0]} failed)",
                            flush=True,
                        )
                        p.kill()
            time.sleep(0.1)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        raise
    finally:
        for p in procs:
            p.wait()
        for t in pumps:
            t.join(timeout=5)
        for p in procs:
            p.stdout.close()
    codes = [p.returncode for p in procs]
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    for i, c in failed:
        print(f"launch: process {i}: {_describe(c)}", flush=True)
    if not failed:
        return 0
    code = (first_failure or failed[0])[1]
    return code if code > 0 else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python -m experiments.launch [options] -- TARGET [args...]")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(
        prog="python -m experiments.launch",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--processes", type=int, default=2, help="processes to start")
    parser.add_argument(
        "--devices-per-process", type=int, default=1, help="CPU devices each process sees"
    )
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument(
        "--grace-s",
        type=float,
        default=60.0,
        help="after a failure, seconds the others get to stop by themselves before being killed",
    )
    opts = parser.parse_args(argv[:cut])
    rest = argv[cut + 1 :]
    if not rest:
        raise SystemExit("launch: nothing to run after --")
    return launch(
        command_for(rest[0], rest[1:]),
        processes=opts.processes,
        devices_per_process=opts.devices_per_process,
        port=opts.port,
        grace_s=opts.grace_s,
    )


if __name__ == "__main__":
    run_main(main)
