"""term_grads and the per-term gradient statistics against hand-derived closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from jaxgrad.losses.terms import (
    TERM_GRAD_METHODS,
    cosine_matrix,
    grad_stats,
    term_grads,
    term_values_and_grads,
)
from jaxgrad.models.mlp import MLP

STANDARD_PROMOTION = (
    "jaxgrad.models.mlp standardises [N, d] points with a [d] mean and std (rank promotion)"
)

A = jnp.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
Y = jnp.array([1.0, -2.0])


def quad_terms(params, c):
    """fit = ½‖A w − y‖², reg = c·‖w‖² + b², tie = w₀·b."""
    w, b = params["w"], params["b"]
    return {
        "fit": 0.5 * jnp.sum((A.astype(w.dtype) @ w - Y.astype(w.dtype)) ** 2),
        "reg": c * jnp.sum(w * w) + b * b,
        "tie": w[0] * b,
    }


def quad_grads_by_hand(params, c):
    w, b = params["w"], params["b"]
    return {
        "fit": {"w": A.T @ (A @ w - Y), "b": jnp.zeros(())},
        "reg": {"w": 2 * c * w, "b": 2 * b},
        "tie": {"w": jnp.array([b, 0.0, 0.0]), "b": w[0]},
    }


PARAMS = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(1.5)}


@pytest.mark.parametrize("method", TERM_GRAD_METHODS)
@pytest.mark.parametrize("jit", [False, True])
def test_term_grads_match_hand_derived_quadratic(method, jit):
    f = lambda p, c: term_values_and_grads(quad_terms, p, c, method=method)
    f = jax.jit(f) if jit else f
    values, grads = f(PARAMS, jnp.float32(0.3))
    want = quad_grads_by_hand(PARAMS, 0.3)
    assert sorted(grads) == ["fit", "reg", "tie"]
    for name in want:
        for leaf in ("w", "b"):
            np.testing.assert_allclose(grads[name][leaf], want[name][leaf], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(values["tie"], 0.5 * 1.5, rtol=1e-6)


def test_term_grads_has_aux_returns_aux_once():
    def terms(p, c):
        t = quad_terms(p, c)
        return t, {"sum": t["fit"] + t["reg"]}

    for method in TERM_GRAD_METHODS:
        grads, aux = term_grads(terms, PARAMS, jnp.float32(0.3), has_aux=True, method=method)
        want = quad_terms(PARAMS, 0.3)
        np.testing.assert_allclose(aux["sum"], want["fit"] + want["reg"], rtol=1e-6)
        np.testing.assert_allclose(grads["reg"]["b"], 3.0, rtol=1e-6)


def _mlp_terms(key):
    model = MLP((2, 8, 8, 1), rngs=nnx.Rngs(params=key))
    graphdef, params = nnx.split(model, nnx.Param)
    k1, k2 = jax.random.split(key)
    pts = jax.random.normal(k1, (16, 2), params["linears"][0]["kernel"].dtype)
    tgt = jax.random.normal(k2, (16,), pts.dtype)

    def terms(p, x, y):
        m = nnx.merge(graphdef, p)
        u = m(x)[:, 0]
        return {"a": jnp.mean((u - y) ** 2), "b": jnp.mean(u[:8] ** 4), "c": jnp.sum(jnp.tanh(u))}

    return terms, params, pts, tgt


def test_term_grads_float64_match_finite_differences(key):
    with jax.enable_x64(True):
        terms, params, x, y = _mlp_terms(key)
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        x, y = x.astype(jnp.float64), y.astype(jnp.float64)
        grads = jax.jit(term_grads, static_argnums=0)(terms, params, x, y)
        direction = jax.tree_util.tree_map(
            lambda a: jax.random.normal(jax.random.fold_in(key, a.size), a.shape, a.dtype), params
        )
        eps = 1e-6
        shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * eps * d, params, direction)
        fwd = jax.jit(terms)
        plus, minus = fwd(shift(1.0), x, y), fwd(shift(-1.0), x, y)
        for name, g in grads.items():
            fd = (plus[name] - minus[name]) / (2 * eps)
            dot = sum(
                jnp.vdot(a, b) for a, b in zip(*map(jax.tree_util.tree_leaves, (g, direction)))
            )
            np.testing.assert_allclose(dot, fd, rtol=1e-6, atol=1e-9)
            # and each equals the term's own jax.grad, checked by check_grads in float64
            own = jax.jit(lambda p, name=name: terms(p, x, y)[name])
            if name == "a":  # one is enough: check_grads re-traces and costs seconds on CPU
                check_grads(own, (params,), order=1, modes=["rev"])
            want = jax.grad(own)(params)
            for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(want)):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_term_grads_methods_agree_on_mlp(key):
    terms, params, x, y = _mlp_terms(key)
    results = [
        jax.jit(lambda p, m=m: term_grads(terms, p, x, y, method=m))(params)
        for m in TERM_GRAD_METHODS
    ]
    for other in results[1:]:
        for a, b in zip(jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(other)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_non_scalar_term_raises_with_hint():
    with pytest.raises(ValueError, match=r"'bad' has shape \(1,\).*v\[0\]"):
        term_grads(lambda p: {"ok": p.sum(), "bad": p[:1]}, jnp.ones(3))
    with pytest.raises(ValueError, match=r"'bad' has shape \(3,\)"):
        term_grads(lambda p: {"bad": p * 2}, jnp.ones(3))


def test_empty_dict_and_non_dict_raise():
    with pytest.raises(ValueError, match="empty dict"):
        term_grads(lambda p: {}, jnp.ones(3))
    with pytest.raises(TypeError, match="dict of named scalar losses"):
        term_grads(lambda p: p.sum(), jnp.ones(3))
    with pytest.raises(ValueError, match="method must be one of"):
        term_grads(lambda p: {"a": p.sum()}, jnp.ones(3), method="loop")


def test_grad_stats_closed_form():
    grads = {
        "a": {"kernel": jnp.array([[1.0, -3.0], [0.0, 2.0]]), "bias": jnp.array([10.0, 0.0])},
        "b": {"kernel": jnp.array([[0.5, 0.5], [0.5, 0.5]]), "bias": jnp.array([0.0, -1.0])},
    }
    s = grad_stats(grads)
    np.testing.assert_allclose(s["a"]["mean_abs"], 16.0 / 6)
    np.testing.assert_allclose(s["a"]["max_abs"], 10.0)
    np.testing.assert_allclose(s["a"]["l2"], np.sqrt(1 + 9 + 4 + 100), rtol=1e-6)
    w = grad_stats(grads, weights_only=True)
    np.testing.assert_allclose(w["a"]["mean_abs"], 6.0 / 4)
    np.testing.assert_allclose(w["a"]["max_abs"], 3.0)
    np.testing.assert_allclose(w["b"]["l2"], 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="no weight-matrix"):
        grad_stats({"a": {"bias": jnp.ones(3)}}, weights_only=True)


def test_cosine_matrix_signs_and_zero_gradient():
    grads = {
        "a": {"w": jnp.array([1.0, 0.0])},
        "b": {"w": jnp.array([0.0, 2.0])},
        "c": {"w": jnp.array([-3.0, 0.0])},
        "d": {"w": jnp.array([0.0, 0.0])},
    }
    cos = np.asarray(cosine_matrix(grads))
    np.testing.assert_allclose(np.diag(cos)[:3], 1.0, rtol=1e-6)
    np.testing.assert_allclose(cos[0, 1], 0.0, atol=1e-7)
    np.testing.assert_allclose(cos[0, 2], -1.0, rtol=1e-6)
    np.testing.assert_allclose(cos[3], 0.0)
    np.testing.assert_allclose(cos, cos.T)
