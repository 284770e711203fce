"""Same seed, same bits: two training runs give the same final checkpoint hash on CPU.

Across processes (the second run is this file run as a script, started first so that it trains
while this process does) with a dropout MLP, which compiles quickly; within one process with
a one-block ViT. Runs save through :class:`jaxgrad.training.checkpoint.Checkpointer` and hash what they
restore. :func:`jaxgrad.inspect.determinism.tree_hash` itself is checked to see
every bit, dtype, shape, leaf name and key.
"""

import functools
import json
import mmap
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
import pytest
from flax import nnx

from jaxgrad.data.pipeline import epoch_indices, normalize, take
from jaxgrad.data.synthetic import make_synthetic
from jaxgrad.inspect.determinism import GPU_DETERMINISM_FLAG, tree_hash
from jaxgrad.models.vit import ViT, ViTConfig
from jaxgrad.training.checkpoint import Checkpointer
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state, make_train_step

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"

CFG = ViTConfig(image_size=8, patch_size=4, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32)
N_IMAGES, BATCH, STEPS = 32, 8, 5  # crosses an epoch boundary: two permutations are drawn
OPT = optax.adamw(1e-3)


def vit_model():
    """``(loss_fn, init_params(key))`` for a one-block ViT with dropout on."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: ViT(CFG, rngs=nnx.Rngs(0))))

    def loss_fn(params, batch, key):
        """Cross entropy of the ViT. images uint8 [B, 8, 8, 3], labels int32 [B]."""
        logits = nnx.merge(graphdef, params)(
            normalize(batch["images"]), deterministic=False, rngs=key
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        return loss, {}

    def init_params(key):
        return nnx.state(ViT(CFG, rngs=nnx.Rngs(params=key)), nnx.Param)

    return loss_fn, init_params


def mlp_model():
    """``(loss_fn, init_params(key))`` for a dropout MLP: compiles in a fraction of the ViT's time."""

    def loss_fn(params, batch, key):
        x = normalize(batch["images"]).reshape(batch["images"].shape[0], -1)
        h = jax.nn.relu(x @ params["w1"])
        h = jnp.where(jax.random.bernoulli(key, 0.9, h.shape), h / 0.9, 0.0)
        loss = optax.softmax_cross_entropy_with_integer_labels(h @ params["w2"], batch["labels"])
        return loss.mean(), {}

    def init_params(key):
        k1, k2 = jax.random.split(key)
        return {
            "w1": jax.random.normal(k1, (192, 32)) * 0.05,
            "w2": jax.random.normal(k2, (32, 10)) * 0.05,
        }

    return loss_fn, init_params


@functools.cache
def program(model):
    """``(init(seed) -> run, train(run) -> run)`` for ``model`` in {"vit", "mlp"}; one compile."""
    loss_fn, init_params = {"vit": vit_model, "mlp": mlp_model}[model]()
    data = make_synthetic(N_IMAGES, seed=3, image_size=8)
    images, labels = jnp.asarray(data.images), jnp.asarray(data.labels)

    @jax.jit
    def init(seed):
        keys = named_keys(jax.random.key(seed), "init", "dropout", "data")
        state = init_train_state(init_params(keys["init"]), OPT)
        return {"state": state, "dropout": keys["dropout"], "data": keys["data"]}

    step = make_train_step(loss_fn, OPT)

    @jax.jit
    def batch_of_step(data_key, s):
        epoch, i = jnp.divmod(s, N_IMAGES // BATCH)
        order = epoch_indices(jax.random.fold_in(data_key, epoch), N_IMAGES, BATCH)
        return take(images, labels, order[i])

    def train(run):
        state = run["state"]
        for s in range(STEPS):
            state, _ = step(state, batch_of_step(run["data"], jnp.int32(s)), run["dropout"])
        return {**run, "state": state}

    return init, train


def run_and_checkpoint(model, seed, directory) -> dict:
    """Train ``model`` from ``seed``, save the final run, restore it; hashes of both."""
    init, train = program(model)
    final = train(init(jnp.int32(seed)))
    with Checkpointer(directory, keep=1) as ckpt:
        ckpt.save(STEPS, final, meta={"seed": seed})
        restored, _ = ckpt.restore(final)
    return {"final": tree_hash(final), "checkpoint": tree_hash(restored)}


@pytest.fixture(scope="module")
def other_process(spawn, tmp_path_factory):
    """Start the second run now; the test collects its hashes when it needs them."""
    return spawn([__file__, tmp_path_factory.mktemp("second_run") / "ckpt"])


def test_same_seed_in_two_processes_gives_the_same_checkpoint_hash(other_process, tmp_path):
    mine = run_and_checkpoint("mlp", 0, tmp_path / "ckpt")
    stdout, stderr = other_process.communicate(timeout=180)
    assert other_process.returncode == 0, stderr[-3000:]
    theirs = json.loads(stdout.strip().splitlines()[-1])
    assert mine["final"] == mine["checkpoint"]  # the checkpoint holds exactly the final state
    assert theirs == mine
    other_seed = run_and_checkpoint("mlp", 1, tmp_path / "seed1")  # the hash is not constant
    assert other_seed["checkpoint"] != mine["checkpoint"]


@pytest.mark.slow  # a ViT compile: ~10 s idle, over a minute on a loaded 2-core machine
def test_vit_same_seed_same_hash_other_seed_other_hash(tmp_path):
    first = run_and_checkpoint("vit", 0, tmp_path / "a")
    assert run_and_checkpoint("vit", 0, tmp_path / "b") == first
    assert run_and_checkpoint("vit", 1, tmp_path / "c")["checkpoint"] != first["checkpoint"]


def test_tree_hash_sees_one_bit_dtype_shape_name_and_key():
    base = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "k": jax.random.key(0)}
    h = tree_hash(base)
    assert h == tree_hash({"w": base["w"].copy(), "k": jax.random.key(0)})
    flipped = base["w"].copy()
    flipped.view(np.uint32)[0, 0] ^= 1  # one bit of one float
    variants = [
        {**base, "w": flipped},
        {**base, "w": base["w"].astype(np.float64)},
        {**base, "w": base["w"].reshape(3, 2)},
        {"v": base["w"], "k": base["k"]},
        {**base, "k": jax.random.key(1)},
        {**base, "k": jax.random.key(0, impl="rbg")},
    ]
    hashes = {tree_hash(v) for v in variants}
    assert h not in hashes and len(hashes) == len(variants)


def test_gpu_determinism_flag_is_a_known_xla_flag():
    """The documented flag exists in the installed jaxlib (names do change between releases)."""
    name = GPU_DETERMINISM_FLAG.removeprefix("--").split("=")[0]
    lib = Path(jaxlib.__file__).parent
    found = []
    for so in lib.glob("*.so"):
        with open(so, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            found.append(m.find(name.encode()) >= 0)
    assert any(found), f"{name} not found in {lib}: check the flag's current name"


if __name__ == "__main__":
    print(json.dumps(run_and_checkpoint("mlp", 0, sys.argv[1])))
