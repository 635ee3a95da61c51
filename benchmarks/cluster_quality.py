"""Clustering quality: do k-means clusters of window embeddings follow minipile's domains?

    python benchmarks/cluster_quality.py --embedder hashed --per-domain 3000 --k 16 --k 64 --k 256
    python benchmarks/cluster_quality.py --embedder hashed --embedder minilm --per-domain 150 --window 128

Windows of `--window` tokens (8k SentencePiece tokenizer of the standard protocol's
generic mix) from the train split of each of the seven generic domains, `--per-domain`
evenly spaced windows each, labelled by their domain. Each embedder embeds them (the
hashed embedder's IDF is fitted on the same windows); cosine k-means (ours, seed 0) for
each k; purity (share of windows in their cluster's majority domain) and normalized
mutual information (arithmetic mean normalisation, as scikit-learn's default) between
clusters and domains, and embedding speed in windows per second.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import numpy as np

from mlx_specialize.methods import clusters as imp
from mlx_specialize.data.clustering import assign, kmeans
from mlx_specialize.data.embedding import HashedEmbedder, make_embedder, window_texts

MINIPILE = Path(__file__).resolve().parents[2] / "shared" / "minipile"
GENERIC = ["c-headers", "go-code", "kernel-docs", "manpages", "postgres-docs", "python-code", "python-docs"]


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    total = 0
    for c in np.unique(labels):
        total += np.bincount(truth[labels == c]).max()
    return total / len(labels)


def nmi(labels: np.ndarray, truth: np.ndarray) -> float:
    """Normalized mutual information, arithmetic normalisation."""
    n = len(labels)
    joint = np.zeros((labels.max() + 1, truth.max() + 1))
    np.add.at(joint, (labels, truth), 1)
    p = joint / n
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = np.sum(p[nz] * np.log(p[nz] / (pa[:, None] * pb[None, :])[nz]))
    ha, hb = -np.sum(pa[pa > 0] * np.log(pa[pa > 0])), -np.sum(pb[pb > 0] * np.log(pb[pb > 0]))
    return float(mi / max((ha + hb) / 2, 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", action="append", help="hashed and/or minilm [hashed]")
    parser.add_argument("--k", type=int, action="append", help="cluster counts [16, 64, 256]")
    parser.add_argument("--per-domain", type=int, default=3000)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "mlx-specialize")
    args = parser.parse_args()
    ks = args.k or [16, 64, 256]
    generic = ",".join(str(MINIPILE / f"{d}.jsonl.gz") for d in GENERIC)
    # the standard study's tokenizer (its mix's first characters), as BENCHMARKS.md's figures used
    tokenizer = imp.generic_tokenizer(generic, 8192, args.cache_dir, "leading")
    texts, truth = [], []
    for label, domain in enumerate(GENERIC):
        split = imp.corpus_split(str(MINIPILE / f"{domain}.jsonl.gz"), "train", tokenizer, args.cache_dir)
        total = len(split.tokens) // args.window
        for i in np.linspace(0, total - 1, min(total, args.per_domain)).astype(int):
            texts.append(window_texts(split.tokens, tokenizer, args.window, i, i + 1)[0])
            truth.append(label)
    truth = np.array(truth)
    print(f"{len(texts):,} windows of {args.window} tokens from {len(GENERIC)} domains")
    print("| embedder | windows/s | k | purity | NMI |\n|---|---|---|---|---|")
    for name in args.embedder or ["hashed"]:
        embedder = make_embedder(name)
        if isinstance(embedder, HashedEmbedder):
            embedder.fit_idf(texts)
        t0 = time.perf_counter()
        vectors = np.concatenate([embedder.embed(texts[i : i + 256]) for i in range(0, len(texts), 256)])
        speed = len(texts) / (time.perf_counter() - t0)
        for k in ks:
            if k > len(texts):
                continue
            result = kmeans(vectors, k, metric="cosine", seed=0)
            labels, _ = assign(vectors, result.centroids, "cosine")
            print(f"| {name} | {speed:,.0f} | {k} | {purity(labels, truth):.3f} | {nmi(labels, truth):.3f} |", flush=True)


if __name__ == "__main__":
    main()
