"""jaxgrad.training.loop: which batch each step trains on, the one-chunk-behind callback, the masked
scanned evaluation, and the compiled-once model init.

The model is a linear least-squares fit on tiny "images" (uint8 [N, 1, 1, 1]), so every step
can be replayed by hand with ``make_train_step`` on the batch the loop should have gathered.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxgrad.data.pipeline import epoch_indices
from jaxgrad.models.vit import ViT, ViTConfig
from jaxgrad.training.loop import (
    abstract_params,
    chunk_plan,
    init_params,
    make_evaluate,
    make_run_chunk,
    train_epoch,
    train_steps,
)
from jaxgrad.training.step import init_train_state, make_train_step

N, B = 22, 4  # 5 full batches per epoch; the last 2 examples are dropped each epoch


def loss_fn(params, batch, step_key):
    x = batch["images"].reshape(-1).astype(jnp.float32) / 255.0
    y = batch["labels"].astype(jnp.float32)
    noise = 1e-3 * jax.random.normal(step_key, x.shape)  # the step key must be the right one
    pred = params["w"] * x + params["b"] + noise
    return jnp.mean((pred - y) ** 2), {"y_sum": jnp.sum(y)}


@pytest.fixture(scope="module")
def setup():
    k = jax.random.key(3)
    images = jax.random.randint(k, (N, 1, 1, 1), 0, 256, jnp.int32).astype(jnp.uint8)
    labels = jnp.arange(N, dtype=jnp.int32)  # the label names the example: batches are visible
    opt = optax.sgd(0.1)
    params = {"w": jnp.float32(0.5), "b": jnp.float32(-1.0)}
    keys = jax.random.split(jax.random.key(4))
    return (images, labels), opt, params, keys[0], keys[1]


def _fresh(params, opt):
    """A state on copies of ``params``: the loop donates (deletes) the state it is given."""
    return init_train_state(jax.tree.map(jnp.copy, params), opt)


def _by_hand(setup, start, stop):
    """Steps start..stop-1 with one make_train_step call each, batches from epoch_indices."""
    data, opt, params, data_key, step_key = setup
    step = make_train_step(loss_fn, opt, donate=False)
    state = init_train_state(params, opt)._replace(step=jnp.int32(start))
    spe, losses, ysums = N // B, [], []
    for s in range(start, stop):
        idx = epoch_indices(jax.random.fold_in(data_key, s // spe), N, B)[s % spe]
        state, m = step(state, {"images": data[0][idx], "labels": data[1][idx]}, step_key)
        losses.append(float(m["loss"]))
        ysums.append(float(m["y_sum"]))
    return state, np.array(losses), np.array(ysums)


def test_a_step_range_across_epochs_trains_on_the_batches_of_its_epochs(setup):
    data, opt, params, data_key, step_key = setup
    run = make_run_chunk(loss_fn, opt)
    state = _fresh(params, opt)._replace(step=jnp.int32(3))
    # steps 3..11 span epochs 0, 1 and 2 (5 steps each); chunks of at most 4
    state, m = train_steps(run, state, data, start=3, stop=12, batch_size=B, max_chunk=4,
                           data_key=data_key, step_key=step_key)  # fmt: skip
    ref, losses, ysums = _by_hand(setup, 3, 12)
    np.testing.assert_array_equal(m["y_sum"], ysums)  # exactly the same examples per step
    np.testing.assert_allclose(m["loss"], losses, rtol=1e-6)
    np.testing.assert_allclose(state.params["w"], ref.params["w"], rtol=1e-6)
    assert int(state.step) == 12


def test_on_chunk_reports_each_finished_chunk_once_in_order(setup):
    data, opt, params, data_key, step_key = setup
    run, seen = make_run_chunk(loss_fn, opt), []
    state = _fresh(params, opt)
    state, m = train_epoch(run, state, data, epoch=1, batch_size=B, max_chunk=2,
                           data_key=data_key, step_key=step_key,
                           on_chunk=lambda done, ms: seen.append((done, ms)))  # fmt: skip
    assert [d for d, _ in seen] == [1, 2, 3, 4, 5]  # chunk_plan(5, 2): five chunks of 1
    for _, ms in seen:
        assert isinstance(ms["loss"], np.ndarray)  # on the host: the chunk has finished
    np.testing.assert_array_equal(np.concatenate([ms["y_sum"] for _, ms in seen]), m["y_sum"])
    # epoch 1 of the run is steps 5..9 (the state's counter started at 0 here, so keys differ:
    # compare the examples, which depend on the epoch only)
    np.testing.assert_array_equal(m["y_sum"], _by_hand(setup, 5, 10)[2])


def test_chunk_plan_covers_every_step_with_few_shapes():
    assert chunk_plan(781, 64) == [11] * 71  # the seed: 50,000 // 64 steps, one shape
    assert chunk_plan(20, 64) == [20]
    assert chunk_plan(97, 64) == [64, 33]  # prime: full chunks + one remainder
    for steps, cap in [(1, 8), (12, 5), (1000, 64), (389, 50)]:
        plan = chunk_plan(steps, cap)
        assert sum(plan) == steps and max(plan) <= cap and len(set(plan)) <= 2


def test_evaluate_masks_the_padding_and_stacks_in_order():
    images = jnp.arange(7, dtype=jnp.uint8).reshape(7, 1, 1, 1)
    labels = jnp.arange(10, 17, dtype=jnp.int32)
    metric = lambda p, x, y: {"x": x.reshape(-1).astype(jnp.float32) * p, "y": y}
    # batches of 3: 3 + 3 + 1 real examples, 2 padded ones (which repeat real indices)
    sums = make_evaluate(metric, batch_size=3)(jnp.float32(2.0), images, labels)
    assert float(sums["x"]) == 2.0 * sum(range(7))
    assert float(sums["y"]) == sum(range(10, 17))
    stacked = make_evaluate(metric, batch_size=3, reduce="stack")(jnp.float32(1.0), images, labels)
    np.testing.assert_array_equal(stacked["y"], np.arange(10, 17))
    with pytest.raises(ValueError, match="reduce must be"):
        make_evaluate(metric, batch_size=3, reduce="mean")


def test_init_params_matches_the_eager_constructor():
    cfg = ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, dim_head=4, mlp_dim=8)
    key = jax.random.key(0)
    graphdef, params, rest = init_params(ViT, cfg, key, compiler_options=None)
    eager = nnx.state(ViT(cfg, rngs=nnx.Rngs(params=key)), nnx.Param)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), params, eager)
    assert graphdef == abstract_params(ViT, cfg)[0] and not jax.tree.leaves(rest)
    other = init_params(ViT, cfg, jax.random.key(1), compiler_options=None)[1]
    assert not all(map(np.array_equal, jax.tree.leaves(other), jax.tree.leaves(params)))
