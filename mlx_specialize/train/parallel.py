"""Use every CPU core: split a batch's rows across parallel MLX CPU streams.

MLX runs each CPU stream on its own thread, but most CPU element-wise kernels (exp,
SiLU, the vocabulary softmax, attention's softmax) are single-threaded, and on x86 they
are scalar; they dominate a small LM's training step. Running the forward pass of each
slice of the batch on its own stream runs those kernels on all cores at once; the
backward pass follows, since MLX gives each gradient op the stream of its forward op.
The loss is the same masked mean over all tokens as with one stream (only the order of
floating-point sums differs). BLAS is limited to one thread per stream meanwhile (see
`backend.blas_threads`).

Measured here (2 cores, `benchmarks/train_throughput.py`): see BENCHMARKS.md. On a GPU
one stream is used: the device is parallel already.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..accel import cross_entropy, on_stream, row_slices
from ..data.tokenizer import BOS_ID
from ..data.tokens import target_mask

def masked_nll(model, x: mx.array, y: mx.array, mask: mx.array, streams: list) -> tuple[mx.array, mx.array]:
    """(sum of -log p(y|x) over mask, sum of mask), computed slice by slice on `streams`.

    x, y, mask: [B, L]. With streams == [None] this is one plain forward pass."""
    total = count = None
    for rows, stream in zip(row_slices(x.shape[0], len(streams)), streams):
        with on_stream(stream):
            nll = (cross_entropy(model(x[rows]), y[rows]) * mask[rows]).sum()
            part_count = mask[rows].sum()
        total = nll if total is None else total + nll
        count = part_count if count is None else count + part_count
    return total, count


def training_loss(model, x: mx.array, y: mx.array, streams: list, bos_id: int | None = BOS_ID,
                  count: mx.array | None = None) -> mx.array:
    """Mean next-token loss over the batch, `bos_id` targets masked (document starts).

    `count` replaces the batch's own number of targets as the divisor: a data-parallel
    rank holds part of a global batch and divides by the global count (see distributed.py)."""
    mask = target_mask(y, bos_id).astype(mx.float32)
    total, local_count = masked_nll(model, x, y, mask, streams)
    return total / mx.maximum(local_count if count is None else count, 1.0)


def _balance(sizes: list[int], parts: int) -> list[int]:
    """A part index for each size, largest first to the least loaded part."""
    load, where = [0] * parts, [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        where[i] = min(range(parts), key=load.__getitem__)
        load[where[i]] += sizes[i]
    return where


def clip_and_update(optimizer, model, grads: dict, max_norm: float, streams: list) -> mx.array:
    """`optim.clip_grad_norm(grads, max_norm)` then `optimizer.update(model, grads)`, the
    work of each parameter (its squared norm, scaling, optimizer update) on one of
    `streams`, balanced by size; returns the gradient norm before clipping. The same
    values as the plain two calls (the norm is summed in the same order).

    On CPU each gradient is made row-major first: MLX's gradient of `x @ W.T` is a
    transposed view, and a loop reading one is strided, which MLX's CPU compiler does
    not vectorize (clipping and AdamW over the 9M model, one stream: 1.28-1.30x
    `clip_grad_norm` + `update` on the views, benchmarks/fastmath_ops.py)."""
    leaves = tree_flatten(grads)
    where = _balance([g.size for _, g in leaves], len(streams))
    row_major = mx.default_device().type == mx.cpu
    prepared, squared = [], 0.0
    for (path, g), part in zip(leaves, where):
        with on_stream(streams[part]):
            g = mx.contiguous(g) if row_major else g
            g32 = g.astype(mx.float32) if g.dtype == mx.float16 else g  # no float16 overflow
            squared = squared + g32.square().sum()
        prepared.append((path, g))
    grad_norm = mx.sqrt(squared)
    normalizer = mx.minimum(max_norm / (grad_norm + 1e-6), 1.0)
    clipped, stream_of = [], {}
    for (path, g), part in zip(prepared, where):
        with on_stream(streams[part]):
            g = (g * normalizer).astype(g.dtype) if mx.issubdtype(g.dtype, mx.floating) else g * normalizer
        stream_of[id(g)] = streams[part]
        clipped.append((path, g))
    apply_single = optimizer.apply_single

    def on_its_stream(gradient, parameter, state):
        with on_stream(stream_of.get(id(gradient))):
            return apply_single(gradient, parameter, state)

    optimizer.apply_single = on_its_stream  # an instance attribute over the method
    try:
        optimizer.update(model, tree_unflatten(clipped))
    finally:
        del optimizer.apply_single
    return grad_norm
