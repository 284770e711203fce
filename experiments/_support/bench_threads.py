"""``experiments.bench --threads 1 2``: the same benchmark once per CPU thread count, one table.

XLA sizes its CPU thread pool once, from the cores the process may run on, when the backend
starts; so each thread count runs in a child process (``python -m experiments.bench`` with
the config passed as JSON in :data:`CHILD_ENV`) that first pins itself to N cores
(``os.sched_setaffinity``) and gives torch the same N (``torch.set_num_threads``). The
parent gathers the children's rows (each tagged ``threads``) into one report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from jaxgrad.training.xla import keep_host_memory

__all__ = ["CHILD_ENV", "child_config", "pin_threads", "run_children"]

#: the child's config (JSON of the parent's, with one thread count and its own --out)
CHILD_ENV = "JAXGRAD_BENCH_CHILD_CONFIG"


def pin_threads(n: int) -> None:
    """Run this process (XLA's pool, torch's OpenMP) on its first ``n`` allowed cores; call it
    before JAX's backend starts."""
    cores = sorted(os.sched_getaffinity(0))
    if n > len(cores):
        raise ValueError(f"--threads {n}: this process may use only {len(cores)} cores")
    os.sched_setaffinity(0, cores[:n])


def run_children(cfg) -> tuple[list[dict], list[dict]]:
    """``(rows, skipped)`` of one child run per ``cfg.threads`` entry, in order."""
    rows, skipped = [], []
    for n in cfg.threads:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.json"
            child = dataclasses.replace(cfg, threads=(n,), out=str(out))
            env = {**os.environ, CHILD_ENV: json.dumps(dataclasses.asdict(child))}
            print(f"--- threads {n} (child process pinned to {n} core(s)) ---", flush=True)
            subprocess.run([sys.executable, "-m", "experiments.bench"], env=env,
                           check=True)  # fmt: skip
            report = json.loads(out.read_text())
        rows += report["results"]
        skipped += report["skipped"]
    return rows, skipped


def child_config(config_cls):
    """The child's config, from :data:`CHILD_ENV`, after pinning this process to its threads."""
    fields = json.loads(os.environ[CHILD_ENV])
    cfg = config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    pin_threads(cfg.threads[0])
    keep_host_memory()  # as parse() does in the parent
    return cfg
