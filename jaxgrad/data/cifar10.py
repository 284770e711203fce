"""CIFAR-10 in the official python format (what ``torchvision.datasets.CIFAR10`` reads).

``load_cifar10(data_dir, download=True)`` fetches ``cifar-10-python.tar.gz`` from the official
URL into a temp file, checks its md5 (the one torchvision pins), renames it into place and
extracts it via a temp folder renamed at the end: an interrupted or corrupt download never
leaves a file that a later call would trust. Accepted layouts for ``data_dir``: the archive,
``data_dir/cifar-10-batches-py/``, or the batch files directly in ``data_dir``.

The batches are Python pickles, and unpickling runs code. Two checks stand before any batch is
used, each refusing with the file's path:

1. **md5.** Each extracted file (``batches.meta``, ``data_batch_1..5``, ``test_batch``) must have
   the md5 of the official file (:data:`CIFAR10_BATCH_MD5`, the values torchvision pins). A
   legitimately re-pickled copy (other protocol, same content) passes ``batch_md5=None`` to skip
   this check, or a dict of its own md5s.
2. **Restricted unpickler.** Only the types the official files contain are admitted (dicts,
   lists, bytes, str, int, and numpy's array reconstruction); anything else — ``os.system``, any
   other callable — is refused before it runs. This holds with ``batch_md5=None`` too.

Then the content is checked: meta is a dict with 10 ``b"label_names"``, every batch holds
``b"data"`` rows of 3072 bytes and as many integer ``b"labels"`` in [0, 10), and each batch has
:data:`ROWS_PER_BATCH` rows (10,000 in the official set).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxgrad.data.dataset import ImageDataset
from jaxgrad.errors import DataError, MissingDataError

__all__ = ["CIFAR10_BATCH_MD5", "CIFAR10_MD5", "CIFAR10_URL", "is_cifar10_dir", "load_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
#: md5 of each official extracted file (torchvision's CIFAR10.train_list / test_list / meta).
CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
ROWS_PER_BATCH = 10_000
_USE_DEFAULT = object()
# What the official pickles reference: numpy's array reconstruction (module moved in numpy 2).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: a CIFAR-10 batch holds only dicts, lists, bytes, "
            "ints and numpy arrays"
        )


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, md5: str) -> None:
    """Stream ``url`` into a temp file beside ``dest``; rename only if the md5 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10") as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        got = _md5(Path(tmp))
        if got != md5:
            raise DataError(
                f"downloaded {url} has md5 {got}, expected {md5} (truncated or corrupt "
                "download); nothing was kept, run again"
            )
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _extract(archive: Path, folder: Path, md5: str) -> None:
    got = _md5(archive)
    if got != md5:
        raise DataError(
            f"{archive} has md5 {got}, expected {md5}: the archive is corrupt or truncated. "
            "Delete it and download again (download=True / --download)"
        )
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        if not (tmp / FOLDER).is_dir():
            raise DataError(f"{archive} does not contain {FOLDER}/: not a CIFAR-10 python archive")
        os.replace(tmp / FOLDER, folder)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"cannot extract {archive} ({e}): delete it and download again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_cifar10_dir(data_dir: str | os.PathLike) -> bool:
    """True when ``data_dir`` holds CIFAR-10's python batches (itself, its ``cifar-10-batches-py``
    folder, or the archive): what :func:`load_cifar10` reads; otherwise it is an image folder."""
    d = Path(data_dir)
    return any((c / "batches.meta").exists() for c in (d, d / FOLDER)) or (d / ARCHIVE).exists()


def _locate(data_dir: Path, download: bool) -> Path:
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(
            f"--data-dir {data_dir} is a file, not a folder: point it at the folder that holds "
            f"{FOLDER}/ or {ARCHIVE}"
        )
    for cand in (data_dir / FOLDER, data_dir):
        if (cand / "batches.meta").exists():
            return cand
    archive = data_dir / ARCHIVE
    if not archive.exists():
        if not download:
            raise MissingDataError(
                f"no CIFAR-10 in {data_dir}: expected {FOLDER}/ or {ARCHIVE} there. Pass "
                f"download=True (--download) to fetch it from {CIFAR10_URL}, or point "
                "data_dir (--data-dir) at an existing copy"
            )
        _download(CIFAR10_URL, archive, CIFAR10_MD5)
    _extract(archive, data_dir / FOLDER, CIFAR10_MD5)
    return data_dir / FOLDER


def _unpickle(path: Path, md5: str | None) -> dict:
    if not path.exists():
        raise MissingDataError(f"CIFAR-10 batch {path} is missing: the copy is incomplete")
    raw = path.read_bytes()
    if md5 is not None and hashlib.md5(raw).hexdigest() != md5:
        raise DataError(
            f"CIFAR-10 batch {path} has md5 {hashlib.md5(raw).hexdigest()}, not the official "
            f"{md5}: it is corrupt or not the official file, and it was not unpickled. Delete "
            "the folder and extract again; for a re-pickled copy you trust, pass batch_md5=None"
        )
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        if "refused to load" in str(e):
            raise DataError(f"CIFAR-10 batch {path}: {e}; delete it") from None
        raise DataError(f"CIFAR-10 batch {path} is corrupt ({e}); delete the folder") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"CIFAR-10 batch {path} is corrupt ({e}); delete the folder") from e
    if not isinstance(obj, dict):
        raise DataError(
            f"CIFAR-10 batch {path} holds a {type(obj).__name__}, not a dict: not a CIFAR-10 "
            "python batch"
        )
    return obj


def _batch(path: Path, md5: str | None, rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path, md5)
    missing = [k for k in (b"data", b"labels") if k not in batch]
    if missing:
        raise DataError(f"CIFAR-10 batch {path} has no {missing} entry (keys: "
                         f"{sorted(batch)[:5]}): not a CIFAR-10 python batch")  # fmt: skip
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"CIFAR-10 batch {path}: b'data' is {data.dtype}{list(data.shape)}, expected uint8 "
            "rows of 3072 bytes (3 x 32 x 32, channel-major)"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(data),):
        raise DataError(
            f"CIFAR-10 batch {path}: b'labels' is {labels.dtype}{list(labels.shape)}, expected "
            f"{len(data)} integer class indices (one per row of b'data')"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 batch {path}: labels outside [0, 10): "
                         f"{np.unique(labels[(labels < 0) | (labels > 9)])[:5].tolist()}")  # fmt: skip
    if rows is not None and len(data) != rows:
        raise DataError(
            f"CIFAR-10 batch {path} has {len(data)} images, the official batches {rows}: the "
            "copy is incomplete or not CIFAR-10"
        )
    return data, labels.astype(np.int32)


def load_cifar10(
    data_dir: str | os.PathLike,
    *,
    train: bool = True,
    download: bool = False,
    batch_md5: dict[str, str] | None = _USE_DEFAULT,  # type: ignore[assignment]
) -> ImageDataset:
    """The 50,000 training (or 10,000 test) images as uint8 ``[N, 32, 32, 3]``, int32 labels.

    ``batch_md5``: expected md5 per file name (default :data:`CIFAR10_BATCH_MD5`); None skips
    the md5 check (the restricted unpickler and the content checks still apply).
    """
    md5s = CIFAR10_BATCH_MD5 if batch_md5 is _USE_DEFAULT else batch_md5
    folder = _locate(Path(data_dir), download)
    meta_path = folder / "batches.meta"
    meta = _unpickle(meta_path, md5s and md5s.get("batches.meta"))
    label_names = meta.get(b"label_names")
    if not isinstance(label_names, list) or len(label_names) != 10:
        raise DataError(f"{meta_path}: b'label_names' must be a list of 10 class names, got "
                         f"{type(label_names).__name__}: not CIFAR-10's meta")  # fmt: skip
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in label_names)
    images, labels = [], []
    for name in TRAIN_BATCHES if train else TEST_BATCHES:
        data, lab = _batch(folder / name, md5s and md5s.get(name), ROWS_PER_BATCH)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # CHW rows → HWC
        labels.append(lab)
    return ImageDataset(
        np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), names, "cifar10"
    )
