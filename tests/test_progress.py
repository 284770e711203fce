"""jaxgrad.report.progress / jaxgrad.report.plan: fake chunks in, the bar's count and the printed lines out."""

import io
import re

import numpy as np
import pytest

from jaxgrad.report.plan import Plan
from jaxgrad.report.progress import Progress, format_duration, track

ANSI = re.compile(r"\x1b\[")


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_plain_lines_count_finished_steps_with_rate_eta_and_metrics():
    out, clock = io.StringIO(), FakeClock()
    p = Progress(100, desc="vit", stream=out, tty=False, every_s=30.0, clock=clock)
    p.set_epoch(0, 2, steps_before=0)
    clock.t = 10.0  # first chunk of 20 steps finished after 10 s (compilation included)
    p(20, {"loss": np.array([2.5, 2.25], np.float32), "acc": np.array([0.1])})
    clock.t = 20.0  # within every_s of the last line: counted, not printed
    p(40, {"loss": np.array([2.0])})
    p.set_epoch(1, 2, steps_before=50)
    clock.t = 45.0
    p(30, {"loss": np.array([1.5])})  # 80 done
    clock.t = 50.0
    p(50, {"loss": np.array([1.25])})  # 100 done: the last line is always printed
    p.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        # first chunk: 20 steps / 10 s since the start; later: steps since the first report
        "vit epoch 1/2: 20/100 steps (20%) · 2 step/s (compilation included) · elapsed 10 s · "
        "ETA at most 40 s · loss 2.25",
        "vit epoch 2/2: 80/100 steps (80%) · 1.71 step/s · elapsed 45 s · ETA 12 s · loss 1.5",
        "vit epoch 2/2: 100/100 steps (100%) · 2 step/s · elapsed 50 s · ETA 0 s · loss 1.25",
    ]
    assert "\r" not in out.getvalue() and not ANSI.search(out.getvalue())
    assert p.n == 100


def test_tty_bar_n_follows_finished_steps_across_epochs():
    out, clock = io.StringIO(), FakeClock()
    p = Progress(60, desc="run", stream=out, tty=True, clock=clock)
    assert p.bar is not None and p.bar.n == 0
    p.set_epoch(0, 3, steps_before=0)
    p(15, {"loss": np.array([3.0])})
    assert p.bar.n == 15
    p(20, {"loss": np.array([2.0])})
    p.set_epoch(1, 3, steps_before=20)
    p(5)
    assert p.bar.n == 25 and p.n == 25
    assert "epoch 2/3" in p.bar.desc
    p.close()
    assert "loss=2" in out.getvalue()


def test_disabled_prints_nothing_and_close_prints_unfinished_state():
    out = io.StringIO()
    p = Progress(10, stream=out, tty=False, enabled=False)
    p(5)
    p.close()
    assert out.getvalue() == "" and p.n == 5
    out, clock = io.StringIO(), FakeClock()
    p = Progress(10, desc="x", stream=out, tty=False, every_s=100, clock=clock)
    clock.t = 1.0
    p(2)
    clock.t = 2.0
    p(4)  # not due
    p.close()  # stopped early (Ctrl-C, error): the last state is printed
    assert [line.split(" · ")[0] for line in out.getvalue().splitlines()] == [
        "x: 2/10 steps (20%)",
        "x: 4/10 steps (40%)",
    ]


def test_steps_outside_the_run_are_an_error():
    p = Progress(10, stream=io.StringIO(), tty=False)
    with pytest.raises(ValueError, match="outside"):
        p(11)


def test_track_reports_each_item_before_handing_it_on():
    out, clock = io.StringIO(), FakeClock()
    seen = []
    for x in track(iter("abcd"), 4, desc="decode", unit="image", stream=out, tty=False,
                   every_s=5.0, clock=clock):  # fmt: skip
        seen.append(x)
        if x == "a":  # reported when handed on, not when the next one is asked for
            assert out.getvalue().startswith("decode: 1/4 images")
        clock.t += 3.0
    assert seen == list("abcd")
    heads = [line.split(" · ")[0] for line in out.getvalue().splitlines()]
    assert heads == ["decode: 1/4 images (25%)", "decode: 3/4 images (75%)",
                     "decode: 4/4 images (100%)"]  # fmt: skip


def test_format_duration():
    assert [format_duration(s) for s in (5, 89, 600, 7200, float("nan"))] == [
        "5 s",
        "89 s",
        "10.0 min",
        "2.0 h",
        "?",
    ]


def test_plan_announces_and_estimates_from_the_first_chunk():
    out = io.StringIO()
    plan = Plan(
        name="ViT seed", params=12_673_642, steps_per_epoch=703, epochs=10, device="cpu (2 cores)",
        smaller=("--dim 96 --depth 3", 0.01), stream=out,
    )  # fmt: skip
    assert plan.announce() == (
        "plan: ViT seed · 12,673,642 parameters · 10 epochs x 703 steps = 7,030 steps · "
        "cpu (2 cores)"
    )
    text = plan.first_chunk(steps=20, seconds=140.0)  # 7 s/step: 82 min per epoch, 13.7 h
    assert text.startswith("LONG RUN: estimate from the first 20 steps (2.3 min, compilation")
    assert "~82.0 min per epoch, ~13.7 h in all on this CPU" in text
    assert "`--dim 96 --depth 3` gives a ~8.2 min run" in text
    assert plan.estimate_s == pytest.approx(7 * 7030)
    short = Plan(name="tiny", params=10, steps_per_epoch=10, device="cpu", stream=io.StringIO())
    assert not short.first_chunk(steps=10, seconds=2.0, compiled=False).startswith("LONG")


def test_plan_estimates_after_compilation_then_re_estimates_after_the_first_epoch():
    out, clock = io.StringIO(), FakeClock()
    plan = Plan(name="ViT model (dim 96)", params=10, steps_per_epoch=100, epochs=10,
                device="cpu (2 cores)", stream=out, clock=clock)  # fmt: skip
    plan.start()
    clock.t = 50.0  # first chunk of 20 steps: 40 s of compilation + 20 steps at 0.5 s
    assert plan.chunk_done(20) is None and plan.estimate_s is None
    clock.t = 60.0  # 20 more steps in 10 s: 0.5 s per step once compiled
    text = plan.chunk_done(40)
    assert plan.compile_s == pytest.approx(40.0)
    assert plan.estimate_s == pytest.approx(40.0 + 0.5 * 1000)  # not 2.5 s/step x 1000
    assert text.startswith("estimate from steps 21-40 (after compilation; compilation ~40 s)")
    assert "~50 s of steps per epoch, ~9.0 min in all on this CPU" in text
    clock.t = 70.0
    assert plan.chunk_done(60) is None  # one estimate from chunks, not one per chunk
    clock.t = 100.0  # epoch 1 (evaluation included) ends: 60 s of it after compilation
    text = plan.epoch_done(1)
    assert plan.estimate_s == pytest.approx(100.0 + 9 * 60.0)
    assert text == ("re-estimate after epoch 1 (1.7 min, compilation included): ~60 s per epoch, "
                    "~10.7 min in all, ~9.0 min to go")  # fmt: skip
    assert plan.epoch_done(2) is None
    lines = out.getvalue().splitlines()  # printed: the chunk estimate and the re-estimate
    assert len(lines) == 2 and lines[0].startswith("estimate from") and lines[1] == text


def test_plan_names_the_model_size():
    from jaxgrad.models.vit import ViTConfig

    assert ViTConfig.seed().describe() == (
        "seed model (dim 512, depth 6, 8x64 heads, mlp 1024, patch 4)"
    )
    cpu = ViTConfig(dim=192, depth=6, heads=3, mlp_dim=384)
    assert cpu.describe() == "model (dim 192, depth 6, 3x64 heads, mlp 384, patch 4)"
    assert ViTConfig(dtype="bfloat16").describe().startswith("seed model")
