"""An embedded, learnable stand-in for CIFAR-10: runs anywhere with no download.

It is NOT CIFAR-10 and every output that uses it says so (``source`` below). Each of the
classes has a fixed smooth colour pattern (sinusoids whose frequencies, phases and colours are
drawn once from ``template_seed``); an image is its class pattern, randomly shifted, scaled in
contrast and brightness, plus pixel noise. A small ViT learns it in a few hundred steps.
"""

from __future__ import annotations

import numpy as np

from jaxgrad.data.dataset import ImageDataset

__all__ = ["SYNTHETIC_SOURCE", "make_synthetic"]

SYNTHETIC_SOURCE = "synthetic (NOT real CIFAR-10)"
CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _templates(num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``[K, size, size, 3]`` float patterns in [-1, 1], one per class."""
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = np.zeros((num_classes, size, size, 3))
    for c in range(num_classes):
        for _ in range(3):
            fy, fx = rng.integers(1, 4, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * (fy * yy + fx * xx) / size + phase)
            out[c] += wave[..., None] * rng.uniform(-1, 1, size=3)
    return out / np.abs(out).max(axis=(1, 2, 3), keepdims=True)


def make_synthetic(
    n: int,
    *,
    seed: int,
    num_classes: int = 10,
    image_size: int = 32,
    noise: float = 0.35,
    template_seed: int = 20261122,
) -> ImageDataset:
    """``n`` labelled images uint8 ``[n, image_size, image_size, 3]``, balanced classes.

    ``seed`` draws the images (numpy ``Generator``, no global state); the class patterns come
    from ``template_seed`` so that two calls with different seeds share the same classes.
    """
    if n <= 0 or num_classes <= 0 or image_size <= 0:
        raise ValueError(
            f"n, num_classes, image_size must be > 0, got {n}, {num_classes}, {image_size}"
        )
    templates = _templates(num_classes, image_size, np.random.default_rng(template_seed))
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    shifts = rng.integers(-3, 4, size=(n, 2))
    contrast = rng.uniform(0.6, 1.0, size=(n, 1, 1, 1))
    brightness = rng.uniform(-0.2, 0.2, size=(n, 1, 1, 1))
    base = np.stack([np.roll(templates[c], tuple(s), axis=(0, 1)) for c, s in zip(labels, shifts)])
    x = contrast * base + brightness + noise * rng.standard_normal(base.shape)
    images = np.clip(np.round(127.5 * (x + 1.0)), 0, 255).astype(np.uint8)
    names = CLASS_NAMES if num_classes == 10 else tuple(f"class_{i}" for i in range(num_classes))
    return ImageDataset(images, labels, names, SYNTHETIC_SOURCE)
