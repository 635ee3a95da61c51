"""Compute backend: optimized BLAS on Linux, device facts, dtype policy.

The `mlx-cpu` wheel links a slow reference BLAS. MLX calls `cblas_sgemm` (and LAPACK)
through the dynamic linker, so loading an optimized BLAS with RTLD_GLOBAL *before*
`mlx.core` is imported makes MLX use it (how much faster: BENCHMARKS.md, "Which BLAS"). This module must therefore be imported
before `mlx.core`; `mlx_specialize/__init__.py` imports it first.

Search order (first that loads wins), all skipped when MLXSPEC_BLAS=off:
  1. MLXSPEC_BLAS=/path/to/libblas.so   an explicit library (plain or `scipy_`-prefixed
     symbols);
  2. Intel MKL from PyPI (`pip install 'mlx-specialize[mkl]'`), when installed: opt-in;
  3. PyPI `scipy-openblas32`, a declared dependency on Linux: the OpenBLAS wheel NumPy and
     SciPy build against, built for every x86-64 CPU (DYNAMIC_ARCH), needing nothing
     outside the virtual environment but glibc. Its symbols carry a `scipy_` prefix, so
     a small forwarding library made in memory (blas_forward.py) gives MLX the plain names;
  4. the system OpenBLAS (Debian/Ubuntu `libopenblas0`).
A failure to find any never breaks import: `mlxspec doctor` then says how to get one.

Side effect: a BLAS loaded with RTLD_GLOBAL also takes over the BLAS calls of other
libraries in the same process that use the same names: PyTorch trained several times
slower with the system OpenBLAS loaded so. Run PyTorch work in a process with
MLXSPEC_BLAS=off.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import platform
import sys
from dataclasses import dataclass

ENV_VAR = "MLXSPEC_BLAS"


@dataclass
class BlasInfo:
    """What `load_optimized_blas` did: `name` of the library loaded (or None), its
    `path`, and `note`, a one-line reason when nothing was loaded."""

    name: str | None = None
    path: str | None = None
    note: str = ""
    handle: object = None  # the ctypes.CDLL, for thread control


BLAS = BlasInfo(note="not attempted")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


MLX_HOLDS = "core*.so"  # what tells the installed `mlx` from another folder of that name


def _package_dir(name: str, holding: str = "*") -> str | None:
    """The folder of an installed package, found without importing it: the first of its
    locations holding `holding` (a glob). `mlx` is a namespace package, so any folder named
    `mlx` on the path is one of its locations: MLX's own kernel cache, /tmp/mlx, is the
    first for a command run in /tmp."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return next((folder for folder in spec.submodule_search_locations
                 if glob.glob(os.path.join(folder, holding))), None)


def _candidates() -> list[tuple[str, str]]:
    """(name, path) pairs to try, best first."""
    found: list[tuple[str, str]] = []
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
        mkl = sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
        if mkl:
            found.append(("Intel MKL (PyPI)", mkl[-1]))
            break
    package = _package_dir("scipy_openblas32")
    if package is not None:
        libs = sorted(glob.glob(os.path.join(package, "lib", "libscipy_openblas*.so*")))
        if libs:
            found.append(("OpenBLAS (PyPI scipy-openblas32)", libs[0]))
    arch = platform.machine()
    for pattern in (
        f"/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
        f"/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",
        "/usr/lib64/libopenblas.so.0",
        "/usr/lib/libopenblas.so.0",
    ):
        if os.path.exists(pattern):
            found.append(("system OpenBLAS", pattern))
            break
    return found


def _mlx_library() -> str | None:
    """MLX's shared library (whose undefined BLAS symbols a forwarder must provide)."""
    package = _package_dir("mlx", MLX_HOLDS)
    path = os.path.join(package, "lib", "libmlx.so") if package else None
    return path if path and os.path.exists(path) else None


SCIPY_PREFIX = "scipy_"
# Not called by MLX, forwarded so that `blas_threads` can set the thread count.
THREAD_FUNCTIONS = ("openblas_get_num_threads", "openblas_set_num_threads")


def _load(path: str):
    """dlopen `path` with RTLD_GLOBAL; if its symbols carry the `scipy_` prefix, also a
    forwarding library giving them their plain names (blas_forward.py). Returns the
    handle through which the plain names are reached."""
    handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    if hasattr(handle, "cblas_sgemm") or not hasattr(handle, SCIPY_PREFIX + "cblas_sgemm"):
        return handle
    from . import blas_forward

    if not blas_forward.supported():
        raise OSError(f"its symbols are prefixed and no forwarder is made for {platform.machine()}")
    client = _mlx_library()
    try:
        if client is not None:
            pairs = blas_forward.forwarding_pairs(path, client, SCIPY_PREFIX, THREAD_FUNCTIONS)
        else:  # MLX's library not found: forward every prefixed function
            provided = blas_forward.read_dynamic_symbols(path).defined_functions
            pairs = sorted((n[len(SCIPY_PREFIX):], n) for n in provided if n.startswith(SCIPY_PREFIX))
        image = blas_forward.build_forwarder(pairs, os.path.abspath(path), "libmlxspec_blas_forward.so")
        return blas_forward.load_forwarder(image, "mlxspec_blas_forward")
    except blas_forward.ForwardError as err:
        raise OSError(str(err)) from None


def cpu_description() -> str:
    """The CPU in words, with the vector extensions that decide kernel speed here:
    e.g. 'AMD EPYC, 2 cores, AVX2' or 'Intel Xeon ..., 2 cores, AVX-512, AMX'."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    flags = _cpu_flags()
    vectors = [name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx512_bf16", "AVX512-BF16"),
                                       ("amx_bf16", "AMX")) if flag in flags]
    if "AVX-512" in vectors:
        vectors.remove("AVX2")
    return ", ".join([model, f"{os.cpu_count()} cores", *vectors])


def is_x86() -> bool:
    """An x86-64 CPU: where MLX's CPU math is scalar and this project's CPU speed-ups apply."""
    return platform.machine().lower() in ("x86_64", "amd64")


EVAL_WIDTH = "1000000"  # no limit in practice: breadth-first


def setup() -> None:
    """What must happen before anything imports `mlx.core`, and the one thing importing
    `mlx_specialize` does: on x86-64 Linux flush subnormal floats to zero (subnormals.py:
    before the threads of MLX and the BLAS start, which take it from this one), load an
    optimized BLAS (Linux), and widen MLX's evaluation order for parallel CPU streams.
    Nothing on a Mac."""
    from .subnormals import flush

    flush()
    load_optimized_blas()
    widen_eval_order()


def widen_eval_order() -> str | None:
    """On x86-64 Linux CPUs, have MLX order a graph's evaluation breadth-first without
    its width limit of 20 (`MLX_BFS_MAX_WIDTH`, read once, at MLX's first eval; a value
    already set wins). Returns the width set, or None.

    Why: MLX submits a graph's operations to their streams in that order, at most ~50
    ahead of the ones running. When the batch is split over two CPU streams
    (train/parallel.py), the depth-first runs the limit causes gave one stream long
    stretches of its own operations and left the other idle; breadth-first, the two
    streams' operations alternate, for a little more peak memory; widths in between fall
    off cliffs (measured: docs/mlx-cpu-elementwise.md). Not done for MLX's CUDA build
    (unmeasured)."""
    if sys.platform != "linux" or not is_x86():
        return None
    if "MLX_BFS_MAX_WIDTH" in os.environ:
        return None
    from importlib.metadata import PackageNotFoundError, distribution

    for cuda_build in ("mlx-cuda-12", "mlx-cuda-13", "mlx-cuda"):
        try:
            distribution(cuda_build)
            return None
        except PackageNotFoundError:
            pass
    os.environ["MLX_BFS_MAX_WIDTH"] = EVAL_WIDTH
    return EVAL_WIDTH


def load_optimized_blas() -> BlasInfo:
    """Load the best optimized BLAS for this machine with RTLD_GLOBAL.

    Has an effect only on Linux and only before `mlx.core` is first imported.
    Returns the module-level `BLAS` record, also updated in place."""
    setting = os.environ.get(ENV_VAR, "").strip()
    if sys.platform != "linux":
        BLAS.note = "not needed (MLX uses Accelerate/Metal on macOS)"
        return BLAS
    if setting.lower() in ("off", "0", "none", "false"):
        BLAS.note = f"disabled by {ENV_VAR}={setting}"
        return BLAS
    if "mlx.core" in sys.modules:
        BLAS.note = "mlx.core was imported before mlx_specialize: import mlx_specialize first"
        return BLAS
    candidates = [("MLXSPEC_BLAS", setting)] if setting else _candidates()
    errors = []
    for name, path in candidates:
        try:
            handle = _load(path)
        except OSError as err:
            errors.append(f"{name}: {err}")
            continue
        BLAS.name, BLAS.path, BLAS.note, BLAS.handle = name, path, "", handle
        return BLAS
    BLAS.note = "; ".join(errors) or "no optimized BLAS found (the reference BLAS is far slower: `mlxspec doctor` measures it)"
    return BLAS


def _thread_functions():
    """(get, set) thread-count functions of the loaded BLAS, or (None, None)."""
    lib = BLAS.handle
    for get, put in (("openblas_get_num_threads", "openblas_set_num_threads"),
                     ("MKL_Get_Max_Threads", "MKL_Set_Num_Threads")):
        if lib is not None and hasattr(lib, get) and hasattr(lib, put):
            return getattr(lib, get), getattr(lib, put)
    return None, None


@contextlib.contextmanager
def blas_threads(n: int):
    """Run a block with the loaded BLAS limited to `n` threads, then restore.

    Used when MLX itself runs several CPU streams in parallel (see
    `train/parallel.py`): one BLAS thread per stream avoids oversubscribing cores."""
    get, put = _thread_functions()
    if get is None:
        yield
        return
    before = get()
    put(n)
    try:
        yield
    finally:
        put(before)


def keep_freed_buffers() -> int | None:
    """On CPU, let MLX keep freed buffers for reuse up to its memory limit (what it
    does on Metal by default); returns the new cache limit in bytes, or None if unchanged.

    MLX's CPU allocator caches only 32 MB of freed buffers. A training step allocates
    and frees arrays larger than that ([tokens, vocab] logits: 64 MiB on `small`), so
    each comes fresh from the OS and its pages are faulted in and zeroed on first
    write: a simple element-wise pass over one took 2.0 ns per element instead of 0.63
    with the cache (BENCHMARKS.md). `MLXSPEC_BUFFER_CACHE=0` keeps MLX's default."""
    import mlx.core as mx

    if os.environ.get("MLXSPEC_BUFFER_CACHE", "").lower() in ("0", "off", "false", "no"):
        return None
    if mx.default_device().type != mx.cpu:
        return None
    limit = mx.get_memory_limit()
    previous = mx.set_cache_limit(limit)
    if previous >= limit:  # never lower a limit somebody raised
        mx.set_cache_limit(previous)
        return None
    return limit


def blas_advice() -> str:
    """How to get a fast BLAS, for `doctor` and warnings."""
    if is_x86():
        return ("pip install --force-reinstall scipy-openblas32 (a dependency that should have come with "
                "mlx-specialize), or pip install 'mlx-specialize[mkl]', or point MLXSPEC_BLAS at a libblas.so")
    return "apt-get install libopenblas0 (Debian/Ubuntu), or point MLXSPEC_BLAS at a libblas.so"


def device_name() -> str:
    """'Metal GPU', 'CUDA GPU' or 'CPU': where MLX runs arrays by default."""
    import mlx.core as mx

    if mx.default_device().type == mx.gpu:
        if sys.platform == "darwin":
            return "Metal GPU"
        return "CUDA GPU"
    return "CPU"


def reference_blas_path() -> str | None:
    """The reference BLAS inside the `mlx-cpu` wheel (what MLX uses without an optimized
    one), or None (another platform or build)."""
    package = _package_dir("mlx", MLX_HOLDS)
    if package is None:
        return None
    libs = sorted(glob.glob(os.path.join(os.path.dirname(package), "mlx_cpu.libs", "libblas*.so*")))
    return libs[0] if libs else None


def reference_matmul_gflops(n: int = 512, repeats: int = 3) -> float | None:
    """Measured float32 n x n x n `cblas_sgemm` of the wheel's reference BLAS, called
    directly (not through MLX, which uses the optimized one once loaded); None where
    that library is not there. What the optimized BLAS is compared with in `doctor`."""
    import time

    import numpy as np

    path = reference_blas_path()
    if path is None:
        return None
    try:
        sgemm = ctypes.CDLL(path).cblas_sgemm  # its own symbol, whatever is loaded globally
    except (OSError, AttributeError):
        return None
    f32p, i = ctypes.POINTER(ctypes.c_float), ctypes.c_int
    sgemm.argtypes = [i, i, i, i, i, i, ctypes.c_float, f32p, i, f32p, i, ctypes.c_float, f32p, i]
    sgemm.restype = None
    a, b = np.random.default_rng(0).standard_normal((2, n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    ptr = lambda x: x.ctypes.data_as(f32p)  # noqa: E731
    row_major, no_trans = 101, 111
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sgemm(row_major, no_trans, no_trans, n, n, n, 1.0, ptr(a), n, ptr(b), n, 0.0, ptr(c), n)
        best = min(best, time.perf_counter() - t0)
    if not np.allclose(c, a @ b, rtol=1e-3, atol=1e-2):
        return None  # not a working sgemm: no figure rather than a wrong one
    return 2 * n**3 / best / 1e9


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Measured float32 n x n x n matmul throughput in GFLOP/s (best of `repeats`)."""
    import time

    import mlx.core as mx

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a @ b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9
