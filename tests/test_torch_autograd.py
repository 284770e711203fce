"""PyTorch parity: the seeds' autograd calls in torch and in jaxgrad, on the same inputs.

Skipped (with a reason) when torch is not importable; see tests/conftest.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgrad as jg

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"

torch = pytest.importorskip("torch")

ATOL = 1e-6  # float32 tolerance: both sides compute in float32


def _t(a, grad=True):
    """A float32 torch leaf holding the same numbers as the JAX array ``a``."""
    return torch.tensor(np.asarray(a), dtype=torch.float32, requires_grad=grad)


def _close(jax_value, torch_value, rtol=1e-6):
    t = torch_value.detach().numpy() if isinstance(torch_value, torch.Tensor) else torch_value
    np.testing.assert_allclose(np.asarray(jax_value), t, rtol=rtol, atol=ATOL)


def f001(x):
    return 3 * x**2 + 2 * x + 1  # same code for a torch tensor and a jax array


def test_seed001_grad_and_accumulation_match_torch():
    t = _t(2.0)
    torch_grads = []
    for _ in range(3):
        f001(t).backward()  # no zero_grad: .grad accumulates
        torch_grads.append(t.grad.item())
    assert torch_grads == [14.0, 28.0, 42.0]
    x = jnp.float32(2.0)
    acc, ours = None, []
    for _ in range(3):
        acc = jg.accumulate(acc, jg.backward(f001, x).grads[0])
        ours.append(float(acc))
    assert ours == torch_grads
    (ref,) = jg.grad_refs(x)
    pb = jg.pullback(f001, x)
    with_refs = []
    for _ in range(3):
        pb.accumulate_into((ref,))
        with_refs.append(float(jg.read_refs(ref)))
    assert with_refs == torch_grads


def test_retain_graph_error_in_torch_and_reusable_pullback_in_jax():
    t = _t(2.0)
    out = f001(t)
    out.backward()
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        out.backward()
    t.grad = None
    out = f001(t)
    out.backward(retain_graph=True)
    out.backward()  # allowed with retain_graph on the first call: .grad is now 28
    pb = jg.pullback(f001, jnp.float32(2.0))
    assert [float(pb()[0]) for _ in range(2)] == [14.0, 14.0]  # reusable, never accumulates
    assert t.grad.item() == 28.0


def test_zero_grad_sets_none_in_torch():
    t = _t(2.0)
    opt = torch.optim.SGD([t], lr=0.1)
    f001(t).backward()
    opt.zero_grad()
    assert t.grad is None  # torch >= 2.0; jg.accumulate(None, g) starts from that state
    g = jg.backward(f001, jnp.float32(2.0)).grads[0]
    assert float(jg.accumulate(None, g)) == 14.0
    assert float(jg.zero_grad(g)) == 0.0


def test_seed003_matmul_with_grad_tensors_matches_torch():
    x_np = np.array([[2.0, 1.0]], np.float32)
    y_np = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    ct_np = np.array([[1.0, 0.0]], np.float32)
    x, y = _t(x_np), _t(y_np)
    z = torch.mm(x, y)
    z.backward(torch.tensor(ct_np), retain_graph=True)
    res = jg.backward(jnp.matmul, jnp.asarray(x_np), jnp.asarray(y_np), cotangent=ct_np)
    _close(res.out, z)
    _close(res.grads[0], x.grad)
    _close(res.grads[1], y.grad)


def test_seed003_non_scalar_error_and_ones_cotangent_match_torch():
    x = _t(np.ones(2, np.float32))
    z = x + 2
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar"):
        z.backward()
    with pytest.raises(ValueError, match="grad can be implicitly created only for scalar"):
        jg.backward(lambda t: t + 2, jnp.ones(2))
    z.backward(torch.ones_like(z))
    _close(jg.backward(lambda t: t + 2, jnp.ones(2), cotangent=jnp.ones(2)).grads[0], x.grad)


def test_seed003_two_leaves_match_torch():
    x, y = _t(1.0), _t(2.0)
    z = x**2 + y
    z.backward()
    res = jg.backward(lambda a, b: a**2 + b, jnp.float32(1.0), jnp.float32(2.0))
    _close(res.out, z)
    _close(res.grads[0], x.grad)
    _close(res.grads[1], y.grad)


def test_is_grads_batched_matches_torch(key):
    x_np = np.asarray(jax.random.normal(key, (3,)))
    x = _t(x_np)
    z = torch.sin(x) * x.sum()
    (torch_jac,) = torch.autograd.grad(z, x, torch.eye(3), is_grads_batched=True)
    (jax_jac,) = jg.pullback(lambda t: jnp.sin(t) * t.sum(), jnp.asarray(x_np)).batched(jnp.eye(3))
    _close(jax_jac, torch_jac, rtol=1e-5)


def test_allow_unused_and_materialize_grads_match_torch():
    x, y = _t(np.ones(2, np.float32)), _t(np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match="appears to not have been used in the graph"):
        torch.autograd.grad((x**2).sum(), (x, y))
    with pytest.raises(ValueError, match="appears to not have been used in the graph"):
        jg.grad(lambda a, b: (a**2).sum(), argnums=(0, 1))(jnp.ones(2), jnp.ones(3))
    tgx, tgy = torch.autograd.grad((x**2).sum(), (x, y), allow_unused=True)
    gx, gy = jg.grad(lambda a, b: (a**2).sum(), argnums=(0, 1), allow_unused=True)(
        jnp.ones(2), jnp.ones(3)
    )
    assert tgy is None and gy is None
    _close(gx, tgx)
    _, tmy = torch.autograd.grad((x**2).sum(), (x, y), materialize_grads=True)
    _, my = jg.grad(lambda a, b: (a**2).sum(), argnums=(0, 1), materialize_grads=True)(
        jnp.ones(2), jnp.ones(3)
    )
    _close(my, tmy)


def test_dead_relu_is_zero_not_none_in_both():
    x = _t(np.ones(2, np.float32))
    (tg,) = torch.autograd.grad(torch.relu(-x).sum(), (x,), allow_unused=True)
    g = jg.grad(lambda a: jax.nn.relu(-a).sum(), allow_unused=True)(jnp.ones(2))
    assert tg is not None and g is not None
    _close(g, tg)


def test_hvp_matches_torch_create_graph(key):
    kx, kv = jax.random.split(key)
    x_np = np.asarray(jax.random.normal(kx, (4,)))
    v_np = np.asarray(jax.random.normal(kv, (4,)))
    x = _t(x_np)
    loss = (torch.sin(x) * x**2).sum()
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (torch_hv,) = torch.autograd.grad(g, x, torch.tensor(v_np))
    (hv,) = jg.hvp(lambda t: jnp.sum(jnp.sin(t) * t**2), (jnp.asarray(x_np),), (v_np,))
    _close(hv, torch_hv, rtol=1e-5)


def test_detach_matches_torch():
    x = _t(3.0)
    (x * x.detach()).backward()
    _close(jax.grad(lambda t: t * jg.detach(t))(jnp.float32(3.0)), x.grad)


def test_seed004_sgd_steps_match_torch():
    # y = 100x, loss = y.sum(): grad [100, 100]; SGD lr 0.001 -> [0.9, 1.9].
    x = _t(np.array([1.0, 2.0], np.float32))
    (100 * x).sum().backward()
    torch.optim.SGD([x], lr=0.001).step()
    params = jnp.array([1.0, 2.0])
    g = jax.grad(lambda p: (100 * p).sum())(params)
    opt = optax.sgd(0.001)
    upd, _ = opt.update(g, opt.init(params), params)
    _close(optax.apply_updates(params, upd), x)
    # z = 3x² + y³ at (1, 2): grads 6, 12; SGD lr 0.1 -> 0.4, 0.8 (0.39999998 in float32).
    tx, ty = _t(np.array([1.0], np.float32)), _t(np.array([2.0], np.float32))
    (3 * tx**2 + ty**3).sum().backward()
    torch.optim.SGD([tx, ty], lr=0.1).step()
    p = {"x": jnp.array([1.0]), "y": jnp.array([2.0])}
    g = jax.grad(lambda q: (3 * q["x"] ** 2 + q["y"] ** 3).sum())(p)
    opt = optax.sgd(0.1)
    new = optax.apply_updates(p, opt.update(g, opt.init(p), p)[0])
    assert new["x"].item() == tx.item() and new["y"].item() == ty.item()  # same float32 bits


def test_adam_three_steps_match_torch(key):
    w_np = np.asarray(jax.random.normal(key, (5,)))
    target = np.linspace(-1, 1, 5).astype(np.float32)
    w = _t(w_np)
    topt = torch.optim.Adam([w], lr=0.01)
    for _ in range(3):
        topt.zero_grad()
        ((w - torch.tensor(target)) ** 2).sum().backward()
        topt.step()
    params = jnp.asarray(w_np)
    opt = optax.adam(0.01)
    state = opt.init(params)
    for _ in range(3):
        g = jax.grad(lambda p: jnp.sum((p - target) ** 2))(params)
        upd, state = opt.update(g, state, params)
        params = optax.apply_updates(params, upd)
    _close(params, w, rtol=1e-5)


def test_accumulation_sum_matches_torch_and_mean_is_divided_by_k(key):
    # Three micro-batches: torch .grad sums them; MultiSteps(mean=False) does the same.
    batches = np.asarray(jax.random.normal(key, (3, 4)))
    w_np = np.array([0.5, -0.5, 1.0, 2.0], np.float32)
    w = _t(w_np)
    for b in batches:
        (w * torch.tensor(b)).pow(2).sum().backward()
    torch.optim.SGD([w], lr=0.01).step()
    loss = lambda p, b: jnp.sum((p * b) ** 2)
    torch_step = w_np - w.detach().numpy()
    for mean, expected_step in ((False, torch_step), (True, torch_step / 3)):
        opt = jg.accumulating_optimizer(optax.sgd(0.01), 3, mean=mean)
        params = jnp.asarray(w_np)
        state = opt.init(params)
        for b in batches:
            upd, state = opt.update(jax.grad(loss)(params, b), state, params)
            params = optax.apply_updates(params, upd)
        np.testing.assert_allclose(w_np - np.asarray(params), expected_step, rtol=1e-5, atol=ATOL)


def test_per_term_grads_match_torch_autograd_grad(key):
    # Seed 002: lossA = sum(x²), lossB = mean(x), x [1, 10]; gradA = 2x, gradB = 0.1.
    x_np = np.asarray(jax.random.uniform(key, (1, 10)))
    x = _t(x_np)
    (ta,) = torch.autograd.grad(x.pow(2).sum(), x, retain_graph=True)
    (tb,) = torch.autograd.grad(x.mean(), x)
    losses = lambda t: {"A": jnp.sum(t**2), "B": jnp.mean(t)}
    per_term = jax.jacrev(losses)(jnp.asarray(x_np))
    _close(per_term["A"], ta)
    _close(per_term["B"], tb)


def test_clip_grad_norm_matches_torch(key):
    g_np = np.asarray(10 * jax.random.normal(key, (6,)))
    w = _t(np.zeros(6, np.float32))
    w.grad = torch.tensor(g_np)
    total = torch.nn.utils.clip_grad_norm_([w], max_norm=1.0)
    clip = optax.clip_by_global_norm(1.0)
    clipped, _ = clip.update(jnp.asarray(g_np), clip.init(None))
    _close(optax.tree.norm(jnp.asarray(g_np)), total, rtol=1e-5)
    _close(clipped, w.grad, rtol=1e-5)


def test_param_groups_match_optax_partition():
    # torch: SGD([{"params": [a], "lr": 0.1}, {"params": [b]}], lr=0.01); optax: one partition.
    a, b = _t(np.array([1.0, -2.0], np.float32)), _t(np.array([3.0], np.float32))
    topt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b]}], lr=0.01)
    ((a**2).sum() + (b**3).sum()).backward()
    topt.step()
    params = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([3.0])}
    opt = optax.partition(
        {"fast": optax.sgd(0.1), "slow": optax.sgd(0.01)}, {"a": "fast", "b": "slow"}
    )
    g = jax.grad(lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 3))(params)
    new = optax.apply_updates(params, opt.update(g, opt.init(params), params)[0])
    _close(new["a"], a)  # 1 - 0.1·2 = 0.8, -2 + 0.1·4 = -1.6
    _close(new["b"], b)  # 3 - 0.01·27 = 2.73
    np.testing.assert_allclose(new["a"], [0.8, -1.6], rtol=1e-6)
    np.testing.assert_allclose(new["b"], [2.73], rtol=1e-6)
