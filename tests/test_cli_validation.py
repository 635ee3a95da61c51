"""Bad input fails before any compute, as one `error:` line and exit 2; nothing printed
from user data is taken for markup; Ctrl-C is exit 130.

The exit code and the shape of stderr are the command line's contract with scripts, so
most cases run the CLI in a real process: `python -m mlxspec.main` with this checkout first
on the path (the code `mlxspec` runs, whichever checkout holds this file), in a scratch
working folder, each with its own empty cache. They are started together (each spends
~2 s importing MLX) and every case asserts that no run folder and no cache was written:
the proof that it failed before pre-training, not after.
"""

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mlxspec.main import app
from mlxspec.output import summary_table
from mlxspec.reports import specialize_table
from mlx_specialize.data.corpus import DEMO_DIR, load_corpus
from mlx_specialize.errors import SpecializeError
from mlx_specialize.accel import slow_paths

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
TRAIN_EMOJI = "\U0001f68b"  # what rich makes of `:train:`


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    """In-process commands too run in a scratch folder with a scratch cache: one that
    failed to refuse its input would train there, never in ~/.cache or the checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLXSPEC_CACHE", str(tmp_path / "cache"))


def start_cli(args, cwd, env=None) -> subprocess.Popen:
    # Every case passes --cache-dir (MLXSPEC_CACHE would also move the C++ kernels that
    # training builds once, ~20 s, into the scratch folder).
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "COLUMNS": "500", **(env or {})}
    env.pop("MLXSPEC_CACHE", None)
    return subprocess.Popen([sys.executable, "-m", "mlxspec.main", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# The slow-path warnings a machine without the fast BLAS or C++ kernels prints first
# (none where both load); asked once, here, in the real cache, where the kernels are built.
MACHINE_WARNINGS = {f"warning: {line}" for line in slow_paths()}


def message_lines(stderr: str) -> list[str]:
    """stderr's non-empty lines less this machine's slow-path warnings."""
    return [line for line in stderr.splitlines() if line.strip() and line not in MACHINE_WARNINGS]


def demo_lines(name: str) -> list[str]:
    return gzip.decompress((DEMO_DIR / f"{name}.jsonl.gz").read_bytes()).decode().splitlines()


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Every bad input run at once: {case: (exit code, stderr, its folder)}."""
    root = tmp_path_factory.mktemp("bad")
    whole = (DEMO_DIR / "python-docs.jsonl.gz").read_bytes()
    (root / "truncated.jsonl.gz").write_bytes(whole[: len(whole) * 3 // 4])  # cut mid-stream
    lines = demo_lines("python-docs")
    lines[40] = lines[40][:30] + "\x01" + lines[40][30:]  # a raw control character inside a JSON string
    (root / "control.jsonl").write_text("\n".join(lines) + "\n")
    existing = root / "existing"
    existing.mkdir()
    (existing / "summary.json").write_text('{"steps": 1}')
    (existing / "model.safetensors").write_bytes(b"weights")
    model = root / "no-model-needed"  # every case must fail before a model is loaded
    # a domain whose test split is one short document (its split named), run into a
    # folder that holds another run: refused in one line, without the small-split warning
    texts = [json.loads(line)["text"] for line in demo_lines("python-docs")[:40]]
    (root / "small-test.jsonl").write_text("".join(
        json.dumps({"text": text, "split": "valid" if i >= 30 else "train"}) + "\n" for i, text in enumerate(texts))
        + json.dumps({"text": "One short document.", "split": "test"}) + "\n")
    cases = {  # OUT: a run folder in the case's own folder, which must stay empty
        "truncated domain": ["specialize", "--domain", root / "truncated.jsonl.gz", "--preset", "tiny", "--out", "OUT"],
        "truncated generic (pretrain)": ["pretrain", "OUT", "--generic", root / "truncated.jsonl.gz"],
        "control character": ["specialize", "--domain", root / "control.jsonl", "--preset", "tiny", "--out", "OUT"],
        "specialize --domain-tokens 0": ["specialize", "--domain-tokens", 0],  # into ./runs/ by default
        "specialize --domain-tokens -5": ["specialize", "--domain-tokens", -5],
        "finetune --domain-tokens -5": ["finetune", model, "OUT", "--domain-tokens", -5],
        "finetune --domain-tokens 0": ["finetune", model, "OUT", "--domain-tokens", 0],
        "generate --max-tokens -1": ["generate", model, "--max-tokens", -1],
        "generate --max-tokens 0": ["generate", model, "--max-tokens", 0],
        "specialize --out EXISTING": ["specialize", "--out", existing, "--preset", "tiny"],
        "small test split": ["specialize", "--domain", root / "small-test.jsonl", "--out", existing,
                             "--preset", "tiny"],
    }
    procs = {}
    for name, args in cases.items():
        folder = root / name.replace(" ", "_")
        folder.mkdir()
        args = [folder / "out" if a == "OUT" else a for a in args]
        if args[0] != "generate":
            args += ["--cache-dir", folder / "cache"]
        procs[name] = (start_cli(args, folder), folder)
    results = {}
    for name, (proc, folder) in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        results[name] = (proc.returncode, stderr, folder)
    results["existing"] = existing
    results["root"] = root
    return results


def assert_refused(bad, case: str, *expected: str) -> str:
    """The case exited 2 with one `error:` line holding `expected`, having written no run
    folder and no cache (so before any work: no timing, which a loaded machine stretches);
    returns the line."""
    code, stderr, folder = bad[case]
    lines = message_lines(stderr)
    assert code == 2, (case, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, stderr)
    assert "Traceback" not in stderr and "Usage:" not in stderr, (case, stderr)
    for text in expected:
        assert text in lines[0], (case, text, lines[0])
    assert sorted(p.name for p in folder.iterdir()) == [], (case, "wrote", list(folder.iterdir()))  # no out/, cache/, runs/
    return lines[0]


def test_a_truncated_gzip_corpus_fails_before_pretraining_naming_file_and_line(bad):
    line = assert_refused(bad, "truncated domain", str(bad["root"] / "truncated.jsonl.gz"), "after line ")
    assert "end-of-stream" in line  # the reader's own reason


def test_a_truncated_generic_corpus_fails_pretrain_before_the_tokenizer(bad):
    assert_refused(bad, "truncated generic (pretrain)", "truncated.jsonl.gz", "after line ")


def test_a_malformed_json_line_names_file_line_and_column(bad):
    path = bad["root"] / "control.jsonl"
    assert_refused(bad, "control character", f"{path}:41 ", "Invalid control character", "line 41 column 31")


@pytest.mark.parametrize("case", ["specialize --domain-tokens 0", "specialize --domain-tokens -5",
                                  "finetune --domain-tokens -5", "finetune --domain-tokens 0"])
def test_domain_tokens_below_one_is_refused_by_the_option(bad, case):
    line = assert_refused(bad, case, "error: --domain-tokens: ")
    assert re.search(r": at least 1, not -?\d+$", line), line  # the option's range, not a later symptom


@pytest.mark.parametrize("case", ["generate --max-tokens -1", "generate --max-tokens 0"])
def test_generate_refuses_max_tokens_below_one(bad, case):
    line = assert_refused(bad, case, "error: --max-tokens: ")
    assert line.endswith(": at least 1"), line


def test_specialize_into_an_existing_run_says_what_specialize_can_do(bad):
    line = assert_refused(bad, "specialize --out EXISTING", str(bad["existing"]), "--overwrite", "another --out")
    assert "--resume" not in line  # specialize has no such option
    assert (bad["existing"] / "model.safetensors").read_bytes() == b"weights"  # untouched
    assert sorted(p.name for p in bad["existing"].iterdir()) == ["model.safetensors", "summary.json"]


def test_a_domain_whose_test_split_holds_little_text_is_warned_about_before_any_work(bad, tmp_path):
    """A folder of a few dozen documents, split 90/5/5 by hash, can leave a test split of
    one short document: its perplexity says little, so `specialize` says so before it
    trains; a run refused for another reason still says one line, its error."""
    assert_refused(bad, "small test split", str(bad["existing"]))
    domain = bad["root"] / "small-test.jsonl"  # the same domain, its run accepted
    args = ["specialize", "--domain", domain, "--method", "nopt", "--preset", "tiny", "--vocab-size", 512,
            "--finetune-tokens", 2048, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "run", "--json"]
    proc = start_cli(args, tmp_path)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    first = message_lines(stderr)[0]
    assert first.startswith(f"warning: --domain {domain}: its test split holds 19 characters (1 document): "), first
    assert "valid split" not in first and "a `split` field" in first  # valid holds 10 of the demo's documents
    assert json.loads(stdout.strip().splitlines()[-1])["ppl_after"] > 0  # and the run goes on


def test_the_small_split_warning_names_the_split_it_is_about():
    from mlx_specialize.specialize import _small_held_out

    sizes = {"train": (90, 900_000), "valid": (2, 3_000), "test": (5, 50_000)}
    said = _small_held_out("notes/", sizes)
    assert said.startswith("--domain notes/: its valid split holds 3,000 characters (2 documents): "), said
    assert "test split" not in said and "called valid (or validation, dev)" in said
    # with a hub dataset among the sources, not read through, the sizes are unknown: no warning
    assert _small_held_out("notes/,hf:x", {split: (n, None) for split, (n, _) in sizes.items()}) is None


@pytest.mark.parametrize("args, option", [
    (["specialize", "--lr", "0"], "--lr"),
    (["specialize", "--k", "1"], "--k"),
    (["specialize", "--pretrain-tokens", "0"], "--pretrain-tokens"),
    (["specialize", "--vocab-size", "10"], "--vocab-size"),
    (["pretrain", "out", "--batch-size", "0"], "--batch-size"),
    (["pretrain", "out", "--tokens", "-1"], "--tokens"),
    (["finetune", "m", "out", "--lr", "-3e-4"], "--lr"),
    (["finetune", "m", "out", "--grad-accum", "0"], "--grad-accum"),
    (["generate", "m", "--temperature", "-0.5"], "--temperature"),
    (["generate", "m", "--top-k", "-1"], "--top-k"),
    (["eval", "m", "--max-tokens", "0"], "--max-tokens"),
    (["bench", "m", "-g", "0"], "--generation-tokens"),
    (["data", "cluster", "e", "--out", "c", "--k", "1"], "--k"),
    (["data", "select", "--clusters", "c", "--domain", "d", "--tokens", "0", "--out", "o"], "--tokens"),
    (["generate", "m", "--max-tokens", "many"], "--max-tokens"),
])
def test_numeric_options_are_range_checked_by_their_own_types(tmp_path, args, option):
    result = runner.invoke(app, args)
    lines = message_lines(result.stderr)
    assert result.exit_code == 2 and len(lines) == 1, (args, result.output, result.stderr)
    assert lines[0].startswith(f"error: {option}: "), (args, lines)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, expected", [
    (["--domain-tokens", "50", "--preset", "tiny"], "fewer than one training window of the 'tiny' preset (129 tokens)"),
    (["--method", "mix", "--select", "best"], "--select: 'best' is not one of frequent, loss, all"),
    (["--method", "is", "--sampler", "topk"], "--sampler: 'topk' is not one of cluster, gumbel"),
    (["--embedder", "bert"], "--embedder: 'bert' is not one of auto, hashed, minilm"),
])
def test_specialize_checks_its_choices_before_any_work(tmp_path, args, expected):
    result = runner.invoke(app, ["specialize", *args, "--cache-dir", str(tmp_path / "cache")])
    lines = message_lines(result.stderr)
    assert result.exit_code == 2 and len(lines) == 1 and expected in lines[0], (args, result.stderr)
    assert list(tmp_path.iterdir()) == []  # no runs/, no cache


def test_click_usage_errors_are_one_line_too():
    for args in (["specialize", "--no-such-option"], ["finetune"], ["generate", "m", "--json", "true"]):
        result = runner.invoke(app, args)
        lines = message_lines(result.stderr)
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)


def test_help_shows_flags_as_flags_and_prints_bracketed_text():
    generate = runner.invoke(app, ["generate", "--help"]).output
    json_line = next(line for line in generate.splitlines() if line.strip().startswith("--json"))
    assert "<bool>" not in json_line and "bool" not in json_line.lower(), json_line
    wrapped = runner.invoke(app, ["pretrain", "--help"]).output
    pretrain = " ".join(re.sub(r"-\n\s+", "-", wrapped).split())  # undo the wrapping (also after a hyphen)
    assert "Peak learning rate [default: the preset's]." in pretrain
    assert "pip install 'mlx-specialize[bf16]'" in pretrain


def test_a_corpus_path_holding_train_between_colons_prints_as_written(tmp_path):
    corpus = tmp_path / "x:train:y"
    corpus.mkdir()
    (corpus / "go.jsonl").write_text("\n".join(demo_lines("go-code")[:60]) + "\n")
    proc = start_cli(["data", "embed", "--generic", corpus, "--vocab-size", 512, "--window", 64, "--max-windows", 2,
                      "--cache-dir", tmp_path / "cache"], tmp_path)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert TRAIN_EMOJI not in stderr + stdout
    assert f"tokenizer on {corpus}\n" in stderr  # an info line
    assert f"tokenizing {corpus}:train (characters) " in stderr  # a progress bar's description, its unit
    assert f"embedded {corpus}" in stdout  # a table title


def render(table, width: int = 80) -> str:
    console = Console(file=StringIO(), width=width)
    console.print(table)
    return console.file.getvalue()


def test_a_results_table_wraps_to_80_columns_and_never_cuts_a_number():
    report = {"method": "finetune", "domain": "python-docs", "params": 3.2e6, "model": "runs/python-docs-finetune-12",
              "phases": {"pretrain": {"tokens": 600_000, "seconds": 812.3, "flops": 1.23e14, "cached": True},
                         "finetune": {"tokens": 120_000, "seconds": 95.2, "flops": 2.4e13, "steps": 30,
                                      "domain_tokens": 123_456, "stopped_early": True}},
              "ppl_before": 123.45, "ppl_after": 23.45, "bpb_before": 1.234, "bpb_after": 0.987}
    text = render(specialize_table(report))  # "generic pre-train (cached)" used to squeeze "600,0…"
    assert "…" not in text and max(map(len, text.splitlines())) <= 80, text
    for number in ("600,000", "120,000", "1.23e+14", "2.40e+13", "812", "123.45", "0.987"):
        assert number in text, (number, text)
    long_path = "/tmp/a-rather-long-cache-folder/pretrained/5d1b31cc160cb986/and/more/python-docs-finetune"
    text = render(summary_table("pre-trained", {"model": long_path, "tokens": 600_000, "seconds": 812.3}))
    assert "…" not in text and max(map(len, text.splitlines())) <= 80, text
    assert "600000" in text and "812.30" in text
    assert long_path in "".join(text.split()).replace("│", "")  # folded onto two lines, all of it


def test_the_phase_table_has_a_row_for_every_phase_that_cost_time():
    """SLM-pn's clustering of the generic corpus is a phase of its shared cost: a row of
    its own (it was left out, so the rows did not add up to the cost line's seconds)."""
    report = {"method": "pn", "domain": "licenses", "params": 1.85e6, "model": "runs/licenses-pn",
              "phases": {"clusters": {"k": 4, "embedder": "hashed", "windows": 47_930, "seconds": 3.4,
                                      "flops": 1.64e9, "cached": False},
                         "pretrain": {"tokens": 600_000, "seconds": 17.2, "flops": 7.1e12, "cached": False},
                         "select": {"k": 4, "cluster": 2, "instance": "cache/instances/x", "seconds": 0.1},
                         "finetune": {"tokens": 120_000, "seconds": 9.0, "flops": 2.4e12}},
              "ppl_before": 300.0, "ppl_after": 120.0, "bpb_before": 3.1, "bpb_after": 2.5}
    text = render(specialize_table(report), width=160)
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["cluster generic (k=4, hashed)", "projected network pre-train",
                                                       "instantiate for cluster 2 of 4", "domain fine-tune"], text
    assert "47,930 win" in rows[0] and "1.64e+09" in rows[0] and " 3 " in rows[0], rows[0]
    # a clustering cached before its costs were kept has none: shown as such, not a crash
    report["phases"]["clusters"].update(seconds=None, flops=None, cached=True)
    row = next(line for line in render(specialize_table(report), width=160).splitlines() if "cluster generic" in line)
    assert [cell.strip() for cell in row.split("│")[1:5]] == ["cluster generic (k=4, hashed) (cached)", "47,930 win",
                                                              "-", "-"], row


def test_a_table_too_wide_for_the_terminal_is_printed_as_records(monkeypatch):
    """`mlxspec plan`'s eight columns cannot fit 80 without splitting "4.11e+10" across
    lines (read as "4.11e+1"): each method is printed as a block of header: value lines."""
    from mlxspec import output
    from mlxspec.plan import plan_view
    from mlx_specialize.plan import make_plan

    table = plan_view(make_plan("12.5M tokens", "5e13", "small", domains=3))[0]
    values = [str(cell) for column in table.columns for cell in column.cells]
    for width, records in ((80, True), (100, True), (120, True), (200, False)):
        monkeypatch.setattr(output, "out", Console(file=StringIO(), width=width, markup=False, emoji=False))
        output.emit({}, table)
        text = output.out.file.getvalue()
        assert max(map(len, text.splitlines())) <= width, text
        assert ("  bits/byte (90%): " in text) == records, text
        for value in values:  # every cell whole, on one line
            assert value in text, (value, text)


def test_a_progress_bar_wraps_its_description_and_never_cuts_its_count(monkeypatch):
    from mlx_specialize import ui

    monkeypatch.setattr(ui, "console", Console(file=StringIO(), width=80, emoji=False, force_terminal=True))
    monkeypatch.setattr(ui, "QUIET", False)
    with ui.task("tokenizing go-code,postgres-docs,python-code:train", None) as advance:
        advance(301_531)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", ui.console.file.getvalue())  # a terminal's codes
    assert "301531/?" in text and "…" not in text, text
    assert "python-code:train" in "".join(text.split()), text


@pytest.mark.parametrize("json_out", [True, False])
def test_a_reader_that_leaves_ends_the_command_quietly(tmp_path, json_out):
    """`mlxspec plan --json | true`: the pipe's reader is gone before the plan is written;
    the command stops as a Unix tool does (141, nothing on stderr), not with an
    `error: Broken pipe` line and exit 1, nor Python's exit 120 when a buffered stdout
    fails at exit; a table (rich) as the JSON line (print)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as usual
    proc = subprocess.Popen([sys.executable, "-m", "mlxspec.main", "plan", *(["--json"] if json_out else [])],
                            cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader leaves at once
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and stderr.strip() == "", stderr


def test_an_info_line_in_a_log_is_whole_and_wrapped_at_words_in_a_terminal(monkeypatch):
    from mlx_specialize import ui

    message = "pre-training 'small' (1.85M params) on selected:selection: 6104 steps x 2,048 tokens [12,500,224]"
    monkeypatch.setattr(ui, "QUIET", False)
    for terminal in (False, True):
        monkeypatch.setattr(ui, "console", Console(file=StringIO(), width=80, emoji=False, force_terminal=terminal,
                                                   color_system=None))
        ui.info(message)
        lines = ui.console.file.getvalue().splitlines()
        if terminal:  # at a space, never inside a word or number
            assert len(lines) == 2 and max(map(len, lines)) <= 80 and " ".join(map(str.rstrip, lines)) == message, lines
        else:
            assert lines == [message]


def test_progress_written_to_a_log_is_plain_lines_as_it_goes(monkeypatch):
    """Where stderr is a file (`mlxspec study ... 2> log`) a bar would show only its last
    frame, at the end: a log gets a plain line every LINE_EVERY seconds and one at the
    end, with the count, the fields and the time left, never a bar or a cut word."""
    from mlx_specialize import ui

    clock = [1000.0]  # seconds, advanced by hand: one step takes 7 s
    monkeypatch.setattr(ui.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(ui, "console", Console(file=StringIO(), width=80, emoji=False))
    monkeypatch.setattr(ui, "QUIET", False)
    with ui.progress("loss", "toks") as bar:
        task = bar.add_task("training", total=40, completed=10, loss="loss -", toks="")  # resumed at step 10
        for step in range(11, 41):
            clock[0] += 7
            bar.update(task, completed=step, loss=f"loss {10 / step:.3f}", toks="9,876 tok/s")
    with ui.progress() as bar:  # an early stop: ends before its total, no time left to show
        task = bar.add_task("training", total=100)
        clock[0] += 30
        bar.update(task, completed=20)
    with ui.task("tokenizing a/x:train:y.jsonl:train", None) as advance:
        clock[0] += 12  # before its first chunk is read: timed from the start
        advance(301_531)
    with ui.task("tokenizing a cache hit", None):  # nothing to do: nothing said
        clock[0] += 5
    with ui.task("embedding a cache hit", 3_906) as advance:
        advance(0)
    lines = ui.console.file.getvalue().splitlines()
    assert not any("━" in line for line in lines), lines
    # a line each 60 s: at steps 19, 28, 37 (63 s, 126 s, 189 s), then the end, 210 s
    assert lines[:4] == [f"training  {s}/40 ({s / 40:.0%})  loss {10 / s:.3f}  9,876 tok/s  elapsed 0:0{m}  "
                         f"eta 0:0{eta}" for s, m, eta in ((19, "1:03", "2:27"), (28, "2:06", "1:24"),
                                                            (37, "3:09", "0:21"))] + [
        "training  40/40 (100%)  loss 0.250  9,876 tok/s  elapsed 0:03:30"], lines  # done: no eta
    assert lines[4:] == ["training  20/100 (20%)  elapsed 0:00:30",
                         "tokenizing a/x:train:y.jsonl:train  301,531  elapsed 0:00:12"], lines


def interrupt(proc, marker: str | None, then: float, timeout=120) -> str:
    """Wait for `marker` on the process' stderr (None: do not wait) and `then` seconds
    more, send Ctrl-C; returns all of stderr."""
    seen = []
    if marker is not None:
        for line in proc.stderr:
            seen.append(line)
            if marker in line:
                break
    time.sleep(then)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=timeout)
    return "".join(seen) + rest


# Only during training: a Ctrl-C 0.5 s after start (while importing) ended the process
# by the signal itself (exit -2) in about one run of three, after the import guard in
# mlxspec/main.py had printed its line; why is not understood yet (issue 20's notes).
@pytest.mark.parametrize("marker, then", [("pre-training 'tiny'", 1.5)])
def test_ctrl_c_exits_130_with_one_error_line(tmp_path, marker, then):
    proc = start_cli(["pretrain", tmp_path / "run", "--preset", "tiny", "--generic", "go-code", "--vocab-size", 512,
                      "--tokens", 100_000_000, "--cache-dir", tmp_path / "cache"], tmp_path)
    stderr = interrupt(proc, marker, then)
    assert proc.returncode == 130, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted" in errors[0] and "Traceback" not in stderr, stderr


# ---- Corpus.check, in process ------------------------------------------------------
def test_check_reads_the_whole_file_and_counts_documents_per_split(tmp_path):
    counts = load_corpus("python-docs").check(("train", "valid", "test"))
    assert sum(counts.values()) == len(demo_lines("python-docs")) and min(counts.values()) > 0
    sizes = load_corpus("python-docs").check_sizes()  # and the characters, counted by hand
    texts = [json.loads(line)["text"] for line in demo_lines("python-docs")]
    assert {split: n for split, (n, _) in sizes.items()} == counts
    assert sum(chars for _, chars in sizes.values()) == sum(len(t) for t in texts if t.strip())
    whole = (DEMO_DIR / "python-docs.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[:-200])  # only the last bytes missing
    corpus = load_corpus(str(tmp_path / "cut.jsonl.gz"))
    assert next(corpus.documents("train"))  # the start still reads: only a read-through finds it
    with pytest.raises(SpecializeError, match=r"cut\.jsonl\.gz after line \d+: .*end-of-stream"):
        corpus.check(("train",))


def test_check_finds_a_truncated_gzipped_text_file(tmp_path):
    text = "\n\n".join(json.loads(line)["text"] for line in demo_lines("go-code")[:40]).encode()
    (tmp_path / "docs.txt.gz").write_bytes(gzip.compress(text)[:-100])
    with pytest.raises(SpecializeError, match=r"cannot read .*docs\.txt\.gz: "):
        load_corpus(str(tmp_path / "docs.txt.gz")).check(("train",))


def test_check_names_the_line_that_is_not_utf8_and_the_split_that_is_empty(tmp_path):
    lines = [line.encode() for line in demo_lines("go-code")[:30]]
    lines[12] = lines[12][:40] + b"\xff\xfe" + lines[12][40:]  # ~95 kB in: past the 8 KiB sniffed at open
    (tmp_path / "latin.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(SpecializeError, match=r"latin\.jsonl:13 is not UTF-8"):
        load_corpus(str(tmp_path / "latin.jsonl")).check(("train",))
    (tmp_path / "train.jsonl").write_text("\n".join(demo_lines("go-code")[:5]) + "\n")  # a train split only
    with pytest.raises(SpecializeError, match="has no documents in its valid split"):
        load_corpus(str(tmp_path / "train.jsonl")).check(("train", "valid"))
    with pytest.raises(SpecializeError, match="unknown split 'dev'"):
        load_corpus("go-code").check(("dev",))


def test_the_results_table_lists_phases_in_the_order_they_ran():
    """pn pre-trains once for every domain, then instantiates the domain's SLM: the test
    figures before fine-tuning are that SLM's, on its row; SLM-is selects, then pre-trains."""
    phases = {"pretrain": {"tokens": 40_960, "seconds": 2.0, "flops": 3.5e10},
              "finetune": {"tokens": 40_960, "seconds": 2.0, "flops": 3.5e10}}
    base = {"domain": "python-docs", "params": 1.3e5, "model": "runs/x", "ppl_before": 170.25, "bpb_before": 4.5,
            "ppl_after": 80.5, "bpb_after": 4.1}
    pn = render(specialize_table({**base, "method": "pn", "phases": {
        **phases, "select": {"instance": "x", "cluster": 3, "k": 16, "seconds": 1.0}}}), width=120).splitlines()
    rows = [next(i for i, line in enumerate(pn) if text in line)
            for text in ("projected network pre-train", "instantiate for cluster 3 of 16", "domain fine-tune")]
    assert rows == sorted(rows) and "170.25" in pn[rows[1]] and "170.25" not in pn[rows[0]], "\n".join(pn)
    slm_is = render(specialize_table({**base, "method": "is", "phases": {
        **phases, "select": {"kl_selected": 0.1, "kl_generic": 0.4, "k": 64, "windows": 320, "seconds": 14}}}),
        width=120).splitlines()
    rows = [next(i for i, line in enumerate(slm_is) if text in line) for text in ("select (k=64", "importance-sampled")]
    assert rows == sorted(rows) and "170.25" in slm_is[rows[1]], "\n".join(slm_is)
