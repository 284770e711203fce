"""Pieces every experiment shares: the tour's result rows and number formatting."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Row", "allclose", "close_row", "fmt"]


@dataclass(frozen=True)
class Row:
    """One line of the tour's summary: what the PyTorch seed prints vs what jaxgrad computes."""

    scenario: str
    pytorch: str
    jaxgrad: str
    match: bool
    skipped: bool = False  # an optional dependency is missing: shown, not counted either way


def fmt(x) -> str:
    """Print arrays the way a PyTorch user reads them: rounded, no dtype noise."""
    a = np.asarray(x)
    if a.ndim == 0:
        return f"{a.item():.6g}"
    # One line, so a 2-D gradient fits in a cell of the tour table.
    return np.array2string(np.round(a, 6), separator=", ").replace("\n", "")


def allclose(a, b, *, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """float32-tolerance comparison (0.4 is 0.39999998 in float32)."""
    return bool(np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol, atol))


def close_row(scenario: str, pytorch: str, got, want) -> Row:
    """The tour's usual row: ``got`` printed by :func:`fmt`, a match when close to ``want``."""
    return Row(scenario, pytorch, fmt(got), allclose(got, want))
