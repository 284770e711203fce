"""Which process prints: process 0 of a multi-process run, or the only process.

Kept apart from :mod:`jaxgrad.training.distributed` so that printing and writing outputs
(tables, progress, plan, files) never pull in the multi-process runtime.
"""

from __future__ import annotations

import jax

__all__ = ["is_main"]


def is_main() -> bool:
    """True in process 0: the one that logs, draws progress bars and writes outputs.

    True without a joined runtime, without starting a backend (``jaxgrad.report.io`` asks
    before any write, also in programs that never touch a device).
    """
    return not jax.distributed.is_initialized() or jax.process_index() == 0
