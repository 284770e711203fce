"""Mixup and CutMix on a batch (timm's ``Mixup(mixup_alpha=0.8, cutmix_alpha=1.0,
switch_prob=0.5, mode="batch")``): each image is mixed with the batch in reverse order.

- mixup: ``x' = λ·x + (1-λ)·flip(x)``, ``y' = λ·y + (1-λ)·flip(y)``, ``λ ~ Beta(α, α)``;
- cutmix: a box of area ``≈ (1-λ)·H·W`` (side ``√(1-λ)``, random centre, clipped at the
  border) is pasted from ``flip(x)``; the label weight is the exact fraction of pixels kept.

One ``λ`` per batch, as timm's batch mode; the key decides whether the batch is mixed at all
(``prob``), and which of the two when both are on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["mix_images", "mix_targets"]


def mix_images(
    key: jax.Array,
    images: jax.Array,
    *,
    prob: float,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """``images [B, H, W, C]`` float → ``(mixed images, λ)``: λ is the weight of each image's own
    target (1 for an unmixed batch); mix the targets with :func:`mix_targets` and that λ."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mix probability must be in [0, 1], got {prob}")
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix_images needs mixup_alpha > 0 or cutmix_alpha > 0")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"mix_images expects float images (normalize first), got {images.dtype}")
    k_on, k_which, k_mix, k_cut, k_y, k_x = jax.random.split(key, 6)
    _, h, w, _ = images.shape
    other = images[::-1]
    lam_mix = jax.random.beta(k_mix, max(mixup_alpha, 1e-3), max(mixup_alpha, 1e-3))
    lam_cut = jax.random.beta(k_cut, max(cutmix_alpha, 1e-3), max(cutmix_alpha, 1e-3))
    cut = jnp.sqrt(1.0 - lam_cut)
    ch, cw = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
    cy, cx = jax.random.randint(k_y, (), 0, h), jax.random.randint(k_x, (), 0, w)
    y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
    x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)  # [H, W]
    kept = 1.0 - box.mean(dtype=jnp.float32)  # the exact label weight of cutmix
    if cutmix_alpha <= 0:
        use_cut = jnp.asarray(False)
    elif mixup_alpha <= 0:
        use_cut = jnp.asarray(True)
    else:
        use_cut = jax.random.bernoulli(k_which, 0.5)
    on = jax.random.bernoulli(k_on, prob)
    lam = jnp.where(on, jnp.where(use_cut, kept, lam_mix), 1.0).astype(images.dtype)
    mixed = lam * images + (1 - lam) * other
    pasted = jnp.where(box[None, :, :, None], other, images)
    out = jnp.where(on & use_cut, pasted, jnp.where(on, mixed, images))
    return out, lam


def mix_targets(targets: jax.Array, lam: jax.Array) -> jax.Array:
    """``λ·targets + (1-λ)·reversed(targets)`` (one-hot or smoothed ``[B, K]``)."""
    lam = lam.astype(targets.dtype)
    return lam * targets + (1 - lam) * targets[::-1]
