"""CLIP data-parallel (issue 22, items 1 and 3): one contrastive loss over the global batch.

The fast tests run this file as a script with 4 CPU devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=4``, in a subprocess: the flag must precede jax's start)
and assert on the JSON it prints: the experiment's own setup trained a few steps on a 4-device
mesh against a 1-device one (losses, gradient norms, params), for the ViT tower with ``--loss
clip`` and ``--loss siglip``, a frozen pretrained tower (its features extracted over the 4
devices) and a fine-tuned one (``--image-lr``); and the compiled step holds the all-gather
that puts all B captions beside each device's images. The slow tests run the experiment itself:
1 process x 4 devices and 2 processes x 2 devices (gloo, ``experiments.launch``) against 1 x 1,
and one process killed mid-run.

Tolerance: ``|θ_N - θ_1| / |θ_1| <= 1e-6`` over the whole parameter vector (measured
2e-8 - 8e-8), and every scalar within ``ATOL`` 1e-5 (measured up to 1.3e-6: Adam turns the
reduction-order noise of a near-zero gradient into a few 1e-7 per step; one step moves a
parameter by up to lr = 3e-3, a step on the wrong rows by about as much). Left out: the
attention *key* biases. ``b_k`` adds ``q · b_k`` to every logit of a query's row and softmax
ignores a constant shift, so their exact gradient is 0; what the program computes is rounding
noise (~1e-9), which Adam divides by its own root mean square into a ±lr step. Their values are
noise in every run (measured: 5e-4 apart after 20 steps); the test checks they stay within
steps x lr of their initial value instead.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments.launch import free_port

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats; NNX biases broadcast"

N_DEV = 4
STEPS = 3
RTOL, ATOL = 1e-6, 1e-5
ZERO_GRAD = ("['key']['bias']", "['k_proj']['bias']")  # exact gradient 0: see the docstring


def _small(cfg):
    return dataclasses.replace(
        cfg, n_images=64, n_val=16, batch_size=16, steps=STEPS, warmup_steps=0, embed_dim=16, image_dim=16,
        text_dim=16, heads=2, patch_size=16, max_len=12, fast_compile=True,
    )  # fmt: skip


def child() -> dict:
    """4 CPU devices: each case trained STEPS steps on a 1-device and on a 4-device mesh."""
    from flax import nnx

    from experiments import clip_contrastive as exp
    from experiments._support import clip_setup
    from jaxgrad.data.pipeline import epoch_indices
    from jaxgrad.port.hf_clip import CLIPVisionConfig, CLIPVisionTower
    from jaxgrad.tasks.clip import CLIP_STEP
    from jaxgrad.tasks.clip_parallel import collectives, place_for_training
    from jaxgrad.training.loop import make_run_chunk
    from jaxgrad.training.parallel import make_mesh
    from jaxgrad.training.step import init_train_state
    from jaxgrad.training.xla import RUN_ONCE

    assert jax.device_count() == N_DEV, jax.devices()
    tower = CLIPVisionTower(
        CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, projection_dim=16),
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    clip_setup.load_pretrained = lambda path: tower  # the pretrained tower, no checkpoint file
    base = _small(exp.Config.tiny())
    cases = {
        "vit_clip": dict(loss="clip"),
        "vit_siglip": dict(loss="siglip"),
        # the chunked SigLIP (text chunks around the 4 devices) against the full one on 1
        "vit_siglip_ring": dict(loss="siglip-ring"),
        "frozen_tower": dict(image_encoder="clip", image_weights="-", freeze_image=True),
        "finetune_tower": dict(image_encoder="clip", image_weights="-", image_lr=1e-3),
    }
    out = {}
    for name, kw in cases.items():
        if sys.argv[2:] and name not in sys.argv[2:]:  # by hand: `... DIR vit_clip`
            continue
        cfg = dataclasses.replace(base, **kw)
        train, val = exp.load_data(cfg)
        runs = {}
        for n in (1, N_DEV):
            mesh = make_mesh(n)  # each its own feature cache: both extract
            cfg = dataclasses.replace(cfg, feature_cache=f"{sys.argv[1]}/{name}{n}")
            if cfg.loss == "siglip-ring" and n == 1:  # the reference: the full [B, B] loss
                cfg = dataclasses.replace(cfg, loss="siglip")
            elif kw.get("loss") == "siglip-ring":
                cfg = dataclasses.replace(cfg, loss="siglip-ring")
            s = exp.setup(cfg, train, val, mesh=mesh)  # n > 1: features extracted over n devices
            state = init_train_state(s.params, s.optimizer)
            state, keys, data = place_for_training(state, s.keys, (s.inputs.train, train.labels), mesh)  # fmt: skip
            run = make_run_chunk(s.loss_fn, s.optimizer, mesh=mesh, **CLIP_STEP,
                                 compiler_options=RUN_ONCE)  # fmt: skip
            idx = epoch_indices(keys["data"], len(train), cfg.batch_size)[:STEPS]
            compiled = run.lower(state, *data, idx, keys["step"]).compile()  # compiled once
            init = _flat(state.params)
            state, m = compiled(state, *data, idx, keys["step"])
            runs[n] = dict(
                loss=m["loss"].tolist(), grad_norm=m["grad_norm"].tolist(),
                params=_flat(state.params), init=init, ops=dict(collectives(compiled)),
                features=None if s.inputs.kind != "features" else s.inputs.train,
                cache_hit=None if s.inputs.cache is None else s.inputs.cache["train"].hit,
            )  # fmt: skip
        out[name] = _compare(runs[1], runs[N_DEV], lr=max(cfg.lr, cfg.image_lr or 0.0))
    return out


def _compare(one: dict, many: dict, *, lr: float) -> dict:
    """What the parent asserts on: losses, collectives, params apart, features apart."""
    keep = [k for k in one["params"] if not any(z in k for z in ZERO_GRAD)]
    zero_grad = [k for k in one["params"] if k not in keep]
    diff = {k: one["params"][k] - many["params"][k] for k in keep}
    norm = lambda xs: float(np.sqrt(sum(float((x**2).sum()) for x in xs)))  # noqa: E731
    feats = one["features"] is not None
    return dict(
        loss_1=one["loss"], loss_n=many["loss"], grad_norm_1=one["grad_norm"],
        grad_norm_n=many["grad_norm"], ops_1=one["ops"], ops_n=many["ops"],
        rel=norm(diff.values()) / norm(one["params"][k] for k in keep),
        max_abs=max(float(np.abs(d).max()) for d in diff.values()),
        zero_grad_leaves=len(zero_grad), lr=lr,
        moved=max(float(np.abs(one["init"][k] - one["params"][k]).max()) for k in keep),
        zero_grad_moved=max(float(np.abs(r["init"][k] - r["params"][k]).max())
                            for k in zero_grad for r in (one, many)),
        features_max_diff=float(np.abs(one["features"] - many["features"]).max()) if feats
        else None,
        features_scale=float(np.abs(one["features"]).max()) if feats else None,
        cache_hits=[one["cache_hit"], many["cache_hit"]],
    )  # fmt: skip


def _flat(tree) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


@pytest.fixture(scope="module", autouse=True)
def four_device_child(spawn, tmp_path_factory):
    """Started at once (it compiles 8 train steps), so it runs while the other tests do."""
    cache = tmp_path_factory.mktemp("clip_dp_cache")
    root = str(Path(__file__).resolve().parents[1])  # the child imports experiments.*
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return spawn([__file__, cache], XLA_FLAGS=f"--xla_force_host_platform_device_count={N_DEV}",
                 PYTHONPATH=path)  # fmt: skip


@pytest.fixture(scope="module")
def four(four_device_child):
    stdout, stderr = four_device_child.communicate(timeout=600)
    assert four_device_child.returncode == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


CASES = ["vit_clip", "vit_siglip", "frozen_tower", "finetune_tower"]


@pytest.mark.parametrize("case", [*CASES, "vit_siglip_ring"])
def test_four_devices_train_like_one_on_the_same_global_batch(four, case):
    r = four[case]
    np.testing.assert_allclose(r["loss_n"], r["loss_1"], rtol=RTOL)  # the global-batch loss
    np.testing.assert_allclose(r["grad_norm_n"], r["grad_norm_1"], rtol=1e-5)
    assert r["rel"] <= RTOL and r["max_abs"] <= ATOL, r  # measured <= 8.4e-8, 1.3e-6
    assert r["moved"] > 1e-3  # it did train: the comparison is not of two untouched inits


@pytest.mark.parametrize("case", CASES)
def test_the_step_gathers_the_features_across_devices(four, case):
    """Each device encodes B/4 images, yet every image is scored against all B captions: the
    compiled 4-device step holds all-gathers (and the gradient's all-reduces); the 1-device
    step holds no collective at all. (Without the batch sharding in make_run_chunk every
    device would run the whole batch and the 4-device program would hold none.)"""
    r = four[case]
    assert r["ops_1"] == {}
    assert r["ops_n"].get("all-gather", 0) >= 1 and r["ops_n"].get("all-reduce", 0) >= 1, r


def test_the_ring_passes_text_chunks_instead_of_gathering_them(four):
    """``--loss siglip-ring``: the texts travel device to device (collective-permute), the
    [B, B] matrix is never formed; it trains like the full loss on one device (above)."""
    ops = four["vit_siglip_ring"]["ops_n"]
    assert ops.get("collective-permute", 0) >= 1, ops


def test_frozen_tower_features_are_extracted_over_the_devices_and_equal(four):
    r = four["frozen_tower"]
    assert r["features_max_diff"] <= RTOL * r["features_scale"], r  # measured 1.5e-8 of 0.17
    assert r["cache_hits"] == [False, False]  # each extracted (its own cache folder)


def test_zero_gradient_key_biases_move_by_adam_noise_only(four):
    """The leaves the comparison leaves out exist (text and HF towers' key biases) and only
    wander by Adam-scaled noise: at most one (warm-up scaled) lr per step."""
    for case in CASES:
        r = four[case]
        assert r["zero_grad_leaves"] >= 1
        assert r["zero_grad_moved"] <= STEPS * r["lr"], r


# ----- the experiment itself, as users run it (slow: ~1-2 min of compiling per run) -----


def _args(out_dir, loss, steps=6):
    return ["--tiny", "--steps", steps, "--eval-every", steps, "--loss", loss,
            "--n-images", 128, "--out-dir", out_dir]  # fmt: skip


def _params(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_same(a, b):
    keep = [k for k in a if not any(z in k for z in ZERO_GRAD)]
    assert len(keep) < len(a)
    num = np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in keep))
    assert num / np.sqrt(sum((a[k] ** 2).sum() for k in keep)) <= RTOL
    assert max(np.abs(a[k] - b[k]).max() for k in keep) <= ATOL


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_clip_experiment_on_1x4_and_2x2_devices_matches_1x1(tmp_path, loss):
    """``clip_contrastive`` on 1 process x 4 devices and through ``experiments.launch
    --processes 2 --devices-per-process 2`` ends with the params of 1 process x 1 device
    (``--devices 1``); the plan line and final.json give the global and per-device batch;
    process 0 alone prints and writes."""
    from test_distributed_experiments import _experiment, _finish

    dirs = {k: tmp_path / k for k in ("1x1", "1x4", "2x2")}
    runs = [
        _experiment("clip_contrastive", [*_args(dirs["1x1"], loss), "--devices", 1]),
        _experiment("clip_contrastive", _args(dirs["1x4"], loss)),
        _experiment("clip_contrastive", _args(dirs["2x2"], loss), devices=2, processes=2),
    ]
    outs = [_finish(p, timeout=600) for p in runs]
    assert "global batch 32 = 1 device x 32 (1 process)" in outs[0]
    assert "global batch 32 = 4 devices x 8 (1 process)" in outs[1]
    assert (
        "[p0] plan: CLIP" in outs[2] and "global batch 32 = 4 devices x 8 (2 processes)" in outs[2]
    )
    assert outs[2].count("done in") == 1 and "[p1] done in" not in outs[2]
    final = json.loads((dirs["2x2"] / "final.json").read_text())
    assert final["config"]["global_batch"] == 32 and final["config"]["per_device_batch"] == 8
    assert final["config"]["processes"] == 2 and final["config"]["devices"] == 4
    ref = _params(dirs["1x1"] / "clip_params.npz")
    for k in ("1x4", "2x2"):
        _assert_same(ref, _params(dirs[k] / "clip_params.npz"))


@pytest.mark.slow
def test_killing_one_clip_process_ends_the_other_within_30_s(tmp_path):
    """2 processes x 2 devices; SIGKILL process 1 after process 0's first evaluation: process 0
    exits non-zero within 30 s, its runtime naming task 1 as the peer that stopped (the
    coordination service's heartbeat timeout, 20 s in jaxgrad.training.distributed.initialize)."""
    from test_distributed import ROOT, _env

    from jaxgrad.training.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID

    port = free_port()
    args = [*_args(tmp_path / "run", "clip", steps=100_000), "--eval-every", 5]
    cmd = [sys.executable, "-m", "experiments.clip_contrastive", *map(str, args)]
    procs = []
    for i in range(2):
        env = _env(2, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", **{
            ENV_COORDINATOR: f"127.0.0.1:{port}", ENV_NUM_PROCESSES: "2", ENV_PROCESS_ID: str(i)})  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    try:
        seen = []
        for line in procs[0].stdout:
            seen.append(line)
            if line.startswith("step 5:"):
                break
        assert seen and seen[-1].startswith("step 5:"), "".join(seen)[-3000:]
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        out, _ = procs[0].communicate(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode != 0
    assert "stopped sending heartbeats" in out, out[-3000:]
    assert out.split("stopped sending heartbeats):", 1)[1].split()[0] == "1", out[-3000:]
    assert elapsed < 30, elapsed


if __name__ == "__main__":
    result = child()
    print(json.dumps(result))
