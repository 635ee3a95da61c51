"""Cache entries: built by one process at a time, visible only when complete, checked on use.

Every cached result (a pre-trained model, a clustering, embeddings, a token stream, ...)
lives under a name made from a hash of its inputs, and is shared by every later run. Two
processes that need the same entry must not both build it (a second `specialize` used to
rewrite the run.json and truncate the metrics.jsonl of a first one pre-training the same
model), and a process killed mid-build must not leave something that looks complete.

    with cache_entry(folder, "the generic model 'small' on go-code") as entry:
        if not entry.ready:
            build_into(entry.build)   # FOLDER.partial
            entry.publish()
    use(folder)

- The lock `FOLDER.lock` (filelock: an OS lock, released when its process dies, even by
  kill -9) is held for the whole `with`: a second process prints one line saying what it
  waits for, and then finds the entry ready.
- The build folder FOLDER.partial is kept when a build fails or is killed, so a
  resumable build continues in it (a training from its checkpoints, embeddings from
  their finished shards); anything else is simply written again.
- `publish()` writes `manifest.json` (the relative path, size and sha256 of every file)
  into the build folder and renames it to FOLDER: the entry appears whole or not at all.
- `cache_entry` checks the manifest before saying `ready` (`verify`): every file present
  with its size, and the sha256 of every file up to VERIFY_HASH_BYTES. Larger files are
  checked by size only, so that using an entry stays cheap (hashing a paper-sized model
  with its checkpoints on every use would take seconds);
  `verify(folder, full=True)` hashes everything. An entry that fails is moved aside to
  FOLDER.corrupt-<time>, with one line, and built again.
- A FOLDER without a manifest was written in place by an older version: it becomes the
  build folder, so that whatever of it can resume does.

An entry published inside `building_for(run_id)` records the run in its manifest:
`entry.reused` is then False for that run's later sessions (an interrupted `specialize`
rerun finds the entry its first session built, and still counts its cost as paid by this
run) and True for every other run.

Single-file entries (a token cache, the generic tokenizer) take the same lock with
`locked`, write their data by rename, then a small JSON record holding its
`file_record` last; `check_file` checks it on use and `move_aside` removes a bad one.

Under mlx.launch, a build that talks to the other ranks (embedding shards) is locked by
rank 0 alone (`lock=False` on the others, which follow rank 0's lead): a rank waiting on
a lock that rank 0 holds while rank 0 waits for it in a collective would never return.
"""

from __future__ import annotations

import contextlib
import contextvars
import glob
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from .. import ui
from .files import atomic_write_bytes

MANIFEST = "manifest.json"
VERIFY_HASH_BYTES = 64 << 20
# The run (a `specialize` run folder's id) entries are being built for: recorded in their
# manifests, so that a later session of the same run, after an interruption, counts an
# entry its first session built as its own work, not as one it found (`Entry.reused`).
_current_run: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlxspec_run", default=None)


@contextlib.contextmanager
def building_for(run_id: str):
    """Entries published in the body are marked as built for `run_id`."""
    token = _current_run.set(run_id)
    try:
        yield
    finally:
        _current_run.reset(token)


def default_cache_dir() -> Path:
    """`$MLXSPEC_CACHE`, else `~/.cache/mlx-specialize`."""
    return Path(os.environ.get("MLXSPEC_CACHE", Path.home() / ".cache" / "mlx-specialize"))


# ---- files ------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    """What a manifest keeps of a file: its size and sha256."""
    return {"size": Path(path).stat().st_size, "sha256": sha256_file(path)}


def check_file(path: Path, record, full: bool = False, label: str | None = None) -> str | None:
    """What is wrong with `path` against its `file_record` (None: nothing). The sha256 is
    checked for files up to VERIFY_HASH_BYTES, or all with `full`."""
    label = label or Path(path).name
    if not isinstance(record, dict) or not {"size", "sha256"} <= record.keys():
        return f"no record of {label}"
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError:
        return f"{label} is missing"
    if size != record["size"]:
        return f"{label} has {size:,} bytes, not {record['size']:,}"
    if (full or size <= VERIFY_HASH_BYTES) and sha256_file(path) != record["sha256"]:
        return f"{label} was changed (another sha256)"
    return None


def move_aside(path: Path, problem: str) -> Path:
    """Rename a bad entry (file or folder) to PATH.corrupt-<time>, saying so in one line;
    kept, not deleted, so that what went wrong can still be looked at."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, aside)
    ui.info(f"{path} is incomplete or corrupt ({problem}): moved aside to {aside.name}, building it again")
    return aside


@contextlib.contextmanager
def locked(path: Path, what: str, lock: bool = True):
    """Hold `PATH.lock` for the body; when another process holds it, say so and wait.
    Once held, the temporaries a killed writer of PATH's files left beside it
    (`PATH.tmp<pid>`, `.PATH.<ext>.tmp<pid>`: no one else can be writing them now) go."""
    if not lock:
        yield
        return
    path = Path(path)
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    file_lock = FileLock(lock_path)
    try:
        file_lock.acquire(timeout=0)
    except Timeout:
        ui.info(f"waiting for another process building {what} (lock {lock_path})")
        file_lock.acquire()
    name = glob.escape(path.name)
    for stale in [*path.parent.glob(f"{name}.tmp*"), *path.parent.glob(f".{name}.*tmp*")]:
        if stale.is_file():
            stale.unlink(missing_ok=True)
    try:
        yield
    finally:
        file_lock.release()


# ---- folders ------------------------------------------------------------------------
def partial_path(folder: Path) -> Path:
    return folder.with_name(f"{folder.name}.partial")


def write_manifest(folder: Path, what: str) -> None:
    """Record every file under `folder` (but the manifest) in FOLDER/manifest.json."""
    files = {p.relative_to(folder).as_posix(): file_record(p)
             for p in sorted(folder.rglob("*")) if p.is_file() and p != folder / MANIFEST}
    run = {"run": _current_run.get()} if _current_run.get() else {}
    atomic_write_bytes(folder / MANIFEST, json.dumps({"what": what, **run, "files": files}, indent=1).encode())


def verify(folder: Path, full: bool = False) -> str | None:
    """What is wrong with a published entry (None: nothing): a file of its manifest
    missing, of another size, or (up to VERIFY_HASH_BYTES, or all with `full`) of
    another sha256. Files added after publication are not checked."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        records = list(files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"no readable {MANIFEST}"
    for rel, record in records:
        problem = check_file(folder / rel, record, full, label=rel)
        if problem:
            return problem
    return None


def _drop_leftovers(folder: Path) -> None:
    """Delete the dot-named temporaries that interrupted atomic writes leave (files.py,
    models/io.py, train/checkpoint.py all write `.NAME.tmp...` then rename)."""
    for path in sorted(folder.rglob(".*"), key=lambda p: len(p.parts)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


@dataclass
class Entry:
    """A cache entry inside `cache_entry`: `ready` when the complete entry is at
    `folder`; else the caller builds it in `build` and calls `publish()`."""

    folder: Path
    what: str
    ready: bool

    @property
    def reused(self) -> bool:
        """Ready, and built by another run than the current one (`building_for`): found
        in the cache, not paid for by this run."""
        if not self.ready:
            return False
        try:
            built_for = json.loads((self.folder / MANIFEST).read_text()).get("run")
        except (OSError, ValueError):
            return True
        return built_for is None or built_for != _current_run.get()

    @property
    def build(self) -> Path:
        return partial_path(self.folder)

    def publish(self) -> None:
        """Write the build folder's manifest and rename it to `folder`."""
        if self.ready:
            return
        if not self.build.is_dir() and verify(self.folder) is None:
            self.ready = True  # a rank of the same job, on a shared disk, published it first
            return
        _drop_leftovers(self.build)
        write_manifest(self.build, self.what)
        os.replace(self.build, self.folder)
        self.ready = True

    def amend(self, files: dict[str, bytes]) -> None:
        """Add `files` (name -> bytes) to the published entry and to its manifest."""
        for name, data in files.items():
            atomic_write_bytes(self.folder / name, data)
        manifest = json.loads((self.folder / MANIFEST).read_text())
        manifest["files"].update({name: file_record(self.folder / name) for name in files})
        atomic_write_bytes(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())


def _settle(folder: Path) -> bool:
    """Whether FOLDER is a complete entry; a bad one is moved out of the way."""
    if not folder.exists():
        return False
    if not (folder / MANIFEST).exists():  # written in place by an older version
        build = partial_path(folder)
        if build.exists():
            move_aside(folder, f"no {MANIFEST}")
        else:
            ui.info(f"{folder} has no {MANIFEST} (an older version's): continuing it as {build.name}")
            os.replace(folder, build)
        return False
    problem = verify(folder)
    if problem is None:
        return True
    move_aside(folder, problem)
    return False


@contextlib.contextmanager
def cache_entry(folder: str | os.PathLike, what: str, lock: bool = True):
    """`with cache_entry(folder, what) as entry:` the entry at `folder`, locked for the
    body (see the module docstring). `what` names it in the waiting and corruption lines."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with locked(folder, what, lock):
        entry = Entry(folder, what, _settle(folder))
        if not entry.ready:
            entry.build.mkdir(exist_ok=True)
        yield entry
