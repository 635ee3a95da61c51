"""C++ pieces of mlx-specialize, built at first use for this machine: the bf16 matmul.

`load_bf16()` returns the `_bf16` extension module (bf16_matmul.cpp), compiled once with
CMake against the installed MLX and nanobind (`pip install 'mlx-specialize[bf16]'`), and
cached in `<cache>/native/<key>/` (`$MLXSPEC_CACHE`, default ~/.cache/mlx-specialize), the
key a hash of the source, the MLX, nanobind and Python versions and the CPU; so an
upgrade rebuilds. Like MLX's own CPU kernels, it is built with -march=native: the cache
is per machine. Anything missing (CMake, a C++ compiler, nanobind, a nanobind whose ABI
differs from MLX's) raises `NativeUnavailable` with one line saying what and how to fix it.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..data.tokens import default_cache_dir
from ..errors import SpecializeError

SOURCE_DIR = Path(__file__).parent
SOURCES = ("bf16_matmul.cpp", "CMakeLists.txt")
_loaded: dict[str, object] = {}


class NativeUnavailable(SpecializeError):
    """The extension cannot be built or loaded here; the message says why."""


def _versions() -> str:
    import mlx.core as mx

    try:
        import nanobind
    except ImportError:
        raise NativeUnavailable(
            "bf16 training needs nanobind to build its C++ matmul: pip install 'mlx-specialize[bf16]'") from None
    return f"mlx {mx.__version__} nanobind {nanobind.__version__} python {sys.version.split()[0]} {platform.machine()}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def cache_key() -> str:
    digest = hashlib.sha256(_versions().encode() + _cpu_model().encode())
    for name in SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def build_dir() -> Path:
    return default_cache_dir() / "native" / cache_key()


def _cmake() -> str:
    found = shutil.which("cmake")
    if found is None:
        try:  # the PyPI `cmake` package, installed by the [bf16] extra
            import cmake

            found = str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
        except (ImportError, AttributeError):
            raise NativeUnavailable(
                "bf16 training builds a C++ matmul with CMake, which is not installed: "
                "pip install 'mlx-specialize[bf16]' (or apt-get install cmake)") from None
    if shutil.which("g++") is None and shutil.which("c++") is None:
        raise NativeUnavailable("bf16 training builds a C++ matmul and needs a C++ compiler: apt-get install g++")
    return found


def _build(target: Path) -> Path:
    """Compile the extension into `target` (atomically: a failed build leaves nothing)."""
    cmake = _cmake()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        work = Path(tmp)
        for name in SOURCES:
            shutil.copy(SOURCE_DIR / name, work / name)
        steps = ([cmake, "-S", str(work), "-B", str(work / "build"), f"-DPython_EXECUTABLE={sys.executable}"],
                 [cmake, "--build", str(work / "build"), "-j", str(os.cpu_count() or 1)])
        for cmd in steps:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                log = target.parent / f"build-{target.name}.log"
                log.write_text(done.stdout + done.stderr)
                last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
                raise NativeUnavailable(f"building the bf16 matmul failed ({last[0][:200]}); full log: {log}")
        built = next((work / "build").glob("_bf16*.so"), None)
        if built is None:
            raise NativeUnavailable("building the bf16 matmul produced no module")
        staged = work / "out"
        staged.mkdir()
        shutil.copy(built, staged / built.name)
        os.replace(staged, target)  # another process may have won the race: both are equal
    return target


def load_bf16():
    """The `_bf16` extension module, built if needed (see the module docstring)."""
    if "bf16" in _loaded:
        return _loaded["bf16"]
    if sys.platform != "linux":
        raise NativeUnavailable("the C++ bf16 matmul is for Linux CPUs; on a Mac, MLX's own bf16 matmul is fast")
    import mlx.core as mx

    target = build_dir()
    if not target.exists():
        try:
            _build(target)
        except OSError as err:
            if not target.exists():
                raise NativeUnavailable(f"building the bf16 matmul failed: {err}") from None
    path = next(target.glob("_bf16*.so"))
    loader = importlib.machinery.ExtensionFileLoader("_bf16", str(path))
    spec = importlib.util.spec_from_file_location("_bf16", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    try:  # an mx.array must cross the boundary: a nanobind ABI unlike MLX's fails here
        module.bf16_matmul(mx.ones((1, 1), mx.bfloat16), mx.ones((1, 1), mx.bfloat16), stream=mx.cpu)
    except TypeError:
        raise NativeUnavailable(
            f"the bf16 matmul built for {_versions()} cannot exchange arrays with this MLX "
            "(different nanobind ABI): install the nanobind version MLX was built with") from None
    _loaded["bf16"] = module
    return module
