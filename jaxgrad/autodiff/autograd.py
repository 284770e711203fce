"""PyTorch autograd idioms as pure JAX functions over pytrees.

| PyTorch                                   | here                                        |
|-------------------------------------------|---------------------------------------------|
| ``loss.backward(); x.grad``               | :func:`backward` (scalar output)            |
| ``z.backward(grad_tensors)``              | :func:`backward` with ``cotangent=``        |
| ``backward(retain_graph=True)`` repeated  | :func:`pullback` (one forward, many VJPs)   |
| ``autograd.grad(..., is_grads_batched)``  | :meth:`Pullback.batched`                    |
| ``create_graph=True``                     | :func:`hvp`, :func:`nth_grad`               |
| ``autograd.grad(allow_unused=...)``       | :func:`grad` with ``allow_unused=``         |
| ``.detach()`` / ``torch.no_grad()``       | :data:`detach` (``jax.lax.stop_gradient``)  |

Every helper checks its input the way PyTorch does and says what to do when it is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrad.autodiff.deps import grad_dependence

__all__ = [
    "Backward",
    "Pullback",
    "backward",
    "check_cotangent",
    "detach",
    "grad",
    "hvp",
    "nth_grad",
    "pullback",
]

#: ``tensor.detach()`` and ``with torch.no_grad():`` — the value flows, the gradient does not.
detach = jax.lax.stop_gradient


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def _check_float_inputs(primals: Sequence[Any]) -> None:
    for i, p in enumerate(primals):
        for path, leaf in jax.tree_util.tree_leaves_with_path(p):
            dt = jnp.result_type(leaf)
            if not jnp.issubdtype(dt, jnp.inexact):
                where = f"argument {i}{jax.tree_util.keystr(path)}"
                raise TypeError(
                    f"cannot differentiate with respect to {where} of dtype {dt}: only floating "
                    "point inputs have gradients (PyTorch: 'only Tensors of floating point dtype "
                    "can require gradients'). Cast it, e.g. x.astype(jnp.float32), or pass it "
                    "through a closure instead of as a differentiated argument."
                )


def _check_scalar(out: Any, what: str = "the output") -> None:
    leaves = jax.tree_util.tree_leaves(out)
    if len(leaves) != 1 or _shape(leaves[0]) != ():
        shapes = [_shape(x) for x in leaves]
        hint = ""
        if shapes == [(1,)]:
            hint = " A shape-(1,) result is not a scalar in JAX: use out[0] or out.reshape(())."
        raise ValueError(
            f"grad can be implicitly created only for scalar outputs: {what} has shape(s) "
            f"{shapes}. Either pass cotangent= (PyTorch's grad_tensors=) with the output's "
            f"shape, e.g. jnp.ones_like(out), or reduce the output to a scalar first, e.g. "
            f"lambda *a: f(*a).sum().{hint}"
        )


def check_cotangent(out: Any, cotangent: Any) -> Any:
    """Validate ``cotangent`` against ``out`` (same tree, shapes, dtypes) and return it as arrays.

    Raises ValueError / TypeError naming the leaf and the expected shape/dtype.
    """
    out_leaves, out_tree = jax.tree_util.tree_flatten(out)
    ct_leaves, ct_tree = jax.tree_util.tree_flatten(cotangent)
    if out_tree != ct_tree:
        raise ValueError(
            f"cotangent structure {ct_tree} does not match the output structure {out_tree}: "
            "pass one cotangent per output leaf (PyTorch: one grad_tensor per tensor)."
        )
    checked = []
    for i, (o, c) in enumerate(zip(out_leaves, ct_leaves)):
        c = jnp.asarray(c)
        if _shape(c) != _shape(o):
            raise ValueError(
                f"cotangent leaf {i} has shape {_shape(c)} but the output has shape {_shape(o)}: "
                "the cotangent (grad_tensors) must have exactly the output's shape, e.g. "
                "jnp.ones_like(out)."
            )
        want = jnp.result_type(o)
        if c.dtype != want:
            raise TypeError(
                f"cotangent leaf {i} has dtype {c.dtype} but the output has dtype {want}: "
                f"cast it with .astype(jnp.{want.name})."
            )
        checked.append(c)
    return jax.tree_util.tree_unflatten(out_tree, checked)


class Backward(NamedTuple):
    """Result of :func:`backward`: the forward output and one gradient per primal."""

    out: Any
    grads: tuple
    aux: Any = None


class Pullback:
    """A reusable VJP: one forward pass, any number of cotangents pulled back.

    PyTorch needs ``retain_graph=True`` to call ``backward`` twice on one graph; a JAX VJP
    closure holds its residuals and can be called again (and crosses ``jit``).
    """

    def __init__(self, out: Any, vjp_fun: Callable, aux: Any = None):
        self.out, self.vjp_fun, self.aux = out, vjp_fun, aux

    def _cotangent(self, cotangent: Any) -> Any:
        """``cotangent`` checked against the output; None means 1.0 for a scalar output."""
        if cotangent is None:
            _check_scalar(self.out)
            cotangent = jax.tree_util.tree_map(jnp.ones_like, self.out)
        return check_cotangent(self.out, cotangent)

    def __call__(self, cotangent: Any = None) -> tuple:
        """Gradients for each primal, for ``cotangent`` (default: 1.0 for a scalar output)."""
        return self.vjp_fun(self._cotangent(cotangent))

    def batched(self, cotangents: Any) -> tuple:
        """Pull back a stack of cotangents ``[K, *out.shape]`` at once (``is_grads_batched``).

        Returns gradients with a leading ``K`` axis on every leaf.
        """
        out_leaves = jax.tree_util.tree_leaves(self.out)
        ct_leaves = jax.tree_util.tree_leaves(cotangents)
        ks = {_shape(c)[0] if np.ndim(c) else None for c in ct_leaves}
        if len(ct_leaves) == len(out_leaves) and (
            None in ks
            or len(ks) != 1
            or any(np.ndim(c) != np.ndim(o) + 1 for c, o in zip(ct_leaves, out_leaves))
        ):
            raise ValueError(
                f"batched cotangents must have shape [K, *out.shape] with one K for every leaf: "
                f"got {[_shape(c) for c in ct_leaves]} for outputs "
                f"{[_shape(o) for o in out_leaves]}. Stack them with jnp.stack([ct1, ct2, ...])."
            )
        first = jax.tree_util.tree_map(lambda c: c[0], cotangents)
        check_cotangent(self.out, first)  # tree, trailing shape and dtype
        return jax.vmap(self.vjp_fun)(cotangents)

    def accumulate_into(self, refs: Sequence[Any], cotangent: Any = None) -> None:
        """Add this pullback's gradients into ``jax.new_ref`` refs, like ``.grad +=``.

        ``refs`` holds one ref-pytree per primal (see :func:`jaxgrad.autodiff.accumulate.grad_refs`).
        Uses ``jax.vjp(...).with_refs`` (jax >= 0.10); this is the closest analogue of
        PyTorch's accumulating ``.grad`` attribute.
        """
        self.vjp_fun.with_refs(*refs)(self._cotangent(cotangent))


def pullback(fun: Callable, *primals, has_aux: bool = False) -> Pullback:
    """Run ``fun(*primals)`` once and return a reusable :class:`Pullback` (``retain_graph``)."""
    _check_float_inputs(primals)
    return Pullback(*jax.vjp(fun, *primals, has_aux=has_aux))


def backward(fun: Callable, *primals, cotangent: Any = None, has_aux: bool = False) -> Backward:
    """``out = fun(*primals); out.backward(cotangent)`` → ``Backward(out, grads, aux)``.

    Args:
      fun: function of the primals; returns an array/pytree (and aux if ``has_aux``).
      primals: floating-point arrays or pytrees (PyTorch leaves with ``requires_grad=True``).
      cotangent: PyTorch's ``grad_tensors``: same tree/shape/dtype as the output. Optional only
        for a scalar (shape ``()``) output, where it defaults to 1.0.
    Returns:
      ``grads[i]`` has the structure and shape of ``primals[i]`` (PyTorch's ``x.grad``), but
      nothing is stored on the inputs and nothing accumulates between calls.
    """
    pb = pullback(fun, *primals, has_aux=has_aux)
    return Backward(pb.out, pb(cotangent), pb.aux)


def grad(
    fun: Callable,
    argnums: int | Sequence[int] = 0,
    *,
    allow_unused: bool | None = None,
    materialize_grads: bool = False,
    has_aux: bool = False,
) -> Callable:
    """``torch.autograd.grad(fun(...), inputs, allow_unused=..., materialize_grads=...)``.

    Like ``jax.grad`` (scalar output), but an input the output does not reach — decided from
    the backward jaxpr, never from numeric zeros — is reported: with ``allow_unused=False`` it
    raises ValueError naming the input; with ``allow_unused=True`` its gradient is ``None``
    (or zeros when ``materialize_grads=True``). A dead ReLU gives a real 0.0, not ``None``.
    Works on arrays; for pytree arguments, each unused leaf is reported the same way.

    As in PyTorch, ``allow_unused`` defaults to ``materialize_grads`` (False unless zeros were
    asked for), and ``allow_unused=False`` with ``materialize_grads=True`` is a ValueError.
    """
    if allow_unused is None:
        allow_unused = materialize_grads
    elif materialize_grads and not allow_unused:
        raise ValueError(
            "materialize_grads=True needs allow_unused=True or unset (PyTorch: 'Expected "
            "allow_unused to be True or not passed when materialize_grads=True')."
        )
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)

    def wrapped(*args):
        bad = [i for i in nums if not -len(args) <= i < len(args)]
        if bad:
            raise ValueError(
                f"argnums={argnums} asks for argument {bad[0]}, but the function was called "
                f"with {len(args)} positional argument(s) (valid argnums: 0..{len(args) - 1}); "
                "pass the argument or fix argnums"
            )
        diff = [args[i] for i in nums]
        _check_float_inputs(diff)

        def f(*d):
            full = list(args)
            for i, v in zip(nums, d):
                full[i] = v
            return fun(*full)

        out, vjp_fun, *aux = jax.vjp(f, *diff, has_aux=has_aux)
        _check_scalar(out, "the function's output")
        ct = jnp.ones_like(out)
        grads = vjp_fun(ct)
        connected = grad_dependence(vjp_fun, ct)
        result = []
        for argnum, g, conn in zip(nums, grads, connected):
            paths = [
                f"argument {argnum}{jax.tree_util.keystr(p)}"
                for p, c in jax.tree_util.tree_leaves_with_path(conn)
                if not c
            ]
            if paths and not allow_unused:
                raise ValueError(
                    f"One of the differentiated inputs appears to not have been used in the "
                    f"graph: {', '.join(paths)}. Set allow_unused=True if this is the desired "
                    "behavior (its gradient is then None), or remove it from argnums."
                )
            if not materialize_grads:
                g = jax.tree_util.tree_map(lambda gl, c: gl if c else None, g, conn)
            result.append(g)
        res = result[0] if single else tuple(result)
        return (res, *aux) if has_aux else res

    return wrapped


def hvp(fun: Callable, primals: Sequence[Any], tangents: Sequence[Any]) -> Any:
    """Hessian-vector product ``H(primals) @ tangents`` of a scalar ``fun`` (forward-over-reverse).

    PyTorch: ``g = autograd.grad(f(x), x, create_graph=True); autograd.grad(g, x, v)``.
    Returns a tuple shaped like ``primals``.
    """
    primals, tangents = tuple(primals), tuple(tangents)
    _check_float_inputs(primals)
    _check_scalar(jax.eval_shape(fun, *primals), "the function's output")
    argnums = tuple(range(len(primals)))
    return jax.jvp(jax.grad(fun, argnums=argnums), primals, tangents)[1]


def nth_grad(fun: Callable, n: int) -> Callable:
    """The ``n``-th derivative of a scalar function of one scalar (``create_graph=True`` n times)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for _ in range(n):
        fun = jax.grad(fun)
    return fun
