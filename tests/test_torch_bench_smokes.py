"""The benchmarks that time PyTorch beside JAX, on their ``tiny()`` configs (torch pass)."""

import dataclasses
import math

import pytest

STANDARD_PROMOTION = "runs NNX models and optax steps (see conftest)"


def test_bench_clip_features_embeds_as_transformers_does_then_times_both():
    pytest.importorskip("transformers")
    from experiments import bench_clip_features as exp

    res = exp.main(dataclasses.replace(exp.Config.tiny(), threads=0))  # no pinning in pytest
    assert res["max_abs_diff"] < 1e-4  # the same tower on both sides before it is timed
    assert all(math.isfinite(x) and x > 0 for x in (res["jax_img_per_s"], res["torch_img_per_s"]))


def test_profile_vit_splits_both_steps_into_op_families():
    from experiments import profile_vit as exp

    res = exp.main(exp.Config.tiny())
    assert res["jax_ms"] > 0 and res["torch_ms"] > 0
    assert "matmul" in res["jax"] and "matmul" in res["torch"]
    for side, total in (("jax", res["jax_ms"]), ("torch", res["torch_ms"])):
        assert sum(res[side].values()) == pytest.approx(total, rel=1e-6)  # shares of the step
