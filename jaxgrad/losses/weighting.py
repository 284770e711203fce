"""Adaptive weights for multi-term losses, and PCGrad gradient surgery.

Each rule is an optax-style pair of pure functions with a ``NamedTuple`` state::

    rule = lr_annealing("res", period=10, smoothing=0.9)
    state = rule.init(("bc", "res"))                     # all weights 1
    state = rule.update(term_grads(...), state, step)    # acts when step % period == 0
    loss = sum(state.weights[n] * terms[n] for n in terms)   # weights under stop_gradient

``update`` may be called every step (it only changes the weights on steps that are multiples of
``period``) or only on those steps; the returned weights are always ``stop_gradient``-ed, so
they never receive gradients when they enter a loss.

- :func:`lr_annealing` -- Wang, Teng & Perdikaris (2021), their code's rule: per non-reference
  term ``i``, ``λ̂_i = max_W max|∂L_ref/∂W| / mean_W mean|∂(λ_i L_i)/∂W|`` over the weight
  matrices only (per-matrix mean, then the mean over matrices; biases excluded), ``λ_i ← s·λ_i
  + (1-s)·λ̂_i``. The reference term (the PDE residual) keeps weight 1. The authors' code
  differentiates the already-weighted boundary loss; ``weighted_grads=False`` gives the
  unweighted form of the paper's text (see :func:`lr_annealing`).
- :func:`grad_norm_balancing` -- jaxpi's ``grad_norm``: ``n_i = ‖g_i‖₂`` over all parameters,
  ``ŵ_i = mean_j(n_j) / n_i``, ``w ← s·w + (1-s)·ŵ``.
- :func:`pcgrad` -- Yu et al. (2020): each term's gradient is projected off every other term's
  gradient it conflicts with (negative dot product); :func:`pcgrad_loss` wraps a terms function
  into a scalar loss whose ``jax.grad`` *is* the surgered gradient, so it trains with the
  ordinary :func:`jaxgrad.training.step.make_train_step`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxgrad.losses.terms import check_terms, is_weight_matrix, term_values_and_grads

__all__ = [
    "WeightRule",
    "WeightState",
    "annealing_estimate",
    "grad_norm_balancing",
    "grad_norm_estimate",
    "lr_annealing",
    "pcgrad",
    "pcgrad_loss",
    "weighted_sum",
]


class WeightState(NamedTuple):
    """Current term weights ``{name: ()}`` and the last raw estimate (before smoothing)."""

    weights: dict[str, jax.Array]
    estimate: dict[str, jax.Array]


class WeightRule(NamedTuple):
    """``init(names) -> WeightState``; ``update(term_grads, state, step) -> WeightState``."""

    init: Callable[[Sequence[str]], WeightState]
    update: Callable[[dict[str, Any], WeightState, Any], WeightState]


def _check_hparams(smoothing: float, period: int) -> None:
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if int(period) != period or period < 1:
        raise ValueError(f"period must be an integer >= 1, got {period}")


def _check_names(grads: dict[str, Any], state: WeightState) -> None:
    if sorted(grads) != sorted(state.weights):
        raise ValueError(
            f"term names {sorted(grads)} do not match the rule's state {sorted(state.weights)}: "
            "init the rule with the names your terms function returns."
        )


def _init(names: Sequence[str]) -> WeightState:
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"need at least one distinct term name, got {names}")
    one = {n: jnp.ones((), jnp.float32) for n in names}
    return WeightState(weights=one, estimate=dict(one))


def _smooth(state: WeightState, estimate: dict, step: Any, smoothing: float, period: int):
    due = jnp.asarray(step) % period == 0
    weights = {
        n: jax.lax.stop_gradient(
            jnp.where(due, smoothing * w + (1.0 - smoothing) * estimate[n].astype(w.dtype), w)
        )
        for n, w in state.weights.items()
    }
    est = {n: jnp.where(due, estimate[n].astype(e.dtype), e) for n, e in state.estimate.items()}
    return WeightState(weights=weights, estimate=est)


def annealing_estimate(
    grads: dict[str, Any], reference: str, select: Callable[[str], bool] | None = None
) -> dict[str, jax.Array]:
    """λ̂ of Wang-Teng-Perdikaris for every term (``1`` for the reference term).

    ``λ̂_i = max over weight matrices W of max|∂L_ref/∂W|`` divided by ``mean over W of
    mean|∂L_i/∂W|`` (the mean of per-matrix means, as in the authors' code). ``select`` takes
    a leaf's path (``jax.tree_util.keystr``) and says whether that matrix counts (default:
    all; the authors' gated model leaves its two encoders out).
    """
    if reference not in grads:
        raise ValueError(f"reference term {reference!r} is not among {sorted(grads)}")

    def mats(g):
        leaves = [
            x
            for path, x in jax.tree_util.tree_leaves_with_path(g)
            if is_weight_matrix(x) and (select is None or select(jax.tree_util.keystr(path)))
        ]
        if not leaves:
            raise ValueError("annealing needs weight matrices (leaves with ndim >= 2) to select")
        return leaves

    max_ref = jnp.max(jnp.stack([jnp.max(jnp.abs(w)) for w in mats(grads[reference])]))
    out = {}
    for name, g in grads.items():
        mean_i = jnp.mean(jnp.stack([jnp.mean(jnp.abs(w)) for w in mats(g)]))
        out[name] = jnp.ones_like(max_ref) if name == reference else max_ref / mean_i
    return out


def lr_annealing(
    reference: str,
    *,
    smoothing: float = 0.9,
    period: int = 10,
    weighted_grads: bool = True,
    select: Callable[[str], bool] | None = None,
) -> WeightRule:
    """Learning-rate annealing (Wang, Teng & Perdikaris 2021, Algorithm 1, their code's form).

    Args:
      reference: the term whose gradient sets the scale (the PDE residual); its weight stays 1.
      smoothing: ``λ ← smoothing·λ + (1 - smoothing)·λ̂`` (the authors' 0.9).
      period: update on steps where ``step % period == 0`` (the authors' 10).
      weighted_grads: the authors' code differentiates ``loss_bcs = λ·(L_bc1 + ... + L_bc4)``,
        i.e. the *weighted* term, so ``λ̂ = max|∇L_r| / (λ·mean|∇L_bc|)`` and λ settles near
        ``sqrt(max/mean)`` (~10²). ``False`` uses the unweighted gradient of the paper's text
        (λ then settles near ``max/mean``, ~10⁴ on Helmholtz, and the run fails: measured in
        docs/results/pinn.md). Pass the *unweighted* term gradients either way.
      select: ``path -> bool`` over the weight matrices' paths (``jax.tree_util.keystr``);
        only selected matrices enter λ̂ (default: every weight matrix).
    """
    _check_hparams(smoothing, period)

    def init(names):
        if reference not in names:
            raise ValueError(f"reference term {reference!r} is not among {list(names)}")
        return _init(names)

    def update(grads, state, step):
        _check_names(grads, state)
        est = annealing_estimate(grads, reference, select)
        if weighted_grads:
            est = {n: e if n == reference else e / state.weights[n] for n, e in est.items()}
        return _smooth(state, est, step, smoothing, period)

    return WeightRule(init, update)


def grad_norm_estimate(grads: dict[str, Any]) -> dict[str, jax.Array]:
    """jaxpi's ``ŵ_i = mean_j ‖g_j‖₂ / ‖g_i‖₂`` (norms over all parameters)."""
    norms = {n: optax.tree.norm(g) for n, g in grads.items()}
    mean = jnp.mean(jnp.stack(list(norms.values())))
    return {n: mean / v for n, v in norms.items()}


def grad_norm_balancing(*, smoothing: float = 0.9, period: int = 10) -> WeightRule:
    """Gradient-norm balancing (jaxpi ``grad_norm``): every term gets the same weighted norm.

    Args:
      smoothing: ``w ← smoothing·w + (1 - smoothing)·ŵ`` (jaxpi's 0.9).
      period: update on steps where ``step % period == 0`` (jaxpi defaults to 1000 for long
        runs; 10 matches the annealing rule here).
    """
    _check_hparams(smoothing, period)

    def update(grads, state, step):
        _check_names(grads, state)
        return _smooth(state, grad_norm_estimate(grads), step, smoothing, period)

    return WeightRule(_init, update)


def weighted_sum(terms: dict[str, jax.Array], weights: dict[str, jax.Array]) -> jax.Array:
    """``Σ_i stop_gradient(w_i) · L_i`` (weights never receive gradients)."""
    if sorted(terms) != sorted(weights):
        raise ValueError(f"terms {sorted(terms)} and weights {sorted(weights)} differ")
    return sum(jax.lax.stop_gradient(weights[n]).astype(terms[n].dtype) * terms[n] for n in terms)


def pcgrad(grads: dict[str, Any], *, key: jax.Array | None = None) -> dict[str, Any]:
    """Project-conflicting-gradients surgery (Yu et al. 2020); returns the projected gradients.

    For each term ``i`` (``g_i' = g_i``), for each other term ``j`` in order: if ``g_i'·g_j <
    0`` then ``g_i' -= (g_i'·g_j / ‖g_j‖²) g_j`` (projections use the *original* ``g_j``, as in
    the paper). The order of ``j`` is the sorted-name order when ``key`` is None (deterministic,
    what the tests pin), or a random permutation per ``i`` drawn from ``key`` (the paper's
    shuffle). Sum the result for the update. Non-conflicting gradients come back unchanged.
    """
    names = sorted(grads)
    if not names:
        raise ValueError("pcgrad needs at least one term gradient")
    flat = [ravel_pytree(grads[n]) for n in names]
    vecs = jnp.stack([v for v, _ in flat])  # [K, P]
    k = len(names)
    sq = jnp.sum(vecs * vecs, axis=1)
    out = []
    for i in range(k):
        order = jnp.array([j for j in range(k) if j != i], jnp.int32)
        if key is not None and k > 2:
            order = jax.random.permutation(jax.random.fold_in(key, i), order)

        def body(g, j):
            dot = jnp.vdot(g, vecs[j])
            coef = jnp.where((dot < 0) & (sq[j] > 0), dot / jnp.where(sq[j] > 0, sq[j], 1), 0)
            return g - coef * vecs[j], None

        g_i, _ = jax.lax.scan(body, vecs[i], order) if k > 1 else (vecs[i], None)
        out.append(flat[i][1](g_i))
    return dict(zip(names, out))


def pcgrad_loss(
    terms_fn: Callable[..., dict[str, jax.Array]],
    *,
    weights: Callable[[Any], dict[str, jax.Array]] | None = None,
    shuffle: bool = False,
) -> Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]:
    """A ``loss_fn(params, batch, key) -> (loss, aux)`` whose gradient is PCGrad's.

    The loss value is ``Σ w_i L_i``; its custom VJP returns ``Σ_i pcgrad(w_i g_i)`` instead of
    ``Σ_i w_i g_i``, so :func:`jaxgrad.training.step.make_train_step` trains with gradient surgery and no
    second step factory. ``terms_fn(params, batch) -> {name: scalar}``; ``weights(batch)``
    gives optional fixed term weights; ``shuffle=True`` randomises the projection order with the
    step key. ``aux`` holds every (unweighted) term as ``loss_<name>``.
    """

    def weigh(batch):
        return None if weights is None else weights(batch)

    @jax.custom_vjp
    def surgered(params, batch, key):
        terms = terms_fn(params, batch)
        w = weigh(batch)
        return sum(terms[n] * (1 if w is None else w[n]) for n in terms)

    def fwd(params, batch, key):
        values, grads = term_values_and_grads(terms_fn, params, batch)
        w = weigh(batch)
        if w is not None:
            values = {n: w[n] * v for n, v in values.items()}
            grads = {
                n: jax.tree_util.tree_map(lambda x, n=n: w[n] * x, g) for n, g in grads.items()
            }
        projected = pcgrad(grads, key=key if shuffle else None)
        total = jax.tree_util.tree_map(lambda *xs: sum(xs), *projected.values())
        return sum(values.values()), total

    def bwd(total, ct):
        return jax.tree_util.tree_map(lambda g: ct * g, total), None, None

    surgered.defvjp(fwd, bwd)

    def loss_fn(params, batch, key):
        terms = jax.lax.stop_gradient(terms_fn(params, batch))
        check_terms(terms)
        return surgered(params, batch, key), {f"loss_{n}": v for n, v in terms.items()}

    return loss_fn
