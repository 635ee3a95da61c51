"""Training-step cost of a projected network (pn) and a Soup-of-Experts vs the dense SLM.

    python benchmarks/projected_overhead.py --preset small --preset medium --rounds 5

Each architecture runs the trainer's own compiled step (AdamW, clipping, the CPU
streams) at the preset's batch and context on the same token stream, pn and soup on
cluster-grouped batches (k clusters, h basis matrices). Rounds alternate the three
models, so a slower moment of the machine hits all of them; the figure is the median
over rounds of the mean step time of `--steps` steps. Prints total parameters, active
parameters (one instantiated SLM), FLOPs per step and the step-time ratio to dense
(the paper's Table 2: pn 3.6 vs dense 2.2 GPU hours per 1B tokens, 1.6x).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlx_specialize.models.projected import ProjectedModel, ProjectionArgs
from mlx_specialize.accel.streams import blas_per_stream
from mlx_specialize.train.projected import ClusterBatches, SoupBatches
from mlx_specialize.train.trainer import TrainConfig, Trainer


class _Tok:
    """The trainer only needs a tokenizer's BOS id and fingerprint here."""

    bos_id, fingerprint = 1, "bench"


def build(arch: str, preset, k: int, basis: int, tokens: np.ndarray, labels: np.ndarray, run_dir: str) -> Trainer:
    mx.random.seed(0)
    args = preset.model_args()
    cfg = TrainConfig(steps=10_000, batch_size=preset.batch_size, context=preset.context, lr=preset.lr, warmup=10)
    split = ms.TokenizedSplit(tokens, len(tokens) * 4, 1, "random", 1)
    if arch == "dense":
        return Trainer(ms.Model(args), _Tok(), split, None, cfg, run_dir)
    model = ProjectedModel(args, ProjectionArgs(arch=arch, experts=k, basis=basis))
    source = SoupBatches if arch == "soup" else ClusterBatches
    batches = source(tokens, labels, preset.context, preset.context, preset.batch_size, k, 0)
    return Trainer(model, _Tok(), split, None, cfg, run_dir, batches=batches)


def time_steps(trainer: Trainer, step_fn, start: int, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(start, start + n):
        loss, _ = step_fn(*trainer._batch(i))
        mx.eval(loss, trainer.model.state, trainer.optimizer.state)
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", default=None)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--basis", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for name in args.preset or ["small"]:
        preset = ms.get_preset(name)
        rng = np.random.default_rng(0)
        n_windows = 2000
        tokens = rng.integers(2, preset.vocab, n_windows * preset.context + 1).astype(np.int32)
        labels = rng.integers(0, args.k, n_windows)
        runs = {}
        with tempfile.TemporaryDirectory() as tmp:
            for arch in ("dense", "pn", "soup"):
                trainer = build(arch, preset, args.k, args.basis, tokens, labels, f"{tmp}/{arch}")
                runs[arch] = [trainer, trainer._build_step(), []]
            with blas_per_stream(len(runs["dense"][0].streams)):
                for arch, (trainer, step_fn, _) in runs.items():
                    time_steps(trainer, step_fn, 0, 3)  # compile and warm up
                for r in range(args.rounds):
                    for arch, (trainer, step_fn, times) in runs.items():
                        times.append(time_steps(trainer, step_fn, 3 + r * args.steps, args.steps))
        dense_s = statistics.median(runs["dense"][2])
        tokens_per_step = preset.batch_size * preset.context
        print(f"\npreset {name}: batch {preset.batch_size} x {preset.context}, k = {args.k}, h = {args.basis}, "
              f"{args.rounds} rounds of {args.steps} steps")
        print(f"{'arch':6s} {'params':>9s} {'active':>9s} {'GFLOP/step':>11s} {'ms/step':>9s} {'tok/s':>8s} "
              f"{'x dense':>8s}  rounds (ms)")
        for arch, (trainer, _, times) in runs.items():
            total = sum(v.size for _, v in tree_flatten(trainer.model.parameters()))
            active = ms.count_params(trainer.model.args)["total"]
            flops = trainer.flops_per_token * tokens_per_step  # the model's count: pn / soup add their weights' making
            step = statistics.median(times)
            print(f"{arch:6s} {total / 1e6:8.2f}M {active / 1e6:8.2f}M {flops / 1e9:11.2f} {step * 1e3:9.1f} "
                  f"{tokens_per_step / step:8.0f} {step / dense_s:7.2f}x  {[round(t * 1e3, 1) for t in times]}")


if __name__ == "__main__":
    main()
