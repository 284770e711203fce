"""Non-finite guard: a NaN/inf gradient skips its update instead of poisoning the parameters.

PyTorch's AMP ``GradScaler`` skips ``optimizer.step()`` when a gradient is inf/NaN; a plain
fp32 loop silently writes NaN into every parameter and the run is lost. Here the guard is an
optax wrapper, so it lives inside the one jitted train step and costs one ``isfinite`` reduction:

    optimizer = skip_nonfinite(optax.adam(1e-3))          # inside the step: skip bad updates
    step = make_train_step(loss_fn, optimizer, extra_metrics=grads_finite_metric)
    for chunk in ...:
        state, metrics = step(state, batch, key)
        counts = check_nonfinite(state.opt_state, max_in_a_row=20, step=...)  # host, may raise

:func:`skip_nonfinite` is ``optax.apply_if_finite`` told never to give up: a skipped step leaves
params and the inner optimizer state (Adam moments, schedules' counts) exactly as they were.
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

__all__ = [
    "NonFiniteError",
    "check_nonfinite",
    "grads_finite_metric",
    "nonfinite_counts",
    "skip_nonfinite",
]

# apply_if_finite accepts a non-finite update once its consecutive counter exceeds this; the
# counter is an int32 that saturates at this value, so the guard never gives up on its own.
_NEVER_GIVE_UP = int(np.iinfo(np.int32).max)


class NonFiniteError(FloatingPointError):
    """Too many consecutive steps had non-finite gradients; the params are still the last good ones."""


def skip_nonfinite(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``optimizer`` so a step whose gradient has any NaN/inf is skipped (zero update).

    The returned state is an ``optax.ApplyIfFiniteState`` holding ``notfinite_count`` (skips in a
    row, reset by a finite step) and ``total_notfinite`` (never reset); read them with
    :func:`nonfinite_counts`. ``apply_updates`` adds exact zeros, so params are unchanged bit for
    bit, and the inner optimizer state is not advanced.
    """
    return optax.apply_if_finite(optimizer, max_consecutive_errors=_NEVER_GIVE_UP)


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
            "build the optimizer with jaxgrad.guard.skip_nonfinite(optimizer) (once, outermost)."
        )
    return {"nonfinite_skipped": total[0][1], "nonfinite_in_a_row": in_a_row[0][1]}


def grads_finite_metric(grads: Any, updates: Any, params: Any) -> dict[str, jax.Array]:
    """``extra_metrics`` hook for :func:`jaxgrad.train.make_train_step`: ``grads_finite`` per step.

    The same test the guard applies (every gradient leaf finite), as a bool metric, so a
    ``make_multi_step`` chunk reports *which* of its K steps were skipped (``[K]`` bools).
    """
    del updates, params
    leaves = jax.tree_util.tree_leaves(grads)
    return {"grads_finite": jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves]))}


def check_nonfinite(opt_state: Any, *, max_in_a_row: int, step: int | None = None) -> dict:
    """Host-side check between steps or chunks: raise after ``max_in_a_row`` skips in a row.

    Returns the counters as Python ints (for the metrics log). Raises :class:`NonFiniteError`
    when ``nonfinite_in_a_row >= max_in_a_row``; the parameters in the state are then still the
    last finite ones (every bad update was skipped). Blocks on the two scalar counters only.
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
            f"{counts['nonfinite_in_a_row']} consecutive steps{at} had NaN/inf gradients "
            f"({counts['nonfinite_skipped']} skipped in total); all were skipped, so the "
            "parameters are the last finite ones. Lower the learning rate or clip gradients, "
            "look for NaN/inf in the inputs, run with JAX_DEBUG_NANS=True to find the op that "
            "makes them, or raise the limit (max_in_a_row / --max-nonfinite) to wait longer."
        )
    return counts
