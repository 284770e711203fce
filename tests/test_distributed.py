"""Multi-process training on JAX's distributed runtime (jaxgrad.training.distributed, experiments.launch).

The training tests run ``tests/_mp_train.py`` (a tiny ViT, dropout on, Adam) in subprocesses:
two processes x two CPU devices (gloo collectives) against one process x four devices, and a
peer killed mid-run. The other tests exercise argument checks, cluster detection, the
coordinator probes and the launcher in this process or with plain-Python children (no JAX).
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments.launch import command_for, launch
from jaxgrad.training.distributed import (
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    detect_cluster,
    initialize,
    local_rows,
)
from jaxgrad.training.parallel import make_mesh

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "_mp_train.py"
# Params after 4 and 6 Adam steps (lr 1e-2) have |p| <= 2.6; the gradient all-reduce of the
# 2-process run sums the 4 per-device partial gradients in another order than the 1-process run
# (gloo across processes, XLA's in-process reduction within one), a few float32 ulps per step;
# measured 1.2e-7 after 4 steps. 1e-6 is about 4 ulps at 2.6 and 100x below any real change:
# one step moves a param by up to lr = 1e-2, and feeding wrong rows moved them by 4e-2.
ATOL = 1e-6


def _env(devices: int, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXGRAD_")}
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": str(devices),
        **extra,
    }


def _run(args, *, devices=4, processes=1, timeout=240):
    """Run the script (through the launcher when processes > 1); return its output."""
    if processes == 1:
        cmd = [sys.executable, SCRIPT, *args]
    else:
        cmd = [sys.executable, "-m", "experiments.launch", "--processes", str(processes)]
        cmd += ["--devices-per-process", str(devices), "--", SCRIPT, *args]
    return subprocess.Popen(
        list(map(str, cmd)),
        cwd=ROOT,
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc, timeout=240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    return out


def _params(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=ATOL, err_msg=k)


@pytest.mark.slow
def test_two_processes_train_like_one_and_checkpoints_resume_across_process_counts(tmp_path):
    """2 processes x 2 devices == 1 process x 4 devices after 4 steps; each run's checkpoint
    then resumes in the *other* process count for 2 more steps, and the two agree again."""
    one, two = tmp_path / "one", tmp_path / "two"
    runs = [
        _run(["--steps", 4, "--ckpt-dir", one, "--out", tmp_path / "one4.npz"]),
        _run(
            ["--steps", 4, "--ckpt-dir", two, "--out", tmp_path / "two4.npz"],
            devices=2,
            processes=2,
        ),
    ]
    outs = [_finish(p) for p in runs]
    assert "processes 2 x devices 2 = 4" in outs[1]
    assert outs[1].count("step 4 loss") == 1  # printed by process 0 only
    p4 = _params(tmp_path / "one4.npz")
    _assert_close(p4, _params(tmp_path / "two4.npz"))

    resumed = [  # the 2-process checkpoint in 1 process, the 1-process one in 2 processes
        _run(["--steps", 6, "--ckpt-dir", two, "--resume", "--out", tmp_path / "a6.npz"]),
        _run(
            ["--steps", 6, "--ckpt-dir", one, "--resume", "--out", tmp_path / "b6.npz"],
            devices=2,
            processes=2,
        ),
    ]
    outs = [_finish(p) for p in resumed]
    assert all("starting at step 4" in o for o in outs)
    assert all("step 5 loss" in o and "step 1 loss" not in o for o in outs)
    p6 = _params(tmp_path / "a6.npz")
    _assert_close(p6, _params(tmp_path / "b6.npz"))
    assert max(np.abs(p6[k] - p4[k]).max() for k in p4) > 1e-3  # it did train on


@pytest.mark.slow
def test_killing_one_process_ends_the_other_with_the_lost_peer_named(tmp_path):
    """SIGKILL process 1 mid-run: the runtime ends process 0 (non-zero) within 60 s, naming
    task 1 as the one that stopped sending heartbeats. No launcher: the runtime does it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(2):
        env = _env(
            2,
            **{
                ENV_COORDINATOR: f"127.0.0.1:{port}",
                ENV_NUM_PROCESSES: "2",
                ENV_PROCESS_ID: str(i),
            },
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(SCRIPT), "--steps", "100000", "--step-sleep", "0.2"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        seen = []
        for line in procs[0].stdout:
            seen.append(line)
            if line.startswith("step 2 "):
                break
        assert seen and seen[-1].startswith("step 2 "), "".join(seen)[-3000:]
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        out, _ = procs[0].communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode != 0
    assert "stopped sending heartbeats" in out, out[-3000:]
    lost = out.split("stopped sending heartbeats):", 1)[1].split()[0]
    assert lost == "1", out[-3000:]
    assert elapsed < 60


# ----- in-process checks: no runtime is joined by any of these -----


@pytest.mark.parametrize(
    "env, want",
    [
        ({}, None),
        ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1"}, None),  # one task: nothing to join
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),  # sbatch script, not inside srun
        ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4"}, "slurm"),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, "openmpi"),
        ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, "tpu"),
        ({"TPU_WORKER_HOSTNAMES": "t0"}, None),  # single-host TPU VM
        ({"KUBERNETES_SERVICE_HOST": "x", "JOBSET_NAME": "train"}, "k8s"),
    ],
)
def test_detect_cluster_only_when_several_processes_are_launched(env, want):
    assert detect_cluster(env) == want


def test_initialize_alone_joins_nothing():
    assert initialize(env={}) is False
    assert initialize("127.0.0.1:1", 1, 0, env={}) is False  # one process: nothing to join


@pytest.mark.parametrize(
    "args, env, match",
    [
        (("127.0.0.1:5000", 2, None), {}, r"missing \['--process-id'\]"),
        (
            (None, None, None),
            {ENV_COORDINATOR: "h:1", ENV_NUM_PROCESSES: "2"},
            "JAXGRAD_PROCESS_ID",
        ),
        (("nohostport", 2, 0), {}, "host:port"),
        (("h:99999", 2, 0), {}, "host:port"),
        (("h:5000", 2, 2), {}, r"--process-id must be in 0\.\.1"),
        (("h:5000", 0, 0), {}, "--num-processes must be >= 1"),
    ],
)
def test_initialize_rejects_incomplete_or_bad_arguments(args, env, match):
    with pytest.raises(ValueError, match=match):
        initialize(*args, env=env)


def test_coordinator_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"coordinator port {port} is in use"):
            initialize(f"127.0.0.1:{port}", 2, 0, env={})


def test_unreachable_coordinator_is_a_clear_error_after_the_timeout():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=f"nothing answers at coordinator 127.0.0.1:{port}"):
        initialize(f"127.0.0.1:{port}", 2, 1, env={}, init_timeout_s=1)
    assert 1 <= time.monotonic() - t0 < 10


def test_local_rows_of_a_single_process_is_the_whole_batch():
    assert local_rows(make_mesh(), 8) == slice(0, 8)
    assert local_rows(make_mesh(), 6, batch_axis=1) == slice(0, 6)


def test_launcher_maps_targets_to_commands(tmp_path):
    assert command_for("vit_cifar10", ["--tiny"])[1:] == ["-m", "experiments.vit_cifar10", "--tiny"]
    assert command_for("pkg.mod", [])[1:] == ["-m", "pkg.mod"]
    script = tmp_path / "s.py"
    script.write_text("")
    assert command_for(str(script), ["-x"])[1:] == [str(script), "-x"]
    with pytest.raises(SystemExit, match="no such script"):
        command_for(str(tmp_path / "missing.py"), [])


def test_launcher_gives_each_process_its_rank_and_fails_when_one_fails(tmp_path, capfd):
    """Process 1 exits 3 at once, process 0 would run forever: the launch returns 3 and kills
    process 0 after the grace period; every line carries its process prefix."""
    script = tmp_path / "child.py"
    script.write_text(
        "import os, sys, time\n"
        f"rank = int(os.environ['{ENV_PROCESS_ID}'])\n"
        f"print('rank', rank, 'of', os.environ['{ENV_NUM_PROCESSES}'],"
        " 'devices', os.environ['JAX_NUM_CPU_DEVICES'], flush=True)\n"
        "if rank == 1:\n    sys.exit(3)\n"
        "time.sleep(30)\n"  # a launcher that never kills it returns after 30 s: too late
    )
    t0 = time.monotonic()
    code = launch([sys.executable, str(script)], processes=2, devices_per_process=3, grace_s=1)
    assert code == 3
    assert time.monotonic() - t0 < 20
    out = capfd.readouterr().out
    assert "[p0] rank 0 of 2 devices 3" in out and "[p1] rank 1 of 2 devices 3" in out
    assert "process 1 failed (exit code 3)" in out
    assert "killing process 0" in out


def test_launcher_returns_zero_when_every_process_succeeds(tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("print('fine')\n")
    assert launch([sys.executable, str(script)], processes=3) == 0
