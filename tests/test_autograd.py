"""jaxgrad.autodiff.autograd against hand-derived gradients, check_grads, jit, and its documented errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxgrad as jg


def f001(x):
    """Seed 001: f(x) = 3x² + 2x + 1, f'(x) = 6x + 2, f''(x) = 6."""
    return 3 * x**2 + 2 * x + 1


X003 = jnp.array([[2.0, 1.0]])  # seed 003's x, [1, 2]
Y003 = jnp.array([[1.0, 2.0], [3.0, 4.0]])  # seed 003's y, [2, 2]


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("x", [-1.5, 0.0, 2.0, 3.0])
def test_backward_scalar_matches_hand_derived(x):
    res = jg.backward(f001, jnp.float32(x))
    assert float(res.out) == pytest.approx(3 * x**2 + 2 * x + 1)
    assert float(res.grads[0]) == pytest.approx(6 * x + 2)


def test_backward_seed001_gives_14():
    assert float(jg.backward(f001, jnp.float32(2.0)).grads[0]) == 14.0


def test_vjp_with_cotangent_matches_hand_derived():
    # z = x @ y; with cotangent c: x.grad = c @ yᵀ, y.grad = xᵀ @ c.
    ct = jnp.array([[1.0, 0.0]])
    res = jg.backward(jnp.matmul, X003, Y003, cotangent=ct)
    np.testing.assert_array_equal(res.out, [[5.0, 8.0]])
    np.testing.assert_array_equal(res.grads[0], [[1.0, 3.0]])
    np.testing.assert_array_equal(res.grads[1], [[2.0, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize("ct", [(1.0, 0.0), (0.0, 1.0), (0.5, -2.0)])
def test_vjp_matmul_general_cotangent(ct):
    c = jnp.array([ct])
    gx, gy = jg.backward(jnp.matmul, X003, Y003, cotangent=c).grads
    np.testing.assert_allclose(gx, np.asarray(c) @ np.asarray(Y003).T, rtol=1e-6)
    np.testing.assert_allclose(gy, np.asarray(X003).T @ np.asarray(c), rtol=1e-6)


def test_add_two_with_ones_cotangent_gives_ones():
    x = jnp.ones(2)
    (g,) = jg.backward(lambda t: t + 2, x, cotangent=jnp.ones(2)).grads
    np.testing.assert_array_equal(g, [1.0, 1.0])


def test_sum_then_backward_equals_ones_cotangent():
    x = jnp.array([0.3, -1.2, 4.0])
    (g_sum,) = jg.backward(lambda t: (t + 2).sum(), x).grads
    (g_ct,) = jg.backward(lambda t: t + 2, x, cotangent=jnp.ones(3)).grads
    np.testing.assert_array_equal(g_sum, g_ct)


def test_two_leaves_x_squared_plus_y():
    # Seed 003: z = x**2 + y at x=1, y=2 -> z=3, dz/dx = 2x = 2, dz/dy = 1.
    res = jg.backward(lambda x, y: x**2 + y, jnp.float32(1.0), jnp.float32(2.0))
    assert float(res.out) == 3.0
    assert [float(g) for g in res.grads] == [2.0, 1.0]


def test_backward_has_aux_returns_aux():
    res = jg.backward(lambda x: (x**2, {"double": 2 * x}), jnp.float32(3.0), has_aux=True)
    assert float(res.grads[0]) == 6.0
    assert float(res.aux["double"]) == 6.0


def test_pullback_reuses_one_forward_for_many_cotangents():
    pb = jg.pullback(jnp.matmul, X003, Y003)
    for c in ([[1.0, 0.0]], [[0.0, 1.0]], [[2.0, 3.0]]):
        c = jnp.array(c)
        gx, gy = pb(c)
        np.testing.assert_allclose(gx, np.asarray(c) @ np.asarray(Y003).T)
        np.testing.assert_allclose(gy, np.asarray(X003).T @ np.asarray(c))


def test_pullback_batched_identity_rows_is_the_jacobian():
    # is_grads_batched with the one-hot rows of the identity gives the Jacobian, row by row.
    x = jnp.array([0.5, -1.0, 2.0])
    fun = lambda t: jnp.stack([t[0] * t[1], jnp.sin(t[2]), t.sum()])
    (jac,) = jg.pullback(fun, x).batched(jnp.eye(3))
    hand = np.array(
        [[x[1], x[0], 0.0], [0.0, 0.0, np.cos(x[2])], [1.0, 1.0, 1.0]], dtype=np.float32
    )
    np.testing.assert_allclose(jac, hand, rtol=1e-6)
    np.testing.assert_allclose(jac, jax.jacrev(fun)(x), rtol=1e-6)


def test_pullback_batched_equals_stacked_single_calls():
    pb = jg.pullback(jnp.matmul, X003, Y003)
    cts = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]], [[2.0, -1.0]]])  # [K=3, 1, 2]
    gx, gy = pb.batched(cts)
    assert gx.shape == (3, 1, 2) and gy.shape == (3, 2, 2)
    for k in range(3):
        sx, sy = pb(cts[k])
        np.testing.assert_allclose(gx[k], sx)
        np.testing.assert_allclose(gy[k], sy)


def test_hvp_matches_hand_derived_hessian():
    # f(x) = sum(x³) + x0·x1: H = diag(6x) + [[0,1],[1,0]] (2-D).
    x = jnp.array([1.0, 2.0])
    v = jnp.array([0.5, -1.0])
    fun = lambda t: jnp.sum(t**3) + t[0] * t[1]
    (hv,) = jg.hvp(fun, (x,), (v,))
    hand = np.array([6 * 1.0 * 0.5 + (-1.0), 0.5 + 6 * 2.0 * (-1.0)])
    np.testing.assert_allclose(hv, hand, rtol=1e-6)


def test_hvp_two_arguments():
    # f(a, b) = a²·b: H = [[2b, 2a], [2a, 0]]; at a=3, b=2, v=(1, 1) -> (4 + 6, 6) = (10, 6).
    out = jg.hvp(lambda a, b: a**2 * b, (jnp.float32(3.0), jnp.float32(2.0)), (1.0, 1.0))
    assert [float(o) for o in out] == [10.0, 6.0]


def test_nth_grad_of_seed001_function():
    x = jnp.float32(2.0)
    assert [float(jg.nth_grad(f001, n)(x)) for n in range(4)] == [17.0, 14.0, 6.0, 0.0]


def test_detach_cuts_one_path_only():
    # d/dx [x · detach(x)] = detach(x) = x; d/dx detach(f(x)) = 0.
    assert float(jax.grad(lambda t: t * jg.detach(t))(jnp.float32(3.0))) == 3.0
    assert float(jax.grad(lambda t: jg.detach(f001(t)))(jnp.float32(3.0))) == 0.0


# ---------------------------------------------------------------- allow_unused


def _uses_x_only(x, y):
    return jnp.sum(x**2)


def test_grad_allow_unused_gives_none_for_unused_input():
    gx, gy = jg.grad(_uses_x_only, argnums=(0, 1), allow_unused=True)(jnp.ones(2), jnp.ones(3))
    np.testing.assert_array_equal(gx, [2.0, 2.0])
    assert gy is None


def test_grad_unused_input_raises_by_default():
    with pytest.raises(ValueError, match=r"not have been used.*argument 1.*allow_unused=True"):
        jg.grad(_uses_x_only, argnums=(0, 1))(jnp.ones(2), jnp.ones(3))


def test_grad_materialize_grads_gives_zeros():
    gx, gy = jg.grad(_uses_x_only, argnums=(0, 1), materialize_grads=True)(jnp.ones(2), jnp.ones(3))
    np.testing.assert_array_equal(gy, np.zeros(3))
    np.testing.assert_array_equal(gx, [2.0, 2.0])


def test_grad_materialize_with_allow_unused_false_is_an_error():
    with pytest.raises(ValueError, match="materialize_grads"):
        jg.grad(_uses_x_only, argnums=(0, 1), allow_unused=False, materialize_grads=True)


def test_grad_dead_relu_is_zero_not_none():
    # relu(-x) for x > 0 has gradient 0.0, but x *is* in the graph (PyTorch: tensor(0.), not None).
    g = jg.grad(lambda x: jax.nn.relu(-x).sum(), allow_unused=True)(jnp.ones(2))
    assert g is not None
    np.testing.assert_array_equal(g, [0.0, 0.0])


def test_grad_pytree_argument_reports_unused_leaf_path():
    params = {"used": jnp.ones(2), "unused": jnp.ones(2)}
    fun = lambda p: jnp.sum(p["used"] * 3.0)
    g = jg.grad(fun, allow_unused=True)(params)
    assert g["unused"] is None
    np.testing.assert_array_equal(g["used"], [3.0, 3.0])
    with pytest.raises(ValueError, match=r"\['unused'\]"):
        jg.grad(fun)(params)


def test_grad_has_aux():
    (g, aux) = jg.grad(lambda x: (x**2, {"x": x}), has_aux=True)(jnp.float32(3.0))
    assert float(g) == 6.0 and float(aux["x"]) == 3.0


# ---------------------------------------------------------------- check_grads (float64)


def test_check_grads_backward_and_pullback():
    with jax.enable_x64(True):
        x = jnp.array([0.3, -1.1, 2.0])
        y = jnp.array([[1.0, 2.0, 0.5], [3.0, 4.0, -1.0], [0.1, 0.2, 0.3]])
        ct = jnp.array([1.0, -2.0, 0.5])
        fun = lambda a, b: jnp.tanh(a @ b)
        check_grads(lambda a: jg.backward(f001, a).grads[0], (jnp.float64(1.7),), order=2)
        check_grads(lambda a, b: jg.backward(fun, a, b, cotangent=ct).grads, (x, y), order=1)
        check_grads(lambda a, b: jg.pullback(fun, a, b)(ct), (x, y), order=1)


def test_check_grads_batched_hvp_and_grad():
    with jax.enable_x64(True):
        x = jnp.array([0.3, -1.1, 2.0])
        v = jnp.array([1.0, 0.5, -0.25])
        fun = lambda t: jnp.sin(t) * t.sum()
        check_grads(lambda t: jg.pullback(fun, t).batched(jnp.eye(3))[0], (x,), order=1)
        scalar = lambda t: jnp.sum(jnp.sin(t) * t**2)
        check_grads(lambda t: jg.hvp(scalar, (t,), (v,))[0], (x,), order=1)
        check_grads(
            lambda t, u: jg.grad(lambda a, b: scalar(a), argnums=0, allow_unused=True)(t, u),
            (x, v),
            order=1,
        )


def test_hvp_equals_jacobian_of_gradient_in_float64():
    with jax.enable_x64(True):
        x = jnp.array([0.3, -1.1, 2.0])
        v = jnp.array([1.0, 0.5, -0.25])
        scalar = lambda t: jnp.sum(jnp.sin(t) * t**2)
        (hv,) = jg.hvp(scalar, (x,), (v,))
        np.testing.assert_allclose(hv, jax.hessian(scalar)(x) @ v, rtol=1e-12)


# ---------------------------------------------------------------- jit vs no-jit


def test_backward_jit_matches_eager():
    ct = jnp.array([[0.5, 2.0]])
    eager = jg.backward(jnp.matmul, X003, Y003, cotangent=ct).grads
    jitted = jax.jit(lambda a, b, c: jg.backward(jnp.matmul, a, b, cotangent=c).grads)(
        X003, Y003, ct
    )
    for e, j in zip(eager, jitted):
        np.testing.assert_allclose(e, j, rtol=1e-6)


def test_grad_allow_unused_jit_matches_eager():
    g = jg.grad(_uses_x_only, argnums=(0, 1), allow_unused=True)
    e, j = g(jnp.ones(2), jnp.ones(3)), jax.jit(g)(jnp.ones(2), jnp.ones(3))
    np.testing.assert_array_equal(e[0], j[0])
    assert e[1] is None and j[1] is None


def test_hvp_and_batched_jit_match_eager():
    x = jnp.array([0.3, -1.1, 2.0])
    v = jnp.array([1.0, 0.5, -0.25])
    scalar = lambda t: jnp.sum(jnp.sin(t) * t**2)
    hvp_fn = lambda t, w: jg.hvp(scalar, (t,), (w,))
    np.testing.assert_allclose(hvp_fn(x, v)[0], jax.jit(hvp_fn)(x, v)[0], rtol=1e-6)
    jac_fn = lambda t: jg.pullback(jnp.sin, t).batched(jnp.eye(3))[0]
    np.testing.assert_allclose(jac_fn(x), jax.jit(jac_fn)(x), rtol=1e-6)


def test_vjp_function_crosses_jit_boundary():
    # A pullback's vjp_fun is a pytree: computed once, passed into a jitted function.
    pb = jg.pullback(jnp.matmul, X003, Y003)
    gx, gy = jax.jit(lambda vf, c: vf(c))(pb.vjp_fun, jnp.array([[1.0, 0.0]]))
    np.testing.assert_array_equal(gx, [[1.0, 3.0]])
    np.testing.assert_array_equal(gy, [[2.0, 0.0], [1.0, 0.0]])


# ---------------------------------------------------------------- documented errors


def test_non_scalar_output_without_cotangent_raises_pytorch_message():
    with pytest.raises(ValueError, match="only for scalar outputs.*cotangent=.*sum"):
        jg.backward(lambda t: t + 2, jnp.ones(2))


def test_shape_one_output_is_not_a_scalar():
    with pytest.raises(ValueError, match=r"shape-\(1,\).*out\[0\]"):
        jg.backward(lambda t: 3 * t**2, jnp.ones(1))


def test_wrong_cotangent_shape_raises():
    with pytest.raises(ValueError, match=r"shape \(2,\).*output has shape \(1, 2\)"):
        jg.backward(jnp.matmul, X003, Y003, cotangent=jnp.array([1.0, 0.0]))


def test_wrong_cotangent_dtype_raises():
    with pytest.raises(TypeError, match="dtype float16.*float32"):
        jg.backward(jnp.matmul, X003, Y003, cotangent=jnp.array([[1.0, 0.0]], jnp.float16))


def test_wrong_cotangent_tree_raises():
    fun = lambda t: {"a": t, "b": 2 * t}
    with pytest.raises(ValueError, match="structure"):
        jg.backward(fun, jnp.ones(2), cotangent={"a": jnp.ones(2)})
    with pytest.raises(ValueError, match="structure"):
        jg.check_cotangent(jnp.ones(2), (jnp.ones(2),))


def test_integer_input_to_differentiation_raises():
    for call in (
        lambda: jg.backward(f001, jnp.int32(2)),
        lambda: jg.pullback(f001, jnp.arange(3)),
        lambda: jg.grad(f001)(jnp.int32(2)),
        lambda: jg.hvp(f001, (jnp.int32(2),), (jnp.int32(1),)),
    ):
        with pytest.raises(TypeError, match="only floating point inputs"):
            call()


def test_integer_leaf_of_pytree_is_named():
    with pytest.raises(TypeError, match=r"argument 0\['n'\]"):
        jg.backward(lambda p: p["w"].sum(), {"w": jnp.ones(2), "n": jnp.int32(3)})


def test_grad_and_hvp_of_non_scalar_raise():
    with pytest.raises(ValueError, match="only for scalar outputs"):
        jg.grad(lambda t: t * 2)(jnp.ones(2))
    with pytest.raises(ValueError, match="only for scalar outputs"):
        jg.hvp(lambda t: t * 2, (jnp.ones(2),), (jnp.ones(2),))


def test_batched_without_leading_axis_raises():
    pb = jg.pullback(jnp.matmul, X003, Y003)
    with pytest.raises(ValueError, match=r"\[K, \*out.shape\]"):
        pb.batched(jnp.array([[1.0, 0.0]]))


def test_nth_grad_negative_order_raises():
    with pytest.raises(ValueError, match="n must be >= 0"):
        jg.nth_grad(f001, -1)


def test_accumulate_skips_none_grads_of_unused_inputs():
    # grad(allow_unused=True) gives None for y; accumulating it keeps y's slot as it was.
    g = jg.grad(_uses_x_only, argnums=(0, 1), allow_unused=True)
    acc = (jnp.ones(2), jnp.full(3, 5.0))
    acc = jg.accumulate(acc, g(jnp.ones(2), jnp.ones(3)))
    np.testing.assert_array_equal(acc[0], [3.0, 3.0])  # 1 + 2x
    np.testing.assert_array_equal(acc[1], [5.0, 5.0, 5.0])


def test_accumulate_starts_from_none_leaves():
    g = jg.grad(_uses_x_only, argnums=(0, 1), allow_unused=True)
    acc = None
    for _ in range(2):
        acc = jg.accumulate(acc, g(jnp.ones(2), jnp.ones(3)))
    np.testing.assert_array_equal(acc[0], [4.0, 4.0])
    assert acc[1] is None
