"""vit-pytorch's ``ViT`` as a flax NNX module, layer for layer (same parameters, same numerics).

The seed builds ``ViT(image_size=32, patch_size=4, num_classes=10, dim=512, depth=6, heads=8,
mlp_dim=1024, dropout=0.1, emb_dropout=0.1)`` from vit-pytorch; :meth:`ViTConfig.seed` is that
model (12,673,642 parameters). The architecture, exactly as vit-pytorch 1.x:

- patch embedding: cut ``[B, H, W, C]`` into ``p×p`` patches flattened as ``(p1 p2 c)``
  → LayerNorm(patch_dim) → Linear(patch_dim, dim) → LayerNorm(dim);
- prepend a cls token, add the position embedding (both ``randn``, std 1), Dropout(emb_dropout);
- ``depth`` pre-norm blocks: ``x = x + Attn(LN(x))``; ``x = x + MLP(LN(x))``; attention has a
  bias-free qkv projection, ``dim_head ** -0.5`` scaling, dropout on the attention
  probabilities and after the output projection; the MLP uses exact (erf) GELU;
- final LayerNorm, then the cls token → Linear(dim, num_classes).

Port details that matter for parity: LayerNorm eps 1e-5 (flax's default is 1e-6), exact GELU
(``jax.nn.gelu`` defaults to tanh), and torch's Linear init: weights
``kaiming_uniform(a=√5)`` = U(±1/√fan_in), biases U(±1/√fan_in) (flax defaults to
lecun_normal and zero biases).

Mixed precision: ``dtype="bfloat16"`` runs the matmuls (every Linear, attention) in bf16 while
parameters stay float32 (the master copy the optimizer updates). As with torch autocast, the
LayerNorms, the softmax, the residual stream and the returned logits stay float32.

Randomness: the module owns no RNG state. Dropout keys come in at call time
(``rngs=nnx.Rngs(dropout=key)`` or a raw key), so ``nnx.split(model, nnx.Param)`` gives the
whole state and ``jax.grad`` works on a plain params pytree.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxgrad.models import functional as F
from jaxgrad.models.vit_config import ViTConfig

__all__ = [
    "ViT",
    "ViTConfig",
    "count_params",
    "torch_bias_init",
    "torch_kernel_init",
    "vit_forward_flops",
]

_EPS = 1e-5  # torch.nn.LayerNorm's default eps


def torch_kernel_init(key, shape, dtype=jnp.float32):
    """``nn.Linear``'s weight init, kaiming_uniform(a=√5) = U(±1/√fan_in); kernel ``[in, out]``."""
    return nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")(key, shape, dtype)


def torch_bias_init(fan_in: int):
    """``nn.Linear``'s bias init, U(±1/√fan_in): needs the layer's fan-in, hence a factory."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _linear(cfg: ViTConfig, n_in: int, n_out: int, *, rngs: nnx.Rngs, bias: bool = True):
    return nnx.Linear(
        n_in,
        n_out,
        use_bias=bias,
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(n_in),
        rngs=rngs,
    )


class LayerNorm(nnx.LayerNorm):
    """``nnx.LayerNorm`` (same parameters, same forward) with :func:`F.layer_norm`'s
    closed-form backward. Float32 even under bf16 compute, as autocast keeps LayerNorm."""

    def __call__(self, x, *, mask=None):
        if mask is not None:
            raise ValueError("jaxgrad's ViT LayerNorm takes no mask")
        return F.layer_norm(x.astype(jnp.float32), self.scale[...], self.bias[...], self.epsilon)


def _norm(cfg: ViTConfig, n: int, *, rngs: nnx.Rngs):
    del cfg
    return LayerNorm(n, epsilon=_EPS, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)


def _drop(x, rate: float, rngs, **where):
    """``nn.Dropout(rate)`` in training mode with the next key of ``rngs``' dropout stream (no
    key is drawn when ``rate`` is 0, as ``nnx.Dropout``); ``where``: see :func:`F.dropout`."""
    return F.dropout(x, rate, rngs.dropout(), **where) if rate else x


def _dense(linear: nnx.Linear, x, dtype):
    """``linear`` on ``x [..., K]`` through :func:`F.dense` (compute ``dtype``, as nnx.Linear)."""
    w, b = linear.kernel[...].astype(dtype), linear.bias[...].astype(dtype)
    return F.dense(x.reshape(-1, x.shape[-1]).astype(dtype), w, b).reshape(*x.shape[:-1], -1)


class Attention(nnx.Module):
    """vit-pytorch ``Attention``: LN → qkv (no bias) → softmax(q kᵀ/√d) → dropout → out proj."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        inner = cfg.heads * cfg.dim_head
        self.heads, self.dim_head, self.rate = cfg.heads, cfg.dim_head, cfg.dropout
        self.attn_dropout = cfg.attn_dropout
        self.cfg = cfg
        self.implementation = cfg.attention_implementation()
        self.dtype = cfg.compute_dtype
        self.norm = _norm(cfg, cfg.dim, rngs=rngs)
        self.to_qkv = _linear(cfg, cfg.dim, 3 * inner, rngs=rngs, bias=False)
        # vit-pytorch drops the output projection only when heads == 1 and dim_head == dim
        self.project_out = not (cfg.heads == 1 and cfg.dim_head == cfg.dim)
        self.to_out = _linear(cfg, inner, cfg.dim, rngs=rngs) if self.project_out else None

    def __call__(self, x, *, deterministic: bool, rngs: nnx.Rngs | None):
        """``x [B, N, dim]`` → ``[B, N, dim]`` (the residual is added by the caller)."""
        drop_probs = not deterministic and self.rate > 0.0 and self.attn_dropout
        if self.cfg.resolved_layout() == "heads":
            out = self._heads(x, rngs if drop_probs else None)
        else:
            out = self._packed(x, rngs if drop_probs else None)
        if self.to_out is not None and not deterministic:
            out = _drop(out, self.rate, rngs)
        return out.astype(jnp.float32)  # the residual stream stays float32

    def _packed(self, x, rngs):
        """One qkv projection viewed ``[B, N, 3, heads, dim_head]``, attention over ``[B, h, ...]``
        (the fused kernel when no probability is dropped): the form GPUs and TPUs want."""
        b, n, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b, n, 3, self.heads, self.dim_head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, dim_head] each
        scale = self.dim_head**-0.5
        if rngs is None:
            # jax's own bf16 path calls promote_types(bf16, f32) internally, which strict
            # dtype promotion rejects; the op itself is what we want, so allow it here only
            with jax.numpy_dtype_promotion("standard"):
                out = jax.nn.dot_product_attention(
                    q, k, v, scale=scale, implementation=self.implementation
                )
        else:  # dropout on attention probabilities is not something the fused op offers
            dots = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(scale, q.dtype)
            attn = jax.nn.softmax(dots.astype(jnp.float32), axis=-1).astype(q.dtype)
            out = jnp.einsum("bhqk,bkhd->bqhd", _drop(attn, self.rate, rngs), v)
        out = out.reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out) if self.to_out is not None else out

    def _heads(self, x, rngs):
        """One ``[B·N, dim_head]`` block per head and per q/k/v (:func:`F.project_heads`), so
        nothing is transposed: the form XLA:CPU runs fastest. Head i's dropped probabilities are
        slice i of the ``[B, heads, N, N]`` mask the packed form draws."""
        b, n, c = x.shape
        h, d = self.heads, self.dim_head
        xn = self.norm(x).reshape(b * n, c).astype(self.dtype)
        blocks = F.project_heads(xn, self.to_qkv.kernel[...].astype(self.dtype), d)
        key = None if rngs is None else rngs.dropout()  # one draw for every head's mask
        scale = jnp.asarray(d**-0.5, self.dtype)
        outs = []
        for i in range(h):
            q, k, v = (blocks[s * h + i].reshape(b, n, d) for s in range(3))
            dots = jnp.einsum("bqd,bkd->bqk", q, k) * scale
            attn = jax.nn.softmax(dots.astype(jnp.float32), axis=-1).astype(self.dtype)
            if key is not None:
                attn = F.dropout(attn, self.rate, key, shape=(b, h, n, n), at=(1, i))
            outs.append(jnp.einsum("bqk,bkd->bqd", attn, v).reshape(b * n, d))
        if self.to_out is None:
            return outs[0].reshape(b, n, d)
        w, bias = (p[...].astype(self.dtype) for p in (self.to_out.kernel, self.to_out.bias))
        return F.merge_heads(tuple(outs), w, bias).reshape(b, n, c)


class FeedForward(nnx.Module):
    """vit-pytorch ``FeedForward``: LN → Linear → GELU(erf) → Dropout → Linear → Dropout."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.rate, self.dtype, self.cfg = cfg.dropout, cfg.compute_dtype, cfg
        self.norm = _norm(cfg, cfg.dim, rngs=rngs)
        self.fc1 = _linear(cfg, cfg.dim, cfg.mlp_dim, rngs=rngs)
        self.fc2 = _linear(cfg, cfg.mlp_dim, cfg.dim, rngs=rngs)

    def __call__(self, x, *, deterministic: bool, rngs: nnx.Rngs | None):
        layout = self.cfg.resolved_layout()
        if layout == "heads":
            h = _dense(self.fc1, self.norm(x), self.dtype)
        else:
            h = self.fc1(self.norm(x))
        h = jax.nn.gelu(h, approximate=False)
        h = h if deterministic else _drop(h, self.rate, rngs)
        out = _dense(self.fc2, h, self.dtype) if layout == "heads" else self.fc2(h)
        out = out if deterministic else _drop(out, self.rate, rngs)
        return out.astype(jnp.float32)  # the residual stream stays float32


class Block(nnx.Module):
    """One pre-norm transformer layer (vit-pytorch ``transformer.layers[i]``)."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.attn = Attention(cfg, rngs=rngs)
        self.ff = FeedForward(cfg, rngs=rngs)

    def __call__(self, x, *, deterministic: bool, rngs: nnx.Rngs | None):
        x = x + self.attn(x, deterministic=deterministic, rngs=rngs)
        return x + self.ff(x, deterministic=deterministic, rngs=rngs)


class ViT(nnx.Module):
    """The vit-pytorch ViT. ``ViT(cfg, rngs=nnx.Rngs(0))(images) -> logits [B, num_classes]``.

    ``images`` are float ``[B, H, W, C]`` (channels last, as JAX convolutions and our data
    pipeline use), already normalized; the patch order matches vit-pytorch's
    ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)`` so converted weights work unchanged.
    """

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.patch_norm_in = _norm(cfg, cfg.patch_dim, rngs=rngs)
        self.patch_proj = _linear(cfg, cfg.patch_dim, cfg.dim, rngs=rngs)
        self.patch_norm_out = _norm(cfg, cfg.dim, rngs=rngs)
        # torch.randn: standard normal, std 1 (not the 0.02 of other ViTs)
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, cfg.dim)))
        self.pos_embedding = nnx.Param(
            jax.random.normal(rngs.params(), (1, cfg.num_patches + 1, cfg.dim))
        )
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.norm = _norm(cfg, cfg.dim, rngs=rngs)
        self.mlp_head = _linear(cfg, cfg.dim, cfg.num_classes, rngs=rngs)

    def _check(self, images) -> None:
        cfg = self.cfg
        want = (cfg.image_size, cfg.image_size, cfg.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(
                f"ViT expects images of shape [B, {want[0]}, {want[1]}, {want[2]}] (channels "
                f"last), got {tuple(images.shape)}; a torch batch [B, C, H, W] needs "
                "images.transpose(0, 2, 3, 1)"
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(
                f"ViT expects float images already normalized, got dtype {images.dtype}; "
                "use jaxgrad.data.normalize(images) on uint8 images first"
            )

    def embed(self, images, *, deterministic: bool = True, rngs=None):
        """``[B, H, W, C]`` float → ``[B, dim]``: after the final LayerNorm, the cls token
        (``pool="cls"``) or the mean over all tokens (``pool="mean"``)."""
        self._check(images)
        if not deterministic and rngs is None:
            raise ValueError(
                "training mode (deterministic=False) needs dropout randomness: pass "
                "rngs=nnx.Rngs(dropout=key) or rngs=key"
            )
        if isinstance(rngs, jax.Array):
            rngs = nnx.Rngs(dropout=rngs)
        cfg = self.cfg
        b, p = images.shape[0], cfg.patch_size
        g = cfg.image_size // p
        # b (h p1) (w p2) c -> b (h w) (p1 p2 c)
        x = images.astype(jnp.float32).reshape(b, g, p, g, p, cfg.channels)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, cfg.patch_dim)
        layout = cfg.resolved_layout()
        if layout == "heads":
            x = _dense(self.patch_proj, self.patch_norm_in(x), cfg.compute_dtype)
            x = self.patch_norm_out(x.astype(jnp.float32))
        else:
            x = self.patch_norm_out(self.patch_proj(self.patch_norm_in(x)).astype(jnp.float32))
        cls = jnp.broadcast_to(self.cls_token[...], (b, 1, cfg.dim))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embedding[...]
        x = x if deterministic else _drop(x, cfg.emb_dropout, rngs)
        for block in self.layers:
            x = block(x, deterministic=deterministic, rngs=rngs)
        x = self.norm(x)
        return x.mean(axis=1) if cfg.pool == "mean" else x[:, 0]

    def __call__(self, images, *, deterministic: bool = True, rngs=None):
        """``[B, H, W, C]`` float → logits ``[B, num_classes]`` (float32 whatever the dtype)."""
        x = self.embed(images, deterministic=deterministic, rngs=rngs)
        if self.cfg.resolved_layout() == "heads":
            return _dense(self.mlp_head, x, self.cfg.compute_dtype).astype(jnp.float32)
        return self.mlp_head(x).astype(jnp.float32)


def count_params(params) -> int:
    """Number of scalars in a params pytree (or a module's ``nnx.Param`` state)."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def vit_forward_flops(
    *,
    image_size: int,
    patch_size: int,
    dim: int,
    depth: int,
    heads: int,
    dim_head: int,
    mlp_dim: int,
    num_classes: int,
    channels: int = 3,
) -> float:
    """Matmul FLOPs (2 per multiply-add) of one vit-pytorch ViT forward pass for ONE image.

    With ``N = (image_size/patch_size)² + 1`` tokens and ``inner = heads·dim_head``:
    patch embedding ``2(N-1)·p²C·dim``; per block qkv ``2N·dim·3inner``, scores and
    probabilities×values ``2·2N²·inner``, output projection ``2N·inner·dim``, MLP
    ``2·2N·dim·mlp``; head ``2·dim·classes``. LayerNorm/softmax/GELU are left out (they are not
    matmul-unit work), as in the usual MFU convention; a training step is ~3× the forward.
    The seed config gives 1.691e9 (anchors.md: "about 1.69 GFLOP forward per image").
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
    n = (image_size // patch_size) ** 2 + 1
    inner = heads * dim_head
    patch = 2 * (n - 1) * patch_size**2 * channels * dim
    block = (
        2 * n * dim * 3 * inner + 4 * n * n * inner + 2 * n * inner * dim + 4 * n * dim * mlp_dim
    )
    return float(patch + depth * block + 2 * dim * num_classes)
