"""The in-memory image dataset every loader returns, and the train/validation split."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxgrad.errors import DataError

__all__ = ["ImageDataset", "train_val_split"]


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """A whole labelled image set as two host arrays (small enough to live on the device).

    images: uint8 ``[N, H, W, 3]`` (channels last, 0..255, not normalized);
    labels: int32 ``[N]`` in ``[0, len(class_names))``;
    class_names: the class of each label index (image folders: sorted folder names);
    source: where it came from, printed in every output (``"cifar10"``,
    ``"imagefolder:<path>"``, ``"synthetic (NOT real CIFAR-10)"``).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self):
        im, lb = self.images, self.labels
        if im.dtype != np.uint8 or im.ndim != 4 or im.shape[-1] != 3:
            raise ValueError(
                f"ImageDataset.images must be uint8 [N, H, W, 3], got {im.dtype} {im.shape}"
            )
        if lb.dtype != np.int32 or lb.shape != im.shape[:1]:
            raise ValueError(
                f"ImageDataset.labels must be int32 [N={im.shape[0]}], got {lb.dtype} {lb.shape}"
            )
        if len(lb) and (lb.min() < 0 or lb.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must lie in [0, {len(self.class_names)}) (one per class name), got "
                f"range [{lb.min()}, {lb.max()}]"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray) -> ImageDataset:
        """The images at ``index`` (an int array), same classes and source."""
        return dataclasses.replace(self, images=self.images[index], labels=self.labels[index])


def train_val_split(
    ds: ImageDataset, n_val: int, *, seed: int
) -> tuple[ImageDataset, ImageDataset]:
    """Hold out ``n_val`` random images (chosen by ``seed``) as a validation set.

    Returns ``(train, val)``; together they are a permutation of ``ds``.
    """
    if not 0 < n_val < len(ds):
        raise DataError(
            f"n_val (--n-val) must be in (0, {len(ds)}): {ds.source} holds {len(ds)} images, got "
            f"{n_val}; lower --n-val or add images"
        )
    perm = np.random.default_rng(seed).permutation(len(ds))
    return ds.subset(np.sort(perm[n_val:])), ds.subset(np.sort(perm[:n_val]))
