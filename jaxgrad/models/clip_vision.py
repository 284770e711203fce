"""transformers' CLIP image tower (``CLIPVisionModel`` + ``visual_projection``) in flax NNX.

    emb = CLIPVisionTower(CLIPVisionConfig(), rngs=nnx.Rngs(0))(pixel_values)
    # [B, 3, 224, 224] float32, CLIP-normalised -> [B, 512] == CLIPModel.get_image_features

The architecture, as transformers' ``modeling_clip.py``: a class embedding; a bias-free conv
patch embedding (kernel = stride = patch size); learned position embeddings; ``pre_layrnorm``;
``num_hidden_layers`` pre-norm blocks (``x + attn(LN1 x)``, ``x + mlp(LN2 x)``; separate q/k/v/out
projections with biases, ``head_dim ** -0.5`` scaling; the MLP's activation is ``hidden_act``,
quick_gelu = ``x * sigmoid(1.702 x)`` for OpenAI's checkpoints); ``post_layernorm`` on the class
token; ``visual_projection`` without bias. LayerNorm eps is the config's (1e-5).

Module names follow transformers' (``embeddings.patch_embedding``, ``encoder.layers[i].
self_attn.q_proj``, ...), so the port rules (:func:`jaxgrad.port.hf_clip.rules`) read like the
keys. Pretrained weights: :func:`jaxgrad.port.hf_clip.load_pretrained`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgrad.models.mha import MultiheadAttention

__all__ = ["CLIPVisionConfig", "CLIPVisionTower"]

_ACTS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """transformers' ``CLIPVisionConfig`` fields the image tower needs (defaults: ViT-B/32)."""

    image_size: int = 224  # square input side, pixels
    patch_size: int = 32  # conv kernel = stride
    hidden_size: int = 768  # width of the residual stream
    intermediate_size: int = 3072  # MLP hidden width
    num_hidden_layers: int = 12  # transformer blocks
    num_attention_heads: int = 12  # heads; hidden_size must divide by it
    num_channels: int = 3  # input channels
    layer_norm_eps: float = 1e-5  # every LayerNorm's eps
    hidden_act: str = "quick_gelu"  # MLP activation: quick_gelu (OpenAI), gelu, gelu_new
    projection_dim: int = 512  # output width of visual_projection (the CLIP embedding)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (not isinstance(v, int) or v <= 0):
                raise ValueError(f"CLIPVisionConfig.{f.name} must be a positive int, got {v!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"CLIPVisionConfig.image_size {self.image_size} must be divisible by "
                f"patch_size {self.patch_size}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CLIPVisionConfig.hidden_size {self.hidden_size} must be divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in _ACTS:
            raise ValueError(
                f"CLIPVisionConfig.hidden_act {self.hidden_act!r} is not supported; "
                f"one of {sorted(_ACTS)}"
            )
        if not (np.isfinite(self.layer_norm_eps) and self.layer_norm_eps > 0):
            raise ValueError(
                f"CLIPVisionConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}"
            )

    @classmethod
    def vit_b32(cls) -> CLIPVisionConfig:
        """openai/clip-vit-base-patch32's image tower (87.8M parameters)."""
        return cls()

    @classmethod
    def vit_b16(cls) -> CLIPVisionConfig:
        return cls(patch_size=16)

    @classmethod
    def tiny(cls) -> CLIPVisionConfig:
        """A few thousand parameters on 32x32 images: tests and the tour."""
        return cls(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
            num_hidden_layers=2, num_attention_heads=4, projection_dim=24,
        )  # fmt: skip

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


_INIT = nnx.initializers.normal(0.02)  # transformers' initializer_range


def _linear(n_in, n_out, *, rngs, bias=True):
    return nnx.Linear(n_in, n_out, use_bias=bias, kernel_init=_INIT, rngs=rngs)


def _norm(cfg: CLIPVisionConfig, *, rngs):
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)


class Embeddings(nnx.Module):
    """``[B, C, H, W]`` → ``[B, 1 + patches, D]``: class token, conv patches, + positions."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        p, d = cfg.patch_size, cfg.hidden_size
        self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (d,)))
        self.patch_embedding = nnx.Conv(
            cfg.num_channels, d, (p, p), strides=(p, p), padding="VALID", use_bias=False,
            kernel_init=_INIT, rngs=rngs,
        )  # fmt: skip
        self.position_embedding = nnx.Embed(cfg.num_positions, d, embedding_init=_INIT, rngs=rngs)

    def __call__(self, pixel_values):
        b = pixel_values.shape[0]
        x = self.patch_embedding(pixel_values.transpose(0, 2, 3, 1))  # NHWC conv: [B, g, g, D]
        x = x.reshape(b, -1, x.shape[-1])  # row-major patches, as torch's flatten(2)
        cls = jnp.broadcast_to(self.class_embedding[...], (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        return x + self.position_embedding(jnp.arange(x.shape[1])[None])


class MLP(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.act = cfg.hidden_act
        self.fc1 = _linear(cfg.hidden_size, cfg.intermediate_size, rngs=rngs)
        self.fc2 = _linear(cfg.intermediate_size, cfg.hidden_size, rngs=rngs)

    def __call__(self, x):
        return self.fc2(_ACTS[self.act](self.fc1(x)))


class EncoderLayer(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.layer_norm1 = _norm(cfg, rngs=rngs)
        self.self_attn = MultiheadAttention(
            cfg.hidden_size, cfg.num_attention_heads, kernel_init=_INIT, rngs=rngs
        )
        self.layer_norm2 = _norm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPVisionTower(nnx.Module):
    """``CLIPVisionTower(cfg, rngs=nnx.Rngs(0))(pixel_values [B, C, H, W]) -> [B, projection_dim]``.

    ``pixel_values`` are laid out as transformers takes them (NCHW, float32, normalised with
    CLIP's mean/std: :func:`jaxgrad.data.clip_preprocess`). :meth:`pooled` gives the
    post-LayerNorm class token before the projection (``pooler_output`` of CLIPVisionModel).
    """

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, rngs=rngs)
        self.pre_layrnorm = _norm(cfg, rngs=rngs)  # sic: transformers' spelling
        self.encoder = Encoder(cfg, rngs=rngs)
        self.post_layernorm = _norm(cfg, rngs=rngs)
        self.visual_projection = _linear(cfg.hidden_size, cfg.projection_dim, rngs=rngs, bias=False)

    def _check(self, pixel_values) -> None:
        c, s = self.cfg.num_channels, self.cfg.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (c, s, s):
            raise ValueError(
                f"CLIPVisionTower expects pixel_values [B, {c}, {s}, {s}] (NCHW, as transformers "
                f"takes them), got {tuple(pixel_values.shape)}; jaxgrad.data.clip_preprocess "
                "makes them from [B, H, W, C] uint8 images"
            )
        if not jnp.issubdtype(pixel_values.dtype, jnp.floating):
            raise ValueError(
                f"pixel_values must be float (CLIP-normalised), got {pixel_values.dtype}; use "
                "jaxgrad.data.clip_preprocess"
            )

    def pooled(self, pixel_values):
        """``[B, C, H, W]`` → ``[B, hidden_size]``: the class token after ``post_layernorm``."""
        self._check(pixel_values)
        x = self.pre_layrnorm(self.embeddings(pixel_values.astype(jnp.float32)))
        return self.post_layernorm(self.encoder(x)[:, 0])

    def __call__(self, pixel_values):
        """``[B, C, H, W]`` → projected image embeddings ``[B, projection_dim]`` (unnormalised,
        as ``get_image_features``)."""
        return self.visual_projection(self.pooled(pixel_values))
