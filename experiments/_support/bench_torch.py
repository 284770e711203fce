"""The PyTorch side of ``experiments.bench``: the seed's train step on experiments._support.torch_vit.

torch is imported inside :func:`time_torch`, so importing this module never needs torch. The
statistics are jaxgrad.inspect.bench's (:func:`jaxgrad.inspect.bench.measure`), with ``torch.cuda.synchronize``
as the sync on a GPU. The PyTorch code being timed, per variant::

    model = ViT(...).to(device).train(); opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fwd = torch.compile(model) if variant.startswith("compile") else model
    with torch.autocast(device, dtype=torch.bfloat16, enabled=variant in ("amp", "compile")):
        loss = F.cross_entropy(fwd(x), y)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
"""

from __future__ import annotations

from jaxgrad.inspect.bench import Timing, clock_fn, measure
from jaxgrad.models.vit import ViTConfig

__all__ = ["H100_TORCH_ANCHOR_MS", "TORCH_PRECISION", "TORCH_VARIANTS", "time_torch"]

#: eager fp32, eager + AMP bf16, torch.compile + AMP bf16, torch.compile fp32 (the compiled
#: anchor on CPU, where bf16 is emulated)
TORCH_VARIANTS = ("eager", "amp", "compile", "compile-fp32")

#: what each variant computes in (the table's precision column)
TORCH_PRECISION = {"eager": "fp32", "amp": "amp bf16", "compile": "compile bf16",
                   "compile-fp32": "compile fp32"}  # fmt: skip

#: PyTorch on an H100 80GB, ms per train step (shared/guide/anchors.md), keyed (variant, batch)
H100_TORCH_ANCHOR_MS = {
    ("eager", 64): 18.7,
    ("amp", 64): 21.0,
    ("compile", 64): 15.0,
    ("eager", 512): 74.7,
    ("amp", 512): 29.5,
    ("compile", 512): 18.8,
}


def time_torch(
    vit: ViTConfig,
    *,
    variants: tuple[str, ...],
    batches: tuple[int, ...],
    runs: int,
    warmup: int,
    calls_per_sample: int = 1,
    threads: int = 0,
    seed: int = 0,
    flops_per_image: float | None = None,
    peak_tflops: float | None = None,
    clock: str = "wall",
    skipped: list[dict],
) -> list[tuple[str, int, Timing]]:
    """``(variant, batch, Timing)`` per variant × batch; failures go to ``skipped`` with the
    reason (torch.compile needs a C++ toolchain on CPU, Triton on GPU) and the rest goes on.

    ``compile_s`` is the first step's time (torch.compile compiles there; eager pays its
    first-call costs). ``threads`` > 0 calls ``torch.set_num_threads`` on CPU. ``clock``:
    ``wall`` or ``cpu`` (this process's CPU seconds, all threads: jaxgrad.inspect.bench.clock_fn).
    """
    now = clock_fn(clock)
    import torch
    import torch.nn.functional as F

    from experiments._support.torch_vit import from_vit_config

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu" and threads:
        torch.set_num_threads(threads)
    sync = (lambda _: torch.cuda.synchronize()) if dev == "cuda" else (lambda _: None)
    out = []
    for variant in variants:
        for b in batches:
            try:
                torch.manual_seed(seed)
                model = from_vit_config(vit).to(dev).train()
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                fwd = torch.compile(model) if variant.startswith("compile") else model
                x = torch.randn(b, vit.channels, vit.image_size, vit.image_size, device=dev)
                y = torch.randint(0, vit.num_classes, (b,), device=dev)

                def step(fwd=fwd, opt=opt, x=x, y=y, amp=variant in ("amp", "compile")):
                    with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
                        loss = F.cross_entropy(fwd(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    return loss

                t0 = now()
                sync(step())
                first = now() - t0
                times = measure(step, runs=runs, warmup=warmup, sync=sync,
                                calls_per_run=calls_per_sample, clock=clock)  # fmt: skip
            except Exception as e:
                skipped.append({"scenario": f"torch {variant} b{b}", "reason": repr(e)[:300]})
                print(f"skipped torch {variant} b{b}: {e!r}"[:300], flush=True)
                continue
            flops = None if flops_per_image is None else 3 * flops_per_image * b
            t = Timing(f"torch {variant} b{b}", first, times, items_per_call=b,
                       flops_per_call=flops, flops_source="analytic" if flops else None,
                       peak_tflops=peak_tflops, clock=clock)  # fmt: skip
            out.append((variant, b, t))
    return out
