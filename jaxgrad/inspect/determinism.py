"""Bit-level fingerprints of pytrees, to prove that two runs (or a run and its resume) agree.

``tree_hash(state)`` is a SHA-256 over every leaf's path, dtype, shape and raw bytes: equal
hashes mean bit-equal trees, and a changed bit, dtype, shape or leaf name changes the hash.
PRNG key leaves are hashed through ``jax.random.key_data`` (plus their implementation name).

Where runs are deterministic:
- CPU: XLA's CPU kernels are deterministic; the same program, seed and inputs give the same
  bits run after run (what ``tests/test_determinism.py`` checks). A different jax/jaxlib
  version, CPU type, or device count can change the bits (different fusion or reduction order).
- GPU: reductions and scatter-adds may use atomics, and autotuning may pick different kernels
  from run to run. ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` (:data:`GPU_DETERMINISM_FLAG`)
  makes XLA:GPU use deterministic implementations (it implies
  ``--xla_gpu_exclude_nondeterministic_ops=true`` and also turns autotuning off); it costs speed,
  mostly in scatter-heavy code (gathers' gradients, segment sums) and where autotuning would
  have found a faster kernel. Set it before jax is imported.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np

from jaxgrad.training.rng import is_key

__all__ = ["GPU_DETERMINISM_FLAG", "tree_hash"]

#: the XLA flag (put it in ``XLA_FLAGS``) that makes XLA:GPU run-to-run deterministic
GPU_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"


def tree_hash(tree: Any) -> str:
    """SHA-256 hex digest of a pytree's structure and every leaf's exact bytes.

    Leaves may be jax or numpy arrays, Python/numpy scalars, or PRNG key arrays. Blocks until
    device arrays are ready and copies them to the host (one leaf at a time).
    """
    h = hashlib.sha256()
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    h.update(str(treedef).encode())
    for path, leaf in leaves:
        tag = ""
        if is_key(leaf):
            tag = f"key<{jax.random.key_impl(leaf)}>"
            leaf = jax.random.key_data(leaf)
        a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(f"{jax.tree_util.keystr(path)}|{tag}{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()
