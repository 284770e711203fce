"""Strict test settings (equinox-style) and shared fixtures.

- dtype promotion is "strict" and rank promotion "raise" in every test (the autouse
  ``_strict_promotion`` fixture): no silent int/float or width mixing, no implicit broadcasting
  of a lower-rank array. A module opts out with a module-level ``STANDARD_PROMOTION = "why"``;
  the reasons are not jaxgrad's code but the libraries it drives:
    * optax 0.2.8 mixes int32 step counters with floats (Adam's bias correction ``b ** count``,
      ``MultiSteps``' ``emit * step``, schedules), so every module that takes real optimizer
      steps opts out;
    * flax NNX layers and losses broadcast a ``[F]`` bias against ``[B, F]`` activations, which
      rank promotion "raise" rejects, so modules that run NNX models opt out;
  fixtures of module scope are set up before the autouse fixture and run with standard rules;
- warnings are errors (pyproject's filterwarnings);
- `key` gives every test its own PRNG key, derived from the test's name;
- tests in files named ``test_torch_*.py`` are PyTorch parity tests: marked ``torch`` and
  skipped, with a reason, when torch is not importable;
- the persistent compilation cache is off (JAXGRAD_COMPILE_CACHE=off), so tests leave the
  user's cache alone;
- `spawn` starts a Python script in the background for a test module (a second process, or
  one with other XLA flags) and reaps it when the module ends.
"""

import hashlib
import importlib.util
import os
import subprocess
import sys

import jax
import pytest

# Tests never write into the user's compilation cache (jaxgrad.training.xla.enable_compile_cache, called
# by every experiment's CLI parse); subprocesses the tests start inherit this.
os.environ["JAXGRAD_COMPILE_CACHE"] = "off"

HAS_TORCH = importlib.util.find_spec("torch") is not None


def pytest_collection_modifyitems(config, items):
    skip_torch = pytest.mark.skip(reason="torch is not installed: pip install -e '.[torch]'")
    for item in items:
        if item.path.name.startswith("test_torch_"):
            item.add_marker(pytest.mark.torch)
            if not HAS_TORCH:
                item.add_marker(skip_torch)


@pytest.fixture
def key(request):
    """A PRNG key unique to the requesting test (stable across runs)."""
    digest = hashlib.sha256(request.node.nodeid.encode()).digest()
    return jax.random.key(int.from_bytes(digest[:4], "little"))


@pytest.fixture(autouse=True)
def _strict_promotion(request):
    """Strict dtype promotion and rank promotion "raise", unless the test's module says
    ``STANDARD_PROMOTION = "<why>"`` (a non-empty reason)."""
    reason = getattr(request.module, "STANDARD_PROMOTION", None)
    if reason is not None and not (isinstance(reason, str) and reason.strip()):
        raise ValueError(f"{request.module.__name__}.STANDARD_PROMOTION must say why it opts out")
    if reason:
        yield
        return
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture(scope="module")
def spawn():
    """``spawn(args, **env) -> Popen``: ``python *args`` with text stdout/stderr pipes and the
    CPU platform; started at once so it runs while the module's other tests do. Processes
    still running when the module ends (their test failed early or was deselected) are
    killed, and every pipe is closed (an open pipe is a ResourceWarning, an error here)."""
    procs = []

    def start(args, **env):
        proc = subprocess.Popen(
            [sys.executable, *map(str, args)],
            env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()  # closing twice is fine
