"""The training loop and plots shared by ``experiments.pinn_poisson`` and ``pinn_helmholtz``.

A PINN problem gives ``terms_fn(params, batch) -> {name: scalar}`` and ``sample(key) -> batch``
(points drawn on the device). :func:`train` runs it with one weighting ``method``:

- ``"fixed"``: ``Σ w_i L_i`` with the configured constant weights (the plain PINN: all 1);
- ``"annealing"``: :func:`jaxgrad.losses.weighting.lr_annealing` (Wang, Teng & Perdikaris);
- ``"grad_norm"``: :func:`jaxgrad.losses.weighting.grad_norm_balancing` (jaxpi);
- ``"pcgrad"``: :func:`jaxgrad.losses.weighting.pcgrad_loss` (gradient surgery every step).

Every step is :func:`jaxgrad.training.step.make_multi_step`'s (one ``lax.scan`` over a chunk of steps,
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
from matplotlib.lines import Line2D

from jaxgrad.losses.terms import term_grads
from jaxgrad.losses.weighting import grad_norm_balancing, lr_annealing, pcgrad_loss, weighted_sum
from jaxgrad.report.plots import STYLES, save_figure, subplots
from jaxgrad.report.progress import Progress
from jaxgrad.training.step import init_train_state, make_multi_step

__all__ = [
    "METHODS",
    "PIPELINE_CHECK",
    "is_pipeline_check",
    "plot_fields",
    "plot_grad_histograms",
    "plot_history",
    "plot_runs",
    "relative_l2",
    "train",
]

METHODS = ("fixed", "annealing", "grad_norm", "pcgrad")
MIN_RESULT_STEPS = 2000  # shorter runs check the pipeline; their errors and gains mean nothing
PIPELINE_CHECK = "tiny: checks the pipeline, not the method"


def is_pipeline_check(steps: int) -> bool:
    """True when a run is too short for its errors to compare methods (no gains printed)."""
    return steps < MIN_RESULT_STEPS


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
    desc: str = "",
    progress: bool = True,
) -> dict:
    """Train one model per seed, all seeds at once (``vmap``: one compilation for every seed).

    Not ``jaxgrad.training.loop``: that loop streams batches of a stored dataset and trains one model;
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
      desc, progress: the progress bar's label (one bar per call) and ``--no-progress``; it
        advances at each history point (where the loop reads the metrics anyway) and shows the
        first seed's terms and, with a rule, its weights λ.
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
    bar = Progress(steps, desc=desc, show=None, enabled=progress)
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
            shown = {f"L_{n}": history[f"loss_{n}"][-1][0] for n in names}
            if rule is not None:
                shown |= {f"λ_{n}": history[f"w_{n}"][-1][0] for n in names if n != reference}
            if start > 1 or start == steps:  # a rule's 1-step first chunk: no rate worth showing
                bar(start, shown)
    jax.block_until_ready(states.params)
    bar.close()
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
    fig, axes = subplots(
        len(runs),
        n_mats,
        figsize=(2.6 * n_mats + 0.8, 2.2 * len(runs) + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for r, run in enumerate(runs):
        for t, (term, g) in enumerate(grads_by_run[run].items()):
            mats = [np.asarray(x) for x in jax.tree_util.tree_leaves(g) if np.ndim(x) >= 2]
            for c, w in enumerate(mats):
                ax, vals = axes[r, c], w.ravel()
                lim = max(1e-12, float(np.quantile(np.abs(vals), 0.99)))
                ax.hist(vals, bins=60, range=(-lim, lim), density=True, histtype="step",
                        color=f"C{t}", ls=STYLES[t % 4], label=term)  # fmt: skip
                ax.set_yscale("log")
                ax.tick_params(labelsize=7)
                ax.set_title(f"W{c + 1} {w.shape[0]}x{w.shape[1]}", fontsize=8)
                if r == len(runs) - 1:
                    ax.set_xlabel("∂L_term/∂W", fontsize=8)
        axes[r, 0].set_ylabel(f"{run}\ndensity (log)", fontsize=8)
        for c in range(len(mats), n_mats):  # a smaller architecture in this row
            axes[r, c].axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_fields(
    path: Path, x: np.ndarray, y: np.ndarray, exact: np.ndarray, pred: dict, *, title: str = ""
) -> Path:
    """A grid: the exact field on top, then one row per method, [prediction, |error|].

    Predictions share the exact field's colour scale, every |error| map one scale; each title
    gives the method's relative L2 error on the ``[ny, nx]`` grid.
    """
    rows = 1 + len(pred)
    fig, axes = subplots(
        rows, 2, figsize=(7.0, 3.0 * rows + 0.8), squeeze=False, layout="constrained"
    )
    lo = min(float(np.min(exact)), *(float(np.min(p)) for p in pred.values()))
    hi = max(float(np.max(exact)), *(float(np.max(p)) for p in pred.values()))
    err_max = max(float(np.max(np.abs(p - exact))) for p in pred.values())
    span = max(abs(lo), abs(hi))  # a diverging map centred on u = 0
    field_kw = {"shading": "auto", "cmap": "RdBu_r", "vmin": -span, "vmax": span}
    err_kw = {"shading": "auto", "cmap": "magma", "vmin": 0.0, "vmax": err_max}
    im_field = axes[0, 0].pcolormesh(x, y, exact, **field_kw)
    axes[0, 0].set_title("exact u", fontsize=9)
    axes[0, 1].axis("off")
    for r, (name, p) in enumerate(pred.items(), 1):
        axes[r, 0].pcolormesh(x, y, p, **field_kw)
        axes[r, 0].set_title(
            f"{name}: prediction (rel. L2 {relative_l2(p, exact):.2e})", fontsize=9
        )
        im_err = axes[r, 1].pcolormesh(x, y, np.abs(p - exact), **err_kw)
        axes[r, 1].set_title(f"{name}: |error|", fontsize=9)
    for ax in axes.ravel():
        if ax.axison:
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("x", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("y", fontsize=8)
    for ax, im, label in (
        (axes[:, 0], im_field, "u: exact and predictions (one scale)"),
        (axes[:, 1], im_err, "|u_pred − u| (one scale for every method)"),
    ):
        fig.colorbar(im, ax=ax, location="bottom", shrink=0.85, aspect=30, label=label)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_history(path: Path, histories: dict[str, dict], *, seed: int = 0, title: str = "") -> Path:
    """Loss per term and term weights over training: colour = run, line style = term.

    ``histories[run]`` is :func:`train`'s history; ``seed`` picks the model (index) to draw.
    Weights that stay at their start value (fixed, pcgrad) are left out of the weights panel.
    """
    terms = sorted({k[5:] for h in histories.values() for k in h if k.startswith("loss_")})
    fig, (ax_loss, ax_w) = subplots(1, 2, figsize=(11.5, 4.0), layout="constrained")
    for i, h in enumerate(histories.values()):
        for t, term in enumerate(terms):
            kw = {"color": f"C{i % 10}", "ls": STYLES[t % 4], "lw": 1.2}
            if f"loss_{term}" in h:
                ax_loss.plot(h["step"], [v[seed] for v in h[f"loss_{term}"]], **kw)
            w = [v[seed] for v in h.get(f"w_{term}", [])]
            if w and max(w) != min(w):
                ax_w.plot(h["step"], w, **kw)
    for ax, ylabel in ((ax_loss, "loss term (log)"), (ax_w, "term weight λ (log)")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_loss.set_title("loss per term")
    ax_w.set_title("adaptive term weights (constant ones left out)")
    if not ax_w.lines:
        ax_w.text(0.5, 0.5, "no adaptive weights in these runs", ha="center",
                  transform=ax_w.transAxes)  # fmt: skip
    runs = [Line2D([], [], color=f"C{i % 10}", lw=2) for i in range(len(histories))]
    styles = [Line2D([], [], color="0.2", ls=STYLES[t % 4]) for t in range(len(terms))]
    fig.legend(runs + styles, [*histories, *(f"term: {t}" for t in terms)],
               loc="outside right center", fontsize=8)  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_runs(out: Path, results: dict[str, dict], *, steps: int, title: str, grads: str) -> None:
    """``history.png``, ``fields.png`` and ``grad_histograms.png`` under ``out``, one row or
    colour per run; ``results[run]`` holds ``history``, ``field`` (``x, y, exact, pred``) and
    ``grads`` (per-term params pytrees). A run of ``steps`` too few to rank says so in titles."""
    if is_pipeline_check(steps):
        title += f" ({PIPELINE_CHECK})"
    plot_history(out / "history.png", {r: v["history"] for r, v in results.items()}, title=title)
    x, y, exact, _ = next(iter(results.values()))["field"]  # one problem: the same exact field
    pred = {r: v["field"][3] for r, v in results.items()}
    plot_fields(out / "fields.png", x, y, exact, pred, title=title)
    by_run = {r: v["grads"] for r, v in results.items()}
    plot_grad_histograms(out / "grad_histograms.png", by_run, title=f"{grads} · {title}")
    print(f"metrics and plots in {out}/")
