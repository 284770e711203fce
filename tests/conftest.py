"""Strict test settings (equinox-style) and shared fixtures.

- dtype promotion is strict: an accidental float64/int mix fails loudly;
- warnings are errors (pyproject's filterwarnings);
- `key` gives every test its own PRNG key, derived from the test's name;
- tests in files named ``test_torch_*.py`` are PyTorch parity tests: marked ``torch`` and
  skipped, with a reason, when torch is not importable.
"""

import hashlib
import importlib.util

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")

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
