"""The persistent compilation cache: where it goes, the switches that turn it off, and that an
experiment's CLI fills it (in a subprocess, into a temporary folder: never the user's cache)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxgrad.training.xla import CACHE_ENV, compile_cache_dir

SCRIPT = """
import dataclasses, sys
import jax, jax.numpy as jnp
from jaxgrad.report.cli import option, parse

@dataclasses.dataclass(frozen=True)
class Config:
    n: int = option(3, "size")

cfg = parse(Config, sys.argv[1:])
print(float(jax.jit(lambda x: jnp.sin(x).sum())(jnp.ones(cfg.n))))
"""


def test_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "here"))
    assert compile_cache_dir() == tmp_path / "here"
    for off in ("off", "0", "", "False"):
        monkeypatch.setenv(CACHE_ENV, off)
        assert compile_cache_dir() is None
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "jaxgrad" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache_dir() == Path.home() / ".cache" / "jaxgrad" / "xla"


def _run(tmp_path, *args):
    env = {**os.environ, CACHE_ENV: str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "cache"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("flag", [False, True])
def test_cli_parse_fills_the_cache_unless_told_not_to(tmp_path, flag):
    entries = _run(tmp_path, *(["--no-compile-cache"] if flag else []))
    if flag:
        assert entries == []
    else:
        assert entries, "the experiment's compiled program was not written to the cache"
