"""The configuration of :class:`jaxgrad.models.vit.ViT`: vit-pytorch's ``ViT(...)`` keyword
arguments, plus how it computes (dtype, attention kernel, layout), each checked on creation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["ViTConfig"]


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """vit-pytorch ``ViT(...)`` keyword arguments, plus the compute dtype."""

    image_size: int = 32
    patch_size: int = 4
    num_classes: int = 10
    dim: int = 512
    depth: int = 6
    heads: int = 8
    mlp_dim: int = 1024
    dim_head: int = 64  # vit-pytorch's default; inner dim = heads * dim_head
    dropout: float = 0.1
    emb_dropout: float = 0.1
    channels: int = 3
    # vit-pytorch's pool: "cls" reads the class token, "mean" averages every token (class
    # token included, as vit-pytorch 1.x with a [1, 1, dim] cls_token); same keys and shapes,
    # so a converted checkpoint must say which (vit_config.json)
    pool: str = "cls"
    dtype: str = "float32"  # compute dtype: "float32" or "bfloat16"; params are always float32
    # vit-pytorch drops attention probabilities (nn.Dropout(dropout) after the softmax): True
    # keeps that; False drops only after the projections, which lets training use the fused
    # attention kernel (cuDNN on GPU) -- a different model in training, the same in eval
    attn_dropout: bool = True
    # the fused attention kernel: "auto" (cuDNN on a GPU in bfloat16, else XLA's), "xla" or
    # "cudnn" (GPU only; float16/bfloat16 only); numerics differ only by rounding
    attention: str = "auto"
    # how the same function is laid out for the compiler: "heads" (one small matmul per head,
    # gradients through jaxgrad.models.functional: fastest on XLA:CPU), "packed" (one qkv
    # matmul, attention over [B, heads, N, N]: the GPU/TPU form, fused attention in eval), or
    # "auto" (heads on CPU, packed elsewhere); same parameters, same masks, rounding apart
    layout: str = "auto"

    def __post_init__(self):
        for name in ("image_size", "patch_size", "num_classes", "dim", "depth", "heads",
                     "mlp_dim", "dim_head", "channels"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"ViTConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}"
            )
        for name in ("dropout", "emb_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ViTConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        for name, ok in (("pool", ("cls", "mean")), ("dtype", ("float32", "bfloat16")),
                         ("attention", ("auto", "xla", "cudnn")),
                         ("layout", ("auto", "heads", "packed"))):  # fmt: skip
            if getattr(self, name) not in ok:
                allowed = ", ".join(map(repr, ok[:-1])) + f" or {ok[-1]!r}"
                raise ValueError(f"ViTConfig.{name} must be {allowed}, got {getattr(self, name)!r}")
        if self.attention == "cudnn" and self.dtype != "bfloat16":
            raise ValueError(
                "ViTConfig.attention='cudnn' needs dtype='bfloat16' (cuDNN fused "
                "attention takes no float32); use attention='auto'"
            )

    @classmethod
    def seed(cls) -> ViTConfig:
        """The seed's model: 12,673,642 parameters."""
        return cls()

    @classmethod
    def tiny(cls) -> ViTConfig:
        """A few thousand parameters: one step in milliseconds on CPU (tests, the tour)."""
        return cls(dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64)

    def describe(self) -> str:
        """What the model is, for a plan line: ``seed model (dim 512, depth 6, 8x64 heads, mlp
        1024, patch 4)`` or the same sizes without ``seed model`` for any other config."""
        sizes = (f"dim {self.dim}, depth {self.depth}, {self.heads}x{self.dim_head} heads, "
                 f"mlp {self.mlp_dim}, patch {self.patch_size}")  # fmt: skip
        seed = dataclasses.replace(self, dtype="float32") == ViTConfig.seed()
        return f"seed model ({sizes})" if seed else f"model ({sizes})"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size**2

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def as_record(self) -> dict:
        """The fields a checkpoint records and a resume or a saved model compares: all but
        ``layout`` (how the compiler is given the same function, so a run trained on a GPU
        resumes or evaluates on a CPU)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "layout"}

    def resolved_layout(self) -> str:
        """``layout`` with "auto" decided by the default backend (at trace time): "heads" on
        CPU, "packed" elsewhere."""
        if self.layout != "auto":
            return self.layout
        return "heads" if jax.default_backend() == "cpu" else "packed"

    def attention_implementation(self) -> str | None:
        """``implementation=`` for ``jax.nn.dot_product_attention``: ``"cudnn"`` when asked, or
        with ``"auto"`` on a GPU in bfloat16 when the head dim suits cuDNN (a multiple of 8, at
        most 128); None (XLA's) otherwise (CPU, float32)."""
        if self.attention == "cudnn":
            return "cudnn"
        fits = self.dim_head % 8 == 0 and self.dim_head <= 128
        if self.attention == "auto" and self.dtype == "bfloat16" and fits:
            return "cudnn" if jax.default_backend() == "gpu" else None
        return None
