"""Explicit randomness: one key from the config's seed, split once into named keys."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["is_key", "named_keys"]


def is_key(x) -> bool:
    """Is ``x`` a typed PRNG key array (``jax.random.key``), rather than numbers?"""
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def named_keys(seed_or_key: int | jax.Array, *names: str) -> dict[str, jax.Array]:
    """``named_keys(0, "init", "step", "data")`` → ``{"init": k1, "step": k2, "data": k3}``.

    Each name gets an independent key; inside steps derive per-step keys with
    ``jax.random.fold_in(key, step)`` rather than splitting and carrying.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"key names must be distinct, got {names}")
    # numpy integers count as seeds too (e.g. a seed read back from a .npz or a config array)
    is_seed = isinstance(seed_or_key, int | np.integer) and not isinstance(seed_or_key, bool)
    key = jax.random.key(int(seed_or_key)) if is_seed else seed_or_key
    return dict(zip(names, jax.random.split(key, len(names))))
