"""Terminal output: one stderr console and Rich progress bars, silenced in quiet mode.

Everything human-readable goes to stderr, so `--json` leaves stdout with JSON alone.
"""

from __future__ import annotations

import contextlib
import os
import time

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
    """Print a plain-text line (brackets in it are text, not rich markup), wrapped at
    words in a terminal, whole where stderr is a file or a pipe (a log read with grep)."""
    if not QUIET:
        console.print(escape(message), soft_wrap=not console.is_terminal)


_COLLECTORS: list[list[str]] = []  # open `collected_warnings` lists, innermost last


def warn(message: str) -> None:
    """Print a plain-text `warning:` line; shown in quiet and --json mode too (stderr), not
    by the secondary processes of a distributed job. Also kept by `collected_warnings`."""
    for collected in _COLLECTORS:
        collected.append(message)
    if not SECONDARY:
        console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def collected_warnings():
    """`with collected_warnings() as said:` every `warn` meanwhile, printed as ever and kept
    in `said`, for a result that carries its warnings (`--json` readers see no stderr)."""
    said: list[str] = []
    _COLLECTORS.append(said)
    try:
        yield said
    finally:
        _COLLECTORS.remove(said)


def progress(*extra_fields: str) -> Progress | LineProgress:
    """A progress bar with step counts, ETA and the named task fields (e.g. loss); where
    stderr is a file or a pipe (`mlxspec study ... 2> log`), plain progress lines instead
    (`LineProgress`).

    Descriptions and fields are plain text, never markup: they hold corpus specs and
    paths, whose brackets and `:name:` must print as written. In a narrow terminal the
    description wraps and the bar shrinks; the numbers are never cut ("301531…")."""
    if not QUIET and not console.is_terminal and not console.is_jupyter:
        return LineProgress(extra_fields)
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


LINE_EVERY = 60.0  # seconds between two progress lines of a task in a log


def duration(seconds: float) -> str:
    """Three digits at most in the largest unit that keeps them (90 s is "1.5 min", a
    million domains' hours are days)."""
    for unit, size, below in (("s", 1, 90), ("min", 60, 5400), ("h", 3600, 172_800), ("days", 86_400, 8_640_000)):
        if seconds < below:
            return f"{seconds / size:.0f} {unit}" if unit == "s" else f"{seconds / size:.3g} {unit}"
    return f"{seconds / 86_400:,.0f} days"


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


class LineProgress:
    """The progress bar's API (`add_task`, `update`, a context) for a log: rich draws only
    a bar's last frame where stderr is not a terminal, so a pre-training of half an hour
    wrote nothing to a study's log until it ended. One plain line per task every
    LINE_EVERY seconds and one when it ends: count (of total, with the share), the named
    fields, time elapsed and, with a total and until the end, the time left at the rate so
    far."""

    def __init__(self, fields: tuple[str, ...] = ()):
        self.fields, self.tasks = fields, []

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        for task in self.tasks:
            if task["visible"]:
                self._print(task, final=True)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, visible: bool = True,
                 **fields) -> int:
        now = time.monotonic()
        self.tasks.append({"description": description, "total": total, "completed": completed, "start": now,
                           "from": completed, "printed": now, "fields": fields, "visible": visible})
        return len(self.tasks) - 1

    def update(self, task_id: int, advance: float | None = None, completed: float | None = None,
               visible: bool | None = None, **fields) -> None:
        task = self.tasks[task_id]
        if completed is not None:
            task["completed"] = completed
        if advance:
            task["completed"] += advance
        if visible is not None:
            task["visible"] = visible
        task["fields"].update(fields)
        if task["visible"] and time.monotonic() - task["printed"] >= LINE_EVERY:
            self._print(task)

    def _print(self, task: dict, final: bool = False) -> None:
        now = time.monotonic()
        task["printed"] = now
        done, total, elapsed = task["completed"], task["total"], now - task["start"]
        parts = [task["description"], f"{done:,.0f}" + (f"/{total:,.0f} ({done / total:.0%})" if total else "")]
        parts += [str(task["fields"][name]) for name in self.fields if str(task["fields"].get(name, "")).strip()]
        parts.append(f"elapsed {_clock(elapsed)}")
        if total and task["from"] < done < total and not final:  # an early stop ends before its total
            parts.append(f"eta {_clock(elapsed * (total - done) / (done - task['from']))}")
        console.print(escape("  ".join(parts)), highlight=False, soft_wrap=True)


@contextlib.contextmanager
def task(description: str, total: float | None, **fields):
    """`with task("tokenizing", total) as advance: advance(n)` — a one-task progress bar,
    shown from its first progress: a task with nothing to do (a cache hit) says nothing."""
    with progress(*fields) as bar:
        # hidden until there is progress, but timed from the start (its first chunk counts)
        tid = bar.add_task(description, total=total, visible=False, **fields)

        def advance(n: float = 1, **updates):
            if n or updates:
                updates["visible"] = True
            bar.update(tid, advance=n, **updates)

        yield advance
