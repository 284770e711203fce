"""torchvision's ``ImageFolder`` as arrays: ``root/<class>/<image>`` decoded once, then cached.

Classes are the sub-folder names sorted (label i = i-th name), images sorted by path inside a
class, as torchvision does. The first load decodes every JPEG/PNG with Pillow (RGB) into one
``.npz`` written atomically; later loads read the cache if the folder has not changed (file
names, sizes and modification times are hashed into the cache's name).

Conversions, each said on stderr (never silent): an image in another mode (grayscale ``L``,
``RGBA``, palette ``P``, ...) is converted to RGB by Pillow (grayscale repeated in R, G, B;
alpha dropped, not blended); a file in a class folder that is not ``.jpg/.jpeg/.png`` (a
notes file) is left out. Symlinked files and class folders are followed (a broken link is
refused like an unreadable image). Images of different sizes are refused, naming a file of
each size; an empty class folder and a ``--data-dir`` that is a file are refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxgrad.data.dataset import ImageDataset
from jaxgrad.errors import DataError, MissingDataError
from jaxgrad.report.io import atomic_write_bytes
from jaxgrad.report.progress import track

__all__ = ["IMAGE_EXTENSIONS", "default_cache_dir", "load_image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def default_cache_dir() -> Path:
    """``$JAXGRAD_CACHE`` or ``~/.cache/jaxgrad``."""
    return Path(os.environ.get("JAXGRAD_CACHE", Path.home() / ".cache" / "jaxgrad"))


def _left_out(root: Path, classes: tuple[str, ...]) -> list[str]:
    """Files in the class folders that are not images (hidden files such as .DS_Store aside)."""
    return [
        f"{name}/{p.name}"
        for name in classes
        for p in sorted((root / name).iterdir())
        if p.suffix.lower() not in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]


def _scan(root: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    if root.exists() and not root.is_dir():
        raise DataError(
            f"--data-dir {root} is a file, not a folder: point it at the folder that holds one "
            "sub-folder per class (root/<class>/<image>.jpg|png)"
        )
    if not root.is_dir():
        raise MissingDataError(
            f"image folder {root} does not exist: expected root/<class>/<image>.jpg|png"
        )
    classes = tuple(
        sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    )
    if not classes:
        raise DataError(f"{root} has no class sub-folders: expected root/<class>/<image>.jpg|png")
    files = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataError(
                f"class folder {root / name} holds no {'/'.join(IMAGE_EXTENSIONS)} images; "
                "remove it or add images"
            )
        broken = [p for p in found if not p.exists()]  # a symlink to nothing
        if broken:
            raise DataError(
                f"cannot decode image {broken[0]}: it is a broken symlink (to "
                f"{os.readlink(broken[0])}); remove or replace the file"
            )
        files += [(p, label) for p in found]
    return classes, files


def _fingerprint(root: Path, files: list[tuple[Path, int]]) -> str:
    h = hashlib.sha256(str(root.resolve()).encode())
    for p, label in files:
        st = p.stat()
        h.update(f"{p.relative_to(root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _decode(path: Path) -> tuple[np.ndarray, str]:
    """``(RGB uint8 [H, W, 3], the file's own mode)``."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8), im.mode
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot decode image {path}: {e}; remove or replace the file") from e


def _check_classes(root: Path, classes: tuple[str, ...], min_classes: int) -> None:
    if len(classes) < min_classes:
        raise DataError(
            f"{root} has {len(classes)} class folder(s) ({', '.join(classes)}): a classifier "
            f"needs at least {min_classes}; expected root/<class>/<image>.jpg|png with one "
            "sub-folder per class"
        )


def _tell_conversions(root: Path, modes: dict[str, int], left_out: list[str]) -> None:
    """One note on stderr for what was converted or left out (the module docstring's rules)."""
    if modes:
        what = ", ".join(f"{n} {m}" for m, n in sorted(modes.items()))
        alpha = " (alpha dropped)" if any("A" in m or m == "P" for m in modes) else ""
        print(f"note: {root}: converted to RGB: {what} image(s){alpha}", file=sys.stderr)
    if left_out:
        more = ", ..." if len(left_out) > 3 else ""
        print(f"note: {root}: left out {len(left_out)} file(s) that are not "
              f"{'/'.join(IMAGE_EXTENSIONS)} images ({', '.join(left_out[:3])}{more})",
              file=sys.stderr)  # fmt: skip


def load_image_folder(
    root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    min_classes: int = 2,
    progress: bool = True,
) -> ImageDataset:
    """Load ``root/<class>/<image>`` as an :class:`ImageDataset` (all images the same size).

    ``cache_dir`` (default :func:`default_cache_dir`) holds the decoded ``.npz``; delete it to
    force a re-decode. ``progress`` reports the decoding (a bar on a terminal, plain lines in a
    log; on stderr) and the cache written or read. Raises FileNotFoundError / ValueError naming
    the folder or file at fault, also when there are fewer than ``min_classes`` class folders
    (checked after decoding, so a bad file is named first).
    """
    root = Path(root)
    classes, files = _scan(root)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        blocker = next((p for p in (cache, *cache.parents) if p.is_file()), cache)
        raise DataError(
            f"cache dir {cache} cannot be created: {blocker} is a regular file. Pick another "
            "--cache-dir (or remove that file)"
        ) from e
    cache_file = cache / f"imagefolder-{root.name}-{_fingerprint(root, files)}.npz"
    source = f"imagefolder:{root}"
    if cache_file.exists():
        try:
            with np.load(cache_file) as z:
                ds = ImageDataset(z["images"], z["labels"], classes, source)
                modes = json.loads(str(z["modes"])) if "modes" in z.files else {}
            _check_classes(root, classes, min_classes)
            if progress:
                print(f"{root}: {len(files):,} images from the cache {cache_file}", file=sys.stderr)
            _tell_conversions(root, modes, _left_out(root, classes))
            return ds
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache (e.g. disk trouble): decode again and rewrite it
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:  # Pillow releases the GIL while decoding
        decoded = pool.map(_decode, (p for p, _ in files))
        desc = f"decoding {root} (first load only)"
        pairs = list(track(decoded, len(files), desc=desc, unit="image", enabled=progress))
    arrays = [a for a, _ in pairs]
    by_shape: dict[tuple, list[Path]] = {}
    for a, (p, _) in zip(arrays, files):
        by_shape.setdefault(a.shape[:2], []).append(p)
    if len(by_shape) != 1:
        sizes = "; ".join(
            f"{len(ps)} of {h}x{w} (e.g. {ps[0].relative_to(root)})"
            for (h, w), ps in sorted(by_shape.items(), key=lambda kv: -len(kv[1]))[:4]
        )
        raise DataError(
            f"images in {root} have different sizes: {sizes}; resize them to one size first "
            "(e.g. 32x32 for the CIFAR-10 ViT)"
        )
    modes: dict[str, int] = {}
    for _, mode in pairs:
        if mode != "RGB":
            modes[mode] = modes.get(mode, 0) + 1
    _check_classes(root, classes, min_classes)
    images = np.stack(arrays)
    labels = np.asarray([label for _, label in files], dtype=np.int32)
    _tell_conversions(root, modes, _left_out(root, classes))
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels, modes=np.asarray(json.dumps(modes)))
    atomic_write_bytes(cache_file, buf.getvalue())
    if progress:
        print(
            f"{root}: decoded {len(files):,} images in {time.perf_counter() - t0:.0f} s; cached "
            f"as {cache_file} ({buf.tell() / 2**20:.0f} MiB; later loads read it)",
            file=sys.stderr,
        )
    return ImageDataset(images, labels, classes, source)
