"""The BLAS loader: on by default where a library exists, safe when none does."""

import json
import os
import subprocess
import sys

import pytest

from mlx_specialize.accel import backend

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


# ---- the forwarding library (blas_forward.py), checked on libm, independently of BLAS ----
linux_x86 = pytest.mark.skipif(sys.platform != "linux" or not backend.is_x86(), reason="x86-64 Linux only")


FORWARD_LIBM = """
import ctypes, ctypes.util, json, math
from mlx_specialize.accel import blas_forward
libm = ctypes.util.find_library("m")
ctypes.CDLL(libm, mode=ctypes.RTLD_GLOBAL)
image = blas_forward.build_forwarder([("mlxspec_test_cos", "cos"), ("mlxspec_test_hypot", "hypot")],
                                     libm, "libmlxspec_test.so")
lib = blas_forward.load_forwarder(image, "mlxspec_test")
for name in ("mlxspec_test_cos", "mlxspec_test_hypot"):
    getattr(lib, name).restype = ctypes.c_double
lib.mlxspec_test_cos.argtypes = [ctypes.c_double]
lib.mlxspec_test_hypot.argtypes = [ctypes.c_double, ctypes.c_double]
print(json.dumps([lib.mlxspec_test_cos(0.5), math.cos(0.5), lib.mlxspec_test_hypot(3.0, 4.0),
                  hasattr(lib, "cos_plain_name_not_exported")]))
"""


@linux_x86
def test_a_forwarder_calls_the_functions_it_names_under_new_names():
    """In its own process: a wrong jump crashes it, and that must read as a failure."""
    env = {**os.environ, backend.ENV_VAR: "off"}
    done = subprocess.run([sys.executable, "-c", FORWARD_LIBM], capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"the forwarder crashed or failed (exit {done.returncode}): {done.stderr[-300:]}"
    ours, expected, hypot, extra = json.loads(done.stdout.strip().splitlines()[-1])
    assert ours == expected  # a double argument in xmm0, the result back
    assert hypot == 5.0  # two arguments pass through the jump untouched
    assert not extra


@linux_x86
def test_the_symbol_reader_and_the_writer_agree_with_each_other_and_with_libm(tmp_path):
    from mlx_specialize.accel import blas_forward

    names = [(f"fwd_{i}", n) for i, n in enumerate(("sin", "cos", "tan", "exp", "log"))]
    path = tmp_path / "fwd.so"
    path.write_bytes(blas_forward.build_forwarder(names, "libm.so.6", "fwd.so"))
    symbols = blas_forward.read_dynamic_symbols(str(path))
    assert symbols.defined_functions == {a for a, _ in names}
    assert symbols.undefined == {b for _, b in names}
    libm = blas_forward.read_dynamic_symbols(_mapped_file("libm"))
    assert {"sin", "cos", "exp", "hypot"} <= libm.defined_functions  # plain and IFUNC (cos, sin) functions
    assert blas_forward.elf_hash(b"printf") == 0x077905A6  # the gABI's hash, value from glibc's dl-hash.h tests


def _mapped_file(name: str) -> str:
    """The file of the loaded library `name` (e.g. libm), from this process's memory map."""
    import ctypes.util

    ctypes.CDLL(ctypes.util.find_library(name[3:]))
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "/" in line}
    return next(p for p in sorted(paths) if os.path.basename(p).startswith((name + ".so", name + "-")))


# ---- what `pip install .` brings on x86-64 Linux ----------------------------------------
MAPS = """
import json, os, sys
def libs():
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split()) == 6 and ".so" in line}
import mlx_specialize.accel.backend as backend  # MLXSPEC_BLAS=off: nothing loaded yet
before = libs()
name, path = [c for c in backend._candidates() if "scipy-openblas32" in c[0]][0]
backend._load(path)
import mlx.core as mx
a = mx.random.normal((256, 256)); b = mx.random.normal((256, 256))
import numpy as np
err = float(np.abs(np.array(a @ b) - np.array(a, np.float64) @ np.array(b, np.float64)).max())
print(json.dumps({"new": sorted(libs() - before), "prefix": sys.prefix, "err": err}))
"""
ALLOWED_SYSTEM = ("libc.so", "libm.so", "libpthread.so", "libgcc_s.so", "libstdc++.so", "ld-linux", "libdl.so",
                  "librt.so")


@linux_x86
def test_the_declared_openblas_loads_and_needs_nothing_outside_the_environment():
    if not any("scipy-openblas32" in name for name, _ in backend._candidates()):
        pytest.fail("scipy-openblas32, a dependency on x86-64 Linux, is not installed")
    env = {**os.environ, backend.ENV_VAR: "off"}
    out = subprocess.run([sys.executable, "-c", MAPS], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["err"] < 1e-3  # MLX's products are right through the forwarder
    outside = [p for p in result["new"] if not p.startswith(result["prefix"]) and not p.startswith("/memfd:")
               and not os.path.basename(p).startswith(ALLOWED_SYSTEM)]
    assert outside == [], f"the BLAS pulled in libraries from outside the environment: {outside}"
    assert any("scipy_openblas" in p for p in result["new"])


WHICH_SGEMM = """
import ctypes, json, numpy as np, mlx_specialize as ms
from mlx_specialize.accel import backend
import mlx.core as mx

def product(sgemm, a, b):  # C = A @ B, row-major, through one library's cblas_sgemm
    f32p, i = ctypes.POINTER(ctypes.c_float), ctypes.c_int
    sgemm.argtypes = [i, i, i, i, i, i, ctypes.c_float, f32p, i, f32p, i, ctypes.c_float, f32p, i]
    c = np.empty((a.shape[0], b.shape[1]), np.float32)
    sgemm(101, 111, 111, a.shape[0], b.shape[1], a.shape[1], 1.0, a.ctypes.data_as(f32p), a.shape[1],
          b.ctypes.data_as(f32p), b.shape[1], 0.0, c.ctypes.data_as(f32p), b.shape[1])
    return c

rng = np.random.default_rng(0)
a, b = rng.standard_normal((256, 1000), dtype=np.float32), rng.standard_normal((1000, 200), dtype=np.float32)
ours = np.array(mx.array(a) @ mx.array(b))
reference = product(ctypes.CDLL(backend.reference_blas_path()).cblas_sgemm, a, b)
loaded = product(ms.BLAS.handle.cblas_sgemm, a, b) if ms.BLAS.handle is not None else None
print(json.dumps([ms.BLAS.name, np.array_equal(ours, reference),
                  None if loaded is None else np.array_equal(ours, loaded)]))
"""


@linux_x86
def test_mlx_computes_with_the_loaded_blas_not_the_reference_one():
    """Bit for bit: MLX's product equals the loaded library's own `cblas_sgemm` and not the
    wheel's reference BLAS (different summation orders round differently), and with the
    loader off it equals the reference. A name forwarded wrongly would leave MLX on the
    reference."""
    env = {k: v for k, v in os.environ.items() if k != backend.ENV_VAR}
    run = lambda extra: json.loads(subprocess.run(  # noqa: E731
        [sys.executable, "-c", WHICH_SGEMM], capture_output=True, text=True, env={**env, **extra},
        check=True).stdout.strip().splitlines()[-1])
    name, equals_reference, equals_loaded = run({})
    assert name is not None and equals_loaded is True and equals_reference is False
    name, equals_reference, equals_loaded = run({backend.ENV_VAR: "off"})
    assert name is None and equals_reference is True


@linux_x86
def test_mlx_is_found_from_a_folder_holding_another_mlx(tmp_path):
    """`mlx` is a namespace package: a folder named `mlx` in the working directory (MLX's
    own kernel cache is /tmp/mlx, a checkout of MLX's sources is mlx/) is one of its
    locations, and the first. The wheel's libraries are still found from there."""
    (tmp_path / "mlx" / "0.32.4" / "cpu").mkdir(parents=True)
    found = subprocess.run([sys.executable, "-c", "import json\nfrom mlx_specialize.accel import backend\n"
                            "print(json.dumps([backend.reference_blas_path(), backend._mlx_library()]))"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    reference, library = json.loads(found)
    assert reference and os.path.isfile(reference) and "mlx_cpu.libs" in reference
    assert library and os.path.isfile(library) and library.endswith("libmlx.so")
