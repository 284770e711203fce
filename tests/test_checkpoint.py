"""Orbax checkpoints: exact round trips (params, optimizer state, keys, meta), atomicity, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgrad.training.checkpoint import Checkpointer
from jaxgrad.training.params_file import load_params, save_params
from jaxgrad.training.step import init_train_state, make_train_step

STANDARD_PROMOTION = "optax's int32 step counters (Adam); the toy model adds a [2] bias to [8, 2]"


def _loss(params, batch, key):
    noise = 0.1 * jax.random.normal(key, batch["x"].shape)  # the step key matters
    pred = jnp.tanh((batch["x"] + noise) @ params["w"] + params["b"])
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"mse": loss}


def _setup(key):
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"w": jax.random.normal(k1, (4, 2)), "b": jnp.zeros(2)}
    batch = {"x": jax.random.normal(k2, (8, 4)), "y": jax.random.normal(k3, (8, 2))}
    opt = optax.adam(1e-2)
    return init_train_state(params, opt), batch, make_train_step(_loss, opt, donate=False)


def _assert_trees_equal(a, b):
    def eq(x, y):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(x, y)

    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(eq, a, b)


def test_save_restore_is_exact_and_the_next_step_identical(tmp_path, key):
    state, batch, step = _setup(key)
    base_key = jax.random.key(7)
    for _ in range(3):
        state, _ = step(state, batch, base_key)
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(3, {"state": state, "key": base_key}, meta={"epoch": 3, "note": "x"})
        fresh, _, _ = _setup(jax.random.key(123))  # different values, same structure
        tree, meta = ckpt.restore({"state": fresh, "key": jax.random.key(0)})
    assert meta == {"epoch": 3, "note": "x"}
    _assert_trees_equal(tree, {"state": state, "key": base_key})
    assert isinstance(tree["state"], type(state))  # NamedTuple TrainState comes back as such
    a, ma = step(state, batch, base_key)
    b, mb = step(tree["state"], batch, tree["key"])
    _assert_trees_equal(a, b)
    assert float(ma["loss"]) == float(mb["loss"])


def test_keys_of_any_impl_round_trip(tmp_path):
    keys = {"threefry": jax.random.key(1), "rbg": jax.random.key(2, impl="rbg")}
    ckpt = Checkpointer(tmp_path / "k")
    ckpt.save(0, keys)
    like = {"threefry": jax.random.key(0), "rbg": jax.random.key(0, impl="rbg")}
    restored, meta = ckpt.restore(like)
    _assert_trees_equal(restored, keys)
    assert meta == {}


def test_keeps_the_last_n_and_restores_any_kept_step(tmp_path):
    ckpt = Checkpointer(tmp_path / "c", keep=2)
    assert ckpt.latest_step() is None
    for s in range(4):
        ckpt.save(s, {"x": jnp.full(3, float(s))})
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    tree, _ = ckpt.restore({"x": jnp.zeros(3)}, step=2)
    np.testing.assert_array_equal(tree["x"], [2.0, 2.0, 2.0])
    with pytest.raises(FileNotFoundError, match="no checkpoint 0"):
        ckpt.restore({"x": jnp.zeros(3)}, step=0)


def test_unfinished_temporary_directories_are_never_picked_up(tmp_path):
    ckpt = Checkpointer(tmp_path / "c")
    ckpt.save(1, {"x": jnp.ones(2)})
    # what a save killed half-way leaves behind: orbax's temporary directory for step 2
    (tmp_path / "c" / "2.orbax-checkpoint-tmp").mkdir()
    assert Checkpointer(tmp_path / "c").latest_step() == 1
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["1"]  # and it is cleaned up


def test_restore_errors(tmp_path):
    ckpt = Checkpointer(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="drop --resume"):
        ckpt.restore({"x": jnp.zeros(2)})
    ckpt.save(0, {"x": jnp.ones(2)})
    with pytest.raises(ValueError, match="y: missing from the checkpoint"):
        ckpt.restore({"x": jnp.zeros(2), "y": jnp.zeros(1)})
    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path / "d", keep=0)


def test_save_load_params_file(tmp_path, key):
    state, _, _ = _setup(key)
    path = save_params(tmp_path / "model.npz", state.params)
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temp file left
    _assert_trees_equal(load_params(path, state.params), state.params)
    with pytest.raises(ValueError, match="missing"):
        load_params(path, {**state.params, "extra": jnp.zeros(1)})
    with pytest.raises(ValueError, match=r"float32\[3, 2\]"):
        load_params(path, {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)})
    with pytest.raises(FileNotFoundError):
        load_params(tmp_path / "nope.npz", state.params)
