"""Subnormal floats flushed to zero on x86-64 Linux CPUs (FTZ and DAZ), for the process.

Why: an x86 core computes with a subnormal float (|x| < 1.2e-38) through a microcode
assist, some hundred times slower than with a normal one. A language model that has
trained a while makes them in its activations and gradients (a sharp softmax's tails,
a SiLU far below 0, their gradients), so MLX's CPU products and element-wise loops slow
down as training goes on: a LoRA step of the study's LLM twin took 5x as long after
1,400 steps as at the first, on the same batch (BENCHMARKS.md). With the MXCSR register's
flush-to-zero and denormals-are-zero bits set, they count as 0, as TensorFlow, XLA and
`torch.set_flush_denormal(True)` have them on CPUs; results change only below 1.2e-38.
Apple silicon and GPUs need nothing here.

MXCSR belongs to a thread, and a thread starts with its creator's: set on the main thread
before `mlx.core` and the BLAS are loaded (`setup()`), it holds in the threads they start
(MLX's stream workers, the BLAS's). Python cannot write MXCSR, so four instructions
(stmxcsr, or, ldmxcsr, ret) run from an executable page. `MLXSPEC_FLUSH_SUBNORMALS=0`
keeps subnormals.
"""

from __future__ import annotations

import os
import sys

from .backend import is_x86

ENV_VAR = "MLXSPEC_FLUSH_SUBNORMALS"
FTZ_DAZ = 0x8040  # MXCSR bits: flush to zero (15), denormals are zero (6)
# stmxcsr [rsp-4]; or dword [rsp-4], FTZ_DAZ; ldmxcsr [rsp-4]; ret (the System V red zone)
_CODE = bytes.fromhex("0fae5c24fc" "814c24fc") + FTZ_DAZ.to_bytes(4, "little") + bytes.fromhex("0fae5424fc" "c3")

STATE = {"flushed": False, "note": ""}  # what `flush()` did, for `mlxspec doctor`


def flush() -> bool:
    """Set FTZ and DAZ on this thread (x86-64 Linux; not where MLXSPEC_FLUSH_SUBNORMALS
    is 0). Returns whether they are set; never raises (a speed-up never stops a command)."""
    setting = os.environ.get(ENV_VAR, "").strip().lower()
    if setting in ("0", "off", "false", "no"):
        STATE.update(flushed=False, note=f"{ENV_VAR}={setting}")
        return False
    if sys.platform != "linux" or not is_x86():
        STATE.update(flushed=False, note="not x86-64 Linux: nothing to do")
        return False
    try:
        import ctypes
        import mmap

        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(_CODE)
        ctypes.CFUNCTYPE(None)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()
        STATE["page"] = page  # kept: the ctypes buffer refers to it
    except Exception as err:  # e.g. a kernel that refuses writable executable pages
        STATE.update(flushed=False, note=f"could not set MXCSR: {type(err).__name__}: {err}")
        return False
    STATE.update(flushed=True, note="")
    return True


def status() -> str:
    """One line for `mlxspec doctor`."""
    if STATE["flushed"]:
        return "flushed to zero (FTZ, DAZ)"
    return f"kept ({STATE['note'] or 'setup() has not run'})"
