"""Hashed vs MiniLM clusters on minipile's standard protocol, side by side.

    MLXSPEC_CACHE=/tmp/protocache python benchmarks/embedder_comparison.py
    python benchmarks/embedder_comparison.py --report        # the tables, from the results file

For each embedder (`hashed`, `minilm`) the protocol's generic set (the train splits of its
seven generic domains, 256-token windows of the 8k tokenizer) is embedded once and
clustered with cosine k-means at each method's k (SLM-is 64, SLM-mix 4, SLM-pn 16). Cells:

- `clusters` (embedder, k): purity and NMI of the clusters vs the seven generic domains
  (a window belongs to the domain its first token comes from), and the entropy of each
  target's cluster histogram (its first `--domain-tokens` train tokens' windows) against
  its maximum log k: a flat histogram is one the clustered methods cannot exploit;
- `protocol` (embedder, method): `benchmarks/protocol.py` at the same budget for both
  embedders (preset, pre-training tokens, domain tokens, fine-tuning budget, seed): test
  perplexity and bits per byte of each target before and after fine-tuning, and macro.

Each finished cell is one JSON line appended to `--results` (default
benchmarks/results/embedders.jsonl); a cell already there is never run again, so an
interrupted run continues where it stopped. Embedding the generic set with MiniLM is the
long part (~12 M tokens); it is cached in the cache folder and resumes by shard.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import numpy as np

from cluster_quality import nmi, purity
from protocol import GENERIC, TARGETS

HERE = Path(__file__).resolve().parent
METHOD_K = {"is": 64, "mix": 4, "pn": 16}


def cell_key(cell: dict) -> tuple:
    return tuple(cell[k] for k in ("kind", "embedder", "k", "method", "preset", "pretrain_tokens", "domain_tokens",
                                   "seed") if k in cell)


def done_cells(path: Path) -> dict:
    if not path.is_file():
        return {}
    cells = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {cell_key(c): c for c in cells}


def append(path: Path, cell: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(cell, default=float) + "\n")


def clusters_cell(minipile: Path, embedder: str, k: int, args, cache_dir: Path) -> dict:
    """Embed (cached) and cluster the protocol's generic set; purity, NMI, targets' entropy."""
    from mlx_specialize.methods import clusters as imp

    generic = ",".join(str(minipile / f"{d}.jsonl.gz") for d in GENERIC)
    # the standard study's tokenizer (its mix's first characters), as BENCHMARKS.md's figures used
    tokenizer = imp.generic_tokenizer(generic, 8192, cache_dir, "leading")
    t0 = time.perf_counter()
    clusters, _ = imp.cached_clusters(generic, tokenizer, embedder, args.window, k, "cosine", args.seed, cache_dir)
    seconds = time.perf_counter() - t0
    # the domain of each generic window: the seven train splits are concatenated in order
    sizes = [imp.corpus_split(str(minipile / f"{d}.jsonl.gz"), "train", tokenizer, cache_dir).n_tokens for d in GENERIC]
    total = imp.corpus_split(generic, "train", tokenizer, cache_dir).n_tokens
    if sum(sizes) != total:
        raise SystemExit(f"the generic stream ({total} tokens) is not its domains' streams concatenated ({sum(sizes)})")
    starts = np.arange(len(clusters.labels)) * args.window
    truth = np.searchsorted(np.cumsum(sizes), starts, side="right")
    targets = {}
    for target in TARGETS:
        domain = imp.corpus_split(str(minipile / f"{target}.jsonl.gz"), "train", tokenizer, cache_dir,
                                  max_tokens=args.domain_tokens)
        labels = imp.domain_histogram_labels(clusters, domain, tokenizer, cache_dir)
        p = np.bincount(labels, minlength=k) / len(labels)
        targets[target] = {"entropy": float(-(p[p > 0] * np.log(p[p > 0])).sum()), "top_share": float(p.max()),
                           "windows": int(len(labels))}
    return {"kind": "clusters", "embedder": embedder, "k": k, "window": args.window, "seed": args.seed,
            "domain_tokens": args.domain_tokens, "windows": int(len(clusters.labels)),
            "purity": purity(clusters.labels, truth), "nmi": nmi(clusters.labels, truth),
            "max_entropy": math.log(k), "targets": targets, "seconds": seconds}


def protocol_cell(embedder: str, method: str, args, cache_dir: Path) -> dict:
    """One `protocol.py` run (its own process), its JSON kept."""
    cmd = [sys.executable, str(HERE / "protocol.py"), "--minipile", str(args.minipile), "--method", method,
           "--embedder", embedder, "--k", str(METHOD_K[method]), "--preset", args.preset,
           "--pretrain-tokens", str(args.pretrain_tokens), "--domain-tokens", str(args.domain_tokens),
           "--finetune-tokens", str(args.finetune_tokens), "--seed", str(args.seed), "--cache-dir", str(cache_dir),
           "--json"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"protocol.py failed for {embedder} {method}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"kind": "protocol", "embedder": embedder, "method": method, "k": METHOD_K[method], "preset": args.preset,
            "pretrain_tokens": args.pretrain_tokens, "domain_tokens": args.domain_tokens,
            "finetune_tokens": args.finetune_tokens, "seed": args.seed, "targets": result["targets"],
            "macro": result["macro"], "pretrain": result["pretrain"], "seconds": time.perf_counter() - t0}


def report(cells: list[dict]) -> None:
    print("| embedder | k | purity | NMI | " + " | ".join(f"{t} entropy (top share)" for t in TARGETS) + " | max |")
    print("|---|---|---|---|" + "---|" * (len(TARGETS) + 1))
    for c in sorted((c for c in cells if c["kind"] == "clusters"), key=lambda c: (c["k"], c["embedder"])):
        ts = " | ".join(f"{c['targets'][t]['entropy']:.2f} ({c['targets'][t]['top_share']:.2f})" for t in TARGETS)
        print(f"| {c['embedder']} | {c['k']} | {c['purity']:.3f} | {c['nmi']:.3f} | {ts} | {c['max_entropy']:.2f} |")
    print()
    print("| method | embedder | " + " | ".join(f"{t} ppl before / after" for t in TARGETS)
          + " | macro ppl before / after | macro bits/byte after |")
    print("|---|---|" + "---|" * (len(TARGETS) + 2))
    for c in sorted((c for c in cells if c["kind"] == "protocol"), key=lambda c: (c["method"], c["embedder"])):
        rows = {r["target"]: r for r in c["targets"]}
        ts = " | ".join(f"{rows[t]['ppl_before']:.2f} / {rows[t]['ppl_after']:.2f}" for t in TARGETS)
        m = c["macro"]
        print(f"| {c['method']} (k = {c['k']}) | {c['embedder']} | {ts} | {m['ppl_before']:.2f} / {m['ppl_after']:.2f} "
              f"| {m['bpb_after']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minipile", type=Path, default=HERE.parents[1] / "shared" / "minipile")
    parser.add_argument("--embedders", default="hashed,minilm")
    parser.add_argument("--methods", default="is,mix,pn")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--pretrain-tokens", type=int, default=400_000)
    parser.add_argument("--domain-tokens", type=int, default=100_000)
    parser.add_argument("--finetune-tokens", type=int, default=120_000)
    parser.add_argument("--window", type=int, default=256, help="window tokens (the small preset's context)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=HERE / "results" / "embedders.jsonl")
    parser.add_argument("--only", choices=["clusters", "protocol"], help="run only these cells")
    parser.add_argument("--report", action="store_true", help="print the tables from --results and stop")
    args = parser.parse_args()

    if args.report:
        report(list(done_cells(args.results).values()))
        return
    missing = [d for d in GENERIC + TARGETS if not (args.minipile / f"{d}.jsonl.gz").is_file()]
    if missing:
        raise SystemExit(f"error: minipile files missing in {args.minipile}: {', '.join(missing)}")
    cache_dir = ms.default_cache_dir()
    embedders, methods = args.embedders.split(","), args.methods.split(",")
    plan = []
    if args.only != "protocol":
        plan += [("clusters", e, k) for e in embedders for k in sorted({METHOD_K[m] for m in methods})]
    if args.only != "clusters":
        plan += [("protocol", e, m) for m in methods for e in embedders]
    for kind, embedder, what in plan:
        done = done_cells(args.results)
        if kind == "clusters":
            key = cell_key({"kind": kind, "embedder": embedder, "k": what, "domain_tokens": args.domain_tokens,
                            "seed": args.seed})
        else:
            key = cell_key({"kind": kind, "embedder": embedder, "k": METHOD_K[what], "method": what,
                            "preset": args.preset, "pretrain_tokens": args.pretrain_tokens,
                            "domain_tokens": args.domain_tokens, "seed": args.seed})
        if key in done:
            continue
        print(f"running {kind} {embedder} {what}", flush=True)
        cell = (clusters_cell(args.minipile, embedder, what, args, cache_dir) if kind == "clusters"
                else protocol_cell(embedder, what, args, cache_dir))
        append(args.results, cell)
        print(f"done {kind} {embedder} {what} in {cell['seconds']:.0f} s", flush=True)
    report(list(done_cells(args.results).values()))


if __name__ == "__main__":
    main()
