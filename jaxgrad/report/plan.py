"""The plan line printed before a long run: what will run, where, and how long it will take.

Never a silent multi-hour CPU run::

    plan = Plan(name="ViT seed recipe", params=12_673_642, steps_per_epoch=703, epochs=10,
                smaller=("--dim 96 --depth 3 --train-limit 10000", 0.004))
    plan.announce()                      # model size, steps, device
    ... first chunk finished ...
    plan.first_chunk(steps=20, seconds=140.0)   # "~82 min per epoch on this CPU; ..."

``smaller`` is a cheaper command line and its cost as a fraction of this run's (steps x FLOPs
per step); the estimate for it is scaled from this run's first chunk.
"""

from __future__ import annotations

import os
import sys
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
        if is_main():  # one plan line for a multi-process run
            print(line, file=self.stream, flush=True)
        return line

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
        where = "this CPU" if self.device.startswith("cpu") else self.device
        upper = ", compilation included: an upper bound" if compiled else ""
        text = (
            f"estimate from the first {steps} steps ({format_duration(seconds)}{upper}): "
            f"~{format_duration(epoch_s)} per epoch, ~{format_duration(total_s)} in all on {where}"
        )
        if total_s > self.long_run_s:
            text = "LONG RUN: " + text
            if self.smaller is not None:
                flags, frac = self.smaller
                text += f"; `{flags}` gives a ~{format_duration(total_s * frac)} run"
            text += " (Ctrl-C to stop)"
        if is_main():
            print(text, file=self.stream, flush=True)
        return text
