"""Small matplotlib helpers (headless Agg backend) for training curves."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxgrad.io import atomic_write_bytes  # noqa: E402

__all__ = ["plot_curves", "save_figure"]


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG and write it atomically; closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
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
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
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
