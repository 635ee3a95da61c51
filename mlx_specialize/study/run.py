"""Running a study: every cell of the grid not yet in the results file, one `specialize`
call each, one JSON line appended per finished cell.

Cached and resumable at three levels: a finished cell is in the results file and is never
run again (on this machine or another: its key names no path); an interrupted cell's run
folder (CACHE/study-runs/NAME/KEY) continues from its last finished phase or checkpoint;
what cells share (a generic pre-training, a clustering, a teacher) is built once in the
cache. Two processes may run one study: a cell is locked while it runs, and found done by
the other. A cell asking for more domain tokens than the target's train split holds is the
cell of the whole split: it is run once, and the other is recorded as `same_as` it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

from .. import ui
from ..accel import subnormals
from ..accel.backend import cpu_description
from ..errors import SpecializeError
from ..methods import get_method
from ..methods.clusters import corpus_split, generic_tokenizer
from ..methods.llm import equal_flops_tokens, llm_twin
from ..models.dense import flops_per_token
from ..models.presets import get_preset
from ..runtime.cache import default_cache_dir, locked
from ..runtime.provenance import code_version
from .report import flushed
from .spec import Cell, Study

LLM_METHODS = ("llm", "llm-lora")  # pre-train the preset's large twin: fewer tokens for the same FLOPs


def read_results(path: Path) -> dict[str, dict]:
    """The results file's lines by cell key (a line cut short by a kill is skipped)."""
    lines, bad, foreign = {}, [], False
    if not Path(path).is_file():
        return lines
    try:
        texts = Path(path).read_text().splitlines()
    except UnicodeDecodeError:
        raise SpecializeError(f"{path} is not a results file (not text)") from None
    for number, text in enumerate(texts, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError:
            # a write cut short is the start of a line of ours; `append_result` ends it and
            # goes on, so cut lines may be anywhere (a study killed twice before its first cell)
            bad.append(number)
            foreign = foreign or not text.lstrip().startswith("{")
            continue
        if isinstance(line, dict) and isinstance(line.get("cell"), str):
            lines[line["cell"]] = line
        else:  # whole JSON, but not a result: another kind of file if nothing else is a result
            bad.append(number)
            foreign = True
    if foreign and not lines:
        raise SpecializeError(f"{path} is not a results file of `mlxspec study` (no line is a result line)")
    if bad:  # one warning for the file, not one per line
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        ui.warn(f"{path}: line{'s' if len(bad) > 1 else ''} {shown} {'are' if len(bad) > 1 else 'is'} not a "
                "result line (a write cut short?): skipped")
    return lines


def append_result(path: Path, line: dict) -> None:
    """One line at the end of the results file, on disk before returning; a previous
    line cut short (no newline) is ended first, so it cannot swallow this one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(json.dumps(line, sort_keys=True).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def pretrain_tokens(study: Study, cell: Cell) -> int:
    """The tokens the cell's method pre-trains on for its budget (see spec.py); the
    LLM methods convert the budget themselves (`LLM.resolve`): this is what they do."""
    if cell.method in LLM_METHODS:
        return equal_flops_tokens(cell.budget, study.preset, llm_twin(study.preset),
                                  dict(cell.options).get("vocab_size"))
    return cell.budget


def budget_flops(study: Study, budget: int, vocab_size: int | None = None) -> float:
    """The generic pre-training FLOPs of a budget: its tokens of the preset, trained."""
    preset = get_preset(study.preset)
    return budget * flops_per_token(preset.model_args(vocab_size or preset.vocab), preset.context)


class Sizes:
    """The train tokens of each target under the generic tokenizer (cached), to tell a
    domain-set size that is the whole split."""

    def __init__(self, study: Study, cache_dir: Path):
        self.study, self.cache_dir, self.tokens = study, cache_dir, {}

    def whole(self, cell: Cell) -> bool:
        if cell.domain_tokens is None:
            return False
        if cell.target not in self.tokens:
            vocab = dict(cell.options).get("vocab_size") or get_preset(self.study.preset).vocab
            tokenizer = generic_tokenizer(self.study.generic, vocab, self.cache_dir, self.study.tokenizer_sample)
            split = corpus_split(self.study.targets[cell.target], "train", tokenizer, self.cache_dir)
            self.tokens[cell.target] = split.n_tokens
        return cell.domain_tokens >= self.tokens[cell.target]


def plan_study(study: Study, cache_dir: Path) -> list[tuple[Cell, str, str | None]]:
    """(cell, key, key of the whole-split cell it stands for or None), in running order."""
    sizes, plan = Sizes(study, cache_dir), []
    for cell in study.cells():
        whole = replace(cell, domain_tokens=None) if sizes.whole(cell) else None
        plan.append((cell, study.key(cell), None if whole is None else study.key(whole)))
    return plan


def study_status(study: Study, cache_dir=None) -> dict:
    """The grid and what of it is done, and the time left as far as the finished cells
    tell it (`time_left`), without running anything."""
    cache_dir = Path(cache_dir or study.cache or default_cache_dir())
    done = read_results(study.results)
    plan = plan_study(study, cache_dir)
    pending = [cell.label_beside(study.options) for cell, key, _ in plan if key not in done]
    return {"study": study.name, "results": str(study.results), "cells": len(plan), "done": len(plan) - len(pending),
            "pending": pending, "time_left": time_left(plan, done)}


def _mean_time(measured: list[tuple[bool, float]]) -> float:
    """The mean of (flushed, seconds) measurements: of the flushed ones where there are any."""
    chosen = [s for f, s in measured if f] or [s for _, s in measured]
    return sum(chosen) / len(chosen)


def time_left(plan: list[tuple[Cell, str, str | None]], done: dict[str, dict]) -> dict:
    """The seconds the pending cells of `plan` would take, from what the finished cells
    took (their `wall_seconds`: what ran, not what a cache entry gave them). A cell's own
    time is the mean over its peers (the same method, budget, domain-set size and options,
    any target or seed) of their wall time less the shared phases they built; the first
    cell of a method, budget and seed adds the mean time those shared phases took to build
    where they were built (a teacher or a pre-training another method's cell built for
    the seed costs the cells that reuse it nothing, as in the finished ones). Cells without
    a measured peer are counted apart, not guessed: how long a larger domain set
    fine-tunes until early stopping is not a multiple of a smaller one's. Seconds are those
    of the machines that measured them, of the cells that flushed subnormals where some
    did (`flushed`). Returns {"seconds", "cells" (estimated), "unknown"
    (cells with no peer), "same" (cells that are another size's whole-split cell)}."""
    own, built, paid = {}, {}, set()
    for line in done.values():
        if "costs" not in line:  # a `same_as` line
            continue
        options = json.dumps(line["options"], sort_keys=True)
        fresh = sum(line["phases"][name].get("seconds") or 0.0 for name in line["costs"]["shared"]["phases"]
                    if name in line["phases"] and not line["phases"][name].get("cached"))
        own.setdefault((line["method"], line["budget"], line["domain_tokens"], options),
                       []).append((flushed(line), line["wall_seconds"] - fresh))
        built.setdefault((line["method"], line["budget"], options), []).append((flushed(line), fresh))
        paid.add((line["method"], line["budget"], line["seed"], options))
    seconds, estimated, unknown, same, counted = 0.0, 0, 0, 0, set()
    for cell, key, whole_key in plan:
        runs = whole_key or key  # a whole-split cell runs once for the sizes that stand for it
        if key in done:
            continue
        if runs in done or runs in counted:
            same += 1
            continue
        counted.add(runs)
        options = json.dumps(dict(cell.options), sort_keys=True)
        peers = own.get((cell.method, cell.budget, None if whole_key else cell.domain_tokens, options))
        if not peers:
            unknown += 1
            continue
        seconds += _mean_time(peers)
        if (cell.method, cell.budget, cell.seed, options) not in paid:  # the first of its seed builds them
            fresh = [(f, t) for f, t in built[(cell.method, cell.budget, options)] if t > 0]
            seconds += _mean_time(fresh) if fresh else 0.0
            paid.add((cell.method, cell.budget, cell.seed, options))
        estimated += 1
    return {"seconds": seconds, "cells": estimated, "unknown": unknown, "same": same}


def run_study(study: Study, cache_dir=None, max_cells: int | None = None, keep_runs: bool = False,
              max_minutes: float | None = None) -> dict:
    """Run the cells not yet in the results file: at most `max_cells` of them, and none
    started after `max_minutes` (for a session of bounded length; a cell under way
    finishes); returns the study's status after, with the cells run now and the limit
    that stopped it with cells left (None: it ran out of cells)."""
    cache_dir = Path(cache_dir or study.cache or default_cache_dir())
    runs = cache_dir / "study-runs" / study.name
    ran, t0, stopped = 0, time.monotonic(), None
    code_version()  # the code this process loaded, before anyone edits the checkout
    for cell, key, whole_key in plan_study(study, cache_dir):
        if key in read_results(study.results):
            continue
        if max_cells is not None and ran >= max_cells:
            stopped = "--max-cells"
            break
        if max_minutes is not None and time.monotonic() - t0 > 60 * max_minutes:
            stopped = "--max-minutes"
            break
        if whole_key is not None:  # the whole split's cell, run (if not yet) and pointed at
            whole = replace(cell, domain_tokens=None)
            if whole_key not in read_results(study.results):
                ran += _run_cell(study, whole, whole_key, runs, cache_dir, keep_runs)
            append_result(study.results, {"cell": key, "same_as": whole_key, **cell_axes(study, cell)})
            continue
        ran += _run_cell(study, cell, key, runs, cache_dir, keep_runs)
    return {**study_status(study, cache_dir), "ran": ran, "stopped": stopped}


def cell_axes(study: Study, cell: Cell) -> dict:
    """What a results line says of its cell (a report matches the spec's cells by it),
    with its method's recipe (a line without one was measured with the first) and its
    tokenizer's sample (without one: `leading`, the only one there was)."""
    return {"study": study.name, "version": study.version, "method": cell.method, "target": cell.target,
            "budget": cell.budget, "domain_tokens": cell.domain_tokens, "seed": cell.seed,
            "options": dict(cell.options), "preset": study.preset, "recipe": get_method(cell.method).recipe,
            "tokenizer_sample": study.tokenizer_sample}


def _run_cell(study: Study, cell: Cell, key: str, runs: Path, cache_dir: Path, keep_runs: bool) -> int:
    """Run one cell and append its line; 0 if another process finished it meanwhile."""
    from ..specialize import specialize

    out = runs / key
    with locked(out, f"the study cell {cell.label}"):
        if key in read_results(study.results):
            return 0
        ui.info(f"study {study.name}: {cell.label_beside(study.options)}")
        options, tokens = dict(cell.options), pretrain_tokens(study, cell)  # the budget, in the method's own tokens
        wall0, cpu0 = time.perf_counter(), time.process_time()
        report = specialize(domain=study.targets[cell.target], generic=study.generic, method=cell.method,
                            preset=study.preset, out_dir=out, domain_tokens=cell.domain_tokens,
                            pretrain_tokens=cell.budget, seed=cell.seed, cache_dir=cache_dir,
                            tokenizer_sample=study.tokenizer_sample, **options)
        fin = report["phases"]["finetune"]
        line = {"cell": key, **cell_axes(study, cell), "paper": get_method(cell.method).paper,
                "budget_flops": budget_flops(study, cell.budget, options.get("vocab_size")),
                "pretrain_tokens": tokens, "domain_tokens_used": fin["domain_tokens"],
                **{name: report[name] for name in ("ppl_before", "ppl_after", "bpb_before", "bpb_after",
                                                   "test_tokens", "params", "costs", "phases", "wall_seconds")},
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                # what the seconds were measured on: the CPU model and its vector extensions decide them,
                # and on x86 whether subnormal floats were flushed (kept, long trainings slow down)
                "machine": {"cpu": cpu_description(), "system": platform.system(),
                            "subnormals": "flushed" if subnormals.STATE["flushed"] else "kept"},
                # the share of the machine's cores this process used while it ran the cell: one
                # well below its method's other cells says the machine was shared, its seconds slow
                "cpu_use": round((time.process_time() - cpu0) / ((time.perf_counter() - wall0) * (os.cpu_count() or 1)),
                                 3),
                "code": code_version()}  # cell keys do not hash the code: each line says which measured it
        append_result(study.results, line)
        if not keep_runs:  # the figures are in the line; the shared models stay in the cache
            shutil.rmtree(out, ignore_errors=True)
    return 1


def check_runnable(study: Study) -> None:
    """What can be refused before the first cell: every corpus read through for the
    splits the cells use."""
    from ..data.corpus import load_corpus

    load_corpus(study.generic).check(("train", "valid"))
    for name, spec in study.targets.items():
        counts = load_corpus(spec).check(("train", "valid", "test"))
        empty = [split for split, n in counts.items() if not n]
        if empty:
            raise SpecializeError(f"target {name} has no documents in its {', '.join(empty)} split")
