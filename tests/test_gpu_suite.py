"""``python -m experiments.gpu_suite --smoke``: every part runs at tiny sizes on the CPU and the
JSON/Markdown it writes are complete and honest (CPU figures never presented as GPU ones)."""

import importlib.util
import json

import jax
import pytest

from experiments import gpu_suite


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    gpu_suite.main(gpu_suite.Config(smoke=True, out=str(out)))
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text()


def test_every_part_ran_and_nothing_failed(smoke):
    res, md = smoke
    assert res["errors"] == [] and "FAILED" not in md
    cfg = gpu_suite.smoke_overrides(gpu_suite.Config(smoke=True))
    want = {
        (p, True, b, k) for p in gpu_suite.PRECISIONS for b in cfg.batch for k in (1, cfg.chunk)
    }
    want |= {("bf16", False, b, k) for b in cfg.batch for k in (1, cfg.chunk)}
    got = {(r["precision"], r["attn_dropout"], r["batch"], r["scanned"]) for r in res["vit"]}
    assert got == want
    assert all(r["ms_per_step"] > 0 and r["tflops"] > 0 for r in res["vit"])
    torch_done = {r["variant"] for r in res["torch"]}
    torch_skipped = {s["part"] for s in res["skipped"]}
    if importlib.util.find_spec("torch") is None:  # the optional extra: skipped, and said so
        assert torch_done == set() and "torch" in torch_skipped
    else:
        assert torch_done | {"compile"} == {"eager", "amp", "compile"}
        assert "torch compile" in torch_skipped  # said, not silently dropped
    assert {r["k"] for r in res["terms"]} == {2} and len(res["clip"]) == 1  # smoke: K=2 only
    assert res["peaks"]["measured"] > 0


def test_no_gpu_figure_claimed_on_cpu(smoke):
    res, md = smoke
    if jax.devices()[0].platform == "gpu":
        pytest.skip("this checks the CPU smoke run")
    rows = res["vit"] + res["torch"] + res["clip"] + res["terms"]
    assert {r["platform"] for r in rows} == {"cpu"} == {res["device"]["platform"]}
    assert res["peaks"]["datasheet"] is None
    assert all(r["mfu_datasheet"] is None for r in rows if "mfu_datasheet" in r)
    assert all(r["mfu_measured"] > 0 for r in res["vit"])  # against the measured CPU peak
    assert "GPU figures: not measured" in md and "(cpu)" in md.splitlines()[0]


@pytest.mark.parametrize("recipe", ["seed", "strong"])
def test_end_to_end_runs_are_complete_and_consistent(smoke, recipe):
    res, md = smoke
    run = res[recipe]
    assert run["epochs_done"] == run["epochs_scheduled"] == 2 and run["capped_at_s"] is None
    walls = [c["wall_from_launch_s"] for c in run["curve"]]
    assert [c["epoch"] for c in run["curve"]] == [1, 2]
    assert all(w is not None for w in walls) and walls == sorted(walls)
    assert walls[-1] <= run["wall_from_launch_s"]
    assert run["val_accuracy"] == run["curve"][-1]["val_accuracy"]
    assert 0.0 <= run["val_accuracy"] <= 1.0
    for pct in (79, 85):  # the first epoch at or above the target, else None ("not reached")
        hits = [c["wall_from_launch_s"] for c in run["curve"] if c["val_accuracy"] >= pct / 100]
        assert run[f"time_to_{pct}_s"] == (hits[0] if hits else None)
    assert f"## {recipe} recipe end to end" in md and run["command"] in md
