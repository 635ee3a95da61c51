"""What `mlxspec` prints on stdout: a command's result, as plain-text tables and lines,
or (`--json`) as one JSON object, last. Progress and errors go to stderr (`ui`, errors.py).

Everything printed from user data (corpus specs, paths, sample text) is plain text: no
markup, no emoji codes.
"""

from __future__ import annotations

import io
import json
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlx_specialize import ui

class _Console(Console):
    """Rich's console, but a reader that leaves (`| head`) is a BrokenPipeError, which the
    command's handler (errors.py) ends quietly with 141: rich's own exits 1."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


# Logs (not a terminal) keep whole tables.
out = _Console(width=None if sys.stdout.isatty() else 160, markup=False, emoji=False)
JSON = False  # this command's --json (options.output_options sets it)


class Verbatim(str):
    """Text `emit` prints as it is, never wrapped to the terminal: markdown, whose table
    rows a wrap would break."""


def set_json(on: bool) -> None:
    global JSON
    JSON = on


def emit(result: dict, *shown) -> None:
    """A command's result: `result` as one JSON line with --json, else each of `shown`
    (tables, lines of text) in turn. Under mlx.launch only rank 0 reports."""
    if ui.SECONDARY:
        return
    if JSON:
        print(json.dumps(result, default=float), flush=True)  # a closed pipe fails here, not at exit
        return
    for item in shown:
        if isinstance(item, Table) and not _fits(item, out.width):
            item = _records(item)
        out.print(Text(item) if isinstance(item, str) else item, highlight=False, soft_wrap=isinstance(item, Verbatim))


def _fits(table: Table, width: int) -> bool:
    """Whether rich lays the table out in `width` columns with every cell whole on one
    line and every word of a header whole (a header may wrap at its spaces): a value split
    mid-word ("4.11e+1" / "0") could be misread, and an interval split at its comma
    ("1.829 [1.779," / "1.878]") reads as two values. Rendered to find out: rich shares out
    the width its own way."""
    if not table.show_header or len(table.columns) <= 2:  # key / value: only long paths fold
        return True
    trial = Console(file=io.StringIO(), width=width, markup=False, emoji=False)
    trial.print(table, highlight=False)
    rendered = trial.file.getvalue()
    words = {word for column in table.columns for word in str(column.header).split()}
    cells = {str(cell) for column in table.columns for cell in column.cells}
    return all(word in rendered for word in words) and all(cell in rendered for cell in cells)


def _records(table: Table) -> str:
    """A table too wide for the terminal, as one block per row: its first cell, then each
    other column's header and value on a line of its own."""
    headers = [str(column.header) for column in table.columns]
    rows = zip(*(list(column.cells) for column in table.columns))
    lines = [str(table.title)] if table.title else []
    for row in rows:
        lines.append(str(row[0]))
        lines += [f"  {header}: {value}" for header, value in zip(headers[1:], row[1:])]
    return "\n".join(lines)


def make_table(title: str, *columns: str, right: tuple[str, ...] = (), show_header: bool = True) -> Table:
    """A results table that fits the terminal: every column may wrap and folds what is
    too long (a path), so a number is never cut to "600,0…"; one too wide to fit without
    splitting a number is printed as records (`emit`). Fill it with `add_row`."""
    table = Table(title=Text(title), title_justify="left", show_header=show_header)
    for col in columns:
        table.add_column(col, overflow="fold", justify="right" if col in right else "left")
    return table


def add_row(table: Table, *cells) -> None:
    """Cells as plain text: user data (a corpus spec, a sample of text) may hold brackets or `:name:`."""
    table.add_row(*(Text(str(cell)) for cell in cells))


def summary_table(title: str, summary: dict) -> Table:
    """A key / value table of a summary; numbers with thousands separators."""
    table = make_table(title, "key", "value", show_header=False)
    for key, value in summary.items():
        add_row(table, key, _number(value) if isinstance(value, float) else value)
    return table


def _number(x: float) -> str:
    return f"{x:,.2f}" if x < 1e4 else f"{x:,.0f}"
