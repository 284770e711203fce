"""Strict test settings (equinox-style) and shared fixtures.

- dtype promotion stays "standard": "strict" would be the equinox choice, but optax itself
  mixes int32 step counters with floats (Adam's bias correction, MultiSteps' mean), so strict
  promotion breaks every training test; tests of pure jaxgrad math opt in with the
  ``strict_dtypes`` fixture;
- warnings are errors (pyproject's filterwarnings);
- `key` gives every test its own PRNG key, derived from the test's name;
- tests in files named ``test_torch_*.py`` are PyTorch parity tests: marked ``torch`` and
  skipped, with a reason, when torch is not importable.
"""

import hashlib
import importlib.util

import jax
import pytest

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


@pytest.fixture
def strict_dtypes():
    """Run the test under strict dtype promotion (no silent int/float or width mixing)."""
    with jax.numpy_dtype_promotion("strict"):
        yield
