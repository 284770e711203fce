"""Checkpoints with orbax: ``torch.save({"model": ..., "optimizer": ..., "epoch": ...})``.

:class:`Checkpointer` wraps ``orbax.checkpoint.CheckpointManager``: each ``save(step, tree,
meta)`` writes into ``<dir>/<step>.orbax-checkpoint-tmp`` and renames it to ``<dir>/<step>``
only once every file is written (orbax's ``AtomicRenameTemporaryPath``, its default on local
file systems), so a process killed during a save leaves the previous checkpoints intact and
no directory that :meth:`Checkpointer.latest_step` would pick up. The last ``keep`` are kept.

PRNG keys: typed key arrays (``jax.random.key``) cannot be serialized as such; leaves with a
key dtype are saved as ``jax.random.key_data(k)`` (uint32) and restored with
``jax.random.wrap_key_data(data, impl=<the impl of the matching leaf in like_tree>)``, so a
restored tree has the same key leaves, bit for bit, as the saved one.

:func:`save_params` / :func:`load_params` store just the final parameters in one ``.npz`` file
(the ``torch.save(model.state_dict(), "vit_model.pth")`` equivalent), written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxgrad.errors import CheckpointError, MissingCheckpointError
from jaxgrad.report.io import to_jsonable
from jaxgrad.training.rng import is_key

__all__ = [
    "CheckpointMismatchError",
    "Checkpointer",
    "CorruptCheckpointError",
]


class CheckpointMismatchError(CheckpointError):
    """The saved tree differs from the expected one (structure, shape or dtype): another config."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint that fits the expected tree could not be read: its files are damaged."""


def _name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"s/params/w": (shape, dtype)}``: NamedTuple fields and dict keys read alike, as orbax
    stores both as names; key leaves are described by their key data (what is saved)."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if is_key(x):
            x = jax.eval_shape(jax.random.key_data, x)
        out["/".join(_name(k) for k in path)] = (tuple(np.shape(x)), str(np.dtype(x.dtype)))
    return out


def _tree_differences(saved: Any, like: Any) -> list[str]:
    got, want = _leaf_specs(saved), _leaf_specs(like)
    diffs = [f"{k}: missing from the checkpoint" for k in sorted(set(want) - set(got))]
    diffs += [f"{k}: in the checkpoint but not expected" for k in sorted(set(got) - set(want))]
    for k in sorted(set(got) & set(want)):
        (gs, gd), (ws, wd) = got[k], want[k]
        if (gs, gd) != (ws, wd):
            diffs.append(f"{k}: saved {gd}{list(gs)}, expected {wd}{list(ws)}")
    return diffs


def _jsonable_meta(meta: dict | None) -> dict:
    """Meta converted (numpy/jax scalars -> numbers) and checked *before* orbax starts writing."""
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict of JSON-able values, got {type(meta).__name__}")
    out = to_jsonable(dict(meta or {}))
    try:
        json.dumps(out)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint meta is not JSON-able ({e}); nothing was written") from None
    return out


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM until the block ends, then print a notice and re-deliver them to
    the handlers that were installed before (default: KeyboardInterrupt / termination), so a
    save is finished, never torn by an exception inside orbax's threads, and never swallowed."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in sigs}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(got):
            print(f"{signal.Signals(s).name} during a checkpoint save: the save was finished "
                  "first; stopping now (resume with --resume)", file=sys.stderr)  # fmt: skip
            signal.raise_signal(s)


def _short(e: Exception) -> str:
    """An orbax/tensorstore error without its multi-kB tensorstore spec: the first 300 chars."""
    return str(e).split(" [tensorstore_spec=")[0].splitlines()[0][:300] if str(e) else repr(e)


def _drop_closed_loop_noise() -> None:
    """Keep orbax's cleanup noise after a failed read away from the user.

    orbax reads through tensorstore on an asyncio loop that it closes when the read fails; the
    reads still in flight then call back into the closed loop and each lands in
    ``sys.unraisablehook`` (RuntimeError "Event loop is closed", no object; dozens of
    tracebacks at exit). Exactly those are dropped; every other unraisable error still reaches
    the previous hook. Installed once, before the first restore."""
    prev = sys.unraisablehook
    if getattr(prev, "_jaxgrad_closed_loop_filter", False):
        return

    def hook(u):
        exc = u.exc_value
        if (
            u.object is None
            and isinstance(exc, RuntimeError)
            and str(exc) == "Event loop is closed"
        ):
            return
        prev(u)

    hook._jaxgrad_closed_loop_filter = True
    sys.unraisablehook = hook


def _keys_to_data(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _template(x: Any) -> Any:
    """What orbax restores into: committed/sharded leaves keep their sharding; the rest come
    back as host arrays first so that ``jnp.asarray`` gives ordinary uncommitted arrays (a
    committed array changes jit's cache key: the restored state would trigger a recompile)."""
    if is_key(x):
        data = jax.eval_shape(jax.random.key_data, x)
        if isinstance(x, jax.Array) and x.committed:  # keep its placement: a key replicated
            # over a multi-process mesh must come back global, or the next save refuses it
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=x.sharding)
        x = data
    sharding = getattr(x, "sharding", None)
    if sharding is not None and (not isinstance(x, jax.Array) or x.committed):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
    return np.broadcast_to(np.zeros((), x.dtype), np.shape(x))  # shape + dtype, no memory


def _to_device(x: Any) -> Any:
    return jax.numpy.asarray(x) if isinstance(x, np.ndarray) else x


class Checkpointer:
    """Numbered, atomic checkpoints of any pytree (train state, keys, data order) plus JSON meta.

    >>> ckpt = Checkpointer("runs/vit/ckpt", keep=3)
    >>> ckpt.save(epoch, {"state": state, "key": key}, meta={"epoch": epoch})
    >>> tree, meta = ckpt.restore({"state": state, "key": key})   # latest step

    ``async_save=True`` lets the write run in the background (the device→host copy still
    happens inside ``save``, so donated buffers may be reused right after); call :meth:`wait`
    or :meth:`close` (or use ``with``) before the process ends.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = False):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
                # delete what a killed save left behind (never read, but it wastes disk)
                cleanup_tmp_directories=True,
            ),
            # named handlers: a fresh manager can then read a checkpoint's tree metadata
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )
        # orbax deletes those leftovers in a background future; wait for it here, so that what
        # this Checkpointer sees (and a caller lists) never races with a half-done cleanup.
        # (orbax 0.12 has no public call for it; without the method there is nothing to wait on.)
        await_cleanup = getattr(self._mngr, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None:
            await_cleanup()

    def save(self, step: int, tree: Any, meta: dict | None = None) -> None:
        """Save ``tree`` (arrays, key arrays) and ``meta`` (JSON-able dict) as checkpoint ``step``.

        ``meta`` is converted (numpy scalars -> numbers) and checked first: a value JSON cannot
        hold is a TypeError before anything is written. SIGINT/SIGTERM arriving during the save
        are held until it is done (for ``async_save``, until its files are committed), then
        re-delivered, so the process stops non-zero with the checkpoint complete.
        """
        if not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        meta = _jsonable_meta(meta)
        with _signals_deferred() as signals:
            self._mngr.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_keys_to_data(tree)),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=True,
            )
            if signals:  # about to stop: an async save must be committed first
                self._mngr.wait_until_finished()

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None when there is none."""
        self._mngr.wait_until_finished()
        self._mngr.reload()  # see checkpoints written by another process / manager
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        self._mngr.wait_until_finished()
        self._mngr.reload()
        return sorted(self._mngr.all_steps())

    def restore(self, like_tree: Any, step: int | None = None) -> tuple[Any, dict]:
        """Return ``(tree, meta)`` of checkpoint ``step`` (default: the latest).

        ``like_tree`` gives structure, shapes and dtypes (concrete arrays or
        ``jax.ShapeDtypeStruct``; key leaves must be key arrays). Raises FileNotFoundError when
        there is no such checkpoint, :class:`CheckpointMismatchError` naming every leaf whose
        path, shape or dtype differs from the saved one, and :class:`CorruptCheckpointError`
        when a checkpoint that fits cannot be read (see :meth:`restore_latest` to fall back).
        """
        step = self.latest_step() if step is None else step
        if step is None or step not in self.all_steps():
            raise MissingCheckpointError(
                f"no checkpoint {'' if step is None else step} in {self.directory} "
                f"(complete steps: {self.all_steps()}); train first or drop --resume"
            )
        where = self.directory / str(step)
        # before reading: a damaged file's failed reads call back into orbax's closed asyncio
        # loop at any time after the failure, possibly before we learn of it
        _drop_closed_loop_noise()
        try:
            saved = self._mngr.item_metadata(step)["state"]
            saved = getattr(saved, "tree", saved)
            if saved is None:
                raise ValueError("no tree metadata")
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            _drop_closed_loop_noise()
            raise CorruptCheckpointError(
                f"checkpoint {where} is corrupt: its metadata cannot be read ({_short(e)}). "
                "Delete it; "
                "resume falls back to the newest complete one"
            ) from e
        diffs = _tree_differences(saved, like_tree)
        if diffs:
            more = f"\n  ... and {len(diffs) - 10} more" if len(diffs) > 10 else ""
            raise CheckpointMismatchError(
                f"checkpoint {where} does not match the expected tree:\n  "
                + "\n  ".join(diffs[:10])
                + more
                + "\nIt was written by another model/optimizer config: run with that config, "
                "or pick another --out-dir."
            )
        try:
            out = self._mngr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(jax.tree.map(_template, like_tree)),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:
            _drop_closed_loop_noise()
            raise CorruptCheckpointError(
                f"checkpoint {where} is corrupt: it matches the expected tree but its data "
                f"cannot be read ({_short(e)}). Delete it; resume falls back to the newest "
                "complete one"
            ) from e
        tree = jax.tree.map(
            lambda like, x: (
                jax.random.wrap_key_data(_to_device(x), impl=jax.random.key_impl(like))
                if is_key(like)
                else _to_device(x)
            ),
            like_tree,
            out["state"],
        )
        return tree, dict(out["meta"] or {})

    def restore_latest(self, like_tree: Any) -> tuple[Any, dict, int]:
        """Restore the newest checkpoint that can be read: ``(tree, meta, step)``.

        A corrupt one is skipped with a notice on stderr naming it; a mismatching one
        (:class:`CheckpointMismatchError`) is not skipped (older ones have the same config).
        Raises FileNotFoundError when there is no checkpoint, CorruptCheckpointError when none
        can be read.
        """
        steps = self.all_steps()
        if not steps:
            raise MissingCheckpointError(f"no complete checkpoint in {self.directory}")
        errors = []
        for step in reversed(steps):
            try:
                tree, meta = self.restore(like_tree, step)
            except CorruptCheckpointError as e:
                errors.append(str(e))
                print(f"warning: {e}", file=sys.stderr)
                continue
            if errors:
                print(f"note: resuming from older checkpoint {self.directory / str(step)}",
                      file=sys.stderr)  # fmt: skip
            return tree, meta, step
        raise CorruptCheckpointError(
            f"every checkpoint in {self.directory} ({steps}) is corrupt; start fresh in "
            "another --out-dir or with --overwrite"
        )

    def delete(self, step: int) -> None:
        """Remove checkpoint ``step`` (e.g. a corrupt one that resume fell back past)."""
        self._mngr.wait_until_finished()
        self._mngr.delete(int(step))

    def read_meta(self, step: int | None = None) -> dict:
        """Only the JSON meta of checkpoint ``step`` (default: the latest), without the arrays."""
        step = self.latest_step() if step is None else step
        if step is None or step not in self.all_steps():
            raise MissingCheckpointError(
                f"no checkpoint {'' if step is None else step} in {self.directory}"
            )
        out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"] or {})

    def wait(self) -> None:
        """Block until a background save has been written and renamed into place."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
