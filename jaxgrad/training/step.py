"""The one train-step factory every experiment uses.

``loss.backward(); optimizer.step(); optimizer.zero_grad()`` becomes one pure, jitted function
``step(state, batch, key) -> (state, metrics)``: the gradient (``jax.value_and_grad`` on the
params pytree), the optax update and its application run in a single XLA program; the old state
buffers are donated so parameters are updated in place on the device; nothing is mutated and
no gradient survives the step (there is nothing to ``zero_grad``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainState", "init_train_state", "make_eval_step", "make_multi_step", "make_train_step"]

#: ``loss_fn(params, batch, key) -> (loss, aux)``: a pure scalar loss and a dict of metrics.
LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]


class TrainState(NamedTuple):
    """Everything a step reads and returns: params, optimizer state, and the step counter."""

    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar; folded into the key so every step draws fresh randomness


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """``optimizer = Adam(model.parameters())``: build the optax state for ``params``."""
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    post_update: Callable[[Any], Any] | None = None,
    extra_metrics: Callable[[Any, Any, Any], dict] | None = None,
    jit: bool = True,
    donate: bool = True,
    compiler_options: dict | None = None,
) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]:
    """Return ``step(state, batch, key) -> (new_state, metrics)``.

    Args:
      loss_fn: pure ``(params, batch, key) -> (scalar loss, aux dict)``.
      optimizer: any optax transformation (chains, clipping, masks, MultiSteps...).
      post_update: optional projection applied to the new params after the update, outside
        the gradient (e.g. clamping CLIP's ``logit_scale`` to [0, ln 100]).
      extra_metrics: optional ``(grads, updates, new_params) -> dict`` computed inside the
        jitted step (e.g. per-module gradient norms); merged into the metrics.
      jit: compile the step (turn off to debug with prints).
      donate: donate the incoming state's buffers (the caller must not reuse ``state``).
      compiler_options: XLA options for this program (``jax.jit(compiler_options=)``), e.g.
        :data:`jaxgrad.training.xla.WIDE_VECTORS`.
    The step key is ``fold_in(key, state.step)``: pass the same base key every step.
    An optimizer with extra-args support gets the loss as ``value=`` (optax's convention, used
    by ``reduce_on_plateau`` and by :func:`jaxgrad.training.guard.skip_nonfinite`).
    Metrics: ``loss``, every aux entry, ``grad_norm``, ``update_norm``, ``param_norm``.
    """

    def step(state: TrainState, batch: Any, key: jax.Array):
        step_key = jax.random.fold_in(key, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, step_key
        )
        extra = (
            {"value": loss} if isinstance(optimizer, optax.GradientTransformationExtraArgs) else {}
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **extra)
        params = optax.apply_updates(state.params, updates)
        if post_update is not None:
            params = post_update(params)
        metrics = {
            "loss": loss,
            **aux,
            "grad_norm": optax.tree.norm(grads),
            "update_norm": optax.tree.norm(updates),
            "param_norm": optax.tree.norm(params),
        }
        if extra_metrics is not None:
            metrics.update(extra_metrics(grads, updates, params))
        return TrainState(params, opt_state, state.step + 1), metrics

    if not jit:
        return step
    return jax.jit(step, donate_argnums=(0,) if donate else (), compiler_options=compiler_options)


def make_eval_step(
    loss_fn: LossFn, *, jit: bool = True
) -> Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]:
    """``with torch.no_grad(): loss = criterion(model(x), y)``: just call the loss, jitted.

    No gradient is traced in JAX unless you ask for one, so inference needs no context manager.
    """
    return jax.jit(loss_fn) if jit else loss_fn


def make_multi_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    jit: bool = True,
    donate: bool = True,
    compiler_options: dict | None = None,
    **step_options: Any,
) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]:
    """:func:`make_train_step` (same arguments; ``step_options``: ``post_update``,
    ``extra_metrics``), but ``batches`` has a leading ``[K, ...]`` axis and the K steps run
    inside one ``lax.scan`` (one dispatch, no host sync between steps).

    Bit-for-bit the same sequence of updates as K calls of the single step with the same base
    key (each step still folds ``state.step`` into the key). Metrics come back stacked ``[K]``.
    """
    single = make_train_step(loss_fn, optimizer, jit=False, **step_options)

    def steps(state: TrainState, batches: Any, key: jax.Array):
        return jax.lax.scan(lambda s, b: single(s, b, key), state, batches)

    if not jit:
        return steps
    return jax.jit(steps, donate_argnums=(0,) if donate else (), compiler_options=compiler_options)
