"""Weighting rules and PCGrad on constructed gradients, against their formulas by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrad.losses.weighting import (
    annealing_estimate,
    grad_norm_balancing,
    grad_norm_estimate,
    lr_annealing,
    pcgrad,
    pcgrad_loss,
    weighted_sum,
)

# Two layers; biases are huge so that including them by mistake changes every number.
GRADS = {
    "res": {
        "l0": {"kernel": jnp.array([[1.0, -4.0], [2.0, 0.0]]), "bias": jnp.array([100.0, 0.0])},
        "l1": {"kernel": jnp.array([[0.5], [-1.0]]), "bias": jnp.array([-50.0])},
    },
    "bc": {
        "l0": {"kernel": jnp.array([[0.1, 0.1], [-0.1, 0.1]]), "bias": jnp.array([9.0, 9.0])},
        "l1": {"kernel": jnp.array([[0.2], [0.4]]), "bias": jnp.array([9.0])},
    },
}
# max|∂L_r/∂W| over kernels = 4; per-kernel mean|∂L_bc/∂W| = 0.1 and 0.3 → mean 0.2 → λ̂ = 20
LAMBDA_HAT = 4.0 / 0.2


def test_annealing_estimate_uses_weight_matrices_only():
    est = annealing_estimate(GRADS, "res")
    np.testing.assert_allclose(est["bc"], LAMBDA_HAT, rtol=1e-6)
    np.testing.assert_allclose(est["res"], 1.0)


def test_annealing_select_restricts_the_matrices_by_path():
    only_l1 = lambda path: "l1" in path  # paths read like "['l1']['kernel']"
    est = annealing_estimate(GRADS, "res", only_l1)
    np.testing.assert_allclose(est["bc"], 1.0 / 0.3, rtol=1e-6)  # max|[0.5, -1]| / mean 0.3
    state = lr_annealing("res", select=only_l1).update(
        GRADS, lr_annealing("res").init(("bc", "res")), 0
    )
    np.testing.assert_allclose(state.weights["bc"], 0.9 + 0.1 / 0.3, rtol=1e-6)
    with pytest.raises(ValueError, match="weight matrices"):
        annealing_estimate(GRADS, "res", lambda path: False)


@pytest.mark.parametrize("weighted_grads", [True, False])
def test_annealing_updates_every_period_with_smoothing(weighted_grads):
    rule = lr_annealing("res", period=10, smoothing=0.9, weighted_grads=weighted_grads)
    state = rule.init(("bc", "res"))
    update = jax.jit(rule.update)
    lam, seen = 1.0, []
    for step in range(25):
        state = update(GRADS, state, step)
        if step % 10 == 0:
            hat = LAMBDA_HAT / lam if weighted_grads else LAMBDA_HAT
            lam = 0.9 * lam + 0.1 * hat
        seen.append(float(state.weights["bc"]))
        np.testing.assert_allclose(state.weights["bc"], lam, rtol=1e-5)
        np.testing.assert_allclose(state.weights["res"], 1.0)
    assert len(set(np.round(seen, 5))) == 3  # changed at steps 0, 10 and 20 only


def test_grad_norm_balancing_by_hand():
    g = {"a": {"w": jnp.array([3.0, 4.0])}, "b": {"w": jnp.array([0.0, 1.0])}}  # norms 5, 1
    est = grad_norm_estimate(g)
    np.testing.assert_allclose(est["a"], 3.0 / 5.0, rtol=1e-6)
    np.testing.assert_allclose(est["b"], 3.0, rtol=1e-6)
    rule = grad_norm_balancing(smoothing=0.9, period=2)
    state = rule.init(("a", "b"))
    state = rule.update(g, state, 0)
    np.testing.assert_allclose(state.weights["a"], 0.9 + 0.1 * 0.6, rtol=1e-6)
    np.testing.assert_allclose(state.weights["b"], 0.9 + 0.1 * 3.0, rtol=1e-6)
    before = state.weights
    state = rule.update(g, state, 1)  # not a multiple of the period: unchanged
    np.testing.assert_allclose(state.weights["b"], before["b"])


def test_weights_receive_no_gradient():
    rule = lr_annealing("res")
    state = rule.update(GRADS, rule.init(("bc", "res")), 0)

    def loss(w):
        return weighted_sum({"res": jnp.array(2.0), "bc": jnp.array(3.0)}, w)

    g = jax.grad(loss)(state.weights)
    assert all(float(v) == 0.0 for v in jax.tree_util.tree_leaves(g))
    g = jax.grad(lambda s: rule.update(GRADS, s, 0).weights["bc"])(state)
    assert all(float(v) == 0.0 for v in jax.tree_util.tree_leaves(g))


def test_bad_hyperparameters_and_names_raise():
    with pytest.raises(ValueError, match="smoothing"):
        lr_annealing("res", smoothing=1.0)
    with pytest.raises(ValueError, match="period"):
        grad_norm_balancing(period=0)
    with pytest.raises(ValueError, match="reference term 'pde'"):
        lr_annealing("pde").init(("bc", "res"))
    rule = lr_annealing("res")
    with pytest.raises(ValueError, match="do not match"):
        rule.update(GRADS, rule.init(("bc", "res", "ic")), 0)


def test_pcgrad_keeps_non_conflicting_gradients():
    g = {"a": {"w": jnp.array([1.0, 0.0])}, "b": {"w": jnp.array([1.0, 1.0])}}
    out = pcgrad(g)
    for n in g:
        np.testing.assert_allclose(out[n]["w"], g[n]["w"])


def test_pcgrad_removes_conflicting_component_exactly():
    g1, g2 = jnp.array([1.0, 0.0]), jnp.array([-1.0, 1.0])  # g1·g2 = -1
    out = jax.jit(pcgrad)({"a": {"w": g1}, "b": {"w": g2}})
    np.testing.assert_allclose(out["a"]["w"], g1 - (-1.0 / 2.0) * g2, rtol=1e-6)  # [.5, .5]
    np.testing.assert_allclose(out["b"]["w"], g2 - (-1.0 / 1.0) * g1, rtol=1e-6)  # [0, 1]
    np.testing.assert_allclose(jnp.vdot(out["a"]["w"], g2), 0.0, atol=1e-6)
    np.testing.assert_allclose(jnp.vdot(out["b"]["w"], g1), 0.0, atol=1e-6)


# Three terms where the projection order matters: a conflicts with both b and c.
# Order (b, c): a + b/2 = [.5, .5, 0], then ·c = -.5 → + c/4 = [.25, .5, .25];
# order (c, b): a + c/2 = [.5, 0, .5], then ·b = -.5 → + b/4 = [.25, .25, .5].
THREE = {"a": [1.0, 0.0, 0.0], "b": [-1.0, 1.0, 0.0], "c": [-1.0, 0.0, 1.0]}
A_AFTER = {("b", "c"): [0.25, 0.5, 0.25], ("c", "b"): [0.25, 0.25, 0.5]}


def _project(g, others):
    """Yu et al.'s projection of ``g`` off each conflicting gradient, in the given order."""
    g = np.array(g)
    for o in map(np.array, others):
        if g @ o < 0:
            g = g - (g @ o) / (o @ o) * o
    return g


def _pcgrad_outputs(fn, keys):
    """``fn(key) -> {name: [3]}`` for each key, as a list of ``{name: tuple}``."""
    outs = [fn(k) for k in keys]
    return [{n: tuple(np.round(np.asarray(v), 6)) for n, v in o.items()} for o in outs]


def test_pcgrad_random_order_three_terms():
    for order, want in A_AFTER.items():  # the reference reproduces the hand numbers
        np.testing.assert_allclose(_project(THREE["a"], [THREE[o] for o in order]), want)
    g = {n: {"w": jnp.array(v)} for n, v in THREE.items()}
    fixed = pcgrad(g)
    np.testing.assert_allclose(fixed["a"]["w"], A_AFTER[("b", "c")], rtol=1e-6)  # sorted order
    shuffled = jax.jit(lambda k: {n: v["w"] for n, v in pcgrad(g, key=k).items()})
    seen = _pcgrad_outputs(shuffled, [jax.random.key(i) for i in range(16)])
    for out in seen:  # every output is the projection in *some* order of the other two terms
        for n, v in out.items():
            others = [o for o in THREE if o != n]
            allowed = [_project(THREE[n], [THREE[o] for o in p]) for p in (others, others[::-1])]
            assert any(np.allclose(v, w, atol=1e-6) for w in allowed), (n, v, allowed)
    # ... and the key picks the order: both orders of a's projections occur over 16 keys
    assert {out["a"] for out in seen} == {tuple(v) for v in A_AFTER.values()}


def test_pcgrad_loss_shuffle_draws_the_order_from_the_step_key():
    def terms(p, batch):
        return {n: jnp.vdot(p, batch[n]) for n in THREE}  # ∂term/∂p = THREE[term]

    batch = {n: jnp.array(v) for n, v in THREE.items()}
    keys = [jax.random.key(i) for i in range(16)]

    p0 = jnp.zeros(3)

    def grads(**kw):  # the loss's gradient at p0 for each key, one compiled program
        loss_fn = pcgrad_loss(terms, **kw)
        g = jax.jit(lambda k: {"g": jax.grad(lambda p: loss_fn(p, batch, k)[0])(p0)})
        return _pcgrad_outputs(g, keys)

    surgered = jax.jit(
        lambda k: {
            "g": sum(v["w"] for v in pcgrad({n: {"w": batch[n]} for n in THREE}, key=k).values())
        }
    )
    sorted_sum = sum(_project(THREE[n], [THREE[o] for o in sorted(THREE) if o != n]) for n in THREE)
    for g in grads():
        np.testing.assert_allclose(g["g"], sorted_sum, atol=1e-6)  # no shuffle: sorted order
    shuffled = grads(shuffle=True)
    for g, want in zip(shuffled, _pcgrad_outputs(surgered, keys)):
        np.testing.assert_allclose(g["g"], want["g"], atol=1e-6)  # the surgered sum, that key
    assert len({g["g"] for g in shuffled}) > 1  # different keys, different orders


def test_pcgrad_loss_gradient_is_the_surgered_sum():
    def terms(p, batch):
        return {"a": jnp.vdot(p, batch["u"]), "b": jnp.vdot(p, batch["v"])}

    batch = {"u": jnp.array([1.0, 0.0]), "v": jnp.array([-1.0, 1.0])}
    loss_fn = pcgrad_loss(terms)
    p = jnp.array([0.3, 0.7])
    (loss, aux), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(p, batch, jax.random.key(0))
    np.testing.assert_allclose(loss, 0.3 + 0.4, rtol=1e-6)
    np.testing.assert_allclose(aux["loss_b"], 0.4, rtol=1e-6)
    np.testing.assert_allclose(g, jnp.array([0.5, 0.5]) + jnp.array([0.0, 1.0]), rtol=1e-6)
