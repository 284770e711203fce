"""The training loop and plots shared by ``experiments.pinn_poisson`` and ``pinn_helmholtz``.

A PINN problem gives ``terms_fn(params, batch) -> {name: scalar}`` and ``sample(key) -> batch``
(points drawn on the device). :func:`train` runs it with one weighting ``method``:

- ``"fixed"``: ``Σ w_i L_i`` with the configured constant weights (the plain PINN: all 1);
- ``"annealing"``: :func:`jaxgrad.weighting.lr_annealing` (Wang, Teng & Perdikaris);
- ``"grad_norm"``: :func:`jaxgrad.weighting.grad_norm_balancing` (jaxpi);
- ``"pcgrad"``: :func:`jaxgrad.weighting.pcgrad_loss` (gradient surgery every step).

Every step is :func:`jaxgrad.train.make_multi_step`'s (one ``lax.scan`` over a chunk of steps,
weights riding in the batch under ``stop_gradient``). A weighting rule updates between chunks
of ``period`` steps, from the per-term gradients at the *post-update* parameters on the chunk's
last batch -- the order of the authors' code (``train_op`` then, ``if it % 10 == 0``, the new
λ from the same mini-batch); chunk + rule update are one jitted call.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxgrad.plots import plot_curves, save_figure, subplots
from jaxgrad.terms import term_grads
from jaxgrad.train import init_train_state, make_multi_step
from jaxgrad.weighting import grad_norm_balancing, lr_annealing, pcgrad_loss, weighted_sum

__all__ = ["METHODS", "plot_fields", "plot_grad_histograms", "plot_history", "relative_l2", "train"]

METHODS = ("fixed", "annealing", "grad_norm", "pcgrad")


def relative_l2(pred: Any, exact: Any) -> float:
    """‖pred − exact‖₂ / ‖exact‖₂ over the evaluation grid."""
    pred, exact = np.asarray(pred, np.float64).ravel(), np.asarray(exact, np.float64).ravel()
    return float(np.linalg.norm(pred - exact) / np.linalg.norm(exact))


def train(
    models: Sequence[nnx.Module],
    terms_fn: Callable[[Any, nnx.GraphDef, dict], dict],
    sample: Callable[[jax.Array], dict],
    *,
    method: str,
    reference: str,
    fixed_weights: dict[str, float],
    optimizer: optax.GradientTransformation,
    steps: int,
    data_keys: jax.Array,
    period: int = 10,
    smoothing: float = 0.9,
    chunk: int = 100,
    log_every: int = 100,
    annealing_select: Callable[[str], bool] | None = None,
) -> dict:
    """Train one model per seed, all seeds at once (``vmap``: one compilation for every seed).

    Not ``jaxgrad.loop``: that loop streams batches of a stored dataset and trains one model;
    PINNs draw fresh collocation points from each step's key (nothing to gather) and train
    every seed in one vmapped program, with per-method weight updates between chunks.

    Args:
      models: one freshly initialised model per seed (same structure).
      terms_fn: ``(params, graphdef, batch) -> {name: scalar}``.
      sample: ``key -> batch`` (one step's points; vmapped over a chunk of step keys).
      method: one of :data:`METHODS`.
      reference: the residual term's name (annealing's reference).
      fixed_weights: ``{name: w}``, the starting weights (constant for fixed / pcgrad).
      data_keys: ``[S]`` keys, one per model; step ``s`` draws its points from
        ``fold_in(data_keys[i], s)``.
      chunk: steps per scan when no rule runs (with a rule a chunk is ``period`` steps).
      annealing_select: which weight matrices enter annealing's λ̂, by path (default: all).
    Returns: ``{"graphdef", "params" (leaves [S, ...]), "terms", "seconds",
    "history": {"step": [T], "loss_<n>": [T][S], "w_<n>": [T][S]}}``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    split = [nnx.split(m, nnx.Param) for m in models]
    graphdef = split[0][0]
    params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[p for _, p in split])
    if data_keys.shape != (len(models),):
        raise ValueError(f"need one data key per model: {len(models)}, got {data_keys.shape}")
    names = sorted(fixed_weights)
    terms = lambda p, b: terms_fn(p, graphdef, b)

    def loss_fn(p, batch, key):
        values = terms(p, batch)
        aux = {f"loss_{n}": v for n, v in values.items()}
        return weighted_sum(values, batch["weights"]), aux

    rule = None
    if method == "annealing":
        rule = lr_annealing(reference, smoothing=smoothing, period=period, select=annealing_select)
    elif method == "grad_norm":
        rule = grad_norm_balancing(smoothing=smoothing, period=period)
    if method == "pcgrad":
        loss_fn = pcgrad_loss(terms, weights=lambda b: b["weights"])
    multi = make_multi_step(loss_fn, optimizer, jit=False)
    weights0 = {n: jnp.asarray(fixed_weights[n], jnp.float32) for n in names}

    def run_chunk(state, wstate, key, start, length):
        keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(start + jnp.arange(length))
        batches = jax.vmap(sample)(keys)
        weights = weights0 if wstate is None else wstate.weights
        batches["weights"] = {n: jnp.broadcast_to(w, (length,)) for n, w in weights.items()}
        state, metrics = multi(state, batches, key)
        if rule is not None:
            last = jax.tree_util.tree_map(lambda x: x[-1], batches)
            grads = term_grads(terms, state.params, last)
            wstate = rule.update(grads, wstate, start + length - 1)
        return state, wstate, {k: v[-1] for k, v in metrics.items()}

    @functools.partial(jax.jit, static_argnums=4, donate_argnums=0)
    def run_chunks(states, wstates, keys, start, length):
        one = functools.partial(run_chunk, start=start, length=length)
        return jax.vmap(one)(states, wstates, keys)

    states = jax.vmap(lambda p: init_train_state(p, optimizer))(params)
    wstates = None
    if rule is not None:
        w0 = rule.init(names)._replace(weights=weights0)
        wstates = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (len(models),)), w0)
    span = period if rule is not None else chunk
    history: dict[str, list] = {"step": []}
    t0 = time.perf_counter()
    start, next_log = 0, 0
    while start < steps:
        # with a rule the first chunk is step 0 alone, so the rule runs after steps 0, period,
        # 2·period, ... (the authors' ``if it % 10 == 0`` after ``train_op``)
        length = 1 if start == 0 and rule is not None else min(span, steps - start)
        states, wstates, m = run_chunks(states, wstates, data_keys, jnp.int32(start), length)
        start += length
        if start - 1 >= next_log or start == steps:
            next_log = start - 1 + log_every
            m = jax.device_get(m)
            history["step"].append(start - 1)
            for n in names:
                history.setdefault(f"loss_{n}", []).append(np.asarray(m[f"loss_{n}"]).tolist())
                w = weights0[n] if wstates is None else wstates.weights[n]
                w = np.broadcast_to(np.asarray(w), (len(models),))
                history.setdefault(f"w_{n}", []).append(w.tolist())
    jax.block_until_ready(states.params)
    return {
        "graphdef": graphdef,
        "params": states.params,
        "history": history,
        "seconds": time.perf_counter() - t0,
        "terms": terms,
    }


def plot_grad_histograms(path: Path, grads_by_run: dict[str, dict], *, title: str = "") -> Path:
    """The paper's figure: per weight matrix, the distribution of ∂L_i/∂W for each term.

    ``grads_by_run[run][term]`` is a params pytree; one row per run, one column per matrix.
    """
    runs = list(grads_by_run)
    n_mats = max(
        sum(np.ndim(x) >= 2 for x in jax.tree_util.tree_leaves(next(iter(g.values()))))
        for g in grads_by_run.values()
    )
    fig, axes = subplots(len(runs), n_mats, figsize=(3.2 * n_mats, 2.6 * len(runs)), squeeze=False)
    for r, run in enumerate(runs):
        for term, g in grads_by_run[run].items():
            mats = [np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(g) if np.ndim(x) >= 2]
            for c, vals in enumerate(mats):
                ax = axes[r, c]
                lim = max(1e-12, float(np.quantile(np.abs(vals), 0.99)))
                ax.hist(vals, bins=60, range=(-lim, lim), density=True, histtype="step", label=term)
                ax.set_yscale("log")
                ax.set_title(f"{run}: W{c + 1}", fontsize=9)
        axes[r, 0].legend(fontsize=7)
        for c in range(len(mats), n_mats):  # a smaller architecture in this row
            axes[r, c].axis("off")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_fields(path: Path, x: np.ndarray, y: np.ndarray, exact: np.ndarray, pred: dict) -> Path:
    """Exact field, each prediction, and each |error| map on the ``[ny, nx]`` grid."""
    cols = 1 + 2 * len(pred)
    fig, axes = subplots(1, cols, figsize=(3.4 * cols, 3.0), squeeze=False)
    panels = [("exact", exact)]
    for name, p in pred.items():
        panels += [(f"{name}: predicted", p), (f"{name}: |error|", np.abs(p - exact))]
    for ax, (name, z) in zip(axes[0], panels):
        im = ax.pcolormesh(x, y, z, shading="auto", cmap="jet")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
    return save_figure(fig, path)


def plot_history(path: Path, histories: dict[str, dict], *, seed: int = 0, title: str = "") -> Path:
    """Loss curves per term and the term weights over training, one series per run.

    ``histories[run]`` is :func:`train`'s history; ``seed`` picks the model (index) to draw.
    """
    losses, weights = {}, {}
    for run, h in histories.items():
        for k, v in h.items():
            if k.startswith("loss_"):
                losses[f"{run} {k[5:]}"] = (h["step"], [x[seed] for x in v])
            elif k.startswith("w_"):
                weights[f"{run} {k[2:]}"] = (h["step"], [x[seed] for x in v])
    return plot_curves(
        path, {"loss terms": losses, "term weights": weights}, title=title, logy=("loss terms",)
    )
