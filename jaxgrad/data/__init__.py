"""Image datasets as arrays (CIFAR-10, image folders, an embedded synthetic set) and on-device
batching with explicit keys. Imports jax, numpy, PIL and jaxgrad.report only.

The names below load their module on first use (PEP 562), so ``jaxgrad.data.pipeline`` in the
training loop does not pull PIL, tarfile and urllib in with it.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "CIFAR10_MD5": "cifar10",
    "CIFAR10_URL": "cifar10",
    "is_cifar10_dir": "cifar10",
    "load_cifar10": "cifar10",
    "CLIP_MEAN": "clip_preprocess",
    "CLIP_STD": "clip_preprocess",
    "ImageDataset": "dataset",
    "train_val_split": "dataset",
    "load_image_folder": "imagefolder",
    "augment": "pipeline",
    "epoch_indices": "pipeline",
    "eval_indices": "pipeline",
    "normalize": "pipeline",
    "random_crop": "pipeline",
    "random_flip": "pipeline",
    "take": "pipeline",
    "SYNTHETIC_SOURCE": "synthetic",
    "make_synthetic": "synthetic",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxgrad.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jaxgrad.data.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
