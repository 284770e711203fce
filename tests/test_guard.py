"""The non-finite guard: bad steps are skipped exactly, counted, and stop the run when persistent."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgrad.training.guard import (
    NonFiniteError,
    check_nonfinite,
    grads_finite_metric,
    nonfinite_counts,
    skip_nonfinite,
)
from jaxgrad.training.step import init_train_state, make_multi_step, make_train_step

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"


def quad_loss(params, batch, key):
    """0.5 * ||w - t||^2: grad is w - t, so a NaN in the target gives a NaN gradient."""
    del key
    loss = 0.5 * jnp.sum((params["w"] - batch["t"]) ** 2)
    return loss, {}


def batches(*kinds):
    """One ``{"t": [3]}`` batch per kind: 'ok' finite, 'nan' NaN target, 'inf' inf target."""
    out = []
    for i, k in enumerate(kinds):
        t = jnp.full((3,), float(i + 1), jnp.float32)
        if k == "nan":
            t = t.at[1].set(jnp.nan)
        elif k == "inf":
            t = t.at[0].set(jnp.inf)
        out.append({"t": t})
    return out


def run(optimizer, kinds, key, *, jit=True, keep=None):
    """Train from a fixed start on ``batches(*kinds)`` (only indices in ``keep`` if given)."""
    params = {"w": jnp.array([0.5, -1.0, 2.0], jnp.float32)}
    state = init_train_state(params, optimizer)
    step = make_train_step(
        quad_loss, optimizer, extra_metrics=grads_finite_metric, jit=jit, donate=False
    )
    finite, history = [], []
    for i, b in enumerate(batches(*kinds)):
        if keep is not None and i not in keep:
            continue
        state, m = step(state, b, key)
        finite.append(bool(m["grads_finite"]))
        history.append(np.asarray(state.params["w"]))
    return state, finite, history


def test_skipped_steps_leave_params_and_adam_state_bit_equal(key):
    kinds = ["ok", "nan", "inf", "ok"]
    state, finite, history = run(skip_nonfinite(optax.adam(0.1)), kinds, key)
    assert finite == [True, False, False, True]
    # A skipped step changes no bit of the params.
    np.testing.assert_array_equal(history[1], history[0])
    np.testing.assert_array_equal(history[2], history[0])
    # ...nor of Adam's moments and count: the run equals one fed only the finite batches.
    ref, _, _ = run(skip_nonfinite(optax.adam(0.1)), kinds, key, keep={0, 3})
    np.testing.assert_array_equal(state.params["w"], ref.params["w"])
    for a, b in zip(jax.tree.leaves(state.opt_state)[3:], jax.tree.leaves(ref.opt_state)[3:]):
        np.testing.assert_array_equal(a, b)  # inner (Adam) state; [:3] are the guard's counters
    assert int(optax.tree.get(state.opt_state, "count")) == 2
    counts = nonfinite_counts(state.opt_state)
    assert int(counts["nonfinite_skipped"]) == 2
    assert int(counts["nonfinite_in_a_row"]) == 0  # reset by the last, finite step


def test_unguarded_nan_step_poisons_params(key):
    """Why the guard exists: without it one NaN batch writes NaN into the params for good."""
    state, _, _ = run(optax.adam(0.1), ["ok", "nan", "ok"], key)
    assert np.isnan(np.asarray(state.params["w"])[1])  # the NaN target's coordinate


def test_jit_and_no_jit_agree(key):
    kinds = ["nan", "ok", "nan", "ok"]
    a, fa, _ = run(skip_nonfinite(optax.sgd(0.5)), kinds, key, jit=True)
    b, fb, _ = run(skip_nonfinite(optax.sgd(0.5)), kinds, key, jit=False)
    assert fa == fb == [False, True, False, True]
    np.testing.assert_allclose(a.params["w"], b.params["w"], rtol=1e-6)
    assert int(nonfinite_counts(a.opt_state)["nonfinite_skipped"]) == 2


def test_sgd_hand_derived_with_skip(key):
    """SGD lr 0.5 on 0.5||w - t||^2: w <- w - 0.5 (w - t) = (w + t) / 2; a NaN step changes nothing."""
    state, _, _ = run(skip_nonfinite(optax.sgd(0.5)), ["ok", "nan", "ok"], key)
    w = np.array([0.5, -1.0, 2.0], np.float32)
    w = (w + 1.0) / 2  # batch 0, target 1
    w = (w + 3.0) / 2  # batch 2, target 3
    np.testing.assert_allclose(state.params["w"], w, rtol=1e-6)


def test_check_nonfinite_stops_after_n_in_a_row_with_finite_params(key):
    state, _, _ = run(skip_nonfinite(optax.adam(0.1)), ["ok", "nan", "nan", "nan"], key)
    # Below the limit: counters are returned as ints for the metrics log.
    assert check_nonfinite(state.opt_state, max_in_a_row=4) == {
        "nonfinite_skipped": 3,
        "nonfinite_in_a_row": 3,
    }
    with pytest.raises(NonFiniteError, match=r"3 consecutive steps at step 4.*lower the learning"):
        check_nonfinite(state.opt_state, max_in_a_row=3, step=4)
    assert np.isfinite(np.asarray(state.params["w"])).all()


def test_multi_step_reports_which_steps_were_skipped(key):
    opt = skip_nonfinite(optax.sgd(0.5))
    params = {"w": jnp.zeros((3,), jnp.float32)}
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches("ok", "nan", "nan", "ok"))
    multi = make_multi_step(quad_loss, opt, extra_metrics=grads_finite_metric, donate=False)
    state, m = multi(init_train_state(params, opt), stacked, key)
    np.testing.assert_array_equal(m["grads_finite"], [True, False, False, True])
    assert check_nonfinite(state.opt_state, max_in_a_row=5)["nonfinite_skipped"] == 2


def test_counts_found_inside_multisteps():
    opt = optax.MultiSteps(skip_nonfinite(optax.sgd(0.1)), every_k_schedule=2)
    counts = nonfinite_counts(opt.init({"w": jnp.zeros(2)}))
    assert set(counts) == {"nonfinite_skipped", "nonfinite_in_a_row"}


def test_counts_without_guard_say_how_to_add_one():
    with pytest.raises(ValueError, match="skip_nonfinite"):
        nonfinite_counts(optax.adam(0.1).init({"w": jnp.zeros(2)}))


def test_check_nonfinite_rejects_nonpositive_limit():
    state = skip_nonfinite(optax.sgd(0.1)).init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="max_in_a_row must be >= 1"):
        check_nonfinite(state, max_in_a_row=0)


# --- wired into the ViT experiment ------------------------------------------------------------


def test_vit_experiment_optimizer_is_guarded_by_default():
    from experiments.vit_cifar10 import Config, make_optimizer

    params = {"kernel": jnp.zeros((2, 2), jnp.float32)}
    guarded = make_optimizer(Config.tiny().hyper(), 10).init(params)
    assert int(nonfinite_counts(guarded)["nonfinite_skipped"]) == 0
    off = dataclasses.replace(Config.tiny(), nonfinite_guard=False).hyper()
    with pytest.raises(ValueError, match="skip_nonfinite"):
        nonfinite_counts(make_optimizer(off, 10).init(params))
