"""Seed 003: ``backward(grad_tensors)``, ``retain_graph``, ``create_graph`` and
``autograd.grad(allow_unused=..., only_inputs=...)`` as ``jax.vjp`` and friends.

Run: ``python -m experiments.vjp [--cotangent 1 0]``

The PyTorch it reproduces::

    x = torch.tensor(1.0, requires_grad=True); y = torch.tensor(2.0, requires_grad=True)
    z = x**2 + y; z.backward(); print(z, x.grad, y.grad)     # 3., 2., 1.
    x = torch.ones(2, requires_grad=True); z = x + 2
    z.backward()   # RuntimeError: grad can be implicitly created only for scalar outputs
    z.backward(torch.ones_like(z)); print(x.grad)            # tensor([1., 1.])
    x = torch.tensor([2., 1.], requires_grad=True).view(1, 2)
    y = torch.tensor([[1., 2.], [3., 4.]], requires_grad=True)
    z = torch.mm(x, y)                                       # [[5., 8.]]
    z.backward(torch.Tensor([[1., 0]]), retain_graph=True)
    print(x.grad, y.grad)                                    # [[1., 3.]], [[2., 0.], [1., 0.]]

A VJP cotangent is PyTorch's ``grad_tensors``: ``x.grad = cotangent @ yᵀ`` and
``y.grad = xᵀ @ cotangent`` for ``z = x @ y``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from experiments._support.common import Row, allclose, close_row, fmt
from jaxgrad.autodiff.autograd import backward, grad, hvp, nth_grad, pullback
from jaxgrad.report.cli import CheckedConfig, option, run_main

X = ((2.0, 1.0),)  # the seed's x, shape [1, 2]
Y = ((1.0, 2.0), (3.0, 4.0))  # the seed's y, shape [2, 2]


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    cotangent: tuple[float, ...] = option(
        (1.0, 0.0), "grad_tensors for z = x @ y, shape [1, 2] (the seed's [[1, 0]])"
    )

    def __post_init__(self):
        super().__post_init__()
        if len(self.cotangent) != 2:
            raise ValueError(
                f"--cotangent needs 2 numbers (z = x @ y has shape [1, 2]), got {self.cotangent}"
            )

    @classmethod
    def tiny(cls) -> Config:
        return cls()


def scalar_example() -> dict:
    """``z = x**2 + y`` at (1, 2): z = 3, dz/dx = 2x = 2, dz/dy = 1."""
    res = backward(lambda x, y: x**2 + y, jnp.float32(1.0), jnp.float32(2.0))
    return {"z": float(res.out), "x_grad": float(res.grads[0]), "y_grad": float(res.grads[1])}


def main(cfg: Config) -> dict:
    s = scalar_example()
    out: dict = {"scalar": s}
    print(
        f"z = x**2 + y at (1, 2): z = {s['z']:g}, x.grad = {s['x_grad']:g}, y.grad = {s['y_grad']:g}"
    )

    # z = x + 2 on a vector: no implicit cotangent, so PyTorch's error — and ours.
    ones = jnp.ones(2, jnp.float32)
    try:
        backward(lambda x: x + 2, ones)
        out["scalar_error"] = None
    except ValueError as e:
        out["scalar_error"] = str(e)
    print(f"backward on a [2] output without cotangent → ValueError: {out['scalar_error']}")
    out["ones_grad"] = backward(lambda x: x + 2, ones, cotangent=jnp.ones(2, jnp.float32)).grads[0]
    out["sum_grad"] = jax.grad(lambda x: (x + 2).sum())(ones)
    print(
        f"z = x + 2, cotangent ones → x.grad {fmt(out['ones_grad'])}; via .sum() {fmt(out['sum_grad'])}"
    )

    # z = x @ y with grad_tensors, via one reusable pullback (retain_graph=True).
    x, y = jnp.array(X, jnp.float32), jnp.array(Y, jnp.float32)
    ct = jnp.array([cfg.cotangent], jnp.float32)
    pb = pullback(jnp.matmul, x, y)  # torch.mm: [1, 2] @ [2, 2] -> [1, 2]
    gx, gy = pb(ct)
    by_hand = (ct @ y.T, x.T @ ct)  # the closed-form VJP of x @ y
    out.update(z=pb.out, x_grad=gx, y_grad=gy, by_hand=by_hand)
    print(f"z = x @ y = {fmt(pb.out)}; cotangent {fmt(ct)}")
    print(f"  x.grad = {fmt(gx)}   (ct @ yᵀ = {fmt(out['by_hand'][0])})")
    print(f"  y.grad = {fmt(gy)}   (xᵀ @ ct = {fmt(out['by_hand'][1])})")

    # retain_graph: the same pullback again with another cotangent, no new forward pass;
    # is_grads_batched: both one-hot cotangents at once with vmap — the rows of the Jacobian.
    e1 = jnp.array([[0.0, 1.0]], jnp.float32)
    out["second_x_grad"] = pb(e1)[0]
    out["batched_x_grad"] = pb.batched(jnp.eye(2, dtype=jnp.float32)[:, None, :])[0]
    print(f"  same pullback, cotangent [[0, 1]] → x.grad {fmt(out['second_x_grad'])}")
    print(f"  batched cotangents eye(2) → x.grad rows {fmt(out['batched_x_grad'][:, 0])} (= yᵀ)")

    # create_graph=True: derivatives of derivatives.
    f = lambda t: 3 * t**2 + 2 * t + 1
    out["d2f"] = float(nth_grad(f, 2)(jnp.float32(2.0)))
    v = jnp.array([1.0, 2.0], jnp.float32)
    out["hvp"] = hvp(lambda w: jnp.sum(w**3), (v,), (jnp.ones(2, jnp.float32),))[0]
    print(f"f''(x) of 3x²+2x+1 = {out['d2f']:g}; H·1 of sum(w³) at [1, 2] = {fmt(out['hvp'])} (6w)")

    # allow_unused: y never reaches the output; decided from the jaxpr, not from zeros.
    g = lambda a, b: jnp.sum(a**2)
    try:
        grad(g, argnums=(0, 1))(v, v)
        out["unused_error"] = None
    except ValueError as e:
        out["unused_error"] = str(e)
    out["allow_unused"] = grad(g, argnums=(0, 1), allow_unused=True)(v, v)
    out["materialized"] = grad(g, argnums=(0, 1), materialize_grads=True)(v, v)
    print(f"allow_unused=False → ValueError: {out['unused_error']}")
    print(f"allow_unused=True → {fmt(out['allow_unused'][0])}, {out['allow_unused'][1]}")
    print(f"materialize_grads=True → {fmt(out['materialized'][0])}, {fmt(out['materialized'][1])}")
    print(
        "only_inputs: deprecated and ignored in PyTorch; jax returns gradients for argnums only "
        "and never writes into other leaves."
    )
    return out


def tour() -> list[Row]:
    r = main(Config())
    s, yt = r["scalar"], jnp.array(Y, jnp.float32).T
    err, unused, zeros = r["scalar_error"], r["allow_unused"], r["materialized"][1]
    return [
        Row("003 z=x**2+y at (1,2)", "3., 2., 1.", f"{s['z']:g}, {s['x_grad']:g}, {s['y_grad']:g}",
            allclose([s["z"], s["x_grad"], s["y_grad"]], [3.0, 2.0, 1.0])),
        Row("003 vector backward, no grad_tensors", "RuntimeError: ...only for scalar outputs",
            "ValueError: ...only for scalar outputs",
            err is not None and "only for scalar outputs" in err),
        close_row("003 z=x+2, ones", "[1., 1.]", r["ones_grad"], [1, 1]),
        close_row("003 z = x @ y", "[[5., 8.]]", r["z"], [[5, 8]]),
        close_row("003 x.grad, ct [[1,0]]", "[[1., 3.]]", r["x_grad"], [[1, 3]]),
        close_row("003 y.grad, ct [[1,0]]", "[[2., 0.], [1., 0.]]", r["y_grad"], [[2, 0], [1, 0]]),
        Row("003 retain_graph / batched", "rows of yᵀ", fmt(r["batched_x_grad"][:, 0]),
            allclose(r["batched_x_grad"][:, 0], yt) and allclose(r["second_x_grad"], [[2, 4]])),
        Row("003 create_graph: f'', HVP", "6., [6., 12.]", f"{r['d2f']:g}, {fmt(r['hvp'])}",
            allclose(r["d2f"], 6.0) and allclose(r["hvp"], 6 * jnp.array([1.0, 2.0]))),
        Row("003 allow_unused", "error / None / zeros", f"error / {unused[1]} / {fmt(zeros)}",
            r["unused_error"] is not None and unused[1] is None
            and allclose(zeros, [0, 0]) and allclose(unused[0], [2.0, 4.0])),  # 2a at a = [1, 2]
    ]  # fmt: skip


if __name__ == "__main__":
    run_main(main, Config)
