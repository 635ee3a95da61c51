"""Next-token cross-entropy that exponentiates the logits once.

`mlx.nn.losses.cross_entropy` computes a log-sum-exp in the forward pass and the
softmax again in the backward pass: two exp passes over a [tokens, vocab] matrix, which
on CPU is the most expensive part of a small LM's step (exp runs scalar and
single-threaded on x86 MLX). The fused version here computes exp once, keeps the softmax
as a second output, and its backward is `(softmax - onehot) * grad` (the time it saves:
BENCHMARKS.md). The values are those of the plain loss, to float32 rounding
(tests/test_losses.py).

Inside a `fastmath.scope()` (the compiled training step on x86) the exp is fastmath's
vectorizable one, and the row sums are a matrix-vector product in both cases; where the
C++ kernels are built (`fastmath.kernels()`), their `cross_entropy` replaces all of it:
two passes per row forward, one backward (3.4-3.5x this fused loss, BENCHMARKS.md).

On by default on CPU; `MLXSPEC_FUSED_CE=0` selects MLX's own loss (the default on GPU,
where the fused version has not been measured).
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn

from . import fastmath


@fastmath.per_stream
def _fused(stream):
    """logits [N, V], targets [N] -> (loss [N], exps [N, V], 1 / sum of exps [N, 1]).

    The softmax the backward pass needs is exps / sum; it is never divided out here.
    Built per stream (see `fastmath.per_stream`): the backward runs where the forward did."""

    @mx.custom_function
    def fused(logits: mx.array, targets: mx.array):
        if fastmath.active(logits):
            peak = fastmath.row_max(logits)
            exps = fastmath.exp_shifted(logits, peak)
        else:
            peak = mx.max(logits, axis=-1, keepdims=True)
            exps = mx.exp(logits - peak)
        # the row sums as a matrix-vector product: BLAS reads exps faster than a sum reduction
        total = exps @ mx.ones((exps.shape[-1], 1), exps.dtype)
        picked = mx.take_along_axis(logits, targets[:, None], axis=-1) - peak
        return (mx.log(total) - picked)[:, 0], exps, 1.0 / total

    @fused.vjp
    def fused_vjp(primals, cotangents, outputs):
        """d loss / d logits = softmax - onehot(targets), times the loss's cotangent: one
        pass over [N, V] for the first term, a scatter of N values for the second."""
        with mx.stream(stream):
            targets, g = primals[1], cotangents[0][:, None]
            exps, inverse_total = outputs[1], outputs[2]
            index, scale = targets[:, None], g * inverse_total
            # the target's entry from exps, not from grad: grad then has one reader, the
            # scatter, which MLX then does in place instead of copying [N, V] first
            picked = mx.take_along_axis(exps, index, axis=-1) * scale - g
            grad = mx.put_along_axis(exps * scale, index, picked, axis=-1)
            return grad, mx.zeros_like(targets)

    return fused


def use_fused() -> bool:
    setting = os.environ.get("MLXSPEC_FUSED_CE")
    if setting is not None:
        return setting.lower() not in ("0", "off", "false", "no")
    return mx.default_device().type == mx.cpu


def cross_entropy(logits: mx.array, targets: mx.array, fused: bool | None = None) -> mx.array:
    """Per-position loss: logits [..., V], targets [...] -> [...] (nats)."""
    if not (use_fused() if fused is None else fused):
        return nn.losses.cross_entropy(logits, targets)
    vocab = logits.shape[-1]
    kernels = fastmath.native(logits)
    if kernels is not None:
        loss = kernels.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
    else:
        loss = _fused(logits.reshape(-1, vocab), targets.reshape(-1))[0]
    return loss.reshape(targets.shape)
