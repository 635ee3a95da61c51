"""`mlxspec study`: a real grid on the bundled corpora, run, resumed, moved to another
folder and reported; its spec's errors; the report's arithmetic on hand-made lines."""

import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_specialize.accel import subnormals
from mlx_specialize.data.corpus import DEMO_DIR
from mlx_specialize.errors import SpecializeError
from mlx_specialize.study import load_study, report_study, run_study, study_status
from mlx_specialize.study.report import at_cost, cost_curve, equal_cost_table, macro
from mlx_specialize.study.run import append_result, read_results

REPO = Path(__file__).resolve().parents[1]
SPEC = """
name = "tiny-check"
data = "corpora"
preset = "tiny"
generic = ["go-code", "postgres-docs"]
targets = ["python-docs", "python-code"]
methods = ["finetune"]
pretrain_tokens = [8192]
domain_tokens = [20000, 100000000, "all"]
[options]
vocab_size = 512
finetune_tokens = 4096
[floors]
python-docs = 2.0
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A study folder: the spec, its corpora (copies of the bundled ones) beside it."""
    folder = tmp_path_factory.mktemp("study")
    (folder / "corpora").mkdir()
    for name in ("go-code", "postgres-docs", "python-docs", "python-code"):
        shutil.copy(DEMO_DIR / f"{name}.jsonl.gz", folder / "corpora")
    (folder / "tiny.toml").write_text(SPEC)
    return folder


@pytest.fixture(scope="module")
def ran(study_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("study-cache")
    study = load_study(study_dir / "tiny.toml")
    none = run_study(study, cache, max_minutes=0)  # no cell starts after 0 minutes
    assert none["ran"] == 0 and none["stopped"] == "--max-minutes"
    first = run_study(study, cache, max_cells=1)
    rest = run_study(study, cache)
    return study, cache, first, rest


def test_a_study_runs_each_cell_once_and_resumes(ran):
    study, cache, first, rest = ran
    # 2 targets x 3 sizes; 100M tokens is more than either train split holds: it is the
    # "all" cell, run once and recorded as the same
    assert first["ran"] == 1 and first["done"] == 1 and first["cells"] == 6 and first["stopped"] == "--max-cells"
    assert rest["ran"] == 3 and rest["done"] == 6 and rest["pending"] == [] and rest["stopped"] is None
    lines = read_results(study.results)
    same = [line for line in lines.values() if "same_as" in line]
    assert len(same) == 2 and all(lines[s["same_as"]]["domain_tokens"] is None for s in same)
    full = [line for line in lines.values() if "same_as" not in line]
    from importlib.metadata import version

    import mlx.core as mx

    for line in full:
        assert line["ppl_after"] < line["ppl_before"]
        assert line["costs"]["shared"]["phases"] == ["pretrain"] and line["costs"]["per_domain"]["flops"] > 0
        # which code measured it (and, run from a git checkout, its commit)
        assert {k: line["code"][k] for k in ("mlx_specialize", "mlx")} == {
            "mlx_specialize": version("mlx-specialize"), "mlx": mx.__version__}
        assert 0 < line["cpu_use"] <= 1  # a share of the machine's cores
        # whether the seconds were measured with subnormals flushed (x86-64 Linux, by default)
        x86_linux = sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")
        kept = os.environ.get("MLXSPEC_FLUSH_SUBNORMALS", "").strip().lower() in ("0", "off", "false", "no")
        refused = subnormals.STATE["note"].startswith("could not")  # a kernel without writable executable pages
        assert line["machine"]["subnormals"] == ("flushed" if x86_linux and not kept and not refused else "kept")
    used = {(line["target"], line["domain_tokens"]): line["domain_tokens_used"] for line in full}
    for target in ("python-docs", "python-code"):  # the bundled splits hold ~1M tokens at this vocabulary
        assert used[(target, 20000)] == 20000 and 200_000 < used[(target, None)] < 100_000_000
    # one generic pre-training served every cell: the same shared cost in each line
    assert len({line["costs"]["shared"]["flops"] for line in full}) == 1
    assert not any((cache / "study-runs" / "tiny-check").glob("*/report.json"))  # run folders gone
    again = run_study(study, cache)
    assert again["ran"] == 0 and len(read_results(study.results)) == 6


def test_a_moved_study_finds_its_cells_done(ran, tmp_path):
    """Keys hash the corpora's bytes, not their paths: the spec, results and data moved
    to another folder (another machine) have nothing left to run."""
    study, cache, _, _ = ran
    moved = tmp_path / "elsewhere"
    shutil.copytree(study.path.parent, moved)
    status = study_status(load_study(moved / "tiny.toml"), cache)
    assert status["done"] == 6 and status["pending"] == []
    shutil.rmtree(moved / "corpora")
    data = tmp_path / "data"
    shutil.copytree(study.path.parent / "corpora", data)
    assert study_status(load_study(moved / "tiny.toml", data=data), cache)["done"] == 6


def test_a_cut_line_is_skipped_and_the_next_append_is_whole(tmp_path):
    path = tmp_path / "results.jsonl"
    append_result(path, {"cell": "a", "x": 1})
    with open(path, "ab") as f:
        f.write(b'{"cell": "b", "x"')  # killed mid-write
    append_result(path, {"cell": "c", "x": 3})
    assert sorted(read_results(path)) == ["a", "c"]


def test_a_study_killed_twice_before_its_first_cell_resumes(tmp_path):
    """Two cut lines and no whole one are a results file still (append_result ends each),
    while a JSON-lines file of another kind is refused rather than appended to."""
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"cell": "a", "x"\n{"ce')  # the first cut line ended by the next write
    assert read_results(path) == {}
    append_result(path, {"cell": "b", "x": 2})
    assert sorted(read_results(path)) == ["b"]
    for text in ('{"name": "a"}\n{"name": "b"}\n', '{"cell": ["a"]}\n'):  # JSON lines, not results
        other = tmp_path / "other.jsonl"
        other.write_text(text)
        with pytest.raises(SpecializeError, match="not a results file"):
            read_results(other)
    cut = tmp_path / "cut.jsonl"  # nothing but a cut line: no cell to report, and which file says so
    cut.write_bytes(b'{"cell": "a", "x"\n')
    with pytest.raises(SpecializeError, match=f"^{cut}: no finished cell$"):
        report_study([cut])


def test_the_report_regenerates_tables_and_figures_from_the_results(ran, tmp_path):
    study, _, _, _ = ran
    lines = [line for line in read_results(study.results).values() if "same_as" not in line]
    small = {line["target"]: line for line in lines if line["domain_tokens"] == 20000}
    expected = math.exp((math.log(small["python-docs"]["ppl_after"]) + math.log(small["python-code"]["ppl_after"])) / 2)
    result = report_study([study.results], tmp_path / "figs", spec=study.path)
    assert f"| SLM | {expected:.1f} |" in result["tables"]
    assert "| xz floor (the spec's) | | - | 2.00 | |" in result["tables"]  # python-code has no floor in the spec
    for name in ("ppl_vs_pretraining.png", "ppl_vs_domain_size.png", "cost_vs_domains.png", "tables.md"):
        assert (tmp_path / "figs" / name).stat().st_size > 1000 or name == "tables.md"
    # the command line prints the same tables
    out = _cli("report", study.results, "--spec", study.path, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["tables"] == result["tables"]
    # and, redirected to a file, as markdown whose table rows no terminal width breaks
    out = _cli("report", study.results, "--spec", study.path)
    assert out.returncode == 0 and max(map(len, result["tables"].splitlines())) > 160
    assert out.stdout == result["tables"] + "\n"


def _line(method, budget, target, seed, ppl, shared, per_domain):
    return {"method": method, "budget": budget, "domain_tokens": 100, "target": target, "seed": seed,
            "ppl_after": ppl, "ppl_before": 2 * ppl, "bpb_after": 1.0, "params": 10, "budget_flops": budget * 6.0,
            "domain_tokens_used": 100, "costs": {"shared": {"flops": shared, "seconds": 1.0},
                                                 "per_domain": {"flops": per_domain, "seconds": 1.0},
                                                 "inference": {"flops_per_token": 20.0, "gen_tok_s": 5.0}}}


def test_a_cell_whose_training_ran_to_its_step_cap_is_marked():
    """Early stopping is the protocol; where a cell's fine-tuning (or a teacher's) ran to
    its step cap instead, the per-target table says so, and only there."""
    from mlx_specialize.study.report import tables

    rows = [_line("finetune", 1, t, 0, 10.0, 100.0, 10.0) for t in "ab"]
    rows[0]["phases"] = {"finetune": {"steps": 120, "max_steps": 2000, "stopped_early": True}}
    rows[1]["phases"] = {"finetune": {"steps": 90, "max_steps": 2000, "stopped_early": True},
                         "teacher": {"steps": 2000, "max_steps": 2000, "stopped_early": False}}
    text = tables(rows)
    assert "| SLM | 100 | 1.000 | 1.000 † | 1.000 |" in text and "† a training of the cell" in text
    rows[1]["phases"]["teacher"]["stopped_early"] = True  # it stopped early at the cap's step: not capped
    assert "†" not in tables(rows)


def test_slm_nopt_reads_the_same_at_every_budget_not_as_one_measured_at_the_smallest():
    """SLM-nopt spends no generic budget: its cells, recorded at the smallest, are its row's
    value under every budget, and the row says why."""
    from mlx_specialize.study.report import tables

    rows = ([_line("finetune", b, t, 0, 10.0, 100.0, 10.0) for b in (1, 5) for t in "ab"]
            + [_line("nopt", 1, t, 0, 30.0, 0.0, 10.0) for t in "ab"])
    assert "| SLM-nopt (no generic pre-training: the same cells at every budget) | 30.0 | 30.0 |" in tables(rows)


def test_macro_figures_and_equal_cost_interpolation_by_hand():
    rows = [_line("finetune", 1, "a", 0, 10.0, 100.0, 10.0), _line("finetune", 1, "b", 0, 40.0, 100.0, 30.0),
            _line("finetune", 1, "a", 1, 20.0, 100.0, 10.0), _line("finetune", 1, "b", 1, 20.0, 100.0, 30.0),
            _line("finetune", 2, "a", 0, 5.0, 200.0, 10.0)]  # budget 2 lacks target b: no macro figure
    table = macro(rows)
    stat = table[("finetune", 1, 100)]
    assert stat["seeds"] == 2 and stat["ppl"][0] == pytest.approx(20.0)  # exp(mean(log 10, log 40)) = 20 both seeds
    assert stat["ppl"][1] == pytest.approx(0.0) and stat["per_domain"][0] == pytest.approx(20.0)
    assert ("finetune", 2, 100) not in table
    # log-log interpolation between (100, 20) and (10000, 5): at cost 1000, ppl 10
    assert at_cost([(100.0, 20.0), (10000.0, 5.0)], 1000.0) == pytest.approx(10.0)
    assert at_cost([(100.0, 20.0), (10000.0, 5.0)], 20000.0) is None
    # within 1% beyond either end: that end's own (equal cost); further out: none
    assert at_cost([(100.0, 20.0), (10000.0, 5.0)], 10090.0) == 5.0 and at_cost([(100.0, 20.0)], 99.5) == 20.0
    assert at_cost([(100.0, 20.0), (10000.0, 5.0)], 10200.0) is None and at_cost([(100.0, 20.0)], 98.0) is None
    # SLM-is against SLM at equal C(N): is at budget 1 costs 50 + N x 400; SLM's budgets 1 and 2
    # cost 100 + N x 20 and 200 + N x 10 (by hand: C(1) 120 and 210, C(3) 160 and 230)
    rows += [_line("is", 1, t, 0, 8.0, 50.0, 400.0) for t in "ab"] + [_line("finetune", 2, "b", 0, 5.0, 200.0, 10.0)]
    text = "\n".join(equal_cost_table(macro(rows), [100]))
    # N = 1: is costs 450, beyond SLM's 210: "-"; N = 3: 1250, beyond 230 too
    assert "| 100 | SLM-is | 1 | 4.50e+02 | 8.0 | - |" in text and "| 100 | SLM-is | 1 | 1.25e+03 | 8.0 | - |" in text
    table = macro(rows)
    assert [p[:2] for p in cost_curve(table, "finetune", 100, 3)] == [pytest.approx((160.0, 20.0)),
                                                                       pytest.approx((230.0, 5.0))]
    # at C(3) = 200 SLM's perplexity is interpolated in log-log between its two budgets
    expected = math.exp(math.log(20) + (math.log(200) - math.log(160)) / (math.log(230) - math.log(160))
                        * (math.log(5) - math.log(20)))
    assert at_cost(cost_curve(table, "finetune", 100, 3), 200.0) == pytest.approx(expected)


def test_differences_to_slm_carry_the_seeds_standard_error_by_hand():
    """SLM's macro bits per byte over seeds 0-2: 1.0, 1.2, 1.1 (mean 1.1, sd 0.1).
    - Other seeds (3-5), so of the two means (Welch): SLM-mix's 1.3, 1.5, 1.4, +0.300 with
      standard error sqrt(0.01 / 3 + 0.01 / 3) = 0.082 at 4 degrees of freedom, whose 95% t
      is 2.776: 0.227 < 0.300, marked. The soup's 1.2, 1.4, 1.3: +0.200, beyond twice the
      error (0.163) but not 2.776 times it: not marked.
    - SLM-pn's seeds 0-1 (not SLM's set): 1.0, 1.4 (sd 0.283), +0.100 ± sqrt(0.08 / 2 +
      0.01 / 3) = 0.208; its perplexity ratio is that of geometric means, 2^(3 x 0.1) =
      1.231 with 3 bits per byte-token here (arithmetic means would give 1.32).
    - SLM-d, which fine-tunes SLM's own model of each seed, seed by seed (paired): 1.05,
      1.24, 1.16 differ by 0.05, 0.04, 0.06: +0.050 ± 0.01 / sqrt(3) = 0.006 at 2 degrees
      of freedom (t 4.303), marked, where of the means (± 0.080) it would not be.
    - SLM-nopt (budget 1, no pre-training, set against SLM at budget 5), the same seeds
      but its own model, so of the means: 2.0, 2.25, 2.1, +1.017 ± 0.093.
    - SLM-is has one seed: no row."""
    from mlx_specialize.study.report import seed_differences

    def cells(method, budget, values, first_seed=0):
        rows = []
        for seed, bpb in enumerate(values, first_seed):
            for t in "ab":  # both targets alike: the macro mean is the value
                rows.append(_line(method, budget, t, seed, 2.0 ** (3 * bpb), 100.0, 10.0))
                rows[-1]["bpb_after"] = bpb
        return rows

    rows = (cells("finetune", 5, [1.0, 1.2, 1.1]) + cells("mix", 5, [1.3, 1.5, 1.4], 3)
            + cells("soup", 5, [1.2, 1.4, 1.3], 3) + cells("pn", 5, [1.0, 1.4])
            + cells("distill", 5, [1.05, 1.24, 1.16]) + cells("is", 5, [0.9]) + cells("nopt", 1, [2.0, 2.25, 2.1]))
    lines = seed_differences(macro(rows))
    row = {line.split(" | ")[2]: line for line in lines if line.startswith("| 5 | 100 |")}
    assert row["SLM-mix"] == f"| 5 | 100 | SLM-mix | 3 / 3 | +0.300 ± 0.082 * | {2 ** 0.9:.3f} |"
    assert row["Soup-of-Experts"] == f"| 5 | 100 | Soup-of-Experts | 3 / 3 | +0.200 ± 0.082 | {2 ** 0.6:.3f} |"
    assert row["SLM-pn"] == "| 5 | 100 | SLM-pn | 2 / 3 | +0.100 ± 0.208 | 1.231 |"
    assert row["SLM-d"] == f"| 5 | 100 | SLM-d | 3 paired | +0.050 ± 0.006 * | {2 ** 0.15:.3f} |"
    assert row["SLM-nopt"] == f"| 5 | 100 | SLM-nopt | 3 / 3 | +1.017 ± 0.093 * | {2 ** 3.05:.3f} |"
    assert "SLM-is" not in row
    assert seed_differences(macro(cells("finetune", 5, [1.0]) + cells("mix", 5, [1.3, 1.5]))) == []


def test_the_time_left_is_read_from_the_finished_cells_by_hand():
    """SLM at budget 1, seed 0, done on target a: its pre-training built (100 s), its
    fine-tuning 20 s. Seed 0 on b: 20 s (the pre-training is built); seed 1 on a and b: the
    pre-training once more, then 20 s each. SLM-d on a reused SLM's pre-training (its
    shared phase, cached) and took 50 s: on b, 50 s, nothing to build. A 1M cell has no
    peer: unknown. A size that is the whole split stands for that cell: counted once."""
    from mlx_specialize.study.run import time_left
    from mlx_specialize.study.spec import Cell

    def line(method, target, seed, wall, pretrain, cached):
        return {"method": method, "budget": 1, "domain_tokens": 100, "target": target, "seed": seed, "options": {},
                "wall_seconds": wall, "costs": {"shared": {"phases": ["pretrain"]}},
                "phases": {"pretrain": {"seconds": pretrain, "cached": cached}, "finetune": {"seconds": wall}}}

    done = {"k1": line("finetune", "a", 0, 120.0, 100.0, False), "k2": line("distill", "a", 0, 50.0, 300.0, True)}
    cell = lambda m, t, s, d=100: Cell(m, 1, d, t, s)  # noqa: E731
    plan = [(cell("finetune", "a", 0), "k1", None), (cell("finetune", "b", 0), "k3", None),
            (cell("finetune", "a", 1), "k4", None), (cell("finetune", "b", 1), "k5", None),
            (cell("distill", "a", 0), "k2", None), (cell("distill", "b", 0), "k6", None),
            (cell("finetune", "a", 0, 10**6), "k7", None),
            (cell("finetune", "b", 0, 10**6), "k8", "k9"), (cell("finetune", "b", 0, None), "k9", None)]
    assert time_left(plan, done) == {"seconds": pytest.approx(20 + (100 + 20) + 20 + 50), "cells": 4,
                                     "unknown": 2, "same": 1}


def test_the_time_left_is_read_from_the_cells_that_flushed_subnormals_where_some_did():
    """LLM + LoRA's 1M cell on a took 3,000 s with subnormals kept (it slowed as it
    trained), on b 1,300 s with them flushed: the cell left on c is estimated at 1,300."""
    from mlx_specialize.study.run import time_left
    from mlx_specialize.study.spec import Cell

    def line(target, wall, machine):
        return {"method": "llm-lora", "budget": 1, "domain_tokens": 10**6, "target": target, "seed": 0,
                "options": {}, "wall_seconds": wall, "machine": machine, "costs": {"shared": {"phases": []}},
                "phases": {"finetune": {"seconds": wall}}}

    done = {"ka": line("a", 3000.0, {"cpu": "x86"}), "kb": line("b", 1300.0, {"cpu": "x86", "subnormals": "flushed"})}
    plan = [(Cell("llm-lora", 1, 10**6, t, 0), k, None) for t, k in (("a", "ka"), ("b", "kb"), ("c", "kc"))]
    assert time_left(plan, done)["seconds"] == pytest.approx(1300.0)
    done["kb"]["machine"].pop("subnormals")  # neither flushed: their mean
    assert time_left(plan, done)["seconds"] == pytest.approx(2150.0)


def test_a_tokenizer_drawn_otherwise_makes_other_cells(study_dir, tmp_path):
    """The standard study's tokenizer was trained on its mix's first characters
    (`tokenizer_sample = "leading"`); its cells keep their keys under that spec, and a
    spec drawing the tokenizer from the whole mix (the default) has cells of its own, run
    with it."""
    from mlx_specialize.study.run import cell_axes

    (study_dir / "leading.toml").write_text(SPEC.replace('name = "tiny-check"', 'name = "tiny-check"\n'
                                                         'tokenizer_sample = "leading"'))
    default, leading = load_study(study_dir / "tiny.toml"), load_study(study_dir / "leading.toml")
    cell = default.cells()[0]
    assert (default.tokenizer_sample, leading.tokenizer_sample) == ("uniform", "leading")
    assert default.key(cell) != leading.key(cell)
    assert cell_axes(leading, cell)["tokenizer_sample"] == "leading"


@pytest.mark.parametrize("change, message", [
    ("methods = [\"finetune\", \"nope\"]", "unknown method 'nope'"),
    ("domain_tokens = [0]", "`domain_tokens` holds 0"),
    ("colour = 1", "unknown key colour"),
    ("[seeds_at]\n5 = [1]", "`seeds_at` names 5"),
    ("[method.mix]\nk = 4", "`method.mix` is not one of the study's methods"),
    ("[options]\nlearning = 1", "`options` takes"),
    ("version = \"two\"", "`version` must be an integer, not 'two'"),
    ("preset = [\"tiny\"]", "`preset` must be a preset's name"),
    ("results = 5", "`results` must be a file's path"),
    ("seeds_at = [1]", "`seeds_at` must be a table"),
    ("method = [\"finetune\"]", "`method` must be a table of tables"),
    # `methods` misspelt: its type is named before `methods` is missed
    ("methods_as_method", "the methods to run are `methods = "),
    ("targets = [\"python-docs\", \"perl-docs\"]", "no perl-docs.jsonl.gz in the data folder"),
    ("tokenizer_sample = \"first\"", "`tokenizer_sample` is 'first': choose uniform or leading"),
    ("[floors]\npython-docs = -1.0", "`floors` must be a table of numbers of 0 or more"),
])
def test_a_bad_spec_is_one_error_naming_the_key(tmp_path, change, message):
    (tmp_path / "corpora").mkdir()
    for name in ("go-code", "postgres-docs", "python-docs", "python-code"):  # names found there (not read)
        (tmp_path / "corpora" / f"{name}.jsonl.gz").touch()
    key = change.split(" ")[0]
    top = [line for line in SPEC.split("[options]")[0].splitlines() if not line.startswith(key + " ")]
    if change == "methods_as_method":
        top, change = [line.replace("methods = ", "method = ") for line in top], ""
    (tmp_path / "bad.toml").write_text("\n".join(top) + "\n" + change + "\n")
    with pytest.raises(SpecializeError, match=message.replace("[", r"\[")):
        load_study(tmp_path / "bad.toml")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mlxspec.main", "study", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO)


def test_the_command_line_says_when_the_time_left_is_unknown_and_why_a_run_stopped(study_dir, tmp_path):
    """A study with no cell measured has no time left to estimate (not "0 s"); a run cut
    by its limit says so, and how to go on."""
    shutil.copytree(study_dir / "corpora", tmp_path / "corpora")
    (tmp_path / "tiny.toml").write_text(SPEC)
    status = _cli(tmp_path / "tiny.toml", "--status", "--cache-dir", tmp_path / "cache")
    assert status.returncode == 0, status.stderr
    assert "time left: unknown until a cell of the same method" in status.stdout and " 0 s" not in status.stdout
    cut = _cli(tmp_path / "tiny.toml", "--max-minutes", "0", "--cache-dir", tmp_path / "cache")
    assert cut.returncode == 0 and "stopped at the --max-minutes limit: run the same command again" in cut.stdout


def test_the_command_line_refuses_bad_calls_in_one_line(tmp_path):
    missing = _cli(tmp_path / "none.toml")
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: no study spec at {tmp_path / 'none.toml'}"
    stray = _cli(tmp_path / "none.toml", "--out", tmp_path)  # --out is the report's
    assert stray.returncode == 2 and stray.stderr.strip().startswith("error: study takes no --out (its options: ")
    (tmp_path / "file").write_text("x")
    results = tmp_path / "r.jsonl"
    append_result(results, {**_line("finetune", 1, "a", 0, 10.0, 1.0, 1.0), "cell": "c", "bpb_before": 2.0})
    for args, message in [((results, "--out", tmp_path / "file"), f"--out {tmp_path / 'file'} is a file"),
                          ((results, "--readme", tmp_path / "no.md"), f"--readme: no such file: {tmp_path / 'no.md'}"),
                          ((results, "--status"), "study report takes no --status")]:
        out = _cli("report", *args)
        assert out.returncode == 2 and out.stderr.strip().startswith(f"error: {message}"), out.stderr


def test_the_example_spec_is_a_valid_one(tmp_path):
    out = _cli("example")
    assert out.returncode == 0
    (tmp_path / "data").mkdir()
    for name in ("c-headers", "go-code", "fortunes", "licenses"):
        (tmp_path / "data" / f"{name}.jsonl.gz").touch()
    (tmp_path / "example.toml").write_text(out.stdout)
    study = load_study(tmp_path / "example.toml", data=tmp_path / "data")
    assert study.methods == ["finetune", "is", "mix"] and study.method_options == {"mix": {"k": 4}}
    assert len(study.grids) == 2 and study.results == tmp_path / "results.jsonl"


def test_grids_run_in_their_order_and_a_cell_two_name_runs_once(study_dir):
    """[[grid]] tables: sub-grids taking the top level's other axes, in order, deduplicated."""
    spec = SPEC.replace('methods = ["finetune"]', 'methods = ["finetune", "nopt"]').replace(
        "pretrain_tokens = [8192]", "pretrain_tokens = [8192, 16384]") + """
[[grid]]
domain_tokens = [20000]
[[grid]]
pretrain_tokens = [16384]
methods = ["finetune", "nopt"]
seeds = [0, 1]
"""
    (study_dir / "grids.toml").write_text(spec)
    cells = load_study(study_dir / "grids.toml").cells()
    got = [(c.method, c.budget, c.domain_tokens, c.seed) for c in cells if c.target == "python-docs"]
    assert got == [("finetune", 8192, 20000, 0), ("nopt", 8192, 20000, 0), ("finetune", 16384, 20000, 0),
                   # the second grid: its one budget, both seeds, the top level's three sizes; (16384, 20000,
                   # seed 0) was the first grid's; nopt, one cell whatever the budget, at the smallest, with
                   # the grid's sizes and seeds
                   ("finetune", 16384, 100000000, 0), ("finetune", 16384, None, 0),
                   ("nopt", 8192, 100000000, 0), ("nopt", 8192, None, 0),
                   ("finetune", 16384, 20000, 1), ("finetune", 16384, 100000000, 1), ("finetune", 16384, None, 1),
                   ("nopt", 8192, 20000, 1), ("nopt", 8192, 100000000, 1), ("nopt", 8192, None, 1)]
    # a grid's own options name its cells in the list of what is left, beside the common ones
    variant = spec + "[[grid]]\ndomain_tokens = [20000]\noptions = {vocab_size = 512, finetune_tokens = 8192}\n"
    (study_dir / "variant.toml").write_text(variant)
    study = load_study(study_dir / "variant.toml")
    labels = {c.label_beside(study.options) for c in study.cells() if c.target == "python-docs"}
    assert "finetune budget 8,192 domain 20,000 python-docs seed 0 (finetune_tokens=8192)" in labels
    assert "finetune budget 8,192 domain 20,000 python-docs seed 0" in labels  # the top level's, as it was
    (study_dir / "bad-grid.toml").write_text(spec + "[[grid]]\npretrain_tokens = [5]\n")
    with pytest.raises(SpecializeError, match=r"\[\[grid\]\] 3: budget 5 is not one of the top-level"):
        load_study(study_dir / "bad-grid.toml")


def test_cells_of_one_method_with_other_options_are_reported_as_variants(tmp_path):
    rows = [{**_line("llm-lora", 1, t, 0, ppl, 100.0, 10.0), "options": {"embedder": "hashed", "lr": lr}}
            for t in ("a", "b") for lr, ppl in ((None, 10.0), (0.002, 20.0))]
    path = tmp_path / "r.jsonl"
    for i, row in enumerate(rows):
        append_result(path, {**row, "cell": str(i), "bpb_before": 2.0})
    text = report_study([path])["tables"]
    assert "| LLM + LoRA (lr=0.002) | 20.0 |" in text and "| LLM + LoRA (lr=None) | 10.0 |" in text


def test_cells_with_another_tokenizer_draw_are_reported_apart(tmp_path):
    """A spec that stops pinning its tokenizer draw appends cells of the default one: they
    are a variant, never averaged with (or taken for) the earlier cells."""
    path = tmp_path / "r.jsonl"
    for i, t in enumerate("ab"):
        append_result(path, {**_line("finetune", 1, t, 0, 20.0, 100.0, 10.0), "cell": f"old{i}", "bpb_before": 2.0})
        append_result(path, {**_line("finetune", 1, t, 0, 10.0, 100.0, 10.0), "cell": f"new{i}", "bpb_before": 2.0,
                             "tokenizer_sample": "uniform"})
    text = report_study([path])["tables"]
    assert "| SLM (tokenizer_sample=leading) | 20.0 |" in text and "| SLM (tokenizer_sample=uniform) | 10.0 |" in text


def test_lines_of_a_method_s_earlier_recipe_are_left_out_and_said(tmp_path, capsys):
    """SLM-is now keeps its final pre-trained model (recipe 2): lines it measured with its
    first recipe (recorded with none) are not averaged with the current ones."""
    path = tmp_path / "r.jsonl"
    for i, t in enumerate("ab"):
        # another seed, not measured again: it would be averaged with the current recipe's
        append_result(path, {**_line("is", 1, t, 1, 20.0, 100.0, 10.0), "cell": f"old{i}", "bpb_before": 2.0})
        append_result(path, {**_line("is", 1, t, 0, 10.0, 100.0, 10.0), "cell": f"new{i}", "bpb_before": 2.0,
                             "recipe": 2})
        append_result(path, {**_line("finetune", 1, t, 0, 15.0, 100.0, 10.0), "cell": f"slm{i}", "bpb_before": 2.0})
    text = report_study([path])["tables"]
    assert "| SLM | 15.0 |\n| SLM-is | 10.0 |\n" in text  # the per-budget table: not 20's mean with 10
    said = " ".join(capsys.readouterr().err.split())
    assert "earlier recipe" in said and "2 lines of SLM-is (recipe 1, this version's 2)" in said
    # a newer version's recipe is not this version's either: left out, and said so
    append_result(path, {**_line("is", 1, "a", 2, 30.0, 100.0, 10.0), "cell": "newer", "bpb_before": 2.0,
                         "recipe": 3})
    assert "| SLM | 15.0 |\n| SLM-is | 10.0 |\n" in report_study([path])["tables"]
    said = " ".join(capsys.readouterr().err.split())
    assert "later recipe than this version runs" in said and "1 line of SLM-is (recipe 3, this version's 2)" in said


def test_the_readme_and_docs_study_are_drawn_from_the_committed_results():
    """The README's results table and docs/study/tables.md are the study's results file
    reported (regenerate with the command the README gives after adding cells)."""
    study = REPO / "studies" / "minipile"
    report = report_study([study / "results.jsonl"], spec=study / "spec.toml")
    assert f"-->\n{report['headline']}\n<!--" in (REPO / "README.md").read_text()
    assert (REPO / "docs" / "study" / "tables.md").read_text() == report["tables"] + "\n"


def test_the_report_lists_the_cells_of_the_spec_no_line_stands_for(ran, tmp_path):
    """Matched by the axes each line records, so the spec's corpora are not needed: here a
    copy of the spec asks for a second seed, one line of the first is gone, and the data
    folder is nowhere."""
    study = ran[0]
    lines = list(read_results(study.results).values())
    gone = next(line for line in lines if (line["target"], line["domain_tokens"]) == ("python-code", 20000))
    results = tmp_path / "results.jsonl"
    for line in lines:
        if line is not gone:
            append_result(results, line)
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC.replace('data = "corpora"', 'data = "nowhere"\nseeds = [0, 1]\nresults = "results.jsonl"'))
    text = report_study([results], spec=spec)["tables"]
    assert text.endswith("\n".join([
        "Not yet measured: 7 of the spec's 12 cells, in running order (`mlxspec study SPEC --status` estimates "
        "their time)", "",
        "- SLM, 8.19k generic tokens, domain set 20k, seed 0: python-code",
        "- SLM, 8.19k generic tokens, domain set 20k, seed 1: python-docs, python-code",
        "- SLM, 8.19k generic tokens, domain set 100M, seed 1: python-docs, python-code",
        "- SLM, 8.19k generic tokens, domain set all, seed 1: python-docs, python-code"]))
    assert "| xz floor (the spec's) | | - | 2.00 | |" in text  # the spec's floors come with it
    assert report_study([study.results], spec=study.path)["tables"].endswith(
        "Every one of the spec's 6 cells is measured.")
    # a line of another recipe of its method (`Method.recipe`) stands for none of the spec's
    # cells; a line recording none was measured with the first
    other = tmp_path / "other.jsonl"
    for line in lines:
        append_result(other, {**line, "recipe": 2} if line is gone else {k: v for k, v in line.items() if k != "recipe"})
    assert "Not yet measured: 1 of the spec's 6 cells" in report_study([other], spec=study.path)["tables"]


def test_one_legend_names_the_methods_of_every_panel():
    """The main figure's last panel (the whole splits) holds two methods; the legend
    beside it names all that any panel drew, each once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlx_specialize.study.figures import legend

    fig, axes = plt.subplots(1, 2)
    for name in ("SLM", "SLM-d", "SLM-is"):
        axes[0].plot([1, 2], [3, 4], label=name)
    axes[1].plot([1, 2], [3, 4], label="SLM")
    assert [t.get_text() for t in legend(list(axes)).get_texts()] == ["SLM", "SLM-d", "SLM-is"]
    plt.close(fig)
    fig, ax = plt.subplots()
    assert legend([ax]) is None
    plt.close(fig)


def test_the_headline_goes_between_the_markers_and_nowhere_else(ran, tmp_path):
    study = ran[0]
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- study headline: mlxspec study report --readme -->\nold\n<!-- /study headline -->\n\nend\n")
    result = report_study([study.results], readme=readme)
    assert readme.read_text() == ("# x\n\n<!-- study headline: mlxspec study report --readme -->\n" + result["headline"]
                                  + "\n<!-- /study headline -->\n\nend\n")
    readme.write_text("# no markers\n")
    with pytest.raises(SpecializeError, match="--readme: .* has no lines"):
        report_study([study.results], readme=readme)
    assert readme.read_text() == "# no markers\n"


def test_a_line_names_the_commit_of_the_checkout_that_measured_it(tmp_path, monkeypatch):
    from mlx_specialize.runtime import provenance

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    (tmp_path / "mlx_specialize").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "mlx_specialize" / "a.py").write_text("x = 1\n")
    git("add", "a.py", "mlx_specialize/a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    commit = git("rev-parse", "HEAD").strip()
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    provenance.code_version.cache_clear()
    assert provenance.code_version()["commit"] == commit
    (tmp_path / "a.py").write_text("x = 2\n")  # a tracked file that is not code (results appended to)
    provenance.code_version.cache_clear()
    assert provenance.code_version()["commit"] == commit
    (tmp_path / "mlx_specialize" / "new.py").write_text("y = 1\n")  # a module not yet committed
    provenance.code_version.cache_clear()
    assert provenance.code_version()["commit"] == commit + "+dirty"
    monkeypatch.setattr(provenance, "ROOT", tmp_path / "elsewhere")  # an installed package: versions only
    provenance.code_version.cache_clear()
    assert "commit" not in provenance.code_version()
    provenance.code_version.cache_clear()


def test_a_spec_may_set_every_option_of_specialize_that_the_grid_does_not():
    import inspect

    from mlx_specialize import specialize
    from mlx_specialize.study.spec import CELL_OPTIONS

    grid_or_run = {"domain", "generic", "method", "base", "preset", "out_dir", "domain_tokens", "pretrain_tokens",
                   "seed", "cache_dir", "overwrite", "tokenizer_sample"}  # the grid's axes, the study's own, and
    # what no cell sets
    assert CELL_OPTIONS == set(inspect.signature(specialize).parameters) - grid_or_run


@pytest.mark.parametrize("low, high, shown", [(28, 160, ["30", "50", "100"]), (29, 40, ["30", "40"])])
def test_perplexity_axes_label_enough_ticks_and_not_crowded_ones(low, high, shown):
    """A wide perplexity range is labelled at 1-2-3-5 steps (every integer step crowded
    60, 70, 80, 90, 100 together); a narrow one at every integer step, so it has labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlx_specialize.study.figures import plain_log_ticks

    fig, ax = plt.subplots()
    ax.plot([1e12, 1e14], [low, high])
    ax.set(xscale="log", yscale="log", ylim=(low, high))
    plain_log_ticks(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text() and low <= t.get_position()[1] <= high]
    plt.close(fig)
    assert labels == shown
