"""experiments.bench_pinn runs both frameworks' PINN steps (tiny sizes, eager PyTorch only:
torch.compile takes a minute to compile) and the PyTorch anchor anneals λ_bc like jaxgrad."""

import dataclasses

import numpy as np
import pytest

from experiments import bench_pinn
from experiments._support.bench_pinn_torch import make_torch_step

STANDARD_PROMOTION = "optax 0.2.8's schedules and Adam mix int32 step counters with floats"


@pytest.mark.slow
def test_bench_rows_for_every_contender_and_variant():
    cfg = dataclasses.replace(
        bench_pinn.Config.tiny(), contenders=("jax-forward", "torch-eager"), runs=1, warmup=0
    )
    rows = bench_pinn.bench(cfg)
    got = {(r["variant"], r["contender"]) for r in rows}
    assert got == {(v, c) for v in cfg.variants for c in cfg.contenders}
    assert all(np.isfinite(r["steps_per_s"]) and r["steps_per_s"] > 0 for r in rows)


def test_torch_anchor_anneals_after_the_first_step():
    plain = make_torch_step("eager", annealed=False, width=8, depth=2, batch=16)
    annealed = make_torch_step("eager", annealed=True, width=8, depth=2, batch=16)
    assert plain() == 1.0
    lam = annealed()
    assert np.isfinite(lam) and lam > 1.0  # λ̂ = max|∇L_r| / mean|∇λL_bc| >> 1 at init
    assert annealed() == lam  # the next update is `period` steps later
