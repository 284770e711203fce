"""Timing jitted programs honestly: compile apart, warm up, block, then median and spread.

The three classic mistakes when timing JAX are (1) counting compilation in the first call,
(2) timing the asynchronous dispatch instead of the computation (no ``block_until_ready``), and
(3) reporting one number without its spread. :func:`bench_jit` avoids all three::

    step = jax.jit(train_step, donate_argnums=0)
    t = bench_jit(step, state, batch, key, name="vit b64", items=64, carry=True,
                  flops=3 * vit_forward_flops(...) * 64)  # jaxgrad.models.vit
    print(t.compile_s, t.ms_per_step, t.items_per_s, t.tflops, t.mfu)

``carry=True`` threads the first output back in as the first argument (a train step's state),
which is required when that argument is donated: a donated buffer cannot be passed twice.

FLOPs: XLA's ``compiled.cost_analysis()`` counts every op of the program (matmuls and the
elementwise work) but counts a ``while``/``scan`` body **once**, whatever its trip count, and
reports nothing for custom calls (cuDNN attention). Pass ``flops=`` (an analytic count, e.g.
:func:`jaxgrad.models.vit.vit_forward_flops`) for scanned or custom-call programs; both numbers are kept.

MFU = achieved FLOP/s ÷ the peak you pass in. :data:`H100_BF16_PEAK_TFLOPS` (787, measured on our
H100 with a bf16 matmul) is the GPU default; on CPU there is no meaningful peak and MFU is ``None``
(printed ``n/a``). Nothing here imports torch: :func:`measure` takes any callable and ``sync``, so
the PyTorch side of a benchmark uses the same statistics.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jaxlib
import numpy as np

__all__ = [
    "CLOCKS", "H100_BF16_PEAK_TFLOPS", "OP_KINDS", "Timing", "bench_jit", "bench_loop", "clock_fn",
    "compile_timed", "default_peak_tflops", "device_info", "interleave", "measure", "op_time_shares",
    "profile_jit", "profile_ops", "xla_flops",
]  # fmt: skip

#: bf16 dense matmul peak measured on the project's H100 80GB (see shared/guide/anchors.md).
H100_BF16_PEAK_TFLOPS = 787.0

#: what a sample is timed with: ``wall`` seconds (``time.perf_counter``) or ``cpu`` seconds of
#: this process, all threads together (``time.process_time``: XLA's and OpenMP's workers count)
CLOCKS = ("wall", "cpu")


def clock_fn(clock: str) -> Callable[[], float]:
    """The timer of ``clock`` (:data:`CLOCKS`), looked up at call time."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    return time.perf_counter if clock == "wall" else time.process_time


def measure(
    call: Callable[[], Any],
    *,
    runs: int,
    warmup: int,
    sync: Callable[[Any], Any] = jax.block_until_ready,
    calls_per_run: int = 1,
    clock: str = "wall",
) -> tuple[float, ...]:
    """Seconds per call of ``call()``: ``warmup`` untimed calls, then ``runs`` timed samples.

    Each sample times ``calls_per_run`` back-to-back calls followed by one ``sync`` of the last
    result (so dispatch of call i+1 overlaps compute of call i, as in a real training loop) and
    is divided by ``calls_per_run``. ``sync`` must wait for the device: ``jax.block_until_ready``
    for JAX, ``lambda _: torch.cuda.synchronize()`` for PyTorch on a GPU. ``clock="cpu"`` times
    this process's CPU seconds (all threads) instead of wall seconds (:func:`clock_fn`).
    """
    now = clock_fn(clock)
    if runs < 1 or warmup < 0 or calls_per_run < 1:
        raise ValueError(
            f"need runs >= 1, warmup >= 0, calls_per_run >= 1; got {runs}, {warmup}, "
            f"{calls_per_run}"
        )
    for _ in range(warmup):
        sync(call())
    times = []
    for _ in range(runs):
        t0 = now()
        for _ in range(calls_per_run):
            out = call()
        sync(out)
        times.append((now() - t0) / calls_per_run)
    return tuple(times)


def interleave(
    calls: dict[str, Callable[[], Any]],
    *,
    runs: int,
    warmup: int,
    calls_per_run: int = 1,
    sync: Callable[[Any], Any] = jax.block_until_ready,
) -> dict[str, dict[str, list[float]]]:
    """Contenders timed in turn, so a drift in a shared machine's load hits each alike:
    ``warmup`` untimed calls of each, then ``runs`` rounds of one :func:`measure` sample each,
    in reverse order every other round (A B, B A, ...). Returns ``{name: {"wall": [...], "cpu":
    [...]}}``: seconds per call, and this process's CPU seconds per call around each sample."""
    if not calls or runs < 1 or warmup < 0 or calls_per_run < 1:
        raise ValueError(f"need calls, runs >= 1, warmup >= 0, calls_per_run >= 1; got "
                         f"{len(calls)} calls, {runs}, {warmup}, {calls_per_run}")  # fmt: skip
    for call in calls.values():
        for _ in range(warmup):
            sync(call())
    out = {name: {"wall": [], "cpu": []} for name in calls}
    for r in range(runs):
        for name in list(calls)[:: -1 if r % 2 else 1]:
            c0 = time.process_time()
            out[name]["wall"] += measure(calls[name], runs=1, warmup=0, sync=sync,
                                         calls_per_run=calls_per_run)  # fmt: skip
            out[name]["cpu"].append((time.process_time() - c0) / calls_per_run)
    return out


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, float]:
    """``jitted.lower(*args).compile()`` and the seconds it took (tracing + XLA compilation).

    Trace-time settings (``jax.default_matmul_precision``) must be active around this call.
    """
    if not hasattr(jitted, "lower"):
        raise TypeError(f"expected a jax.jit-wrapped function, got {type(jitted).__name__}")
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def xla_flops(compiled: Any) -> float | None:
    """FLOPs of one call according to XLA's cost analysis, or None when unavailable/zero.

    A scan body is counted once (see the module docstring): scale it yourself.
    """
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, list | tuple):  # older jax returned one dict per device program
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


@dataclasses.dataclass(frozen=True)
class Timing:
    """One benchmarked program: raw samples plus everything needed to derive rates.

    ``times_s`` are seconds per call; a call runs ``steps_per_call`` training steps (a scan)
    over ``items_per_call`` images in total.
    """

    name: str
    compile_s: float
    times_s: tuple[float, ...]
    items_per_call: int
    steps_per_call: int = 1
    flops_per_call: float | None = None  # the count used for TFLOP/s and MFU
    flops_source: str | None = None  # "analytic" or "xla"
    xla_flops_per_call: float | None = None  # kept for comparison even when not used
    peak_tflops: float | None = None
    clock: str = "wall"  # what times_s count (CLOCKS); compile_s of bench_jit is always wall

    def _pct(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.times_s), q))

    median_s = property(lambda self: self._pct(50))
    p10_s = property(lambda self: self._pct(10))
    p90_s = property(lambda self: self._pct(90))

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.median_s / self.steps_per_call

    @property
    def items_per_s(self) -> float:
        return self.items_per_call / self.median_s

    @property
    def tflops(self) -> float | None:
        return None if self.flops_per_call is None else self.flops_per_call / self.median_s / 1e12

    @property
    def mfu(self) -> float | None:
        if self.tflops is None or not self.peak_tflops:
            return None
        return self.tflops / self.peak_tflops

    def to_dict(self) -> dict:
        """Every field and every derived rate (JSON-ready; None where not applicable)."""
        d = dataclasses.asdict(self)
        d["times_s"] = list(self.times_s)
        d["runs"] = len(self.times_s)
        for k in ("median_s", "p10_s", "p90_s", "ms_per_step", "items_per_s", "tflops", "mfu"):
            d[k] = getattr(self, k)
        return d


def bench_jit(
    jitted: Any,
    *args: Any,
    name: str,
    items: int,
    runs: int = 20,
    warmup: int = 3,
    carry: bool = False,
    steps_per_call: int = 1,
    calls_per_run: int = 1,
    flops: float | None = None,
    peak_tflops: float | None = None,
    clock: str = "wall",
) -> Timing:
    """Compile ``jitted`` for ``args`` (timed apart), warm up, then time ``runs`` samples.

    Args:
      jitted: a ``jax.jit`` function; it is lowered and compiled once here, then the compiled
        executable is called directly (no retracing or cache lookups inside the timing).
      items: images (or examples) processed per call, for img/s.
      carry: feed output ``[0]`` back as argument ``[0]`` (a train step's donated state).
      steps_per_call: training steps one call runs (K for a K-step scan), for ms/step.
      flops: FLOPs per call (analytic); when None, XLA's cost analysis is used if available.
      peak_tflops: for MFU; None gives ``mfu=None`` (CPU).
      clock: ``wall`` or ``cpu`` (this process's CPU seconds) for the samples; compile is wall.
    """
    compiled, compile_s = compile_timed(jitted, *args)
    counted = xla_flops(compiled)
    times = measure(_caller(compiled, args, carry), runs=runs, warmup=warmup,
                    calls_per_run=calls_per_run, clock=clock)  # fmt: skip
    if flops is not None:
        used, source = float(flops), "analytic"
    else:
        used, source = counted, ("xla" if counted is not None else None)
    return Timing(name=name, compile_s=compile_s, times_s=times, items_per_call=items,
                  steps_per_call=steps_per_call, flops_per_call=used, flops_source=source,
                  xla_flops_per_call=counted, peak_tflops=peak_tflops, clock=clock)  # fmt: skip


def _caller(compiled: Any, args: tuple, carry: bool) -> Callable[[], Any]:
    """``compiled(*args)`` as a no-argument call; ``carry`` feeds output [0] back as arg [0]."""
    state = list(args)

    def call():
        out = compiled(*state)
        if carry:
            state[0] = out[0]
        return out

    return call


def bench_loop(
    call: Callable[[], Any],
    *,
    name: str,
    items: int,
    runs: int,
    steps_per_call: int = 1,
    flops: float | None = None,
    peak_tflops: float | None = None,
    sync: Callable[[Any], Any] = jax.block_until_ready,
    clock: str = "wall",
) -> Timing:
    """Time a Python-level loop (an epoch of jitted chunks, an eval pass) that jits inside.

    Its programs compile on the first call, so the first call is the warm-up and
    ``compile_s = first call − median`` (compilation plus first-run costs; never below 0).
    ``call()``'s result is passed to ``sync`` (a host value such as an accuracy is synced).
    Every time, the first call's included, is on ``clock`` (:func:`clock_fn`).
    """
    now = clock_fn(clock)
    t0 = now()
    sync(call())
    first = now() - t0
    times = measure(call, runs=runs, warmup=0, sync=sync, clock=clock)
    return Timing(name=name, compile_s=max(first - float(np.median(times)), 0.0), times_s=times,
                  items_per_call=items, steps_per_call=steps_per_call,
                  flops_per_call=None if flops is None else float(flops),
                  flops_source=None if flops is None else "analytic", peak_tflops=peak_tflops,
                  clock=clock)  # fmt: skip


def profile_ops(
    call: Callable[[], Any], *, calls: int = 5, hlo_text: str = "", top: int | None = 10
) -> list[dict]:
    """Where the time goes: trace ``calls`` calls with ``jax.profiler`` and rank XLA ops.

    Returns the ``top`` (None: all) HLO instructions by total time, each ``{"op", "label", "ms_per_call"}``;
    ``label`` is the JAX source path from the op's metadata when ``hlo_text``
    (``compiled.as_text()``) is given, e.g. ``jit(step)/jvp(jit(_bernoulli))/jit(_uniform)/while``
    for a dropout mask. Time is exclusive: an op nested in another (a fusion inside a ``call``
    or a ``while`` body) is not counted again in its parent.
    GPU traces have an "XLA Ops" line per device; on CPU the ops run on XLA's worker threads.
    """
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir):
            for _ in range(calls):
                jax.block_until_ready(call())
        (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    lines = [ln for plane in data.planes for ln in plane.lines]
    op_lines = [ln for ln in lines if ln.name == "XLA Ops"] or [
        ln for ln in lines if ln.name.startswith("tf_XLA")
    ]
    totals: dict[str, float] = {}
    for line in op_lines:
        events = [e for e in line.events if "::" not in e.name and not e.name.startswith("end: ")]
        events.sort(key=lambda e: (e.start_ns, -e.end_ns))
        stack: list = []  # open (enclosing) events: count each nanosecond once, in the innermost
        for e in events:
            while stack and stack[-1].end_ns <= e.start_ns:
                stack.pop()
            if stack:  # nested (a fusion inside a call/while): not the parent's own time
                totals[stack[-1].name] = totals.get(stack[-1].name, 0.0) - e.duration_ns
            totals[e.name] = totals.get(e.name, 0.0) + e.duration_ns
            stack.append(e)
    labels = dict(re.findall(r"%?([\w.-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo_text))
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [
        {"op": op, "label": labels.get(op, ""), "ms_per_call": ns / 1e6 / calls}
        for op, ns in ranked
    ]


def profile_jit(jitted: Any, *args: Any, carry: bool = False, top: int = 15) -> dict:
    """Compile ``jitted`` for ``args``, warm up once, then :func:`profile_ops` with HLO labels:
    ``{"op_time_share": op_time_shares(all ops), "top_ops": the top ``top`` ops}``.

    ``carry`` as in :func:`bench_jit` (a donated train state is threaded through the calls).
    Trace-time settings (``jax.default_matmul_precision``) must be active around this call.
    """
    compiled, _ = compile_timed(jitted, *args)
    call = _caller(compiled, args, carry)
    jax.block_until_ready(call())  # warm-up
    ops = profile_ops(call, hlo_text=compiled.as_text(), top=None)
    return {"op_time_share": op_time_shares(ops), "top_ops": ops[:top]}


#: how :func:`op_time_shares` buckets XLA ops (first match wins) by HLO name + JAX source label;
#: layout/copy counts only ops that move data (a fusion is named after its root op, so an
#: element-wise fusion that merely contains a bitcast is not a copy)
OP_KINDS = (
    ("dropout RNG", r"bernoulli|_uniform|threefry|random_bits|rng_bit|dropout"),
    ("matmul", r"dot_general|^dot|cublas|gemm|cudnn"),
    ("softmax/norm/gelu", r"reduce|exp|erf|rsqrt|softmax|logistic|layer_norm"),
    (
        "layout/copy",
        r"^(copy|transpose|concatenate|bitcast_pad|wrapped_pad|wrapped_slice|"
        r"wrapped_broadcast|wrapped_concatenate|wrapped_transpose)",
    ),
)


def op_time_shares(ops: list[dict], kinds=OP_KINDS) -> dict[str, float]:
    """Fractions of :func:`profile_ops` time per kind (``"other"`` for the rest), largest first."""
    total = sum(op["ms_per_call"] for op in ops) or 1.0
    shares: dict[str, float] = {}
    for op in ops:
        text = op["op"] + " " + op["label"]
        kind = next((k for k, pat in kinds if re.search(pat, text)), "other")
        shares[kind] = shares.get(kind, 0.0) + op["ms_per_call"] / total
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def default_peak_tflops(device: jax.Device | None = None) -> float | None:
    """The MFU reference for ``device``: the measured H100 bf16 peak on GPUs, None elsewhere.

    On a GPU that is not an H100 the number is still the H100's; pass ``--peak-tflops``.
    """
    device = device or jax.devices()[0]
    return H100_BF16_PEAK_TFLOPS if device.platform == "gpu" else None


def device_info(device: jax.Device | None = None) -> dict:
    """Device name/platform/count, jax and jaxlib versions, host, and the UTC date."""
    device = device or jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_count": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
