"""Classification losses that refuse labels outside ``[0, num_classes)``.

``torch.nn.CrossEntropyLoss`` raises on a label of 10 with 10 classes (a CUDA assert on the
GPU). JAX gathers clamp or fill out-of-range indices instead, so ``optax``'s integer-label cross
entropy returns a plausible number (0 for labels 10..99 with one-hot + smoothing; the last
class for clamped gathers) and the run trains on garbage. Here:

- concrete labels (outside ``jit``: eval code, tests, data checks) are checked on the host and
  a bad one is a ValueError naming the values;
- traced labels (inside the jitted step) make the loss NaN. No host sync, one compare per
  label: the train step stays as fast as before (``docs/results/reliability.md``), and the
  non-finite guard (:func:`jaxgrad.training.guard.skip_nonfinite`) skips the step and stops the run with
  a message that names out-of-range labels as a cause. ``checkify`` would name the bad label
  itself, but every step would need a host-side ``err.throw()`` (a sync per step).

Shapes: ``logits`` ``[..., K]``, ``labels`` ``[...]`` int.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_labels", "cross_entropy", "labels_valid"]


def check_labels(labels, num_classes: int, *, name: str = "labels") -> None:
    """Trace-time checks (integer dtype) and, for concrete labels, the range check on the host.

    Raises TypeError for float labels (0.7 must not become class 0) and ValueError naming the
    out-of-range values. Inside ``jit`` the range cannot be checked here: use
    :func:`labels_valid` in the traced code.
    """
    labels = jnp.asarray(labels) if not isinstance(labels, jax.Array | np.ndarray) else labels
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"{name} must be integer class indices, got dtype {labels.dtype}; convert them "
            "with .astype(int32) only if they are whole numbers"
        )
    if isinstance(labels, jax.core.Tracer):
        return
    a = np.asarray(labels)
    bad = a[(a < 0) | (a >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) (the logits have {num_classes} classes); "
            f"got {np.unique(bad)[:10].tolist()} ({bad.size} of {a.size}). Check the dataset's "
            "labels or the model's num_classes"
        )


def labels_valid(labels: jax.Array, num_classes: int) -> jax.Array:
    """Bool array like ``labels``: True where ``0 <= label < num_classes`` (works under jit)."""
    return (labels >= 0) & (labels < num_classes)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
) -> jax.Array:
    """Mean ``CrossEntropyLoss(label_smoothing=s)`` over the batch; NaN if any label is out of
    range under ``jit``, ValueError for concrete labels (module docstring).

    With smoothing ``s`` the target is ``(1 - s)·onehot + s/K``, PyTorch's definition:
    ``loss = (1 - s)·(−log p_y) + s·mean_k(−log p_k)``.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    num_classes = logits.shape[-1]
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels {labels.shape} must have the logits' shape without the "
                         f"class axis, {logits.shape[:-1]}")  # fmt: skip
    check_labels(labels, num_classes)
    logp = jax.nn.log_softmax(logits, axis=-1)
    valid = labels_valid(labels, num_classes)
    safe = jnp.where(valid, labels, 0)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    return jnp.where(jnp.all(valid), jnp.mean(nll), jnp.nan)
