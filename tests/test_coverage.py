"""Optimizer coverage for each optax combinator: which leaves move, which are frozen, which hold
state; checked against what a real update does to the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgrad.autodiff.freeze import frozen_mask, optimizer_with_frozen
from jaxgrad.inspect.coverage import optimizer_coverage

STANDARD_PROMOTION = "optax's int32 step counters (Adam, MultiSteps) in the probed update"

PARAMS = {"enc": {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}, "head": {"w": jnp.ones((3, 1))}}
ENC_FROZEN = {"enc": {"w": True, "b": True}, "head": {"w": False}}
LABELS = {"enc": {"w": "a", "b": "a"}, "head": {"w": "b"}}

# name → (optimizer, {path: status}, {path: state slots}, steps until every live leaf moves)
CASES = {
    "adam": (optax.adam(1e-2), dict.fromkeys(["enc/b", "enc/w", "head/w"], "updated"),
             dict.fromkeys(["enc/b", "enc/w", "head/w"], ("mu", "nu")), 1),
    "chain": (optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9)),
              dict.fromkeys(["enc/b", "enc/w", "head/w"], "updated"),
              dict.fromkeys(["enc/b", "enc/w", "head/w"], ("trace",)), 1),
    "partition": (optimizer_with_frozen(optax.adam(1e-2), frozen_mask(PARAMS, ["enc"])),
                  {"enc/b": "frozen", "enc/w": "frozen", "head/w": "updated"},
                  {"enc/b": (), "enc/w": (), "head/w": ("mu", "nu")}, 1),
    "multi_transform": (optax.multi_transform({"a": optax.adam(1e-2), "b": optax.sgd(0.1)}, LABELS),
                        dict.fromkeys(["enc/b", "enc/w", "head/w"], "updated"),
                        {"enc/b": ("mu", "nu"), "enc/w": ("mu", "nu"), "head/w": ()}, 1),
    "masked": (optax.masked(optax.adam(1e-2), {"enc": {"w": True, "b": True}, "head": {"w": False}}),
               {"enc/b": "updated", "enc/w": "updated", "head/w": "passthrough"},
               {"enc/b": ("mu", "nu"), "enc/w": ("mu", "nu"), "head/w": ()}, 1),
    "freeze": (optax.chain(optax.freeze(ENC_FROZEN), optax.adam(1e-2)),
               {"enc/b": "frozen", "enc/w": "frozen", "head/w": "updated"},
               dict.fromkeys(["enc/b", "enc/w", "head/w"], ("mu", "nu")), 1),
    "set_to_zero": (optax.set_to_zero(), dict.fromkeys(["enc/b", "enc/w", "head/w"], "frozen"),
                    dict.fromkeys(["enc/b", "enc/w", "head/w"], ()), 1),
    "multisteps": (optax.MultiSteps(optax.adam(1e-2), every_k_schedule=3),
                   dict.fromkeys(["enc/b", "enc/w", "head/w"], "updated"),
                   dict.fromkeys(["enc/b", "enc/w", "head/w"], ("mu", "nu", "acc_grads")), 3),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_coverage_of_each_combinator(name):
    opt, want_status, want_slots, _ = CASES[name]
    cov = optimizer_coverage(opt, PARAMS)
    assert {leaf.path: leaf.status for leaf in cov.leaves} == want_status
    assert {leaf.path: leaf.slots for leaf in cov.leaves} == want_slots


@pytest.mark.parametrize("name", ["partition", "multisteps", "masked"])
def test_coverage_agrees_with_real_updates(name, key):
    """A leaf is frozen iff k real steps with random gradients leave it unchanged."""
    opt, _, _, k = CASES[name]
    cov = optimizer_coverage(opt, PARAMS)

    @jax.jit
    def run(key):
        params, state = PARAMS, opt.init(PARAMS)
        for i in range(k):
            leaves, tree = jax.tree_util.tree_flatten(params)
            g = [
                jax.random.normal(jax.random.fold_in(key, 10 * i + j), x.shape)
                for j, x in enumerate(leaves)
            ]
            upd, state = opt.update(jax.tree_util.tree_unflatten(tree, g), state, params)
            params = optax.apply_updates(params, upd)
        return params

    params = run(key)
    moved = [
        bool(np.any(a != b))
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(PARAMS))
    ]
    assert moved == [leaf.status != "frozen" for leaf in cov.leaves]


def test_multisteps_is_live_although_the_first_update_is_zero():
    cov = optimizer_coverage(CASES["multisteps"][0], PARAMS)
    assert all(leaf.status == "updated" and not leaf.probe_moved for leaf in cov.leaves)


def test_decay_only_leaves_are_updated_and_partition_groups_are_named():
    cov = optimizer_coverage(CASES["partition"][0], PARAMS)
    assert cov.param_groups() == {"frozen": ["enc/b", "enc/w"], "trainable": ["head/w"]}
    assert cov.counts() == {"updated": 1, "frozen": 2, "passthrough": 0}
    # Weight decay reads the params: with the gradient zeroed, decay alone still moves them.
    decay_only = optax.chain(optax.set_to_zero(), optax.add_decayed_weights(0.1))
    cov = optimizer_coverage(decay_only, PARAMS)
    assert [leaf.status for leaf in cov.leaves] == ["updated"] * 3
    assert [leaf.probe_moved for leaf in cov.leaves] == [False, True, True]  # enc/b is 0


def test_printout_and_dict():
    cov = optimizer_coverage(CASES["partition"][0], PARAMS)
    assert str(cov).splitlines() == [
        "path    shape   optimizer  state  group",
        "enc/b   (3,)    frozen     none   -",
        "enc/w   (2, 3)  frozen     none   -",
        "head/w  (3, 1)  updated    mu,nu  trainable",
    ]
    d = cov.to_dict()
    assert d["leaves"][2] == {"path": "head/w", "shape": [3, 1], "status": "updated",
                              "slots": ["mu", "nu"], "group": "trainable", "probe_moved": True}  # fmt: skip


def test_integer_leaf_raises_with_advice():
    with pytest.raises(TypeError, match=r"step has dtype int32.*nnx.split"):
        optimizer_coverage(optax.adam(1e-3), {"w": jnp.ones(2), "step": jnp.int32(0)})
