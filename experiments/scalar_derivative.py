"""Seed 001: the derivative of f(x) = 3x² + 2x + 1, gradient accumulation, zero_grad, no_grad,
detach, and freezing part of a model — as pure JAX.

Run: ``python -m experiments.scalar_derivative`` (``--x 3 --repeats 4 --steps 20``, ``--tiny``).

The PyTorch it reproduces::

    t = torch.tensor(2.0, requires_grad=True)
    myfunction(t).backward(); print(t.grad)          # tensor(14.)
    for i in range(3):                               # no zero_grad in between:
        myfunction(t).backward(); print(t.grad)      # 14., 28., 42. (accumulates)
    optimizer.zero_grad()                            # .grad -> None
    with torch.no_grad(): ...; t.detach()            # no gradient recorded
    for p in model.parameters(): p.requires_grad = False
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=0.001)   # only the head trains

``jax.grad`` is a pure function: it returns 14 every call. Accumulation is shown two ways: a
functional accumulator you thread through (:func:`jaxgrad.autodiff.accumulate.accumulate`) and mutable
``jax.new_ref`` cells filled by ``jax.vjp(...).with_refs`` (:meth:`jaxgrad.Pullback.accumulate_into`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxgrad as jg
from experiments._support.common import Row, allclose, close_row, fmt
from jaxgrad.report.cli import CheckedConfig, option, run_main


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    x: float = option(2.0, "point where f(x)=3x²+2x+1 is differentiated (the seed's 2.0)")
    repeats: int = option(3, "backward() calls without zero_grad (the seed's 3)", gt=0)
    steps: int = option(20, "training steps of the frozen-backbone model", gt=0)
    lr: float = option(0.05, "adamw learning rate for the trainable head", gt=0)
    weight_decay: float = option(
        0.1, "adamw weight decay (must not touch the frozen backbone)", ge=0
    )
    seed: int = option(0, "PRNG seed for the model init and the synthetic data")

    @classmethod
    def tiny(cls) -> Config:
        return cls(steps=3)


def f(x: jax.Array) -> jax.Array:
    """The seed's ``myfunction``: f(x) = 3x² + 2x + 1, so f'(x) = 6x + 2 (14 at x = 2)."""
    return 3 * x**2 + 2 * x + 1


def accumulated_grads(x: jax.Array, repeats: int) -> dict[str, list[float]]:
    """``.grad`` after each of ``repeats`` backward calls: functional default vs accumulated.

    Returns lists of length ``repeats`` under ``"pure"`` (jax.grad: 14, 14, 14),
    ``"functional"`` (an accumulator threaded by hand: 14, 28, 42) and ``"refs"``
    (``jax.vjp(...).with_refs`` into a ``jax.new_ref`` cell: 14, 28, 42).
    """
    pure = [float(jax.grad(f)(x)) for _ in range(repeats)]
    acc, functional = None, []  # None = PyTorch's .grad before the first backward
    for _ in range(repeats):
        (g,) = jg.backward(f, x).grads
        acc = jg.accumulate(acc, g)
        functional.append(float(acc))
    (ref,) = jg.grad_refs(x)
    pb = jg.pullback(f, x)  # one forward; with_refs adds into ref on every call
    refs = []
    for _ in range(repeats):
        pb.accumulate_into((ref,))
        refs.append(float(jg.read_refs(ref)))
    zeroed = float(jg.zero_grad(acc))
    return {"pure": pure, "functional": functional, "refs": refs, "zeroed": zeroed}


def detach_examples(x: jax.Array) -> dict[str, float]:
    """``no_grad`` / ``detach``: d/dx [x · stop_gradient(x)] = x (one path cut), 0 when both are."""
    return {
        "half_detached": float(jax.grad(lambda t: t * jg.detach(t))(x)),  # PyTorch: t * t.detach()
        "fully_detached": float(jax.grad(lambda t: jg.detach(f(t)))(x)),  # under torch.no_grad()
    }


class MLP(nnx.Module):
    """Two layers: ``backbone`` (pretrained, frozen) and ``head`` (trains). [B, D] -> [B, 1]."""

    def __init__(self, d_in: int, d_hidden: int, *, rngs: nnx.Rngs):
        self.backbone = nnx.Linear(d_in, d_hidden, rngs=rngs)
        self.head = nnx.Linear(d_hidden, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(jax.nn.tanh(self.backbone(x)))


def make_loss_fn(graphdef: nnx.GraphDef):
    """Mean squared error of the merged model; the model itself never computes a loss."""

    def loss_fn(params, batch, key):
        del key  # deterministic model
        x, y = batch
        pred = nnx.merge(graphdef, params)(x)[:, 0]
        return jnp.mean((pred - y) ** 2), {}

    return loss_fn


def freeze_backbone(cfg: Config) -> dict:
    """Train the head with adamw while the backbone stays bit-identical (``requires_grad=False``)."""
    keys = jg.named_keys(cfg.seed, "init", "data", "step")
    graphdef, params = nnx.split(MLP(3, 8, rngs=nnx.Rngs(keys["init"])), nnx.Param)
    x = jax.random.normal(keys["data"], (32, 3))
    batch = (x, jnp.sin(x).sum(-1))
    mask = jg.frozen_mask(params, ["backbone"])
    opt = jg.optimizer_with_frozen(optax.adamw(cfg.lr, weight_decay=cfg.weight_decay), mask)
    state = jg.init_train_state(params, opt)
    before = jax.tree_util.tree_map(np.asarray, params)  # host copies: the step donates buffers
    # Only the optimizer state: state.params has backbone paths too, and those are the params.
    opt_leaves = jax.tree_util.tree_leaves_with_path(state.opt_state)
    n_backbone_state = sum("backbone" in jax.tree_util.keystr(p) for p, _ in opt_leaves)
    step = jg.make_train_step(make_loss_fn(graphdef), opt)
    losses = []
    for _ in range(cfg.steps):
        state, metrics = step(state, batch, keys["step"])
        losses.append(float(metrics["loss"]))
    after = state.params
    changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(b) != a)), before, after)
    return {
        "backbone_identical": not any(jax.tree_util.tree_leaves(changed["backbone"])),
        "head_changed": all(jax.tree_util.tree_leaves(changed["head"])),
        "backbone_state_arrays": n_backbone_state,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


def main(cfg: Config) -> dict:
    x = jnp.float32(cfg.x)
    grad = float(jax.grad(f)(x))
    print(f"f(x) = 3x²+2x+1 at x={cfg.x}: f'(x) = {grad:g}   (hand: 6x+2 = {6 * cfg.x + 2:g})")
    acc = accumulated_grads(x, cfg.repeats)
    print(f"{cfg.repeats} backward() calls, PyTorch .grad accumulates: ", end="")
    print(f"functional accumulator {acc['functional']}, with_refs {acc['refs']}")
    print(f"jax.grad is pure, the same call each time:            {acc['pure']}")
    print(f"zero_grad(acc) -> {acc['zeroed']:g} (PyTorch >= 2.0 sets .grad to None)")
    det = detach_examples(x)
    print(
        f"d/dx [x * detach(x)] = {det['half_detached']:g} (= x); "
        f"d/dx detach(f(x)) = {det['fully_detached']:g}"
    )
    fr = freeze_backbone(cfg)
    print(
        f"frozen backbone after {cfg.steps} adamw steps (wd {cfg.weight_decay}): bit-identical "
        f"{fr['backbone_identical']}, optimizer-state arrays {fr['backbone_state_arrays']}; head "
        f"changed {fr['head_changed']}; loss {fr['loss_first']:.4f} -> {fr['loss_last']:.4f}"
    )
    return {"grad": grad, **{f"acc_{k}": v for k, v in acc.items()}, **det, **fr}


def tour() -> list[Row]:
    r = main(Config.tiny())
    acc = {"functional acc": r["acc_functional"], "vjp.with_refs": r["acc_refs"]}
    return [
        close_row("001 f'(2) of 3x²+2x+1", "tensor(14.)", r["grad"], 14.0),
        *(Row(f"001 3x backward, {how}", "14, 28, 42", ", ".join(fmt(v) for v in got),
              allclose(got, [14, 28, 42])) for how, got in acc.items()),
        Row("001 after zero_grad", "None (zeros)", fmt(r["acc_zeroed"]), r["acc_zeroed"] == 0.0),
        Row("001 frozen backbone, head trains", "frozen unchanged",
            f"identical={r['backbone_identical']}, head moved={r['head_changed']}",
            r["backbone_identical"] and r["head_changed"] and r["backbone_state_arrays"] == 0),
    ]  # fmt: skip


if __name__ == "__main__":
    run_main(main, Config)
