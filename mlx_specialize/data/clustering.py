"""k-means in MLX: k-means++ seeding, full-batch Lloyd or mini-batch, streaming assignment.

Vectors are float arrays [n, d] (numpy, possibly memory-mapped float16 shards); the work
is done in chunks of `chunk` rows as MLX matmuls, so n may exceed what fits in memory
for assignment and mini-batch training.

- `metric="euclidean"`: squared L2 distance; `"cosine"`: vectors and centroids are
  L2-normalised, distance = 2 - 2 cos (spherical k-means).
- Seeding: greedy k-means++ (2 + ln k candidates per centre, as scikit-learn) on a
  random sample of at most `init_sample` vectors; costs O(k x sample) instead of O(k x n).
  By default the sample holds 50,000 vectors, fewer for large k: at most
  `SEEDING_WORK / k` (8 per centre at k = 1024), so that seeding stays a small part of
  the run (the inertia it costs after Lloyd: BENCHMARKS.md).
- `method="lloyd"`: full passes until the inertia improves by less than `tol` (relative)
  or `max_iter`; `"minibatch"`: Sculley's mini-batch k-means with per-centre learning
  rates, `max_iter` passes over shuffled batches; `"auto"` picks Lloyd when the vectors
  fit in `memory_budget` bytes as float32.
- Empty clusters are re-seeded on the vectors farthest from their centre.
- Everything is seeded: the same vectors, k and seed give the same centroids.

Distances use ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 with one `addmm` per chunk; the
argmin needs only the last two terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .. import accel
from ..accel import auto_streams, blas_per_stream, make_streams, on_stream, row_slices
from ..errors import SpecializeError

METRICS = ("euclidean", "cosine")
SEEDING_WORK = 8_000_000  # centres x sampled vectors for the default k-means++ sample
# Bumped whenever the same vectors, k and seed may give other centroids (cache keys of
# clusterings include it): 2 = seeding sample 8M / k, the C++ assignment and update.
VERSION = 2


@dataclass
class KMeansResult:
    """centroids [k, d] float32; inertia: sum of squared distances to the nearest
    centroid; counts [k]: vectors per cluster; n_iter: passes run."""

    centroids: np.ndarray
    inertia: float
    counts: np.ndarray
    n_iter: int
    metric: str


def _prepare(x, metric: str) -> mx.array:
    x = mx.array(np.asarray(x, dtype=np.float32))
    if metric == "cosine":
        x = x / mx.maximum(mx.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


_streams: list = []  # the CPU streams the assignment's rows are split over, made once


def _assignment_streams() -> list:
    """One CPU stream per core ([None]: the default stream, on a GPU). MLX's argmin over
    a row of k scores runs on one thread; split by rows, it runs on every core."""
    if not _streams:
        _streams.extend(make_streams(auto_streams(1 << 20)))
    return _streams


def _nearest(x: mx.array, centroids: mx.array, c_norm2: mx.array) -> tuple[mx.array, mx.array]:
    """x [m, d], centroids [k, d] -> (labels [m] int32, squared distances [m]), the rows
    split over the assignment streams (run it inside `blas_per_stream`)."""
    streams = _assignment_streams()
    labels, dists = [], []
    for rows, stream in zip(row_slices(x.shape[0], len(streams)), streams):
        with on_stream(stream):
            part = x[rows]
            nearest, best = accel.nearest(part @ centroids.T, c_norm2)  # min over j of ||c_j||^2 - 2 x.c_j
            labels.append(nearest)
            dists.append(mx.maximum(best + (part * part).sum(axis=1), 0.0))
    return mx.concatenate(labels), mx.concatenate(dists)


def assign(vectors, centroids: np.ndarray, metric: str = "euclidean", chunk: int = 8192,
           world=None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every vector, streamed in chunks: (labels [n] int32,
    squared distances [n] float32). `vectors` may be a memory-mapped array.

    `world` (train.distributed.World, several processes): the processes take turns at
    the chunks and sum their results, so every one returns all labels."""
    _check_metric(metric)
    if len(vectors) and vectors.shape[1] != centroids.shape[1]:
        raise SpecializeError(f"vectors have {vectors.shape[1]} dimensions, centroids {centroids.shape[1]}")
    c = mx.array(centroids.astype(np.float32))
    c_norm2 = (c * c).sum(axis=1)
    if world is not None and world.size > 1:
        from ..runtime.distributed import all_sum

        labels, dists = np.zeros(len(vectors), np.int32), np.zeros(len(vectors), np.float32)
        with blas_per_stream(len(_assignment_streams()), world.local):
            for start in range(chunk * world.rank, len(vectors), chunk * world.size):
                lab, dist = _nearest(_prepare(vectors[start : start + chunk], metric), c, c_norm2)
                mx.eval(lab, dist)
                labels[start : start + chunk], dists[start : start + chunk] = np.array(lab), np.array(dist)
        summed = all_sum(mx.array(labels), world), all_sum(mx.array(dists), world)  # zeros elsewhere
        mx.eval(*summed)
        return np.array(summed[0]), np.array(summed[1])
    labels, dists = [], []
    with blas_per_stream(len(_assignment_streams())):
        for start in range(0, len(vectors), chunk):
            lab, dist = _nearest(_prepare(vectors[start : start + chunk], metric), c, c_norm2)
            mx.eval(lab, dist)
            labels.append(np.array(lab))
            dists.append(np.array(dist))
    if not labels:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(labels), np.concatenate(dists)


def kmeans_plus_plus(x: mx.array, k: int, rng: np.random.Generator) -> mx.array:
    """Greedy k-means++ seeding on x [m, d] (in memory): k rows of x."""
    m = x.shape[0]
    trials = 2 + int(math.log(k))
    x_norm2 = (x * x).sum(axis=1)
    first = int(rng.integers(m))
    chosen = [first]
    closest = mx.maximum(x_norm2 - 2 * (x @ x[first]) + x_norm2[first], 0.0)
    for _ in range(1, k):
        weights = np.array(closest, dtype=np.float64)
        total = weights.sum()
        if total <= 0:  # fewer distinct vectors than k
            candidates = rng.integers(m, size=trials)
        else:
            candidates = np.minimum(np.searchsorted(np.cumsum(weights), rng.random(trials) * total), m - 1)
        cand = mx.array(candidates.astype(np.int32))
        d = mx.maximum(x_norm2[None, :] - 2 * (x[cand] @ x.T) + x_norm2[cand][:, None], 0.0)  # [trials, m]
        new_closest = mx.minimum(closest[None, :], d)
        best = int(mx.argmin(new_closest.sum(axis=1)).item())
        chosen.append(int(candidates[best]))
        closest = new_closest[best]
    return x[mx.array(np.array(chosen, np.int32))]


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise SpecializeError(f"unknown metric '{metric}' (choose from {', '.join(METRICS)})")


def kmeans(
    vectors,
    k: int,
    metric: str = "euclidean",
    seed: int = 0,
    method: str = "auto",
    max_iter: int = 50,
    tol: float = 1e-4,
    init_sample: int | None = None,
    batch_size: int = 8192,
    chunk: int = 8192,
    memory_budget: int = 4 << 30,
    max_points_per_centroid: int | None = None,
    on_iter=None,
) -> KMeansResult:
    """Cluster `vectors` [n, d] into k clusters (see the module docstring).

    `on_iter(iteration, inertia)` is called after each pass (for progress).
    `max_points_per_centroid`: fit the centroids on a random sample of at most that many
    vectors per centre (faiss' rule, 256 by default there), then assign all n; None
    fits on all of them."""
    _check_metric(metric)
    n = len(vectors)
    if n == 0:
        raise SpecializeError("no vectors to cluster")
    if k < 1 or k > n:
        raise SpecializeError(f"cannot make {k} clusters from {n} vectors (k must be between 1 and {n})")
    if method == "auto":
        method = "lloyd" if n * vectors.shape[1] * 4 <= memory_budget else "minibatch"
    if method not in ("lloyd", "minibatch"):
        raise SpecializeError(f"unknown k-means method '{method}' (lloyd, minibatch or auto)")
    rng = np.random.default_rng(seed)
    if max_points_per_centroid is not None and n > max_points_per_centroid * k:
        fit_ids = np.sort(rng.choice(n, size=max_points_per_centroid * k, replace=False))
        fitted = kmeans(vectors[fit_ids], k, metric, seed, method, max_iter, tol, init_sample, batch_size, chunk,
                        memory_budget, None, on_iter)
        labels, dists = assign(vectors, fitted.centroids, metric, chunk)
        return KMeansResult(fitted.centroids, float(dists.astype(np.float64).sum()),
                            np.bincount(labels, minlength=k), fitted.n_iter, metric)
    if init_sample is None:
        init_sample = min(50_000, SEEDING_WORK // k)
    sample_ids = np.sort(rng.choice(n, size=min(n, max(init_sample, k)), replace=False))
    centroids = kmeans_plus_plus(_prepare(vectors[sample_ids], metric), k, rng)
    if method == "lloyd":
        return _lloyd(_prepare(vectors, metric), centroids, metric, max_iter, tol, chunk, on_iter)
    return _minibatch(vectors, centroids, metric, rng, max_iter, batch_size, chunk, on_iter)


def _normalize_centroids(c: mx.array, metric: str) -> mx.array:
    if metric == "cosine":
        return c / mx.maximum(mx.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return c


def _pass(x: mx.array, centroids: mx.array, chunk: int) -> tuple[mx.array, mx.array]:
    c_norm2 = (centroids * centroids).sum(axis=1)
    labels, dists = [], []
    with blas_per_stream(len(_assignment_streams())):
        for start in range(0, x.shape[0], chunk):
            lab, dist = _nearest(x[start : start + chunk], centroids, c_norm2)
            mx.eval(lab, dist)
            labels.append(lab)
            dists.append(dist)
    return mx.concatenate(labels), mx.concatenate(dists)


def _lloyd(x: mx.array, centroids: mx.array, metric: str, max_iter: int, tol: float, chunk: int, on_iter) -> KMeansResult:
    k = centroids.shape[0]
    previous = math.inf
    for it in range(1, max_iter + 1):
        labels, dists = _pass(x, centroids, chunk)
        inertia = float(dists.sum().item())
        if on_iter:
            on_iter(it, inertia)
        sums, counts = accel.cluster_sums(x, labels, k)
        centroids = mx.where(counts[:, None] > 0, sums / mx.maximum(counts[:, None], 1.0), centroids)
        centroids = _repair_empty(centroids, counts, x, dists)
        centroids = _normalize_centroids(centroids, metric)
        mx.eval(centroids)
        if previous - inertia <= tol * max(abs(inertia), 1e-12):
            break
        previous = inertia
    labels, dists = _pass(x, centroids, chunk)
    counts = np.bincount(np.array(labels), minlength=k)
    return KMeansResult(np.array(centroids), float(dists.sum().item()), counts, it, metric)


def _repair_empty(centroids: mx.array, counts: mx.array, x: mx.array, dists: mx.array) -> mx.array:
    """Move each empty cluster's centre onto one of the vectors farthest from theirs."""
    empty = np.flatnonzero(np.array(counts) == 0)
    if len(empty) == 0:
        return centroids
    far = np.argsort(-np.array(dists))[: len(empty)]
    updated = np.array(centroids)
    updated[empty[: len(far)]] = np.array(x[mx.array(far.astype(np.int32))])
    return mx.array(updated)


def _minibatch(vectors, centroids: mx.array, metric: str, rng: np.random.Generator, max_iter: int,
               batch_size: int, chunk: int, on_iter) -> KMeansResult:
    """Sculley (2010): per-centre counts give each centre the learning rate 1 / count."""
    n = len(vectors)
    k = centroids.shape[0]
    seen = mx.zeros((k,))
    for it in range(1, max_iter + 1):
        order = rng.permutation(n)
        with blas_per_stream(len(_assignment_streams())):
            for start in range(0, n, batch_size):
                ids = np.sort(order[start : start + batch_size])
                x = _prepare(vectors[ids], metric)
                labels, _ = _nearest(x, centroids, (centroids * centroids).sum(axis=1))
                sums, batch_counts = accel.cluster_sums(x, labels, k)
                seen = seen + batch_counts
                rate = batch_counts / mx.maximum(seen, 1.0)  # weight of this batch's mean
                means = sums / mx.maximum(batch_counts, 1.0)[:, None]
                centroids = mx.where(batch_counts[:, None] > 0, (1 - rate[:, None]) * centroids + rate[:, None] * means,
                                     centroids)
                centroids = _normalize_centroids(centroids, metric)
                mx.eval(centroids, seen)
        if on_iter:
            on_iter(it, math.nan)
    labels, dists = assign(vectors, np.array(centroids), metric, chunk)
    counts = np.bincount(labels, minlength=k)
    return KMeansResult(np.array(centroids), float(dists.astype(np.float64).sum()), counts, max_iter, metric)
