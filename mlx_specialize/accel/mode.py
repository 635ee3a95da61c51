"""The one switch the accelerated layers read: is the code being traced a compiled
training or evaluation step, and in which precision.

The fast element-wise ops (fastmath.py) and the C++ kernels are faster than MLX's only
inside `mx.compile` (outside it, fastmath's ~20 small ops each run as a kernel of their
own), and bf16 products belong to training only (evaluation and generation compute in
float32). So a layer that `prepare` swapped in asks `current()` what to do: the trainer
and the evaluator open a `scope` inside the function they give to `mx.compile`, so it is
open while that function is traced; everywhere else (generation, a user calling the
model) the layers behave exactly as MLX's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

PRECISIONS = ("float32", "bf16")


@dataclass(frozen=True)
class Mode:
    """fast: use the fast element-wise ops and C++ kernels (float32 inputs only);
    bf16: compute linear layers' products in bfloat16, summed in float32."""

    fast: bool
    bf16: bool


_open: list[Mode] = []  # the modes of the open scopes, innermost last


@contextlib.contextmanager
def scope(precision: str = "float32", fast: bool | None = None):
    """Run (or trace) model code in this block with the platform's fast paths:
    `fast` (default: `fastmath.supported()`, i.e. an x86 CPU with a compiler for MLX's
    CPU kernels) and linear products in `precision`. The innermost scope decides.
    Yields the `Mode` in effect."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}' ({' or '.join(PRECISIONS)})")
    if fast is None:
        from .fastmath import supported

        fast = supported()
    mode = Mode(fast=bool(fast), bf16=precision == "bf16")
    _open.append(mode)
    try:
        yield mode
    finally:
        _open.pop()


def current() -> Mode | None:
    """The innermost open scope's mode, or None outside every scope."""
    return _open[-1] if _open else None
