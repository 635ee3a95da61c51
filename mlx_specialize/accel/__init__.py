"""Everything that exists only to make MLX fast on a platform, behind one boundary.

On Apple silicon and GPUs MLX is fast as it is, and this package does nothing. On x86
Linux CPUs it is what makes training practical (BENCHMARKS.md): an optimized BLAS,
a wider evaluation order, parallel CPU streams, element-wise math MLX's CPU compiler
vectorizes, C++ kernels, bf16 products, a fused cross-entropy. The rest of the package
uses it through these names only:

    setup()                    before mlx.core is imported: subnormals flushed to zero,
                               the BLAS, the evaluation order. `mlx_specialize/__init__.py`
                               calls it, once.
    prepare(model, precision)  swap a model's layers for accelerated ones, in place
                               (the way `nn.quantize` swaps layers); unchanged where
                               nothing is faster
    scope(precision)           open while a compiled training / evaluation step is
                               traced: where the swapped layers use their fast paths
    cross_entropy              the per-token loss, fused where that is faster
    nearest, cluster_sums      k-means' assignment (from x c^T and ||c||^2) and update, one pass each
    check_precision            refuse, in one line, a precision this machine cannot train in
    auto_streams, make_streams, on_stream, blas_per_stream, row_slices
                               the CPU streams a batch is split over
    keep_freed_buffers, blas_threads, device_name, BLAS, slow_paths, warn_slow_paths

What is in the files: backend.py (BLAS, device facts), blas_forward.py, streams.py,
mode.py (the scope), subnormals.py (FTZ / DAZ), modules.py (the accelerated layers), ops.py, fastmath.py, bf16.py, losses.py,
native/ (C++ kernels), diagnose.py (slow paths said before work starts).

Nothing here imports `mlx.core` before `setup()` has run: the names that need it are
loaded at their first use (PEP 562 `__getattr__`).
"""

from __future__ import annotations

import importlib

from .backend import BLAS, blas_threads, device_name, is_x86, keep_freed_buffers, load_optimized_blas, setup
from .mode import PRECISIONS, Mode, scope

_LAZY = {  # name -> (module, attribute)
    "prepare": ("modules", "prepare"),
    "unprepare": ("modules", "unprepare"),
    "cross_entropy": ("losses", "cross_entropy"),
    "nearest": ("ops", "nearest"),
    "cluster_sums": ("ops", "cluster_sums"),
    "check_precision": ("bf16", "check"),
    "auto_streams": ("streams", "auto_streams"),
    "make_streams": ("streams", "make_streams"),
    "on_stream": ("streams", "on_stream"),
    "row_slices": ("streams", "row_slices"),
    "blas_per_stream": ("streams", "blas_per_stream"),
    "slow_paths": ("diagnose", "slow_paths"),
    "warn_slow_paths": ("diagnose", "warn_slow_paths"),
}

__all__ = ["BLAS", "Mode", "PRECISIONS", "blas_threads", "device_name", "is_x86", "keep_freed_buffers",
           "load_optimized_blas", "scope", "setup", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value
    return value
