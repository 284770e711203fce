"""XLA compiler options shared across jaxgrad."""

from __future__ import annotations

__all__ = ["RUN_ONCE"]

#: ``jax.jit(..., compiler_options=RUN_ONCE)`` for programs that run once or briefly (model init,
#: the doctor's summaries, the coverage probe, tiny demo runs): XLA's backend optimisation level 0
#: compiles several times faster on CPU, and their run time does not matter. Float results may
#: differ from an optimised build in the last ulp.
RUN_ONCE = {"xla_backend_optimization_level": 0}
