"""The marker a run leaves in its ``--out-dir``: proof that jaxgrad wrote the folder.

A run only ever deletes or replaces what it can prove it wrote. When a run starts,
:func:`jaxgrad.training.runs.open_run_dir` writes ``<out>/.jaxgrad-run.json``::

    {"jaxgrad_run": 1, "experiment": "vit_cifar10", "tiny": true, "run_id": "3f2a...",
     "started": "2026-12-02T18:40:00+00:00", "host": "...", "pid": 1234}

and :func:`check_replaceable` decides, before anything is deleted, whether a folder that
already holds something may be replaced:

- **the tiny re-run** (``--tiny`` without ``--resume``/``--overwrite``) replaces only a folder
  whose marker is the same experiment's *tiny* run;
- **--overwrite** replaces only a folder whose marker is the same experiment's run (tiny or
  not: the user named the folder and asked to replace that run);
- everything else is refused in one line naming the folder and what is in it: a folder without
  a marker ("12 files, no jaxgrad run marker": an image folder, a thesis, a run written before
  markers existed), another experiment's run, a non-tiny run under the tiny re-run.

A folder holding nothing but a marker (a run that stopped before writing anything) is empty
for this purpose: there is nothing to lose.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from jaxgrad.errors import OutDirError
from jaxgrad.report.io import atomic_write_json

__all__ = [
    "MARKER_NAME",
    "RunMarker",
    "check_replaceable",
    "describe_contents",
    "read_marker",
    "write_marker",
]

MARKER_NAME = ".jaxgrad-run.json"
_FORMAT = 1


class RunMarker(NamedTuple):
    """Who wrote a run folder: the experiment (``vit_cifar10``), tiny or not, and the run id."""

    experiment: str
    tiny: bool
    run_id: str = ""
    started: str = ""

    def describe(self) -> str:
        kind = "tiny " if self.tiny else "non-tiny "
        when = f", started {self.started}" if self.started else ""
        return f"a {kind}{self.experiment} run (run id {self.run_id or '?'}{when})"


def write_marker(path: str | os.PathLike, experiment: str, *, tiny: bool) -> RunMarker:
    """Write a fresh marker (new run id) into the folder ``path``, atomically."""
    marker = RunMarker(experiment, bool(tiny), uuid.uuid4().hex[:16], datetime.now(UTC).isoformat())
    atomic_write_json(
        Path(path) / MARKER_NAME,
        {"jaxgrad_run": _FORMAT, **marker._asdict(), "host": socket.gethostname(),
         "pid": os.getpid()},
    )  # fmt: skip
    return marker


def read_marker(path: str | os.PathLike) -> RunMarker | None:
    """The folder's marker, or None when it has none; an unreadable one is refused."""
    f = Path(path) / MARKER_NAME
    if not f.exists():
        return None
    try:
        raw = json.loads(f.read_text())
        if raw.get("jaxgrad_run") != _FORMAT:
            raise ValueError(f"unknown marker format {raw.get('jaxgrad_run')!r}")
        return RunMarker(
            str(raw["experiment"]), bool(raw["tiny"]), str(raw.get("run_id", "")),
            str(raw.get("started", "")),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OutDirError(
            f"{f} is not a readable jaxgrad run marker ({type(e).__name__}: {e}); nothing in "
            f"{f.parent} was changed. Delete the folder yourself if it is yours to lose, or pick "
            "another --out-dir"
        ) from None


def describe_contents(path: Path, ignore: tuple[str, ...] = (), limit: int = 100_000) -> str:
    """``"12 files in 3 folders (airplane/, cat/, notes.txt, ...)"``: what a folder holds,
    counted recursively (up to ``limit`` entries), its top-level names first."""
    top = sorted(
        p.name + ("/" if p.is_dir() and not p.is_symlink() else "")
        for p in path.iterdir()
        if not p.name.startswith(ignore)
    )
    files = folders = 0
    for root, dirs, names in os.walk(path):
        if root == str(path):
            dirs[:] = [d for d in dirs if not d.startswith(ignore)]
            names = [n for n in names if not n.startswith(ignore)]
        files, folders = files + len(names), folders + len(dirs)
        if files + folders > limit:
            break
    more = "+" if files + folders > limit else ""
    shown = ", ".join(top[:4]) + (", ..." if len(top) > 4 else "")
    inside = f" in {folders}{more} folders" if folders else ""
    return f"{files}{more} file{'s' * (files != 1)}{inside} ({shown})"


def check_replaceable(
    path: Path,
    held: list[str],
    *,
    experiment: str,
    overwrite: bool,
    rerun_tiny: bool,
    resume: bool,
    ignore: tuple[str, ...] = (),
) -> RunMarker | None:
    """Refuse (:class:`~jaxgrad.errors.OutDirError`, one line) unless the folder ``path``
    holding ``held`` (top-level names besides the lock and the marker) may be used as asked:
    continued (``resume``), replaced (``overwrite``, ``rerun_tiny``) or written into (empty).
    Returns the folder's marker (None when it has none). Nothing is deleted here."""
    marker = read_marker(path)
    if not held:
        return marker  # nothing to lose (at most a marker of a run that wrote nothing)
    what = describe_contents(path, ignore=ignore)
    fix = "pick another --out-dir, or delete the folder yourself if it is yours to lose"
    if marker is None:
        raise OutDirError(
            f"--out-dir {path} holds {what} and no jaxgrad run marker ({MARKER_NAME}): it is "
            f"not a run this jaxgrad started, so nothing in it is replaced; {fix}"
        )
    if marker.experiment != experiment:
        raise OutDirError(
            f"--out-dir {path} holds {marker.describe()}, not a {experiment} run ({what}); "
            f"nothing in it is replaced; {fix}"
        )
    if resume or overwrite or (rerun_tiny and marker.tiny):
        return marker
    if rerun_tiny:
        raise OutDirError(
            f"--out-dir {path} holds {marker.describe()} ({what}); the tiny re-run replaces only "
            f"a previous tiny run: pass --overwrite to replace it, --resume to continue it, or "
            "pick another --out-dir"
        )
    raise OutDirError(
        f"--out-dir {path} already holds {marker.describe()} ({what}): pass --resume to continue "
        "it, --out-dir to write elsewhere, or --overwrite to replace it"
    )
