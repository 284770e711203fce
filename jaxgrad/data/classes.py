"""Labels by class NAME: an evaluation set's classes mapped onto a trained model's label indices.

A model records the class name of each of its outputs (the run config, the checkpoint, the
params file). An evaluation folder's labels are its own sorted folder names; mapping them by
position would shift every label after a renamed or missing folder. :func:`match_classes`
maps them by name instead (case and surrounding blanks ignored): a subset of the model's
classes is fine; a name the model does not know, or two folders that are one name after
normalising, is refused naming the folder and the model's names.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import numpy as np

from jaxgrad.data.dataset import ImageDataset
from jaxgrad.errors import DataError

__all__ = ["match_classes", "normalize_name", "warn_unrecorded"]


def normalize_name(name: str) -> str:
    """How two class names are compared: case-folded, surrounding blanks stripped."""
    return name.strip().casefold()


def _listing(names: Sequence[str]) -> str:
    return ", ".join(names)


def match_classes(ds: ImageDataset, model_names: Sequence[str], *, model: str) -> ImageDataset:
    """``ds`` relabelled into the model's label space (``class_names = model_names``).

    ``model`` says whose names ``model_names`` are, in messages (``"the model <path>"``). Prints one line when ``ds`` holds a subset
    of the model's classes. Raises DataError naming ``ds.source`` and the model's names for an
    unknown name or a name twice after normalising (in ``ds`` or in ``model_names``).
    """
    model_names = tuple(model_names)
    index: dict[str, int] = {}
    for i, name in enumerate(model_names):
        if normalize_name(name) in index:
            first = model_names[index[normalize_name(name)]]
            raise DataError(
                f"{model} records the class {name!r} twice (as {first!r} too, case ignored): "
                "its labels are ambiguous; re-train on class folders with distinct names"
            )
        index[normalize_name(name)] = i
    seen: dict[str, str] = {}
    for name in ds.class_names:
        if normalize_name(name) in seen:
            raise DataError(
                f"{ds.source}: classes {seen[normalize_name(name)]!r} and {name!r} are one name "
                f"once case is ignored; merge or rename one (the model's classes: "
                f"{_listing(model_names)})"
            )
        seen[normalize_name(name)] = name
    unknown = [n for n in ds.class_names if normalize_name(n) not in index]
    if unknown:
        raise DataError(
            f"{ds.source}: class(es) {_listing(unknown)} are not classes of {model} "
            f"(its classes: {_listing(model_names)}); rename those folders to the model's names "
            "or remove them"
        )
    to_model = np.asarray([index[normalize_name(n)] for n in ds.class_names], np.int32)
    if len(ds.class_names) < len(model_names):
        print(
            f"note: {ds.source} holds {len(ds.class_names)} of the model's {len(model_names)} "
            f"classes ({_listing(ds.class_names)}); labels matched by name, predictions over all "
            f"{len(model_names)}",
            file=sys.stderr,
        )
    labels = to_model[ds.labels] if len(ds) else ds.labels
    return dataclasses.replace(ds, labels=labels, class_names=model_names)


def warn_unrecorded(ds: ImageDataset, *, model: str, how: str) -> None:
    """The one-line warning for a model without recorded class names (an older file, a
    converted PyTorch model): its labels are taken to be ``ds``'s classes in sorted order."""
    print(
        f"warning: {model} records no class names, so the classes of {ds.source} are matched "
        f"by sorted order ({_listing(ds.class_names)}), not by name; to record them, {how}",
        file=sys.stderr,
    )
