"""k-means: ours (MLX) vs scikit-learn and faiss-cpu on the same real vectors and k.

    python benchmarks/kmeans_vs_sklearn.py --window 48 --k 1024 --max-vectors 220000

Vectors: `hashed` embeddings (256 dimensions) of the non-overlapping `--window`-token
windows of minipile's generic train split (the standard protocol's generic mix, 8k
SentencePiece tokenizer), the paper's setting for importance sampling (k = 1024).
Each library clusters the same float32 vectors with Euclidean k-means from its own
k-means++ seeding, `--iters` Lloyd iterations at most, one run each (no n_init
restarts), in its own process, one after the other. Prints wall seconds, final inertia
(recomputed by us for all, with the same assignment code), and ratios to ours.
`--libs ours-sampled` is ours with faiss' own rule, fitting on at most 256 vectors per
centre (then assigning all): at 1M vectors and k = 1024 faiss fits on 262,144 of them.
Needs `pip install scikit-learn faiss-cpu` (benchmark only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MINIPILE = Path(__file__).resolve().parents[2] / "shared" / "minipile"
GENERIC = ["c-headers", "go-code", "kernel-docs", "manpages", "postgres-docs", "python-code", "python-docs"]


def make_vectors(path: Path, window: int, max_vectors: int, cache_dir: Path) -> None:
    import numpy as np

    import mlx_specialize  # noqa: F401  (loads the BLAS first)
    from mlx_specialize.methods import clusters as imp

    generic = ",".join(str(MINIPILE / f"{d}.jsonl.gz") for d in GENERIC)
    # the standard study's tokenizer (its mix's first characters), as BENCHMARKS.md's figures used
    tokenizer = imp.generic_tokenizer(generic, 8192, cache_dir, "leading")
    t0 = time.perf_counter()
    embedded = imp.embed_generic(generic, tokenizer, "hashed", window, cache_dir, max_windows=max_vectors)
    vectors = np.asarray(embedded.vectors, dtype=np.float32)
    np.save(path, vectors)
    print(f"vectors: {vectors.shape} from {generic.count(',') + 1} minipile domains, window {window}, "
          f"embedded in {time.perf_counter() - t0:.0f} s (cached after the first run)", flush=True)


def worker(lib: str, path: str, k: int, iters: int, out: str) -> None:
    import numpy as np

    if lib.startswith("ours"):
        import mlx_specialize  # noqa: F401  (loads the BLAS first)
        from mlx_specialize.data.clustering import kmeans

    x = np.load(path)
    t0 = time.perf_counter()
    if lib == "ours":
        centroids = kmeans(x, k, metric="euclidean", method="lloyd", seed=0, max_iter=iters).centroids
    elif lib == "ours-sampled":  # faiss' rule: fit on at most 256 vectors per centre
        centroids = kmeans(x, k, metric="euclidean", method="lloyd", seed=0, max_iter=iters,
                           max_points_per_centroid=256).centroids
    elif lib == "sklearn":
        from sklearn.cluster import KMeans

        centroids = KMeans(k, n_init=1, max_iter=iters, random_state=0).fit(x).cluster_centers_
    elif lib == "sklearn-minibatch":
        from sklearn.cluster import MiniBatchKMeans

        centroids = MiniBatchKMeans(k, n_init=1, max_iter=iters, random_state=0, batch_size=8192).fit(x).cluster_centers_
    else:
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=0, verbose=False)
        km.train(x)
        centroids = km.centroids
    seconds = time.perf_counter() - t0
    np.save(out, np.asarray(centroids, np.float32))
    print(json.dumps({"seconds": seconds}))


def inertia(path: str, centroids: str) -> float:
    import numpy as np

    import mlx_specialize  # noqa: F401
    from mlx_specialize.data.clustering import assign

    _, d2 = assign(np.load(path), np.load(centroids), "euclidean")
    return float(d2.astype(np.float64).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=48)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--max-vectors", type=int, default=220_000)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--libs", default="ours,sklearn,sklearn-minibatch,faiss")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "mlx-specialize")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        lib, path, k, iters, out = args.worker
        return worker(lib, path, int(k), int(iters), out)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vectors.npy"
        make_vectors(path, args.window, args.max_vectors, args.cache_dir)
        rows = []
        for lib in args.libs.split(","):
            out = Path(tmp) / f"{lib}.npy"
            # scikit-learn and faiss run without our BLAS loader: an OpenBLAS loaded with
            # RTLD_GLOBAL would take over their BLAS calls too (see backend.py).
            env = None if lib.startswith("ours") else {**os.environ, "MLXSPEC_BLAS": "off"}
            proc = subprocess.run([sys.executable, __file__, "--worker", lib, str(path), str(args.k), str(args.iters),
                                   str(out)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{lib}: failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}")
                continue
            seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            rows.append((lib, seconds, inertia(str(path), str(out))))
            print(f"{lib}: {seconds:.1f} s, inertia {rows[-1][2]:.6e}", flush=True)
    ours = dict((r[0], r) for r in rows).get("ours")
    print("\n| library | seconds | inertia | time / ours | inertia / ours |\n|---|---|---|---|---|")
    for lib, seconds, value in rows:
        ratio = f"{seconds / ours[1]:.2f}x" if ours else ""
        print(f"| {lib} | {seconds:.1f} | {value:.6e} | {ratio} | {value / ours[2]:.4f} |" if ours else
              f"| {lib} | {seconds:.1f} | {value:.6e} | | |")


if __name__ == "__main__":
    main()
