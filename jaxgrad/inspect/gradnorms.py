"""Per-module gradient norms over training: computed inside the jitted step, watched on the host.

PyTorch users print ``p.grad.norm()`` per module in the loop. Here the norms are a few extra
reductions inside the compiled step (no extra host sync beyond the metrics dict)::

    extra = make_grad_norm_metrics(params, depth=2)          # static grouping, built once
    step = make_train_step(loss_fn, opt, extra_metrics=extra)
    monitor = GradNormMonitor()
    for i, batch in enumerate(batches):
        state, metrics = step(state, batch, key)
        monitor.record(i, metrics)                           # warns on vanishing/exploding
    monitor.plot("runs/x/grad_norms.png")

Alert rules (per module; each alert is raised once, as a :class:`GradNormWarning` and in
:attr:`GradNormMonitor.alerts`):

- **non-finite**: a NaN/Inf norm;
- **vanishing**: ``patience`` consecutive norms below ``vanish_ratio`` x the module's reference
  (the median of its first ``warmup`` finite norms), or below ``vanish_abs`` (a module whose
  gradient is zero from the start: run :func:`jaxgrad.inspect.doctor.grad_flow`);
- **exploding**: ``patience`` consecutive norms above ``explode_ratio`` x the reference.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgrad.autodiff.freeze import path_str
from jaxgrad.report.plots import plot_curves

__all__ = ["GradNormMonitor", "GradNormWarning", "make_grad_norm_metrics", "module_groups"]


class GradNormWarning(UserWarning):
    """A module's gradient norm vanished, exploded or became non-finite."""


def module_groups(
    params: Any, *, depth: int = 1, prefixes: Sequence[str] | None = None
) -> dict[str, list[int]]:
    """Group the leaves of ``params`` by module: ``{module path: [leaf indices]}``.

    By default a leaf belongs to the first ``depth`` components of its path (a leaf with a
    shorter path belongs to its parent: ``head/kernel`` → ``head`` at any depth). With
    ``prefixes``, each leaf goes to the longest matching prefix, the rest to ``"other"``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    groups: dict[str, list[int]] = {}
    for i, (path, _) in enumerate(jax.tree_util.tree_leaves_with_path(params)):
        parts = path_str(path).split("/")
        if prefixes is not None:
            hits = [p for p in prefixes if "/".join(parts).startswith(p.rstrip("/"))]
            name = max(hits, key=len).rstrip("/") if hits else "other"
        elif len(parts) > depth:
            name = "/".join(parts[:depth])
        else:
            name = "/".join(parts[:-1]) or parts[0]
        groups.setdefault(name, []).append(i)
    return groups


def make_grad_norm_metrics(
    params: Any,
    *,
    depth: int = 1,
    prefixes: Sequence[str] | None = None,
    key_prefix: str = "grad_norm/",
) -> Callable[[Any, Any, Any], dict]:
    """An ``extra_metrics(grads, updates, params) -> dict`` for :func:`jaxgrad.training.step.make_train_step`.

    Returns ``{f"{key_prefix}{module}": L2 norm of that module's gradient}`` (float32 scalars),
    grouped by :func:`module_groups` (computed once, from the structure of ``params``).
    """
    groups = module_groups(params, depth=depth, prefixes=prefixes)
    n_leaves = len(jax.tree_util.tree_leaves(params))

    def extra_metrics(grads: Any, updates: Any, new_params: Any) -> dict:
        del updates, new_params  # only gradients are tracked
        leaves = jax.tree_util.tree_leaves(grads)
        if len(leaves) != n_leaves:
            raise ValueError(
                f"grad-norm metrics were built for {n_leaves} leaves but the gradient has "
                f"{len(leaves)}: build them from the same params the step differentiates."
            )
        f32 = [g.astype(jnp.float32) for g in leaves]
        return {
            key_prefix + name: optax.tree.norm([f32[i] for i in idx])
            for name, idx in groups.items()
        }

    return extra_metrics


class GradNormMonitor:
    """Collects per-module gradient norms from step metrics; alerts and plots (see module doc)."""

    def __init__(
        self,
        *,
        key_prefix: str = "grad_norm/",
        warmup: int = 5,
        patience: int = 3,
        vanish_ratio: float = 1e-3,
        explode_ratio: float = 1e3,
        vanish_abs: float = 1e-12,
        warn: bool = True,
    ):
        if warmup < 1 or patience < 1:
            raise ValueError(f"warmup and patience must be >= 1, got {warmup}, {patience}")
        self.key_prefix = key_prefix
        self.warmup, self.patience, self.warn = warmup, patience, warn
        self.vanish_ratio, self.explode_ratio = vanish_ratio, explode_ratio
        self.vanish_abs = vanish_abs
        self.history: dict[str, tuple[list[int], list[float]]] = {}
        self.alerts: list[str] = []
        self._raised: set[tuple[str, str]] = set()
        self._streak: dict[tuple[str, str], int] = {}

    def reference(self, module: str) -> float | None:
        """Median of the module's first ``warmup`` finite norms (None until there are enough)."""
        finite = [v for v in self.history[module][1] if math.isfinite(v)][: self.warmup]
        return float(np.median(finite)) if len(finite) == self.warmup else None

    def record(self, step: int, metrics: Mapping[str, Any]) -> list[str]:
        """Add one step's metrics (scalars) or K stacked steps' (``[K]`` arrays from
        :func:`jaxgrad.training.step.make_multi_step`, steps ``step..step+K-1``). Returns new alerts."""
        new: list[str] = []
        for name, value in metrics.items():
            if not name.startswith(self.key_prefix):
                continue
            module = name[len(self.key_prefix) :]
            values = np.atleast_1d(np.asarray(value, dtype=np.float64))
            steps, hist = self.history.setdefault(module, ([], []))
            for k, v in enumerate(values):
                steps.append(step + k)
                hist.append(float(v))
                new += self._check(module, step + k, float(v))
        return new

    def _check(self, module: str, step: int, v: float) -> list[str]:
        ref = self.reference(module)
        conditions = {
            "non-finite": not math.isfinite(v),
            "vanishing": math.isfinite(v)
            and (v < self.vanish_abs or (ref is not None and v < self.vanish_ratio * ref)),
            "exploding": math.isfinite(v) and ref is not None and v > self.explode_ratio * ref,
        }
        out = []
        for kind, hit in conditions.items():
            streak = self._streak.get((module, kind), 0) + 1 if hit else 0
            self._streak[(module, kind)] = streak
            need = 1 if kind == "non-finite" else self.patience
            if streak >= need and (module, kind) not in self._raised:
                self._raised.add((module, kind))
                ref_s = "n/a" if ref is None else f"{ref:.3g}"
                msg = f"step {step}: gradient norm of {module!r} is {kind} ({v:.3g}; reference {ref_s})"
                out.append(msg)
                if self.warn:
                    warnings.warn(msg, GradNormWarning, stacklevel=3)
        self.alerts += out
        return out

    def plot(self, path: str | os.PathLike, *, title: str = "gradient norm per module") -> Path:
        """A PNG (log y) of every module's gradient norm over steps; non-positive values are gaps.

        A module whose norm is always 0 (or never finite) cannot be drawn on a log axis: it is
        left out of the legend and named under the plot instead.
        """
        if not self.history:
            raise ValueError("nothing recorded yet: call record(step, metrics) first")
        series, undrawable = {}, []
        for m, (s, vals) in self.history.items():
            drawn = [v if v > 0 and math.isfinite(v) else math.nan for v in vals]
            if all(math.isnan(v) for v in drawn):
                undrawable.append(m)
            else:
                series[m] = (s, drawn)
        note = f"always 0 or non-finite (not drawable on a log axis): {', '.join(undrawable)}"
        y = "gradient L2 norm"
        return plot_curves(path, {y: series}, title=title, logy=(y,), ylabels={y: f"{y} (log)"},
                           note=note if undrawable else "")  # fmt: skip
