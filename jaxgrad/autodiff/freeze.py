"""Freezing parameters: ``requires_grad=False`` + "only these params in the optimizer".

PyTorch freezes by flipping ``requires_grad`` and passing a subset of parameters to the
optimizer. In JAX the gradient of every leaf is computed (or skipped by XLA when unused) and
the *optimizer* decides what moves: ``optax.partition`` sends trainable leaves to the real
optimizer and frozen ones to ``optax.set_to_zero()``. Frozen leaves then get exactly zero
update, carry no optimizer state (no Adam moments), and are untouched by weight decay, which
runs inside the trainable branch only. This is the one way jaxgrad freezes (the CLIP
experiment's ``--freeze-image``, the doctor demo): build the mask with :func:`frozen_mask`,
wrap the optimizer with :func:`optimizer_with_frozen`.

Parameter paths are written one way everywhere (freezing, coverage, the doctor, gradient
norms): :func:`path_str`, ``jax.tree_util.keystr(path, simple=True, separator="/")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

__all__ = ["frozen_mask", "optimizer_with_frozen", "path_str"]


def path_str(path: tuple, separator: str = "/", root: str = "<root>") -> str:
    """A key path → ``'encoder/layers/0/kernel'`` (``keystr(simple=True, separator=...)``;
    ``separator="."`` gives PyTorch-style ``'encoder.layers.0.kernel'``); flax NNX's trailing
    ``.value`` attribute is dropped; the empty path is ``root``."""
    path = tuple(path)
    if path and getattr(path[-1], "name", None) == "value":
        path = path[:-1]
    return jax.tree_util.keystr(path, simple=True, separator=separator) or root


def frozen_mask(params: Any, frozen: Sequence[str] | Callable[[str], bool]) -> Any:
    """Pytree of bools, True where the leaf is frozen.

    ``frozen`` is a list of path prefixes (``["encoder", "head/bias"]``) or a predicate on the
    ``'a/b/c'`` path string. A prefix that matches no leaf is a ValueError (a typo would
    otherwise freeze nothing without a word).
    """
    if callable(frozen):
        pred = frozen
    else:
        prefixes = tuple(frozen)

        def pred(p: str) -> bool:
            return any(p == x or p.startswith(x.rstrip("/") + "/") for x in prefixes)

    mask = jax.tree_util.tree_map_with_path(lambda path, _: bool(pred(path_str(path))), params)
    if not callable(frozen):
        paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        for x in prefixes:
            if not any(p == x or p.startswith(x.rstrip("/") + "/") for p in paths):
                tops = sorted({p.split("/")[0] for p in paths})
                raise ValueError(
                    f"frozen pattern {x!r} matches no parameter (a typo would freeze nothing); "
                    f"top-level names: {', '.join(tops[:12])}"
                )
    return mask


def optimizer_with_frozen(
    optimizer: optax.GradientTransformation, mask: Any
) -> optax.GradientTransformation:
    """Wrap ``optimizer`` so leaves where ``mask`` is True get zero update and no state.

    ``mask`` is a bool pytree (see :func:`frozen_mask`), or a callable ``params -> mask``.
    """

    def labels(params):
        m = mask(params) if callable(mask) else mask
        return jax.tree_util.tree_map(lambda f: "frozen" if f else "trainable", m)

    return optax.partition({"trainable": optimizer, "frozen": optax.set_to_zero()}, labels)
