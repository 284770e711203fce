"""Jit-compiled benchmarks of the seed's ViT training, with PyTorch side by side in one run.

Run: ``python -m experiments.bench`` (the seed's ViT; meant for a GPU) or
``python -m experiments.bench --tiny`` (about a minute on 2 CPU cores; what CI runs). Output: a
printed table and ``runs/bench/bench.json`` (``--out``). The PyTorch seed being timed::

    model = ViT(image_size=32, patch_size=4, num_classes=10, dim=512, depth=6, heads=8,
                mlp_dim=1024, dropout=0.1, emb_dropout=0.1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    for images, labels in train_loader:                  # batch 64, shuffle=True
        loss = criterion(model(images), labels)
        optimizer.zero_grad(); loss.backward(); optimizer.step()

Scenarios (``--scenarios``): ``step`` one jitted train step per dispatch (donated state) for each
``--batch`` × ``--precision``; ``scan`` ``--chunk`` steps per dispatch (``lax.scan`` via
``make_multi_step``); ``epoch`` a full epoch from a device-resident dataset, shuffled on the
device, scanned in chunks, plus the evaluation pass (the seed's loop body); ``eval`` the
forward pass over the eval set; ``clip`` a CLIP train step; ``torch`` the PyTorch twin
(experiments._support.torch_vit) for each batch and ``--torch`` variant (eager fp32, AMP bf16,
torch.compile + AMP bf16). The per-term gradient ratio has its own benchmark:
``python -m experiments.bench_terms``.

Precisions: ``highest`` float32 matmuls at full precision (parity with PyTorch fp32 eager);
``default`` JAX's default (TF32 on NVIDIA GPUs: changes numerics); ``bf16`` bf16 compute with
float32 master parameters (changes numerics, as torch AMP does). Data are synthetic uint8
CIFAR-shaped tensors already on the device, as in the PyTorch anchor (anchors.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp

from experiments._support.bench_threads import CHILD_ENV, child_config, run_children
from experiments._support.bench_torch import (
    H100_TORCH_ANCHOR_MS,
    TORCH_PRECISION,
    TORCH_VARIANTS,
    time_torch,
)
from experiments._support.vit_bench import (
    adam,
    clip_step,
    forward_flops,
    synthetic,
    vit_config,
    vit_evaluate,
    vit_loss,
    vit_params,
)
from jaxgrad.inspect.bench import (
    CLOCKS,
    Timing,
    bench_jit,
    bench_loop,
    default_peak_tflops,
    device_info,
    profile_jit,
)
from jaxgrad.report.cli import CheckedConfig, option, run_main, to_dict
from jaxgrad.report.io import atomic_write_json
from jaxgrad.report.tables import print_table
from jaxgrad.training.loop import (
    chunk_plan,
    make_run_chunk,
    steps_per_epoch,
    train_epoch,
)
from jaxgrad.training.rng import named_keys
from jaxgrad.training.step import init_train_state, make_multi_step, make_train_step
from jaxgrad.training.xla import WIDE_VECTORS

PRECISIONS = ("highest", "default", "bf16")
SCENARIOS = ("step", "scan", "epoch", "eval", "clip", "torch")


@dataclasses.dataclass(frozen=True)
class Config(CheckedConfig):
    size: str = option("seed", "ViT size: the seed's (12.7M params), the CPU anchor's reduced "
                       "(346,570) or tiny", choices=("seed", "reduced", "tiny"))  # fmt: skip
    batch: tuple[int, ...] = option((64, 512), "batch sizes of the step/scan/torch scenarios", gt=0)
    precision: tuple[str, ...] = option(PRECISIONS, "JAX precisions to time", choices=PRECISIONS)
    scenarios: tuple[str, ...] = option(SCENARIOS, "what to run", choices=SCENARIOS)
    torch: tuple[str, ...] = option(
        TORCH_VARIANTS[:3], "PyTorch variants (torch.compile is slow to compile on CPU; "
        "compile-fp32 is the fair compiled anchor there)",
        choices=TORCH_VARIANTS,
    )  # fmt: skip
    torch_threads: int = option(
        0, "torch.set_num_threads on CPU (0: torch's default); 1 stops OpenMP spin-waiting on a "
        "shared, oversubscribed CPU (10-20x slower steps otherwise)", ge=0,
    )  # fmt: skip
    threads: tuple[int, ...] = option(
        (0,), "CPU threads of both sides, e.g. 1 2: each N > 0 runs everything in a child "
        "process pinned to N cores (XLA's pool) with torch.set_num_threads(N); 0: all cores, "
        "torch per --torch-threads (experiments._support.bench_threads)", ge=0,
    )  # fmt: skip
    runs: int = option(30, "timed samples per scenario (median and p10/p90 reported)", gt=0)
    clock: str = option("wall", "what samples count: wall seconds, cpu = this process's CPU "
                        "seconds, all threads (JAX and torch alike), or both (every scenario "
                        "on each clock)", choices=(*CLOCKS, "both"))  # fmt: skip
    warmup: int = option(3, "untimed calls after compilation", ge=0)
    calls_per_sample: int = option(
        1, "back-to-back step calls per timed sample, one sync at its end (>1: dispatch overlaps "
        "compute, as in a training loop; 1: per-step latency)", gt=0,
    )  # fmt: skip
    scan_runs: int = option(5, "timed samples of the scan scenario (each is --chunk steps)", gt=0)
    chunk: int = option(100, "training steps per dispatch in the scan and epoch scenarios", gt=0)
    epoch_images: int = option(50_000, "training images per epoch (CIFAR-10's 50,000)", gt=0)
    epoch_batch: int = option(64, "batch of the epoch scenario (the seed's DataLoader: 64)", gt=0)
    epochs: int = option(3, "timed epochs (after one untimed warm-up epoch)", gt=0)
    eval_images: int = option(10_000, "evaluation images (CIFAR-10's test set)", gt=0)
    eval_batch: int = option(1000, "evaluation batch (forward only: any size gives the same "
                             "result)", gt=0)  # fmt: skip
    layout: str = option("auto", "ViTConfig.layout: heads (per-head blocks, the CPU form), "
                         "packed (one qkv matmul, the GPU form), auto (heads on CPU)",
                         choices=("auto", "heads", "packed"))  # fmt: skip
    prng: str = option(
        "threefry2x32", "PRNG for dropout masks (rbg is cheaper on GPU; changes the masks)",
        choices=("threefry2x32", "rbg", "unsafe_rbg"),
    )  # fmt: skip
    peak_tflops: float | None = option(None, "MFU reference; default 787 (H100 bf16) on GPU, "
                                       "n/a on CPU")  # fmt: skip
    flat_adam: bool = option(
        False, "optax.flatten(adam): one fused update over all params instead of one per "
        "leaf (fewer kernels; same arithmetic)",
    )  # fmt: skip
    profile: bool = option(False, "profile each step scenario with jax.profiler: top XLA ops")
    seed: int = option(0, "seed for parameters, data and dropout")
    out: str = option("runs/bench/bench.json", "JSON output path")

    def __post_init__(self):
        super().__post_init__()
        if self.epoch_images < self.epoch_batch:
            raise ValueError(f"--epoch-images {self.epoch_images} < --epoch-batch "
                             f"{self.epoch_batch}")  # fmt: skip

    @classmethod
    def tiny(cls) -> Config:
        return cls(
            size="tiny", batch=(8,), torch=("eager",), runs=3, warmup=1, scan_runs=2, chunk=4,
            epoch_images=64, epoch_batch=8, epochs=1, eval_images=32, eval_batch=16,
            out="runs/bench/bench_tiny.json",
        )  # fmt: skip


def matmul_precision(precision: str):
    """Trace-time context: ``highest`` = true float32 matmuls (no TF32 on GPU)."""
    if precision == "highest":
        return jax.default_matmul_precision("highest")
    return contextlib.nullcontext()


def _add(rows: list[dict], scenario: str, framework: str, precision: str, batch: int,
         t: Timing, **extra) -> None:  # fmt: skip
    """Append one result row and print it as a progress line (the table comes at the end)."""
    keys = {"scenario": scenario, "framework": framework, "precision": precision, "batch": batch}
    rows.append({**keys, **t.to_dict(), **extra})
    print(" ".join(_cells(rows[-1])), flush=True)


def run_step(cfg: Config, params, keys: dict, peak: float | None, *, scan: bool) -> list[dict]:
    """One train step per dispatch (``scan=False``) or ``cfg.chunk`` per dispatch."""
    rows, opt = [], adam(cfg.flat_adam)
    for precision in cfg.precision:
        vit = vit_config(cfg.size, precision, cfg.layout)
        factory = make_multi_step if scan else make_train_step
        step = factory(vit_loss(vit), opt, compiler_options=WIDE_VECTORS)  # jitted, donated
        for b in cfg.batch:
            k = cfg.chunk if scan else 1
            data = synthetic(keys["data"], (k, b) if scan else (b,), vit)
            state = init_train_state(jax.tree.map(jnp.copy, params), opt)
            with matmul_precision(precision):
                t = bench_jit(step, state, data, keys["step"], name=f"vit {precision} b{b}",
                              items=k * b, steps_per_call=k, carry=True,
                              runs=cfg.scan_runs if scan else cfg.runs,
                              calls_per_run=1 if scan else cfg.calls_per_sample,
                              warmup=cfg.warmup, flops=3 * forward_flops(vit) * k * b,
                              peak_tflops=peak, clock=cfg.clock)  # fmt: skip
            _add(rows, "scan" if scan else "step", "jax", precision, b, t)
            if cfg.profile and not scan:
                rows[-1]["profile"] = profile_step(step, params, opt, data, keys, precision)
    return rows


def profile_step(step, params, opt, data, keys: dict, precision: str) -> dict:
    """The step's top XLA ops by time (jaxgrad.inspect.bench.profile_jit), printed and returned."""
    state = init_train_state(jax.tree.map(jnp.copy, params), opt)
    with matmul_precision(precision):
        prof = profile_jit(step, state, data, keys["step"], carry=True)
    print(
        "    op time: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in prof["op_time_share"].items())
    )
    for op in prof["top_ops"][:8]:
        print(f"    {op['ms_per_call']:9.3f} ms/step  {op['op']:<28} {op['label'][:90]}")
    return prof


def run_epoch(cfg: Config, params, keys: dict, peak: float | None) -> list[dict]:
    """The seed's loop body, one epoch + evaluation, through ``jaxgrad.training.loop`` as the ViT
    experiment runs it: a device-resident dataset, a permutation drawn on the device, up to
    ``--chunk`` gathered steps per ``lax.scan`` dispatch; the last partial batch is dropped (the
    seed's DataLoader keeps its 16 images: 0.03% of the data). Compile time: the first epoch's
    time minus the median of the next ``--epochs``."""
    rows, opt, b = [], adam(cfg.flat_adam), cfg.epoch_batch
    n_steps = steps_per_epoch(cfg.epoch_images, b)
    for precision in cfg.precision:
        vit = vit_config(cfg.size, precision, cfg.layout)
        run_chunk = make_run_chunk(vit_loss(vit), opt, compiler_options=WIDE_VECTORS)
        evaluate = vit_evaluate(vit, cfg.eval_batch)
        train = synthetic(keys["data"], (cfg.epoch_images,), vit)
        test = synthetic(jax.random.fold_in(keys["data"], 1), (cfg.eval_images,), vit)
        state = init_train_state(jax.tree.map(jnp.copy, params), opt)  # donated each chunk
        epoch = 0

        def one_epoch(run_chunk=run_chunk, evaluate=evaluate, train=train, test=test):
            nonlocal state, epoch
            state, _ = train_epoch(run_chunk, state, (train["images"], train["labels"]),
                                   epoch=epoch, batch_size=b, max_chunk=cfg.chunk,
                                   data_key=keys["data"], step_key=keys["step"])  # fmt: skip
            epoch += 1
            return evaluate(state.params, test["images"], test["labels"])  # floats: synced

        fwd = forward_flops(vit)
        with matmul_precision(precision):  # a trace-time setting: the calls must be inside
            t = bench_loop(one_epoch, name=f"epoch {precision}", items=n_steps * b,
                           steps_per_call=n_steps, runs=cfg.epochs,
                           flops=3 * fwd * n_steps * b + fwd * cfg.eval_images,
                           peak_tflops=peak, clock=cfg.clock)  # fmt: skip
        _add(rows, "epoch", "jax", precision, b, t, chunks=chunk_plan(n_steps, cfg.chunk),
             seed_recipe_10_epochs_s=10 * t.median_s)  # fmt: skip
    return rows


def run_eval(cfg: Config, params, keys: dict, peak: float | None) -> list[dict]:
    """The ViT experiment's evaluation pass over ``--eval-images`` (forward only)."""
    rows = []
    for precision in cfg.precision:
        vit = vit_config(cfg.size, precision, cfg.layout)
        evaluate = vit_evaluate(vit, cfg.eval_batch)
        test = synthetic(jax.random.fold_in(keys["data"], 1), (cfg.eval_images,), vit)
        call = lambda evaluate=evaluate, test=test: evaluate(params, test["images"], test["labels"])
        with matmul_precision(precision):
            t = bench_loop(call, name=f"eval {precision}", items=cfg.eval_images, runs=cfg.runs,
                           flops=forward_flops(vit) * cfg.eval_images, peak_tflops=peak,
                           clock=cfg.clock)  # fmt: skip
        _add(rows, "eval", "jax", precision, cfg.eval_batch, t)
    return rows


def run_clip(cfg: Config, keys: dict, peak: float | None) -> list[dict]:
    """The CLIP experiment's train step (``jaxgrad.tasks``: templated captions,
    symmetric loss, clip + AdamW, the ``logit_scale`` clamp), one step per dispatch."""
    step, params, opt, clip = clip_step(cfg.size == "tiny", keys["init"])
    rows = []
    for b in cfg.batch:
        data = synthetic(keys["data"], (b,), clip.image)
        state = init_train_state(jax.tree.map(jnp.copy, params), opt)
        t = bench_jit(step, state, data, keys["step"], name=f"clip b{b}", items=b, carry=True,
                      runs=cfg.runs, warmup=cfg.warmup, peak_tflops=peak, clock=cfg.clock)  # fmt: skip
        _add(rows, "clip", "jax", "default", b, t)
    return rows


def run_torch(cfg: Config, peak: float | None, skipped: list[dict]) -> list[dict]:
    """The same ViT train step in PyTorch (experiments._support.bench_torch), each variant on its own."""
    vit = vit_config(cfg.size, "highest", cfg.layout)
    rows, threads = [], cfg.threads[0] or cfg.torch_threads
    for variant, b, t in time_torch(
        vit, variants=cfg.torch, batches=cfg.batch, runs=cfg.runs, warmup=cfg.warmup,
        calls_per_sample=cfg.calls_per_sample, threads=threads, seed=cfg.seed,
        flops_per_image=forward_flops(vit), peak_tflops=peak, clock=cfg.clock, skipped=skipped,
    ):  # fmt: skip
        _add(rows, "step", "torch", TORCH_PRECISION[variant], b, t, variant=variant,
             h100_anchor_ms=H100_TORCH_ANCHOR_MS.get((variant, b)))  # fmt: skip
    return rows


#: the torch variants each JAX precision is compared with (vs torch: the faster of them);
#: fp32 rows are also set beside torch.compile fp32 (vs compile), the compiled anchor on CPU
COMPARE = {"highest": ("eager",), "default": ("eager",), "bf16": ("amp", "compile")}


def add_ratios(rows: list[dict]) -> None:
    """``vs_torch`` on JAX step rows: best matching torch ms ÷ JAX ms (> 1: JAX is faster), at
    the same batch, clock and thread count; ``vs_compile``: torch.compile fp32 ÷ JAX (fp32)."""
    where = lambda r: (r["batch"], r.get("clock"), r.get("threads"))  # noqa: E731
    torch_ms = {(r["variant"], *where(r)): r["ms_per_step"] for r in rows
                if r["framework"] == "torch"}  # fmt: skip
    for r in (r for r in rows if r["framework"] == "jax" and r["scenario"] in ("step", "scan")):
        ref = [
            torch_ms[v, *where(r)] for v in COMPARE[r["precision"]] if (v, *where(r)) in torch_ms
        ]
        r["vs_torch"] = min(ref) / r["ms_per_step"] if ref else None
        anchor = torch_ms.get(("compile-fp32", *where(r))) if r["precision"] != "bf16" else None
        r["vs_compile"] = anchor / r["ms_per_step"] if anchor else None


COLUMNS = ("scen.", "fw", "precision", "batch", "threads", "clock", "ms/step", "p90-p10",
           "img/s", "TFLOP/s", "MFU", "compile", "vs torch", "vs compile")  # fmt: skip


def _cells(r: dict) -> list[str]:
    """A result row's printed cells (:data:`COLUMNS`)."""
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    tf = "n/a" if r["tflops"] is None else f"{r['tflops']:.3g}"
    vs, vc = r.get("vs_torch"), r.get("vs_compile")
    spread = 1e3 * (r["p90_s"] - r["p10_s"]) / r["steps_per_call"]
    return [r["scenario"], r["framework"], r["precision"], str(r["batch"]),
            str(r.get("threads") or "all"), r["clock"], f"{r['ms_per_step']:.3f}",
            f"{spread:.3f}", f"{r['items_per_s']:.0f}", tf, mfu, f"{r['compile_s']:.2f}",
            "-" if vs is None else f"{vs:.2f}x", "-" if vc is None else f"{vc:.2f}x"]  # fmt: skip


def main(cfg: Config) -> dict:
    """Run the selected scenarios (per thread count, per clock); print the table; write and
    return the JSON report."""
    if any(cfg.threads) and CHILD_ENV not in os.environ:  # pinned children, one per count
        rows, skipped = run_children(cfg)
    else:
        rows, skipped = [], []
        for clock in CLOCKS if cfg.clock == "both" else (cfg.clock,):
            got, skip = run_scenarios(dataclasses.replace(cfg, clock=clock))
            rows += [{**r, "threads": cfg.threads[0]} for r in got]
            skipped += skip
    add_ratios(rows)
    print_table([_cells(r) for r in rows], COLUMNS, right=COLUMNS[6:])
    print("".join(f"skipped {s['scenario']}: {s['reason']}\n" for s in skipped), end="")
    report = {"config": to_dict(cfg), "device": device_info(), "load": os.getloadavg(),
              "peak_tflops": cfg.peak_tflops if cfg.peak_tflops is not None else
              default_peak_tflops(), "results": rows, "skipped": skipped,
              "h100_torch_anchor_ms": [{"variant": v, "batch": b, "ms": ms}
                                       for (v, b), ms in H100_TORCH_ANCHOR_MS.items()]}  # fmt: skip
    atomic_write_json(cfg.out, report)
    print(f"wrote {cfg.out}")
    return report


def run_scenarios(cfg: Config) -> tuple[list[dict], list[dict]]:
    """``(rows, skipped)`` of the selected scenarios on ``cfg.clock`` in this process."""
    key = jax.random.key(cfg.seed, impl=cfg.prng)
    keys = named_keys(key, "init", "step", "data")
    peak = cfg.peak_tflops if cfg.peak_tflops is not None else default_peak_tflops()
    info = device_info()
    print(f"device: {info['device_kind']} ({info['platform']}), jax {info['jax']}, "
          f"ViT size {cfg.size}, layout {cfg.layout}, prng {cfg.prng}, "
          f"MFU peak {peak or 'n/a'} TFLOP/s, {cfg.clock} clock (per-s rates are per {cfg.clock} second)")  # fmt: skip
    rows: list[dict] = []
    skipped: list[dict] = []
    if no_torch := "torch" in cfg.scenarios and importlib.util.find_spec("torch") is None:
        print("torch is not installed: the PyTorch side is skipped (pip install -e '.[torch]')")
        skipped.append({"scenario": "torch", "reason": "torch is not installed"})
    params = vit_params(vit_config(cfg.size, "highest", cfg.layout), keys["init"])
    if "step" in cfg.scenarios:
        rows += run_step(cfg, params, keys, peak, scan=False)
    if "scan" in cfg.scenarios:
        rows += run_step(cfg, params, keys, peak, scan=True)
    if "epoch" in cfg.scenarios:
        rows += run_epoch(cfg, params, keys, peak)
    if "eval" in cfg.scenarios:
        rows += run_eval(cfg, params, keys, peak)
    if "clip" in cfg.scenarios:
        rows += run_clip(cfg, keys, peak)
    if "torch" in cfg.scenarios and not no_torch:
        rows += run_torch(cfg, peak, skipped)
    return rows, skipped


if __name__ == "__main__":
    # a child of --threads N M: its config comes from the parent, pinned to N cores
    if CHILD_ENV in os.environ:
        main(child_config(Config))
    else:
        run_main(main, Config)
