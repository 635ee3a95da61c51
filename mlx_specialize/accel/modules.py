"""Accelerated versions of the layers models are built from, and `prepare`, which swaps
them into a model from outside.

Each class here subclasses the plain layer it replaces (mlx.nn's `Linear`, `RMSNorm`,
`LayerNorm`, `Embedding`, `GELU`; `layers.py`'s `SwiGLU`, `ScaledDotProductAttention`,
`MatmulT`), has the same parameters, and inside an `accel.scope` computes the same values its platform's
faster way; outside a scope it is the plain layer. So every model made of these layers
(dense, projected, soup) gets the same kernels, and models/ holds no platform code.

`prepare` swaps a layer by changing its class in place, where `nn.quantize` builds new
layers: a quantized layer has other parameters, an accelerated one has the very same,
so keeping the objects keeps every reference to them valid (the trainer's compiled
state, the optimizer's), and a checkpoint written from a prepared model is the plain
model's.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .. import layers
from . import bf16, fastmath


class Linear(nn.Linear):
    """`nn.Linear`; inside a bf16 scope its product in bfloat16 with float32 sums."""

    def __call__(self, x: mx.array) -> mx.array:
        if not bf16.active():
            return super().__call__(x)
        y = bf16.matmul_t(x, self.weight)
        return y + self.bias if "bias" in self else y


class Embedding(nn.Embedding):
    """`nn.Embedding`; its use as the tied output layer in bfloat16 inside a bf16 scope."""

    def as_linear(self, x: mx.array) -> mx.array:
        return bf16.matmul_t(x, self.weight) if bf16.active() else super().as_linear(x)


class MatmulT(layers.MatmulT):
    """x @ weight.T; inside a bf16 scope in bfloat16 with float32 sums."""

    def __call__(self, x: mx.array, weight: mx.array) -> mx.array:
        return bf16.matmul_t(x, weight) if bf16.active() else super().__call__(x, weight)


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm`; inside a fast scope with the C++ kernels built, their `rms_norm`
    (one pass per row forward, one backward with the weight's gradient)."""

    def __call__(self, x: mx.array) -> mx.array:
        kernels = fastmath.native(x)
        if kernels is not None and self.weight.dtype == mx.float32:
            return kernels.rms_norm(x, self.weight, self.eps)
        return super().__call__(x)


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm`; inside a fast scope with the C++ kernels built, their
    `layer_norm` (one pass per row forward, mean and variance as MLX's), for the affine
    layer norm with a bias (BERT's)."""

    def __call__(self, x: mx.array) -> mx.array:
        kernels = fastmath.native(x)
        if kernels is not None and "weight" in self and "bias" in self and self.weight.dtype == mx.float32:
            return kernels.layer_norm(x, self.weight, self.bias, self.eps)
        return super().__call__(x)


class SwiGLU(layers.SwiGLU):
    """silu(gate) * up; inside a fast scope the C++ kernels' one-pass `swiglu` (forward
    and backward), or without them fastmath's vectorizable SiLU."""

    def __call__(self, gate: mx.array, up: mx.array) -> mx.array:
        kernels = fastmath.native(gate)
        if kernels is not None and up.dtype == mx.float32:
            return kernels.swiglu(gate, up)
        if fastmath.active(gate):
            return fastmath.silu(gate) * up
        return super().__call__(gate, up)


class GELU(nn.GELU):
    """`nn.GELU`; the exact (erf) one inside a fast scope: the C++ kernels' one-pass
    `gelu`, or without them fastmath's from vectorizable ops."""

    def __call__(self, x: mx.array) -> mx.array:
        if self._approx != "none" or not fastmath.active(x):
            return super().__call__(x)
        kernels = fastmath.native(x)
        return kernels.gelu(x) if kernels is not None else fastmath.gelu(x)


class ScaledDotProductAttention(layers.ScaledDotProductAttention):
    """MLX's fused attention; inside a fast scope, without a KV cache: for no mask or a
    causal one, fastmath's attention in query blocks (the C++ kernel where built); for an
    additive float32 mask (padded keys), scores and the fast softmax."""

    def __call__(self, q: mx.array, k: mx.array, v: mx.array, mask=None, cache=None) -> mx.array:
        if cache is None and fastmath.active(q):
            if mask is None or isinstance(mask, str):
                return fastmath.attention(q, k, v, self.scale, mask)
            if isinstance(mask, mx.array) and mask.dtype == mx.float32 and k.shape[1] == q.shape[1]:
                return fastmath.masked_attention(q, k, v, self.scale, mask)
        return super().__call__(q, k, v, mask, cache)


# plain layer class -> its accelerated class (exact classes: a subclass someone wrote
# for other reasons, or nn.QuantizedLinear, is left alone)
SWAPS = {
    nn.Linear: Linear,
    nn.Embedding: Embedding,
    nn.RMSNorm: RMSNorm,
    nn.LayerNorm: LayerNorm,
    nn.GELU: GELU,
    layers.MatmulT: MatmulT,
    layers.SwiGLU: SwiGLU,
    layers.ScaledDotProductAttention: ScaledDotProductAttention,
}


def wanted(precision: str = "float32") -> bool:
    """Whether `prepare` changes anything here: the fast CPU math is supported (an x86
    CPU, see `fastmath.supported`), or the products are to be in bf16."""
    return fastmath.supported() or precision == "bf16"


def prepare(model: nn.Module, precision: str = "float32") -> nn.Module:
    """Swap `model`'s layers, in place, for this platform's accelerated ones (the same
    parameters and values; faster inside an `accel.scope`) and return it. Where nothing
    is faster (Apple silicon, a GPU, in float32) the model is returned unchanged.

    Also builds the C++ kernels the first time they are wanted on this machine, so that
    the build is not timed as part of a training step."""
    if not wanted(precision):
        return model
    if fastmath.supported():
        fastmath.kernels()

    def swap(_path: str, module: nn.Module) -> None:
        accelerated = SWAPS.get(type(module))
        if accelerated is not None:
            module.__class__ = accelerated

    model.apply_to_modules(swap)
    return model


def unprepare(model: nn.Module) -> nn.Module:
    """Undo `prepare`: every accelerated layer back to its plain class."""
    plain = {fast: slow for slow, fast in SWAPS.items()}

    def swap(_path: str, module: nn.Module) -> None:
        if type(module) in plain:
            module.__class__ = plain[type(module)]

    model.apply_to_modules(swap)
    return model
