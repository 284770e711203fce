"""On-device batching: the dataset lives on the accelerator; shuffling, cropping, flipping and
normalization are jitted array ops driven by explicit keys.

The seed's ``DataLoader(shuffle=True)`` + ``ToTensor()`` + ``Normalize(0.5, 0.5)`` becomes:

    idx = epoch_indices(jax.random.fold_in(data_key, epoch), n, batch_size)   # [steps, B]
    batch = take(images, labels, idx[i])        # uint8 [B, H, W, 3], int32 [B]
    x = normalize(augment(aug_key, batch["images"]))   # inside the jitted train step

No host round trip per batch: a whole chunk of an epoch can be gathered and scanned in one
dispatch (see ``jaxgrad.training.step.make_multi_step``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "augment",
    "epoch_indices",
    "eval_indices",
    "normalize",
    "random_crop",
    "random_flip",
    "take",
]


def normalize(images: jax.Array) -> jax.Array:
    """uint8 ``[..., H, W, C]`` → float32 in [-1, 1]: ``ToTensor()`` then ``Normalize(0.5, 0.5)``."""
    if images.dtype != jnp.uint8:
        raise ValueError(f"normalize expects uint8 images (0..255), got {images.dtype}")
    return (images.astype(jnp.float32) / 255.0 - 0.5) / 0.5


def random_crop(key: jax.Array, images: jax.Array, *, padding: int = 4) -> jax.Array:
    """``RandomCrop(H, padding=4, padding_mode="reflect")`` per image; ``[B, H, W, C]`` kept."""
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), "reflect")
    ky, kx = jax.random.split(key)
    oy = jax.random.randint(ky, (b,), 0, 2 * padding + 1)
    ox = jax.random.randint(kx, (b,), 0, 2 * padding + 1)
    crop = lambda img, y, x: jax.lax.dynamic_slice(img, (y, x, 0), (h, w, c))
    return jax.vmap(crop)(padded, oy, ox)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """``RandomHorizontalFlip(0.5)`` per image."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def augment(key: jax.Array, images: jax.Array, *, padding: int = 4) -> jax.Array:
    """Random crop (reflect padding) then horizontal flip, on uint8 or float ``[B, H, W, C]``."""
    crop_key, flip_key = jax.random.split(key)
    return random_flip(flip_key, random_crop(crop_key, images, padding=padding))


def epoch_indices(key: jax.Array, n: int, batch_size: int) -> jax.Array:
    """int32 ``[n // batch_size, batch_size]``: a fresh permutation, the last partial batch dropped.

    Dropping it keeps every step the same shape (one compiled program); the dropped images
    differ every epoch because the permutation does (torch's ``drop_last=True``).
    """
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch size {batch_size} is larger than the dataset ({n} images)")
    perm = jax.random.permutation(key, n)[: steps * batch_size]
    return perm.reshape(steps, batch_size).astype(jnp.int32)


def eval_indices(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image once, in order: ``(idx [nb, B], mask [nb, B])``; the padding has mask 0."""
    nb = -(-n // batch_size)
    flat = np.arange(nb * batch_size)
    return np.minimum(flat, n - 1).reshape(nb, batch_size).astype(np.int32), (flat < n).reshape(
        nb, batch_size
    )


def take(images: jax.Array, labels: jax.Array, idx: jax.Array) -> dict[str, jax.Array]:
    """Gather a batch (or a ``[K, B]`` stack of batches) of device-resident data by index."""
    return {"images": images[idx], "labels": labels[idx]}
