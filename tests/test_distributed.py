"""Multi-process training on JAX's distributed runtime (jaxgrad.distributed, experiments.launch).

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
from jaxgrad.distributed import (
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    detect_cluster,
    initialize,
    local_rows,
)
from jaxgrad.parallel import make_mesh

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


# ----- the experiments themselves on two processes -----

VIT = ["--tiny", "--epochs", 2, "--batch-size", 40, "--no-progress"]  # 40: splits over 4 devices


def _experiment(name, args, *, devices=4, processes=1):
    """``python -m experiments.<name>`` alone (1 process) or through the launcher."""
    if processes == 1:
        cmd = [sys.executable, "-m", f"experiments.{name}", *args]
    else:
        cmd = [sys.executable, "-m", "experiments.launch", "--processes", str(processes)]
        cmd += ["--devices-per-process", str(devices), "--", name, *args]
    env = _env(devices, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    return subprocess.Popen(
        list(map(str, cmd)), cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_vit_experiment_on_two_processes_trains_like_one_and_resumes_in_one(tmp_path):
    """``launch --processes 2 --devices-per-process 2 -- vit_cifar10 --tiny --epochs 2`` ends
    with the params of 1 process x 4 devices (ATOL: reduction order, measured 2.4e-7 after the
    50 steps); process 0 alone logs and writes. Each checkpoint then resumes for a 3rd epoch in
    the *other* process count (same global batch) and the two agree again; another global batch
    is refused by name."""
    one, two = tmp_path / "one", tmp_path / "two"
    runs = [
        _experiment("vit_cifar10", [*VIT, "--out-dir", one]),
        _experiment("vit_cifar10", [*VIT, "--out-dir", two], devices=2, processes=2),
    ]
    outs = [_finish(p, timeout=480) for p in runs]
    assert "1 processes x 4 devices" in outs[0]
    assert "[p0] train:" in outs[1] and "2 processes x 2 devices" in outs[1]
    assert outs[1].count("Epoch [2/2]") == 1 and "[p1] Epoch" not in outs[1]  # process 0 only
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2  # logged once per epoch
    p2 = _params(one / "vit_params.npz")
    _assert_close(p2, _params(two / "vit_params.npz"))

    more = ["--epochs", 3, "--resume"]
    resumed = [  # the 2-process checkpoint in 1 process, the 1-process one in 2 processes
        _experiment("vit_cifar10", [*VIT, *more, "--out-dir", two]),
        _experiment("vit_cifar10", [*VIT, *more, "--out-dir", one], devices=2, processes=2),
    ]
    outs = [_finish(p, timeout=480) for p in resumed]
    assert all("(epoch 2 of 3)" in o and "Epoch [3/3]" in o and "Epoch [1/" not in o for o in outs)
    p3 = _params(two / "vit_params.npz")
    _assert_close(p3, _params(one / "vit_params.npz"))
    assert max(np.abs(p3[k] - p2[k]).max() for k in p2) > 1e-3  # it did train on

    other = _experiment("vit_cifar10", [*VIT, *more, "--batch-size", 20, "--out-dir", two])
    out, _ = other.communicate(timeout=300)
    assert other.returncode != 0
    assert "global --batch-size 40, not 20: resume with the same global batch" in out, out[-2000:]


@pytest.mark.slow
def test_killing_one_vit_process_ends_the_other_with_the_lost_peer_named(tmp_path):
    """The real experiment: SIGKILL process 1 once process 0 has finished epoch 1; process 0
    exits non-zero within 60 s, its runtime naming task 1 as the peer that stopped."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(2):
        env = _env(
            2,
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            **{
                ENV_COORDINATOR: f"127.0.0.1:{port}",
                ENV_NUM_PROCESSES: "2",
                ENV_PROCESS_ID: str(i),
            },
        )
        args = [*VIT, "--epochs", 10_000, "--out-dir", tmp_path / "run"]
        cmd = [sys.executable, "-m", "experiments.vit_cifar10", *map(str, args)]
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    try:
        seen = []
        for line in procs[0].stdout:
            seen.append(line)
            if line.startswith("Epoch [1/"):
                break
        assert seen and seen[-1].startswith("Epoch [1/"), "".join(seen)[-3000:]
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
    assert out.split("stopped sending heartbeats):", 1)[1].split()[0] == "1", out[-3000:]
    assert elapsed < 60


@pytest.mark.slow
def test_clip_experiment_runs_on_two_processes_and_writes_once(tmp_path):
    """Smoke: CLIP through the launcher (2 x 1 device); process 0 prints and writes."""
    out_dir = tmp_path / "clip"
    args = ["--tiny", "--steps", 20, "--eval-every", 10, "--out-dir", out_dir]
    out = _finish(_experiment("clip_contrastive", args, devices=1, processes=2), timeout=480)
    assert "launch: 2 processes x 1 CPU devices" in out
    assert out.count("done in") == 1 and "[p0] done in" in out
    assert "[p1] step" not in out and out.count("[p0] step 20:") == 1
    records = (out_dir / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 6  # once each: eval at steps 0, 10, 20 and train at 1, 10, 20
    assert (out_dir / "final.json").exists()


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


@pytest.mark.parametrize("main", [True, False])
def test_only_process_0_writes_prints_and_locks(tmp_path, monkeypatch, capsys, main):
    """The library's outputs as process 1 would see them: no file, no line, no lock (process 0
    writes them all); process 0 (and a single process) writes each exactly once."""
    import io

    from jaxgrad import io as jio
    from jaxgrad import plan, progress, runs, tables
    from jaxgrad.checkpoint import save_params

    for module in (jio, plan, progress, runs, tables):
        monkeypatch.setattr(module, "is_main", lambda: main)
    waited = []
    monkeypatch.setattr(runs, "barrier", waited.append)
    jio.atomic_write_json(tmp_path / "summary.json", {"a": 1})
    save_params(tmp_path / "p.npz", {"w": np.ones(2, np.float32)})
    log = jio.JsonlLogger(tmp_path / "m" / "metrics.jsonl")
    log.log(epoch=1)
    assert log.rewind(lambda r: True) == (1 if main else 0)
    stream = io.StringIO()
    bar = progress.Progress(4, desc="t", stream=stream, tty=False, every_s=0)
    bar(2, {"loss": np.array([1.0, 0.5])})
    bar.close()
    p = plan.Plan(name="t", params=10, steps_per_epoch=2, device="cpu", stream=stream)
    p.announce()
    p.first_chunk(steps=2, seconds=1.0)
    tables.print_table([("x", 1)], ("name", "n"))
    run = runs.open_run_dir(tmp_path / "run")
    written = sorted(str(f.relative_to(tmp_path)) for f in tmp_path.rglob("*") if f.is_file())
    if main:
        assert written == ["m/metrics.jsonl", "p.npz", "run/.jaxgrad.lock", "summary.json"]
        assert "plan: t" in stream.getvalue() and "loss 0.5" in stream.getvalue()
        assert "name" in capsys.readouterr().out
    else:
        assert written == [] and stream.getvalue() == "" and capsys.readouterr().out == ""
    assert waited == ["jaxgrad.runs.open_run_dir"]  # both wait: process 0 after locking
    run.release()


def test_replicated_keys_restore_replicated(tmp_path):
    """A PRNG key replicated over the mesh (as every process of a multi-process run holds it)
    comes back from a checkpoint with that placement: a host-local key would make the next
    multi-process save fail ("Cannot serialize host local jax.Array")."""
    import jax

    from jaxgrad.checkpoint import Checkpointer
    from jaxgrad.distributed import replicate
    from jaxgrad.parallel import replicated

    mesh = make_mesh()
    keys = replicate({"step": jax.random.key(3), "w": np.arange(4.0, dtype=np.float32)}, mesh)
    assert keys["step"].sharding == replicated(mesh)
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(1, keys)
        tree, _ = ckpt.restore(keys)
    assert tree["step"].sharding == replicated(mesh) and tree["w"].sharding == replicated(mesh)
    assert np.array_equal(jax.random.key_data(tree["step"]), jax.random.key_data(keys["step"]))
    assert jax.random.key_impl(tree["step"]) == jax.random.key_impl(keys["step"])


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
