"""The benchmarks no other test runs, on their ``tiny()`` configs: each runs to the end and
reports finite, positive figures (their speed claims live in BENCHMARKS.md, not here)."""

import dataclasses
import json
import math
import subprocess
import sys

STANDARD_PROMOTION = "runs NNX models and optax steps (see conftest)"


def _finite_positive(*xs):
    return all(math.isfinite(x) and x > 0 for x in xs)


def test_bench_clip_frozen_times_both_sides_and_writes_what_it_printed(tmp_path, capsys):
    from experiments import bench_clip_frozen as exp

    out = tmp_path / "frozen.json"
    # threads=0: pinning would confine the test process to one core for the rest of the suite
    res = exp.main(dataclasses.replace(exp.Config.tiny(), threads=0, out=str(out)))
    assert _finite_positive(res["steps_per_s_cache"], res["steps_per_s_tower"],
                            res["one_batch_extraction_s"])  # fmt: skip
    assert len(res["ms_cache"]) == len(res["ms_tower"]) == exp.Config.tiny().runs
    assert json.loads(out.read_text())["cache_over_tower_speed"] == res["cache_over_tower_speed"]
    assert "text encoder from the feature cache" in capsys.readouterr().out


def test_bench_guard_times_old_and_new_guards():
    from experiments import bench_guard as exp

    res = exp.main(exp.Config.tiny())
    assert _finite_positive(res["ratio_wall"], res["ratio_cpu"], *res["new_ms"].values())


def test_bench_siglip_memory_compiles_every_form_on_two_devices():
    # its own process: --devices 2 sets XLA_FLAGS before jax starts a backend
    cmd = [sys.executable, "-m", "experiments.bench_siglip_memory", "--tiny"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for form in ("full siglip_loss", "siglip_loss_chunked", "sharded features", "siglip_loss_ring"):
        assert form in proc.stdout
