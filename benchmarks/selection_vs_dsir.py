"""Selection throughput: our SLM-is selector vs DSIR's `HashedNgramDSIR`, same windows, same target.

    python benchmarks/selection_vs_dsir.py --target perl-docs --window 256 --k 64

The generic set is the standard protocol's generic train split cut into `--window`-token
windows (8k SentencePiece tokenizer), the target the first `--domain-tokens` tokens of the
target's train split cut the same way. Both select as many windows as make `--tokens`
tokens, from scratch (no cache):
- ours: hashed embeddings of generic and target windows, cosine k-means (k = `--k`) over
  the generic ones, assignment of the target's, cluster-first resampling;
- DSIR (`pip install data-selection`, benchmark only): hashed word uni/bi-gram features,
  bag-of-n-grams importance weights, Gumbel top-k, on the same window texts written as
  JSON lines (writing them is not timed).
Prints seconds and generic windows per second for each, and KL(P(c|D) || selected) of both
selections measured on our clusters (how well each matches the target's cluster histogram).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import numpy as np

from mlx_specialize.methods import clusters as imp
from mlx_specialize.data.clustering import assign, kmeans
from mlx_specialize.data.embedding import HashedEmbedder, window_texts
from mlx_specialize.data.selection import histogram, kl_divergence, select

MINIPILE = Path(__file__).resolve().parents[2] / "shared" / "minipile"
GENERIC = ["c-headers", "go-code", "kernel-docs", "manpages", "postgres-docs", "python-code", "python-docs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="perl-docs")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=400_000)
    parser.add_argument("--domain-tokens", type=int, default=100_000)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "mlx-specialize")
    args = parser.parse_args()
    generic = ",".join(str(MINIPILE / f"{d}.jsonl.gz") for d in GENERIC)
    # the standard study's tokenizer (its mix's first characters), as BENCHMARKS.md's figures used
    tokenizer = imp.generic_tokenizer(generic, 8192, args.cache_dir, "leading")
    g_split = imp.corpus_split(generic, "train", tokenizer, args.cache_dir)
    d_split = imp.corpus_split(str(MINIPILE / f"{args.target}.jsonl.gz"), "train", tokenizer, args.cache_dir,
                               args.domain_tokens)
    g_texts = window_texts(g_split.tokens, tokenizer, args.window)
    d_texts = window_texts(d_split.tokens, tokenizer, args.window)
    n = -(-args.tokens // args.window)
    print(f"generic {len(g_texts):,} windows, target {len(d_texts):,} windows of {args.window} tokens; select {n:,}")

    t0 = time.perf_counter()
    embedder = HashedEmbedder().fit_idf(g_texts)
    g_vec = np.concatenate([embedder.embed(g_texts[i : i + 1024]) for i in range(0, len(g_texts), 1024)])
    d_vec = embedder.embed(d_texts)
    result = kmeans(g_vec, args.k, metric="cosine", seed=0)
    g_labels, _ = assign(g_vec, result.centroids, "cosine")
    d_labels, _ = assign(d_vec, result.centroids, "cosine")
    ours = select(g_labels, d_labels, args.k, n, "cluster", seed=0)
    ours_s = time.perf_counter() - t0

    from data_selection import HashedNgramDSIR

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, texts in (("generic", g_texts), ("target", d_texts)):
            with open(tmp / f"{name}.jsonl", "w") as f:
                f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
        t0 = time.perf_counter()
        dsir = HashedNgramDSIR([str(tmp / "generic.jsonl")], [str(tmp / "target.jsonl")], str(tmp / "cache"),
                               num_proc=2, min_example_length=1)
        dsir.fit_importance_estimator(num_tokens_to_fit="auto")
        dsir.compute_importance_weights()
        dsir.resample(out_dir=str(tmp / "out"), num_to_sample=n, cache_dir=str(tmp / "rcache"))
        dsir_s = time.perf_counter() - t0
        chosen = [json.loads(line)["text"] for f in sorted((tmp / "out").glob("*.jsonl")) for line in open(f)]
    index = {t: i for i, t in enumerate(g_texts)}
    dsir_ids = np.array([index[t] for t in chosen if t in index])
    p_domain = histogram(d_labels, args.k)
    print("| selector | seconds | generic windows/s | KL(P(c|D) || selected) on our clusters |")
    print("|---|---|---|---|")
    print(f"| ours (hashed + k-means k={args.k} + cluster sampler) | {ours_s:.1f} | {len(g_texts) / ours_s:,.0f} | "
          f"{ours.kl_selected:.4f} |")
    print(f"| DSIR HashedNgramDSIR | {dsir_s:.1f} | {len(g_texts) / dsir_s:,.0f} | "
          f"{kl_divergence(p_domain, histogram(g_labels[dsir_ids], args.k)):.4f} |")
    print(f"(generic set as is: KL {ours.kl_generic:.4f}; DSIR selected {len(dsir_ids):,} windows)")


if __name__ == "__main__":
    main()
