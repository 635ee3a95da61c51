"""Data-parallel training throughput: 1 process vs N processes under `mlx.launch`.

    python benchmarks/distributed_scaling.py --preset small --preset medium --procs 2

For each preset, rounds alternate: our trainer's compiled step in one plain process (its
default CPU streams), then the same global batch split over `--procs` processes with
`mlx.launch --backend ring` on this machine (each process its share of the cores, see
`train/parallel.py`). Each worker times `--steps` steps after a warm-up on random tokens
and reports, from rank 0: global tokens/s, step time, and the gradient all-reduce alone
(`nn.average_gradients` on gradient-shaped arrays, as the step calls it: the bytes and
the time per step), plus a raw 64 MiB `all_sum` for the link's bandwidth. Medians over
rounds; the ratio is N processes / 1 process, measured in the same run. A control runs
N independent processes at once, each 1/N of the batch with no communication at all: the
cost of sharing this machine's cores and memory, which one host per process would not pay.
And the N processes once more, started directly with the two variables mlx.launch gives
them (MLX_RANK, MLX_HOSTFILE): mlx.launch 0.32.4 forwards their output in a loop that
keeps a core busy (it polls the children's always-writable stdin), which on a 2-core
machine is half of it.

`--project` then prints the projected step time for N Macs over Thunderbolt from the
measured single-process step time, the gradient bytes and a link bandwidth
(`--link-gbps`, see BENCHMARKS.md for the figure's source), with a ring all-reduce moving
2 (N - 1) / N of the gradient bytes through every host's link.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlx_specialize as ms  # noqa: E402  first: loads the optimized BLAS before mlx.core
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten, tree_map  # noqa: E402

from mlx_specialize.data.tokens import TokenizedSplit  # noqa: E402
from mlx_specialize.runtime import distributed as dist  # noqa: E402
from mlx_specialize.accel.streams import blas_per_stream  # noqa: E402
from mlx_specialize.train.trainer import TrainConfig, Trainer  # noqa: E402


class _NoTokenizer:
    fingerprint = "benchmark"
    bos_id = 1


def _timed(fn, n: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def worker(args) -> None:
    """One process of the measurement; rank 0 prints one JSON line."""
    preset = ms.get_preset(args.preset)
    mx.random.seed(0)
    model = ms.Model(preset.model_args(args.vocab))
    tokens = np.random.default_rng(0).integers(3, args.vocab, 400_000).astype(np.uint16)
    batch = (args.batch_size or preset.batch_size) // args.alone_of  # control: 1/N of the batch, alone
    cfg = TrainConfig(steps=10**9, batch_size=batch, context=args.context or preset.context, warmup=10,
                      streams=1 if args.alone_of > 1 else 0)
    trainer = Trainer(model, _NoTokenizer(), TokenizedSplit(tokens, 0, 0, "random"), None, cfg, "/tmp/unused")
    w = trainer.world
    # Same weights everywhere, as Trainer.run makes them.
    model.update(dist.broadcast_tree(model.parameters(), w))
    step_fn = trainer._build_step()
    state = {"i": 0}

    def step():
        loss, _ = step_fn(*trainer._batch(state["i"]))
        mx.eval(loss, model.state, trainer.optimizer.state)
        state["i"] += 1

    with blas_per_stream(len(trainer.streams), max(w.local, args.alone_of)):
        step()  # compile
        step_s = _timed(step, args.steps)
        grads = tree_map(lambda p: mx.ones_like(p), model.trainable_parameters())
        grad_bytes = sum(v.nbytes for _, v in tree_flatten(grads))
        reduce_s = _timed(lambda: mx.eval(nn.average_gradients(grads, w.group)), 5) if w.size > 1 else 0.0
        big = mx.ones((16 * 2**20,))  # 64 MiB float32
        big_s = _timed(lambda: mx.eval(dist.all_sum(big, w)), 3) if w.size > 1 else 0.0
    if w.is_main:
        print(json.dumps({"processes": max(w.size, args.alone_of), "streams": len(trainer.streams), "step_s": step_s,
                          "tok_s": cfg.tokens_per_step / step_s, "tokens_per_step": cfg.tokens_per_step,
                          "grad_bytes": grad_bytes, "allreduce_s": reduce_s, "allsum_64mib_s": big_s}), flush=True)


def _launcher() -> str:
    local = Path(sys.executable).parent / "mlx.launch"
    return str(local) if local.exists() else shutil.which("mlx.launch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(args, preset: str, procs: int, control: bool = False, direct: bool = False) -> dict:
    """1 process, `procs` processes under mlx.launch, or (`control`) `procs` plain
    processes at once with 1/procs of the batch each (the slowest one's figures)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--preset", preset, "--steps", str(args.steps),
           "--vocab", str(args.vocab)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.context:
        cmd += ["--context", str(args.context)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if control:
        procs_ = [subprocess.Popen([*cmd, "--alone-of", str(procs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=env) for _ in range(procs)]
        results = [json.loads([l for l in p.communicate()[0].splitlines() if l.startswith("{")][-1]) for p in procs_]
        slowest = max(results, key=lambda r: r["step_s"])
        return {**slowest, "tokens_per_step": slowest["tokens_per_step"] * procs,
                "tok_s": slowest["tokens_per_step"] * procs / slowest["step_s"]}
    if direct:  # what mlx.launch does for a local ring, without its output-forwarding loop
        hostfile = Path(f"/tmp/mlxspec-bench-hosts-{os.getpid()}.json")
        port = _free_port()
        hostfile.write_text(json.dumps([[f"127.0.0.1:{port + r}"] for r in range(procs)]))
        ranks = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env={**env, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)})
                 for r in range(procs)]
        outs = [p.communicate()[0] for p in ranks]
        hostfile.unlink()
        return json.loads([l for l in outs[0].splitlines() if l.startswith("{")][-1])
    if procs > 1:
        cmd = [_launcher(), "-n", str(procs), "--backend", "ring", "--starting-port", str(_free_port()), "--", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"worker failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1])


def project(one: dict, link_gbps: float, hosts=(1, 2, 4, 8), latency_s: float = 50e-6) -> list[dict]:
    """Step time for N hosts: each computes 1/N of the global batch (this machine's
    measured step time / N), then a ring all-reduce of the gradients: 2 (N - 1) / N x
    bytes through each link, plus 2 (N - 1) hops of `latency_s`."""
    rows = []
    for n in hosts:
        compute = one["step_s"] / n
        comm = 0.0 if n == 1 else 2 * (n - 1) / n * one["grad_bytes"] / (link_gbps * 1e9 / 8) + 2 * (n - 1) * latency_s
        rows.append({"hosts": n, "compute_ms": compute * 1e3, "allreduce_ms": comm * 1e3,
                     "tok_s": one["tokens_per_step"] / (compute + comm),
                     "speedup": one["step_s"] / (compute + comm)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", action="append", default=None)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--context", type=int, default=0)
    ap.add_argument("--link-gbps", type=float, default=16.4, help="Thunderbolt TCP bandwidth for --project (Gb/s).")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--alone-of", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.preset = args.preset[0] if args.preset else "small"
        return worker(args)
    for preset in args.preset or ["small"]:
        n = args.procs
        runs = {"1 process": [], f"{n} processes (mlx.launch)": [], f"{n} processes (started directly)": [],
                f"{n} alone, no communication": []}
        for _ in range(args.rounds):
            for label, procs, control, direct in zip(runs, (1, n, n, n), (0, 0, 0, 1), (0, 0, 1, 0)):
                runs[label].append(run_worker(args, preset, procs, bool(control), bool(direct)))
        med = {k: {f: statistics.median(r[f] for r in rs) for f in rs[0]} for k, rs in runs.items()}
        one, launched, many, alone = med.values()
        print(f"\n{preset}: batch {one['tokens_per_step']:,} tokens/step, gradients {one['grad_bytes'] / 2**20:.2f} MiB")
        print("| run | streams each | tok/s | step ms | all-reduce ms/step | 64 MiB all_sum ms |")
        print("|---|---|---|---|---|---|")
        for label, m in med.items():
            print(f"| {label} | {m['streams']:.0f} | {m['tok_s']:,.0f} | {m['step_s'] * 1e3:,.1f} | "
                  f"{m['allreduce_s'] * 1e3:,.1f} | {m['allsum_64mib_s'] * 1e3:,.0f} |")
        print(f"ratio {n} processes / 1: {launched['tok_s'] / one['tok_s']:.2f}x under mlx.launch, "
              f"{many['tok_s'] / one['tok_s']:.2f}x started directly; {n} processes started directly / "
              f"{n} alone: {many['tok_s'] / alone['tok_s']:.2f}x")
        print("rounds tok/s: " + "; ".join(f"{k}: {[round(r['tok_s']) for r in rs]}" for k, rs in runs.items()))
        print(f"projection over a {args.link_gbps} Gb/s link (this machine's 1-process step as each host's compute):")
        print("| hosts | compute ms | all-reduce ms | tok/s | speed-up |")
        print("|---|---|---|---|---|")
        for r in project(one, args.link_gbps):
            print(f"| {r['hosts']} | {r['compute_ms']:,.1f} | {r['allreduce_ms']:,.2f} | {r['tok_s']:,.0f} | "
                  f"{r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
