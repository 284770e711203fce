"""A run, start to end, the same for every experiment: :class:`Run` (lock, run marker, re-run
policy, metrics.jsonl, the summary file; ``experiments.clip_contrastive``) and
:class:`EpochRun` on top of it (resume onto the same config, metrics that list every epoch
once, no non-finite checkpoint; ``experiments.vit_cifar10``).

The calls an epoch loop makes::

    run = EpochRun(cfg.out_dir, experiment="vit_cifar10", tiny=cfg.tiny_run,
                   resume=cfg.resume, overwrite=cfg.overwrite, rerun_tiny=..., keep=cfg.keep,
                   resume_or_start=cfg.resume_or_start, resume_override=cfg.resume_override)
    ... load data (the directory is locked from here on) ...
    tree, history, start = run.start({"state": state, "keys": keys}, config)
    for epoch in range(start, epochs):
        ...
        run.log(epoch=epoch + 1, ...)
        run.save(epoch + 1, {"state": state, "keys": keys}, history)
    run.finish(summary)                    # summary.json (+ the accepted config changes)

Policies are :mod:`jaxgrad.training.runs`'s: a second live run on the directory is refused; a directory
holding something needs ``resume`` or ``overwrite`` (or ``rerun_tiny``) *and* the same
experiment's run marker (:mod:`jaxgrad.training.run_marker`: nothing else is ever deleted); ``resume`` with no complete checkpoint is
refused unless ``resume_or_start``; a corrupt latest checkpoint is skipped with a notice; the
checkpoint's recorded ``config`` must equal the new one except ``epochs`` growing and the fields
named in ``resume_override`` (accepted changes go into metrics.jsonl and summary.json).

Multi-process (:mod:`jaxgrad.training.distributed`): every process makes the same calls on the same
``out_dir``. Process 0 alone locks and applies the re-run policy (:func:`jaxgrad.training.runs.open_run_dir`;
the others wait for it), writes metrics.jsonl and summary.json and prints; every process takes
part in each checkpoint save and restore (orbax writes a global array once; one process alone
would deadlock), so ``like`` must already be placed as it will be trained (global arrays).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jaxgrad.report.io import JsonlLogger, atomic_write_json
from jaxgrad.training.checkpoint import Checkpointer, CheckpointMismatchError
from jaxgrad.training.distributed import main_print
from jaxgrad.training.guard import check_finite_state
from jaxgrad.training.runs import (
    ResumeConfigError,
    changes_jsonable,
    check_resumable,
    compare_configs,
    open_run_dir,
    rewind_metrics,
)

__all__ = ["EpochRun", "Run", "split_overrides"]


def split_overrides(names: Iterable[str]) -> list[str]:
    """``("lr,batch_size", "seed")`` -> ``["lr", "batch_size", "seed"]`` (comma or space lists)."""
    return [n.strip() for name in names for n in name.split(",") if n.strip()]


class Run:
    """One run directory under a lock: its marker and re-run policy, ``metrics.jsonl`` and a
    summary file at the end. CLIP (trained by steps) uses it as is;
    :class:`EpochRun` adds checkpoints and resume.

    Args:
      out_dir: the run directory (created; locked until :meth:`finish`, :meth:`abort` or exit).
      experiment, tiny: what the run's marker records (``"vit_cifar10"``, a ``--tiny`` run).
      resume, overwrite, rerun_tiny: the re-run policy (:func:`jaxgrad.training.runs.open_run_dir`).
    """

    def __init__(self, out_dir: str | os.PathLike, **policy: Any):
        self.out = Path(out_dir)
        self.lock = open_run_dir(self.out, **policy)
        self.logger = JsonlLogger(self.out / "metrics.jsonl")

    def clear_metrics(self) -> None:
        """Empty ``metrics.jsonl``: a fresh run's records start the file (one run per file)."""
        rewind_metrics(self.logger, last_epoch=None)

    def log(self, **record: Any) -> None:
        self.logger.log(**record)

    def finish(self, summary: dict, name: str = "summary.json") -> dict:
        """Write ``summary`` as ``name`` (atomically, process 0), release the lock; returns it."""
        atomic_write_json(self.out / name, summary)
        self.lock.release()
        return summary

    def abort(self) -> None:
        """Stop without a summary (an error): release the lock."""
        self.lock.release()


class EpochRun(Run):
    """:class:`Run` plus ``ckpt/<epoch>``: resume onto the same config, finite-only checkpoints.

    Args (beside :class:`Run`'s, passed on as ``policy``):
      resume_or_start: ``resume`` with no complete checkpoint starts fresh with a notice.
      resume_override: config fields allowed to differ from the checkpoint's.
      keep: checkpoints kept.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        resume: bool = False,
        resume_or_start: bool = False,
        resume_override: Iterable[str] = (),
        keep: int = 3,
        **policy: Any,
    ):
        super().__init__(out_dir, resume=resume, **policy)
        self.resume, self.resume_or_start = resume, resume_or_start
        self.overrides = split_overrides(resume_override)
        self.ckpt = Checkpointer(self.out / "ckpt", keep=keep, async_save=True)
        self.config: dict = {}
        self.changes: list[dict] = []

    def start(self, like: Any, config: dict) -> tuple[Any, list[dict], int]:
        """``(tree, history, epoch)`` to continue from: the restored checkpoint, or ``like``,
        ``[]`` and 0 for a fresh start. ``config`` (JSON-able, e.g.
        :func:`jaxgrad.training.runs.resolved_config`) is compared with the checkpoint's and recorded
        in every later checkpoint."""
        self.config = config
        latest = self.ckpt.latest_step() if self.resume else None
        if not self.resume or not check_resumable(
            latest, ckpt_dir=self.ckpt.directory, start_fresh=self.resume_or_start
        ):
            self.clear_metrics()
            return like, [], 0
        try:
            tree, meta, step = self.ckpt.restore_latest(like)
        except CheckpointMismatchError:
            self._compare(self.ckpt.read_meta())  # a changed config says which fields changed
            raise
        changes = self._compare(meta)
        for newer in [s for s in self.ckpt.all_steps() if s > step]:  # corrupt ones skipped
            self.ckpt.delete(newer)  # (reported above); the resumed run writes them again
        epoch = int(meta["epoch"])
        # every epoch once: drop records (and resume events) past the restored epoch; an event
        # has no "epoch" key, so readers of per-epoch records never see an epoch twice
        self.logger.rewind(lambda r: r.get("epoch", r.get("resumed_at_epoch", 0)) <= epoch)
        self.changes = changes_jsonable(changes)
        if self.changes:
            self.logger.log(event="resume", resumed_at_epoch=epoch, changes=self.changes)
        told = ", ".join(f"{c.field} {c.old} -> {c.new}" for c in changes)
        main_print(
            f"resumed from {self.ckpt.directory / str(step)} (epoch {epoch})"
            + (f"; accepted changes: {told}" if told else "")
        )
        return tree, list(meta.get("history", [])), epoch

    def _compare(self, meta: dict) -> list:
        if "config" not in meta:
            raise ResumeConfigError(
                f"--resume: {self.ckpt.directory} was written by an older jaxgrad that did not "
                "record its config (and named the step key 'dropout', now 'step'), so it "
                "cannot be resumed safely. Start over with --overwrite or use another --out-dir."
            )
        return compare_configs(meta["config"], self.config, overrides=self.overrides)

    def save(self, epoch: int, tree: Any, history: list[dict], **meta: Any) -> None:
        """Checkpoint ``tree`` as ``ckpt/<epoch>`` with the config and history; a tree holding
        NaN/inf is refused first (:func:`jaxgrad.training.guard.check_finite_state`), nothing written."""
        check_finite_state(tree, what=f"the state after epoch {epoch}")
        self.ckpt.save(
            epoch, tree, meta={"epoch": epoch, "history": history, "config": self.config, **meta}
        )

    def finish(self, summary: dict) -> dict:
        """Wait for the last checkpoint, write ``summary.json`` (with the accepted config
        changes and the config), release the lock; returns the summary written."""
        self.ckpt.close()
        return super().finish({**summary, "config": self.config, "resume_changes": self.changes})

    def abort(self) -> None:
        """Stop without a summary (an error): wait for a pending save, release the lock."""
        try:
            self.ckpt.close()
        finally:
            super().abort()
