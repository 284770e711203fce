"""Laplacian / normal-derivative helpers against closed forms, and their shape errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrad.pde import gradient, laplacian, normal_derivative, second_derivative


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
