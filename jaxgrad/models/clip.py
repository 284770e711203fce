"""A CLIP-style two-tower model: the ViT image tower and the custom text encoder of seed 000.

Both towers end in a linear projection into one shared ``embed_dim``-wide space: the text tower
in its own ``proj``; the image tower in the ViT's head, built with
``num_classes = embed_dim`` so the classifier layer *is* the projection (every ViT parameter is
used, none sits idle with a zero gradient). Features are L2-normalised, so
``image @ textᵀ`` is a matrix of cosine similarities; a learnable ``logit_scale`` (the log of
the inverse temperature, init ``ln(1/0.07)``) sharpens them. ``logit_bias`` exists only for
the SigLIP loss (init −10).

The image tower is either the small ViT (``image: ViTConfig``, uint8-derived ``[B, H, W, 3]``
input), a transformers CLIP vision tower (``image: CLIPVisionConfig``, CLIP-normalised NCHW
``pixel_values``; its ``visual_projection`` is the projection, so ``embed_dim`` must equal its
``projection_dim``; load its weights with :func:`jaxgrad.port.hf_clip.load_pretrained` and
assign ``model.image_encoder``), or absent (``image=None``): the image features come from a
cache of a frozen tower (:mod:`jaxgrad.tasks.features`) and only the text tower exists here.

The model computes features, never a loss (see :mod:`jaxgrad.losses.contrastive`). After each
optimizer step :func:`clamp_logit_scale` projects ``logit_scale`` back into ``[0, ln 100]``, as
open_clip does; pass it as ``make_train_step(..., post_update=clamp_logit_scale)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxgrad.models.clip_vision import CLIPVisionConfig, CLIPVisionTower
from jaxgrad.models.text import TextConfig, TextEncoder
from jaxgrad.models.vit import ViT, ViTConfig

__all__ = [
    "IMAGE_TOWER",
    "MAX_LOGIT_SCALE",
    "TEXT_TOWER",
    "ClipConfig",
    "ClipModel",
    "clamp_logit_scale",
    "l2_normalize",
]

#: CLIP clamps the learnable temperature so the multiplier exp(logit_scale) never exceeds 100.
MAX_LOGIT_SCALE = math.log(100.0)

#: top-level parameter names of the two towers (path prefixes, e.g. to freeze one tower)
IMAGE_TOWER, TEXT_TOWER = "image_encoder", "text_encoder"


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Two towers and the shared space. ``image.num_classes`` (ViT) is overridden by
    ``embed_dim``; a CLIP tower's ``projection_dim`` must equal it; ``None``: cached features."""

    image: ViTConfig | CLIPVisionConfig | None = ViTConfig(
        dim=256, depth=4, heads=4, dim_head=64, mlp_dim=512, dropout=0.0, emb_dropout=0.0
    )
    text: TextConfig = TextConfig()
    embed_dim: int = 256  # shared embedding width (both projections land here)
    logit_scale_init: float = math.log(1 / 0.07)  # CLIP's temperature 0.07
    logit_bias_init: float | None = None  # SigLIP's bias (−10); None: no bias parameter

    def __post_init__(self):
        if self.embed_dim <= 0:
            raise ValueError(f"ClipConfig.embed_dim must be > 0, got {self.embed_dim}")
        if not 0.0 <= self.logit_scale_init <= MAX_LOGIT_SCALE:
            raise ValueError(
                f"logit_scale_init must lie in the clamp range [0, ln 100], got {self.logit_scale_init}"
            )
        if isinstance(self.image, ViTConfig) and self.image.channels != 3:
            raise ValueError("the caption data are RGB images: image.channels must be 3")
        if isinstance(self.image, CLIPVisionConfig):
            if self.image.projection_dim != self.embed_dim:
                raise ValueError(
                    f"the CLIP image tower projects to projection_dim={self.image.projection_dim}"
                    f" but embed_dim={self.embed_dim}: the text projection must land in the "
                    f"same space (--embed-dim {self.image.projection_dim})"
                )
            if self.image.num_channels != 3:
                raise ValueError("the caption data are RGB images: num_channels must be 3")

    @classmethod
    def tiny(cls, *, vocab_size: int = 64, **overrides) -> ClipConfig:
        """Both towers one or two narrow blocks wide; a train step in well under a second."""
        base = dict(
            image=dataclasses.replace(ViTConfig.tiny(), dropout=0.0, emb_dropout=0.0),
            text=TextConfig.tiny(vocab_size=vocab_size),
            embed_dim=32,
        )
        return cls(**{**base, **overrides})


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Rows of ``x [B, D]`` scaled to unit length; ``eps`` keeps a zero row finite."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class ClipModel(nnx.Module):
    """``ClipModel(cfg, rngs=...)``; ``model(images, tokens, mask) -> (img [B, E], txt [B, E])``.

    Images ``[B, H, W, 3]`` float normalised; tokens ``[B, L]`` int ids; mask ``[B, L]`` bool.
    """

    def __init__(self, cfg: ClipConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        if isinstance(cfg.image, CLIPVisionConfig):
            self.image_encoder = CLIPVisionTower(cfg.image, rngs=rngs)
        elif cfg.image is None:
            self.image_encoder = None  # features come from a cache (jaxgrad.tasks.features)
        else:
            image_cfg = dataclasses.replace(cfg.image, num_classes=cfg.embed_dim)
            self.image_encoder = ViT(image_cfg, rngs=rngs)
        text_cfg = dataclasses.replace(cfg.text, out_dim=cfg.embed_dim)
        self.text_encoder = TextEncoder(text_cfg, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(cfg.logit_scale_init, jnp.float32))
        bias = cfg.logit_bias_init
        self.logit_bias = None if bias is None else nnx.Param(jnp.asarray(bias, jnp.float32))

    def encode_image(self, images, *, deterministic: bool = True, rngs=None) -> jax.Array:
        """``[B, H, W, 3]`` (ViT) or ``[B, 3, S, S]`` pixel_values (CLIP tower) → unit-norm
        ``[B, E]`` float32 (the ViT head / ``visual_projection`` is the projection)."""
        if self.image_encoder is None:
            raise ValueError(
                "this ClipModel has no image tower (image=None: features come from a cache); "
                "pass the cached features through l2_normalize instead"
            )
        if isinstance(self.image_encoder, CLIPVisionTower):
            out = self.image_encoder(images)  # no dropout in CLIP's vision tower
        else:
            out = self.image_encoder(images, deterministic=deterministic, rngs=rngs)
        return l2_normalize(out.astype(jnp.float32))

    def encode_text(self, tokens, mask, *, deterministic: bool = True, rngs=None) -> jax.Array:
        """``[B, L]`` ids + mask → unit-norm ``[B, E]`` float32."""
        out = self.text_encoder(tokens, mask, deterministic=deterministic, rngs=rngs)
        return l2_normalize(out.astype(jnp.float32))

    def __call__(self, images, tokens, mask, *, deterministic: bool = True, rngs=None):
        img = self.encode_image(images, deterministic=deterministic, rngs=rngs)
        txt = self.encode_text(tokens, mask, deterministic=deterministic, rngs=rngs)
        return img, txt


def clamp_logit_scale(params: Any, *, max_value: float = MAX_LOGIT_SCALE) -> Any:
    """Project ``logit_scale`` into ``[0, max_value]``; every other leaf is returned as is.

    Works on any params pytree whose top-level ``logit_scale`` entry holds the scalar (the
    ``nnx.split`` state of :class:`ClipModel` or a plain dict). Applied after the optimizer
    step, outside the gradient: open_clip's ``logit_scale.clamp_(0, math.log(100))``.
    """

    def clamp(path, leaf):
        if jax.tree_util.keystr(path[:1], simple=True) == "logit_scale":
            return jnp.clip(leaf, 0.0, max_value)
        return leaf

    return jax.tree_util.tree_map_with_path(clamp, params)
