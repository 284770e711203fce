"""The plan line printed before a long run: what will run, where, and how long it will take.

Never a silent multi-hour CPU run::

    plan = Plan(name="ViT seed recipe", params=12_673_642, steps_per_epoch=703, epochs=10,
                smaller=("--dim 96 --depth 3 --train-limit 10000", 0.004))
    plan.announce()                      # model size, steps, device
    plan.start()                         # the clock starts (compilation comes next)
    ... each chunk finished ...
    plan.chunk_done(steps_done)          # 1st: compile + first chunk; 2nd: the estimate
    ... the first epoch finished (evaluation included) ...
    plan.epoch_done(1)                   # the re-estimate from a whole epoch

The estimate comes from the steps *after* the first chunk (whose time includes compilation;
compilation is reported apart, as the first chunk's time minus its steps at the later rate).
:meth:`first_chunk` is the older one-shot estimate (compilation included: an upper bound).

``smaller`` is a cheaper command line and its cost as a fraction of this run's (steps x FLOPs
per step); the estimate for it is scaled from this run's first chunk.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO

import jax

from jaxgrad.report.progress import format_duration
from jaxgrad.report.rank import is_main

__all__ = ["Plan", "device_summary"]

LONG_RUN_S = 30 * 60  # estimates above this get the warning and the smaller command


def device_summary() -> str:
    """``cpu (2 cores)`` / ``4 x NVIDIA H100 80GB HBM3``: what the default backend runs on."""
    devs = jax.devices()
    d = devs[0]
    if d.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores, {len(devs)} XLA device{'s' * (len(devs) > 1)})"
    return f"{len(devs)} x {d.device_kind}"


class Plan:
    """What a run will do and, from its first chunk, how long it will take.

    Args:
      name: what runs (``"ViT strong recipe"``).
      params: trainable parameter count.
      steps_per_epoch, epochs: the run's length.
      device: defaults to :func:`device_summary`.
      smaller: ``(flags, cost_fraction)``: a cheaper command and its cost relative to this run.
      long_run_s: estimates above this print a warning (and ``smaller``) first.
      stream: default ``sys.stdout``.
      clock: seconds (``time.perf_counter``; a fake clock in tests).
    """

    def __init__(
        self,
        *,
        name: str,
        params: int,
        steps_per_epoch: int,
        epochs: int = 1,
        device: str | None = None,
        smaller: tuple[str, float] | None = None,
        long_run_s: float = LONG_RUN_S,
        stream: IO | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        if steps_per_epoch <= 0 or epochs <= 0:
            raise ValueError(f"need steps_per_epoch, epochs > 0, got {steps_per_epoch}, {epochs}")
        if smaller is not None and not smaller[1] > 0:
            raise ValueError(f"smaller's cost fraction must be > 0, got {smaller[1]}")
        self.name, self.params = name, int(params)
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.device = device if device is not None else device_summary()
        self.smaller, self.long_run_s = smaller, long_run_s
        self.stream = stream if stream is not None else sys.stdout
        self.estimate_s: float | None = None
        self.clock = clock
        self.compile_s: float | None = None  # first chunk's time minus its steps at the rate
        self._t0: float | None = None
        self._first: tuple[int, float] | None = None  # (steps, seconds since start)
        self._step_s: float | None = None  # seconds per step after compilation

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def announce(self) -> str:
        """Print (and return) the plan: model size, steps, device."""
        line = (
            f"plan: {self.name} · {self.params:,} parameters · {self.epochs} epoch"
            f"{'s' * (self.epochs > 1)} x {self.steps_per_epoch:,} steps = "
            f"{self.total_steps:,} steps · {self.device}"
        )
        return self._print(line)  # one plan line for a multi-process run

    def first_chunk(self, *, steps: int, seconds: float, compiled: bool = True) -> str:
        """Print (and return) the estimate from the first finished chunk of ``steps`` steps.

        ``compiled=True`` says the time includes compilation (the estimate is then an upper
        bound, and says so).
        """
        if steps <= 0 or seconds <= 0:
            raise ValueError(f"need steps, seconds > 0, got {steps}, {seconds}")
        per_step = seconds / steps
        epoch_s, total_s = per_step * self.steps_per_epoch, per_step * self.total_steps
        self.estimate_s = total_s
        upper = ", compilation included: an upper bound" if compiled else ""
        text = (
            f"estimate from the first {steps} steps ({format_duration(seconds)}{upper}): "
            f"~{format_duration(epoch_s)} per epoch, ~{format_duration(total_s)} in all on "
            f"{self._where()}"
        )
        return self._print(self._long(text, total_s))

    def _print(self, text: str) -> str:
        if is_main():
            print(text, file=self.stream, flush=True)
        return text

    def _where(self) -> str:
        return "this CPU" if self.device.startswith("cpu") else self.device

    def _long(self, text: str, total_s: float) -> str:
        if total_s <= self.long_run_s:
            return text
        text = "LONG RUN: " + text
        if self.smaller is not None:
            flags, frac = self.smaller
            text += f"; `{flags}` gives a ~{format_duration(total_s * frac)} run"
        return text + " (Ctrl-C to stop)"

    def start(self) -> None:
        """The run's clock starts (call just before the first dispatch: compilation follows)."""
        self._t0 = self.clock()

    def chunk_done(self, steps_done: int) -> str | None:
        """After each finished chunk, ``steps_done`` steps of this run so far (all epochs).

        The first call notes the first chunk (compilation included); the second prints the
        estimate from the steps between the two calls, with compilation apart. Later calls
        print nothing. Returns the printed line, if any.
        """
        if self._t0 is None:
            raise ValueError("Plan.chunk_done before Plan.start()")
        now = self.clock() - self._t0
        if self._first is None:
            self._first = (int(steps_done), now)
            return None
        if self._step_s is not None or steps_done <= self._first[0]:
            return None
        steps0, t0 = self._first
        self._step_s = (now - t0) / (steps_done - steps0)
        self.compile_s = max(t0 - steps0 * self._step_s, 0.0)
        epoch_s = self._step_s * self.steps_per_epoch
        total_s = self.compile_s + self._step_s * self.total_steps
        self.estimate_s = total_s
        text = (
            f"estimate from steps {steps0 + 1}-{steps_done} (after compilation; compilation "
            f"~{format_duration(self.compile_s)}): ~{format_duration(epoch_s)} of steps per "
            f"epoch, ~{format_duration(total_s)} in all on {self._where()} (evaluation not "
            "counted yet)"
        )
        return self._print(self._long(text, total_s))

    def epoch_done(self, epochs_done: int) -> str | None:
        """After the first finished epoch (steps, evaluation, checkpoint): the re-estimate
        ``elapsed + remaining epochs x (that epoch's time - compilation)``. Later epochs
        print nothing."""
        if self._t0 is None:
            raise ValueError("Plan.epoch_done before Plan.start()")
        if epochs_done != 1:
            return None
        elapsed = self.clock() - self._t0
        steady = max(elapsed - (self.compile_s or 0.0), 0.0)
        total_s = elapsed + steady * (self.epochs - 1)
        self.estimate_s = total_s
        text = (
            f"re-estimate after epoch 1 ({format_duration(elapsed)}, compilation included): "
            f"~{format_duration(steady)} per epoch, ~{format_duration(total_s)} in all, "
            f"~{format_duration(total_s - elapsed)} to go"
        )
        return self._print(self._long(text, total_s))
