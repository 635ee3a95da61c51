"""Where a training step's time goes: the step's parts timed one by one, in MLX.

    python benchmarks/step_profile.py --preset small

At the preset's batch shape, times (median of `--repeats`, milliseconds) the whole
compiled step with one stream and with the default parallel streams, and the parts of one
step on one stream: each part's forward + backward, compiled, with the step's own
functions (matmuls of a block, attention, SiLU gate, RMSNorm, the vocabulary projection
and cross-entropy) and the AdamW update. `MLXSPEC_FAST_MATH=0` profiles MLX's own ops. The
parts' sum is a rough account (no fusion, no overlap), to see what dominates.
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from mlx_specialize import fastmath
from mlx_specialize.models.dense import attend, silu
from mlx_specialize.train.losses import cross_entropy

from train_throughput import mlx_stepper  # sibling script: the same compiled step


def timed(fn, *args, repeats: int = 5) -> float:
    mx.eval(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mx.eval(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def whole_step(preset, vocab: int, streams: int, repeats: int) -> float:
    """Median milliseconds of the trainer's compiled step (the throughput benchmark's)."""
    step = mlx_stepper(preset, preset.batch_size, preset.context, vocab, streams=streams)
    step()  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    step.release()
    return statistics.median(times) * 1000


def parts(preset, vocab: int, repeats: int) -> dict[str, float]:
    """Each part's forward + backward compiled on its own, with the step's own functions
    (fast CPU math inside `fastmath.scope()` where the step uses it)."""
    B, T, D, F, H = preset.batch_size, preset.context, preset.hidden, preset.mlp, preset.heads
    N = B * T
    mx.random.seed(0)
    h = mx.random.normal((B, T, D))
    lin_qkvo, lin_up = nn.Linear(D, D, bias=False), nn.Linear(D, F, bias=False)
    lin_down = nn.Linear(F, D, bias=False)
    q = mx.random.normal((B, H, T, D // H))
    g = mx.random.normal((B, T, F))
    norm = nn.RMSNorm(D)
    emb = mx.random.normal((vocab, D)) * 0.02
    y = mx.random.randint(0, vocab, (B, T)).reshape(-1)
    logits = mx.random.normal((N, vocab))

    def attention(a):
        return attend(a, a, a, (D // H) ** -0.5, "causal")

    def grad_of(f):
        def loss(a):
            with fastmath.scope():
                return f(a).sum()
        return mx.compile(mx.grad(loss))

    per_layer = {
        "attention projections (4 matmuls)": 4 * timed(grad_of(lin_qkvo), h, repeats=repeats),
        "MLP matmuls (gate, up, down)": 2 * timed(grad_of(lin_up), h, repeats=repeats)
        + timed(grad_of(lin_down), g, repeats=repeats),
        "attention (softmax(q k^T) v, causal)": timed(grad_of(attention), q, repeats=repeats),
        "SiLU gate (silu(g) * u)": timed(grad_of(lambda a: silu(a) * a), g, repeats=repeats),
        "RMSNorm x2": 2 * timed(grad_of(norm), h, repeats=repeats),
    }
    result = {f"{k} x {preset.layers} layers": v * preset.layers for k, v in per_layer.items()}
    result["vocab projection (matmul)"] = timed(grad_of(lambda a: a @ emb.T), h, repeats=repeats)
    result["cross-entropy over the vocabulary"] = timed(
        grad_of(lambda l: cross_entropy(l, y)), logits, repeats=repeats)
    model = ms.Model(preset.model_args(vocab))
    opt = optim.AdamW(1e-3, bias_correction=True)
    opt.init(model.trainable_parameters())
    grads = model.trainable_parameters()
    result["AdamW update"] = timed(lambda: (opt.update(model, grads), model.parameters())[1], repeats=repeats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    preset = ms.get_preset(args.preset)
    print(f"preset {args.preset}: batch {preset.batch_size} x context {preset.context}, vocab {args.vocab}")
    one = whole_step(preset, args.vocab, 1, args.repeats)
    auto = ms.train.parallel.auto_streams(preset.batch_size)
    many = whole_step(preset, args.vocab, auto, args.repeats)
    print(f"whole compiled step, 1 stream: {one:8.1f} ms")
    print(f"whole compiled step, {auto} streams: {many:8.1f} ms  ({one / many:.2f}x)")
    rows = parts(preset, args.vocab, args.repeats)
    total = sum(rows.values())
    print("parts, forward + backward, one stream:")
    for name, ms_ in sorted(rows.items(), key=lambda kv: -kv[1]):
        print(f"  {name:48s} {ms_:8.1f} ms  {ms_ / total:6.1%}")
    print(f"  {'sum of parts':48s} {total:8.1f} ms")


if __name__ == "__main__":
    main()
