"""CLIP's image preprocessing, as transformers' ``CLIPImageProcessor`` does it, on our arrays.

``[N, H, W, 3]`` uint8 → ``[N, 3, S, S]`` float32 ``pixel_values``: resize (PIL bicubic) so the
shorter side is ``S``, centre crop ``S × S``, scale to [0, 1], normalise with OpenAI's CLIP mean
and std, channels first (the layout :class:`jaxgrad.models.clip_vision.CLIPVisionTower` and
transformers take). Runs on the host with PIL, as the processor does, so the numbers match it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["CLIP_MEAN", "CLIP_STD", "clip_preprocess"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # transformers' OPENAI_CLIP_MEAN
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # transformers' OPENAI_CLIP_STD


def _resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``size`` (transformers' default_to_square=False)."""
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    return (size, new_long) if h <= w else (new_long, size)


def clip_preprocess(images: np.ndarray, size: int = 224) -> np.ndarray:
    """``[N, H, W, 3]`` (or one ``[H, W, 3]``) uint8 → ``[N, 3, size, size]`` float32.

    Equal to ``CLIPImageProcessor(size={"shortest_edge": size}, crop_size=size)(images)``.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"clip_preprocess expects RGB images [N, H, W, 3], got shape {images.shape}"
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"clip_preprocess expects uint8 images (0..255), got {images.dtype}; "
            "CLIP's processor resizes the 8-bit image"
        )
    if size <= 0:
        raise ValueError(f"clip_preprocess size must be > 0, got {size}")
    n, h, w, _ = images.shape
    rh, rw = _resized_size(h, w, size)
    top, left = (rh - size) // 2, (rw - size) // 2
    out = np.empty((n, size, size, 3), np.uint8)
    for i, img in enumerate(images):
        big = np.asarray(Image.fromarray(img).resize((rw, rh), Image.Resampling.BICUBIC))
        out[i] = big[top : top + size, left : left + size]
    x = out.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
