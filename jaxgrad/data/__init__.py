"""Image datasets as arrays (CIFAR-10, image folders, an embedded synthetic set) and on-device
batching with explicit keys."""

from jaxgrad.data.cifar10 import CIFAR10_MD5, CIFAR10_URL, is_cifar10_dir, load_cifar10
from jaxgrad.data.clip_preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess
from jaxgrad.data.dataset import ImageDataset, train_val_split
from jaxgrad.data.imagefolder import load_image_folder
from jaxgrad.data.pipeline import (
    augment,
    epoch_indices,
    eval_indices,
    normalize,
    random_crop,
    random_flip,
    take,
)
from jaxgrad.data.synthetic import SYNTHETIC_SOURCE, make_synthetic

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "SYNTHETIC_SOURCE",
    "ImageDataset",
    "augment",
    "clip_preprocess",
    "epoch_indices",
    "eval_indices",
    "is_cifar10_dir",
    "load_cifar10",
    "load_image_folder",
    "make_synthetic",
    "normalize",
    "random_crop",
    "random_flip",
    "take",
    "train_val_split",
]
