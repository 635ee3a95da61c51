"""The paper's Table 8 on minipile's standard protocol: each method at equal generic
pre-training FLOPs, domain test perplexity before fine-tuning and after fine-tuning on
100k and 1M domain tokens.

    MLXSPEC_CACHE=/tmp/protocache python benchmarks/method_table.py --preset small \
        --pretrain-tokens 400000 --methods finetune,mix,pn,soup --logs /tmp/t8

Runs `benchmarks/protocol.py --json` once per (method, domain-set size), keeping each
run's output in LOGS/METHOD-TOKENS.log (a run whose log is complete is not run again), then
prints one markdown table per target and the macro table: perplexity (bits per byte).
Fine-tuning budgets: --finetune-tokens for each size (default 120k for 100k, 360k for 1M).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = {"finetune": "SLM", "is": "SLM-is", "mix": "SLM-mix", "pn": "SLM-pn", "soup": "Soup-of-Experts"}


def run(method: str, tokens: int, finetune_tokens: int, args) -> dict:
    log = args.logs / f"{method}-{tokens}.log"
    last = log.read_text().strip().splitlines()[-1:] if log.exists() else []
    if not (last and last[0].startswith("{")):
        cmd = [sys.executable, str(HERE / "protocol.py"), "--method", method, "--preset", args.preset,
               "--pretrain-tokens", str(args.pretrain_tokens), "--domain-tokens", str(tokens),
               "--finetune-tokens", str(finetune_tokens), "--json", "--out", str(args.logs / f"runs-{method}-{tokens}")]
        with open(log, "w") as out:
            subprocess.run(cmd, stdout=out, stderr=subprocess.DEVNULL, check=True)
        last = log.read_text().strip().splitlines()[-1:]
    return json.loads(last[0])


def label(tokens: int) -> str:
    return f"{tokens / 1e6:g}M" if tokens >= 1_000_000 else f"{tokens // 1000}k"


def cell(ppl: float, bpb: float) -> str:
    return f"{ppl:.2f} ({bpb:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--pretrain-tokens", type=int, default=400_000)
    parser.add_argument("--methods", default="finetune,mix,pn,soup")
    parser.add_argument("--domain-tokens", default="100000,1000000")
    parser.add_argument("--finetune-tokens", default="120000,360000")
    parser.add_argument("--logs", type=Path, required=True)
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in args.domain_tokens.split(",")]
    budgets = [int(x) for x in args.finetune_tokens.split(",")]
    methods = args.methods.split(",")
    results = {(m, n): run(m, n, b, args) for m in methods for n, b in zip(sizes, budgets)}
    targets = [r["target"] for r in results[(methods[0], sizes[0])]["targets"]] + ["macro"]
    header = "| method | pre-training FLOPs | before | " + " | ".join(f"after {label(n)}" for n in sizes) + " |"
    for target in targets:
        print(f"\n{target}: test perplexity (bits per byte)\n")
        print(header)
        print("|---" * (3 + len(sizes)) + "|")
        for m in methods:
            rows = [results[(m, n)] for n in sizes]
            pick = [r["macro"] if target == "macro" else next(t for t in r["targets"] if t["target"] == target)
                    for r in rows]
            before = cell(pick[0]["ppl_before"], pick[0]["bpb_before"])
            after = " | ".join(cell(p["ppl_after"], p["bpb_after"]) for p in pick)
            print(f"| {NAMES.get(m, m)} | {rows[0]['pretrain']['flops']:.4g} | {before} | {after} |")


if __name__ == "__main__":
    main()
