"""Plain MLX layers for the operations a platform may compute its own way.

The models (models/) are built from `mlx.nn`'s layers (`Linear`, `RMSNorm`,
`Embedding`) and these three, each a parameter-free module so that `accel.prepare`
can swap it for a faster one from outside, as `nn.quantize` swaps `nn.Linear` for
`nn.QuantizedLinear`. Here they are exactly what mlx-lm's llama computes; no
platform code lives in this file or in models/.

Shapes: B batch, H query heads, Hkv key/value heads, L queries, S keys, Dh head dim.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class SwiGLU(nn.Module):
    """The gated MLP's activation: silu(gate) * up, gate and up [..., F] -> [..., F]."""

    def __call__(self, gate: mx.array, up: mx.array) -> mx.array:
        return nn.silu(gate) * up


class ScaledDotProductAttention(nn.Module):
    """softmax(q k^T scale + mask) v: q [B, H, L, Dh], k and v [B, Hkv, S, Dh] ->
    [B, H, L, Dh] (H a multiple of Hkv: grouped queries). `mask`: None, "causal" or an
    additive / boolean array; `cache`: the layer's KV cache during generation, else
    None (a platform may treat the two cases differently)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def __call__(self, q: mx.array, k: mx.array, v: mx.array, mask=None, cache=None) -> mx.array:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)


class MatmulT(nn.Module):
    """x [..., K] @ weight [N, K].T -> [..., N]: a linear layer whose weight is given at
    call time (the projected network's generated MLP weights)."""

    def __call__(self, x: mx.array, weight: mx.array) -> mx.array:
        return x @ weight.T
