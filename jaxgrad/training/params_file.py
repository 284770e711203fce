"""A saved params ``.npz`` (the ``torch.save(model.state_dict())`` equivalent): each array under
its pytree path, plus what the file carries besides its arrays, the model config and class
names.

:func:`save_params` stores one extra entry, :data:`META_KEY`, a JSON string
``{"meta": {...}, "sha256": ...}`` whose hash covers the meta and every array (name, dtype,
shape, bytes): a file edited by hand (the meta, or an array swapped) is refused, never read as
another model. The file needs nothing beside it; :func:`read_params_meta` reads it with numpy
alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxgrad.errors import CheckpointError, MissingCheckpointError
from jaxgrad.report.io import atomic_write_bytes

__all__ = ["META_KEY", "embed_meta", "load_params", "read_params_meta", "save_params",
           "split_meta"]  # fmt: skip

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


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, AttributeError, TypeError) as e:
        # AttributeError/TypeError: np.load gave an array (.npy), not an .npz archive
        raise CheckpointError(
            f"{path} is not a parameter file written by save_params (a .npz archive of arrays): "
            f"{type(e).__name__}. It is truncated, corrupt or another format; point at the "
            f"{what} of a finished run"
        ) from None


def read_params_meta(path: str | os.PathLike) -> dict | None:
    """The checked meta of a params file (see :func:`split_meta`), None when it has none."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no parameter file {path}; point --checkpoint at a vit_params.npz")
    return split_meta(path, _read_npz(path, "vit_params.npz"))[1]


def _flat(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def save_params(path: str | os.PathLike, params: Any, meta: dict | None = None) -> Path:
    """Write a params pytree (e.g. ``nnx.state(model, nnx.Param)``) to one ``.npz``, atomically.

    Each array is stored under its pytree path (``"['layers'][0]['attn']['to_qkv']['kernel']"``).
    ``meta`` (JSON-able: the model config, class names) goes inside the file, tied to the arrays
    by a sha256 (read back with :func:`read_params_meta`).
    """
    arrays = {k: np.asarray(v) for k, v in _flat(params).items()}
    if meta is not None:
        arrays = embed_meta(arrays, meta)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_params(path: str | os.PathLike, like: Any) -> Any:
    """Read :func:`save_params`' file into the structure of ``like`` (checks names and shapes,
    and the embedded hash when the file has one)."""
    path = Path(path)
    if not path.exists():
        raise MissingCheckpointError(f"no parameter file {path}")
    want = _flat(like)
    got = split_meta(path, _read_npz(path, "params.npz"))[
        0
    ]  # an edited file (meta or arrays) is refused here
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise CheckpointError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}; "
            "build the model with the config it was trained with"
        )
    for k, like_leaf in want.items():
        if got[k].shape != np.shape(like_leaf) or got[k].dtype != like_leaf.dtype:
            raise CheckpointError(
                f"{path}: {k} is {got[k].dtype}{list(got[k].shape)}, the model expects "
                f"{like_leaf.dtype}{list(np.shape(like_leaf))}"
            )
    treedef = jax.tree_util.tree_structure(like)
    return jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(got[k]) for k in want])
