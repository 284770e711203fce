"""CLIP-style training data-parallel: one contrastive loss over the global batch on N devices.

A contrastive loss is not a mean of per-example terms: each of the B images is scored against
all B captions (the ``[B, B]`` logits), so splitting the batch over devices must not split the
negatives. open_clip does it by hand (``gather_with_grad``: all-gather the features of every
rank, a custom backward); big_vision writes the loss on global arrays. We do the latter: the
batch is split over the mesh's ``data`` axis inside the jitted step
(:func:`jaxgrad.training.loop.make_run_chunk` with ``mesh=``), the towers run on each device's rows, and
the loss is the very same ``clip_loss`` / ``siglip_loss`` on the global ``[B, D]`` features.
GSPMD then inserts the all-gather the ``[B, B]`` matrix needs, and its transpose (a
reduce-scatter / all-reduce) in the backward pass, so gradients flow through the gather and
N-device training equals 1-device training on the same global batch up to float32 reduction
order. :func:`collectives` lists the collectives of a compiled step (what the tests check and
docs/results/clip.md shows).

The dataset, params, optimizer state and keys are replicated on every device of every process
(:func:`place_for_training`), as for the ViT experiment: every process holds the whole dataset
and the same seeds, and the step gathers its batch on the device.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from jaxgrad.errors import ConfigError
from jaxgrad.training.distributed import replicate
from jaxgrad.training.parallel import place_state, replicated

__all__ = ["BatchLayout", "batch_layout", "collectives", "place_for_training"]


class BatchLayout(NamedTuple):
    """How a global batch splits over the mesh (printed in the plan line, recorded in config)."""

    global_batch: int  # pairs per step over every device: the B of the B x B logits
    devices: int  # devices of the mesh (every process's)
    processes: int  # processes taking part
    per_device: int  # rows each device encodes per step

    def describe(self) -> str:
        return (
            f"global batch {self.global_batch} = {self.devices} device"
            f"{'s' * (self.devices > 1)} x {self.per_device} ({self.processes} process"
            f"{'es' * (self.processes > 1)})"
        )

    def record(self) -> dict:
        return {"global_batch": self.global_batch, "per_device_batch": self.per_device,
                "devices": self.devices, "processes": self.processes}  # fmt: skip


def batch_layout(global_batch: int, mesh: Mesh) -> BatchLayout:
    """The split of ``global_batch`` over ``mesh``; ConfigError when it does not divide."""
    n = mesh.size
    if global_batch % n:
        raise ConfigError(
            f"--batch-size {global_batch} (the global batch) does not split over the {n} "
            f"devices of the mesh: use a multiple of {n}"
            + ("" if jax.process_count() > 1 else f", or --devices that divides {global_batch}")
        )
    return BatchLayout(global_batch, n, jax.process_count(), global_batch // n)


def place_for_training(state: Any, keys: Any, data: Any, mesh: Mesh) -> tuple[Any, Any, Any]:
    """``(state, keys, data)`` replicated over ``mesh`` (global arrays on every device of every
    process); on a 1-device mesh: ``data`` as device arrays, the rest unchanged."""
    if mesh.size == 1:
        return state, keys, jax.tree.map(jax.numpy.asarray, data)
    data = jax.device_put(jax.tree.map(np.asarray, data), replicated(mesh))
    return place_state(state, mesh), replicate(keys, mesh), data


_COLLECTIVE = re.compile(
    r"=\s*\S+\s+(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?:-start)?\("
)


def collectives(compiled: jax.stages.Compiled) -> Counter:
    """Collective ops in a compiled program's HLO, counted by kind (``all-gather``, ...)."""
    text = compiled.as_text()
    return Counter(m.group(1) for m in _COLLECTIVE.finditer(text))
