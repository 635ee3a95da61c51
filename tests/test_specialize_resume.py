"""`specialize` run folders: an interrupted run continues where it stopped, a finished
one is not run again, another command's run is never overwritten by accident.

The command line is run for real (`mlxspec` in a subprocess, killed with SIGKILL), on
the bundled corpora with the `tiny` preset. A longer script kills whole `--method is`
and `pn` runs at many random moments (benchmarks/reliability.py).
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlx_specialize.errors import SpecializeError
from mlx_specialize.models.io import load_arrays

MLXSPEC = str(Path(sys.executable).with_name("mlxspec"))
# What differs between two runs of one command: times, and the folders they wrote in.
TIMINGS = {"seconds", "valid_seconds", "wall_seconds", "gen_tok_s", "prompt_tok_s", "sessions"}
PATHS = {"model", "report", "instance", "clusters"}


def _args(out: Path, cache: Path, seed: int = 0) -> list[str]:
    return [MLXSPEC, "specialize", "--preset", "tiny", "--vocab-size", "512", "--pretrain-tokens", "20480",
            "--finetune-tokens", "100000", "--seed", str(seed), "--cache-dir", str(cache), "--out", str(out), "--json"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def _comparable(report):
    """A report less its timings and folders: what two runs of one command share."""
    if isinstance(report, dict):
        return {k: _comparable(v) for k, v in report.items() if k not in TIMINGS | PATHS}
    return report


def _weights(folder: Path) -> dict:
    return {k: np.array(v) for k, v in load_arrays(folder / "model.safetensors").items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One whole run, never interrupted: what every continued run must reproduce."""
    root = tmp_path_factory.mktemp("whole")
    done = _run(_args(root / "out", root / "cache"))
    assert done.returncode == 0, done.stderr
    return root / "out", json.loads(done.stdout.strip().splitlines()[-1])


def test_a_run_killed_while_fine_tuning_continues_from_its_checkpoint(uninterrupted, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    # Killed once the fine-tuning has written its first checkpoint (step 50 of 98) and
    # logged past it (step 60), which the continued run logs again.
    proc = subprocess.Popen(_args(out, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not ((out / "checkpoints" / "step_00000050").is_dir() and _logged_past(out / "metrics.jsonl", 60)):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((out / "specialize.json").read_text())
    assert "pretrain" in state["phases"] and "finetune" not in state["phases"] and not state.get("done")

    again = _run([*_args(out, cache)[:-1]])  # the same command, with its messages this time
    assert again.returncode == 0, again.stderr
    said = " ".join(again.stderr.split())  # messages wrap at the terminal's width
    assert f"continuing the unfinished run in {out} (finished: pretrain)" in said and "from step 50" in said
    report = json.loads((out / "report.json").read_text())
    whole_dir, whole = uninterrupted
    assert report["sessions"] == 2
    assert _comparable(report) == _comparable(whole)
    mine, theirs = _weights(out), _weights(whole_dir)
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)
    # the same log, each record once (what was logged after the checkpoint was dropped)
    assert _metrics(out) == _metrics(whole_dir)


def _logged_past(metrics: Path, step: int) -> bool:
    try:
        return f'"step": {step},' in metrics.read_text()
    except FileNotFoundError:
        return False


def _metrics(run: Path) -> list[dict]:
    timed = {"seconds", "tok_s", "peak_memory_bytes"}
    return [{k: v for k, v in json.loads(line).items() if k not in timed}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ctrl_c_while_fine_tuning_then_the_same_command_ends_as_an_uninterrupted_run(uninterrupted, tmp_path):
    """Ctrl-C is taken between steps: the checkpoint holds exactly step N's state (a
    KeyboardInterrupt inside a step used to save step N+1's weights as step N, and the
    resumed run applied one step twice), so the continued run equals the uninterrupted one."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = subprocess.Popen(_args(out, cache)[:-1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # wait for the fine-tuning, then interrupt it mid-way
        seen.append(line)
        if "fine-tuning" in line:
            break
    deadline = time.monotonic() + 300  # a logged step, not a time: machines differ in speed
    while not _logged_past(out / "metrics.jsonl", 10):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before fine-tuning 10 steps"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=300)
    said = " ".join(("".join(seen) + rest).split())
    assert proc.returncode == 130, said
    assert "Traceback" not in said and f"of {out}; the same command continues it" in said, said
    stopped_at = json.loads(sorted((out / "checkpoints").glob("step_*"))[-1].joinpath("state.json").read_text())
    assert 0 < stopped_at["step"] < 98, stopped_at["step"]  # mid-way, not at its end

    again = _run(_args(out, cache))
    assert again.returncode == 0, again.stderr
    whole_dir, whole = uninterrupted
    report = json.loads((out / "report.json").read_text())
    assert report["sessions"] == 2 and _comparable(report) == _comparable(whole)
    mine, theirs = _weights(out), _weights(whole_dir)
    assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)
    assert _metrics(out) == _metrics(whole_dir)


def test_a_finished_run_is_not_run_again_and_another_command_is_refused(uninterrupted, tmp_path):
    whole_dir, whole = uninterrupted
    cache = whole_dir.parent / "cache"
    before = {p: p.stat().st_mtime_ns for p in whole_dir.rglob("*")}
    again = _run(_args(whole_dir, cache)[:-1])
    assert again.returncode == 0, again.stderr
    said = " ".join(again.stderr.split())
    assert f"{whole_dir} holds this command's finished run" in said and "training" not in said
    assert {p: p.stat().st_mtime_ns for p in whole_dir.rglob("*")} == before  # nothing rewritten

    other = _run(_args(whole_dir, cache, seed=1))
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert other.stderr.strip().splitlines()[-1] == (
        f"error: {whole_dir} holds a run of another command (--seed 0 -> 1); pass --overwrite to replace it, "
        "or choose another --out")
    assert {p: p.stat().st_mtime_ns for p in whole_dir.rglob("*")} == before


def test_two_runs_of_one_command_in_one_folder_train_once(uninterrupted, tmp_path):
    """The second waits for the first (a lock beside the run folder), then returns its report."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    procs = [subprocess.Popen(_args(out, cache)[:-1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    said = [" ".join(p.communicate(timeout=600)[1].split()) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], said
    waited = [s for s in said if f"waiting for another process building the run in {out}" in s]
    assert len(waited) == 1 and f"{out} holds this command's finished run" in waited[0]
    report = json.loads((out / "report.json").read_text())
    assert report["sessions"] == 1 and _comparable(report) == _comparable(uninterrupted[1])


def _command(**changes) -> dict:
    from mlx_specialize.methods import Settings
    from mlx_specialize.specialize import run_command

    return run_command(Settings(**{**dict(domain="python-docs", generic="go-code", method="finetune", preset="tiny",
                                          pretrain_tokens=20480, finetune_tokens=100000, domain_tokens=None,
                                          vocab_size=512, seed=0, cache_dir=Path("cache")), **changes}))


def test_the_same_command_without_out_continues_in_its_own_default_folder(tmp_path, monkeypatch):
    """runs/DOMAIN-METHOD is reused by the same command (continued, or its report
    returned) and skipped by another, which takes runs/DOMAIN-METHOD-2."""
    from mlx_specialize.specialize import default_run_dir

    monkeypatch.chdir(tmp_path)
    command = _command()
    assert default_run_dir(command) == Path("runs/python-docs-finetune")
    Path("runs/python-docs-finetune").mkdir(parents=True)
    (Path("runs/python-docs-finetune") / "specialize.json").write_text(json.dumps({"command": command}))
    assert default_run_dir(command) == Path("runs/python-docs-finetune")
    assert default_run_dir(_command(seed=1)) == Path("runs/python-docs-finetune-2")


def test_a_run_folder_of_other_files_or_another_run_is_refused(tmp_path):
    from mlx_specialize.specialize import run_folder_state

    command = _command()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SpecializeError, match="holds no run"):
        run_folder_state(tmp_path, command, overwrite=True)  # never deleted, even with --overwrite
    finetuned = tmp_path / "ft"
    finetuned.mkdir()
    (finetuned / "summary.json").write_text("{}")  # a `mlxspec finetune` run
    with pytest.raises(SpecializeError, match="did not start"):
        run_folder_state(finetuned, command)
    assert run_folder_state(finetuned, command, overwrite=True) == "new"
    assert run_folder_state(tmp_path / "absent", command) == "new"


def test_an_option_added_later_leaves_earlier_run_folders_continuing(tmp_path):
    """A run folder written before --soup-support existed holds a command without it: the
    same call now (its default) continues that run; a call that sets it is another command."""
    from mlx_specialize.specialize import run_folder_state

    command = _command(method="soup")
    assert "soup_support" not in command
    (tmp_path / "specialize.json").write_text(json.dumps({"command": command, "phases": {}}))
    assert run_folder_state(tmp_path, _command(method="soup")) == "resume"
    with pytest.raises(SpecializeError, match=r"another command \(--soup-support \(default\) -> 3\)"):
        run_folder_state(tmp_path, _command(method="soup", soup_support=3))
    # written before there was a choice of tokenizer draw: it was the first characters
    # (`leading`), which continues it; the default now is another command, and says so
    earlier = {key: value for key, value in _command(method="soup", tokenizer_sample="leading").items()}
    assert "tokenizer_sample" not in earlier
    (tmp_path / "specialize.json").write_text(json.dumps({"command": earlier, "phases": {}}))
    assert run_folder_state(tmp_path, _command(method="soup", tokenizer_sample="leading")) == "resume"
    with pytest.raises(SpecializeError, match=r"another command \(--tokenizer-sample leading -> uniform\)"):
        run_folder_state(tmp_path, _command(method="soup", tokenizer_sample="uniform"))
