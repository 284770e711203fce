"""jaxgrad.autodiff.deps as used by ``jaxgrad.grad(allow_unused=True)``: structure, never numeric zeros.

Each case: which argument PyTorch would report as unused (``None``), through jit, scan, cond,
while and custom rules, and the same answer when the whole call is itself under ``jax.jit``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrad.autodiff.autograd import grad
from jaxgrad.autodiff.deps import data_dependence

ONES = jnp.ones(3, jnp.float32)


@jax.custom_vjp
def _sin_vjp(x):
    return jnp.sin(x)


_sin_vjp.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))


@jax.custom_jvp
def _sin_jvp(x):
    return jnp.sin(x)


_sin_jvp.defjvps(lambda t, ans, x: jnp.cos(x) * t)


@jax.custom_vjp
def _zero_vjp(x):
    return x


_zero_vjp.defvjp(lambda x: (x, None), lambda res, g: (jnp.zeros_like(g),))


# name -> (f(x, y) -> scalar, which of (x, y) are connected)
CASES = {
    "plain, y unused": (lambda x, y: jnp.sum(x**2), (True, False)),
    "stop_gradient only": (lambda x, y: jnp.sum(jax.lax.stop_gradient(x) + y), (False, True)),
    "stop_gradient and direct": (lambda x, y: jnp.sum(jax.lax.stop_gradient(x) * x), (True, False)),
    "dead relu is connected": (lambda x, y: jnp.sum(jax.nn.relu(-x) + y), (True, True)),
    "times zero is connected": (lambda x, y: jnp.sum(x + 0.0 * y), (True, True)),
    "inner jit": (lambda x, y: jax.jit(lambda a: jnp.sum(a**2))(x), (True, False)),
    "scan carries y": (
        lambda x, y: jax.lax.scan(lambda c, _: (c * x, None), y, None, length=3)[0].sum(),
        (True, True),
    ),
    "scan without y": (
        lambda x, y: jax.lax.scan(lambda c, _: (c * 2.0, None), x, None, length=3)[0].sum(),
        (True, False),
    ),
    "cond, y in no branch": (
        lambda x, y: jax.lax.cond(x[0] > 0, jnp.sum, lambda a: jnp.sum(2 * a), x),
        (True, False),
    ),
    # Structural, not dynamic: both branches count (PyTorch, having run one, would say None).
    "cond, y in the other branch": (
        lambda x, y: jax.lax.cond(x[0] > 0, lambda a, b: jnp.sum(a), lambda a, b: jnp.sum(b), x, y),
        (True, True),
    ),
    "while (fori_loop)": (
        lambda x, y: jax.lax.fori_loop(0, 3, lambda i, c: c * x, y).sum(),
        (True, True),
    ),
    "while without y": (
        lambda x, y: jax.lax.fori_loop(0, 3, lambda i, c: c * 2.0, x).sum(),
        (True, False),
    ),
    "custom_vjp": (lambda x, y: jnp.sum(_sin_vjp(x)), (True, False)),
    "custom_jvp": (lambda x, y: jnp.sum(_sin_jvp(x)), (True, False)),
    # A bwd rule whose result ignores the cotangent is a structural zero: None (PyTorch: zeros).
    "custom_vjp zero bwd": (lambda x, y: jnp.sum(_zero_vjp(x) + y), (False, True)),
    "integer path cuts": (
        lambda x, y: jnp.sum(jnp.floor(x).astype(jnp.int32).astype(jnp.float32) + y),
        (False, True),
    ),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(CASES))
def test_allow_unused_reports_structural_dependence(name, jit):
    fn, expected = CASES[name]
    g = grad(fn, argnums=(0, 1), allow_unused=True)
    got = (jax.jit(g) if jit else g)(ONES, ONES)
    assert tuple(v is not None for v in got) == expected
    # the connected gradients are jax.grad's, value for value
    ref = jax.grad(fn, argnums=(0, 1))(ONES, ONES)
    for have, want in zip(got, ref):
        if have is not None:
            np.testing.assert_allclose(have, want, rtol=1e-6)


def test_dead_relu_gradient_is_zero_not_none():
    gx, gy = grad(lambda x, y: jnp.sum(jax.nn.relu(x) * y), (0, 1))(-ONES, ONES)
    np.testing.assert_array_equal(gx, jnp.zeros(3, jnp.float32))
    np.testing.assert_array_equal(gy, jnp.zeros(3, jnp.float32))  # relu(-1) = 0 times y: still used


def test_unused_pytree_leaf_is_named_in_the_error():
    fn = lambda p: jnp.sum(p["w"] ** 2)
    params = {"w": ONES, "b": ONES}
    with pytest.raises(ValueError, match=r"argument 0\['b'\]"):
        grad(fn)(params)
    g = grad(fn, allow_unused=True)(params)
    assert g["b"] is None
    np.testing.assert_array_equal(g["w"], 2 * ONES)


def test_data_dependence_counts_stop_gradient_as_a_read():
    fn = lambda x, y, z: jax.lax.stop_gradient(x) + y
    assert data_dependence(fn, ONES, ONES, ONES) == [True, True, False]
    deps = data_dependence(lambda p: p["a"] * 2, {"a": ONES, "b": ONES})
    assert deps == [{"a": True, "b": False}]
