"""bf16 mixed precision for training: the linear layers' matrix products in bfloat16.

With `TrainConfig(precision="bf16")` (`--precision bf16`) the trainer traces its step
inside `scope("bf16")`, and the dense model's linear layers (attention and MLP
projections, the output projection) compute `x @ W.T` with both operands rounded to
bfloat16 and the products summed in float32; the result stays float32. Everything else
(weights, optimizer state, norms, softmax, attention's inner products, the loss) stays
float32: what `torch.autocast("cpu", torch.bfloat16)` does for linear layers, except that
their outputs are not rounded to bf16 (MLX's bf16 element-wise math on x86 is no faster).
Evaluation and generation are unaffected; checkpoints hold float32 weights.

Where the products run:
- x86 Linux CPU: MLX's own bf16 matmul is a scalar loop there, so a C++
  extension (native/bf16_matmul.cpp, built at first use) calls Intel MKL's
  `cblas_gemm_bf16bf16f32`, which uses AMX or AVX512-BF16 (faster than MLX's float32
  matmul on a Xeon with AMX: BENCHMARKS.md). It needs MKL loaded (`pip install
  'mlx-specialize[bf16]'`) and a CPU with AVX512-BF16 or AMX; `check` refuses otherwise,
  with one line saying what is missing. `MLXSPEC_BF16_EMULATE=1` lets the extension
  multiply bf16-rounded inputs with float32 BLAS instead (the same values at float32
  speed: for tests on machines without MKL).
- a GPU (Metal, CUDA): MLX's own bf16 matmul, `(x.astype(bf16) @ W.T.astype(bf16))`.
"""

from __future__ import annotations

import os
import sys

import mlx.core as mx

from ..errors import SpecializeError
from .mode import PRECISIONS, current



def _emulate() -> bool:
    return os.environ.get("MLXSPEC_BF16_EMULATE", "").lower() in ("1", "on", "true", "yes")


def _cpu_has_bf16() -> bool:
    from .backend import _cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def _native():
    """The C++ extension, on a CPU device of Linux; None elsewhere."""
    if mx.default_device().type != mx.cpu or sys.platform != "linux":
        return None
    from .native import load_bf16

    return load_bf16()


def _has_bf16_gemm() -> bool:
    """Whether the BLAS that backend.py loaded is MKL, with its bf16 GEMM."""
    from .backend import BLAS

    return BLAS.handle is not None and hasattr(BLAS.handle, "cblas_gemm_bf16bf16f32")


def check(precision: str) -> None:
    """Raise `SpecializeError` (one line: what is missing, how to get it) unless training
    in `precision` works here; builds the C++ extension on first use for bf16 on CPU
    (after the cheap checks, so that a refusal comes at once)."""
    if precision not in PRECISIONS:
        raise SpecializeError(f"unknown precision '{precision}' ({' or '.join(PRECISIONS)})")
    if precision == "float32" or mx.default_device().type != mx.cpu:
        return
    if sys.platform != "linux":
        raise SpecializeError("bf16 training on a CPU is supported on Linux x86 with Intel MKL; train in float32")
    if not _emulate():
        if not _has_bf16_gemm():
            raise SpecializeError(
                "bf16 training on CPU needs Intel MKL's bf16 matrix product, and the BLAS loaded is not MKL: "
                "pip install 'mlx-specialize[bf16]' (or train in float32)")
        if not _cpu_has_bf16():
            raise SpecializeError("this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 training would be "
                                  "slower than float32; train in float32")
    _native().set_emulation(_emulate())


def status() -> str:
    """One line for `mlxspec doctor`: whether `--precision bf16` would work here (without
    building the extension)."""
    if mx.default_device().type != mx.cpu:
        return "available (MLX's bf16 matmul on the GPU)"
    if sys.platform != "linux":
        return "off (CPU: train in float32)"
    if not _has_bf16_gemm():
        return "off (needs Intel MKL: pip install 'mlx-specialize[bf16]')"
    if not _cpu_has_bf16():
        return "off (this CPU has no AVX512-BF16 or AMX)"
    return "available (MKL bf16 GEMM; the C++ matmul is built at first use)"


def active() -> bool:
    """True inside an `accel.scope("bf16")`."""
    mode = current()
    return mode is not None and mode.bf16


def matmul_t(x: mx.array, weight: mx.array) -> mx.array:
    """x [..., K] @ weight [N, K].T -> [..., N] float32, operands rounded to bfloat16."""
    native = _native()
    if native is None:
        return (x.astype(mx.bfloat16) @ weight.astype(mx.bfloat16).T).astype(mx.float32)
    x16, w16 = native.to_bf16(x), native.to_bf16(weight)  # each rounded once, read by 2 products
    product = native.bf16_matmul(x16.reshape(-1, x.shape[-1]), w16.T)
    return product.reshape(*x.shape[:-1], weight.shape[0])
