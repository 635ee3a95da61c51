"""`mlxspec study`: run a study's grid (`mlxspec study SPEC.toml`), report one from its
results alone (`mlxspec study report RESULTS --out DIR`), or print an example spec
(`mlxspec study example`). Calls `mlx_specialize.study`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mlx_specialize.errors import SpecializeError
from mlx_specialize.study import check_runnable, load_study, report_study, run_study, study_status
from mlx_specialize.study.spec import EXAMPLE
from mlx_specialize.ui import duration

from .options import CACHE_OPT
from .output import Verbatim, emit

SHOWN_PENDING = 10  # --status: the next cells listed (--json lists all)


def study(
    args: List[str] = typer.Argument(..., metavar="SPEC.toml | report RESULTS... | example",
                                     help="A study spec to run; `report` and the results files to report; or "
                                     "`example` for a commented spec to start from."),
    out: Optional[Path] = typer.Option(None, "--out", help="report: the folder for the figures and tables.md."),
    spec: Optional[Path] = typer.Option(None, "--spec", help="report: the study spec, for its floors (bits per byte "
                                        "of a classical coder per target) and the cells not yet measured (its "
                                        "corpora are not needed)."),
    target_ppl: Optional[float] = typer.Option(None, "--target-ppl", min=1.0, help="report: the macro perplexity the "
                                               "cost figure reaches [default: SLM's at its largest budget]."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="report: write the headline table into this "
                                          "markdown file, between its lines <!-- study headline: mlxspec study "
                                          "report --readme --> and <!-- /study headline -->."),
    status: bool = typer.Option(False, "--status", help="run: list what of the grid is done and what is left; "
                                "trains no model (it may train the study's tokenizer and tokenize the targets, "
                                "seconds, to tell a whole train split)."),
    max_cells: Optional[int] = typer.Option(None, "--max-cells", min=1, help="run: at most this many cells, then "
                                            "stop (the next call continues)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0.0, help="run: start no cell after "
                                                "this many minutes (the one under way finishes)."),
    data: Optional[Path] = typer.Option(None, "--data", help="run: the folder of the spec's corpora by name "
                                        "[default: the spec's `data`]."),
    keep_runs: bool = typer.Option(False, "--keep-runs", help="run: keep each cell's run folder (its model) once "
                                   "its line is written."),
    cache_dir: Optional[Path] = CACHE_OPT,
):
    """Run the paper's grid (methods x budgets x domain-set sizes x targets x seeds) as a study: every cell cached,
    resumable, one JSON line per finished cell; or print its tables and write its figures from results alone.

    A finished cell is never run again: run the same command to continue an interrupted study. The spec's format:
    `mlxspec study example` prints a commented one."""
    given = {"--out": out, "--spec": spec, "--target-ppl": target_ppl, "--readme": readme, "--status": status or None,
             "--max-cells": max_cells, "--max-minutes": max_minutes, "--data": data,
             "--keep-runs": keep_runs or None, "--cache-dir": cache_dir}
    action = args[0] if args[0] in ("report", "example") else "run"
    allowed = {"report": ("--out", "--spec", "--target-ppl", "--readme"), "example": (),
               "run": ("--status", "--max-cells", "--max-minutes", "--data", "--keep-runs", "--cache-dir")}[action]
    stray = [name for name, value in given.items() if value is not None and name not in allowed]
    if stray:
        raise SpecializeError(f"study {'' if action == 'run' else action + ' '}takes no {', '.join(stray)} "
                              f"({'its options: ' + ', '.join(allowed) if allowed else 'options'})")
    if action == "example":
        emit({"spec": EXAMPLE}, EXAMPLE.rstrip())
        return
    if action == "report":
        if len(args) < 2:
            raise SpecializeError("study report: name the results file(s): mlxspec study report RESULTS --out DIR")
        result = report_study([Path(a) for a in args[1:]], out, None, target_ppl, readme, spec)
        emit(result, Verbatim(result["tables"]), *([f"figures: {', '.join(result['figures'])}"] if out else []))
        return
    if len(args) != 1:
        raise SpecializeError(f"study: one spec file, not {len(args)} arguments (or `report RESULTS...`)")
    loaded = load_study(args[0], data=data)
    if status:
        result = study_status(loaded, cache_dir)
    else:
        check_runnable(loaded)
        result = run_study(loaded, cache_dir, max_cells, keep_runs, max_minutes)
    pending = result["pending"]
    shown = [f"{loaded.name}: {result['done']} of {result['cells']} cells done"
             + (f", {result['ran']} run now" if "ran" in result else "") + f"; results in {result['results']}"]
    left = result.get("time_left")
    if left and not left["cells"] and left["unknown"]:  # (cells standing for a done whole split take no time)
        shown.append("time left: unknown until a cell of the same method, budget, domain-set size and options is "
                     "measured")
    elif left and (left["cells"] or left["unknown"]):
        parts = [f"time left: about {duration(left['seconds'])} for {left['cells']} of the {len(pending)} "
                 f"cell{'s' if len(pending) != 1 else ''} left (their peers' measured seconds)"]
        if left["unknown"]:
            one = left["unknown"] == 1
            parts.append(f"{left['unknown']} {'has' if one else 'have'} no measured peer yet (the same method, budget, "
                         "domain-set size and options)")
        if left["same"]:
            one = left["same"] == 1
            parts.append(f"{left['same']} ask{'s' if one else ''} for more tokens than {'its' if one else 'their'} "
                         f"target's train split holds, so {'it' if one else 'each'} is its target's whole-split cell, "
                         "run once")
        shown.append("; ".join(parts))
    if result.get("stopped"):
        shown.append(f"stopped at the {result['stopped']} limit: run the same command again to continue")
    if pending:
        shown.append("left, in running order:\n  " + "\n  ".join(pending[:SHOWN_PENDING])
                     + (f"\n  ... and {len(pending) - SHOWN_PENDING} more (--json lists all)"
                        if len(pending) > SHOWN_PENDING else ""))
    emit(result, *shown)
