"""Writing run outputs without ever leaving a half-written file behind.

In a multi-process run (:mod:`jaxgrad.training.distributed`) every process runs the same program but
only process 0 writes: :func:`atomic_write_bytes` (so ``atomic_write_json``, ``save_params``,
plots) and :class:`JsonlLogger` do nothing elsewhere, so N processes on a shared file system
never race on one file. Orbax checkpoints are the exception: every process takes part.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jaxgrad.report.rank import is_main

__all__ = ["JsonlLogger", "atomic_write_bytes", "atomic_write_json", "to_jsonable"]


def to_jsonable(x: Any) -> Any:
    """Arrays and numpy scalars → Python numbers/lists, recursively."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()
    return x


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder + ``os.replace``
    (process 0 only in a multi-process run; the path is returned everywhere)."""
    path = Path(path)
    if not is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the final file the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON-dump ``obj`` (arrays converted) atomically."""
    return atomic_write_bytes(path, json.dumps(to_jsonable(obj), indent=2).encode())


class JsonlLogger:
    """Append one JSON object per line (metrics per step/epoch); each line is flushed whole.

    Only process 0 writes (module docstring); the others read what it wrote.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if is_main():
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **record: Any) -> None:
        line = json.dumps(to_jsonable(record)) + "\n"
        if not is_main():
            return
        with open(self.path, "a") as f:
            f.write(line)

    def read(self) -> list[dict]:
        """Every record, in order (raises on a torn line; :meth:`rewind` drops one)."""
        if not self.path.exists():
            return []
        return [json.loads(s) for s in self.path.read_text().splitlines() if s.strip()]

    def rewind(self, keep: Callable[[dict], bool]) -> int:
        """Rewrite the file atomically with only the records ``keep`` accepts; returns how many.

        For a resumed run: a kill between logging an epoch and committing its checkpoint
        leaves records the resumed run will log again, and a kill mid-write leaves a torn
        last line; both are dropped, so every step or epoch appears once.
        """
        if not self.path.exists():
            return 0
        lines = [s for s in self.path.read_text().splitlines() if s.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines) - 1:  # only the last line can be torn by a kill
                    raise ValueError(f"{self.path}: line {i + 1} is not JSON") from None
        kept = [r for r in records if keep(r)]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        return len(kept)
