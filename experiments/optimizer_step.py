"""Seed 004: how ``loss.backward()`` and ``optimizer.step()`` connect — and why in optax the
optimizer needs no loss either.

Run: ``python -m experiments.optimizer_step [--lr 0.001] [--lr2 0.1]``

The PyTorch it reproduces::

    x = torch.tensor([1., 2.], requires_grad=True)
    loss = (100 * x).sum(); loss.backward(); print(x.grad)      # tensor([100., 100.])
    optim = torch.optim.SGD([x], lr=0.001); optim.step(); print(x)   # tensor([0.9000, 1.9000])

    x = torch.tensor([1.0], requires_grad=True); y = torch.tensor([2.0], requires_grad=True)
    z = 3 * x**2 + y**3; z.backward(); print(x.grad, y.grad)    # tensor([6.]) tensor([12.])
    optimizer = torch.optim.SGD([x, y], lr=0.1); optimizer.step()
    print(x, y)                                                  # tensor([0.4000]) tensor([0.8000])

PyTorch's optimizer reads ``.grad`` off the tensors it was given. optax makes the hand-off
explicit: ``state = opt.init(params)``; ``updates, state = opt.update(grads, state, params)``;
``params = optax.apply_updates(params, updates)``. ``update`` sees gradients, state and params —
never the loss — which is exactly why ``optimizer.step()`` needs no loss argument.

float32: 1 - 0.1·6 is 0.39999998 and 2 - 0.1·12 is 0.79999995 in float32; PyTorch computes the
same bits and prints them rounded to 4 digits as 0.4000 / 0.8000.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from experiments._support.common import Row, allclose, close_row, fmt
from jaxgrad.report.cli import CheckedConfig, option, run_main
from jaxgrad.training.step import init_train_state, make_train_step


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    lr: float = option(0.001, "SGD learning rate of the first example (the seed's 0.001)", gt=0)
    lr2: float = option(0.1, "SGD learning rate of the z = 3x² + y³ example (the seed's 0.1)", gt=0)

    @classmethod
    def tiny(cls) -> Config:
        return cls()


def linear_loss(x: jax.Array) -> jax.Array:
    """``(100 * x).sum()``: gradient 100 for every entry of ``x: [N]``."""
    return jnp.sum(100 * x)


def z_fn(params: dict) -> jax.Array:
    """``3x² + y³`` on the seed's shape-(1,) tensors: returns shape (1,), not a scalar."""
    return 3 * params["x"] ** 2 + params["y"] ** 3


def z_loss_fn(params: dict, batch, key) -> tuple[jax.Array, dict]:
    """The train-step form: PyTorch's ``z.backward()`` accepts a 1-element tensor; JAX needs a
    shape-() scalar, so take ``z[0]``."""
    del batch, key
    return z_fn(params)[0], {}


def sgd_by_hand(params, grads, optimizer: optax.GradientTransformation):
    """``optimizer.step()`` spelled out: init, update (grads only — no loss), apply."""
    opt_state = optimizer.init(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates)


def main(cfg: Config) -> dict:
    out: dict = {}
    x = jnp.array([1.0, 2.0], jnp.float32)
    g = jax.grad(linear_loss)(x)  # loss.backward(); x.grad
    out["x_grad"], out["x_new"] = g, sgd_by_hand(x, g, optax.sgd(cfg.lr))
    print(f"x = {fmt(x)}; loss = sum(100 x); x.grad = {fmt(g)}")
    print(f"optax.sgd({cfg.lr:g}): init → update(grads) → apply_updates: x = {fmt(out['x_new'])}")

    params = {"x": jnp.array([1.0], jnp.float32), "y": jnp.array([2.0], jnp.float32)}
    grads = jax.grad(lambda p: z_fn(p)[0])(params)
    out.update(z=z_fn(params), grads=grads, after=sgd_by_hand(params, grads, optax.sgd(cfg.lr2)))
    print(
        f"z = 3x² + y³ at x=1, y=2: z = {fmt(out['z'])}; x.grad {fmt(grads['x'])}, y.grad {fmt(grads['y'])}"
    )
    print(
        f"optax.sgd({cfg.lr2:g}) step: x = {float(out['after']['x'][0]):.8g}, y = {float(out['after']['y'][0]):.8g} "
        "(float32; PyTorch prints 0.4000 / 0.8000 — the same float32 values rounded)"
    )

    # The same step through jaxgrad's one train-step factory: value_and_grad + update + apply.
    opt = optax.sgd(cfg.lr2)
    step = make_train_step(z_loss_fn, opt)
    state, metrics = step(init_train_state(params, opt), None, jax.random.key(0))
    out["train_step"] = state.params
    print(
        f"make_train_step (one jit): x = {fmt(state.params['x'])}, y = {fmt(state.params['y'])}, loss {float(metrics['loss']):g}"
    )
    return out


def tour() -> list[Row]:
    r = main(Config())
    a, ts, g = r["after"], r["train_step"], r["grads"]
    sgd = f"{float(a['x'][0]):.8g}, {float(a['y'][0]):.8g}"
    return [
        close_row("004 grad of sum(100x)", "[100., 100.]", r["x_grad"], [100, 100]),
        close_row("004 SGD lr 0.001", "[0.9000, 1.9000]", r["x_new"], [0.9, 1.9]),
        Row("004 z=3x²+y³ grads", "[6.], [12.]", f"{fmt(g['x'])}, {fmt(g['y'])}",
            allclose(g["x"], [6.0]) and allclose(g["y"], [12.0])),
        Row("004 SGD lr 0.1", "[0.4000], [0.8000]", sgd,
            allclose(a["x"], [0.4]) and allclose(a["y"], [0.8]) and allclose(ts["x"], a["x"])),
    ]  # fmt: skip


if __name__ == "__main__":
    run_main(main, Config)
