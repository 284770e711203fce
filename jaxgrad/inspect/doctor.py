"""The gradient-flow doctor: for every parameter leaf, does the loss's gradient reach it, and why not?

"My parameters don't update" has five structural answers, and the traced computation gives
each one exactly (never by guessing from numeric zeros):

========== ==================================================================================
status     meaning (PyTorch symptom)
========== ==================================================================================
connected  the leaf's gradient depends on the loss cotangent in the backward jaxpr
blocked    the loss reads the leaf, but every path passes through ``stop_gradient``
           (``.detach()``, ``torch.no_grad()``) or a non-differentiable op (argmax, int cast):
           ``.grad`` stays ``None``
unused     the loss does not read the leaf at all (its module's output never reaches the loss)
zero       connected, but the gradient is exactly 0 at this input (dead ReLUs, a zero layer)
non-finite connected, and the gradient holds NaN/Inf (sqrt/log/division at 0)
========== ==================================================================================

A leaf used both through ``stop_gradient`` and directly is *connected*. Structure comes from
:mod:`jaxgrad.autodiff.deps`: one ``make_jaxpr`` of ``(params, ct) -> (loss, vjp(ct))`` gives the
forward part (data dependence: which leaves the loss reads) and the backward part (which
gradients read the cotangent); reachability recurses into ``jit``, ``cond``, ``scan``,
``while``, ``remat`` and custom JVP/VJP calls. The numbers (norms, finiteness) come from one
jitted ``value_and_grad``.

Use :func:`diagnose` from an experiment (``--doctor``); :func:`grad_flow` is the core.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgrad.autodiff.deps import jaxpr_sources, provably_zero
from jaxgrad.autodiff.freeze import path_str
from jaxgrad.inspect.coverage import CoverageReport, optimizer_coverage
from jaxgrad.report.tables import render_table
from jaxgrad.training.xla import RUN_ONCE

__all__ = ["STATUSES", "FlowReport", "LeafFlow", "diagnose", "grad_flow"]

#: every status a leaf can have, in the order the printout lists them
STATUSES = ("connected", "zero", "non-finite", "blocked", "unused", "non-float")

_ADVICE = {
    "unused": "the loss never reads them: is their module's output part of the loss? "
    "(PyTorch: .grad stays None; seed 000's custom encoder must feed the logits)",
    "blocked": "the loss reads them only through stop_gradient (.detach()/no_grad) or a "
    "non-differentiable op (argmax, integer cast): no gradient can flow",
    "zero": "connected, but the gradient is exactly 0 at this input: dead ReLUs, saturated "
    "activations, a zero-initialised layer or a fully masked loss",
    "non-finite": "NaN/Inf in the gradient: look for sqrt/log/division at 0 (e.g. "
    "jnp.linalg.norm of a zero vector); jax.config.update('jax_debug_nans', True) finds the op",
    "non-float": "integer/bool leaves cannot have gradients: keep them out of the params tree",
}


@dataclasses.dataclass(frozen=True)
class LeafFlow:
    """One parameter leaf: where it is, whether the gradient reaches it, and the optimizer's view."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    status: str  # one of STATUSES
    grad_norm: float  # L2 norm of the gradient at this input (NaN when non-finite)
    update: str | None = None  # optimizer coverage: "updated" | "frozen" | "passthrough"
    slots: tuple[str, ...] | None = None  # optimizer state held for the leaf, e.g. ("mu", "nu")


@dataclasses.dataclass(frozen=True)
class FlowReport:
    """The doctor's answer: one :class:`LeafFlow` per leaf (``tree_leaves`` order) and the loss."""

    leaves: tuple[LeafFlow, ...]
    loss: float

    def paths(self, status: str) -> list[str]:
        """The paths of every leaf with ``status`` (e.g. ``report.paths("unused")``)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {STATUSES}")
        return [leaf.path for leaf in self.leaves if leaf.status == status]

    def status(self) -> dict[str, str]:
        """``{path: status}`` for every leaf."""
        return {leaf.path: leaf.status for leaf in self.leaves}

    def counts(self) -> dict[str, int]:
        return {s: n for s in STATUSES if (n := len(self.paths(s))) or s != "non-float"}

    @property
    def healthy(self) -> bool:
        """Every leaf connected with a finite, nonzero gradient, and the optimizer moves it."""
        return math.isfinite(self.loss) and all(
            leaf.status == "connected" and leaf.update in (None, "updated") for leaf in self.leaves
        )

    def findings(self) -> list[str]:
        """Plain-language diagnosis, one line per problem (empty when :attr:`healthy`)."""
        out = []
        if not math.isfinite(self.loss):
            out.append(f"the loss itself is {self.loss}: every gradient is suspect")
        for s, advice in _ADVICE.items():
            if paths := self.paths(s):
                out.append(f"{len(paths)} {s} leaf(s) [{_brief(paths)}]: {advice}")
        for kind, what in (
            ("frozen", "receive a gradient but the optimizer freezes them (zero update)"),
            ("passthrough", "get the raw gradient as update (optax.masked outside its mask): "
             "apply_updates *adds* it, i.e. gradient ascent"),
        ):  # fmt: skip
            paths = [x.path for x in self.leaves if x.update == kind and x.status == "connected"]
            if paths:
                out.append(f"{len(paths)} connected leaf(s) [{_brief(paths)}] {what}")
        return out

    def to_dict(self) -> dict:
        """JSON-ready form; a non-finite norm becomes ``None``."""

        def norm(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "loss": norm(self.loss),
            "counts": self.counts(),
            "findings": self.findings(),
            "leaves": [
                {
                    **dataclasses.asdict(leaf),
                    "shape": list(leaf.shape),
                    "grad_norm": norm(leaf.grad_norm),
                    "slots": None if leaf.slots is None else list(leaf.slots),
                }
                for leaf in self.leaves
            ],
        }

    def table(self, *, fold: int = 4) -> str:
        """The printout: grouped by module path; subtrees of more than ``fold`` leaves that
        share one diagnosis become one line, and identical numbered blocks
        (``layers/0``, ``layers/1``...) fold into ``layers/[0-5]``."""
        with_opt = any(leaf.update is not None for leaf in self.leaves)
        out: list[tuple[str, ...]] = []

        def walk(node: dict, prefix: str) -> None:
            for name, child in node.items():
                path = f"{prefix}/{name}" if prefix else name
                if isinstance(child, list):
                    out.append(_cells(path, child, False, with_opt))
                    continue
                rows = _rows_under(child)
                if len(rows) > fold and len({(r.status, r.update, r.slots) for r in rows}) == 1:
                    out.append(_cells(f"{path}/...", rows, True, with_opt))
                else:
                    walk(child, path)

        walk(_trie(self.leaves), "")
        heads = ("path", "shape", "status", "|grad|") + (("optimizer", "state") if with_opt else ())
        return render_table(out, heads)

    def __str__(self) -> str:
        counts = " · ".join(f"{n} {s}" for s, n in self.counts().items())
        head = f"gradient flow: loss {self.loss:.6g} · {len(self.leaves)} leaves · {counts}"
        lines = [head, self.table()]
        findings = self.findings()
        lines += ["", "findings:"] + [f"  - {f}" for f in findings] if findings else ["", "ok"]
        return "\n".join(lines)


def _brief(paths: list[str], n: int = 3) -> str:
    return ", ".join(paths[:n]) + (f", ... (+{len(paths) - n})" if len(paths) > n else "")


# --- the printout -------------------------------------------------------------------------
# A trie of path components; a leaf is a list of rows (several once numbered blocks are folded).


def _trie(rows: tuple[LeafFlow, ...]) -> dict:
    root: dict = {}
    for r in rows:
        *mods, name = r.path.split("/")
        node = root
        for m in mods:
            node = node.setdefault(m, {})
        node[name] = [r]
    return _fold_numbered(root)


def _signature(node: Any) -> Any:
    if isinstance(node, list):
        return tuple((r.shape, r.status, r.update, r.slots) for r in node)
    return tuple((k, _signature(v)) for k, v in node.items())


def _merge(nodes: list) -> Any:
    if isinstance(nodes[0], list):
        return [r for n in nodes for r in n]
    return {k: _merge([n[k] for n in nodes]) for k in nodes[0]}


def _fold_numbered(node: dict) -> dict:
    """Bottom-up: runs of consecutive numbered children with the same structure and diagnosis
    (``layers/0``...``layers/5``) become one child ``[0-5]``."""
    node = {k: v if isinstance(v, list) else _fold_numbered(v) for k, v in node.items()}
    if len(node) < 2 or not all(k.isdigit() for k in node):
        return node
    keys = sorted(node, key=int)
    out: dict = {}
    run = [keys[0]]
    for k in [*keys[1:], None]:
        same = k is not None and _signature(node[k]) == _signature(node[run[0]])
        if same and int(k) == int(run[-1]) + 1:
            run.append(k)
            continue
        label = run[0] if len(run) == 1 else f"[{run[0]}-{run[-1]}]"
        out[label] = node[run[0]] if len(run) == 1 else _merge([node[r] for r in run])
        run = [k]
    return out


def _rows_under(node: Any) -> list[LeafFlow]:
    return (
        list(node) if isinstance(node, list) else [r for v in node.values() for r in _rows_under(v)]
    )


def _norm_cell(rows: list[LeafFlow]) -> str:
    if all(r.status in ("blocked", "unused", "non-float") for r in rows):
        return "-"
    total = math.sqrt(sum(r.grad_norm**2 for r in rows))
    return "nan" if math.isnan(total) else f"{total:.3g}"


def _cells(path: str, rows: list[LeafFlow], folded: bool, with_opt: bool) -> tuple[str, ...]:
    r0, many = rows[0], f" x{len(rows)}" if len(rows) > 1 else ""
    shape = f"{len(rows)} leaves" if folded else str(r0.shape) + many
    cells = (path, shape, r0.status, _norm_cell(rows))
    if with_opt:
        slots = "-" if r0.slots is None else ",".join(r0.slots) or "none"
        cells += (r0.update or "-", slots)
    return cells


def grad_flow(
    loss_fn: Callable[..., Any], params: Any, *args: Any, has_aux: bool = False
) -> FlowReport:
    """Diagnose the gradient flow of ``loss_fn(params, *args)`` to every leaf of ``params``.

    Args:
      loss_fn: returns a scalar loss (shape ``()``), or ``(loss, aux)`` with ``has_aux=True``;
        ``aux`` does not count as a use of a parameter.
      params: the pytree differentiated (dicts, ``nnx.State`` from ``nnx.split``...). Integer
        leaves are reported as ``non-float`` and left out of the gradient.
      args: the rest of the loss's arguments (batch, key...), held fixed.
    Returns a :class:`FlowReport`: ``print(report)``, ``report.paths("unused")``,
    ``report.to_dict()``.
    Raises ValueError if the loss is not a scalar.
    """
    leaves, tree = jax.tree_util.tree_flatten(params)
    is_float = [bool(jnp.issubdtype(jnp.result_type(x), jnp.inexact)) for x in leaves]
    fl = [x for x, f in zip(leaves, is_float) if f]

    def loss_of(float_leaves, *rest):
        it = iter(float_leaves)
        full = [next(it) if f else x for x, f in zip(leaves, is_float)]
        out = loss_fn(jax.tree_util.tree_unflatten(tree, full), *rest)
        return out if has_aux else (out, None)

    out_shape = jax.eval_shape(lambda f, *r: loss_of(f, *r)[0], fl, *args)
    if np.shape(out_shape) != ():
        raise ValueError(
            f"grad_flow needs a scalar loss (shape ()), got shape {np.shape(out_shape)}: reduce "
            "it (e.g. .mean()); a shape-(1,) result needs out[0]. If loss_fn returns "
            "(loss, aux), pass has_aux=True."
        )

    # Structure: one trace of the forward pass and its VJP. Bits 0..n-1 mark the float leaves,
    # bit n the cotangent; the rest of the arguments carry no bits (held fixed).
    def primal_and_pullback(float_leaves, ct, *rest):
        loss, vjp_fun, _ = jax.vjp(lambda f: loss_of(f, *rest), float_leaves, has_aux=True)
        return loss, vjp_fun(ct)[0]

    ct = jax.ShapeDtypeStruct((), out_shape.dtype)
    closed = jax.make_jaxpr(primal_and_pullback)(fl, ct, *args)
    n = len(fl)
    n_rest = len(closed.jaxpr.invars) - n - 1
    bits = jaxpr_sources(closed.jaxpr, [1 << i for i in range(n + 1)] + [0] * n_rest)
    loss_bits, grad_bits = bits[0], bits[1:]
    reads = [bool(loss_bits >> i & 1) for i in range(n)]
    # A gradient that ignores the cotangent (a custom_vjp rule assuming it is 1) is still a
    # gradient unless it is provably zero (a None / zeros rule, stop_gradient, unused).
    zero = provably_zero(closed.jaxpr)[1:]
    connected = [bool(b >> n & 1) or not z for b, z in zip(grad_bits, zero)]

    # Numbers: one jitted value_and_grad; only per-leaf summaries come back to the host. It runs
    # once, so XLA's backend optimisation (most of the compile time) is not worth paying for.
    @functools.partial(jax.jit, compiler_options=RUN_ONCE)
    def numbers(float_leaves, *rest):
        (loss, _), g = jax.value_and_grad(loss_of, has_aux=True)(float_leaves, *rest)
        norms = [optax.tree.norm(x.astype(jnp.float32)) for x in g]
        finite = [jnp.all(jnp.isfinite(x)) for x in g]
        zero = [jnp.all(x == 0) for x in g]
        return loss, norms, finite, zero

    loss, norms, finite, zero = jax.device_get(numbers(fl, *args))

    rows, j = [], 0
    for (path, x), f in zip(jax.tree_util.tree_leaves_with_path(params), is_float):
        shape, dtype = tuple(np.shape(x)), str(jnp.result_type(x))
        if not f:
            rows.append(LeafFlow(path_str(path), shape, dtype, "non-float", 0.0))
            continue
        if connected[j]:
            status = "non-finite" if not finite[j] else "zero" if zero[j] else "connected"
        else:
            status = "blocked" if reads[j] else "unused"
        norm = float(norms[j]) if finite[j] else math.nan
        rows.append(LeafFlow(path_str(path), shape, dtype, status, norm))
        j += 1
    return FlowReport(tuple(rows), float(loss))


def with_coverage(report: FlowReport, coverage: CoverageReport) -> FlowReport:
    """Attach the optimizer's view (updated/frozen/passthrough, state slots) to each row."""
    if [c.path for c in coverage.leaves] != [r.path for r in report.leaves]:
        raise ValueError(
            "the optimizer coverage and the gradient-flow report describe different parameter "
            "trees: compute both from the same params."
        )
    leaves = tuple(
        dataclasses.replace(r, update=c.status, slots=c.slots)
        for r, c in zip(report.leaves, coverage.leaves)
    )
    return dataclasses.replace(report, leaves=leaves)


def diagnose(
    loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]],
    params: Any,
    batch: Any,
    key: jax.Array,
    optimizer: optax.GradientTransformation | None = None,
    *,
    show: bool = True,
) -> FlowReport:
    """The one call for experiments: gradient flow (+ optimizer coverage) of a training loss.

    Args:
      loss_fn: the experiment's pure ``loss_fn(params, batch, key) -> (loss, aux)``.
      params: the params pytree the train step differentiates.
      batch, key: one batch and a key, as the train step would pass them.
      optimizer: if given, each row also says whether the optimizer updates the leaf
        (:func:`jaxgrad.inspect.coverage.optimizer_coverage`).
      show: print the report.
    Returns the :class:`FlowReport` (``.healthy``, ``.findings()``, ``.to_dict()``).

    Example (an experiment's ``--doctor`` flag)::

        if cfg.doctor:
            diagnose(loss_fn, state.params, first_batch, keys["step"], optimizer)
    """
    report = grad_flow(loss_fn, params, batch, key, has_aux=True)
    if optimizer is not None:
        report = with_coverage(report, optimizer_coverage(optimizer, params))
    if show:
        print(report)
    return report
