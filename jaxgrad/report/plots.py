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

import matplotlib.ticker
from matplotlib.figure import Figure

from jaxgrad.report.io import atomic_write_bytes

__all__ = ["STYLES", "plot_curves", "plot_run_curves", "run_title", "save_figure", "subplots"]

STYLES = ("-", "--", ":", "-.")  # line styles, cycled: a second cue beside colour


def subplots(nrows: int = 1, ncols: int = 1, **kw):
    """Like pyplot's ``subplots`` without pyplot: ``(Figure, axes)``; ``kw`` go to ``Figure``
    (figsize, layout) except ``squeeze``/``sharex``/``sharey``, which go to ``Figure.subplots``."""
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
    ylabels: Mapping[str, str] | None = None,
    note: str = "",
) -> Path:
    """One subplot per panel; each panel maps a series label to ``(x, y)``.

    ``logy`` names the panels drawn on a log y-axis; ``ylabels`` maps a panel to its y label
    (default: the panel's name). Series get distinct colours *and* line styles; a legend with
    more than one entry goes beside the axes, never over the data. ``note`` is printed
    under the figure (e.g. series left out).
    """
    ylabels = dict(ylabels or {})
    wide = any(len(series) > 1 for series in panels.values())
    fig, axes = subplots(
        1,
        len(panels),
        figsize=((6.4 if wide else 4.5) * len(panels), 3.6),
        squeeze=False,
        layout="constrained",
    )
    for ax, (name, series) in zip(axes[0], panels.items()):
        for i, (label, (x, y)) in enumerate(series.items()):
            ax.plot(list(x), list(y), label=label, color=f"C{i % 10}", ls=STYLES[i // 10 % 4])
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabels.get(name, name))
        if name in logy:
            ax.set_yscale("log")
        if xlabel in ("step", "epoch"):  # whole steps / epochs on the axis
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if len(series) > 1:  # beside the axes: a legend never hides data
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    if note:
        fig.supxlabel(note, fontsize=8)
    return save_figure(fig, path)


def run_title(what: str, *, source: str, flags: Sequence[str] = (), **facts: object) -> str:
    """A title that says what was run: ``what · data: <source> · key value · --flags``.

    ``source`` names the data; synthetic data is marked so a curve is never mistaken for a
    real dataset's.
    """
    data = f"data: {source}"
    if "synthetic" in source.lower() and "not" not in source.lower():
        data += " — NOT a real dataset"
    parts = [what, data, *(f"{k} {v}" for k, v in facts.items()), *flags]
    return " · ".join(parts)


def plot_run_curves(
    path: str | os.PathLike,
    *,
    loss: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    accuracy: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    title: str,
    xlabel: str = "epoch",
    loss_label: str = "cross-entropy loss",
    accuracy_label: str = "accuracy (%)",
    chance: float | None = None,
) -> Path:
    """Training curves as the console prints them: loss, and accuracy in % (given as fractions).

    ``chance`` (a fraction) draws the chance level, so a run stuck near chance reads as that
    and not as a plotting bug; the accuracy axis spans 0-100%. With ``xlabel="epoch"`` the
    ticks fall on whole epochs.
    """
    panels = [("loss", loss, loss_label)]
    if accuracy:
        panels.append(("accuracy", accuracy, accuracy_label))
    fig, axes = subplots(
        1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False, layout="constrained"
    )
    for ax, (name, series, ylabel) in zip(axes[0], panels):
        scale = 100.0 if name == "accuracy" else 1.0
        for i, (label, (x, y)) in enumerate(series.items()):
            x, y = list(x), [scale * v for v in y]
            ax.plot(x, y, label=label, color=f"C{i}", ls=STYLES[i % 4], marker="o" * (len(x) < 30))
        if name == "accuracy":
            if chance is not None:
                ax.axhline(100 * chance, color="0.4", ls=(0, (1, 2)), lw=1.2)
                ax.annotate(
                    f"chance {100 * chance:.0f}%",
                    (0.99, 100 * chance),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="bottom",
                    fontsize=8,
                    color="0.3",
                )
            ax.set_ylim(0, 100)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if xlabel == "epoch":
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if len(series) > 1:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
