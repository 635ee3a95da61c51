"""Training throughput: our compiled MLX step vs PyTorch CPU eager, same model and batch.

    python benchmarks/train_throughput.py --preset small --preset medium

For each preset: the same llama-style model (RMSNorm, RoPE, SDPA, SwiGLU, tied
embeddings, float32), the same batch shape, AdamW + gradient clipping in both. Rounds
alternate MLX (our defaults), MLX with one stream, and PyTorch (with `--torch-bf16`, also
PyTorch with bf16 autocast; with `--mlx-bf16`, MLX with `precision="bf16"`; with `--ablate`, also MLX with two streams, without the fast
math, without the buffer cache, and plain); each
round times `--steps` steps after its own warm-up, in a fresh process, so neither
framework's idle BLAS/OpenMP threads steal cores from the other, and drifts of machine
speed hit all alike. Prints tokens/s of each (median over rounds), the ratio MLX /
PyTorch, and MLX's achieved FLOP/s (6N + attention per token, see `flops_per_token`) as
a fraction of the float32 matmul peak measured in the same run.

Needs `pip install torch` (not a dependency of the package).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import mlx.core as mx
import numpy as np
from mlx_specialize.accel.backend import BLAS, matmul_gflops
from mlx_specialize.data.tokens import TokenizedSplit
from mlx_specialize.accel.streams import blas_per_stream
from mlx_specialize.train.trainer import TrainConfig, Trainer


class _NoTokenizer:
    """Random tokens need no tokenizer; the trainer reads these two facts of one."""

    fingerprint = "benchmark"
    bos_id = 1  # masked as a target, as with our SentencePiece tokenizers


def mlx_stepper(preset, batch_size: int, context: int, vocab: int, seed: int = 0, streams: int = 0,
                precision: str = "float32"):
    """Our trainer's compiled step on random tokens (`streams` 0: the trainer's default);
    returns step() -> loss float."""
    mx.random.seed(seed)
    model = ms.Model(preset.model_args(vocab))
    tokens = np.random.default_rng(seed).integers(3, vocab, 200_000).astype(np.uint16)
    cfg = TrainConfig(steps=10**9, batch_size=batch_size, context=context, warmup=10, streams=streams,
                      precision=precision)
    trainer = Trainer(model, _NoTokenizer(), TokenizedSplit(tokens, 0, 0, "random"), None, cfg, "/tmp/unused")
    step_fn = trainer._build_step()
    state = {"i": 0}
    state["blas"] = contextlib.ExitStack()  # as Trainer.run does: one BLAS thread per stream
    state["blas"].enter_context(blas_per_stream(len(trainer.streams)))

    def step():
        loss, _ = step_fn(*trainer._batch(state["i"]))
        mx.eval(loss, model.state, trainer.optimizer.state)
        state["i"] += 1
        return loss.item()

    step.release = state["blas"].close  # restore BLAS threads when done with this stepper
    return step


def torch_stepper(preset, batch_size: int, context: int, vocab: int, seed: int = 0, bf16: bool = False):
    """The same model in PyTorch eager (float32), AdamW, clip 5.0; `bf16`: forward and
    loss under `torch.autocast("cpu", torch.bfloat16)` (the issue's stretch peer)."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    torch.manual_seed(seed)
    D, F_, H, L = preset.hidden, preset.mlp, preset.heads, preset.layers
    Dh = D // H

    class RMSNorm(tnn.Module):
        def __init__(self):
            super().__init__()
            self.weight = tnn.Parameter(torch.ones(D))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight

    inv = 1.0 / (10000 ** (torch.arange(0, Dh, 2).float() / Dh))
    ang = torch.outer(torch.arange(context).float(), inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope(x):
        x1, x2 = x[..., : Dh // 2], x[..., Dh // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = RMSNorm(), RMSNorm()
            self.qkv = tnn.Linear(D, 3 * D, bias=False)
            self.o = tnn.Linear(D, D, bias=False)
            self.gate, self.up = tnn.Linear(D, F_, bias=False), tnn.Linear(D, F_, bias=False)
            self.down = tnn.Linear(F_, D, bias=False)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.n1(x)).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
            h = x + self.o(a.transpose(1, 2).reshape(B, T, D))
            m = self.n2(h)
            return h + self.down(F.silu(self.gate(m)) * self.up(m))

    class LM(tnn.Module):
        def __init__(self):
            super().__init__()
            self.emb = tnn.Embedding(vocab, D)
            self.blocks = tnn.ModuleList([Block() for _ in range(L)])
            self.norm = RMSNorm()

        def forward(self, x):
            h = self.emb(x)
            for b in self.blocks:
                h = b(h)
            return self.norm(h) @ self.emb.weight.T

    model = LM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)

    def step():
        batch = torch.randint(3, vocab, (batch_size, context + 1), generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss.item()

    return step


def time_steps(step, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


def resolve(name: str):
    """A preset by name, or `shape:LAYERS,HIDDEN,HEADS,MLP` for any other size (the
    `small` preset's training settings), e.g. the issue's 9M model: shape:6,256,4,688."""
    if not name.startswith("shape:"):
        return ms.get_preset(name)
    from mlx_specialize.models.presets import with_overrides

    layers, hidden, heads, mlp = (int(v) for v in name.split(":", 1)[1].split(","))
    return with_overrides(ms.get_preset("small"), name=name, layers=layers, hidden=hidden, heads=heads, mlp=mlp)


def worker(framework: str, preset_name: str, batch: int, context: int, vocab: int, steps: int) -> None:
    """One measurement in a fresh process: warm up, time `steps` steps, print tok/s."""
    preset = resolve(preset_name)
    if framework.startswith("mlx"):
        step = mlx_stepper(preset, batch, context, vocab, precision="bf16" if framework == "mlx-bf16" else "float32")
    else:
        step = torch_stepper(preset, batch, context, vocab, bf16=framework == "torch-bf16")
    step(), step()  # compile / allocate
    print(json.dumps({"tok_s": batch * context * steps / time_steps(step, steps)}))


# MLX runs with one speed-up turned off (`--ablate`), each against the defaults ("mlx")
ABLATIONS = {
    "mlx-1stream": {"MLXSPEC_STREAMS": "1"},
    "mlx-2streams": {"MLXSPEC_STREAMS": "2"},
    "mlx-no-fastmath": {"MLXSPEC_FAST_MATH": "0"},
    "mlx-no-buffer-cache": {"MLXSPEC_BUFFER_CACHE": "0"},
    "mlx-plain": {"MLXSPEC_STREAMS": "1", "MLXSPEC_FUSED_CE": "0", "MLXSPEC_FAST_MATH": "0",
                  "MLXSPEC_BUFFER_CACHE": "0"},
}


def measure(framework: str, name: str, batch: int, context: int, vocab: int, steps: int) -> float:
    worker_kind = framework if framework in ("torch", "torch-bf16", "mlx-bf16") else "mlx"
    cmd = [sys.executable, __file__, "--worker", worker_kind, "--preset", name, "--batch-size", str(batch),
           "--context", str(context), "--vocab", str(vocab), "--steps", str(steps)]
    # PyTorch runs with our BLAS loader off: an OpenBLAS loaded with RTLD_GLOBAL takes over
    # torch's own BLAS calls too and made PyTorch 5.5x slower here (420 vs 2,300 tok/s).
    env = {**os.environ, "MLXSPEC_BLAS": "off"} if framework.startswith("torch") else dict(os.environ)
    env.update(ABLATIONS.get(framework, {}))
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])["tok_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append",
                        help="preset(s) to measure, or shape:LAYERS,HIDDEN,HEADS,MLP [small, medium]")
    parser.add_argument("--batch-size", type=int, help="windows per step [preset's]")
    parser.add_argument("--context", type=int, help="tokens per window [preset's]")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ablate", action="store_true",
                        help="also time MLX with each speed-up off in turn, and with all of them off")
    parser.add_argument("--torch-bf16", action="store_true",
                        help="also time PyTorch with bf16 autocast (the issue's stretch target)")
    parser.add_argument("--mlx-bf16", action="store_true",
                        help="also time MLX with precision bf16 (needs MKL and a CPU with AMX or AVX512-BF16)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=["mlx", "mlx-bf16", "torch", "torch-bf16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.preset[0], args.batch_size, args.context, args.vocab, args.steps)
    import torch

    peak = matmul_gflops(1024)
    print(f"BLAS: {BLAS.name or 'reference (none loaded)'}; MLX float32 matmul peak {peak:.0f} GFLOP/s; "
          f"torch {torch.__version__} threads {torch.get_num_threads()}; each figure from its own process")
    results = []
    for name in args.preset or ["small", "medium"]:
        preset = resolve(name)
        B, T = args.batch_size or preset.batch_size, args.context or preset.context
        flops_tok = ms.flops_per_token(preset.model_args(args.vocab), T)
        rates = {"mlx": [], "mlx-1stream": [], "torch": []}
        if args.torch_bf16:
            rates["torch-bf16"] = []
        if args.mlx_bf16:
            rates["mlx-bf16"] = []
        if args.ablate:
            rates.update({key: [] for key in ABLATIONS if key != "mlx-1stream"})
        for _ in range(args.rounds):  # alternate, so drifts of machine speed hit both
            for key in rates:
                rates[key].append(measure(key, name, B, T, args.vocab, args.steps))
        mlx_tok_s, torch_tok_s = statistics.median(rates["mlx"]), statistics.median(rates["torch"])
        row = {
            "preset": name, "params": ms.count_params(preset.model_args(args.vocab))["total"],
            "batch": B, "context": T, "vocab": args.vocab,
            "mlx_tok_s": mlx_tok_s, "torch_tok_s": torch_tok_s, "ratio_mlx_over_torch": mlx_tok_s / torch_tok_s,
            "mlx_1stream_tok_s": statistics.median(rates["mlx-1stream"]),
            "mlx_gflops": mlx_tok_s * flops_tok / 1e9, "fraction_of_matmul_peak": mlx_tok_s * flops_tok / 1e9 / peak,
            "rounds": {k: [round(r) for r in v] for k, v in rates.items()},
        }
        if args.torch_bf16:
            row["torch_bf16_tok_s"] = statistics.median(rates["torch-bf16"])
            row["ratio_mlx_over_torch_bf16"] = mlx_tok_s / row["torch_bf16_tok_s"]
        if args.mlx_bf16:
            row["mlx_bf16_tok_s"] = statistics.median(rates["mlx-bf16"])
        if args.ablate:
            row["ablations_tok_s"] = {k: statistics.median(v) for k, v in rates.items() if k.startswith("mlx-")}
        results.append(row)
        print(f"{name:8s} {row['params'] / 1e6:5.1f}M params  B={B} T={T}  MLX {mlx_tok_s:8,.0f} tok/s  "
              f"PyTorch {torch_tok_s:8,.0f} tok/s  ratio {row['ratio_mlx_over_torch']:.2f}x  "
              f"(MLX one stream {row['mlx_1stream_tok_s']:,.0f} tok/s)  "
              f"MLX {row['mlx_gflops']:.1f} GFLOP/s = {row['fraction_of_matmul_peak']:.1%} of matmul peak  "
              f"(rounds: {row['rounds']})")
        if args.torch_bf16:
            print(f"    PyTorch bf16 autocast {row['torch_bf16_tok_s']:8,.0f} tok/s   MLX / that "
                  f"{row['ratio_mlx_over_torch_bf16']:.2f}x")
        if args.mlx_bf16:
            peers = [("PyTorch", torch_tok_s)] + ([("PyTorch bf16", row["torch_bf16_tok_s"])] if args.torch_bf16 else [])
            print(f"    MLX bf16 {row['mlx_bf16_tok_s']:8,.0f} tok/s   "
                  + "   ".join(f"/ {name} {row['mlx_bf16_tok_s'] / rate:.2f}x" for name, rate in peers))
        for key, tok_s in row.get("ablations_tok_s", {}).items():
            print(f"    {key:20s} {tok_s:8,.0f} tok/s   defaults are {mlx_tok_s / tok_s:.2f}x this")
    if args.json:
        print(json.dumps({"matmul_peak_gflops": peak, "results": results}))


if __name__ == "__main__":
    main()
