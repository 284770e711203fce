"""A small transformer text encoder over token ids: the seed's ``my_text_encoder``.

Token ids ``[B, L]`` (0 = padding) and a mask ``[B, L]`` (True on real tokens) go through its
own token embedding plus a learned positional embedding, ``depth`` pre-norm transformer blocks
(attention to padding keys is masked), a final LayerNorm, a mean over the real tokens only
(padding never changes the result), and a linear projection into the shared embedding space.
The output is *not* normalised: the CLIP model normalises both towers the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["TextConfig", "TextEncoder", "masked_mean"]


@dataclass(frozen=True)
class TextConfig:
    """Text tower sizes. Defaults: a 4-layer, 256-wide encoder (~2.2 M params at 1k vocab)."""

    vocab_size: int = 1000  # set from the tokenizer (len(tokenizer)) by the caller
    max_len: int = 16  # token positions; the caption templates need at most 12
    dim: int = 256  # residual width
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads (dim must be divisible by heads)
    mlp_dim: int = 512  # hidden width of each block's MLP
    out_dim: int = 256  # projection width = the shared CLIP embedding width
    dropout: float = 0.0  # residual dropout; captions are short and templated, 0 is enough
    dtype: str = "float32"  # compute dtype ("bfloat16" on accelerators); params stay float32

    def __post_init__(self):
        for name in ("vocab_size", "max_len", "dim", "depth", "heads", "mlp_dim", "out_dim"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"TextConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def tiny(cls, **overrides) -> TextConfig:
        """One narrow block: a train step compiles and runs in about a second on CPU."""
        base = dict(vocab_size=64, max_len=12, dim=32, depth=1, heads=2, mlp_dim=64, out_dim=32)
        return cls(**{**base, **overrides})


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x [B, L, D]`` over the positions where ``mask [B, L]`` is True → ``[B, D]``.

    A row with no real token gives zeros rather than NaN (0/0), so one empty caption cannot
    poison the whole batch's gradient.
    """
    m = mask.astype(x.dtype)[..., None]
    count = jnp.maximum(m.sum(axis=1), 1.0)
    return (x * m).sum(axis=1) / count


class Block(nnx.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.ln1 = nnx.LayerNorm(cfg.dim, dtype=dtype, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=cfg.heads, in_features=cfg.dim, dtype=dtype, decode=False, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(cfg.dim, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(cfg.dim, cfg.mlp_dim, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.mlp_dim, cfg.dim, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)

    def __call__(self, x, attn_mask, *, deterministic: bool, rngs):
        h = self.attn(self.ln1(x), mask=attn_mask, deterministic=True)
        x = x + self.drop(h, deterministic=deterministic, rngs=rngs)
        h = self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))
        return x + self.drop(h, deterministic=deterministic, rngs=rngs)


class TextEncoder(nnx.Module):
    """``TextEncoder(cfg, rngs=...)(tokens [B, L] int, mask [B, L] bool) -> [B, out_dim]``."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.token_embed = nnx.Embed(cfg.vocab_size, cfg.dim, dtype=dtype, rngs=rngs)
        self.pos_embed = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (cfg.max_len, cfg.dim), jnp.float32)
        )
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.ln_final = nnx.LayerNorm(cfg.dim, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(cfg.dim, cfg.out_dim, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        tokens: jax.Array,
        mask: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        cfg = self.cfg
        if tokens.ndim != 2 or tokens.shape != mask.shape:
            raise ValueError(
                f"tokens and mask must both be [B, L], got {tokens.shape} and {mask.shape}"
            )
        if tokens.shape[1] > cfg.max_len:
            raise ValueError(
                f"captions have L={tokens.shape[1]} tokens but the encoder has max_len="
                f"{cfg.max_len} positions; tokenize with max_len={cfg.max_len}"
            )
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
        if not deterministic and cfg.dropout > 0 and rngs is None:
            raise ValueError("training with dropout needs rngs=nnx.Rngs(dropout=key)")
        mask = mask.astype(bool)
        x = self.token_embed(tokens)
        x = x + self.pos_embed[: tokens.shape[1]].astype(x.dtype)
        # [B, 1, Lq, Lk]: every query may look at every real key, never at padding.
        attn_mask = nnx.make_attention_mask(jnp.ones_like(mask), mask)
        for block in self.blocks:
            x = block(x, attn_mask, deterministic=deterministic, rngs=rngs)
        pooled = masked_mean(self.ln_final(x), mask)
        return self.proj(pooled)
