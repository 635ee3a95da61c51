"""A full disk while training writes a checkpoint or its best model: the previous
checkpoint and the previous best model stay whole and loadable, no half-written
checkpoint is ever one a resume would pick, the command ends with one error line, and
`--resume` (once there is room again) ends with the weights of a run never interrupted.

Two ways to fill the disk: a real one (a file-size limit, RLIMIT_FSIZE, which needs no
privilege; and a small tmpfs where this machine lets us mount one), through the command
line in a subprocess; and a fault injected at each single write of a checkpoint (model,
optimizer, state.json) and of the best model (weights, config.json, tokenizer), in
process, which the real limits cannot aim at one by one. The same fault as a SIGKILL
half-way through a save checks what is left when no clean-up can run.
"""

import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import sys
from pathlib import Path

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core (here, for _killed_run's child)
import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest

from mlx_specialize.models import io as model_io
from mlx_specialize.train import run_folder
from mlx_specialize.train.checkpoint import TMP_PREFIX, checkpoint_dirs, load_checkpoint
from helpers import GENERIC

ROOT = Path(__file__).resolve().parents[1]
_script = Path(sys.executable).with_name("mlxspec")
MLXSPEC = [str(_script)] if _script.exists() else [sys.executable, "-m", "mlxspec.main"]
STEPS, EVERY = 12, 4  # the command-line runs: checkpoints at 4, 8, 12; validation (and best model) at 8, 12


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _pretrain_args(out, tok_dir, cache_dir, *extra) -> list[str]:
    return ["pretrain", str(out), "--generic", GENERIC, "--preset", "tiny", "--tokenizer", str(tok_dir),
            "--tokens", str(STEPS * 8 * 128), "--checkpoint-every", str(EVERY), "--eval-every", "8",
            "--cache-dir", str(cache_dir), "--quiet", *extra]


def _ignore_sigxfsz():
    # A write past RLIMIT_FSIZE then fails with EFBIG instead of killing the process
    # (Python ignores SIGXFSZ at start-up too; subprocess restores it to the default first).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _same_arrays(a: Path, b: Path) -> None:
    """The safetensors files `a` and `b` hold the same arrays, bit for bit."""
    wa, wb = mx.load(str(a)), mx.load(str(b))
    assert wa.keys() == wb.keys(), (a, b)
    for k in wa:
        same = np.array_equal(np.array(wa[k]), np.array(wb[k]))
        assert same, f"{a} and {b} differ at {k}"


def _same_run_end(run: Path, reference: Path) -> None:
    """`run` ended as `reference` did: the same checkpoints, weights and optimizer state
    bit for bit, the same best model."""
    names = [p.name for p in checkpoint_dirs(run)]
    assert names == [p.name for p in checkpoint_dirs(reference)]
    for name in ("model.safetensors", "optimizer.safetensors"):
        _same_arrays(checkpoint_dirs(run)[-1] / name, checkpoint_dirs(reference)[-1] / name)
    _same_arrays(run / "model.safetensors", reference / "model.safetensors")
    assert json.loads((run / "config.json").read_text()) == json.loads((reference / "config.json").read_text())


def _loads(checkpoint: Path, tokenizer) -> dict:
    """Load `checkpoint` into a fresh `tiny` model and optimizer; its state."""
    model = ms.Model(ms.get_preset("tiny").model_args(tokenizer.vocab_size))
    optimizer = optim.AdamW(learning_rate=1e-3)
    optimizer.init(model.trainable_parameters())
    return load_checkpoint(checkpoint, model, optimizer, tokenizer.fingerprint)


def _one_error_line(proc: subprocess.CompletedProcess, reason: int) -> Path:
    """The run failed as a full disk should end a command: non-zero, no traceback, one
    `error: <the system's reason>: <file>` line. The file it names."""
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    match = re.fullmatch(rf"error: {re.escape(os.strerror(reason))}: (.+)", lines[0])
    assert match, lines[0]
    return Path(match.group(1))


def _after_the_failure(out: Path, failed: Path, tokenizer) -> None:
    """The first checkpoint is the newest complete one, and loads; the failed write was
    one of the next checkpoint's (step 8, as the error line says), whose partial folder
    is gone."""
    assert [p.name for p in checkpoint_dirs(out)] == [f"step_{EVERY:08d}"]
    assert _loads(checkpoint_dirs(out)[-1], tokenizer)["step"] == EVERY
    assert failed.parent.name.startswith(f"{TMP_PREFIX}{2 * EVERY:08d}_"), failed
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step_{EVERY:08d}"]


@pytest.fixture(scope="module")
def tok_dir(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    tokenizer.save(folder)
    return folder


@pytest.fixture(scope="module")
def reference_runs(tok_dir, cache_dir, tmp_path_factory):
    """Two uninterrupted command-line runs with the same seed, run side by side."""
    root = tmp_path_factory.mktemp("uninterrupted")
    procs = [subprocess.Popen([*MLXSPEC, *_pretrain_args(root / name, tok_dir, cache_dir)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in "ab"]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
    return root / "a", root / "b"


def test_two_uninterrupted_runs_end_bit_identical(reference_runs):
    """What the resumed runs below are compared with: training here is deterministic,
    so any difference after a resume is the resume's."""
    _same_run_end(*reference_runs)


def test_a_file_size_limit_stops_a_checkpoint_and_resume_recovers(reference_runs, tok_dir, cache_dir, tokenizer,
                                                                  tmp_path):
    """A real RLIMIT_FSIZE, set by the training process itself (the command line's
    `main`, run as the console script runs it) right after its first checkpoint is in
    place: every checkpoint's files have the same sizes, so a limit set from the start
    (in preexec_fn) would stop the first checkpoint or none. It lies between the largest
    file a run writes besides the optimizer state (the best model's weights) and the
    optimizer state's file, sizes measured on the reference run: the best model at step
    8 is written, the step-8 checkpoint's optimizer.safetensors fails part-way with EFBIG.
    Then `--resume`, without the limit, ends as the reference run."""
    reference = reference_runs[0]
    sizes = {p.relative_to(reference): p.stat().st_size for p in reference.rglob("*") if p.is_file()}
    optimizer_size = max(size for path, size in sizes.items() if path.name == "optimizer.safetensors")
    others = max(size for path, size in sizes.items() if path.name != "optimizer.safetensors")
    assert others < optimizer_size
    limit = (others + optimizer_size) // 2
    driver = (
        "import resource, sys\n"
        "from mlx_specialize.train import run_folder\n"
        "limit = int(sys.argv[1])\n"
        "real = run_folder.save_checkpoint\n"
        "def save_checkpoint(*args, **kwargs):\n"
        "    path = real(*args, **kwargs)\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "    return path\n"
        "run_folder.save_checkpoint = save_checkpoint\n"
        "from mlxspec.main import main\n"
        "sys.argv = ['mlxspec', *sys.argv[2:]]\n"
        "main()\n"
    )
    out = tmp_path / "run"
    limited = subprocess.run([sys.executable, "-c", driver, str(limit), *_pretrain_args(out, tok_dir, cache_dir)],
                             env=_env(), capture_output=True, text=True, timeout=300, preexec_fn=_ignore_sigxfsz)
    failed = _one_error_line(limited, errno.EFBIG)
    assert failed.name == "optimizer.safetensors"
    _after_the_failure(out, failed, tokenizer)

    resumed = subprocess.run([*MLXSPEC, *_pretrain_args(out, tok_dir, cache_dir, "--resume")], env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _same_run_end(out, reference)


def test_a_full_tmpfs_stops_a_checkpoint_and_resume_recovers(reference_runs, tok_dir, cache_dir, tokenizer, tmp_path):
    """A real small filesystem (a tmpfs; needs root and a mount namespace that allows it,
    else skipped), through the installed command line. Its size, from the reference
    run's files: the small files, the best model and one checkpoint, plus half of a
    checkpoint and a best model more. So the first checkpoint fits, and so does the best
    model at step 8 (written beside the previous one, then renamed), but not the step-8
    checkpoint beside the first. Then the filesystem is grown and the run resumed."""
    reference = reference_runs[0]
    checkpoint = sum(p.stat().st_size for p in checkpoint_dirs(reference)[-1].iterdir())
    best = (reference / "model.safetensors").stat().st_size
    everything = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file())
    small = everything - best - len(checkpoint_dirs(reference)) * checkpoint
    size = small + best + checkpoint + (checkpoint + best) // 2
    # The mount point is a folder of its own, not under pytest's tmp_path: another pytest
    # session on this machine renames and deletes old tmp_path folders, which would leave
    # the mount behind, busy, where no umount finds it.
    disk = Path(tempfile.mkdtemp(prefix="mlxspec-tmpfs-"))
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                           capture_output=True, text=True) if shutil.which("mount") else None
    if mount is None or mount.returncode != 0:
        disk.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip() if mount else 'no mount command'})")
    try:
        out = disk / "run"
        full = subprocess.run([*MLXSPEC, *_pretrain_args(out, tok_dir, cache_dir)], env=_env(), capture_output=True,
                              text=True, timeout=300)
        _after_the_failure(out, _one_error_line(full, errno.ENOSPC), tokenizer)

        subprocess.run(["mount", "-o", f"remount,size={4 * everything}", str(disk)], check=True)
        resumed = subprocess.run([*MLXSPEC, *_pretrain_args(out, tok_dir, cache_dir, "--resume")], env=_env(),
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        _same_run_end(out, reference)
    finally:
        if subprocess.run(["umount", str(disk)]).returncode != 0:  # a process still inside: detach it anyway
            subprocess.run(["umount", "-l", str(disk)], check=True)
        disk.rmdir()


# ---- a fault at each write -------------------------------------------------------------
def _in_process(out, tokenizer, cache_dir, resume=False):
    """6 steps of `tiny`: a checkpoint (all kept) and a validation, saving the best model
    (it improves each time), every 2 steps."""
    return ms.pretrain(GENERIC, ms.get_preset("tiny"), out, tokens=6 * 8 * 128, tokenizer=tokenizer,
                       cache_dir=cache_dir, eval_every=2, eval_tokens=2048, checkpoint_every=2, keep_checkpoints=10,
                       keep_final_checkpoints=10, lr=3e-3, warmup=2, resume=resume)


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class DiskFull:
    """The `nth` save of `kind` (a "checkpoint" or the "best" model) fails at its write of
    the file `name` (or of a temporary `.NAME.tmp...` for it), after writing half of it:
    a full disk creates and cuts the file, then stops. It fails with ENOSPC, or, with
    `kill`, the process dies there (SIGKILL: no handler, no clean-up runs, as when the
    power goes). Writes are seen through mx.save_safetensors (arrays) and Path.write_bytes
    / write_text (the rest); one they do not see leaves `fired` False, which the tests
    check. `before`: the run folder's file hashes when the failing save began."""

    def __init__(self, monkeypatch, out: Path, kind: str, name: str, nth: int = 2, kill: bool = False):
        self.out, self.kind, self.name, self.nth, self.kill = out, kind, name, nth, kill
        self.count, self.armed, self.fired, self.before = 0, False, False, None
        for which, attr in (("checkpoint", "save_checkpoint"), ("best", "save_model")):
            monkeypatch.setattr(run_folder, attr, self._save(which, getattr(run_folder, attr)))
        real_save = mx.save_safetensors

        def save_safetensors(file, arrays, metadata=None):
            if self._hit(file if isinstance(file, str) else file.name):
                data = io.BytesIO()
                real_save(data, arrays, metadata=metadata or {})
                self._fail(file, data.getvalue())
            return real_save(file, arrays, metadata=metadata or {})

        def writer(real, encode):
            def write(path, data, *args, **kwargs):
                if self._hit(path):
                    self._fail(str(path), encode(data))
                return real(path, data, *args, **kwargs)
            return write

        monkeypatch.setattr(mx, "save_safetensors", save_safetensors)
        monkeypatch.setattr(Path, "write_bytes", writer(Path.write_bytes, bytes))
        monkeypatch.setattr(Path, "write_text", writer(Path.write_text, str.encode))

    def _save(self, which, real):
        def save(*args, **kwargs):
            if which == self.kind:
                self.count += 1
                self.armed = self.count == self.nth
                if self.armed:
                    self.before = _hashes(self.out)
            try:
                return real(*args, **kwargs)
            finally:
                self.armed = False
        return save

    def _hit(self, path) -> bool:
        written = Path(path).name
        hit = self.armed and not self.fired and (written == self.name or written.startswith(f".{self.name}.tmp"))
        self.fired |= hit
        return hit

    def _fail(self, file, data: bytes):
        if isinstance(file, str):
            with open(file, "wb") as f:
                f.write(data[: len(data) // 2])
        else:
            file.write(data[: len(data) // 2])
            file.flush()
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a failed write(): no file name


def _best_model_is_whole(out: Path, reference: Path) -> None:
    """The best model in `out` loads, and its weights are those of the step its
    config.json names (the uninterrupted run's checkpoint at that step)."""
    step = ms.load_model(out)[2]["mlxspec"]["step"]
    _same_arrays(out / "model.safetensors", reference / "checkpoints" / f"step_{step:08d}" / "model.safetensors")


@pytest.fixture(scope="module")
def in_process_reference(tokenizer, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted_in_process") / "run"
    _in_process(out, tokenizer, cache_dir)
    return out


@pytest.mark.parametrize("kind,name", [
    ("checkpoint", "model.safetensors"), ("checkpoint", "optimizer.safetensors"), ("checkpoint", "state.json"),
    ("best", "model.safetensors"), ("best", "config.json"), ("best", "tokenizer.model"),
])
def test_a_full_disk_at_any_write_keeps_the_previous_save(in_process_reference, tokenizer, cache_dir, tmp_path,
                                                           monkeypatch, kind, name):
    """The second checkpoint or best model (step 4) fails at one of its files. The newest
    complete checkpoint is then the first, and loads; the best model is whole. The run
    folder is exactly as it was when the failed save began: the previous checkpoint and
    best model unchanged, and no partial file left (on a full disk it would hold the
    space). The error names a file. A resume ends as the uninterrupted run."""
    out = tmp_path / "run"
    fault = DiskFull(monkeypatch, out, kind, name)
    with pytest.raises(OSError) as failed:
        _in_process(out, tokenizer, cache_dir)
    assert fault.fired, f"no write of {name} was seen during a {kind} save"
    assert [p.name for p in checkpoint_dirs(out)] == ["step_00000002"]
    assert _loads(checkpoint_dirs(out)[-1], tokenizer)["step"] == 2
    _best_model_is_whole(out, in_process_reference)
    assert _hashes(out) == fault.before
    assert failed.value.errno == errno.ENOSPC and failed.value.filename
    monkeypatch.undo()
    _in_process(out, tokenizer, cache_dir, resume=True)
    _same_run_end(out, in_process_reference)


def _killed_run(out, tok_dir, cache_dir, kind, name):
    """In a child process: `_in_process`, killed at the write of `name` in the second
    `kind` save."""
    DiskFull(pytest.MonkeyPatch(), Path(out), kind, name, kill=True)
    _in_process(Path(out), ms.Tokenizer.load(tok_dir), Path(cache_dir))


@pytest.mark.parametrize("kind,name", [("checkpoint", "state.json"), ("best", "config.json")])
def test_a_kill_mid_save_leaves_nothing_a_resume_would_pick(in_process_reference, tok_dir, tokenizer, cache_dir,
                                                           tmp_path, kind, name):
    """A process killed half-way through the last file of a save (no clean-up runs) leaves
    its temporaries, but no half-written checkpoint that checkpoint_dirs lists and a resume
    would load, and no best model of mixed saves. A resume ends as the uninterrupted run
    and removes the leftovers at its first saves."""
    out = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", "import sys, test_full_disk; test_full_disk._killed_run(*sys.argv[1:])",
                            str(out), str(tok_dir), str(cache_dir), kind, name],
                           cwd=Path(__file__).parent, env=_env(), capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert [p.name for p in checkpoint_dirs(out)] == ["step_00000002"]
    _best_model_is_whole(out, in_process_reference)
    leftovers = [*(out / "checkpoints").glob(f"{TMP_PREFIX}*"), *out.glob(f"{model_io.STAGING_PREFIX}*")]
    assert leftovers, "the kill left no temporary"
    _in_process(out, tokenizer, cache_dir, resume=True)
    assert not any(path.exists() for path in leftovers)
    _same_run_end(out, in_process_reference)
