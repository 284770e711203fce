"""Every GPU headline figure from ONE command (meant for one H200 in < 8 minutes).

Run on the GPU machine, the training images carried as their tar.gz (an ignored folder)::

    PYTHONPATH=. python -m experiments.gpu_suite --data-tar .devdata/cifar10-train-jpeg.tar.gz

``--smoke``: every part at tiny sizes on the CPU (a tiny image folder made here) in < 3 minutes;
a test runs it. Output (``--out``): ``gpu_suite.json`` and ``gpu_suite.md``. Parts, in order:

1. ``peak``: the measured bf16 matmul peak (float32 on a CPU) — MFU is given against it and
   against the datasheet dense bf16 peak (989 TFLOP/s, H100/H200 SXM; none on a CPU), labelled.
2. ``vit``: the seed ViT's train step (the experiment's own loss, ``jaxgrad.tasks``, and
   step, ``jaxgrad.training.loop.make_run_chunk``: gather from a device-resident dataset + Adam) at each
   ``--batch`` in fp32 (matmul precision highest), TF32 (JAX's default) and bf16, one step per
   dispatch and ``--chunk`` scanned steps per dispatch; bf16 also with ``attn_dropout=False``
   (no dropout on attention probabilities: cuDNN fused attention on a GPU). vit-pytorch drops
   the probabilities: ``attn_dropout=True`` (the default) is the one that matches it.
3. ``torch``: the same step in PyTorch, same process (``experiments._support.bench_torch``): eager fp32,
   AMP bf16, torch.compile + AMP bf16.
4. ``terms``: the per-term gradient ratio (``experiments.bench_terms``); ``clip``: a CLIP step.
5. ``seed``: ``python -m experiments.vit_cifar10`` with the seed recipe, 10 epochs on the real
   images (45k/5k), timed from launch of its process (imports, decoding, compilation included).
6. ``strong``: the strong recipe until ``--strong-cap-s`` (or the suite's budget) runs out:
   wall time from launch at which validation accuracy first reached 79% and 85%.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments._support import terms_timing, vit_bench
from experiments._support.bench_torch import TORCH_PRECISION, time_torch
from experiments._support.gpu_suite_report import markdown
from jaxgrad.data.synthetic import CLASS_NAMES, make_synthetic
from jaxgrad.inspect.bench import Timing, bench_jit, device_info
from jaxgrad.report.cli import CheckedConfig, option, run_main, to_dict
from jaxgrad.report.io import atomic_write_bytes, atomic_write_json
from jaxgrad.training.loop import INIT_OPTIONS, make_run_chunk
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state

#: dense bf16 datasheet peak of an H100/H200 SXM (TFLOP/s); no datasheet figure for a CPU
DATASHEET_BF16_TFLOPS = 989.0
PRECISIONS = ("highest", "default", "bf16")
PARTS = ("peak", "vit", "torch", "terms", "clip", "seed", "strong")
TARGETS = (0.79, 0.85)


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    smoke: bool = option(False, "every part at tiny sizes on CPU (< 3 minutes; what the test runs)")
    data_tar: str | None = option(None, "the training images as tar.gz (train/<class>/*.jpg)")
    data_dir: str | None = option(None, "an image folder instead (root/<class>/*.jpg)")
    parts: tuple[str, ...] = option(PARTS, "what to run", choices=PARTS)
    batch: tuple[int, ...] = option((64, 512), "batch sizes of the step/scan/torch rows")
    chunk: int = option(20, "scanned steps per dispatch in the scan rows", gt=0)
    runs: int = option(10, "timed samples per row (median, p10, p90)", gt=0)
    warmup: int = option(2, "untimed calls after compilation")
    torch: tuple[str, ...] = option(("eager", "amp", "compile"), "PyTorch variants to time")
    seed_epochs: int = option(10, "epochs of the seed-recipe run (the seed's 10)", gt=0)
    strong_epochs: int = option(
        60, "epochs the strong recipe is scheduled for (cosine length)", gt=0
    )
    strong_cap_s: float = option(150.0, "stop the strong run after this many seconds", gt=0)
    budget_s: float = option(
        470.0, "the whole suite's wall budget: the strong run gets the rest", gt=0
    )
    out: str = option("runs/gpu_suite", "where gpu_suite.json / gpu_suite.md / the runs go")

    def __post_init__(self):
        super().__post_init__()
        if self.data_tar and self.data_dir:
            raise ValueError("give --data-tar or --data-dir, not both")

    @classmethod
    def tiny(cls) -> Config:
        return cls(smoke=True)


def smoke_overrides(cfg: Config) -> Config:
    """``--smoke``: tiny sizes everywhere; torch.compile is left out (minutes on a CPU)."""
    return dataclasses.replace(cfg, batch=(8,), chunk=2, runs=2, warmup=1, seed_epochs=2,
                               strong_epochs=2, strong_cap_s=60.0, budget_s=170.0,
                               torch=tuple(v for v in cfg.torch if v != "compile"))  # fmt: skip


def _row(part: str, label: str, t: Timing, peaks: dict, **extra) -> dict:
    """A timing row with MFU against each peak (labelled), and where it was measured."""
    d = {"part": part, "label": label, **t.to_dict(), **extra}
    d["platform"] = jax.devices()[0].platform
    tf = t.tflops
    d["mfu_datasheet"] = tf / peaks["datasheet"] if tf and peaks.get("datasheet") else None
    d["mfu_measured"] = tf / peaks["measured"] if tf and peaks.get("measured") else None
    print(f"{part:<6} {label:<34} {t.ms_per_step:9.3f} ms/step {t.items_per_s:10.0f} img/s "
          f"(compile {t.compile_s:.1f} s)", flush=True)  # fmt: skip
    return d


def run_peak(smoke: bool) -> dict:
    """The best matmul rate this device reaches (bf16 on a GPU, float32 on a CPU)."""
    gpu = jax.devices()[0].platform == "gpu"
    n, dtype = (8192, jnp.bfloat16) if gpu else ((256 if smoke else 1024), jnp.float32)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    mm = jax.jit(lambda x, y: x @ y)
    t = bench_jit(mm, a, a, name=f"matmul {n}", items=1, runs=10, warmup=2, flops=2.0 * n**3)
    return {
        "measured": t.tflops, "measured_what": f"{jnp.dtype(dtype).name} matmul {n}x{n}",
        "datasheet": DATASHEET_BF16_TFLOPS if gpu else None,
        "datasheet_what": "dense bf16, H100/H200 SXM" if gpu else "none for a CPU",
    }  # fmt: skip


def run_vit(cfg: Config, peaks: dict) -> list[dict]:
    """The experiment's own step (gather + loss + Adam), 1 or ``chunk`` steps per dispatch."""
    keys, rows = named_keys(0, "init", "data", "step"), []
    size = "tiny" if cfg.smoke else "seed"
    variants = [(p, True) for p in PRECISIONS] + [("bf16", False)]
    for precision, attn_dropout in variants:
        vit = vit_bench.vit_config(size, precision, attn_dropout=attn_dropout)
        params, opt = vit_bench.vit_params(vit, keys["init"]), vit_bench.adam()
        loss_fn = vit_bench.vit_loss(vit)
        # smoke: XLA's quick compile (minutes saved on a CPU; its timings mean nothing anyway)
        run = make_run_chunk(loss_fn, opt, compiler_options=INIT_OPTIONS if cfg.smoke else None)
        for b in cfg.batch:
            data = vit_bench.synthetic(keys["data"], (b * cfg.chunk,), vit)
            for k in (1, cfg.chunk):
                idx = jnp.arange(k * b, dtype=jnp.int32).reshape(k, b)
                state = init_train_state(jax.tree.map(jnp.copy, params), opt)
                prec = "highest" if precision == "highest" else None
                label = f"{precision}{'' if attn_dropout else ' no-attn-dropout'} b{b} " + (
                    "step" if k == 1 else f"scan{k}"
                )
                with jax.default_matmul_precision(prec):
                    t = bench_jit(run, state, data["images"], data["labels"], idx, keys["step"],
                                  name=label, items=k * b, steps_per_call=k, carry=True,
                                  runs=cfg.runs, warmup=cfg.warmup,
                                  flops=3 * vit_bench.forward_flops(vit) * k * b)  # fmt: skip
                rows.append(_row("vit", label, t, peaks, precision=precision, batch=b,
                                 scanned=k, attn_dropout=attn_dropout,
                                 attention=vit.attention_implementation() or "xla",
                                 matches_vit_pytorch=attn_dropout))  # fmt: skip
    return rows


def run_torch(cfg: Config, peaks: dict, skipped: list[dict]) -> list[dict]:
    if importlib.util.find_spec("torch") is None:  # an optional extra: say so, not a failure
        skipped.append(
            {"part": "torch", "reason": "torch is not installed (pip install -e '.[torch]')"}
        )
        return []
    vit = vit_bench.vit_config("tiny" if cfg.smoke else "seed", "highest")
    if "compile" not in cfg.torch:
        skipped.append({"part": "torch compile", "reason": "not run (--smoke: minutes on CPU)"})
    out = time_torch(vit, variants=cfg.torch, batches=cfg.batch, runs=cfg.runs,
                     warmup=cfg.warmup, threads=2, flops_per_image=vit_bench.forward_flops(vit),
                     skipped=skipped)  # fmt: skip
    return [_row("torch", f"torch {TORCH_PRECISION[v]} b{b}", t, peaks, variant=v, batch=b)
            for v, b, t in out]  # fmt: skip


def run_terms(cfg: Config) -> list[dict]:
    ks = (2,) if cfg.smoke else (2, 3, 5)
    rows = terms_timing.run(k_values=ks, size="tiny" if cfg.smoke else "seed", runs=cfg.runs,
                           warmup=cfg.warmup)  # fmt: skip
    return [{**r, "platform": jax.devices()[0].platform} for r in rows]


def run_clip(cfg: Config, peaks: dict) -> list[dict]:
    """The CLIP experiment's train step (``jaxgrad.tasks``), one step per dispatch."""
    keys = named_keys(0, "init", "data", "step")
    step, params, opt, clip = vit_bench.clip_step(cfg.smoke, keys["init"],
                                                  INIT_OPTIONS if cfg.smoke else None)  # fmt: skip
    b = max(cfg.batch)
    batch = vit_bench.synthetic(keys["data"], (b,), clip.image)
    state = init_train_state(params, opt)
    t = bench_jit(step, state, batch, keys["step"], name=f"clip b{b}", items=b, carry=True,
                  runs=cfg.runs, warmup=cfg.warmup)  # fmt: skip
    return [_row("clip", f"clip step b{b}", t, peaks, batch=b)]


def prepare_data(cfg: Config, out: Path) -> Path:
    """The image folder: ``--data-dir``, ``--data-tar`` extracted under ``out``, or (smoke with
    neither) a tiny folder of PNGs of the embedded synthetic images."""
    if cfg.data_dir:
        return Path(cfg.data_dir)
    root = out / "data"
    if cfg.data_tar:
        if not (root / "train").is_dir():
            t0 = time.perf_counter()
            with tarfile.open(cfg.data_tar) as tar:
                tar.extractall(root / ".partial", filter="data")
            (root / ".partial" / "train").rename(root / "train")
            print(f"extracted {cfg.data_tar} in {time.perf_counter() - t0:.1f} s", flush=True)
        return root / "train"
    from PIL import Image  # smoke without data: a tiny image folder

    ds, folder = make_synthetic(300, seed=0), root / "smoke"
    for i, (img, y) in enumerate(zip(ds.images, ds.labels)):
        path = folder / CLASS_NAMES[int(y)] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            buf = __import__("io").BytesIO()
            Image.fromarray(np.asarray(img)).save(buf, format="PNG")
            atomic_write_bytes(path, buf.getvalue())
    return folder


def run_recipe(cfg: Config, recipe: str, folder: Path, out: Path, cap_s: float) -> dict:
    """``python -m experiments.vit_cifar10`` in its own process; wall time from launch to each
    epoch's metrics line (polled), stopped at ``cap_s``."""
    run_dir = out / f"run_{recipe}"
    shutil.rmtree(run_dir, ignore_errors=True)  # this suite's own output of an earlier run
    epochs = cfg.seed_epochs if recipe == "seed" else cfg.strong_epochs
    argv = [sys.executable, "-m", "experiments.vit_cifar10", "--recipe", recipe,
            "--data", "folder", "--data-dir", str(folder), "--epochs", str(epochs),
            "--out-dir", str(run_dir), "--no-progress", "--cache-dir", str(out / "cache")]  # fmt: skip
    env = dict(os.environ)
    if cfg.smoke:  # tiny sizes, and XLA's quick compile (smoke timings mean nothing)
        argv += ["--model", "tiny", "--n-val", "60", "--batch-size", "16"]
        quick = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {quick}".strip()
    else:
        argv += ["--n-val", "5000"]
    seen: dict[int, float] = {}
    stop = threading.Event()

    def poll():  # the wall time from launch at which each epoch's metrics line appeared
        while not stop.is_set():
            for path in run_dir.rglob("metrics.jsonl"):
                for line in path.read_text().splitlines():
                    with contextlib.suppress(json.JSONDecodeError, KeyError):  # half-written
                        seen.setdefault(json.loads(line)["epoch"], time.perf_counter() - t0)
            stop.wait(0.25)

    with open(out / f"run_{recipe}.log", "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        th = threading.Thread(target=poll, daemon=True)
        th.start()
        try:
            rc, capped = proc.wait(timeout=cap_s), False
        except subprocess.TimeoutExpired:
            proc.terminate()
            rc, capped = proc.wait(), True
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
    records = [json.loads(x) for p in run_dir.rglob("metrics.jsonl")
               for x in p.read_text().splitlines() if x.strip()]  # fmt: skip
    if not capped and rc != 0:
        tail = (out / f"run_{recipe}.log").read_text()[-2000:]
        raise RuntimeError(f"{recipe} run failed (exit {rc}); its log ends:\n{tail}")
    curve = [{"epoch": r["epoch"], "val_accuracy": r.get("val_accuracy"),
              "wall_from_launch_s": seen.get(r["epoch"])} for r in records]  # fmt: skip
    res = {"recipe": recipe, "command": " ".join(argv[1:]), "epochs_scheduled": epochs,
           "epochs_done": len(records), "wall_from_launch_s": wall, "capped_at_s": cap_s if capped else None,
           "val_accuracy": curve[-1]["val_accuracy"] if curve else None, "curve": curve,
           "platform": jax.devices()[0].platform, "data": str(folder),
           "n_val": 60 if cfg.smoke else 5000}  # fmt: skip
    for target in TARGETS:  # None: not reached within the run (or its cap)
        hit = [c["wall_from_launch_s"] for c in curve if (c["val_accuracy"] or 0) >= target]
        res[f"time_to_{round(100 * target)}_s"] = hit[0] if hit else None
    print(f"{recipe}: {len(records)} epochs, {wall:.1f} s from launch, val "
          f"{res['val_accuracy']}{' (capped)' if capped else ''}", flush=True)  # fmt: skip
    return res


def main(cfg: Config) -> dict:
    t_start = time.perf_counter()
    if cfg.smoke:
        cfg = smoke_overrides(cfg)
    elif not (cfg.data_tar or cfg.data_dir) and {"seed", "strong"} & set(cfg.parts):
        raise ValueError(
            "the seed/strong runs need the real images: --data-tar PATH.tar.gz (or --data-dir); "
            "or leave them out with --parts, or use --smoke"
        )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"command": " ".join(["python -m experiments.gpu_suite", *sys.argv[1:]]),
           "config": to_dict(cfg), "smoke": cfg.smoke, "device": device_info(),
           "skipped": [], "errors": []}  # fmt: skip
    on_gpu = res["device"]["platform"] == "gpu"
    if not on_gpu and not cfg.smoke:
        print("no GPU visible: measuring on the CPU (GPU figures: not measured)", flush=True)
    peaks = {"measured": None, "datasheet": None}
    steps = {
        "peak": lambda: run_peak(cfg.smoke),
        "vit": lambda: run_vit(cfg, peaks),
        "torch": lambda: run_torch(cfg, peaks, res["skipped"]),
        "terms": lambda: run_terms(cfg),
        "clip": lambda: run_clip(cfg, peaks),
    }
    for part in (p for p in PARTS if p in cfg.parts):
        try:
            if part in steps:
                res[part] = steps[part]()
                if part == "peak":
                    peaks.update(res["peak"])
                    res["peaks"] = res.pop("peak")
            else:
                left = cfg.budget_s - (time.perf_counter() - t_start)
                cap = cfg.strong_cap_s if cfg.smoke else max(10.0, min(cfg.strong_cap_s, left))
                cap = 3600.0 if part == "seed" else cap  # smoke: no budget, correctness only
                res[part] = run_recipe(cfg, part, prepare_data(cfg, out), out, cap)
        except Exception as e:  # one failed part must not cost the GPU time of the others
            res["errors"].append({"part": part, "error": repr(e)[:2000]})
            print(f"FAILED {part}: {e!r}"[:2000], flush=True)
        atomic_write_json(out / "gpu_suite.json", {**res, "wall_s": time.perf_counter() - t_start})
    res["wall_s"] = time.perf_counter() - t_start
    atomic_write_json(out / "gpu_suite.json", res)
    (out / "gpu_suite.md").write_text(markdown(res))
    print(f"wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'} ({res['wall_s']:.0f} s)")
    if res["errors"]:
        raise SystemExit(f"{len(res['errors'])} part(s) failed: see {out / 'gpu_suite.md'}")
    return res


if __name__ == "__main__":
    run_main(main, Config)
