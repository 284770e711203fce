"""Printed tables, one way: ``rich.table`` (installed with flax), rendered to plain text.

Every table jaxgrad prints (the tour, the doctor, optimizer coverage, benchmarks) goes through
:func:`render_table` so columns line up the same way everywhere, and the text has no colour
codes when it lands in a log file or a test's captured output.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from jaxgrad.report.rank import is_main

__all__ = ["print_table", "render_table"]


def render_table(
    rows: Sequence[Sequence[Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
    right: Sequence[str] = (),
    width: int = 200,
) -> str:
    """The rows as an aligned plain-text table (no ANSI codes), ready to print or log.

    Args:
      rows: one sequence of cells per row (anything with ``str()``), ``len(columns)`` each.
      columns: the header cells.
      title: an optional line above the table.
      right: names of columns to right-align (numbers).
      width: the console width; wider tables wrap their longest cells.
    """
    table = Table(title=title, box=None, show_edge=False, pad_edge=False, title_justify="left")
    for c in columns:
        table.add_column(c, justify="right" if c in right else "left", overflow="fold")
    for r in rows:
        if len(r) != len(columns):
            raise ValueError(f"a row has {len(r)} cells, the table {len(columns)} columns: {r!r}")
        table.add_row(*(str(x) for x in r))
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


def print_table(rows: Sequence[Sequence[Any]], columns: Sequence[str], **kw: Any) -> None:
    """:func:`render_table` printed to stdout (by process 0 only in a multi-process run)."""
    if is_main():
        print(render_table(rows, columns, **kw), flush=True)
