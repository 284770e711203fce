"""Explicit randomness: one key from the config's seed, split once into named keys."""

from __future__ import annotations

import jax

__all__ = ["named_keys"]


def named_keys(seed_or_key: int | jax.Array, *names: str) -> dict[str, jax.Array]:
    """``named_keys(0, "init", "dropout", "data")`` → ``{"init": k1, "dropout": k2, "data": k3}``.

    Each name gets an independent key; inside steps derive per-step keys with
    ``jax.random.fold_in(key, step)`` rather than splitting and carrying.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"key names must be distinct, got {names}")
    key = jax.random.key(seed_or_key) if isinstance(seed_or_key, int) else seed_or_key
    return dict(zip(names, jax.random.split(key, len(names))))
