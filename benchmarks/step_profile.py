"""Where a training step's time goes: the step's parts timed one by one, in MLX.

    python benchmarks/step_profile.py --preset small
    python benchmarks/step_profile.py --preset shape:6,256,4,688 --batch-size 4 --marginal

At the preset's batch shape, times (median of `--repeats`, milliseconds) the whole
compiled step with one stream and with the default parallel streams, and the parts of one
step on one stream: each part's forward + backward, compiled, with the step's own
functions (matmuls of a block, attention, SiLU gate, RMSNorm, the vocabulary projection
and cross-entropy) and the AdamW update. `MLXSPEC_FAST_MATH=0` profiles MLX's own ops. The
parts' sum is a rough account (no fusion, no overlap), to see what dominates.

`--marginal` measures each part in context instead: the whole compiled step on one
stream, in a fresh process per variant, with that part replaced by a cheap stand-in of
the same shapes (attention by q + k + v, the cross-entropy by the first logit, SiLU by
the identity (SwiGLU by gate * up), RMSNorm by its weight, clipping and AdamW by a plain SGD step); a part's cost is the step's time minus the step's
time without it. `--precision bf16` profiles the bf16 step. `--run-for S` runs the whole step for S seconds, e.g. to sample it with
`perf record -g -p PID`. Use `OPENBLAS_NUM_THREADS=1` (or `MKL_NUM_THREADS=1`) to see one
core's share of a two-stream step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from mlx_specialize import accel
from mlx_specialize.accel import modules
from mlx_specialize.accel.losses import cross_entropy

from train_throughput import mlx_stepper, resolve  # sibling script: the same compiled step

# --marginal: each part's stand-in, patched into the model code of a fresh process
STAND_INS = ("attention", "cross-entropy", "SiLU", "RMSNorm", "optimizer")


def stand_in(part: str) -> None:
    """Replace `part` of the model by a cheap function of the same shapes (in the layer
    classes `accel.prepare` swaps in, and in the plain ones where it swaps nothing)."""
    from mlx_specialize import layers
    from mlx_specialize.train import parallel

    def patch(plain, fast, call):
        plain.__call__ = fast.__call__ = call

    if part == "attention":
        patch(layers.ScaledDotProductAttention, modules.ScaledDotProductAttention,
              lambda self, q, k, v, mask=None, cache=None: q + k + v)
    elif part == "cross-entropy":
        parallel.cross_entropy = lambda logits, y: logits[..., 0] * 1.0
    elif part == "SiLU":
        patch(layers.SwiGLU, modules.SwiGLU, lambda self, gate, up: gate * up)
    elif part == "RMSNorm":
        patch(nn.RMSNorm, modules.RMSNorm, lambda self, x: x * self.weight)
    elif part == "optimizer":  # a plain SGD step: no clipping, no AdamW moments
        from mlx.utils import tree_map
        from mlx_specialize.train import trainer

        def sgd(optimizer, model, grads, max_norm, streams):
            model.update(tree_map(lambda p, g: p - 1e-3 * g, model.trainable_parameters(), grads))
            return mx.array(0.0)

        trainer.clip_and_update = sgd


def timed(fn, *args, repeats: int = 5) -> float:
    mx.eval(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mx.eval(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def step_worker(preset, vocab: int, part: str | None, repeats: int, precision: str) -> None:
    """--marginal's worker: print the median ms of the whole step on one stream, `part`
    replaced by its stand-in (None: the real step)."""
    if part:
        stand_in(part)
    print(f"{whole_step(preset, vocab, 1, repeats, precision):.2f}")


def marginal(args, repeats: int) -> dict[str, float]:
    """Median step ms per variant ("whole step" and one per stand-in), alternating
    rounds, each variant in its own process."""
    base = [sys.executable, __file__, "--preset", args.preset, "--vocab", str(args.vocab),
            "--repeats", str(repeats), "--precision", args.precision]
    base += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    base += ["--context", str(args.context)] if args.context else []
    times: dict[str, list[float]] = {"whole step": [], **{p: [] for p in STAND_INS}}
    for _ in range(args.rounds):
        for key in times:
            cmd = base + ["--worker", "" if key == "whole step" else key]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ))
            times[key].append(float(done.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(v) for k, v in times.items()}


def whole_step(preset, vocab: int, streams: int, repeats: int, precision: str = "float32") -> float:
    """Median milliseconds of the trainer's compiled step (the throughput benchmark's)."""
    step = mlx_stepper(preset, preset.batch_size, preset.context, vocab, streams=streams, precision=precision)
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
    (fast CPU math inside `accel.scope()` where the step uses it)."""
    B, T, D, F, H = preset.batch_size, preset.context, preset.hidden, preset.mlp, preset.heads
    N = B * T
    mx.random.seed(0)
    h = mx.random.normal((B, T, D))
    lin_qkvo, lin_up = nn.Linear(D, D, bias=False), nn.Linear(D, F, bias=False)
    lin_down = nn.Linear(F, D, bias=False)
    q = mx.random.normal((B, H, T, D // H))
    g = mx.random.normal((B, T, F))
    rms = nn.RMSNorm(D)
    emb = mx.random.normal((vocab, D)) * 0.02
    y = mx.random.randint(0, vocab, (B, T)).reshape(-1)
    logits = mx.random.normal((N, vocab))

    attend, swiglu = modules.ScaledDotProductAttention((D // H) ** -0.5), modules.SwiGLU()
    rms.__class__ = modules.RMSNorm  # what accel.prepare does

    def attention(a):
        return attend(a, a, a, "causal")

    def grad_of(f):
        def loss(a):
            with accel.scope():
                return f(a).sum()
        return mx.compile(mx.grad(loss))

    per_layer = {
        "attention projections (4 matmuls)": 4 * timed(grad_of(lin_qkvo), h, repeats=repeats),
        "MLP matmuls (gate, up, down)": 2 * timed(grad_of(lin_up), h, repeats=repeats)
        + timed(grad_of(lin_down), g, repeats=repeats),
        "attention (softmax(q k^T) v, causal)": timed(grad_of(attention), q, repeats=repeats),
        "SiLU gate (silu(g) * u)": timed(grad_of(lambda a: swiglu(a, a)), g, repeats=repeats),
        "RMSNorm x2": 2 * timed(grad_of(rms), h, repeats=repeats),
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
    parser.add_argument("--preset", default="small", help="a preset, or shape:LAYERS,HIDDEN,HEADS,MLP")
    parser.add_argument("--batch-size", type=int, help="windows per step [preset's]")
    parser.add_argument("--context", type=int, help="tokens per window [preset's]")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--marginal", action="store_true",
                        help="each part's cost in context: the step without it, one stream")
    parser.add_argument("--rounds", type=int, default=3, help="--marginal's alternating rounds")
    parser.add_argument("--run-for", type=float, help="run the whole step for this many seconds")
    parser.add_argument("--precision", default="float32", help="the trainer's precision: float32 or bf16")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from mlx_specialize.models.presets import with_overrides

    preset = resolve(args.preset)
    preset = with_overrides(preset, batch_size=args.batch_size or preset.batch_size,
                            context=args.context or preset.context)
    if args.worker is not None:
        return step_worker(preset, args.vocab, args.worker or None, args.repeats, args.precision)
    print(f"preset {args.preset}: batch {preset.batch_size} x context {preset.context}, vocab {args.vocab}")
    if args.run_for:
        step = mlx_stepper(preset, preset.batch_size, preset.context, args.vocab, precision=args.precision)
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < args.run_for:
            step()
            steps += 1
        print(f"{steps} steps, {(time.perf_counter() - start) / steps * 1000:.1f} ms each")
        return
    if args.marginal:
        times = marginal(args, args.repeats)
        whole = times.pop("whole step")
        print(f"whole compiled step, 1 stream: {whole:8.1f} ms")
        for name, ms_ in times.items():
            print(f"  {name:16s} {whole - ms_:7.1f} ms  {(whole - ms_) / whole:6.1%}   (step without it {ms_:.1f} ms)")
        return
    one = whole_step(preset, args.vocab, 1, args.repeats)
    auto = ms.accel.auto_streams(preset.batch_size)
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
