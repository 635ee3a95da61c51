"""Cache entries (cache.py) under concurrency, a kill and corruption, with real builds.

The entry is the one the issue saw corrupted: the generic model `specialize` pre-trains
(`methods.slm.cached_pretrain`), here `tiny` on a small local corpus for 60 steps (a
checkpoint at step 50, then one at the end), a few seconds. A `reference` build,
uninterrupted and alone, gives the bytes every other build must end with (training is
deterministic, and an exact resume sees the same batches).

- Two processes asking for it at the same moment: one builds, the other says it waits,
  then reuses the result; one training run in the entry (a second one used to rewrite its
  run.json and truncate its metrics.jsonl).
- A build killed (SIGKILL) after its first checkpoint leaves no folder that looks
  complete, only `<key>.partial`; the rerun resumes there from step 50 and ends with the
  reference's weights.
- A truncated file in a published entry is found by its manifest and the entry rebuilt;
  likewise a token cache whose .bin was truncated or edited in place.
"""

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mlx_specialize as ms
from mlx_specialize import ui
from mlx_specialize.runtime import cache
from mlx_specialize.methods.slm import cached_pretrain

ROOT = Path(__file__).resolve().parents[1]  # the code under test, also in the subprocesses
TOKENS = 60 * 8 * 128  # 60 steps of `tiny` (8 windows of 128 tokens): checkpoints at 50 and 60
WEIGHTS = "model.safetensors"

# Imports first, then waits for a line on stdin: processes started together then ask for
# the entry within milliseconds of each other, whatever their start-up times.
BUILD = """
import json, sys
from pathlib import Path
from mlx_specialize.methods.slm import cached_pretrain

print("ready", flush=True)
sys.stdin.readline()
folder, summary, reused = cached_pretrain(sys.argv[1], "tiny", int(sys.argv[2]), 512, 0, Path(sys.argv[3]))
print(json.dumps({"folder": str(folder), "reused": reused, "steps": summary["steps"]}), flush=True)
"""


@pytest.fixture(scope="module")
def generic(tmp_path_factory) -> str:
    """A small generic corpus (go code and postgres docs, ~120k tokens): real text."""
    texts = [doc[:2000] for name in ("go-code", "postgres-docs")
             for doc in itertools.islice(ms.load_corpus(name).documents("train"), 60)]
    path = tmp_path_factory.mktemp("generic") / "generic.jsonl"
    split = {0: "valid", 1: "test"}
    path.write_text("".join(json.dumps({"text": t, "split": split.get(i % 10, "train")}) + "\n"
                            for i, t in enumerate(texts)))
    return str(path)


@pytest.fixture(scope="module")
def reference(generic, tmp_path_factory) -> Path:
    """The entry built once, alone and uninterrupted (in this process)."""
    folder, summary, reused = cached_pretrain(generic, "tiny", TOKENS, 512, 0, tmp_path_factory.mktemp("ref"))
    assert not reused and summary["steps"] == 60
    return folder


def start(generic: str, cache_dir: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", BUILD, generic, str(TOKENS), str(cache_dir)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"),
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "500"}, cwd=ROOT)  # unwrapped lines
    assert proc.stdout.readline().strip() == "ready", log.read_text()
    return proc


def finish(proc: subprocess.Popen, log: Path) -> dict:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log.read_text()
    return json.loads(out.strip().splitlines()[-1])


def test_two_processes_build_the_entry_once(generic, reference, tmp_path):
    cache_dir = tmp_path / "cache"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start(generic, cache_dir, log) for log in logs]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [finish(proc, log) for proc, log in zip(procs, logs)]

    built = [r for r in results if not r["reused"]]
    assert len(built) == 1, f"built {len(built)} times: {results}"
    waiter = next(log for r, log in zip(results, logs) if r["reused"])
    assert "waiting for another process building the generic model 'tiny'" in waiter.read_text()
    folder = Path(results[0]["folder"])
    assert results[0] == {**results[1], "reused": results[0]["reused"]}  # the same folder and summary
    assert folder.name == reference.name and not cache.partial_path(folder).exists()
    # One training run in it, logged once: nothing rewritten or truncated by a second one.
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == list(range(10, 61, 10))
    assert (folder / WEIGHTS).read_bytes() == (reference / WEIGHTS).read_bytes()
    assert cache.verify(folder, full=True) is None


def test_a_killed_build_leaves_no_entry_and_the_rerun_resumes_it(generic, reference, tmp_path):
    cache_dir, log = tmp_path / "cache", tmp_path / "killed.log"
    folder = cache_dir / "pretrained" / reference.name
    build = cache.partial_path(folder)
    proc = start(generic, cache_dir, log)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    first = build / "checkpoints" / "step_00000050" / "state.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the build ended before it could be killed: " + log.read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not folder.exists(), "a killed build left a folder that looks complete"
    assert build.is_dir() and not (build / cache.MANIFEST).exists()

    again, summary, reused = cached_pretrain(generic, "tiny", TOKENS, 512, 0, cache_dir)
    assert again == folder and not reused
    assert summary["steps"] == 60 and summary["steps_this_session"] == 10  # from step 50, not from 0
    assert not build.exists() and cache.verify(folder, full=True) is None
    assert (folder / WEIGHTS).read_bytes() == (reference / WEIGHTS).read_bytes()


def test_a_truncated_file_is_detected_and_the_entry_rebuilt(generic, reference, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ui, "QUIET", False)  # its one line is what is checked, unwrapped
    monkeypatch.setattr(ui.console, "soft_wrap", True)
    cache_dir = tmp_path / "cache"
    shutil.copytree(reference.parent.parent, cache_dir)  # the published entry, and its token caches
    folder = cache_dir / "pretrained" / reference.name
    weights = folder / WEIGHTS
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    again, summary, reused = cached_pretrain(generic, "tiny", TOKENS, 512, 0, cache_dir)
    assert again == folder and not reused and summary["steps_this_session"] == 60  # built anew, not resumed
    assert f"{WEIGHTS} has {size // 2:,} bytes, not {size:,}" in capsys.readouterr().err
    assert len(list(folder.parent.glob(f"{folder.name}.corrupt-*"))) == 1  # kept aside, not used
    assert weights.read_bytes() == (reference / WEIGHTS).read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_a_damaged_token_cache_is_detected_and_tokenized_again(generic, tmp_path, capsys, monkeypatch, damage):
    monkeypatch.setattr(ui, "QUIET", False)
    monkeypatch.setattr(ui.console, "soft_wrap", True)
    corpus, tokenizer = ms.load_corpus(generic), ms.train_tokenizer(ms.load_corpus(generic).documents("train"), 512)
    first = np.array(ms.tokenize_split(corpus, "valid", tokenizer, tmp_path).tokens)  # a copy: no map left
    (path,) = (tmp_path / "tokens").glob("*.bin")
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2:]
    else:  # the same size, one token changed
        data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    again = ms.tokenize_split(corpus, "valid", tokenizer, tmp_path)
    np.testing.assert_array_equal(np.array(again.tokens), first)
    assert "is incomplete or corrupt" in capsys.readouterr().err
    assert len(list(path.parent.glob(f"{path.name}.corrupt-*"))) == 1


def test_an_entry_built_for_a_run_is_its_own_work_in_its_later_sessions(tmp_path):
    """A `specialize` run killed after a cache entry was published, but before it noted
    the phase, finds the entry on its rerun: that is still its own work (reported as
    built, its cost paid by this run), while another run finds it reused."""
    folder = tmp_path / "entry"
    with cache.building_for("run-a"), cache.cache_entry(folder, "an entry") as entry:
        assert not entry.ready and not entry.reused
        (entry.build / "data.bin").write_bytes(b"x" * 10)
        entry.publish()
        assert not entry.reused
    for run, reused in (("run-a", False), ("run-b", True), (None, True)):
        scope = cache.building_for(run) if run else contextlib.nullcontext()
        with scope, cache.cache_entry(folder, "an entry") as entry:
            assert entry.ready and entry.reused == reused, run


def test_a_killed_writers_temporaries_go_when_the_entry_is_next_locked(tmp_path):
    """A token cache or tokenizer killed mid-write leaves `KEY.tmp<pid>` or
    `.KEY.json.tmp<pid>` beside it, under a process id no later writer reuses: whoever
    takes the entry's lock next removes them, and nothing else."""
    key = tmp_path / "66e24b79b8bfb1f3e6d9"
    left = [tmp_path / "66e24b79b8bfb1f3e6d9.tmp10755", tmp_path / ".66e24b79b8bfb1f3e6d9.json.tmp10755"]
    kept = [tmp_path / "66e24b79b8bfb1f3e6d9.bin", tmp_path / "other.tmp10755", tmp_path / ".other.json.tmp1"]
    for path in left + kept:
        path.write_bytes(b"x")
    with cache.locked(key, "an entry"):
        assert not any(p.exists() for p in left) and all(p.exists() for p in kept)
