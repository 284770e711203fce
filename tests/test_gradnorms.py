"""Per-module gradient norms inside the jitted step, the vanishing/exploding monitor, the PNG."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgrad.inspect.gradnorms import (
    GradNormMonitor,
    GradNormWarning,
    make_grad_norm_metrics,
    module_groups,
)
from jaxgrad.training.step import init_train_state, make_multi_step, make_train_step

PARAMS = {
    "enc": {"layers": {"0": {"w": jnp.ones(4)}, "1": {"w": jnp.ones(4)}}, "b": jnp.ones(2)},
    "head": {"w": jnp.ones((2, 3))},
    "scale": jnp.ones(()),
}


def test_module_groups_by_depth_and_prefix():
    # tree_leaves order: enc/b, enc/layers/0/w, enc/layers/1/w, head/w, scale
    assert module_groups(PARAMS) == {"enc": [0, 1, 2], "head": [3], "scale": [4]}
    assert module_groups(PARAMS, depth=2) == {
        "enc": [0],
        "enc/layers": [1, 2],
        "head": [3],
        "scale": [4],
    }
    assert module_groups(PARAMS, depth=3)["enc/layers/1"] == [2]
    got = module_groups(PARAMS, prefixes=["enc", "enc/layers/1"])
    assert got == {"enc": [0, 1], "enc/layers/1": [2], "other": [3, 4]}
    with pytest.raises(ValueError, match="depth must be >= 1"):
        module_groups(PARAMS, depth=0)


def _loss(params, batch, key):
    """Linear in every leaf: d/d enc/* = 2, d/d head/w = 3, d/d scale = batch.sum()."""
    del key
    enc = sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(params["enc"]))
    return 2 * enc + 3 * jnp.sum(params["head"]["w"]) + params["scale"] * jnp.sum(batch), {}


@pytest.mark.parametrize("jit", [True, False])
def test_norms_in_the_train_step_match_hand_derived(jit):
    extra = make_grad_norm_metrics(PARAMS)
    step = make_train_step(_loss, optax.sgd(0.1), extra_metrics=extra, jit=jit, donate=False)
    _, m = step(init_train_state(PARAMS, optax.sgd(0.1)), jnp.full((3,), 0.5), jax.random.key(0))
    assert float(m["grad_norm/enc"]) == pytest.approx(2 * math.sqrt(10))  # 10 entries, each 2
    assert float(m["grad_norm/head"]) == pytest.approx(3 * math.sqrt(6))
    assert float(m["grad_norm/scale"]) == pytest.approx(1.5)
    total = math.sqrt(sum(float(m[f"grad_norm/{k}"]) ** 2 for k in ("enc", "head", "scale")))
    assert total == pytest.approx(float(m["grad_norm"]), rel=1e-6)


def test_mismatched_params_raise():
    extra = make_grad_norm_metrics(PARAMS)
    with pytest.raises(ValueError, match="built for 5 leaves but the gradient has 1"):
        extra({"w": jnp.ones(2)}, None, None)


def test_monitor_alerts_once_per_module_and_kind():
    mon = GradNormMonitor(warmup=3, patience=2)
    series = {"ok": [1.0] * 8, "fades": [1.0, 1.0, 1.0, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8],
              "blows": [1.0, 1.0, 1.0, 2e3, 5e3, 1e4, 1e5, 1e6]}  # fmt: skip
    with pytest.warns(GradNormWarning) as caught:
        for i in range(8):
            mon.record(i, {f"grad_norm/{k}": v[i] for k, v in series.items()} | {"loss": 0.0})
    assert len(caught) == 2
    assert mon.alerts == [
        "step 4: gradient norm of 'fades' is vanishing (1e-05; reference 1)",
        "step 4: gradient norm of 'blows' is exploding (5e+03; reference 1)",
    ]
    assert mon.history["ok"] == (list(range(8)), [1.0] * 8)


def test_monitor_flags_nan_at_once_and_zero_from_the_start():
    mon = GradNormMonitor(patience=2, warn=False)
    assert mon.record(0, {"grad_norm/a": np.nan, "grad_norm/text": 0.0}) == [
        "step 0: gradient norm of 'a' is non-finite (nan; reference n/a)"
    ]
    assert mon.record(1, {"grad_norm/a": 1.0, "grad_norm/text": 0.0}) == [
        "step 1: gradient norm of 'text' is vanishing (0; reference n/a)"
    ]


def test_monitor_reads_stacked_multi_step_metrics_and_plots(tmp_path):
    extra = make_grad_norm_metrics(PARAMS, depth=2)
    steps = make_multi_step(_loss, optax.sgd(0.1), extra_metrics=extra, donate=False)
    batches = jnp.stack([jnp.full((3,), float(k)) for k in range(4)])  # scale's grad = 3k
    _, m = steps(init_train_state(PARAMS, optax.sgd(0.1)), batches, jax.random.key(0))
    mon = GradNormMonitor(warn=False)
    mon.record(10, jax.device_get(m))
    s, v = mon.history["scale"]
    assert s == [10, 11, 12, 13]
    np.testing.assert_allclose(v, [0.0, 3.0, 6.0, 9.0])
    assert set(mon.history) == {"enc", "enc/layers", "head", "scale"}
    png = mon.plot(tmp_path / "norms.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_monitor_bad_inputs():
    with pytest.raises(ValueError, match="warmup and patience must be >= 1"):
        GradNormMonitor(patience=0)
    with pytest.raises(ValueError, match="nothing recorded yet"):
        GradNormMonitor().plot("unused.png")


def test_plot_leaves_always_zero_series_out_of_the_log_legend(tmp_path, monkeypatch):
    import jaxgrad.report.plots

    figs = []
    monkeypatch.setattr(jaxgrad.report.plots, "save_figure", lambda fig, path: figs.append(fig))
    mon = GradNormMonitor(warn=False)
    for i in range(3):
        mon.record(i, {"grad_norm/image": 1.0 + i, "grad_norm/text": 0.0, "grad_norm/head": 0.5})
    mon.plot(tmp_path / "norms.png")
    (ax,) = figs[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["image", "head"]
    assert "text" in figs[0]._supxlabel.get_text()  # named under the plot instead
    assert len({(line.get_color(), line.get_linestyle()) for line in ax.lines}) == 2
