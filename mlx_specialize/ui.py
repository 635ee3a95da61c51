"""Terminal output: one stderr console and Rich progress bars, silenced in quiet mode.

Everything human-readable goes to stderr, so `--json` leaves stdout with JSON alone.
"""

from __future__ import annotations

import contextlib
import os

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

# No emoji codes: a corpus path or spec holding `:train:` must print as written, not as a train emoji.
console = Console(stderr=True, emoji=False)


def _launched_rank() -> int:
    """Rank given by a distributed launcher (mlx.launch, mpirun); 0 when not launched."""
    for var in ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


SECONDARY = _launched_rank() > 0  # of several processes, only rank 0 prints progress
QUIET = SECONDARY


def set_quiet(quiet: bool) -> None:
    global QUIET
    QUIET = quiet or SECONDARY


def info(message: str) -> None:
    """Print a plain-text line (brackets in it are text, not rich markup)."""
    if not QUIET:
        console.print(escape(message))


def warn(message: str) -> None:
    """Print a plain-text `warning:` line; shown in quiet and --json mode too (stderr), not
    by the secondary processes of a distributed job."""
    if not SECONDARY:
        console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def progress(*extra_fields: str) -> Progress:
    """A progress bar with step counts, ETA and the named task fields (e.g. loss).

    Descriptions and fields are plain text, never markup: they hold corpus specs and
    paths, whose brackets and `:name:` must print as written. In a narrow terminal the
    description wraps and the bar shrinks; the numbers are never cut ("301531…")."""
    whole = Column(no_wrap=True)
    columns = [
        TextColumn("{task.description}", style="bold", markup=False, table_column=Column(overflow="fold")),
        BarColumn(),
        MofNCompleteColumn(table_column=whole),
        *[TextColumn(f"{{task.fields[{name}]}}", markup=False, table_column=whole) for name in extra_fields],
        TimeElapsedColumn(table_column=whole),
        TextColumn("eta", table_column=whole),
        TimeRemainingColumn(table_column=whole),
    ]
    return Progress(*columns, console=console, disable=QUIET, transient=False)


@contextlib.contextmanager
def task(description: str, total: float | None, **fields):
    """`with task("tokenizing", total) as advance: advance(n)` — a one-task progress bar."""
    with progress(*fields) as bar:
        tid = bar.add_task(description, total=total, **fields)

        def advance(n: float = 1, **updates):
            bar.update(tid, advance=n, **updates)

        yield advance
