"""Exact resume and crash-safe checkpoints.

- N steps + save + restore + N steps is bit-equal to 2N straight steps on CPU: params,
  optimizer state, step counter, the keys and the data order (a fresh permutation per epoch
  from ``fold_in(data_key, epoch)``, resumed mid-epoch) all come back exactly.
- A process SIGKILLed at a chosen point inside ``Checkpointer.save`` leaves the previous
  checkpoint restorable and nothing that ``latest_step`` / a resume would pick up; training
  resumed from it still matches the straight run, and the killed step can be saved again.
  The kills run this file as a script in subprocesses (both at once, to save wall time).
"""

import functools
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgrad.data.pipeline import epoch_indices, normalize, take
from jaxgrad.data.synthetic import make_synthetic
from jaxgrad.inspect.determinism import tree_hash
from jaxgrad.training.checkpoint import Checkpointer
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state, make_train_step

N_IMAGES, BATCH = 48, 16  # 3 steps per epoch: 4 + 4 steps cross an epoch boundary mid-run
HALF = 4
KILL_POINTS = ("after_tmp_dir_created", "before_commit_rename")
OPT = optax.adamw(3e-3)


STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"


def loss_fn(params, batch, key):
    """Dropout MLP on 8x8 images. images uint8 [B, 8, 8, 3], labels int32 [B]."""
    x = normalize(batch["images"]).reshape(batch["images"].shape[0], -1)
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    h = jnp.where(jax.random.bernoulli(key, 0.8, h.shape), h / 0.8, 0.0)
    logits = h @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean(), {}


@functools.partial(jax.jit, static_argnums=0)
def fresh_run(seed=0):
    """The state and keys a run starts from: everything derives from ``seed`` (one compile)."""
    keys = named_keys(seed, "init", "dropout", "data")
    k1, k2 = jax.random.split(keys["init"])
    params = {
        "w1": jax.random.normal(k1, (192, 32)) * 0.05,
        "b1": jnp.zeros((32,)),
        "w2": jax.random.normal(k2, (32, 10)) * 0.05,
        "b2": jnp.zeros((10,)),
    }
    return {
        "state": init_train_state(params, OPT),
        "dropout": keys["dropout"],
        "data": keys["data"],
    }


@functools.cache
def data_and_step():
    """Built once per process: one compile of the step serves every run."""
    data = make_synthetic(N_IMAGES, seed=1, image_size=8)
    images, labels = jnp.asarray(data.images), jnp.asarray(data.labels)

    @jax.jit
    def batch_of_step(data_key, s):
        """Batch ``s % spe`` of epoch ``s // spe``: a fresh permutation per epoch."""
        epoch, i = jnp.divmod(s, N_IMAGES // BATCH)
        order = epoch_indices(jax.random.fold_in(data_key, epoch), N_IMAGES, BATCH)
        return take(images, labels, order[i])

    return batch_of_step, make_train_step(loss_fn, OPT)


def train(run, start, stop):
    """Steps ``start..stop-1`` of a run; the data order depends only on the data key and step."""
    batch_of_step, step = data_and_step()
    state = run["state"]
    for s in range(start, stop):
        state, _ = step(state, batch_of_step(run["data"], jnp.int32(s)), run["dropout"])
    return {**run, "state": state}


def save(directory, run, step):
    with Checkpointer(directory, keep=2) as ckpt:
        ckpt.save(step, run, meta={"step": step})


def restore(directory):
    with Checkpointer(directory, keep=2) as ckpt:
        run, meta = ckpt.restore(fresh_run())  # the structure; the values must come back
    return run, meta["step"]


@pytest.fixture(scope="module")
def straight():
    """The hash after 2N uninterrupted steps."""
    return tree_hash(train(fresh_run(), 0, 2 * HALF))


def test_n_plus_resume_plus_n_equals_2n_bit_for_bit(tmp_path, straight, first_half):
    # training moves the state, so the equality below is not vacuous
    assert tree_hash(first_half) != straight
    save(tmp_path / "ckpt", first_half, HALF)
    run, step = restore(tmp_path / "ckpt")
    assert step == HALF and int(run["state"].step) == HALF
    assert tree_hash(train(run, step, 2 * HALF)) == straight


def test_restored_tree_is_bit_equal_including_keys(tmp_path):
    run = train(fresh_run(), 0, 2)
    save(tmp_path / "ckpt", run, 2)
    back, _ = restore(tmp_path / "ckpt")
    assert jax.random.key_impl(back["data"]) == jax.random.key_impl(run["data"])
    np.testing.assert_array_equal(
        jax.random.key_data(back["data"]), jax.random.key_data(run["data"])
    )
    assert tree_hash(back) == tree_hash(run)


# --- kill during save -----------------------------------------------------------------------


def _install_kill(point):
    """Make this process SIGKILL itself at ``point`` inside orbax's atomic save."""
    from orbax.checkpoint._src.path import async_path, atomicity

    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if point == "after_tmp_dir_created":  # the temp folder exists, no array written yet
        create = atomicity.AtomicRenameTemporaryPath.create

        async def create_then_die(self):
            await create(self)
            die()

        atomicity.AtomicRenameTemporaryPath.create = create_then_die
    elif point == "before_commit_rename":  # every file written, not yet renamed into place

        async def rename_dies(*args, **kwargs):
            die()

        async_path.rename = rename_dies
    else:
        raise ValueError(f"unknown kill point {point!r}, choose from {KILL_POINTS}")


def child(directory, point):
    """Die inside the save of step 2N into ``directory`` (which holds step N).

    ``keep=1``: orbax must not delete step N before step 2N is complete. What is saved does
    not matter (the save never completes), so the child compiles nothing and starts fast.
    """
    _install_kill(point)
    with Checkpointer(directory, keep=1) as ckpt:
        ckpt.save(2 * HALF, {"junk": np.arange(100_000, dtype=np.float32)}, meta={"step": -1})
    print("the save was not interrupted", flush=True)


@pytest.fixture(scope="module")
def first_half():
    return train(fresh_run(), 0, HALF)


@pytest.fixture(scope="module")
def killed(tmp_path_factory, first_half):
    """Save step N into one folder per kill point, then kill a save of step 2N into each
    (the children run concurrently); return ``{point: folder}``."""
    procs = {}
    for point in KILL_POINTS:
        d = tmp_path_factory.mktemp(point) / "ckpt"
        save(d, first_half, HALF)
        cmd = [sys.executable, __file__, str(d), point]
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        procs[point] = (d, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env))
    for point, (_, p) in procs.items():
        _, stderr = p.communicate(timeout=120)
        assert p.returncode == -signal.SIGKILL, f"{point}: rc {p.returncode}\n{stderr[-3000:]}"
    return {point: d for point, (d, _) in procs.items()}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_during_save_keeps_previous_checkpoint(killed, point, first_half):
    directory = killed[point]
    leftovers = [p.name for p in directory.iterdir() if p.name != str(HALF)]
    with Checkpointer(directory) as ckpt:
        assert ckpt.latest_step() == HALF  # the half-written step 2N is invisible
        assert ckpt.all_steps() == [HALF]
    run, step = restore(directory)
    assert step == HALF and tree_hash(run) == tree_hash(first_half)
    # what the kill left behind is orbax's temp folder, never a step folder
    assert all(".orbax-checkpoint-tmp" in name for name in leftovers), leftovers


@pytest.mark.parametrize("point", KILL_POINTS)
def test_resume_after_kill_matches_straight_run_and_can_resave(killed, point, straight):
    directory = killed[point]
    run, step = restore(directory)
    run = train(run, step, 2 * HALF)
    assert tree_hash(run) == straight
    save(directory, run, 2 * HALF)  # the killed step's temp folder does not block a new save
    with Checkpointer(directory) as ckpt:
        assert ckpt.all_steps() == [HALF, 2 * HALF]
    assert [p.name for p in directory.iterdir() if "tmp" in p.name] == []


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2])


# --- the ViT experiment's own --resume (slow: three command-line runs) -----------------------


@pytest.mark.slow
def test_vit_experiment_resume_equals_straight_run(tmp_path):
    """``--epochs 1`` then ``--epochs 2 --resume`` gives the params of ``--epochs 2``, bit for bit.

    The seed recipe (constant learning rate) makes the first run's epoch 1 the same as the
    straight run's. The runs share a persistent compilation cache, so only the first compiles.
    """
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }

    def cli(*args):
        cmd = [sys.executable, "-m", "experiments.vit_cifar10", "--tiny", "--no-progress", *args]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout

    cli("--epochs", "2", "--out-dir", str(tmp_path / "straight"))
    cli("--epochs", "1", "--out-dir", str(tmp_path / "resumed"))
    assert "resumed from" in cli(
        "--epochs", "2", "--resume", "--out-dir", str(tmp_path / "resumed")
    )

    def params(run):
        with np.load(tmp_path / run / "vit_params.npz") as z:
            return {k: z[k] for k in z.files}

    assert tree_hash(params("resumed")) == tree_hash(params("straight"))
