"""Operations that other layers call by name, computed the platform's faster way where it
has one (the C++ kernels on x86 Linux) and with MLX's own ops everywhere else."""

from __future__ import annotations

import mlx.core as mx

from . import fastmath


def nearest(products: mx.array, norms: mx.array) -> tuple[mx.array, mx.array]:
    """k-means' assignment from products [m, k] = x c^T and norms [k] = ||c||^2: for each
    row, (index int32 [m], value [m]) of the smallest ||c_j||^2 - 2 x.c_j (the first on
    ties), i.e. the nearest centre and ||x - c||^2 - ||x||^2. No gradient.

    MLX's argmin reads a row one float at a time, and forming the shifted scores first
    (an `addmm` with a broadcast C, copied element by element) is a pass of its own; the
    C++ kernel does both in one vectorized pass per row."""
    kernels = fastmath.kernels() if products.dtype == norms.dtype == mx.float32 else None
    if kernels is not None and mx.default_device().type == mx.cpu:
        index, value = kernels.nearest(products, norms)
        return index, value
    scores = norms[None, :] - 2 * products
    index = mx.argmin(scores, axis=1)
    return index.astype(mx.int32), mx.take_along_axis(scores, index[:, None], axis=1)[:, 0]


def cluster_sums(x: mx.array, labels: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """k-means' update: (sums [k, d] of the rows of x [n, d] in each cluster of labels
    [n], counts [k] float32). MLX's scatter-add runs one element at a time on one thread;
    the C++ kernel adds each row into its cluster's sum as one vectorized pass."""
    kernels = fastmath.kernels() if x.dtype == mx.float32 else None
    if kernels is not None and mx.default_device().type == mx.cpu:
        sums, counts = kernels.cluster_sums(x, labels, k)
        return sums, counts
    sums = mx.zeros((k, x.shape[1]), x.dtype).at[labels].add(x)
    return sums, mx.zeros((k,)).at[labels].add(1.0)
