"""One call from "which data" to ``(train, eval set, eval name)`` for image classifiers."""

from __future__ import annotations

import sys

import numpy as np

from jaxgrad.data.cifar10 import load_cifar10
from jaxgrad.data.dataset import ImageDataset, train_val_split
from jaxgrad.data.imagefolder import load_image_folder
from jaxgrad.data.synthetic import make_synthetic
from jaxgrad.errors import DataError

__all__ = ["check_fits", "load_classification_data"]


def load_classification_data(
    data: str,
    *,
    data_dir: str | None,
    n_val: int,
    seed: int,
    download: bool = False,
    synthetic_size: int = 12000,
    train_limit: int | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
) -> tuple[ImageDataset, ImageDataset, str]:
    """``(train, eval set, eval name)`` for ``data`` in synthetic | cifar10 | folder.

    CIFAR-10 is scored on its test split (as the seed); image folders and the synthetic set on
    ``n_val`` held-out training images (drawn by ``seed``). ``train_limit`` keeps a random
    subset of the training images (image folders are stored class by class: a prefix would not
    do); a limit at or above the training set's size trains on all of it, with a note on
    stderr. Errors name the flag (``--n-val``) and the data source.
    """
    if data == "synthetic":
        ds, name = make_synthetic(synthetic_size, seed=seed), "val"
    elif data == "cifar10":
        train = load_cifar10(data_dir, train=True, download=download)
        evals, name = load_cifar10(data_dir, train=False), "test"
    else:
        ds = load_image_folder(data_dir, cache_dir=cache_dir, progress=progress)
        name = "val"
    if name == "val":
        if not 0 < n_val < len(ds):
            raise DataError(f"--n-val {n_val} must be in (0, {len(ds)}): {ds.source} holds "
                             f"{len(ds)} images; lower --n-val or add images")  # fmt: skip
        train, evals = train_val_split(ds, n_val, seed=seed)
    if train_limit is not None and train_limit >= len(train):  # "at most N": said, not silent
        print(f"note: --train-limit {train_limit} is not below the {len(train)} training images "
              f"of {train.source}: training on all {len(train)}", file=sys.stderr)  # fmt: skip
    elif train_limit is not None:
        keep = np.random.default_rng(seed).permutation(len(train))[:train_limit]
        train = train.subset(np.sort(keep))
    return train, evals, name


def check_fits(ds: ImageDataset, *, image_shape: tuple[int, ...], num_classes: int) -> None:
    """Raise DataError naming the data source when its ``[H, W, C]`` images or class count
    differ from what the model expects."""
    if ds.images.shape[1:] != tuple(image_shape) or ds.num_classes != num_classes:
        raise DataError(
            f"{ds.source}: images {ds.images.shape[1:]} and {ds.num_classes} classes, but the "
            f"model expects {tuple(image_shape)} and {num_classes} classes; resize the images or "
            "change the model's image size / number of classes"
        )
