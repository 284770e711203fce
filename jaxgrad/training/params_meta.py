"""What a saved params ``.npz`` carries besides its arrays: the model config and class names.

:func:`jaxgrad.training.checkpoint.save_params` stores one extra entry, :data:`META_KEY`, a JSON string
``{"meta": {...}, "sha256": ...}`` whose hash covers the meta and every array (name, dtype,
shape, bytes): a file edited by hand (the meta, or an array swapped) is refused, never read as
another model. The file needs nothing beside it. numpy only (no jax), so anything may read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxgrad.errors import CheckpointError

__all__ = ["META_KEY", "embed_meta", "read_params_meta", "split_meta"]

META_KEY = "__jaxgrad_meta__"


def _digest(arrays: Mapping[str, np.ndarray], meta_json: str) -> str:
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"|{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def embed_meta(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict:
    """``arrays`` plus the :data:`META_KEY` entry holding ``meta`` (JSON-able) and the hash."""
    meta_json = json.dumps(dict(meta), sort_keys=True, allow_nan=False)
    entry = {"meta": json.loads(meta_json), "sha256": _digest(arrays, meta_json)}
    return {**arrays, META_KEY: np.asarray(json.dumps(entry, sort_keys=True))}


def split_meta(path: str | os.PathLike, got: Mapping[str, np.ndarray]) -> tuple[dict, dict | None]:
    """``(arrays, meta)`` of a loaded archive; ``meta`` None for a file without the entry (an
    older jaxgrad's, or written by hand). Raises CheckpointError naming ``path`` when the hash
    does not match (the meta or an array was changed after saving)."""
    arrays = {k: v for k, v in got.items() if k != META_KEY}
    if META_KEY not in got:
        return arrays, None
    try:
        entry = json.loads(str(got[META_KEY]))
        meta, stored = entry["meta"], entry["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path}: its {META_KEY} entry is not jaxgrad's ({type(e).__name__}); the file was "
            "edited or is another format: use the file a run saved"
        ) from None
    if _digest(arrays, json.dumps(meta, sort_keys=True, allow_nan=False)) != stored:
        raise CheckpointError(
            f"{path}: its embedded config or its arrays were changed after saving (the sha256 "
            "in the file does not match them); use the file a run saved, unedited"
        )
    return arrays, meta


def read_params_meta(path: str | os.PathLike) -> dict | None:
    """The checked meta of a params file (see :func:`split_meta`), None when it has none."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no parameter file {path}; point --checkpoint at a vit_params.npz")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            got = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, AttributeError, TypeError) as e:
        raise CheckpointError(
            f"{path} is not a parameter file written by save_params (a .npz archive of arrays): "
            f"{type(e).__name__}. It is truncated, corrupt or another format; point at the "
            "vit_params.npz of a finished run"
        ) from None
    return split_meta(path, got)[1]
