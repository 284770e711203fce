"""Optimizer coverage: which parameter leaves will an optax transformation actually move?

PyTorch users check ``for group in optimizer.param_groups: print(group['params'])`` to see
whether a module's parameters were handed to the optimizer at all. An optax transformation
receives *every* leaf; what matters is what it does to each one. :func:`optimizer_coverage`
answers per leaf, without running a training step:

1. **State** — ``jax.eval_shape(optimizer.init, params)`` (shapes only, nothing allocated). A
   state leaf belongs to a parameter leaf when its key path *ends with* that parameter's key
   path and it has the parameter's shape: optax mirrors the params tree inside each per-leaf
   state (``mu``, ``nu``, ``trace``, ``acc_grads``...) and puts ``optax.MaskedNode`` where a
   leaf is masked out. The names of those containers are the leaf's ``slots``; for
   ``optax.partition``/``multi_transform`` the label under ``inner_states`` is its ``group``.
2. **Structure of the update** — :func:`jaxgrad.autodiff.deps.dependence_matrix` over the jaxpr of
   ``optimizer.update(grads, state, params)``: a leaf whose update reads neither a gradient nor
   a parameter (weight decay reads parameters) is a constant: **frozen**. This sees through
   ``chain``, ``partition``, ``masked``, ``freeze``, ``set_to_zero`` and ``MultiSteps`` (whose
   first ``k-1`` updates are numerically zero, yet the leaf is live).
3. **Probe** — one real update from the initial state with a nonzero gradient: a frozen
   leaf must get exactly zero; an update *equal to the gradient* is **passthrough**: the raw
   gradient is added by ``optax.apply_updates`` (gradient *ascent*) — what ``optax.masked``
   does to leaves outside its mask, almost always a bug.

Statuses: ``updated`` | ``frozen`` | ``passthrough``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgrad.autodiff.deps import dependence_matrix
from jaxgrad.autodiff.freeze import path_str
from jaxgrad.report.tables import render_table
from jaxgrad.training.xla import RUN_ONCE

__all__ = ["CoverageReport", "LeafCoverage", "optimizer_coverage"]


@dataclasses.dataclass(frozen=True)
class LeafCoverage:
    """What the optimizer does to one parameter leaf."""

    path: str
    shape: tuple[int, ...]
    status: str  # "updated" | "frozen" | "passthrough"
    slots: tuple[str, ...]  # per-leaf state containers, e.g. ("mu", "nu"); () = no state
    group: str | None  # optax.partition label, when the state names one
    probe_moved: bool  # did the first update from init with a nonzero gradient move it?


@dataclasses.dataclass(frozen=True)
class CoverageReport:
    """One :class:`LeafCoverage` per parameter leaf, in ``tree_leaves`` order."""

    leaves: tuple[LeafCoverage, ...]

    def paths(self, status: str) -> list[str]:
        return [leaf.path for leaf in self.leaves if leaf.status == status]

    def counts(self) -> dict[str, int]:
        return {s: len(self.paths(s)) for s in ("updated", "frozen", "passthrough")}

    def param_groups(self) -> dict[str, list[str]]:
        """``optimizer.param_groups`` as paths: partition label (or status) → leaf paths."""
        groups: dict[str, list[str]] = {}
        for leaf in self.leaves:
            groups.setdefault(leaf.group or leaf.status, []).append(leaf.path)
        return groups

    def to_dict(self) -> dict:
        return {
            "counts": self.counts(),
            "leaves": [
                {**dataclasses.asdict(leaf), "shape": list(leaf.shape), "slots": list(leaf.slots)}
                for leaf in self.leaves
            ],
        }

    def table(self) -> str:
        rows = [
            (leaf.path, leaf.shape, leaf.status, ",".join(leaf.slots) or "none", leaf.group or "-")
            for leaf in self.leaves
        ]
        return render_table(rows, ("path", "shape", "optimizer", "state", "group"))

    def __str__(self) -> str:
        return self.table()


def _state_slots(params: Any, state: Any) -> tuple[list[list[str]], list[str | None]]:
    """Match state leaves to parameter leaves by key-path suffix and shape (see module doc)."""
    p_items = jax.tree_util.tree_leaves_with_path(params)
    index = {tuple(jax.tree_util.keystr((k,)) for k in p): i for i, (p, _) in enumerate(p_items)}
    shapes = [np.shape(x) for _, x in p_items]
    slots: list[list[str]] = [[] for _ in p_items]
    groups: list[str | None] = [None] * len(p_items)
    for s_path, s_leaf in jax.tree_util.tree_leaves_with_path(state):
        keys = tuple(jax.tree_util.keystr((k,)) for k in s_path)
        for start in range(len(keys) + 1):  # longest parameter path first
            i = index.get(keys[start:])
            if i is not None and np.shape(s_leaf) == shapes[i]:
                prefix = [jax.tree_util.keystr((k,), simple=True) for k in s_path[:start]]
                slot = next((n for n in reversed(prefix) if not n.isdigit()), "state")
                if slot not in slots[i]:
                    slots[i].append(slot)
                if "inner_states" in prefix[:-1]:
                    groups[i] = prefix[prefix.index("inner_states") + 1]
                break
    return slots, groups


def optimizer_coverage(optimizer: optax.GradientTransformation, params: Any) -> CoverageReport:
    """For each leaf of ``params``: will ``optimizer`` update it, and does it hold state?

    Args:
      optimizer: any optax transformation (``chain``, ``partition``/``multi_transform``,
        ``masked``, ``freeze``, ``set_to_zero``, ``MultiSteps``...). Transformations that need
        extra arguments in ``update`` (line searches) are not supported.
      params: the parameter pytree the optimizer will be initialised with (floating leaves).
    Returns a :class:`CoverageReport`; ``print(report)`` gives a table, ``report.to_dict()`` data.
    """
    p_leaves = jax.tree_util.tree_leaves(params)
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            raise TypeError(
                f"optimizer_coverage: parameter {path_str(path)} has dtype "
                f"{jnp.result_type(x)}; optax optimises floating-point leaves only. Split "
                "integer state out of the params tree (nnx.split(model, nnx.Param, ...))."
            )
    n = len(p_leaves)
    sds = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    state_sds = jax.eval_shape(optimizer.init, sds)
    slots, groups = _state_slots(params, state_sds)

    update = lambda g, s, p: optimizer.update(g, s, p)[0]  # the updates only

    dep = dependence_matrix(update, sds, state_sds, sds)
    if dep.shape[0] != n:
        raise ValueError(
            f"optimizer_coverage: the update has {dep.shape[0]} leaves but params has {n}; "
            "the transformation must return updates shaped like params."
        )
    m = dep.shape[1] - 2 * n  # number of state leaves, between the grads and params columns
    live = dep[:, :n].any(axis=1) | dep[:, n + m :].any(axis=1)

    # Probe: one real update from the initial state with a nonzero, non-constant gradient
    # (1 + i mod 7 / 7 over each leaf's flat index: no RNG, so the program compiles fast). Init,
    # probe and comparisons run in one jitted program (one compile, no per-leaf dispatch).
    @functools.partial(jax.jit, compiler_options=RUN_ONCE)
    def probe_update(params):
        leaves, tree = jax.tree_util.tree_flatten(params)
        probe = [
            (1 + (jnp.arange(x.size) % 7) / 7).astype(x.dtype).reshape(np.shape(x)) for x in leaves
        ]
        upd = update(jax.tree_util.tree_unflatten(tree, probe), optimizer.init(params), params)
        upd = jax.tree_util.tree_leaves(upd)
        return [jnp.any(u != 0) for u in upd], [jnp.array_equal(u, g) for u, g in zip(upd, probe)]

    moved, same = jax.device_get(probe_update(params))

    leaves = []
    for i, (path, x) in enumerate(jax.tree_util.tree_leaves_with_path(params)):
        status = "passthrough" if same[i] else "updated" if live[i] or moved[i] else "frozen"
        leaves.append(LeafCoverage(path=path_str(path), shape=tuple(np.shape(x)), status=status,
                                   slots=tuple(slots[i]), group=groups[i],
                                   probe_moved=moved[i]))  # fmt: skip
    return CoverageReport(tuple(leaves))
