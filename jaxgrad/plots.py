"""Small matplotlib helpers for training curves.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), not pyplot: no
global backend is switched at import, no figure is registered in pyplot's state (nothing to
close), and ``Figure.savefig`` renders headless with Agg.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from jaxgrad.io import atomic_write_bytes

__all__ = ["plot_curves", "save_figure", "subplots"]


def subplots(nrows: int = 1, ncols: int = 1, **kw):
    """``plt.subplots`` without pyplot: ``(Figure, axes)``; ``kw`` go to ``Figure`` (figsize)
    except ``squeeze``/``sharex``/``sharey``, which go to ``Figure.subplots``."""
    grid = {k: kw.pop(k) for k in ("squeeze", "sharex", "sharey") if k in kw}
    fig = Figure(**kw)
    return fig, fig.subplots(nrows, ncols, **grid)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def plot_curves(
    path: str | os.PathLike,
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    *,
    title: str = "",
    xlabel: str = "step",
    logy: Sequence[str] = (),
) -> Path:
    """One subplot per panel; each panel maps a series label to ``(x, y)``.

    ``logy`` names the panels drawn on a log y-axis.
    """
    fig, axes = subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items()):
        for label, (x, y) in series.items():
            ax.plot(list(x), list(y), label=label)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        if name in logy:
            ax.set_yscale("log")
        if len(series) > 1:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
