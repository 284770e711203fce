"""Structural dependence: which inputs an output depends on, read off the traced jaxpr.

PyTorch decides ``allow_unused`` by whether an input is in the autograd graph at all. The JAX
equivalent is a question about the traced computation, not about numeric zeros: a gradient
that happens to be 0.0 (a dead ReLU) is still *connected*. Two analyses answer it:

- :func:`data_dependence` — does the output read the input at all (``stop_gradient`` counts as
  a read)? Forward reachability over the primal jaxpr.
- :func:`grad_dependence` — does the gradient of the output w.r.t. the input depend on the
  output cotangent? Reachability over the *backward* jaxpr (the traced VJP), where
  ``stop_gradient`` and custom VJPs have already been applied by JAX's own AD. A leaf whose
  gradient does not depend on the cotangent receives a structural zero: PyTorch's ``None``.

Both recurse into ``jit`` (pjit), ``cond``, ``scan``, ``while``, ``remat`` and custom
JVP/VJP calls; a write into a ``jax.new_ref`` ref (``r[...] = b * 3``, ``r[...] += b``) makes
every later read of that ref depend on what was written; unknown higher-order primitives are treated conservatively (every output
depends on every input). Reachability is computed for all inputs in one pass, each input a bit
of a Python-int bitset (:func:`jaxpr_sources`), so large parameter trees cost one walk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

__all__ = [
    "data_dependence",
    "provably_zero",
    "dependence_matrix",
    "grad_dependence",
    "jaxpr_reach",
    "jaxpr_sources",
]


def _as_jaxpr(j: Any) -> jcore.Jaxpr:
    return j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j


def _fixpoint(body: jcore.Jaxpr, consts: list[int], carry: list[int], rest: list[int]):
    """Iterate a loop body's reachability until the carried source sets stop growing."""
    while True:
        out = jaxpr_sources(body, consts + carry + rest)
        new = [c | o for c, o in zip(carry, out[: len(carry)])]
        if new == carry:
            return carry, out[len(carry) :]
        carry = new


def _union(bits: Sequence[int]) -> int:
    acc = 0
    for b in bits:
        acc |= b
    return acc


def _eqn_sources(eqn: jcore.JaxprEqn, ins: list[int]) -> list[int]:
    """Source sets (bitmasks) of an equation's outputs, given those of its inputs.

    Every rule acts on each bit independently, so one pass with many sources gives the same
    answer as one boolean pass per source.
    """
    name = eqn.primitive.name
    p = eqn.params
    n_out = len(eqn.outvars)
    if name == "cond":
        # invars = [index, *operands]; whatever the index reads, every output depends on.
        outs = [ins[0]] * n_out
        for br in p["branches"]:
            outs = [a | b for a, b in zip(outs, jaxpr_sources(_as_jaxpr(br), ins[1:]))]
        return outs
    if name == "scan":
        nc, ncarry = p["num_consts"], p["num_carry"]
        carry, ys = _fixpoint(
            _as_jaxpr(p["jaxpr"]), ins[:nc], ins[nc : nc + ncarry], ins[nc + ncarry :]
        )
        return carry + ys
    if name == "while":
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cond_c, body_c, init = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
        carry, _ = _fixpoint(_as_jaxpr(p["body_jaxpr"]), body_c, init, [])
        # The trip count depends on whatever the predicate reads: then every output does.
        trip = _union(jaxpr_sources(_as_jaxpr(p["cond_jaxpr"]), cond_c + carry))
        return [c | trip for c in carry]
    for k in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = p.get(k)
        if sub is not None and len(_as_jaxpr(sub).invars) == len(ins):
            return jaxpr_sources(_as_jaxpr(sub), ins)
    # Unknown higher-order primitive or a plain one: every output reads every input.
    return [_union(ins)] * n_out


def _is_ref(v: jcore.Var) -> bool:
    return type(v.aval).__name__ == "AbstractRef"


# Primitives whose output is zero when every array operand is zero (shape/dtype plumbing and
# linear maps); ``mul`` is zero when any operand is.
_ZERO_PRESERVING = {
    "broadcast_in_dim", "convert_element_type", "reshape", "squeeze", "expand_dims",
    "transpose", "copy", "copy_p", "reduce_sum", "neg", "add", "sub", "add_any", "pad",
    "concatenate", "slice", "dynamic_slice", "select_n", "rev", "reduce_precision",
}  # fmt: skip


def _is_zero_literal(v: Any) -> bool:
    if isinstance(v, jcore.Var):
        return False
    try:
        return bool(np.all(np.asarray(v.val) == 0))
    except (TypeError, ValueError):
        return False


def provably_zero(jaxpr: jcore.Jaxpr, in_zero: Sequence[bool] | None = None) -> list[bool]:
    """For each output of ``jaxpr``: is it zero whatever the inputs (a literal 0, or zeros
    pushed through broadcasts, conversions, sums, products with zero, nested ``jit``)?

    This is how JAX materialises a symbolic zero (a ``None`` from a custom VJP rule, an
    unused input, ``stop_gradient``) in a traced pullback. Inputs and constants are never
    assumed zero (unless ``in_zero`` says so, for nested calls): a value computed from them is
    not provably zero even if it happens to be.
    """
    zero: dict[jcore.Var, bool] = dict(zip(jaxpr.invars, in_zero or ()))

    def z(v: Any) -> bool:
        return zero.get(v, False) if isinstance(v, jcore.Var) else _is_zero_literal(v)

    for eqn in jaxpr.eqns:
        name, ins = eqn.primitive.name, [z(v) for v in eqn.invars]
        if name == "mul":
            outs = [any(ins)] * len(eqn.outvars)
        elif name == "select_n":  # the predicate is not a value that flows to the output
            outs = [all(ins[1:])] * len(eqn.outvars)
        elif name in _ZERO_PRESERVING:
            outs = [bool(ins) and all(ins)] * len(eqn.outvars)
        elif name in ("pjit", "closed_call", "remat", "checkpoint", "custom_jvp_call"):
            sub = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
            inner = _as_jaxpr(sub) if sub is not None else None
            if inner is not None and len(inner.invars) == len(ins):
                outs = provably_zero(inner, ins)
            else:
                outs = [False] * len(eqn.outvars)
        else:
            outs = [False] * len(eqn.outvars)
        for v, b in zip(eqn.outvars, outs):
            zero[v] = b
    return [z(v) for v in jaxpr.outvars]


def jaxpr_sources(
    jaxpr: jcore.Jaxpr, in_bits: Sequence[int], cut: Callable | None = None
) -> list[int]:
    """Multi-source forward reachability over ``jaxpr``.

    ``in_bits[i]`` is a bitmask naming the sources that input ``i`` carries (e.g. ``1 << i``);
    the result gives, for each output, the union of the sources that reach it. ``cut(eqn)``
    returning True stops propagation through that equation. One pass answers the question for
    every source at once (Python ints are arbitrary-precision bitsets).
    """
    live: dict[jcore.Var, int] = {v: b for v, b in zip(jaxpr.invars, in_bits) if b}
    for eqn in jaxpr.eqns:
        ins = [live.get(v, 0) if isinstance(v, jcore.Var) else 0 for v in eqn.invars]
        if not any(ins) or (cut is not None and cut(eqn)):
            continue
        for v, b in zip(eqn.outvars, _eqn_sources(eqn, ins)):
            if b:
                live[v] = live.get(v, 0) | b
        # A ref argument may be written (swap, addupdate, a call that writes it): later reads
        # of the ref see whatever this equation read.
        for v in eqn.invars:
            if isinstance(v, jcore.Var) and _is_ref(v):
                live[v] = live.get(v, 0) | _union(ins)
    return [live.get(v, 0) if isinstance(v, jcore.Var) else 0 for v in jaxpr.outvars]


def jaxpr_reach(jaxpr: jcore.Jaxpr, in_mask: Sequence[bool], cut: Callable | None = None):
    """Forward reachability: for each output of ``jaxpr``, is it reachable from a marked input?

    ``cut(eqn)`` returning True stops propagation through that equation (used to treat
    ``stop_gradient`` as a wall).
    """
    return [b != 0 for b in jaxpr_sources(jaxpr, [int(bool(m)) for m in in_mask], cut)]


def data_dependence(fun: Callable, *args) -> list[Any]:
    """For each positional argument, a pytree of bools: does any output of ``fun`` read that leaf?

    ``stop_gradient`` counts as a read (the value flows, only the gradient is cut).
    Returns a list with one pytree per argument, shaped like the argument.
    """
    closed = jax.make_jaxpr(fun)(*args)
    flat, trees = [], []
    for a in args:
        leaves, tree = jax.tree_util.tree_flatten(a)
        flat.append(len(leaves))
        trees.append(tree)
    n = sum(flat)
    reach = _per_input(closed.jaxpr, n)
    out, i = [], 0
    for k, tree in zip(flat, trees):
        out.append(jax.tree_util.tree_unflatten(tree, reach[i : i + k]))
        i += k
    return out


def _per_input(jaxpr: jcore.Jaxpr, n: int) -> list[bool]:
    # One bit per input leaf: a single pass answers "does any output read leaf i" for all i.
    reached = _union(jaxpr_sources(jaxpr, [1 << i for i in range(n)]))
    return [bool(reached >> i & 1) for i in range(n)]


def dependence_matrix(fun: Callable, *args) -> np.ndarray:
    """Which output leaves of ``fun(*args)`` read which input leaves: a bool ``[n_out, n_in]``.

    Rows follow ``jax.tree_util.tree_leaves(fun(*args))``, columns ``tree_leaves(args)``.
    Arguments may be arrays or ``jax.ShapeDtypeStruct`` (nothing is computed). Like
    :func:`data_dependence`, ``stop_gradient`` counts as a read.
    """
    closed = jax.make_jaxpr(fun)(*args)
    n = len(closed.jaxpr.invars)
    out_bits = jaxpr_sources(closed.jaxpr, [1 << i for i in range(n)])
    return np.array([[bool(b >> i & 1) for i in range(n)] for b in out_bits], dtype=bool).reshape(
        len(out_bits), n
    )


def grad_dependence(vjp_fun: Callable, cotangent: Any) -> Any:
    """Given a pullback and a cotangent, which gradient leaves depend on the cotangent.

    Traces the backward pass (``vjp_fun``) with the cotangent as its only input: a gradient leaf
    that does not depend on it and is provably zero is a structural zero (stop_gradient, integer
    path, unused, a custom VJP rule returning None or zeros); one that does not depend on it but
    is not provably zero (a custom VJP rule ignoring the cotangent) counts as connected.
    Returns a pytree of bools shaped like ``vjp_fun``'s output.
    """
    ct = jax.tree_util.tree_map(lambda c: jnp.zeros(np.shape(c), jnp.result_type(c)), cotangent)
    closed, out_shape = jax.make_jaxpr(vjp_fun, return_shape=True)(ct)
    n_in = len(closed.jaxpr.invars)
    reach = jaxpr_reach(closed.jaxpr, [True] * n_in)
    zero = provably_zero(closed.jaxpr)
    used = [r or not z for r, z in zip(reach, zero)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), used)
