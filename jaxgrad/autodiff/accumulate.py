"""Gradient accumulation: PyTorch's implicit ``.grad +=`` made explicit.

PyTorch adds every ``backward()`` into ``param.grad`` until ``optimizer.zero_grad()``; calling
``backward`` three times on f(x)=3x²+2x+1 at x=2 gives 14, 28, 42. ``jax.grad`` is a pure
function: it returns 14 every time. Accumulation, when you want it, is a value you carry:

- :func:`accumulate` / :func:`zero_grad` — a functional accumulator (a pytree you thread through);
- :func:`grad_refs` / :func:`read_refs` — mutable ``jax.new_ref`` cells that
  :meth:`jaxgrad.autodiff.autograd.Pullback.accumulate_into` adds into (``vjp(...).with_refs``, jax >= 0.10);
- for training, ``optax.MultiSteps`` (see :func:`accumulating_optimizer`).

Sum vs mean: PyTorch's ``.grad`` *sums* micro-batch gradients (divide the loss by the number of
micro-batches to average); ``optax.MultiSteps`` *averages* them by default.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["accumulate", "accumulating_optimizer", "grad_refs", "read_refs", "zero_grad"]


def zero_grad(params: Any) -> Any:
    """An all-zeros accumulator shaped like ``params`` (``optimizer.zero_grad()``).

    PyTorch >= 2.0 sets ``.grad`` to ``None``; a zero pytree is the functional equivalent that
    keeps a static structure under ``jit``.
    """
    return jax.tree_util.tree_map(jnp.zeros_like, params)


def accumulate(acc: Any, grads: Any) -> Any:
    """``acc + grads`` leaf by leaf (one more ``backward()`` into ``.grad``). Returns a new tree.

    A ``None`` gradient leaf (an unused input from ``jaxgrad.grad(allow_unused=True)``) leaves
    that accumulator leaf as it is, as PyTorch leaves ``.grad`` of an unused input untouched.
    """
    if acc is None:  # PyTorch's first backward after zero_grad(set_to_none=True)
        return grads

    def add(a, g):
        if g is None or a is None:  # an unused input: .grad stays None / untouched
            return a if g is None else g
        return a + g

    return jax.tree_util.tree_map(add, acc, grads, is_leaf=lambda a: a is None)


def grad_refs(*primals: Any) -> tuple:
    """One tree of zero-initialised ``jax.new_ref`` cells per primal: mutable ``.grad`` slots."""
    return tuple(
        jax.tree_util.tree_map(lambda x: jax.new_ref(jnp.zeros_like(x)), p) for p in primals
    )


def read_refs(refs: Any) -> Any:
    """Current values of a ref tree (what ``x.grad`` would print)."""
    return jax.tree_util.tree_map(lambda r: r[...], refs)


def accumulating_optimizer(
    optimizer: optax.GradientTransformation, every_k: int, *, mean: bool = True
) -> optax.MultiSteps:
    """Apply ``optimizer`` once every ``every_k`` calls on the accumulated gradient.

    ``mean=True`` (optax's default) averages the ``every_k`` gradients; ``mean=False`` sums
    them, which is what PyTorch's ``.grad`` accumulation does without loss scaling.
    """
    if every_k < 1:
        raise ValueError(f"every_k must be >= 1, got {every_k}")
    return optax.MultiSteps(optimizer, every_k_schedule=every_k, use_grad_mean=mean)
