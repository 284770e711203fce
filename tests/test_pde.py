"""Laplacian / normal-derivative helpers against closed forms, and their shape errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrad.losses.pde import (
    forward_laplacian,
    gradient,
    laplacian,
    normal_derivative,
    second_derivative,
)
from jaxgrad.training.xla import RUN_ONCE


def u(p):
    """u = x²·y + sin(x)·y³."""
    x, y = p[0], p[1]
    return x**2 * y + jnp.sin(x) * y**3


def grad_u(x, y):
    return np.stack([2 * x * y + np.cos(x) * y**3, x**2 + 3 * np.sin(x) * y**2], -1)


def lap_u(x, y):
    return 2 * y - np.sin(x) * y**3 + 6 * np.sin(x) * y


@pytest.fixture
def pts(key):
    return jax.random.uniform(key, (7, 2), minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("jit", [False, True])
def test_laplacian_and_gradient_closed_form(pts, jit):
    lap = jax.jit(laplacian, static_argnums=0) if jit else laplacian
    x, y = np.asarray(pts[:, 0]), np.asarray(pts[:, 1])
    np.testing.assert_allclose(lap(u, pts), lap_u(x, y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gradient(u, pts), grad_u(x, y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(second_derivative(u, pts, 0), -np.sin(x) * y**3 + 2 * y, atol=1e-5)


def test_laplacian_float64_three_dims():
    with jax.enable_x64(True):
        f = lambda p: jnp.exp(p[0]) * jnp.cos(p[1]) + p[2] ** 4  # Δ = 0 + 12 z²
        pts = jnp.array([[0.1, 0.2, 0.3], [1.0, -2.0, 0.5]], jnp.float64)
        np.testing.assert_allclose(laplacian(f, pts), 12 * pts[:, 2] ** 2, rtol=1e-12)


def test_normal_derivative_closed_form(pts):
    x, y = np.asarray(pts[:, 0]), np.asarray(pts[:, 1])
    theta = np.linspace(0.0, 3.0, 7)
    n = jnp.asarray(np.stack([np.cos(theta), np.sin(theta)], -1), jnp.float32)
    want = np.sum(grad_u(x, y) * np.asarray(n), -1)
    np.testing.assert_allclose(normal_derivative(u, pts, n), want, rtol=1e-5, atol=1e-5)
    # one shared normal [D] for every point: the top edge's outward normal is +y
    np.testing.assert_allclose(
        normal_derivative(u, pts, jnp.array([0.0, 1.0])), grad_u(x, y)[:, 1], rtol=1e-5, atol=1e-5
    )


def test_mismatched_shapes_raise(pts):
    with pytest.raises(ValueError, match=r"normals must have the points' shape \(7, 2\)"):
        normal_derivative(u, pts, jnp.ones((6, 2)))
    with pytest.raises(ValueError, match=r"points must have shape \[N, D\]"):
        laplacian(u, pts[0])
    with pytest.raises(ValueError, match="field must map one point"):
        laplacian(lambda p: p * 2, pts)
    with pytest.raises(TypeError, match="floating point"):
        gradient(u, jnp.ones((3, 2), jnp.int32))


# --- forward_laplacian: one pass carrying value, gradient and Laplacian ---------------------


def _mlp_fields():
    from flax import nnx

    from jaxgrad.models.mlp import MLP, ModifiedMLP

    to64 = lambda m: jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if isinstance(a, jax.Array) else a, m
    )
    models = {
        "mlp": MLP((2, 16, 16, 1), rngs=nnx.Rngs(0), mean=(0.1, -0.2), std=(0.5, 0.7)),
        "modified": ModifiedMLP((2, 16, 16, 16, 1), rngs=nnx.Rngs(1)),
        "modified_code": ModifiedMLP((2, 16, 16, 1), rngs=nnx.Rngs(2), form="code"),
    }
    models = {k: to64(m) for k, m in models.items()}
    return {k: (lambda p, m=m: m(p[None])[0, 0]) for k, m in models.items()}


def test_forward_laplacian_closed_form(pts):
    x, y = np.asarray(pts[:, 0]), np.asarray(pts[:, 1])
    val, grad, lap = jax.jit(forward_laplacian, static_argnums=0)(u, pts)
    np.testing.assert_allclose(val, x**2 * y + np.sin(x) * y**3, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, grad_u(x, y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lap, lap_u(x, y), rtol=1e-5, atol=1e-5)


def test_forward_laplacian_matches_jvp_of_jvp_float64():
    """Exact: the networks of the PINN experiments and a field with div, exp, gelu, powers."""
    with jax.enable_x64(True):
        x = jax.random.uniform(jax.random.key(3), (9, 2), jnp.float64, -1.0, 1.0)
        fields = _mlp_fields()
        fields["mixed"] = lambda p: (
            jnp.exp(p[0]) * jnp.cos(p[1])
            + jax.nn.gelu(p[0] * p[1], approximate=False)
            + jnp.sin(p[1]) / (1.5 + p[0] ** 2)
            + jnp.dot(p, p) ** 3
        )
        jit = lambda fn: jax.jit(fn, static_argnums=0, compiler_options=RUN_ONCE)  # fast compiles
        fwd, ref = jit(forward_laplacian), jit(laplacian)
        # jit calls, custom_jvp (softplus, silu), stop_gradient and comparisons (logsumexp)
        fields["library"] = lambda p: (
            jax.jit(lambda a: jnp.tanh(a) * a)(p[0])
            + jax.nn.softplus(p[1] * p[0])
            + jax.nn.logsumexp(p)
            + jax.nn.silu(p).sum()
            + jnp.linalg.norm(p) ** 3
        )
        for name, f in fields.items():
            val, grad, lap = fwd(f, x)
            np.testing.assert_allclose(lap, ref(f, x), rtol=1e-12, atol=1e-12, err_msg=name)
            np.testing.assert_allclose(grad, gradient(f, x), rtol=1e-12, atol=1e-13, err_msg=name)
            np.testing.assert_allclose(val, jax.vmap(f)(x), rtol=1e-13, err_msg=name)


def test_forward_laplacian_gradients_check_grads():
    """A PINN residual loss built on it differentiates correctly w.r.t. the parameters."""
    from flax import nnx
    from jax.test_util import check_grads

    from jaxgrad.models.mlp import MLP

    with jax.enable_x64(True):
        model = MLP((2, 8, 8, 1), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model, nnx.Param)
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        x = jax.random.uniform(jax.random.key(4), (6, 2), jnp.float64, -1.0, 1.0)

        def loss(p):
            m = nnx.merge(graphdef, p)
            val, grad, lap = forward_laplacian(lambda q: m(q[None])[0, 0], x)
            return jnp.mean((lap + val) ** 2) + jnp.mean(grad**2)

        check_grads(
            jax.jit(loss), (params,), order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-7
        )


def test_forward_laplacian_constant_field_and_unsupported_primitive(pts):
    val, grad, lap = forward_laplacian(lambda p: jnp.float32(2.0), pts)
    np.testing.assert_array_equal(val, 2.0)
    np.testing.assert_array_equal(grad, 0.0)
    np.testing.assert_array_equal(lap, 0.0)

    def scanned(p):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c), None), p, length=2)[0].sum()

    with pytest.raises(NotImplementedError, match="'scan'.*jaxgrad.losses.pde.laplacian"):
        forward_laplacian(scanned, pts)
