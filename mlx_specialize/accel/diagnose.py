"""Which slow paths this machine would train on, said before the work starts.

`mlxspec specialize`, `pretrain` and `finetune` print each line of `slow_paths()` as a
warning at their start; `mlxspec doctor` reports the same facts in its table. Each line
says what is slow, by how much (BENCHMARKS.md: "Which BLAS", the `--ablate` rounds and
"What the C++ kernels and the evaluation order are worth"), and the command that fixes it. Nothing is said on a GPU or a Mac, where
neither the BLAS loader nor the C++ kernels are used.
"""

from __future__ import annotations

import sys

from .backend import BLAS, blas_advice, is_x86


def slow_paths() -> list[str]:
    """One line per slow path in effect for training on this machine (empty: none)."""
    import mlx.core as mx

    if sys.platform != "linux" or mx.default_device().type != mx.cpu:
        return []
    lines = []
    if BLAS.name is None:
        lines.append(
            f"MLX is using the reference BLAS of its wheel ({BLAS.note}): matrix products run about 37x "
            f"slower and training about 13x slower than with the OpenBLAS it should load; {blas_advice()}")
    if is_x86():
        from . import fastmath

        if not fastmath.supported():
            lines.append(f"the fast CPU math is {fastmath.status()}: training runs 1.2-2x slower")
        elif fastmath.kernels() is None:
            lines.append(f"the C++ training kernels are {fastmath.kernels_status()}: training runs about 1.2x slower")
    return lines


def warn_slow_paths() -> None:
    """Print `slow_paths()` as warning lines (stderr)."""
    from .. import ui

    for line in slow_paths():
        ui.warn(line)


def platform_report() -> dict:
    """What `mlxspec doctor` says of the platform: the CPU and device, the BLAS in use and
    its measured float32 matmul speed (against the wheel's reference BLAS on Linux), and
    whether each speed-up is on here, with why, and the slow paths in effect."""
    import platform

    import mlx.core as mx

    from . import bf16, fastmath, subnormals
    from .backend import cpu_description, device_name, matmul_gflops, reference_matmul_gflops

    gflops = matmul_gflops()
    reference = reference_matmul_gflops() if sys.platform == "linux" else None
    return {
        "platform": f"{platform.system()} {platform.machine()} ({platform.platform()})",
        "cpu": cpu_description(),
        "device": device_name(),
        "mlx": mx.__version__,
        "blas": BLAS.name or "none",
        "blas_path": BLAS.path,
        "blas_note": BLAS.note,
        "matmul_gflops_f32": round(gflops, 1),
        "reference_blas_gflops_f32": None if reference is None else round(reference, 1),
        "blas_speedup": None if not reference else round(gflops / reference, 1),
        "dtype": "float32",  # weights and optimizer state, everywhere; --precision bf16 rounds products only
        "cpu_fast_math": fastmath.status(),
        "cpu_kernels": fastmath.kernels_status(),
        "bf16_training": bf16.status(),
        "subnormals": subnormals.status(),
        "slow_paths": slow_paths(),
    }
