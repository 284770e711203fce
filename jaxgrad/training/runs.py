"""Run directories: one live run per ``--out-dir``, and ``--resume`` only onto the same config.

Every experiment makes three calls around its loop::

    run = open_run_dir(cfg.out_dir, experiment="vit_cifar10", tiny=cfg.tiny_run,
                       resume=cfg.resume, overwrite=cfg.overwrite)               # lock + policy
    config = resolved_config(cfg, data=train.source, n_train=len(train))         # what to record
    ...
    if cfg.resume:
        step = ckpt.latest_step()
        if check_resumable(step, ckpt_dir=ckpt.directory, start_fresh=cfg.resume_or_start):
            tree, meta = ckpt.restore(...)
            changes = compare_configs(meta["config"], config, overrides=cfg.resume_override)
            logger.log(epoch=meta["epoch"], event="resume", changes=changes_jsonable(changes))
    rewind_metrics(logger, last_epoch=...)   # every epoch once, in every interruption case
    ckpt.save(epoch, tree, meta={"config": config, "epoch": epoch, ...})

Policies:

- **Lock.** :func:`open_run_dir` writes ``<out>/.jaxgrad.lock`` (pid + host + start time)
  with an atomic ``link``; a second live run refuses with one line naming the holder. A lock
  whose pid is dead on this host is stale: it is taken over with a notice on stderr. A lock from
  another host cannot be checked, so it is refused with the path to delete if that run is over.
- **Marker.** Each run writes ``<out>/.jaxgrad-run.json`` (experiment, tiny or not, run id;
  :mod:`jaxgrad.training.run_marker`) when it starts: the proof that jaxgrad wrote the folder.
- **Re-run.** A directory that already holds something (besides the lock and the marker) is
  used only as :func:`jaxgrad.training.run_marker.check_replaceable` allows: ``resume=True`` continues
  the same experiment's run; ``overwrite=True`` replaces the same experiment's run (tiny or
  not); ``rerun_tiny=True`` (the tiny re-run) replaces only the same experiment's tiny run.
  A folder without a marker (an image folder, a thesis, a run older than markers) or with
  another experiment's is refused in one line naming it and what it holds; nothing is deleted.
- **Resume without a checkpoint** is refused (:func:`check_resumable`) unless the caller passes
  ``start_fresh=True`` (the experiments' ``--resume-or-start``), which prints a notice and
  starts at epoch 0; the metrics log is then emptied by ``rewind_metrics(last_epoch=None)``.
- **Changed config.** :func:`compare_configs` refuses every differing field, listed as
  ``field: old -> new``; ``epochs`` may grow (extend a run) and fields named in ``overrides``
  (``--resume-override lr,batch_size``) may change; the accepted changes are returned for the
  caller to log in metrics.jsonl and summary.json.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from jaxgrad.errors import ConfigError, MissingCheckpointError, OutDirError
from jaxgrad.report.cli import CheckedConfig, option
from jaxgrad.report.io import JsonlLogger, to_jsonable
from jaxgrad.training.distributed import barrier, is_main
from jaxgrad.training.run_marker import MARKER_NAME, RunMarker, check_replaceable, write_marker

__all__ = [
    "LOCK_NAME",
    "ConfigChange",
    "ResumeConfigError",
    "RunDir",
    "RunDirError",
    "changes_jsonable",
    "check_resumable",
    "compare_configs",
    "open_run_dir",
    "resolved_config",
    "rewind_metrics",
]

LOCK_NAME = ".jaxgrad.lock"


@dataclasses.dataclass(frozen=True)
class RunFlags(CheckedConfig):
    """The flags every training experiment shares, written once: where the run goes and what
    may be replaced there, what it prints, and the devices and processes it spans. An
    experiment's ``Config`` subclasses it and gives ``out_dir`` its own default."""

    out_dir: str = option("runs/run", "where metrics, plots, checkpoints and params go")
    overwrite: bool | None = option(
        False,
        "replace the run --out-dir holds (only a folder with this experiment's run marker; "
        "--tiny: replaces only a previous tiny run; --no-overwrite: never)",
    )
    tiny_run: bool = option(
        False,
        "record the run as a throwaway tiny run (set by --tiny): the next tiny run may replace it",
    )
    progress: bool = option(True, "progress bar (plain lines when not a terminal)")
    doctor: bool = option(False, "print the gradient-flow doctor's report before training")
    devices: int | None = option(
        None, "data-parallel over this many devices (default: all visible; 1: off)", gt=0
    )
    coordinator: str | None = option(
        None, "multi-process: host:port of process 0 (None: launcher env / cluster / one process)"
    )
    num_processes: int | None = option(None, "multi-process: process count (None: env / 1)")
    process_id: int | None = option(None, "multi-process: this process's rank (None: env / 0)")


class RunDirError(OutDirError, RuntimeError):
    """The output directory is in use by a live run, or holds a run the command did not name."""


class ResumeConfigError(ConfigError):
    """``--resume`` onto a checkpoint written with a different configuration."""


class ConfigChange(NamedTuple):
    field: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.field}: {self.old!r} -> {self.new!r}"


def resolved_config(cfg: Any, **extra: Any) -> dict:
    """The full resolved config as a JSON-able dict: the dataclass fields plus ``extra``
    (what the fields do not pin down, e.g. ``data=train.source``, ``n_train=len(train)``).

    Checked with ``json.dumps`` so a value that cannot be recorded fails here, not mid-save.
    """
    base = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    overlap = sorted(set(base) & set(extra))
    if overlap:
        raise ValueError(f"resolved_config: extra keys {overlap} shadow config fields")
    out = to_jsonable({**base, **extra})
    json.dumps(out, allow_nan=False)  # NaN would not compare equal to itself on resume
    return json.loads(json.dumps(out))  # tuples -> lists, as they come back from a checkpoint


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare_configs(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    growable: Iterable[str] = ("epochs",),
    overrides: Iterable[str] = (),
) -> list[ConfigChange]:
    """Compare a checkpoint's recorded config with the new one; return the accepted changes.

    Raises :class:`ResumeConfigError` listing every refused field as ``field: old -> new``.
    A field in ``growable`` may grow (``--epochs 3`` -> ``--epochs 4`` extends a run; shrinking
    is refused); a field in ``overrides`` may change freely. ``overrides`` naming a field that
    is not in the config is itself an error (a typo would otherwise allow nothing silently).
    """
    old, new = json.loads(json.dumps(to_jsonable(dict(old)))), resolved_config(dict(new))
    growable, overrides = set(growable), {o.strip() for o in overrides if o.strip()}
    unknown = sorted(overrides - set(old) - set(new))
    if unknown:
        raise ResumeConfigError(
            f"--resume-override names {unknown}, which are not config fields; "
            f"fields: {', '.join(sorted(new))}"
        )
    accepted, refused = [], []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, "<absent>"), new.get(name, "<absent>")
        if _same(a, b):
            continue
        change = ConfigChange(name, a, b)
        grows = (
            name in growable
            and isinstance(a, int | float)
            and isinstance(b, int | float)
            and b >= a
        )
        (accepted if grows or name in overrides else refused).append(change)
    if refused:
        flags = ",".join(c.field for c in refused)
        raise ResumeConfigError(
            "--resume: the checkpoint was written with a different config:\n  "
            + "\n  ".join(str(c) for c in refused)
            + f"\nRun with the checkpoint's values, pass --resume-override {flags} to accept "
            "the change (it is logged), or use another --out-dir."
        )
    return accepted


def changes_jsonable(changes: Iterable[ConfigChange]) -> list[dict]:
    """Accepted changes as ``[{"field", "old", "new"}]`` for metrics.jsonl / summary.json."""
    return [c._asdict() for c in changes]


def check_resumable(
    latest_step: int | None, *, ckpt_dir: str | os.PathLike, start_fresh: bool = False
) -> bool:
    """``--resume`` found ``latest_step``: True to restore it, False to start fresh (with a
    notice, only when ``start_fresh``); otherwise raise MissingCheckpointError saying so."""
    if latest_step is not None:
        return True
    if start_fresh:
        if is_main():
            print(f"note: --resume found no complete checkpoint in {ckpt_dir}; starting fresh",
                  file=sys.stderr)  # fmt: skip
        return False
    raise MissingCheckpointError(
        f"--resume: no complete checkpoint in {ckpt_dir} (the run stopped before its first "
        "save finished). Pass --resume-or-start to start it fresh, or drop --resume."
    )


def rewind_metrics(logger: JsonlLogger, *, last_epoch: int | None, key: str = "epoch") -> int:
    """Keep exactly the records of the epochs the restored checkpoint holds.

    ``last_epoch`` is the checkpoint's epoch (records with ``record[key] <= last_epoch`` stay;
    a record without ``key`` counts as epoch 0), or None for a fresh start: then every record
    goes, so a run killed during its first save does not log epoch 1 twice. A torn last line
    (killed mid-write) is dropped. Returns how many records were kept.
    """
    if last_epoch is None:
        if is_main():  # process 0 owns the file (jaxgrad.report.io); the others never write it
            logger.path.unlink(missing_ok=True)
        return 0
    return logger.rewind(lambda r: r.get(key, 0) <= last_epoch)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunDir:
    """A locked run directory (see :func:`open_run_dir`); ``release()`` or ``with`` unlocks."""

    def __init__(
        self, path: Path, lock: Path | None, holder: dict, marker: RunMarker | None = None
    ):
        self.path, self.lock, self.holder = path, lock, holder  # lock None: not process 0
        self.marker = marker  # this run's (or, resumed, the run's first) marker; None off process 0
        atexit.register(self.release)

    def release(self) -> None:
        if self.lock is None:
            return
        try:
            if json.loads(self.lock.read_text()) == self.holder:
                self.lock.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _acquire(path: Path) -> tuple[Path, dict]:
    lock = path / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    fd, tmp = tempfile.mkstemp(dir=path, prefix=f"{LOCK_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        for _ in range(3):
            try:
                os.link(tmp, lock)  # atomic: exists with its full content, or not at all
                return lock, me
            except FileExistsError:
                pass
            try:
                other = json.loads(lock.read_text())
                pid, host = int(other["pid"]), str(other["host"])
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except (OSError, ValueError, KeyError, TypeError):
                raise RunDirError(
                    f"{lock} is unreadable: if no run is using {path}, delete it"
                ) from None
            if host != me["host"]:
                raise RunDirError(
                    f"{path} is locked by pid {pid} on host {host} ({lock}); if that run is "
                    "over, delete the lock, or pick another --out-dir"
                )
            if _pid_alive(pid):
                raise RunDirError(
                    f"{path} is in use by a running process (pid {pid} on {host}); wait for it "
                    "to finish or pick another --out-dir"
                )
            print(f"note: taking over stale lock {lock} (pid {pid} is not running)",
                  file=sys.stderr)  # fmt: skip
            os.replace(tmp, lock)
            if json.loads(lock.read_text()) == me:  # a concurrent taker may have won
                return lock, me
        raise RunDirError(f"could not lock {path}: another run keeps taking it")
    finally:
        Path(tmp).unlink(missing_ok=True)


def open_run_dir(
    path: str | os.PathLike,
    *,
    experiment: str,
    tiny: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    rerun_tiny: bool = False,
) -> RunDir:
    """Lock ``path`` for a run of ``experiment`` (tiny or not), apply the re-run policy (module
    docstring) and write the run's marker.

    Raises :class:`RunDirError` (one line) when another live run holds the directory, or when
    what it holds may not be used as asked (:func:`jaxgrad.training.run_marker.check_replaceable`).
    Replacing deletes the directory's contents (never the lock, never outside ``path``) only
    after the check passed.
    In a multi-process run only process 0 locks and applies the policy; the others wait for it
    at a barrier (when it refuses, it exits and the runtime ends them: the lost peer is named).
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pass one")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out-dir {path} is a file, not a directory; pick another --out-dir")
    if not is_main():  # process 0 locks and applies the policy; the others wait for it
        barrier("jaxgrad.training.runs.open_run_dir")
        return RunDir(path, None, {})
    path.mkdir(parents=True, exist_ok=True)
    lock, me = _acquire(path)
    run = RunDir(path, lock, me)
    try:
        ours = (LOCK_NAME, MARKER_NAME)
        held = sorted(p.name for p in path.iterdir() if not p.name.startswith(ours))
        try:
            marker = check_replaceable(
                path, held, experiment=experiment, overwrite=overwrite, rerun_tiny=rerun_tiny,
                resume=resume, ignore=ours,
            )  # fmt: skip
        except OutDirError as e:
            raise RunDirError(str(e)) from None
        if held and not resume:  # proven ours and replaceable: replace it
            for name in held:
                p = path / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        if not (resume and held and marker is not None):  # a continued run keeps its marker
            marker = write_marker(path, experiment, tiny=tiny)
        run.marker = marker
    except BaseException:
        run.release()
        raise
    barrier("jaxgrad.training.runs.open_run_dir")
    return run
