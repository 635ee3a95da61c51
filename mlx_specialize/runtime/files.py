"""Writing files so that a crash never leaves a half-written one under the real name."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def named(err: OSError, path: str | os.PathLike) -> OSError:
    """`err`, or the same error naming `path` when it names no file: a failed write()
    (a full disk, a file-size limit) raises an OSError without a file name, and the
    command line reports `<reason>: <file>` (mlxspec/errors.py, handle_errors)."""
    if err.filename is not None or err.errno is None:
        return err
    return OSError(err.errno, err.strerror, str(path))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary name beside `path`, then rename it into place.

    A failed write (a full disk) removes its temporary: the half-written file would
    hold the very space the disk lacks, under a name no later write reuses (it holds
    the process id)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise named(err, path) from None
        raise


def copy_run_files(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy a run folder's files (its model, summary, metrics; not its checkpoints,
    hidden files or the names in `skip`) into `dst`, each under a temporary name first,
    then renamed."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(src).iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name not in skip:
            tmp = dst / f".{path.name}.tmp{os.getpid()}"
            shutil.copy2(path, tmp)
            os.replace(tmp, dst / path.name)
