"""``torch.nn.MultiheadAttention`` as a flax NNX module with separate q/k/v projections.

torch (and open_clip's transformer blocks, ``resblocks.{i}.attn``) keep the three input
projections fused in one ``in_proj_weight [3E, E]`` / ``in_proj_bias [3E]``; here they are
three ``nnx.Linear`` s, ``q_proj`` / ``k_proj`` / ``v_proj``, plus ``out_proj``, and
:func:`jaxgrad.port.mha_rules` splits (and, for export, joins) the fused tensors. Numerics as
torch's: per-head scaled dot product with ``head_dim ** -0.5``, softmax over keys; no dropout,
no masks. Imports only jax and flax.
"""

from __future__ import annotations

import jax
from flax import nnx

__all__ = ["MultiheadAttention"]


class MultiheadAttention(nnx.Module):
    """``MultiheadAttention(E, H, rngs=...)(query [B, N, E], key [B, M, E] = query, value =
    key) -> [B, N, E]``: torch's ``MultiheadAttention(E, H, batch_first=True)(q, k, v)[0]``."""

    def __init__(self, embed_dim: int, num_heads: int, *, rngs: nnx.Rngs, **linear):
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(
                f"embed_dim {embed_dim} must be a multiple of num_heads {num_heads} "
                "(each head gets embed_dim // num_heads features, as in torch)"
            )
        self.num_heads = num_heads
        lin = lambda: nnx.Linear(embed_dim, embed_dim, rngs=rngs, **linear)  # noqa: E731
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = lin(), lin(), lin(), lin()

    def __call__(self, query, key=None, value=None):
        key = query if key is None else key
        value = key if value is None else value
        b, n, e = query.shape
        h = self.num_heads

        def heads(x):  # [B, L, E] -> [B, L, H, E / H]
            return x.reshape(x.shape[0], x.shape[1], h, e // h)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        out = jax.nn.dot_product_attention(q, k, v, scale=(e // h) ** -0.5)
        return self.out_proj(out.reshape(b, n, e))
