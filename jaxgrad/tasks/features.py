"""Features of a frozen model, computed once and cached on disk under a key of weights + data.

A frozen image tower (PyTorch's ``clip_model.get_image_features(x).detach()``) gives the same
features every epoch; running it every step is wasted work. :func:`cached_features` runs it
once over the whole set and keeps the result in ``cache_dir``; the file name and the metadata
inside carry the sha256 of the weights (every array of the model's state, its class and its
``cfg``), of the data (dtype, shape and bytes) and of the preprocessing, so other weights or
other data never read a stale cache; the sha256 of the features themselves is recorded too and
checked on every read, so a file rewritten under the same key is refused with its path. With
``mesh=`` (a data-parallel run) the extraction is split over the mesh's devices, each batch
along its rows; every process gets all the features and process 0 writes the cache::

    tower = load_pretrained(weights_dir)
    feats = cached_features(tower, ds.images, cache_dir, batch_size=256,
                            preprocess=functools.partial(clip_preprocess, size=224),
                            preprocess_id="clip_preprocess(224)").features   # [N, 512]
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxgrad.errors import CacheError
from jaxgrad.report.io import atomic_write_bytes
from jaxgrad.training.distributed import process_local, replicate
from jaxgrad.training.parallel import batch_sharding, replicated, shard_batch

__all__ = [
    "FeatureCache",
    "cached_features",
    "data_fingerprint",
    "extract_features",
    "model_fingerprint",
]

_FORMAT = 2  # bump when the cache file layout changes (2: the features' sha256 inside)


class FeatureCache(NamedTuple):
    features: np.ndarray  # [N, ...] float32
    path: Path  # the cache file
    hit: bool  # True when read from disk, False when computed now


def model_fingerprint(model: nnx.Module, model_id: str | None = None) -> str:
    """sha256 of everything that decides the model's outputs: each state array (path, dtype,
    shape, bytes), the class and ``model.cfg`` (or ``model_id`` for a model without ``cfg``:
    two models with the same params but another structure, e.g. another pooling, differ there)."""
    cfg = getattr(model, "cfg", None)
    if model_id is None and cfg is None:
        raise ValueError(
            f"{type(model).__name__} has no .cfg to identify its structure: pass model_id= "
            "(a string that changes whenever the architecture does)"
        )
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|{cfg!r}|{model_id}".encode())
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))[0]
    for path, leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"|{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def data_fingerprint(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(np.asarray(array))
    h = hashlib.sha256(f"{a.dtype}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def extract_features(
    model: nnx.Module,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """``model(preprocess(batch))`` over ``images`` in batches, jitted once (the last batch is
    padded to ``batch_size``, so one compilation serves all) → float32 numpy ``[N, ...]``.

    ``mesh`` (> 1 device): the model is replicated and each batch (``batch_size`` rounded up
    to a multiple of the devices) split over the ``data`` axis; the features come back
    replicated, so every process of a multi-process run gets all of them."""
    n = len(images)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if n == 0:
        raise ValueError("extract_features got no images (an empty array)")
    graphdef, state = nnx.split(model)
    fwd = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
    if mesh is not None and mesh.size > 1:
        batch_size = -(-batch_size // mesh.size) * mesh.size
        rep = replicated(mesh)
        fwd = jax.jit(fwd, in_shardings=(rep, batch_sharding(mesh)), out_shardings=rep)
        state = replicate(state, mesh)
        put = lambda x: shard_batch(process_local(np.asarray(x), mesh), mesh)  # noqa: E731
    else:
        fwd, put = jax.jit(fwd), jnp.asarray
    out = []
    for start in range(0, n, batch_size):
        batch = np.asarray(images[start : start + batch_size])
        m = len(batch)
        if m < batch_size:  # pad with copies of the last image; cut after
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - m, axis=0)])
        x = preprocess(batch) if preprocess is not None else batch
        out.append(np.asarray(fwd(state, put(x)), np.float32)[:m])
    feats = np.concatenate(out)
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(axis=tuple(range(1, feats.ndim))).sum())
        raise FloatingPointError(
            f"extract_features: {bad} of {n} feature rows are not finite (NaN/inf); check the "
            "weights and the preprocessing (images normalised?)"
        )
    return feats


def cached_features(
    model: nnx.Module,
    images: np.ndarray,
    cache_dir: str | Path,
    *,
    batch_size: int = 256,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    preprocess_id: str = "",
    model_id: str | None = None,
    mesh: Mesh | None = None,
) -> FeatureCache:
    """:func:`extract_features`, read from ``cache_dir`` when the same weights, data and
    preprocessing produced it before, else computed and written there atomically.

    ``preprocess_id`` names the preprocessing (required with ``preprocess``: a function has no
    stable identity). A cache file whose recorded key differs from the expected one, or that
    cannot be read, is refused with its path (delete it) — never used. ``mesh``: as in
    :func:`extract_features`; the processes agree on hit or miss first (a miss anywhere
    recomputes everywhere: the extraction is one program over all of them).
    """
    if preprocess is not None and not preprocess_id:
        raise ValueError(
            "cached_features: preprocess= needs preprocess_id= (e.g. 'clip_preprocess(224)') "
            "so that another preprocessing never reads this cache"
        )
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise NotADirectoryError(f"{cache_dir}: feature cache dir is a file; pass a folder")
    meta = {
        "format": _FORMAT,
        "model": model_fingerprint(model, model_id),
        "data": data_fingerprint(images),
        "preprocess": preprocess_id,
        "n": len(images),
    }
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    path = cache_dir / f"features-{key[:24]}.npz"
    if _everywhere(path.exists(), mesh):
        try:
            # our own handle: np.load leaks its file when the zip is broken
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
                stored = json.loads(str(z["meta"]))
                feats = z["features"]
            if not isinstance(stored, dict):
                raise TypeError(f"meta is a JSON {type(stored).__name__}, not an object")
        except Exception as e:  # truncated zip, missing member, bad JSON
            raise CacheError(
                f"{path}: unreadable feature cache ({type(e).__name__}: {e}); delete it to "
                "recompute"
            ) from None
        digest = stored.pop("features_sha256", None)
        if stored != meta or len(feats) != len(images):
            diff = sorted(k for k in meta if stored.get(k) != meta[k])
            raise CacheError(
                f"{path}: feature cache was written for other {diff or ['rows']} than these; "
                "it is not used. Delete it to recompute"
            )
        if digest != data_fingerprint(feats):  # the key matches; the contents must too
            raise CacheError(
                f"{path}: feature cache contents do not match the sha256 recorded when it was "
                "written (the file was rewritten or damaged); it is not used. Delete it to "
                "recompute"
            )
        return FeatureCache(feats, path, True)
    feats = extract_features(model, images, batch_size=batch_size, preprocess=preprocess, mesh=mesh)
    buf = io.BytesIO()
    written = {**meta, "features_sha256": data_fingerprint(feats)}  # checked on every read
    np.savez(buf, features=feats, meta=np.asarray(json.dumps(written, sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())
    return FeatureCache(feats, path, False)


def _everywhere(flag: bool, mesh: Mesh | None) -> bool:
    """``flag`` in every process of a multi-process ``mesh`` (else ``flag``). Also a barrier:
    no process writes the cache before every process has looked for it."""
    if mesh is None or jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(flag))))
