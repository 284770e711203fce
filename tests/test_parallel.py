"""Data-parallel training on jax.sharding equals single-device training for the same global batch.

The 8-device comparison runs this file as a script in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set before jax starts,
and the main test process has one CPU device); the parent asserts on the JSON it prints.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgrad.training.guard import nonfinite_counts, skip_nonfinite
from jaxgrad.training.parallel import (
    DATA,
    data_parallel,
    make_mesh,
    place_state,
    replicated,
    shard_batch,
    state_shardings,
    with_batch_sharding,
)
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state, make_multi_step, make_train_step

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"

N_DEV = 8
GLOBAL_BATCH = 32
STEPS = 4


def mlp_loss(params, batch, key):
    """Dropout MLP + softmax cross entropy, mean over the global batch. x [B, 16], y [B]."""
    h = jax.nn.relu(batch["x"] @ params["w1"] + params["b1"])
    keep = jax.random.bernoulli(key, 0.9, h.shape)  # dropout: checks sharded RNG equality
    h = jnp.where(keep, h / 0.9, 0.0)
    logits = h @ params["w2"] + params["b2"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, {"acc": (logits.argmax(-1) == batch["y"]).mean()}


def setup():
    """Params, STEPS global batches and the dropout key (numpy RNG: no per-op compiles)."""
    rng = np.random.default_rng(0)
    f32 = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32))
    params = {
        "w1": f32(16, 64) * 0.3,
        "b1": jnp.zeros((64,), jnp.float32),
        "w2": f32(64, 10) * 0.3,
        "b2": jnp.zeros((10,), jnp.float32),
    }
    batches = [
        {"x": f32(GLOBAL_BATCH, 16), "y": jnp.asarray(rng.integers(0, 10, GLOBAL_BATCH, np.int32))}
        for _ in range(STEPS)
    ]
    return params, batches, named_keys(0, "dropout")["dropout"]


def fresh(params):
    """A copy: the steps donate their input state, so each run needs its own buffers."""
    return jax.tree.map(jnp.copy, params)


def optimizer():
    return optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))


def train_plain(params, batches, key):
    opt = optimizer()
    step = make_train_step(mlp_loss, opt)
    state, losses = init_train_state(fresh(params), opt), []
    for b in batches:
        state, m = step(state, b, key)
        losses.append(float(m["loss"]))
    return state, losses


def train_parallel(params, batches, key, mesh, *, shard_params=False):
    opt = optimizer()
    state = init_train_state(fresh(params), opt)
    sh = state_shardings(state, mesh, shard_params=shard_params, min_size=256)
    step = data_parallel(make_train_step(mlp_loss, opt, jit=False), mesh, state_sharding=sh)
    state, losses = place_state(state, mesh, shard_params=shard_params, min_size=256), []
    for b in batches:
        state, m = step(state, shard_batch(b, mesh), key)
        losses.append(float(m["loss"]))
    return state, losses


def max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def child() -> dict:
    """Runs with 8 CPU devices; returns what the parent asserts on."""
    assert jax.device_count() == N_DEV, jax.devices()
    params, batches, key = setup()
    mesh = make_mesh(N_DEV)
    ref, ref_losses = train_plain(params, batches, key)
    dp, dp_losses = train_parallel(params, batches, key, mesh)
    fsdp, fsdp_losses = train_parallel(params, batches, key, mesh, shard_params=True)

    opt = optimizer()
    multi = data_parallel(make_multi_step(mlp_loss, opt, jit=False), mesh, batch_axis=1)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)  # [K, B, ...]
    ms, _ = multi(
        place_state(init_train_state(fresh(params), opt), mesh),
        shard_batch(stacked, mesh, batch_axis=1),
        key,
    )
    # A step that gathers its batch on the device from a replicated dataset (as the ViT
    # experiment does): plain jit on replicated inputs, the batch split by a constraint.
    dataset = jax.device_put(
        jax.tree.map(lambda *xs: jnp.concatenate(xs), *batches), replicated(mesh)
    )
    gather_loss = with_batch_sharding(mlp_loss, mesh)

    def gather_step_fn(state, idx, key):
        batch = jax.tree.map(lambda a: a[idx], dataset)
        return make_train_step(gather_loss, opt, jit=False)(state, batch, key)

    gather_step = jax.jit(gather_step_fn)
    gs = place_state(init_train_state(fresh(params), opt), mesh)
    hlo = gather_step.lower(gs, jnp.arange(GLOBAL_BATCH), key).compile().as_text()
    for i in range(STEPS):
        gs, _ = gather_step(gs, jnp.arange(i * GLOBAL_BATCH, (i + 1) * GLOBAL_BATCH), key)
    # The non-finite guard under sharding: a NaN in one device's rows skips the whole step.
    guarded = skip_nonfinite(optimizer())
    bad = [batches[0], {**batches[1], "x": batches[1]["x"].at[5, 0].set(jnp.nan)}, batches[2]]
    guard_step = data_parallel(make_train_step(mlp_loss, guarded, jit=False), mesh)
    g8 = place_state(init_train_state(fresh(params), guarded), mesh)
    g1 = init_train_state(fresh(params), guarded)
    guard_step1 = make_train_step(mlp_loss, guarded)
    for b in bad:
        g8, _ = guard_step(g8, shard_batch(b, mesh), key)
        g1, _ = guard_step1(g1, b, key)
    try:
        shard_batch({"x": jnp.zeros((30, 16))}, mesh)
        indivisible = ""
    except ValueError as e:
        indivisible = str(e)
    x = shard_batch(batches[0], mesh)["x"]
    return {
        "ref_losses": ref_losses,
        "dp_losses": dp_losses,
        "fsdp_losses": fsdp_losses,
        "dp_param_diff": max_diff(ref.params, dp.params),
        "fsdp_param_diff": max_diff(ref.params, fsdp.params),
        "multi_param_diff": max_diff(ref.params, ms.params),
        "gather_param_diff": max_diff(ref.params, gs.params),
        "guard_skipped": int(nonfinite_counts(g8.opt_state)["nonfinite_skipped"]),
        "guard_param_diff": max_diff(g1.params, g8.params),
        "gather_all_reduces": hlo.count("all-reduce("),  # the gradient sum over devices
        "param_scale": max(
            float(np.max(np.abs(np.asarray(p)))) for p in jax.tree.leaves(ref.params)
        ),
        "auto_mesh_size": make_mesh().size,  # no --devices: every visible device
        "batch_shards": len(x.addressable_shards),
        "batch_shard_rows": x.addressable_shards[0].data.shape[0],
        "dp_params_replicated": all(p.sharding.is_fully_replicated for p in jax.tree.leaves(dp)),
        "fsdp_w1_spec": str(fsdp.params["w1"].sharding.spec),
        "fsdp_w1_shard_shape": list(fsdp.params["w1"].addressable_shards[0].data.shape),
        "indivisible_error": indivisible,
    }


@pytest.fixture(scope="module", autouse=True)
def eight_device_child(spawn):
    """Start the 8-device child at once, so it runs while the 1-device tests below do."""
    return spawn([__file__], XLA_FLAGS=f"--xla_force_host_platform_device_count={N_DEV}")


@pytest.fixture(scope="module")
def eight_devices(eight_device_child):
    stdout, stderr = eight_device_child.communicate(timeout=180)
    assert eight_device_child.returncode == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_one_device_mesh_is_the_plain_step_bit_for_bit():
    params, batches, key = setup()
    ref, ref_losses = train_plain(params, batches, key)
    mesh = make_mesh()  # all (= 1) devices
    assert mesh.shape[DATA] == jax.device_count() == 1
    dp, dp_losses = train_parallel(params, batches, key, mesh)
    assert dp_losses == ref_losses
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(dp)):
        np.testing.assert_array_equal(a, b)


def test_more_devices_than_visible_says_how_to_simulate():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count=4"):
        make_mesh(4)
    with pytest.raises(ValueError, match="positive integer"):
        make_mesh(0)


def test_jitted_step_is_rejected_with_the_fix():
    step = make_train_step(mlp_loss, optimizer())
    with pytest.raises(TypeError, match="jit=False"):
        data_parallel(step, make_mesh())


def test_batch_without_batch_axis_is_rejected():
    with pytest.raises(ValueError, match="needs a batch dimension at axis 1"):
        shard_batch({"x": jnp.zeros((4,))}, make_mesh(), batch_axis=1)


def test_eight_way_data_parallel_matches_single_device(eight_devices):
    r = eight_devices
    np.testing.assert_allclose(r["dp_losses"], r["ref_losses"], rtol=1e-5)
    assert r["dp_param_diff"] <= 1e-5 * r["param_scale"]
    # the losses change over training: the comparison is not between two untrained models
    assert abs(r["ref_losses"][-1] - r["ref_losses"][0]) > 1e-3


def test_batch_is_split_and_params_stay_replicated(eight_devices):
    assert eight_devices["auto_mesh_size"] == N_DEV
    assert eight_devices["batch_shards"] == N_DEV
    assert eight_devices["batch_shard_rows"] == GLOBAL_BATCH // N_DEV
    assert eight_devices["dp_params_replicated"]


def test_sharded_params_fsdp_match_single_device(eight_devices):
    r = eight_devices
    assert r["fsdp_w1_spec"] == str(jax.sharding.PartitionSpec(None, DATA))  # 64 is the big dim
    assert r["fsdp_w1_shard_shape"] == [16, 64 // N_DEV]
    np.testing.assert_allclose(r["fsdp_losses"], r["ref_losses"], rtol=1e-5)
    assert r["fsdp_param_diff"] <= 1e-5 * r["param_scale"]


def test_scanned_multi_step_shards_batch_axis_one(eight_devices):
    r = eight_devices
    assert r["multi_param_diff"] <= 1e-5 * r["param_scale"]


def test_batch_gathered_on_device_and_constrained_matches(eight_devices):
    r = eight_devices
    assert r["gather_param_diff"] <= 1e-5 * r["param_scale"]
    assert r["gather_all_reduces"] > 0  # really split: gradients are summed across devices


def test_guard_skips_a_nan_on_one_device_for_all(eight_devices):
    assert eight_devices["guard_skipped"] == 1
    assert eight_devices["guard_param_diff"] <= 1e-5 * eight_devices["param_scale"]


def test_indivisible_global_batch_names_the_fix(eight_devices):
    msg = eight_devices["indivisible_error"]
    assert "30" in msg and "not divisible by the 8 devices" in msg and "--batch-size" in msg


if __name__ == "__main__":
    print(json.dumps(child()))


@pytest.mark.slow
def test_vit_experiment_on_8_devices_matches_1_device(tmp_path):
    """``--devices 8`` (8 simulated CPU devices) vs the default on 1 device: same epoch."""
    args = ["--tiny", "--epochs", "1", "--batch-size", "40", "--no-progress"]
    runs = {}
    for n in (1, N_DEV):
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        if n > 1:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
        cmd = [sys.executable, "-m", "experiments.vit_cifar10", *args, "--devices", str(n)]
        cmd += ["--out-dir", str(tmp_path / str(n))]
        runs[n] = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    for n, p in runs.items():
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"{n} devices: {err[-3000:]}"
    with (
        np.load(tmp_path / "1" / "vit_params.npz") as a,
        np.load(tmp_path / "8" / "vit_params.npz") as b,
    ):
        scale = max(float(np.abs(a[k]).max()) for k in a.files)
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a.files) <= 1e-5 * scale
    m1, m8 = (
        json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[-1])
        for d in ("1", "8")
    )
    np.testing.assert_allclose(m8["train_loss"], m1["train_loss"], rtol=1e-5)
    assert m8["nonfinite_skipped"] == m1["nonfinite_skipped"] == 0
