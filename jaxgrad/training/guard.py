"""Non-finite guard: a NaN/inf gradient skips its update instead of poisoning the parameters.

PyTorch's AMP ``GradScaler`` skips ``optimizer.step()`` when a gradient is inf/NaN; a plain
fp32 loop silently writes NaN into every parameter and the run is lost. Here the guard is an
optax wrapper, so it lives inside the one jitted train step and costs one ``isfinite`` reduction:

    optimizer = skip_nonfinite(optax.adam(1e-3))          # inside the step: skip bad updates
    step = make_train_step(loss_fn, optimizer, extra_metrics=grads_finite_metric)
    for chunk in ...:
        state, metrics = step(state, batch, key)
        counts = check_nonfinite(state.opt_state, max_in_a_row=20, step=...)  # host, may raise

:func:`skip_nonfinite` is ``optax.apply_if_finite`` told never to give up, and wider: it also
checks the loss, the update and the new parameters (so ``lr=NaN`` or an overflowing update is
skipped too). A skipped step leaves params and the inner optimizer state (Adam moments,
schedules' counts) exactly as they were. :func:`check_finite_state` refuses to checkpoint a
state that holds NaN/inf.
Giving up after N bad steps (optax's behaviour) would apply the NaN update; instead the host
calls :func:`check_nonfinite` between steps or chunks and stops with :class:`NonFiniteError`
while the parameters are still finite, so the last checkpoint and the state in memory are usable.

Wrap the *outermost* transformation (outside ``optax.MultiSteps`` or a freeze partition) so a
bad micro-batch drops the whole update; :func:`nonfinite_counts` finds the counters at any depth.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgrad.errors import UserError

__all__ = [
    "NonFiniteError",
    "check_finite_state",
    "check_nonfinite",
    "grads_finite_metric",
    "nonfinite_counts",
    "skip_nonfinite",
]

# The counters are int32 and saturate here instead of wrapping: the guard never gives up on its own.
_NEVER_GIVE_UP = int(np.iinfo(np.int32).max)


class NonFiniteError(UserError, FloatingPointError):
    """A non-finite loss, gradient, update or parameter was found (see the message)."""


def _all_finite(tree: Any) -> jax.Array:
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] or [jnp.array(True)]))


def skip_nonfinite(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``optimizer`` so a step is skipped (zero update) when anything it would write is
    non-finite: the gradient, the loss (``value=`` extra arg, which
    :func:`jaxgrad.training.step.make_train_step` passes), the update, or the new parameters
    ``params + update`` (a finite gradient with lr=NaN or an overflowing update is caught too).

    The returned state is an ``optax.ApplyIfFiniteState`` holding ``notfinite_count`` (skips in a
    row, reset by a finite step) and ``total_notfinite`` (never reset); read them with
    :func:`nonfinite_counts`. A skipped step adds exact zeros, so params are unchanged bit for
    bit, and the inner optimizer state is not advanced.
    """
    inner = optax.with_extra_args_support(optimizer)

    def init(params):
        return optax.ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True, jnp.bool_),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update(updates, state, params=None, **extra_args):
        value = extra_args.get("value")
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        ok = _all_finite(updates) & _all_finite(new_updates)
        if value is not None:
            ok &= _all_finite(value)
        if params is not None:
            ok &= _all_finite(optax.apply_updates(params, new_updates))
        out = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
        kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_inner, state.inner_state)
        bad = (~ok).astype(jnp.int32)
        return out, optax.ApplyIfFiniteState(
            notfinite_count=jnp.where(
                ok, 0, jnp.minimum(state.notfinite_count, _NEVER_GIVE_UP - 1) + 1
            ),
            last_finite=ok,
            total_notfinite=jnp.minimum(state.total_notfinite, _NEVER_GIVE_UP - 1) + bad,
            inner_state=kept,
        )

    return optax.GradientTransformationExtraArgs(init, update)


def check_finite_state(tree: Any, *, what: str = "the train state") -> None:
    """Refuse to checkpoint a non-finite state: raise :class:`NonFiniteError` naming the first
    leaves holding NaN/inf. Call it right before ``Checkpointer.save`` (it blocks on one bool
    per leaf)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    bad = [
        jax.tree_util.keystr(path)
        for path, x in flat
        if hasattr(x, "dtype")
        and jnp.issubdtype(x.dtype, jnp.inexact)
        and not bool(jnp.all(jnp.isfinite(x)))
    ]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise NonFiniteError(
            f"{what} holds NaN/inf in {', '.join(bad[:5])}{more}; it was not saved, so the "
            "last checkpoint is the newest finite state. Lower the learning rate, check the "
            "inputs, or wrap the optimizer in jaxgrad.training.guard.skip_nonfinite."
        )


def nonfinite_counts(opt_state: Any) -> dict[str, jax.Array]:
    """``{"nonfinite_skipped": total, "nonfinite_in_a_row": consecutive}`` from ``opt_state``.

    Works inside or outside ``jit`` and for a guard nested at any depth (e.g. inside
    ``optax.MultiSteps``). Raises ValueError when ``opt_state`` holds no guard, or more than one.
    """
    total = optax.tree.get_all_with_path(opt_state, "total_notfinite")
    in_a_row = optax.tree.get_all_with_path(opt_state, "notfinite_count")
    if len(total) != 1 or len(in_a_row) != 1:
        raise ValueError(
            f"expected exactly one non-finite guard in the optimizer state, found {len(total)}: "
            "build the optimizer with jaxgrad.training.guard.skip_nonfinite(optimizer) (once, outermost)."
        )
    return {"nonfinite_skipped": total[0][1], "nonfinite_in_a_row": in_a_row[0][1]}


def grads_finite_metric(grads: Any, updates: Any, params: Any) -> dict[str, jax.Array]:
    """``extra_metrics`` hook for :func:`jaxgrad.training.step.make_train_step`: ``grads_finite`` per step.

    The gradient part of the guard's test (every gradient leaf finite), as a bool metric, so a
    ``make_multi_step`` chunk reports which of its K steps had a bad gradient (``[K]`` bools).
    A step skipped for a non-finite loss, update or new parameter still shows True here.
    """
    del updates, params
    leaves = jax.tree_util.tree_leaves(grads)
    return {"grads_finite": jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves]))}


def check_nonfinite(opt_state: Any, *, max_in_a_row: int, step: int | None = None) -> dict:
    """Host-side check between steps or chunks: raise after ``max_in_a_row`` skips in a row.

    Returns the counters as Python ints (for the metrics log). Raises :class:`NonFiniteError`
    when ``nonfinite_in_a_row >= max_in_a_row``. With :func:`skip_nonfinite` outermost, every
    skipped update left the parameters as they were; ``opt_state`` must come from that guard
    (ValueError otherwise), so the message never claims more than it checked.
    Blocks on the two scalar counters only.
    """
    if max_in_a_row < 1:
        raise ValueError(
            f"max_in_a_row must be >= 1, got {max_in_a_row}: it is how many consecutive skipped "
            "steps to tolerate before stopping."
        )
    counts = {k: int(v) for k, v in jax.device_get(nonfinite_counts(opt_state)).items()}
    if counts["nonfinite_in_a_row"] >= max_in_a_row:
        at = f" at step {step}" if step is not None else ""
        raise NonFiniteError(
            f"{counts['nonfinite_in_a_row']} consecutive steps{at} had a NaN/inf loss, "
            f"gradient, update or new parameter ({counts['nonfinite_skipped']} skipped in "
            "total); the guard skipped each of them, so the parameters are those of the last "
            "step that passed its check. A label outside [0, num_classes) makes the "
            "jaxgrad.losses.classification / contrastive losses NaN: check the labels. Otherwise lower the "
            "learning rate or clip gradients, "
            "look for NaN/inf in the inputs, run with JAX_DEBUG_NANS=True to find the op that "
            "makes them, or raise the limit (max_in_a_row / --max-nonfinite) to wait longer."
        )
    return counts
