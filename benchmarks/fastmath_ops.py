"""The CPU training step's building blocks, ours against MLX's own, on one core.

    python benchmarks/fastmath_ops.py

Each pair runs in one process, compiled, alternating, one BLAS thread (one stream's
share of a two-stream step); prints the median milliseconds of each and the ratio:
- the row maximum of [1024, 8192] logits: `mx.max` vs `fastmath.row_max`;
- cross-entropy over [1024, 8192] logits, forward and backward: `nn.losses.cross_entropy`
  vs ours (`accel/losses.py`: the C++ kernel where built, else the fused one with the fast exp);
- causal attention, forward and backward, one layer of the 9M shape's stream (4 x 4
  heads x 256 x 64, RoPE on q and k, the output transposed back as the model does):
  `mx.fast.scaled_dot_product_attention` vs `fastmath.attention` (with the C++ exp where built);
- where the C++ kernels are built (native/kernels.cpp), each against what serves without
  them, forward and backward: the cross-entropy above and the attention above with
  fastmath's ops, `fastmath.silu(gate) * up` and `mx.fast.rms_norm` (one layer of the 9M
  shape's stream: [4, 256, 688] and [4, 256, 256]);
- gradient clipping and AdamW over the 9M model's parameters with gradients as MLX
  gives them for `x @ W.T` (transposed views): `optim.clip_grad_norm` + `update` vs
  `train/parallel.clip_and_update` (which makes them row-major first);
- a linear layer's product, forward and backward (x [1024, K] @ W.T, W [N, K]), in
  float32 (`x @ W.T`) vs in bf16 (`bf16.matmul_t`, MKL's bf16 GEMM; skipped without
  MKL or a CPU with bf16 instructions), and its forward GEMM alone on pre-rounded operands.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map

from mlx_specialize import accel
from mlx_specialize.accel import bf16, fastmath, modules
from mlx_specialize.accel.backend import blas_threads, keep_freed_buffers
from mlx_specialize.errors import SpecializeError
from mlx_specialize.accel.losses import cross_entropy
from mlx_specialize.train.parallel import clip_and_update

from train_throughput import resolve  # sibling script


def _scoped(f):
    def traced(*args):
        with accel.scope(fast=True):
            return f(*args)
    return traced


def _scoped_without_kernels(f):
    """f traced in a fast scope with the C++ kernels switched off (fastmath's ops)."""
    def traced(*args):
        before = os.environ.get("MLXSPEC_NATIVE_KERNELS")
        os.environ["MLXSPEC_NATIVE_KERNELS"] = "0"
        try:
            with accel.scope(fast=True):
                return f(*args)
        finally:
            os.environ.pop("MLXSPEC_NATIVE_KERNELS")
            if before is not None:
                os.environ["MLXSPEC_NATIVE_KERNELS"] = before
    return traced


def _compare(name: str, plain, ours, rounds: int, names=("MLX", "ours")) -> None:
    """Median ms of plain() and ours(), each evaluated, alternating after a warm-up."""
    for fn in (plain, ours, plain, ours):
        fn()
    times = {"mlx": [], "ours": []}
    for _ in range(rounds):
        for key, fn in (("mlx", plain), ("ours", ours)):
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) * 1000)
    a, b = statistics.median(times["mlx"]), statistics.median(times["ours"])
    print(f"{name:58s} {names[0]} {a:7.2f} ms   {names[1]} {b:7.2f} ms   {a / b:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    keep_freed_buffers()
    mx.random.seed(0)
    logits = mx.random.normal((1024, 8192)) * 4
    targets = mx.random.randint(0, 8192, (1024,))
    mx.eval(logits, targets)

    with blas_threads(1):
        plain_max = mx.compile(lambda x: x.max(axis=-1, keepdims=True))
        fast_max = mx.compile(fastmath.row_max)
        _compare("row max of [1024, 8192]", lambda: mx.eval(plain_max(logits)),
                 lambda: mx.eval(fast_max(logits)), args.rounds)

        plain_ce = mx.compile(mx.grad(lambda l: nn.losses.cross_entropy(l, targets).sum()))
        fast_ce = mx.compile(mx.grad(_scoped(lambda l: cross_entropy(l, targets, fused=True).sum())))
        _compare("cross-entropy of [1024, 8192], forward + backward", lambda: mx.eval(plain_ce(logits)),
                 lambda: mx.eval(fast_ce(logits)), args.rounds)

        B, H, L, Dh = 4, 4, 256, 64
        rope = nn.RoPE(Dh)
        q, k, v = (mx.random.normal((B, L, H * Dh)).reshape(B, L, H, Dh).transpose(0, 2, 1, 3) for _ in range(3))
        mx.eval(q, k, v)

        def attention_grad(attend):
            def loss(q, k, v):
                out = attend(rope(q), rope(k), v, Dh**-0.5, "causal")
                return out.transpose(0, 2, 1, 3).reshape(B, L, -1).sum()
            return mx.compile(mx.grad(loss, argnums=(0, 1, 2)))

        sdpa = attention_grad(lambda q, k, v, s, m: mx.fast.scaled_dot_product_attention(q, k, v, scale=s, mask=m))
        ours = attention_grad(_scoped(fastmath.attention))
        _compare("causal attention 4 x 4 x 256 x 64 + RoPE, forward + backward",
                 lambda: mx.eval(sdpa(q, k, v)), lambda: mx.eval(ours(q, k, v)), args.rounds)

        if fastmath.kernels() is not None:
            kernels = ("fastmath", "C++")
            slow_ce = mx.compile(mx.grad(_scoped_without_kernels(lambda l: cross_entropy(l, targets).sum())))
            _compare("cross-entropy of [1024, 8192], fwd + bwd", lambda: mx.eval(slow_ce(logits)),
                     lambda: mx.eval(fast_ce(logits)), args.rounds, kernels)
            slow_attention = attention_grad(_scoped_without_kernels(fastmath.attention))
            _compare("causal attention 4 x 4 x 256 x 64 + RoPE, fwd + bwd", lambda: mx.eval(slow_attention(q, k, v)),
                     lambda: mx.eval(ours(q, k, v)), args.rounds, kernels)
            gate, up = mx.random.normal((4, 256, 688)), mx.random.normal((4, 256, 688))
            x, weight = mx.random.normal((4, 256, 256)), mx.random.normal((256,))
            mx.eval(gate, up, x, weight)

            def swiglu_grad(fn):
                return mx.compile(mx.grad(lambda g, u: fn(g, u).sum(), argnums=(0, 1)))

            slow_swiglu = swiglu_grad(_scoped_without_kernels(lambda g, u: fastmath.silu(g) * u))
            fast_swiglu = swiglu_grad(_scoped(modules.SwiGLU()))
            _compare("SwiGLU of [4, 256, 688], fwd + bwd", lambda: mx.eval(slow_swiglu(gate, up)),
                     lambda: mx.eval(fast_swiglu(gate, up)), args.rounds, kernels)

            def norm_grad(fn):
                return mx.compile(mx.grad(lambda a, w: (fn(a, w) * a).sum(), argnums=(0, 1)))

            slow_norm = norm_grad(lambda a, w: mx.fast.rms_norm(a, w, 1e-5))
            fast_norm = norm_grad(_scoped(lambda a, w: fastmath.kernels().rms_norm(a, w, 1e-5)))
            _compare("RMSNorm of [4, 256, 256], fwd + bwd", lambda: mx.eval(slow_norm(x, weight)),
                     lambda: mx.eval(fast_norm(x, weight)), args.rounds, ("MLX", "C++"))
        else:
            print(f"C++ kernels: skipped ({fastmath.kernels_status()})")

        models, optimizers, steps = [], [], []
        for kind in ("mlx", "ours"):
            model = ms.Model(resolve("shape:6,256,4,688").model_args(8192))
            opt = optim.AdamW(1e-3, bias_correction=True)
            opt.init(model.trainable_parameters())
            state = [model.state, opt.state]

            def update(grads, model=model, opt=opt, kind=kind):
                if kind == "ours":
                    return clip_and_update(opt, model, grads, 5.0, [None])
                grads, norm = optim.clip_grad_norm(grads, 5.0)
                opt.update(model, grads)
                return norm

            models.append(model)
            optimizers.append(opt)
            steps.append(partial(mx.compile, inputs=state, outputs=state)(update))
        # as MLX's gradient of x @ W.T comes: a transposed view for every matrix
        grads = tree_map(lambda p: mx.contiguous(p.T * 0.01).T if p.ndim == 2 else p * 0.01,
                         models[0].trainable_parameters())
        mx.eval(grads)
        runs = [lambda i=i: mx.eval(steps[i](grads), models[i].state, optimizers[i].state) for i in range(2)]
        _compare("clip + AdamW, 9M model, transposed-view gradients", runs[0], runs[1], args.rounds)

        try:
            bf16.check("bf16")
        except SpecializeError as err:
            print(f"bf16 linear layers: skipped ({err})")
            return
        for K, N in ((256, 688), (688, 256), (256, 8192)):
            x, w, g = (mx.random.normal(shape) for shape in ((1024, K), (N, K), (1024, N)))
            mx.eval(x, w, g)

            def linear_grad(precision):
                def loss(x, w):
                    with accel.scope(precision):
                        y = bf16.matmul_t(x, w) if precision == "bf16" else x @ w.T
                    return (y * g).sum()
                return mx.compile(mx.grad(loss, argnums=(0, 1)))

            f32, b16 = linear_grad("float32"), linear_grad("bf16")
            _compare(f"linear [1024, {K}] x [{K}, {N}], fwd + bwd, float32 vs bf16",
                     lambda: mx.eval(f32(x, w)), lambda: mx.eval(b16(x, w)), args.rounds)
            # the forward GEMM alone, operands already rounded: MLX's float32 one vs MKL's bf16 one
            native = bf16._native()
            x16, w16 = native.to_bf16(x), native.to_bf16(w)
            mx.eval(x16, w16)
            _compare("  its GEMM alone, float32 vs bf16 operands",
                     lambda: mx.eval(x @ w.T), lambda: mx.eval(native.bf16_matmul(x16, w16.T)), args.rounds)


if __name__ == "__main__":
    main()
