"""CPU streams: how many to run a batch's slices on, and BLAS's threads meanwhile.

MLX runs each CPU stream on its own thread, but most CPU element-wise kernels are
single-threaded; slicing a batch across streams runs them on all cores at once (see
train/parallel.py for the training step, data/minilm.py for the encoder). BLAS is held to
one thread per stream meanwhile (an oversubscribed OpenBLAS spins). On a GPU: one stream.
"""

from __future__ import annotations

import contextlib
import os

import mlx.core as mx

from .backend import blas_threads

MAX_STREAMS = 4


def auto_streams(batch_rows: int, processes: int = 1) -> int:
    """Streams to use by default: one per core on CPU (at most 4 and at most the rows
    of a batch; the cores shared by `processes` training processes on this host), one
    on a GPU. `MLXSPEC_STREAMS=N` overrides.

    Narrow models too: `tiny` trains faster on two streams than on one (BENCHMARKS.md)."""
    if os.environ.get("MLXSPEC_STREAMS"):
        return max(1, min(int(os.environ["MLXSPEC_STREAMS"]), batch_rows))
    if mx.default_device().type == mx.gpu:
        return 1
    return max(1, min((os.cpu_count() or 1) // max(processes, 1), MAX_STREAMS, batch_rows))


def make_streams(n: int) -> list:
    """`n` CPU streams, or [None] (the default stream) for n == 1."""
    return [None] if n <= 1 else [mx.new_stream(mx.cpu) for _ in range(n)]


def row_slices(rows: int, parts: int) -> list[slice]:
    """`rows` split into at most `parts` contiguous, non-empty slices of near-equal size,
    one per stream (fewer when there are fewer rows than streams)."""
    bounds = [rows * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def blas_per_stream(n_streams: int, processes: int = 1):
    """Context for running `n_streams` parallel streams in each of `processes` processes
    on this host: BLAS on one thread per stream, or its share of the cores for one
    stream (an oversubscribed OpenBLAS spins); nothing for one stream in one process."""
    if n_streams > 1:
        return blas_threads(1)
    if processes > 1:
        return blas_threads(max(1, (os.cpu_count() or 1) // processes))
    return contextlib.nullcontext()


def on_stream(stream):
    """`mx.stream(stream)`, or nothing for None (the default stream)."""
    return mx.stream(stream) if stream is not None else contextlib.nullcontext()
