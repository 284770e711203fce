"""``torch.nn.functional``-style building blocks whose gradients are written out, so XLA:CPU runs
them fast: the ViT's CPU layout (:class:`jaxgrad.models.vit.ViTConfig` ``layout="heads"``) is
made of these. Each computes the same function as the plain jnp expression in its docstring;
only the backward pass is arranged differently (checked by ``check_grads`` and against
``jax.grad`` of that expression in tests/test_functional.py).

Why they exist (docs/results/vit_cpu_profile.md has the profile):

- :func:`dropout` draws exactly ``jax.random.bernoulli(key, 1 - rate, shape)``'s mask, bit for
  bit, but inlines the threefry hash: on CPU jax lowers it as a rolled 5-iteration loop over
  the whole array, and XLA may fuse the key derivation into every element. The kept values are
  scaled as torch does (``x * (1 / keep)``, not ``x / keep``).
- :func:`project_heads` / :func:`merge_heads`: one small matmul per head gives ``[M, d]``
  blocks with no transposes around attention, and their weight gradients are taken as one
  matmul over all heads (``xᵀ [dq | dk | dv]``), not one per head padded back into place.
- :func:`dense`: XLA:CPU's matmul is twice as fast for ``xᵀ g`` when the output's minor
  dimension is the larger one, so the weight gradient is formed in that orientation.
- :func:`layer_norm`: the closed-form backward (two row reductions) instead of autodiff's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["dense", "dropout", "dropout_mask", "layer_norm", "merge_heads", "project_heads"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # Threefry-2x32, 20 rounds (Salmon et al. 2011)


def _threefry2x32(k1, k2, x1, x2):
    """The Threefry-2x32 hash of counters ``(x1, x2)`` under key ``(k1, k2)``, unrolled (jax's
    own ``threefry2x32_p`` lowers to a loop on CPU)."""

    def rotl(v, d):
        return (v << np.uint32(d)) | (v >> np.uint32(32 - d))

    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = rotl(x2, r) ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _inline_threefry(key) -> bool:
    """Whether ``key``'s bits are threefry's partitionable stream (jax's default since 0.5),
    which :func:`_bits` reproduces; anything else goes through ``jax.random``."""
    if not jax.config.jax_threefry_partitionable:
        return False
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return str(jax.random.key_impl(key)) == "threefry2x32"
    return jax.config.jax_default_prng_impl == "threefry2x32"


def _bits(key, shape: tuple[int, ...], at: tuple[int, int] | None = None) -> jax.Array:
    """``jax.random.bits(key, shape, uint32)``, or with ``at=(axis, i)`` its slice
    ``[..., i, ...]`` along ``axis`` (computed alone: the counters of that slice only)."""
    size = int(np.prod(shape))
    if size >= 2**32:
        raise ValueError(f"dropout mask of {size} elements: at most 2**32 - 1 are supported")
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    # the barrier keeps the key's derivation (fold_in, split) out of the elementwise fusion,
    # which XLA would otherwise recompute for every element
    data = lax.optimization_barrier(data)
    strides = np.cumprod((1, *shape[::-1]))[:-1][::-1]
    out_shape = tuple(n for a, n in enumerate(shape) if at is None or a != at[0])
    counter = jnp.full(out_shape, 0 if at is None else int(at[1] * strides[at[0]]), jnp.uint32)
    dims = [a for a in range(len(shape)) if at is None or a != at[0]]
    for pos, a in enumerate(dims):
        iota = lax.broadcasted_iota(jnp.uint32, out_shape, pos)
        counter = counter + iota * np.uint32(strides[a])
    b1, b2 = _threefry2x32(data[0], data[1], jnp.zeros_like(counter), counter)
    return b1 ^ b2


def dropout_mask(key, rate: float, shape: tuple[int, ...], *, at=None) -> jax.Array:
    """bool ``shape``: ``jax.random.bernoulli(key, 1 - rate, shape)`` bit for bit (its uniform
    floats are ``(bits >> 9) / 2**23``); ``at=(axis, i)`` gives only that slice of the mask."""
    keep = np.float32(1.0 - rate)
    if not _inline_threefry(key):
        mask = jax.random.bernoulli(key, keep, shape)
        return mask if at is None else lax.index_in_dim(mask, at[1], at[0], keepdims=False)
    # u = m / 2**23 with m = bits >> 9;  u < keep  <=>  m < ceil(keep * 2**23)  <=>  bits < that << 9
    threshold = int(np.ceil(np.float64(keep) * 2**23)) << 9
    return _bits(key, tuple(shape), at) < np.uint32(threshold)


def dropout(x: jax.Array, rate: float, key, *, at=None, shape=None) -> jax.Array:
    """``nn.Dropout(rate)`` in training mode: ``x * mask / (1 - rate)`` computed as torch does
    (``x * (mask * (1 / keep))``). ``shape``/``at``: ``x`` is the slice ``at=(axis, i)`` of a
    tensor of ``shape``, and gets that slice of its mask (one head of ``[B, h, N, N]``)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return x
    with jax.named_scope("dropout"):  # profiles (jaxgrad.inspect.bench.OP_KINDS) find it by name
        mask = dropout_mask(key, rate, tuple(x.shape if shape is None else shape), at=at)
        scale = np.float32(1.0) / np.float32(1.0 - rate)
        return jnp.where(mask, x * jnp.asarray(scale, x.dtype), jnp.zeros((), x.dtype))


def _weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """``xᵀ g`` for ``x [M, K]``, ``g [M, N]`` → ``[K, N]``. XLA:CPU's matmul runs this form at
    about half speed when N < K; then ``(gᵀ x)ᵀ`` is formed instead (the barrier stops XLA from
    folding the transpose back into the dot)."""
    if g.shape[1] < x.shape[1]:
        return lax.optimization_barrier(g.T @ x).T
    return x.T @ g


@jax.custom_vjp
def dense(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """``x [M, K] @ w [K, N] + b [N]`` → ``[M, N]``."""
    return x @ w + b[None]


def _dense_fwd(x, w, b):
    return dense(x, w, b), (x, w)


def _dense_bwd(res, g):
    x, w = res
    return g @ w.T, _weight_grad(x, g).astype(w.dtype), g.sum(0).astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project_heads(x: jax.Array, w: jax.Array, d: int) -> tuple[jax.Array, ...]:
    """``x [M, C] @ w [C, P·d]`` cut into its P column blocks ``[M, d]``, one matmul per block
    (``tuple(jnp.split(x @ w, P, axis=1))``)."""
    if w.shape[1] % d:
        raise ValueError(f"project_heads: {w.shape[1]} columns are not blocks of {d}")
    return tuple(x @ w[:, i * d : (i + 1) * d] for i in range(w.shape[1] // d))


def _project_fwd(x, w, d):
    return project_heads(x, w, d), (x, w)


def _project_bwd(d, res, cts):
    x, w = res
    g = jnp.concatenate(cts, axis=1)  # [M, P·d]: every head's cotangent, one matmul each way
    return g @ w.T, _weight_grad(x, g).astype(w.dtype)


project_heads.defvjp(_project_fwd, _project_bwd)


@jax.custom_vjp
def merge_heads(parts: tuple[jax.Array, ...], w: jax.Array, b: jax.Array) -> jax.Array:
    """P blocks ``[M, d]`` side by side (``b n (h d)``), then ``@ w [P·d, N] + b``: written as
    the sum of per-block matmuls, so the blocks are never concatenated in the forward pass."""
    d = parts[0].shape[1]
    if w.shape[0] != len(parts) * d:
        raise ValueError(f"merge_heads: {len(parts)} blocks of {d} need w with "
                         f"{len(parts) * d} rows, got {tuple(w.shape)}")  # fmt: skip
    return sum(p @ w[i * d : (i + 1) * d] for i, p in enumerate(parts)) + b[None]


def _merge_fwd(parts, w, b):
    return merge_heads(parts, w, b), (parts, w)


def _merge_bwd(res, g):
    parts, w = res
    d = parts[0].shape[1]
    dparts = tuple(g @ w[i * d : (i + 1) * d].T for i in range(len(parts)))
    dw = _weight_grad(jnp.concatenate(parts, axis=1), g)
    return dparts, dw.astype(w.dtype), g.sum(0).astype(w.dtype)


merge_heads.defvjp(_merge_fwd, _merge_bwd)


@jax.named_scope("layer_norm")
def _normalise(x, eps):
    # flax's LayerNorm statistics (use_fast_variance): var = E[x²] − E[x]², clipped at 0
    mean = x.mean(-1, keepdims=True)
    var = jnp.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0.0)
    r = lax.rsqrt(var + jnp.asarray(eps, x.dtype))
    return (x - mean) * r, r


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """``nnx.LayerNorm`` over the last axis of ``x [..., C]``: ``(x − μ) / √(σ² + eps) · scale +
    bias`` with flax's statistics."""
    return _affine(_normalise(x, eps)[0], scale, bias)


def _row(v, ndim):  # [C] -> [1, ..., 1, C]: explicit, as strict rank promotion wants
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _affine(xhat, scale, bias):
    return xhat * _row(scale, xhat.ndim) + _row(bias, xhat.ndim)


def _ln_fwd(x, scale, bias, eps):
    xhat, r = _normalise(x, eps)
    return _affine(xhat, scale, bias), (xhat, r, scale)


@jax.named_scope("layer_norm")
def _ln_bwd(eps, res, g):
    xhat, r, scale = res
    gx = g * _row(scale, g.ndim)
    mean_g = gx.mean(-1, keepdims=True)
    mean_gx = (gx * xhat).mean(-1, keepdims=True)
    rows = tuple(range(g.ndim - 1))
    return r * (gx - mean_g - xhat * mean_gx), (g * xhat).sum(rows), g.sum(rows)


layer_norm.defvjp(_ln_fwd, _ln_bwd)
