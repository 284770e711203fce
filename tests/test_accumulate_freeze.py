"""Gradient accumulation (functional, ``with_refs``, optax.MultiSteps) and parameter freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgrad.autodiff.accumulate import (
    accumulate,
    accumulating_optimizer,
    grad_refs,
    read_refs,
    zero_grad,
)
from jaxgrad.autodiff.autograd import pullback
from jaxgrad.autodiff.freeze import frozen_mask, optimizer_with_frozen, path_str
from jaxgrad.training.rng import named_keys

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"

F32 = jnp.float32


def f(x):
    return 3 * x**2 + 2 * x + 1  # f'(2) = 14


def test_functional_accumulator_sums_like_pytorch_grad():
    x = jnp.array(2.0, F32)
    acc, seen = None, []
    for _ in range(3):
        acc = accumulate(acc, jax.grad(f)(x))
        seen.append(float(acc))
    assert seen == [14.0, 28.0, 42.0]  # k · (6x + 2)
    assert float(zero_grad(acc)) == 0.0
    assert float(accumulate(zero_grad(acc), jax.grad(f)(x))) == 14.0


def test_with_refs_accumulates_into_new_ref_cells():
    x = {"a": jnp.array(2.0, F32), "b": jnp.array([1.0, -1.0], F32)}
    fn = lambda p: f(p["a"]) + jnp.sum(p["b"] ** 2)
    (refs,) = grad_refs(x)
    pb = pullback(fn, x)
    for k in (1, 2, 3):
        pb.accumulate_into((refs,))
        got = read_refs(refs)
        assert float(got["a"]) == 14.0 * k
        np.testing.assert_array_equal(got["b"], k * 2 * x["b"])


def test_with_refs_rejects_a_vector_output_without_cotangent():
    pb = pullback(lambda x: x * 2, jnp.ones(2, F32))
    with pytest.raises(ValueError, match="only for scalar outputs"):
        pb.accumulate_into(grad_refs(jnp.ones(2, F32)))


def test_accumulate_jit_matches_eager():
    g1 = {"w": jnp.array([1.0, 2.0], F32)}
    g2 = {"w": jnp.array([0.5, -1.0], F32)}
    eager = accumulate(accumulate(zero_grad(g1), g1), g2)
    jitted = jax.jit(lambda a, b: accumulate(accumulate(zero_grad(a), a), b))(g1, g2)
    np.testing.assert_array_equal(eager["w"], [1.5, 1.0])
    np.testing.assert_array_equal(jitted["w"], eager["w"])


@pytest.mark.parametrize("mean", [True, False], ids=["mean", "sum"])
def test_multisteps_mean_vs_sum(mean):
    opt = accumulating_optimizer(optax.sgd(1.0), every_k=2, mean=mean)
    params = jnp.zeros(2, F32)
    state = opt.init(params)
    g1, g2 = jnp.array([1.0, 3.0], F32), jnp.array([3.0, 5.0], F32)
    upd1, state = opt.update(g1, state, params)
    np.testing.assert_array_equal(upd1, [0.0, 0.0])  # nothing applied until every_k grads
    upd2, state = opt.update(g2, state, params)
    expected = -(g1 + g2) / 2 if mean else -(g1 + g2)  # mean [2, 4]; PyTorch's sum [4, 8]
    np.testing.assert_array_equal(upd2, expected)


def test_accumulating_optimizer_rejects_bad_every_k():
    with pytest.raises(ValueError, match="every_k must be >= 1"):
        accumulating_optimizer(optax.sgd(1.0), every_k=0)


# ---- freezing -------------------------------------------------------------------------------


def _params():
    return {
        "backbone": {"kernel": jnp.full((2, 3), 0.5, F32), "bias": jnp.ones(3, F32)},
        "head": {"kernel": jnp.full((3, 1), -0.5, F32), "bias": jnp.ones(1, F32)},
    }


def test_frozen_mask_by_prefix_and_predicate():
    p = _params()
    assert frozen_mask(p, ["backbone"]) == {
        "backbone": {"kernel": True, "bias": True},
        "head": {"kernel": False, "bias": False},
    }
    m = frozen_mask(p, lambda path: path.endswith("bias"))
    assert m["head"]["bias"] and m["backbone"]["bias"] and not m["head"]["kernel"]
    # "back" is not a path component: prefixes match whole components only, so it matches
    # nothing, which is an error (a typo would otherwise freeze nothing)
    with pytest.raises(ValueError, match="'back' matches no parameter"):
        frozen_mask(p, ["back"])
    path, _ = jax.tree_util.tree_flatten_with_path(p)[0][0]
    assert path_str(path) == "backbone/bias"


def test_frozen_leaves_get_zero_update_no_state_and_no_weight_decay():
    params = _params()
    # Big weight decay: if it reached the backbone, the backbone would shrink visibly.
    opt = optimizer_with_frozen(
        optax.adamw(0.1, weight_decay=0.5), frozen_mask(params, ["backbone"])
    )
    state = opt.init(params)
    state_paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    assert not [s for s in state_paths if "backbone" in s]  # no Adam moments for frozen leaves
    assert any("head" in s for s in state_paths)  # the trainable leaves do have moments
    floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert sum(x.size for x in floats) == 2 * (3 + 1)  # mu and nu of the head only

    grads = jax.tree.map(jnp.ones_like, params)  # every leaf *has* a gradient
    p = params
    update = jax.jit(opt.update)  # one compile instead of many eager optax ops
    for _ in range(3):
        updates, state = update(grads, state, p)
        np.testing.assert_array_equal(updates["backbone"]["kernel"], 0.0)
        np.testing.assert_array_equal(updates["backbone"]["bias"], 0.0)
        p = optax.apply_updates(p, updates)
    np.testing.assert_array_equal(p["backbone"]["kernel"], params["backbone"]["kernel"])
    np.testing.assert_array_equal(p["backbone"]["bias"], params["backbone"]["bias"])
    assert not np.array_equal(p["head"]["kernel"], params["head"]["kernel"])


def test_frozen_head_update_equals_plain_adamw_on_the_head_alone():
    params = _params()
    adamw = optax.adamw(0.1, weight_decay=0.5)
    opt = optimizer_with_frozen(adamw, frozen_mask(params, ["backbone"]))
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3), params)
    upd, _ = opt.update(grads, opt.init(params), params)
    ref, _ = adamw.update(grads["head"], adamw.init(params["head"]), params["head"])
    for k in ("kernel", "bias"):
        np.testing.assert_array_equal(upd["head"][k], ref[k])


def test_optimizer_with_frozen_accepts_a_mask_function_under_jit():
    params = _params()
    opt = optimizer_with_frozen(optax.sgd(1.0), lambda p: frozen_mask(p, ["head"]))
    grads = jax.tree.map(jnp.ones_like, params)
    upd, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    np.testing.assert_array_equal(upd["head"]["kernel"], 0.0)
    np.testing.assert_array_equal(upd["backbone"]["kernel"], -1.0)


# ---- named keys -----------------------------------------------------------------------------


def test_named_keys_are_distinct_deterministic_and_validated():
    a = named_keys(0, "init", "dropout", "data")
    b = named_keys(0, "init", "dropout", "data")
    assert list(a) == ["init", "dropout", "data"]
    draws = {n: float(jax.random.uniform(k)) for n, k in a.items()}
    assert len(set(draws.values())) == 3
    assert all(draws[n] == float(jax.random.uniform(b[n])) for n in a)
    from_key = named_keys(jax.random.key(0), "init", "dropout", "data")
    assert float(jax.random.uniform(from_key["init"])) == draws["init"]
    from_np = named_keys(np.int64(0), "init", "dropout", "data")
    assert float(jax.random.uniform(from_np["init"])) == draws["init"]
    with pytest.raises(ValueError, match="distinct"):
        named_keys(0, "init", "init")
