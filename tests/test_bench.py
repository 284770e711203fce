"""jaxgrad.inspect.bench (the timing helper) and experiments.bench (the benchmark CLI) on tiny sizes."""

import dataclasses
import importlib.util
import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxgrad.inspect.bench import (
    H100_BF16_PEAK_TFLOPS,
    Timing,
    bench_jit,
    bench_loop,
    clock_fn,
    compile_timed,
    interleave,
    measure,
    op_time_shares,
    profile_jit,
    profile_ops,
    xla_flops,
)
from jaxgrad.models.vit import ViT, ViTConfig, vit_forward_flops
from jaxgrad.report.cli import parse
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state, make_multi_step, make_train_step
from jaxgrad.training.xla import RUN_ONCE

STANDARD_PROMOTION = "optax 0.2.8 mixes int32 step counters with floats (Adam, MultiSteps)"

HAS_TORCH = importlib.util.find_spec("torch") is not None

# ---------------------------------------------------------------- the timing helper


def test_measure_calls_warmup_plus_runs_times_calls_per_run(monkeypatch):
    calls, clock = [], [0.0]  # a fake perf_counter: call i takes i + 1 seconds
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def call():
        calls.append(1)
        clock[0] += len(calls)
        return jnp.zeros(())

    times = measure(call, runs=4, warmup=2, calls_per_run=3)
    assert len(calls) == 2 + 4 * 3
    # run r times calls 3r+3..3r+5 (after 2 warm-ups), per call: their mean
    assert times == pytest.approx([4.0, 7.0, 10.0, 13.0])


@pytest.fixture
def fake_clocks(monkeypatch):
    """Fake wall and CPU clocks: each read of the wall clock advances it by 2 s, each read of the
    CPU clock by 3 s (so a sample, two reads apart, is 2 s of wall or 3 s of CPU time)."""
    clocks = {"wall": [0.0, 2.0], "cpu": [0.0, 3.0]}

    def reader(name):
        def read():
            clocks[name][0] += clocks[name][1]
            return clocks[name][0]

        return read

    monkeypatch.setattr(time, "perf_counter", reader("wall"))
    monkeypatch.setattr(time, "process_time", reader("cpu"))
    return {"wall": 2.0, "cpu": 3.0}


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_every_timer_samples_on_the_clock_asked_for(fake_clocks, clock):
    per = fake_clocks[clock]
    assert measure(lambda: 0, runs=3, warmup=1, sync=lambda _: None, clock=clock) == (per,) * 3
    t = bench_loop(lambda: 0, name="loop", items=6, runs=2, sync=lambda _: None, clock=clock)
    assert t.times_s == (per, per) and t.clock == t.to_dict()["clock"] == clock
    assert t.items_per_s == pytest.approx(6 / per)
    t = bench_jit(jax.jit(lambda x: x + 1), jnp.zeros(()), name="jit", items=1, runs=2,
                  warmup=1, clock=clock)  # fmt: skip
    assert t.times_s == (per, per) and t.clock == clock
    with pytest.raises(ValueError, match="clock must be one of"):
        clock_fn("gpu")


def test_interleave_alternates_the_order_and_times_both_clocks_per_call(fake_clocks):
    seen = []
    calls = {n: (lambda n=n: seen.append(n)) for n in ("a", "b")}
    t = interleave(calls, runs=3, warmup=2, calls_per_run=2, sync=lambda _: None)
    assert seen == ["a"] * 2 + ["b"] * 2 + [
        "a",
        "a",
        "b",
        "b",
        "b",
        "b",
        "a",
        "a",
        "a",
        "a",
        "b",
        "b",
    ]
    for name in calls:  # one wall sample is 2 s over 2 calls; the CPU clock is read around it
        assert t[name] == {"wall": [1.0] * 3, "cpu": [1.5] * 3}
    for bad in ({"runs": 0}, {"warmup": -1}, {"calls_per_run": 0}):  # nothing timed: refused
        with pytest.raises(ValueError, match="runs >= 1, warmup >= 0"):
            interleave(calls, **{"runs": 1, "warmup": 0, **bad})
    with pytest.raises(ValueError, match="0 calls"):
        interleave({}, runs=1, warmup=0)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_torch_rows_sample_on_the_clock_asked_for(fake_clocks, clock):
    from experiments._support.bench_torch import time_torch

    skipped = []
    ((variant, b, t),) = time_torch(ViTConfig.tiny(), variants=("eager",), batches=(2,), runs=2,
                                    warmup=0, threads=1, clock=clock, skipped=skipped)  # fmt: skip
    assert skipped == [] and (variant, b) == ("eager", 2)
    assert t.times_s == (fake_clocks[clock],) * 2 and t.compile_s == fake_clocks[clock]
    assert t.clock == clock


@pytest.mark.parametrize("kw", [{"runs": 0}, {"warmup": -1}, {"calls_per_run": 0}])
def test_measure_rejects_bad_counts(kw):
    args = {"runs": 2, "warmup": 1, "calls_per_run": 1, **kw}
    with pytest.raises(ValueError, match="need runs >= 1"):
        measure(lambda: None, sync=lambda _: None, **args)


def test_compile_timed_needs_a_jitted_function():
    with pytest.raises(TypeError, match=r"jax\.jit-wrapped"):
        compile_timed(lambda x: x, 1.0)


def test_xla_flops_of_a_matmul_is_two_m_k_n():
    m, k, n = 16, 32, 8
    compiled, seconds = compile_timed(jax.jit(jnp.matmul), jnp.ones((m, k)), jnp.ones((k, n)))
    assert seconds > 0
    assert xla_flops(compiled) == 2 * m * k * n


def test_timing_statistics_and_rates_follow_their_definitions():
    times = tuple(float(t) for t in range(1, 11))  # 1..10 s
    t = Timing("x", 0.5, times, items_per_call=20, steps_per_call=2, flops_per_call=3e12)
    assert t.median_s == 5.5  # mean of the 5th and 6th of ten sorted samples
    assert t.p10_s == pytest.approx(1.9) and t.p90_s == pytest.approx(9.1)  # linear interp.
    assert t.ms_per_step == pytest.approx(5500 / 2)
    assert t.items_per_s == pytest.approx(20 / 5.5)
    assert t.tflops == pytest.approx(3 / 5.5)
    assert t.mfu is None  # no peak given (CPU)
    with_peak = dataclasses.replace(t, peak_tflops=H100_BF16_PEAK_TFLOPS)
    assert with_peak.mfu == pytest.approx(3 / 5.5 / 787)


def test_bench_jit_threads_a_donated_carry_and_keeps_both_flop_counts():
    step = jax.jit(lambda s, x: (s + x @ x.T, s.sum()), donate_argnums=(0,))
    x = jnp.ones((8, 4))
    t = bench_jit(step, jnp.zeros((8, 8)), x, name="carry", items=8, runs=5, warmup=2, carry=True)
    assert len(t.times_s) == 5 and t.compile_s > 0
    assert t.flops_source == "xla" and t.xla_flops_per_call >= 2 * 8 * 4 * 8
    analytic = bench_jit(
        step, jnp.zeros((8, 8)), x, name="a", items=8, runs=2, warmup=0, carry=True, flops=512.0
    )
    assert analytic.flops_source == "analytic" and analytic.flops_per_call == 512.0
    assert analytic.xla_flops_per_call == t.xla_flops_per_call
    d = analytic.to_dict()
    for k in ("median_s", "p10_s", "p90_s", "ms_per_step", "items_per_s", "tflops", "mfu", "runs"):
        assert k in d
    json.dumps(d)  # JSON-ready as is


@pytest.mark.parametrize(
    "durations, compile_s",
    [((0.9, 0.1, 0.4, 0.2), 0.9 - 0.2), ((0.1, 0.3, 0.3, 0.3), 0.0)],  # first − median, ≥ 0
    ids=["compiles", "first-call-fastest"],
)
def test_bench_loop_counts_the_first_call_as_compile_time(monkeypatch, durations, compile_s):
    clock = [0.0]  # a fake perf_counter that each call advances by its scripted duration
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    scripted = iter(durations)
    t = bench_loop(
        lambda: clock.__setitem__(0, clock[0] + next(scripted)),
        name="loop",
        items=10,
        runs=3,
        sync=lambda _: None,
    )
    assert t.times_s == pytest.approx(durations[1:])  # the first call is not a sample
    assert t.compile_s == pytest.approx(compile_s)
    assert t.flops_source is None and t.tflops is None
    assert bench_loop(lambda: 0, name="f", items=1, runs=1, flops=5.0).flops_source == "analytic"


def test_profile_ops_ranks_the_matmul_of_a_matmul_program_first():
    f = jax.jit(lambda a: jnp.tanh(a @ a) @ a)
    x = jnp.ones((128, 128))
    compiled, _ = compile_timed(f, x)
    ops = profile_ops(lambda: f(x), calls=3, hlo_text=compiled.as_text(), top=None)
    assert ops and ops[0]["ms_per_call"] >= ops[-1]["ms_per_call"] > 0
    assert "dot_general" in ops[0]["label"]  # the labels come from the HLO metadata
    assert any("tanh" in op["label"] for op in ops)


def test_profile_jit_threads_a_donated_carry_and_labels_the_top_op():
    # a 256³ matmul (34 MFLOP) dwarfs the tanh of one 256-row: the top op is the dot (a tanh of
    # the whole product took as long as two such dots on a Sapphire Rapids core)
    step = jax.jit(lambda s, a: (s + 1.0, a @ a, jnp.tanh(a[0])), donate_argnums=(0,))
    prof = profile_jit(step, jnp.zeros(()), jnp.ones((256, 256)), carry=True, top=2)
    assert len(prof["top_ops"]) == 2 and "dot_general" in prof["top_ops"][0]["label"]
    assert prof["op_time_share"]["matmul"] > 0
    assert sum(prof["op_time_share"].values()) == pytest.approx(1.0)


def test_op_time_shares_bucket_by_name_and_label_and_sum_to_one():
    ops = [
        {"op": "while.3", "label": "jit(step)/jvp(jit(_bernoulli))/jit(_uniform)/while", "ms_per_call": 2.0},
        # the inlined masks of jaxgrad.models.functional.dropout carry its name scope
        {"op": "select_fusion", "label": "jit(step)/dropout/select_n", "ms_per_call": 1.0},
        {"op": "ynn_fusion.1", "label": "jit(step)/jvp()/dot_general", "ms_per_call": 2.0},
        {"op": "ynn_fusion.2", "label": "jit(step)/jvp()/reduce_max", "ms_per_call": 1.0},
        {"op": "copy.7", "label": "", "ms_per_call": 1.0},
        {"op": "transpose_copy_fusion.2", "label": "jit(step)/squeeze", "ms_per_call": 1.0},
        {"op": "add_fusion", "label": "jit(step)/add", "ms_per_call": 1.0},
        # an element-wise fusion named after a bitcast inside it is not a copy
        {"op": "add_bitcast_fusion", "label": "jit(step)/add", "ms_per_call": 1.0},
    ]  # fmt: skip
    shares = op_time_shares(ops)
    assert shares == pytest.approx({"dropout RNG": 0.3, "matmul": 0.2, "layout/copy": 0.2,
                                    "other": 0.2, "softmax/norm/gelu": 0.1})  # fmt: skip
    assert list(shares)[0] == "dropout RNG"  # largest first


def test_vit_forward_flops_matches_the_anchor_and_hand_count():
    seed = ViTConfig.seed()
    f = vit_forward_flops(**_flop_kwargs(seed))
    assert abs(f - 1.69e9) / 1.69e9 < 0.005  # anchors.md: "about 1.69 GFLOP forward per image"
    # one block, one token, no attention: 2·dim·3·inner + 2·inner·dim + 4·dim·mlp (+ N² term)
    one = ViTConfig(image_size=4, patch_size=4, dim=8, depth=1, heads=1, dim_head=4, mlp_dim=16)
    n, inner = 2, 4
    expect = 2 * 1 * 48 * 8 + (2 * n * 8 * 12 + 4 * n * n * inner + 2 * n * 4 * 8 + 4 * n * 8 * 16)
    assert vit_forward_flops(**_flop_kwargs(one)) == expect + 2 * 8 * 10
    with pytest.raises(ValueError, match="not divisible"):
        vit_forward_flops(**{**_flop_kwargs(seed), "patch_size": 5})


def test_vit_analytic_flops_agree_with_xla_for_a_forward_pass(key):
    from experiments._support.vit_bench import vit_graphdef

    vit, _, params, _ = _tiny_vit_setup("default", key)
    graphdef = vit_graphdef(vit)
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
    compiled, _ = compile_timed(forward, params, jnp.zeros((4, 32, 32, 3)))
    analytic = 4 * vit_forward_flops(**_flop_kwargs(vit))
    # XLA also counts LayerNorm/softmax/GELU elementwise work: a little above the matmul count
    assert analytic <= xla_flops(compiled) <= 1.5 * analytic


def _flop_kwargs(cfg: ViTConfig) -> dict:
    names = ("image_size", "patch_size", "dim", "depth", "heads", "dim_head", "mlp_dim")
    return {n: getattr(cfg, n) for n in names} | {"num_classes": cfg.num_classes}


# ---------------------------------------------------------------- the benchmark experiment


def _rbg(key) -> jax.Array:
    """An rbg key from the test's key: the tiny train step compiles ~1.5x faster on CPU than
    with threefry (whose hash is inlined per dropout mask), and the CLI test below uses rbg
    too, so the jitted parameter init is compiled once for the whole file."""
    return jax.random.key(int(jax.random.bits(key, (), jnp.uint32)), impl="rbg")


def _tiny_vit_setup(precision: str, key):
    from experiments._support.vit_bench import vit_config, vit_loss, vit_params

    vit = vit_config("tiny", precision)
    keys = named_keys(_rbg(key), "init", "step", "data")
    params = vit_params(vit, keys["init"])
    return vit, keys, params, vit_loss(vit)


def test_scanned_steps_equal_single_steps_for_tiny_vit_with_dropout(key):
    from experiments._support.vit_bench import synthetic

    vit, keys, params, loss_fn = _tiny_vit_setup("default", key)
    assert vit.dropout > 0 and vit.emb_dropout > 0  # dropout on: the keys matter
    opt, n = optax.adam(1e-3), 3
    data = synthetic(keys["data"], (n, 4), vit)
    state = init_train_state(params, opt)
    batch0 = jax.tree.map(lambda a: a[0], data)
    # both programs compiled the same way; XLA's backend optimisation off halves CPU compile time
    fast = RUN_ONCE
    single = make_train_step(loss_fn, opt, donate=False)
    single = single.lower(state, batch0, keys["step"]).compile(compiler_options=fast)
    multi = make_multi_step(loss_fn, opt, donate=False)
    multi = multi.lower(state, data, keys["step"]).compile(compiler_options=fast)
    state, losses = init_train_state(params, opt), []
    for i in range(n):
        state, m = single(state, jax.tree.map(lambda a, i=i: a[i], data), keys["step"])
        losses.append(m["loss"])
    scanned, ms = multi(init_train_state(params, opt), data, keys["step"])
    assert int(scanned.step) == int(state.step) == n
    np.testing.assert_allclose(ms["loss"], np.stack(losses), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a different dropout key must give different params, or the comparison above proves nothing
    other, _ = multi(init_train_state(params, opt), data, jax.random.fold_in(keys["step"], 1))
    diff = max(
        float(jnp.abs(a - b).max())
        for a, b in zip(*map(jax.tree.leaves, (other.params, scanned.params)))
    )
    assert diff > 1e-6


def _dot_dtypes(fn, *args) -> set[str]:
    """Output dtypes of every dot_general in ``fn``'s jaxpr, nested jaxprs included."""
    return set(re.findall(r":(\w+)\[[\d,]*\] = dot_general", str(jax.make_jaxpr(fn)(*args))))


def _master_dtypes_and_matmul_dtypes(precision: str, key) -> tuple[set, set]:
    """(dtypes of params + optimizer state after one step, output dtypes of the matmuls)."""
    from experiments._support.vit_bench import synthetic

    opt = optax.adam(1e-3)
    vit, keys, params, loss_fn = _tiny_vit_setup(precision, key)
    batch = synthetic(keys["data"], (2,), vit)
    grad_fn = jax.grad(lambda p: loss_fn(p, batch, keys["step"])[0])
    step = make_train_step(loss_fn, opt, jit=False)
    new_state, metrics = jax.eval_shape(step, init_train_state(params, opt), batch, keys["step"])
    assert metrics["loss"].dtype == jnp.float32
    master = jax.tree.leaves(new_state.params) + jax.tree.leaves(new_state.opt_state)
    return {x.dtype for x in master if x.ndim > 0}, _dot_dtypes(grad_fn, params)


def test_bf16_mode_computes_in_bf16_and_keeps_fp32_master_params(key):
    master, matmuls = _master_dtypes_and_matmul_dtypes("bf16", key)
    assert master == {jnp.dtype(jnp.float32)}
    assert "bf16" in matmuls
    # the same probe sees no bf16 matmul in float32 mode (so it can tell the two apart)
    assert "bf16" not in _master_dtypes_and_matmul_dtypes("default", key)[1]


def test_bench_cli_help_and_bad_flags(capsys):
    from experiments.bench import Config

    with pytest.raises(SystemExit) as e:
        parse(Config, ["--help"])
    assert e.value.code == 0 and "--precision" in capsys.readouterr().out
    for bad in (["--batch", "0"], ["--runs", "0"], ["--epoch-images", "4"], ["--size", "huge"]):
        with pytest.raises(SystemExit) as e:
            parse(Config, bad)
        assert e.value.code == 2


ROW_FIELDS = {
    "scenario", "framework", "precision", "batch", "name", "compile_s", "times_s", "runs",
    "items_per_call", "steps_per_call", "flops_per_call", "flops_source", "xla_flops_per_call",
    "peak_tflops", "clock", "median_s", "p10_s", "p90_s", "ms_per_step", "items_per_s", "tflops", "mfu",
}  # fmt: skip


def test_reduced_size_is_the_cpu_anchors_vit():
    from experiments._support.vit_bench import vit_config

    vit = vit_config("reduced", "highest")
    params = nnx.state(nnx.eval_shape(lambda: ViT(vit, rngs=nnx.Rngs(0))), nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(params)) == 346_570  # anchors.md
    assert (vit.dim, vit.depth, vit.heads, vit.dim_head, vit.mlp_dim) == (96, 3, 3, 64, 192)
    assert (vit.patch_size, vit.dropout, vit.emb_dropout) == (4, 0.1, 0.1)


def test_ratio_is_the_faster_matching_torch_time_over_the_jax_time():
    from experiments.bench import add_ratios

    torch_rows = [
        {"framework": "torch", "scenario": "step", "variant": v, "batch": 64, "ms_per_step": ms}
        for v, ms in (("eager", 20.0), ("amp", 12.0), ("compile", 8.0))
    ]
    jax_rows = [
        {"framework": "jax", "scenario": s, "precision": p, "batch": b, "ms_per_step": 4.0}
        for s, p, b in (("step", "highest", 64), ("scan", "bf16", 64), ("step", "bf16", 512))
    ]
    add_ratios(torch_rows + jax_rows)
    assert [r["vs_torch"] for r in jax_rows] == [20.0 / 4.0, 8.0 / 4.0, None]  # no torch at 512


def test_bench_cli_runs_end_to_end_on_tiny_and_writes_complete_json(tmp_path):
    from experiments.bench import Config, main

    out = tmp_path / "bench.json"
    argv = ["--tiny", "--precision", "default", "--scenarios", "epoch", "eval", "torch",
            "--runs", "2", "--warmup", "0", "--prng", "rbg", "--torch-threads", "1", "--clock", "cpu", "--out", str(out)]  # fmt: skip
    returned = main(parse(Config, argv))
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned, default=float))  # what main returns is written
    assert report["config"]["size"] == "tiny" and report["config"]["prng"] == "rbg"
    for k in ("platform", "device_kind", "jax", "jaxlib", "date_utc"):
        assert report["device"][k]
    rows = report["results"]
    assert {r["scenario"] for r in rows if r["framework"] == "jax"} == {"epoch", "eval"}
    for r in rows:
        assert r.keys() >= ROW_FIELDS, ROW_FIELDS - r.keys()
        assert r["runs"] == len(r["times_s"]) and r["median_s"] > 0 and r["items_per_s"] > 0
        assert r["clock"] == "cpu"  # --clock reaches JAX and torch rows alike
        assert r["flops_source"] == "analytic" and r["tflops"] > 0
        assert r["mfu"] is None if report["peak_tflops"] is None else r["mfu"] > 0
    epoch = next(r for r in rows if r["scenario"] == "epoch")
    assert epoch["steps_per_call"] == 64 // 8 and epoch["items_per_call"] == 64
    skipped = {s["scenario"] for s in report["skipped"]}
    if HAS_TORCH:
        torch_row = next(r for r in rows if r["framework"] == "torch")
        assert torch_row["variant"] == "eager" and torch_row["h100_anchor_ms"] is None  # b=8
    else:
        assert "torch" in skipped


def test_ratios_pair_rows_of_the_same_batch_clock_and_threads():
    from experiments.bench import add_ratios

    def row(fw, ms, threads, clock, **kw):
        return {"framework": fw, "scenario": "step", "batch": 64, "ms_per_step": ms,
                "threads": threads, "clock": clock, **kw}  # fmt: skip

    torch_rows = [row("torch", 30.0, 1, "cpu", variant="eager"),
                  row("torch", 12.0, 1, "cpu", variant="compile-fp32"),
                  row("torch", 90.0, 2, "cpu", variant="eager"),
                  row("torch", 50.0, 1, "wall", variant="eager")]  # fmt: skip
    jax_rows = [row("jax", 10.0, t, c, precision="highest")
                for t, c in ((1, "cpu"), (2, "cpu"), (1, "wall"), (2, "wall"))]  # fmt: skip
    add_ratios(torch_rows + jax_rows)
    assert [r["vs_torch"] for r in jax_rows] == [3.0, 9.0, 5.0, None]
    assert [r["vs_compile"] for r in jax_rows] == [1.2, None, None, None]


def test_threads_run_one_child_per_count_and_gather_its_rows(monkeypatch, tmp_path):
    import experiments._support.bench_threads as bt
    from experiments.bench import Config

    seen = []

    def fake_run(argv, env, check):  # the child: its config arrives as JSON in the env
        child = json.loads(env[bt.CHILD_ENV])
        seen.append(child["threads"])
        rows = [{"scenario": "step", "threads": child["threads"][0]}]
        Path(child["out"]).write_text(json.dumps({"results": rows, "skipped": []}))

    monkeypatch.setattr(bt.subprocess, "run", fake_run)
    cfg = Config.tiny()
    cfg = dataclasses.replace(cfg, threads=(1, 2), out=str(tmp_path / "b.json"))
    rows, skipped = bt.run_children(cfg)
    assert seen == [[1], [2]] and [r["threads"] for r in rows] == [1, 2] and skipped == []
    with pytest.raises(ValueError, match="only"):
        bt.pin_threads(10_000)
