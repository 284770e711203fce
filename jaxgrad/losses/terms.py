"""Per-term gradients of a multi-term loss, and the statistics weighting rules read from them.

PyTorch gets the gradient of each term of ``loss = L_r + α·L_d + β·L_n`` with one
``autograd.grad(term, params, retain_graph=True)`` per term (seed 002). Here a *terms function*
returns a dict of named scalar losses and :func:`term_grads` returns a dict of gradient pytrees::

    def terms_fn(params, batch):
        return {"res": residual_loss(params, batch), "bc": boundary_loss(params, batch)}

    grads = jax.jit(term_grads, static_argnums=0)(terms_fn, params, batch)  # {"res": g_r, "bc": g_b}
    stats = grad_stats(grads, weights_only=True)       # {"res": {"mean_abs", "max_abs", "l2"}, ...}
    cos = cosine_matrix(grads)                          # [K, K], negative = conflicting terms

How the K gradients share one forward pass (measured by ``python -m experiments.bench_terms``,
see docs/results/pinn.md): ``method="split"`` (default) takes one reverse pass per term, each
through that term's own sub-graph only; inside ``jit`` XLA's common-subexpression elimination
merges the K identical forward computations, so the cost is one forward plus one backward per
term's *own* sub-graph -- about one gradient of the summed loss when the terms see different
points (PINNs). ``method="vmap"`` (``jax.vjp`` once + ``vmap`` over one-hot cotangents) and
``method="jacrev"`` (the same thing, done by ``jax.jacrev`` over the dict) share the forward
explicitly but run the *whole* backward K times with zero cotangents for the other terms (XLA
cannot drop ``x * 0`` for floats: NaN semantics), so they cost ~K backward passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "TERM_GRAD_METHODS",
    "check_terms",
    "cosine_matrix",
    "grad_stats",
    "is_weight_matrix",
    "term_grads",
    "term_values_and_grads",
]

TERM_GRAD_METHODS = ("split", "vmap", "jacrev")


def check_terms(out: Any) -> list[str]:
    """Validate a terms function's output (a shape-dtype tree); return the sorted term names."""
    if not isinstance(out, dict):
        raise TypeError(
            f"the terms function must return a dict of named scalar losses, got "
            f"{type(out).__name__}: return e.g. {{'res': l_r, 'bc': l_bc}}."
        )
    if not out:
        raise ValueError(
            "the terms function returned an empty dict: return at least one named scalar loss."
        )
    for name, v in out.items():
        shape = getattr(v, "shape", None)
        if shape != ():
            hint = " Use v[0] or v.reshape(())." if shape == (1,) else " Reduce it, e.g. .mean()."
            raise ValueError(
                f"loss term {name!r} has shape {shape}, but every term must be a scalar of "
                f"shape ().{hint}"
            )
        if not jnp.issubdtype(v.dtype, jnp.floating):
            raise TypeError(f"loss term {name!r} has dtype {v.dtype}: terms must be floating.")
    return sorted(out)


def term_values_and_grads(
    terms_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    has_aux: bool = False,
    method: str = "split",
) -> tuple:
    """``(values, grads)`` (or ``(values, grads, aux)``) of every term w.r.t. ``params``.

    Args:
      terms_fn: ``(params, *args) -> {name: scalar}`` (``-> ({name: scalar}, aux)`` with
        ``has_aux``).
      params: the pytree to differentiate (e.g. an ``nnx.split`` params state).
      args: passed through, not differentiated (batches, keys).
      method: ``"split"`` | ``"vmap"`` | ``"jacrev"``; see the module docstring. Call under
        ``jax.jit`` so the forward pass is shared.
    Returns:
      ``values[name]`` the scalar term, ``grads[name]`` a pytree shaped like ``params``.
    Raises:
      TypeError / ValueError: not a dict, an empty dict, or a term that is not a scalar.
    """
    if method not in TERM_GRAD_METHODS:
        raise ValueError(f"method must be one of {TERM_GRAD_METHODS}, got {method!r}")
    shapes = jax.eval_shape(terms_fn, params, *args)
    names = check_terms(shapes[0] if has_aux else shapes)

    def f(p):
        return terms_fn(p, *args)

    if method == "split":
        values, grads, aux = {}, {}, None
        for name in names:

            def one(p, name=name):
                out = f(p)
                return (out[0][name], out) if has_aux else (out[name], out)

            (values[name], full), grads[name] = jax.value_and_grad(one, has_aux=True)(params)
            aux = full[1] if has_aux else None
        return (values, grads, aux) if has_aux else (values, grads)

    if method == "jacrev":

        def terms_and_out(p):
            out = f(p)
            return (out[0], out) if has_aux else (out, out)

        grads, out = jax.jacrev(terms_and_out, has_aux=True)(params)
        return (out[0], grads, out[1]) if has_aux else (out, grads)

    # vmap: one forward, one VJP closure, K one-hot cotangents pulled back together.
    def stacked(p):
        out = f(p)
        terms = out[0] if has_aux else out
        vec = jnp.stack([terms[n] for n in names])
        return (vec, out[1]) if has_aux else (vec, None)

    vec, vjp_fun, aux = jax.vjp(stacked, params, has_aux=True)
    (stack,) = jax.vmap(vjp_fun)(jnp.eye(len(names), dtype=vec.dtype))
    values = {n: vec[i] for i, n in enumerate(names)}
    grads = {n: jax.tree_util.tree_map(lambda g, i=i: g[i], stack) for i, n in enumerate(names)}
    return (values, grads, aux) if has_aux else (values, grads)


def term_grads(
    terms_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    has_aux: bool = False,
    method: str = "split",
) -> Any:
    """``{name: grad pytree}`` for every term of ``terms_fn(params, *args)`` (``(grads, aux)``
    with ``has_aux``), like ``jax.grad``'s conventions. See :func:`term_values_and_grads`."""
    out = term_values_and_grads(terms_fn, params, *args, has_aux=has_aux, method=method)
    return (out[1], out[2]) if has_aux else out[1]


def is_weight_matrix(leaf: Any) -> bool:
    """True for leaves with ``ndim >= 2``: the kernels ``W`` (not biases, scales, scalars)."""
    return np.ndim(leaf) >= 2


def _leaves(tree: Any, weights_only: bool) -> list[jax.Array]:
    leaves = jax.tree_util.tree_leaves(tree)
    if weights_only:
        leaves = [x for x in leaves if is_weight_matrix(x)]
    if not leaves:
        what = "weight-matrix (ndim >= 2) leaves" if weights_only else "leaves"
        raise ValueError(f"the gradient pytree has no {what} to take statistics over.")
    return leaves


def grad_stats(grads: dict[str, Any], *, weights_only: bool = False) -> dict[str, dict]:
    """Per term: ``mean_abs`` (mean |g| over all entries), ``max_abs`` and ``l2`` (‖g‖₂).

    Args:
      grads: ``{name: grad pytree}`` from :func:`term_grads`.
      weights_only: only the weight matrices (``ndim >= 2``), as the PINN annealing papers do.
    Returns: ``{name: {"mean_abs": (), "max_abs": (), "l2": ()}}``.
    """
    stats = {}
    for name, g in grads.items():
        leaves = _leaves(g, weights_only)
        stats[name] = {
            "mean_abs": optax.tree.norm(leaves, ord=1) / optax.tree.size(leaves),
            "max_abs": optax.tree.norm(leaves, ord="inf"),
            "l2": optax.tree.norm(leaves),
        }
    return stats


def cosine_matrix(grads: dict[str, Any], *, weights_only: bool = False) -> jax.Array:
    """``[K, K]`` cosine similarity between the terms' gradients (sorted name order).

    Negative entries are conflicting terms (PCGrad's trigger). A zero gradient gives cosine 0.
    """
    names = sorted(grads)
    vecs = jnp.stack(
        [jnp.concatenate([x.ravel() for x in _leaves(grads[n], weights_only)]) for n in names]
    )
    gram = vecs @ vecs.T
    norms = jnp.sqrt(jnp.diagonal(gram))
    denom = norms[:, None] * norms[None, :]
    return jnp.where(denom > 0, gram / jnp.where(denom > 0, denom, 1), 0.0)
