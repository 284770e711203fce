"""Image datasets as arrays (CIFAR-10, image folders, an embedded synthetic set) and on-device
batching with explicit keys. Imports jax, numpy, PIL and jaxgrad.report only.

The names below load their module on first use (PEP 562), so ``jaxgrad.data.pipeline`` in the
training loop does not pull PIL, tarfile and urllib in with it.
"""

from __future__ import annotations

import importlib

_WHERE = {  # name -> the module that defines it
    name: module
    for module, names in {
        "cifar10": "CIFAR10_MD5 CIFAR10_URL is_cifar10_dir load_cifar10",
        "clip_preprocess": "CLIP_MEAN CLIP_STD",
        "dataset": "ImageDataset train_val_split",
        "imagefolder": "load_image_folder",
        "pipeline": "augment epoch_indices eval_indices normalize random_crop random_flip take",
        "synthetic": "SYNTHETIC_SOURCE make_synthetic",
    }.items()
    for name in names.split()
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
