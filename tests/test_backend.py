"""The BLAS loader: on by default where a library exists, safe when none does."""

import json
import os
import subprocess
import sys

import pytest

from mlx_specialize import backend

PROBE = "import json, mlx_specialize as ms; b = ms.BLAS; print(json.dumps([b.name, b.path, b.note]))"


def probe(env_value=None, code=PROBE):
    env = {**os.environ}
    env.pop(backend.ENV_VAR, None)
    if env_value is not None:
        env[backend.ENV_VAR] = env_value
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    name, path, note = json.loads(out.stdout.strip().splitlines()[-1])
    return {"name": name, "path": path, "note": note}


@pytest.mark.skipif(sys.platform != "linux", reason="the loader only acts on Linux")
def test_loads_the_first_candidate_by_default():
    if not backend._candidates():
        pytest.skip("no optimized BLAS on this machine")
    info = probe()
    assert info["name"] and os.path.exists(info["path"])


@pytest.mark.skipif(sys.platform != "linux", reason="the loader only acts on Linux")
def test_can_be_switched_off_and_never_breaks_import():
    assert probe("off") == {"name": None, "path": None, "note": "disabled by MLXSPEC_BLAS=off"}
    broken = probe("/nonexistent/libblas.so")
    assert broken["name"] is None and "/nonexistent/libblas.so" in broken["note"]
    late = probe(code="import mlx.core\n" + PROBE)
    assert late["name"] is None and "import mlx_specialize first" in late["note"]


def test_an_installed_mkl_comes_before_openblas(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libmkl_rt.so.3").write_bytes(b"")  # where `pip install mkl` puts it
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    candidates = backend._candidates()
    assert candidates[0] == ("Intel MKL (PyPI)", str(tmp_path / "lib" / "libmkl_rt.so.3"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "none"))
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path / "none"))
    assert all(name != "Intel MKL (PyPI)" for name, _ in backend._candidates())


@pytest.mark.skipif(sys.platform != "linux" or not backend.is_x86(), reason="x86-64 Linux only")
def test_the_eval_order_is_made_breadth_first_unless_set():
    code = "import os, mlx_specialize; print(os.environ.get('MLX_BFS_MAX_WIDTH'))"
    env = {k: v for k, v in os.environ.items() if k != "MLX_BFS_MAX_WIDTH"}

    def width(**extra):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, **extra},
                             check=True)
        return out.stdout.strip().splitlines()[-1]

    assert width() == backend.EVAL_WIDTH
    assert width(MLX_BFS_MAX_WIDTH="7") == "7"  # the user's setting wins
