"""Every scenario of the seeds in turn, on its embedded default data, then a summary table.

Run: ``python -m experiments.tour`` (under 2 minutes on 2 CPU cores).

Each experiment module listed in ``TOUR`` exposes ``tour() -> list[Row]``: it runs a short
configuration, prints its own numbers, and returns what the PyTorch seed prints next to what
jaxgrad computed. A row whose optional dependency is missing (the pretrained CLIP row needs
torch + transformers to write its tiny checkpoint) says "skipped: ... not installed" and counts
neither as a match nor as a failure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

from experiments._support.common import Row
from jaxgrad.report import tables
from jaxgrad.report.cli import run_main

#: experiment modules, in the order a PyTorch user meets the ideas
TOUR = (
    "scalar_derivative",
    "vjp",
    "optimizer_step",
    "per_term_grads",
    "pinn_poisson",
    "pinn_helmholtz",
    "vit_cifar10",
    "doctor_demo",
    "clip_contrastive",
)


def run(names: tuple[str, ...] = TOUR) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        mod = importlib.import_module(f"experiments.{name}")
        print(f"\n=== experiments.{name} " + "=" * max(0, 60 - len(name)))
        t0 = time.perf_counter()
        rows.extend(mod.tour())
        print(f"--- {name}: {time.perf_counter() - t0:.1f} s")
    return rows


def print_table(rows: list[Row]) -> None:
    heads = ("scenario", "PyTorch seed prints", "jaxgrad computes", "match")
    said = lambda r: "skipped" if r.skipped else "yes" if r.match else "NO"
    cells = [(r.scenario, r.pytorch, r.jaxgrad, said(r)) for r in rows]
    print()
    tables.print_table(cells, heads, width=400)  # never fold a cell
    ran = [r for r in rows if not r.skipped]
    n_ok = sum(r.match for r in ran)
    skipped = f" ({len(rows) - len(ran)} skipped: optional dependency missing)" * (
        len(ran) < len(rows)
    )
    print(f"\n{n_ok}/{len(ran)} scenarios match the PyTorch seeds{skipped}.")


def fast_compile_flags() -> None:
    """XLA backend optimisation level 0 for this process (a user's own setting wins).

    The tour's programs are tiny and each runs briefly, so compiling dominates its time; level 0
    compiles the PINN and CLIP programs ~1.5x faster on CPU. Only effective before JAX starts a
    backend, so :func:`main` calls it first; importing this module changes nothing (a test that
    imports it must not pass the flag on to the processes it spawns).
    """
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
        os.environ["XLA_FLAGS"] = flags.strip()


def main(argv=None) -> int:
    fast_compile_flags()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=TOUR, help="run only these experiments")
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="compile everything afresh, keep nothing (see jaxgrad.training.xla.enable_compile_cache)",
    )
    args = parser.parse_args(argv)
    if not args.no_compile_cache:
        from jaxgrad.training.xla import enable_compile_cache

        print(f"compilation cache: {enable_compile_cache() or 'off'}")
    t0 = time.perf_counter()
    rows = run(tuple(args.only) if args.only else TOUR)
    print_table(rows)
    print(f"tour finished in {time.perf_counter() - t0:.1f} s")
    return 0 if all(r.match or r.skipped for r in rows) else 1


if __name__ == "__main__":
    run_main(main)
