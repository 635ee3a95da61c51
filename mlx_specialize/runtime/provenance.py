"""Which code measured a result: written into each line a long experiment records, so a
results file that spans months of changes says which lines came from which code."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # a git checkout's root, where the package runs from one
CODE = ("mlx_specialize", "mlxspec", "pyproject.toml")  # what decides a result, in a checkout


@functools.lru_cache(maxsize=None)
def code_version() -> dict:
    """This package's and MLX's versions and, where the package runs from a git checkout,
    its commit ("+dirty" when the package's code differs from it: `mlx_specialize/`, `mlxspec/`,
    pyproject.toml, new files there included; a study's own results file, tracked and
    appended to, is not code). Cached: the first call (a study's start) names the code the
    process loaded, not a checkout edited since."""
    from importlib.metadata import PackageNotFoundError, version

    import mlx.core as mx

    try:
        ours = version("mlx-specialize")
    except PackageNotFoundError:  # run from a checkout on PYTHONPATH: its commit says it
        ours = None
    out = {"mlx_specialize": ours, "mlx": mx.__version__}
    if (ROOT / ".git").exists():
        try:
            def git(*args: str) -> str:
                return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                      timeout=30).stdout.strip()

            commit = git("rev-parse", "HEAD")
            if commit:
                changed = git("status", "--porcelain", "--", *CODE)
                out["commit"] = commit + ("+dirty" if changed else "")
        except (OSError, subprocess.SubprocessError):  # no git: the versions alone
            pass
    return out
