"""C++ pieces of mlx-specialize, built at first use for this machine.

The `_native` extension module holds the bf16 matmul (bf16_matmul.cpp, for
`--precision bf16`) and the float32 kernels of the training step (kernels.cpp: the
cross-entropy, SwiGLU, RMSNorm and a fused attention, used by fastmath.py on x86 CPUs).
`load(purpose)` returns it, compiled once with CMake against the installed MLX and
nanobind (dependencies on x86-64 Linux; a C++ compiler is needed too), and cached in
`<cache>/native/<key>/` (`$MLXSPEC_CACHE`, default ~/.cache/mlx-specialize), the key a
hash of the source, the MLX, nanobind and Python versions and the CPU; so an upgrade
rebuilds. Like MLX's own CPU kernels, it is built with -march=native: the cache
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

from ...runtime.cache import default_cache_dir
from ...errors import SpecializeError

SOURCE_DIR = Path(__file__).parent
SOURCES = ("module.cpp", "common.h", "bf16_matmul.cpp", "kernels.cpp", "CMakeLists.txt")
_loaded: dict[str, object] = {}


class NativeUnavailable(SpecializeError):
    """The extension cannot be built or loaded here; the message says why."""


def _versions(purpose: str = "the C++ extension") -> str:
    import mlx.core as mx

    try:
        import nanobind
    except ImportError:
        raise NativeUnavailable(f"{purpose} needs nanobind to build its C++ code: pip install 'nanobind>=3,<4'") from None
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
        try:
            digest.update((SOURCE_DIR / name).read_bytes())
        except OSError as err:  # an incomplete install: fall back, say what is missing
            raise NativeUnavailable(
                f"the C++ sources are incomplete ({SOURCE_DIR / name}: {err.strerror or err}): "
                "reinstall mlx-specialize") from None
    return digest.hexdigest()[:16]


def build_dir() -> Path:
    return default_cache_dir() / "native" / cache_key()


def _cmake(purpose: str) -> str:
    found = shutil.which("cmake")
    if found is None:
        try:  # the PyPI `cmake` package, a dependency on x86-64 Linux
            import cmake

            found = str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
        except (ImportError, AttributeError):
            raise NativeUnavailable(
                f"{purpose} builds C++ code with CMake, which is not installed: "
                "pip install cmake (or apt-get install cmake)") from None
    if shutil.which("g++") is None and shutil.which("c++") is None:
        raise NativeUnavailable(f"{purpose} builds C++ code and needs a C++ compiler: apt-get install g++")
    return found


def _build(target: Path, purpose: str) -> Path:
    """Compile the extension into `target` (atomically: a failed build leaves nothing)."""
    cmake = _cmake(purpose)
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
                raise NativeUnavailable(f"building the C++ extension failed ({last[0][:200]}); full log: {log}")
        built = next((work / "build").glob("_native*.so"), None)
        if built is None:
            raise NativeUnavailable("building the C++ extension produced no module")
        staged = work / "out"
        staged.mkdir()
        shutil.copy(built, staged / built.name)
        os.replace(staged, target)  # another process may have won the race: both are equal
    return target


def load(purpose: str = "mlx-specialize"):
    """The `_native` extension module, built if needed (see the module docstring);
    `purpose` names what needs it in the one-line error raised when it cannot be had."""
    if "native" in _loaded:
        return _loaded["native"]
    if sys.platform != "linux":
        raise NativeUnavailable(f"{purpose}: the C++ extension is for Linux CPUs (MLX's own kernels serve a Mac)")
    import mlx.core as mx

    _versions(purpose)  # nanobind is there, or say so for this purpose
    target = build_dir()
    if not target.exists():
        from ... import ui

        ui.info(f"building the C++ extension for {purpose} on this machine (once, ~20 s)")
        try:
            _build(target, purpose)
        except OSError as err:
            if not target.exists():
                raise NativeUnavailable(f"building the C++ extension for {purpose} failed: {err}") from None
    path = next(target.glob("_native*.so"))
    loader = importlib.machinery.ExtensionFileLoader("_native", str(path))
    spec = importlib.util.spec_from_file_location("_native", path, loader=loader)
    try:
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except ImportError as err:  # e.g. built against another MLX's symbols
        raise NativeUnavailable(f"the C++ extension for {purpose} does not load: {err}") from None
    try:  # an mx.array must cross the boundary: a nanobind ABI unlike MLX's fails here
        module.swiglu(mx.ones((1,)), mx.ones((1,)), stream=mx.cpu)
    except TypeError:
        raise NativeUnavailable(
            f"the C++ extension built for {_versions()} cannot exchange arrays with this MLX "
            "(different nanobind ABI): install the nanobind version MLX was built with") from None
    _loaded["native"] = module
    return module


def load_bf16():
    """The extension, for bf16 training (its `bf16_matmul`, `to_bf16`)."""
    return load("bf16 training")
