"""CIFAR-10 in the official python format (what ``torchvision.datasets.CIFAR10`` reads).

``load_cifar10(data_dir, download=True)`` fetches ``cifar-10-python.tar.gz`` from the official
URL into a temp file, checks its md5 (the one torchvision pins), renames it into place and
extracts it via a temp folder renamed at the end: an interrupted or corrupt download never
leaves a file that a later call would trust. Accepted layouts for ``data_dir``: the archive,
``data_dir/cifar-10-batches-py/``, or the batch files directly in ``data_dir``.

The batches are Python pickles; only load copies you trust (the md5 check covers downloads).
"""

from __future__ import annotations

import hashlib
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

__all__ = ["CIFAR10_MD5", "CIFAR10_URL", "load_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)


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
            raise ValueError(
                f"downloaded {url} has md5 {got}, expected {md5} (truncated or corrupt "
                "download); nothing was kept, run again"
            )
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _extract(archive: Path, folder: Path, md5: str) -> None:
    got = _md5(archive)
    if got != md5:
        raise ValueError(
            f"{archive} has md5 {got}, expected {md5}: the archive is corrupt or truncated. "
            "Delete it and download again (download=True / --download)"
        )
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        if not (tmp / FOLDER).is_dir():
            raise ValueError(f"{archive} does not contain {FOLDER}/: not a CIFAR-10 python archive")
        os.replace(tmp / FOLDER, folder)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"cannot extract {archive} ({e}): delete it and download again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _locate(data_dir: Path, download: bool) -> Path:
    for cand in (data_dir / FOLDER, data_dir):
        if (cand / "batches.meta").exists():
            return cand
    archive = data_dir / ARCHIVE
    if not archive.exists():
        if not download:
            raise FileNotFoundError(
                f"no CIFAR-10 in {data_dir}: expected {FOLDER}/ or {ARCHIVE} there. Pass "
                f"download=True (--download) to fetch it from {CIFAR10_URL}, or point "
                "data_dir (--data-dir) at an existing copy"
            )
        _download(CIFAR10_URL, archive, CIFAR10_MD5)
    _extract(archive, data_dir / FOLDER, CIFAR10_MD5)
    return data_dir / FOLDER


def _unpickle(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-10 batch {path} is missing: the copy is incomplete")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"CIFAR-10 batch {path} is corrupt ({e}); delete the folder") from e


def load_cifar10(
    data_dir: str | os.PathLike, *, train: bool = True, download: bool = False
) -> ImageDataset:
    """The 50,000 training (or 10,000 test) images as uint8 ``[N, 32, 32, 3]``, int32 labels."""
    folder = _locate(Path(data_dir), download)
    meta = _unpickle(folder / "batches.meta")
    names = tuple(n.decode() for n in meta[b"label_names"])
    images, labels = [], []
    for name in TRAIN_BATCHES if train else TEST_BATCHES:
        batch = _unpickle(folder / name)
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # CHW rows → HWC
        labels.append(np.asarray(batch[b"labels"], dtype=np.int32))
    return ImageDataset(
        np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), names, "cifar10"
    )
