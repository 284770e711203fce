"""experiments.bench_terms compares each framework with its own summed gradient."""

import numpy as np

from experiments._support import terms_timing


def test_each_framework_is_divided_by_its_own_sum():
    rows = terms_timing.run(k_values=(2,), size="tiny", runs=2, warmup=0, torch_threads=1)
    by = {r["variant"]: r for r in rows}
    assert set(by) == set(terms_timing.ALGORITHMS)
    for fw in ("jax", "torch"):
        base = by[f"{fw} sum"]["ms"]
        assert by[f"{fw} sum"]["ratio"] == 1.0
        for name, r in by.items():
            if name.startswith(fw):
                np.testing.assert_allclose(r["ratio"], r["ms"] / base, rtol=1e-9)
                assert r["algorithm"] == terms_timing.ALGORITHMS[name]
