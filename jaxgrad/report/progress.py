"""Progress that tells the truth: it advances when steps have *finished*, never when dispatched.

A training loop that dispatches chunks of steps asynchronously calls the reporter once a chunk
has finished (it has read that chunk's metrics), with the number of steps done so far::

    bar = Progress(epochs * steps_per_epoch, desc="vit", show=("loss",))
    for epoch in range(epochs):
        bar.set_epoch(epoch, epochs, steps_before=epoch * steps_per_epoch)
        run_epoch(..., on_chunk=bar)      # bar(steps_done_in_epoch, {"loss": [chunk] array})
    bar.close()

On a terminal it is a tqdm bar (one per run, the epoch in the description, kept at the end);
when the stream is not a terminal (a log file, CI, a pipe) it prints plain lines -- the first
chunk, then at most one every ``every_s`` seconds, then the last -- with no ``\\r`` or ANSI codes.
``enabled=False`` (an experiment's ``--no-progress``) prints nothing, and so does every process
but process 0 of a multi-process run. Rate and ETA come from the
finished steps and the wall clock: after the first chunk over the time since the start (marked
"compilation included"), from the second report on over the steps since the first one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, TypeVar

import numpy as np
from tqdm import tqdm

from jaxgrad.report.rank import is_main

__all__ = ["Progress", "format_duration", "track"]

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """``42 s``, ``7.5 min``, ``2.3 h``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _is_tty(stream: IO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _last_value(v: Any) -> float | None:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    return float(a[-1]) if a.size else None


class Progress:
    """A progress reporter fed with *finished* steps; callable as a loop's ``on_chunk``.

    Args:
      total: steps in the whole run (all epochs).
      desc: shown before the counts; :meth:`set_epoch` appends ``epoch e/E``.
      unit: what a step is called.
      show: metric names whose last value in the chunk is shown (``loss 2.301``); ``None``:
        every metric passed.
      enabled: ``False`` prints nothing (``--no-progress``).
      stream: where to write (default ``sys.stderr``).
      tty: force terminal (tqdm) or plain-line mode; default: ``stream.isatty()``.
      every_s: plain mode prints at most one line per ``every_s`` seconds (first and last always).
      initial: steps already done (a resumed run).
      clock: seconds since some origin (tests pass a fake one).
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str = "",
        unit: str = "step",
        show: Sequence[str] | None = ("loss",),
        enabled: bool = True,
        stream: IO | None = None,
        tty: bool | None = None,
        every_s: float = 30.0,
        initial: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total < 0 or initial < 0 or initial > total:
            raise ValueError(f"need 0 <= initial <= total, got initial={initial}, total={total}")
        self.total, self.unit, self.enabled = int(total), unit, enabled and is_main()
        self.show = None if show is None else tuple(show)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _is_tty(self.stream) if tty is None else tty
        self.every_s, self.clock = every_s, clock
        self.base_desc, self.desc = desc, desc
        self.n = self._initial = int(initial)
        self._offset = 0
        self.postfix: dict[str, float] = {}
        self._t0 = clock()
        self._last_print: float | None = None
        self._first: tuple[int, float] | None = None  # (steps, time) at the first report
        self._closed = False
        self.bar = None
        if self.enabled and self.tty:
            self.bar = tqdm(
                total=self.total,
                initial=self.n,
                desc=desc,
                unit=unit,
                file=self.stream,
                leave=True,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    # -- feeding -------------------------------------------------------------------------------

    def set_epoch(self, epoch: int, epochs: int, *, steps_before: int) -> None:
        """Later calls count ``steps_done`` from ``steps_before``; the description shows the epoch
        (``epoch`` is 0-based, shown 1-based)."""
        self._offset = int(steps_before)
        self.desc = f"{self.base_desc} epoch {epoch + 1}/{epochs}".strip()
        if self.bar is not None:
            self.bar.set_description(self.desc, refresh=False)

    def __call__(self, steps_done: int, metrics: Mapping[str, Any] | None = None) -> None:
        """``steps_done`` steps (counted from the last :meth:`set_epoch`) have finished."""
        n = self._offset + int(steps_done)
        if not self._initial <= n <= self.total:
            raise ValueError(
                f"progress: {n} steps done is outside [{self._initial}, {self.total}]; "
                "pass steps done so far in this epoch and call set_epoch with steps_before"
            )
        for k in self.show if self.show is not None else (metrics or {}):
            if metrics is not None and k in metrics:
                v = _last_value(metrics[k])
                if v is not None:
                    self.postfix[k] = v
        advanced, self.n = n - self.n, n
        if self._first is None and n > self._initial:
            self._first = (n, self.clock())
        if not self.enabled:
            return
        if self.bar is not None:
            if self.postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in self.postfix.items()}, False)
            self.bar.update(advanced)
            return
        now = self.clock()
        due = self._last_print is None or now - self._last_print >= self.every_s
        if due or n == self.total:
            self._print_line(now)

    # -- reading -------------------------------------------------------------------------------

    def rate(self) -> float:
        """Finished steps per second (``nan`` before any finished).

        After the first chunk: over the time since the start (compilation included). From the
        second report on: over the steps since the first report, so compilation stops counting.
        """
        now = self.clock()
        if self._first is not None and self.n > self._first[0] and now > self._first[1]:
            return (self.n - self._first[0]) / (now - self._first[1])
        done, elapsed = self.n - self._initial, now - self._t0
        return done / elapsed if done > 0 and elapsed > 0 else math.nan

    def eta(self) -> float:
        """Seconds left at the current rate (``nan`` when unknown)."""
        r = self.rate()
        return (self.total - self.n) / r if r > 0 else math.nan

    def line(self) -> str:
        """The plain status line: ``desc: n/total steps (p%) · r step/s · elapsed · ETA · metrics``."""
        pct = 100.0 * self.n / self.total if self.total else 100.0
        r = self.rate()
        first = self._first is not None and self._first[0] == self.n  # only the first chunk
        rate = (
            "? " + self.unit + "/s"
            if not r > 0
            else (f"{r:.3g} {self.unit}/s" if r >= 1 else f"{1 / r:.3g} s/{self.unit}")
        )
        parts = [
            f"{self.desc + ': ' if self.desc else ''}{self.n:,}/{self.total:,} {self.unit}s "
            f"({pct:.0f}%)",
            rate + " (compilation included)" * first,
            f"elapsed {format_duration(self.clock() - self._t0)}",
            f"ETA {'at most ' * first}{format_duration(self.eta())}"
            if self.n < self.total
            else "ETA 0 s",
        ]
        parts += [f"{k} {v:.4g}" for k, v in self.postfix.items()]
        return " · ".join(parts)

    def write(self, message: str) -> None:
        """Print a message without breaking the bar (``tqdm.write`` on a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def _print_line(self, now: float) -> None:
        self._last_print = now
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar (kept on screen); plain mode prints the final line if not yet printed."""
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self._last_print is not None and self.n < self.total:
            self._print_line(self.clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(
    items: Iterable[T],
    total: int,
    *,
    desc: str,
    unit: str = "item",
    every_s: float = 10.0,
    **kw: Any,
) -> Iterator[T]:
    """Yield ``items`` and report each one as finished (e.g. images decoded by a thread pool);
    ``kw``: :class:`Progress`'s ``enabled``, ``stream``, ``tty``, ``clock``."""
    with Progress(total, desc=desc, unit=unit, show=(), every_s=every_s, **kw) as p:
        for i, item in enumerate(items, 1):
            p(i)  # this item is done (decoded, loaded): count it before handing it on
            yield item
