"""Exp, softmax, SiLU and attention that MLX's CPU compiler turns into vector code on x86.

On x86 MLX's own CPU `exp` (and `sigmoid`, `softmax`, `logsumexp`, which use it) runs one
float at a time: ~14 ns per element here, 30x a multiply. They are most of a small LM's
training step (the vocabulary softmax, attention's softmax, the SiLU gate; BENCHMARKS.md).
Inside `mx.compile`, though, MLX fuses chains of element-wise ops into one C++ loop and
builds it with the system compiler (`g++ -O3`), which vectorizes a loop that has no
calls and no branches. So `exp` is written here from such ops only:

    exp(x) = 2^t,  t = x log2(e) = k + f,  k = round(t),  f in [-1/2, 1/2]
    2^f: a degree-6 polynomial (Cephes' coefficients, as in MLX's own CPU exp),
    2^k: the float whose exponent bits are k + 127, made with integer ops.

Rounding uses the 1.5 * 2^23 trick, clamping uses relu(y) = (y + |y|) / 2, both exact on
the values involved. The 2^k bits go through `mx.view` (a fusion boundary): the work is
two fused loops, one for the exponent bits, one for the polynomial times them. Written
so MLX's compile pass keeps it in two loops: see `_exp_bits` / `_exp_nonpositive`.

Accuracy (float32, tests/test_fastmath.py): relative error < 4e-7 against `mx.exp` on
[-87, 0]; exactly 0 below -87.7 (MLX's exp returns subnormals there, < 8.3e-39; with
subnormals flushed, accel/subnormals.py, every result below 1.2e-38 is 0). Only
inputs <= 0 are supported, which is all the softmax (x - max) and the sigmoid (of -|x|)
need. Inputs must be finite and above -2e38; NaN gives NaN.

On top: `softmax` and `silu` (custom gradients from their own outputs), and `attention`,
causal attention in query blocks that each see only their keys, with a flash-attention
style backward that reuses the forward's exps (1.5-1.7x MLX's CPU SDPA, forward and
backward, at 4 x 4 heads x 256 x 64). `row_max` is a last-axis max that vectorizes, and
`per_stream` builds each custom function once per stream so that its backward runs on the
stream of its forward (MLX would run every custom VJP on the default stream).

Outside `mx.compile` these ops run as ~20 separate kernels and are slower than MLX's.
So they are used only where `active()` says so: inside an `accel.scope` (the trainer
opens one while its compiled step is traced) on a CPU device of an x86 machine whose MLX can
compile CPU kernels. Apple silicon keeps MLX's ops (vectorized there already, and the
GPU's are fast). `MLXSPEC_FAST_MATH=0` turns them off, `=1` forces them on.

Faster still, where they can be built: `kernels()`, the C++ kernels of
native/kernels.cpp (the cross-entropy, SwiGLU, RMSNorm, each one pass per row, and
attention, forward and backward fused around BLAS products; BENCHMARKS.md), which the same `active()` places use instead of the ops
above. Built at first use on x86-64 Linux (CMake, nanobind, g++), cached per machine;
where the build fails the ops above serve, and `mlxspec doctor` says why.
`MLXSPEC_NATIVE_KERNELS=0` turns them off.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil

import mlx.core as mx
import numpy as np

from .backend import is_x86
from .mode import current

_ROUND = 12582912.0  # 1.5 * 2^23: x + _ROUND - _ROUND rounds x to an integer
_LOG2E = 1.4426950408889634
# 2^f on [-1/2, 1/2], highest power first (Cephes expf, as in MLX's simd/math.h)
_POLY = (1.535336188319500e-4, 1.339887440266574e-3, 9.618437357674640e-3,
         5.550332471162809e-2, 2.402264791363012e-1, 6.931472028550421e-1, 1.0)
_MASKED = -1e9  # additive attention mask: exp gives exactly 0 there

def supported() -> bool:
    """Would the fast ops help here: `MLXSPEC_FAST_MATH` if set, else an x86-64 machine,
    the default device a CPU, and a C++ compiler for MLX's CPU `mx.compile` (g++)."""
    setting = os.environ.get("MLXSPEC_FAST_MATH")
    if setting is not None:
        return setting.lower() not in ("0", "off", "false", "no")
    if not is_x86():
        return False
    if mx.default_device().type != mx.cpu:
        return False
    return shutil.which("g++") is not None


def status() -> str:
    """One line for `mlxspec doctor`: whether training uses the fast ops here, and why."""
    setting = os.environ.get("MLXSPEC_FAST_MATH")
    if setting is not None:
        return f"{'on' if supported() else 'off'} (MLXSPEC_FAST_MATH={setting})"
    if not is_x86():
        return "off (not x86: MLX's own CPU math is vectorized here)"
    if mx.default_device().type != mx.cpu:
        return "off (a GPU runs the math)"
    if shutil.which("g++") is None:
        return "off (no g++ for mx.compile's CPU kernels: install g++, e.g. apt-get install g++)"
    return "on (x86 CPU, g++ found)"


_native: dict[str, object] = {}  # the build's outcome once tried: "module", or "reason"


def _native_wanted() -> str | None:
    """Why the C++ kernels are not for this machine, or None if they are."""
    setting = os.environ.get("MLXSPEC_NATIVE_KERNELS")
    if setting is not None and setting.lower() in ("0", "off", "false", "no"):
        return f"MLXSPEC_NATIVE_KERNELS={setting}"
    if platform.system() != "Linux" or not is_x86():
        return "not x86-64 Linux: MLX's own kernels are vectorized here"
    return None


def kernels():
    """The C++ kernel module (native/kernels.cpp), built at the first call that wants it,
    or None where it is switched off or cannot be built (`kernels_status()` says why)."""
    if _native_wanted() is not None:
        return None
    if not _native:
        from .native import NativeUnavailable, load

        try:
            _native["module"] = load("fast CPU training")
        except NativeUnavailable as err:
            _native["reason"] = str(err)
        except Exception as err:  # an optional speed-up never stops a command: fall back
            _native["reason"] = f"the C++ extension failed: {type(err).__name__}: {err}"
    return _native.get("module")


def kernels_status() -> str:
    """One line for `mlxspec doctor`: whether the fast ops use the C++ kernels, and why."""
    if not supported():
        return "off (the fast math is off)"
    if kernels() is not None:
        return "on (native/kernels.cpp, built for this machine)"
    return f"off ({_native_wanted() or _native['reason']})"


def native(x: mx.array | None = None):
    """The C++ kernel module where the fast ops are active (see `active`) and it is
    available, else None."""
    return kernels() if active(x) else None


def active(x: mx.array | None = None) -> bool:
    """True inside an `accel.scope` that enabled the fast ops (and for float32 `x`,
    when given)."""
    mode = current()
    return mode is not None and mode.fast and (x is None or x.dtype == mx.float32)


def _c(value: float, dtype=mx.float32) -> mx.array:
    """A 0-d constant array (MLX's compiled loops read those as literals)."""
    return mx.array(value, dtype=dtype)


def _stream_slot() -> int:
    """0-3: the index of the stream ops are being added to (the default stream of the
    default device: a parallel CPU stream, see train/parallel.py), mod 4."""
    digits = repr(mx.default_stream(mx.default_device())).rstrip(") ").rsplit(",", 1)[-1].strip()
    return int(digits) % 4 if digits.isdigit() else 0


def _per_stream(x: mx.array) -> mx.array:
    """x with as many leading unit axes as its stream's slot (a free reshape).

    MLX's compile pass merges equal scalar constants and then equal broadcasts of them
    across the whole graph, parallel streams included: the second stream's fused loops
    then read the first stream's broadcast constants as arrays, which makes them strided
    loops that the C++ compiler does not vectorize (a slower SiLU over two streams,
    measured: docs/mlx-cpu-elementwise.md). Shapes that differ per stream keep the
    broadcasts apart."""
    slot = _stream_slot()
    return x if slot == 0 else x.reshape((1,) * slot + x.shape)


def _exp_bits(x: mx.array) -> mx.array:
    """The float32 bit pattern of 2^round(x log2 e) as int32, 0 where that is < 2^-126.

    y = round(t) + 127; relu(y) = (y + |y|) / 2 and y + |y| is even, so shifting
    int(y + |y|) by 22 puts relu(y) in the exponent field."""
    y = (x * _c(_LOG2E) + _c(_ROUND)) - _c(_ROUND - 127.0)
    return (y + mx.abs(y)).astype(mx.int32) << _c(22, mx.int32)


def _exp_nonpositive(x: mx.array, scaled: mx.array | None = None) -> mx.array:
    """exp(x) for float32 x <= 0 (x of at least one dimension), with no custom
    gradient: for use inside custom functions.

    `mx.compile` keeps in memory an array that two fused loops read, so the two halves
    should not share one. `scaled`, if given, is x log2(e) computed by a different graph
    than `_exp_bits` computes it (e.g. -log2(e) (m - y) for x = y - m), from which the
    polynomial half starts: the same floats, but not the same graph nodes, so each loop
    computes its own from its inputs, in registers. By default it is `log2e * x`,
    operands swapped for the same reason."""
    bits = _exp_bits(x)
    scaled = mx.multiply(_c(_LOG2E), x) if scaled is None else scaled
    f = scaled - mx.subtract(mx.add(_c(_ROUND), scaled), _c(_ROUND))
    f2 = f * f
    c6, c5, c4, c3, c2, c1, c0 = (_c(v) for v in _POLY)
    # Estrin's scheme: a shallow tree, so the whole polynomial fits one fused loop
    poly = ((c0 + c1 * f) + f2 * (c2 + c3 * f)) + (f2 * f2) * ((c4 + c5 * f) + f2 * c6)
    return poly * bits.view(mx.float32)


def _spread(column: mx.array, width: int) -> mx.array:
    """column [..., 1] repeated to [..., width] by a product with a row of ones (a fast
    BLAS write), so that the loop using it reads contiguous arrays only."""
    return column @ mx.ones((1, width), column.dtype)


def exp_shifted(x: mx.array, shift: mx.array) -> mx.array:
    """exp(x - shift) for x - shift <= 0, shift [..., 1] one value per row of x [..., n];
    no custom gradient (for custom functions: the softmax here, the fused cross-entropy).

    The shift is first spread to x's shape by a matrix product with a row of ones: a
    loop with a broadcast input is a strided loop, which the C++ compiler does not
    vectorize; with two contiguous inputs both fused loops are vectorized (the product
    itself is a fast BLAS write; benchmarks/fastmath_ops.py measures the gain)."""
    shape, x, shift = x.shape, _per_stream(x), _per_stream(shift)
    shift = _spread(shift, x.shape[-1])
    return _exp_nonpositive(x - shift, mx.multiply(_c(-_LOG2E), shift - x)).reshape(shape)


def per_stream(build):
    """Decorator: `build(stream)` returns a custom function whose VJP runs its ops on
    `stream`; the decorated function calls the one built for the stream its forward
    pass is added to (built once per stream, then cached).

    Why: MLX runs the VJP of an `mx.custom_function` on whatever stream is the default
    when the backward pass is traced, not on the forward's stream as it does for its own
    primitives. With the batch split over parallel CPU streams (train/parallel.py) the
    backward of every custom function would otherwise run on one stream, one core."""
    built: dict[str, object] = {}

    @functools.wraps(build)
    def call(*args, **kwargs):
        stream = mx.default_stream(mx.default_device())
        key = repr(stream)
        if key not in built:
            built[key] = build(stream)
        return built[key](*args, **kwargs)

    return call


@per_stream
def exp_nonpositive(stream):
    """exp(x) for float32 x <= 0 (see the module docstring); gradient g * exp(x)."""

    @mx.custom_function
    def exp(x: mx.array) -> mx.array:
        return _exp_nonpositive(_per_stream(x)).reshape(x.shape)

    @exp.vjp
    def exp_vjp(primals, cotangent, output):
        with mx.stream(stream):
            return cotangent * output

    return exp


@per_stream
def softmax(stream):
    """Softmax over the last axis of float32 x (finite, or masked with `_MASKED`)."""

    @mx.custom_function
    def softmax(x: mx.array) -> mx.array:
        e = exp_shifted(x, row_max(x))
        return e / e.sum(axis=-1, keepdims=True)

    @softmax.vjp
    def softmax_vjp(primals, cotangent, output):
        with mx.stream(stream):
            return output * (cotangent - (cotangent * output).sum(axis=-1, keepdims=True))

    return softmax


@per_stream
def _silu(stream):
    """(x * sigmoid(x), sigmoid(x)) with one exp of -|x| and no branch:
    sigmoid = r for x >= 0 and z r for x < 0, with z = exp(-|x|), r = 1 / (1 + z);
    "x < 0" is the sign bit, read through an int32 view of x."""

    @mx.custom_function
    def silu(x: mx.array) -> tuple[mx.array, mx.array]:
        shape, x = x.shape, _per_stream(x)
        # mx.contiguous (free here) ends the exp's fused loops at z: fused further, the
        # loop would be deep enough for MLX's compile pass to cut it below a broadcast
        # constant, pass that in as a stride-0 array and emit a strided, scalar loop
        z = mx.contiguous(_exp_nonpositive(-mx.abs(x), mx.multiply(_c(-_LOG2E), mx.abs(-x))))
        one = _c(1.0)
        r = one / (one + z)
        negative = -(x.view(mx.int32) >> _c(31, mx.int32)).astype(mx.float32)  # 1 where x < 0 (or -0.0)
        sigmoid = r * ((one - negative) + negative * z)  # a 0/1 blend: exact, no cancellation
        return (x * sigmoid).reshape(shape), sigmoid.reshape(shape)

    @silu.vjp
    def silu_vjp(primals, cotangents, outputs):
        with mx.stream(stream):
            x, g, sigmoid = (_per_stream(a) for a in (primals, cotangents[0], outputs[1]))
            one = _c(1.0)
            return (g * (sigmoid * (one + x * (one - sigmoid)))).reshape(primals.shape)

    return silu


def silu(x: mx.array) -> mx.array:
    """x * sigmoid(x) for float32 x."""
    return _silu(x)[0]


# erf(x) on [-4, 4] as a rational function (Eigen's and XLA's float erf; max error ~4e-7,
# as MLX's own): x P(x^2) / Q(x^2), highest power first
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def _erf(x: mx.array) -> mx.array:
    """erf(x) for float32 x from multiplies, adds, a divide and a clamp (no custom gradient)."""
    x = mx.minimum(mx.maximum(x, _c(-4.0)), _c(4.0))
    x2 = x * x
    p, q = _c(_ERF_P[0]), _c(_ERF_Q[0])
    for a in _ERF_P[1:]:
        p = p * x2 + _c(a)
    for b in _ERF_Q[1:]:
        q = q * x2 + _c(b)
    return x * p / q


@per_stream
def gelu(stream):
    """x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 for float32 x: the exact GELU (BERT's, MLX's
    `nn.gelu`); gradient Phi(x) + x phi(x)."""

    @mx.custom_function
    def gelu(x: mx.array) -> mx.array:
        shape, x = x.shape, _per_stream(x)
        return (x * (_c(1.0) + _erf(x * _c(0.7071067811865476))) * _c(0.5)).reshape(shape)

    @gelu.vjp
    def gelu_vjp(primals, cotangent, output):
        with mx.stream(stream):
            x, g = _per_stream(primals), _per_stream(cotangent)
            cdf = (_c(1.0) + _erf(x * _c(0.7071067811865476))) * _c(0.5)
            density = _exp_nonpositive(x * x * _c(-0.5)) * _c(0.3989422804014327)
            return (g * (cdf + x * density)).reshape(primals.shape)

    return gelu


def masked_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array) -> mx.array:
    """softmax(q k^T scale + mask) v with the fast softmax, for an additive float32 `mask`
    (finite, e.g. -1e9 on padded keys; broadcast to [B, H, L, S]): q, k, v [B, H, L|S, Dh]
    -> [B, H, L, Dh]. BERT's padded batches."""
    scores = (q @ k.swapaxes(-1, -2)) * scale + mask
    return softmax(scores) @ v


def _causal_blocks(length: int, block: int) -> list[tuple[int, int]]:
    """Query blocks [(start, stop)] of at most `block` rows covering `length`."""
    return [(a, min(a + block, length)) for a in range(0, length, block)]


_FULL_BIAS_BYTES = 8 << 20  # largest additive mask stored at the scores' full shape (16 kept: <= 128 MB)


def _block_bias(start: int, stop: int) -> np.ndarray:
    """[stop - start, stop] additive mask of query block [start, stop) over keys
    [0, stop): 0 where key <= query, `_MASKED` above the diagonal."""
    rows = np.arange(start, stop)[:, None]
    return np.where(np.arange(stop)[None, :] <= rows, 0.0, _MASKED).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _bias_at(start: int, stop: int, shape: tuple[int, ...]) -> mx.array:
    """The mask of query block [start, stop) for scores of `shape` [..., rows, keys]
    (rows: the block's rows of each query head sharing a KV head, one after another): a
    constant array of that whole shape when it is small (a loop reading a broadcast
    input is strided, which stays scalar, and `mx.addmm` copies a broadcast C one
    element at a time), else the [rows, keys] mask MLX broadcasts."""
    bias = np.tile(_block_bias(start, stop), (shape[-2] // (stop - start), 1))
    if 4 * int(np.prod(shape)) <= _FULL_BIAS_BYTES:
        bias = np.ascontiguousarray(np.broadcast_to(bias, shape))
    return mx.array(bias)


def row_max(x: mx.array) -> mx.array:
    """x.max(axis=-1, keepdims=True), faster on x86 CPUs for rows of a multiple of 16
    (benchmarks/fastmath_ops.py): MLX reduces the last axis one element at a time, but a reduction over an outer
    axis is an element-wise max of whole rows, which the compiler vectorizes. So the
    rows are folded to [n / 16, 16], reduced over n / 16, then over the 16."""
    n = x.shape[-1]
    if n % 16 or n < 64:
        return x.max(axis=-1, keepdims=True)
    return x.reshape(*x.shape[:-1], n // 16, 16).max(axis=-2).max(axis=-1, keepdims=True)


@functools.lru_cache(maxsize=None)
def _attention_fn(blocks: tuple[tuple[int, int], ...], causal: bool, scale: float, groups: int):
    """The custom function computing attention over query `blocks` (causal: block
    [a, b) sees keys [0, b), so the masked upper triangle is mostly never computed),
    with a flash-attention-style backward that reuses the forward's exps.

    For q [B, H, L, Dh] and k, v [B, Hkv, S, Dh], H = groups * Hkv. The output is
    [B, H, L, Dh] as a transposed view of a row-major [B, L, H, Dh]: the caller's
    `.transpose(0, 2, 1, 3).reshape(B, L, H * Dh)` is then free."""

    def grouped(x, a, b):  # query rows [a, b) of every head, grouped by KV head
        B, H, _, Dh = x.shape
        return x[:, :, a:b].reshape(B, H // groups, groups * (b - a), Dh)

    def ungrouped(x, rows):  # back to [B, H, rows, Dh]
        B, Hkv, _, Dh = x.shape
        return x.reshape(B, Hkv * groups, rows, Dh)

    @per_stream
    def build(stream):
        @mx.custom_function
        def attention(q, k, v):
            # [v | 1], row-major: e @ [v | 1] gives the output and the row sums of e in
            # one product, and the backward's (dO / l, -rowsum(dO o) / l) @ [v | 1]^T
            # gives dP / l minus that centre, with no [rows, keys] broadcast of it
            v_ones = mx.concatenate([v, mx.ones((*v.shape[:-1], 1), v.dtype)], axis=-1)
            outs, exps, inverses = [], [], []
            Dh = v.shape[-1]
            for a, b in blocks:
                keys = b if causal else k.shape[2]
                kt = k[:, :, :keys].swapaxes(-1, -2)
                qb = grouped(q, a, b)
                if causal:
                    shape = (*qb.shape[:-1], keys)
                    scores = mx.addmm(_bias_at(a, b, shape), qb, kt, alpha=scale)
                    e = exp_shifted(scores, row_max(scores))
                else:
                    scores = (qb @ kt) * scale
                    e = exp_shifted(scores, row_max(scores))
                weighted = e @ v_ones[:, :, :keys]  # [B, Hkv, rows, Dh + 1]
                inverse = 1.0 / weighted[..., Dh:]
                out = weighted[..., :Dh] * _spread(inverse, Dh)
                outs.append(ungrouped(out, b - a).transpose(0, 2, 1, 3))
                exps.append(e)
                inverses.append(inverse)
            # one copy, straight into [B, L, H, Dh] (see the docstring)
            out = outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=1)
            return (mx.contiguous(out).transpose(0, 2, 1, 3), v_ones, *exps, *inverses)

        @attention.vjp
        def attention_vjp(primals, cotangents, outputs):
            with mx.stream(stream):
                return backward(primals, cotangents, outputs)

        def backward(primals, cotangents, outputs):
            q, k, _ = primals
            n = len(blocks)
            grad_out, out, v_ones = cotangents[0], outputs[0], outputs[1]
            exps, inverses = outputs[2 : 2 + n], outputs[2 + n :]
            S, Dh = k.shape[2], k.shape[3]
            dq, dk_parts, dv_parts = [], [], []
            for (a, b), e, inverse in zip(blocks, exps, inverses):
                keys = b if causal else S
                # dO / l, the scores' scale applied on the small side: [B, Hkv, rows, Dh]
                g = grouped(grad_out, a, b) * _spread(inverse, Dh)
                gs = g * scale
                o = grouped(out, a, b)
                # dS = p (dP - rowsum(dO o)) with p = e / l: e (dP / l - rowsum(dO o) / l),
                # the bracket as one product: [gs | -rowsum(gs o)] @ [v | 1]^T
                centre = (gs * o) @ mx.ones((Dh, 1), gs.dtype)
                ds = e * (mx.concatenate([gs, -centre], axis=-1) @ v_ones[:, :, :keys].swapaxes(-1, -2))
                dq.append(ungrouped(ds @ k[:, :, :keys], b - a))
                dk_parts.append(ds.swapaxes(-1, -2) @ grouped(q, a, b))  # keys [0, keys)
                dv_parts.append(e.swapaxes(-1, -2) @ g)
            return (dq[0] if n == 1 else mx.concatenate(dq, axis=2),
                    _sum_key_blocks(dk_parts, blocks, causal),
                    _sum_key_blocks(dv_parts, blocks, causal))

        return attention

    return build


def _sum_key_blocks(parts: list[mx.array], blocks, causal: bool) -> mx.array:
    """The sum of per-query-block gradients of the keys (or values): query block i
    covers keys [0, stop_i), so key block j gets the sum of parts i >= j over its rows."""
    if not causal or len(parts) == 1:
        return sum(parts[1:], parts[0])
    pieces = []
    for j, (a, b) in enumerate(blocks):
        piece = parts[j][:, :, a:b]
        for part in parts[j + 1 :]:
            piece = piece + part[:, :, a:b]
        pieces.append(piece)
    return mx.concatenate(pieces, axis=2)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask=None,
              block: int = 128) -> mx.array:
    """`mx.fast.scaled_dot_product_attention` for mask None or "causal" (queries and
    keys of one length), with the fast softmax. q [B, H, L, Dh], k and v [B, Hkv, S, Dh]
    -> [B, H, L, Dh]. Causal attention runs in query blocks of `block` rows, each over
    the keys it can see: (n + 1) / 2n of the full score matrix for n blocks. Where the
    C++ kernels are built (`native`), their fused `attention` does it, same blocks."""
    L, S = q.shape[2], k.shape[2]
    causal = isinstance(mask, str) and mask == "causal"
    if (mask is not None and not causal) or (causal and L != S):
        raise ValueError("fastmath.attention takes mask None, or 'causal' with as many keys as queries")
    cpp = native(q)
    if cpp is not None and k.dtype == v.dtype == mx.float32:  # the fused C++ kernel, forward and backward
        return cpp.attention(q, k, v, float(scale), causal, block if causal else L).transpose(0, 2, 1, 3)
    blocks = tuple(_causal_blocks(L, block)) if causal else ((0, L),)
    fn = _attention_fn(blocks, causal, float(scale), q.shape[1] // k.shape[1])
    return fn(q, k, v)[0]
