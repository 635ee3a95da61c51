"""Importance sampling of generic windows by cluster (SLM-is), DSIR-style: fit -> weights -> resample.

Given the cluster of every generic window (from k-means over their embeddings) and the
domain's windows assigned to the same centroids:

- fit: the histograms P(c|G) over generic windows and P(c|D) over domain windows;
- weights: w(c) = P(c|D) / P(c|G), the importance weight of every window of cluster c;
- resample, two samplers (seeded `np.random.Generator`, deterministic):
  - `cluster` (default; CRISP's lower-variance form): draw a cluster from P(c|D), then a
    window uniformly inside it, with replacement. The selected histogram matches
    P(c|D) up to multinomial noise; small clusters repeat windows.
  - `gumbel` (DSIR's form): per-window keys log w(c_i) + Gumbel noise, the top N without
    replacement. No window repeats, but once a cluster is used up its mass moves to others.
Domain mass on clusters that hold no generic window cannot be matched: it is dropped and
reported (`unmatched_mass`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SpecializeError

SAMPLERS = ("cluster", "gumbel")


def histogram(labels: np.ndarray, k: int) -> np.ndarray:
    """P(c) of cluster labels [n] as float64 [k]."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=k).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    """KL(p || q) in nats (q floored at eps where p > 0)."""
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(np.maximum(q[mask], eps)))))


def entropy(p: np.ndarray) -> float:
    """H(p) in nats."""
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def importance_weights(p_domain: np.ndarray, p_generic: np.ndarray) -> np.ndarray:
    """w(c) = P(c|D) / P(c|G) for clusters with generic windows, 0 elsewhere."""
    w = np.zeros_like(p_domain)
    has = p_generic > 0
    w[has] = p_domain[has] / p_generic[has]
    return w


def sample_cluster_first(labels: np.ndarray, p_domain: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` window indices: a cluster ~ P(c|D) (renormalised over clusters that have
    generic windows), then a window uniformly in it; with replacement."""
    k = len(p_domain)
    members = _members(labels, k)
    target = np.where([len(m) > 0 for m in members], p_domain, 0.0)
    if target.sum() <= 0:
        raise SpecializeError("the domain's windows fall only in clusters without generic windows")
    rng = np.random.default_rng(seed)
    clusters = rng.choice(k, size=n, p=target / target.sum())
    picks = np.empty(n, np.int64)
    for c in np.unique(clusters):
        where = np.flatnonzero(clusters == c)
        picks[where] = members[c][rng.integers(len(members[c]), size=len(where))]
    return picks


def sample_gumbel_top_k(labels: np.ndarray, weights: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` distinct window indices: the top `n` of log w(c_i) + Gumbel(0, 1) (sampling
    without replacement proportionally to w, Gumbel-top-k trick); windows of
    zero-weight clusters are never taken."""
    w = weights[labels]
    eligible = np.flatnonzero(w > 0)
    if n > len(eligible):
        raise SpecializeError(
            f"asked for {n} windows without replacement but only {len(eligible)} generic windows have weight > 0 "
            "(use the cluster sampler, which repeats windows, or select fewer tokens)"
        )
    rng = np.random.default_rng(seed)
    keys = np.log(w[eligible]) + rng.gumbel(size=len(eligible))
    top = np.argpartition(-keys, n - 1)[:n] if n < len(eligible) else np.arange(len(eligible))
    return eligible[top[np.argsort(-keys[top])]]


def _members(labels: np.ndarray, k: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(k)]


@dataclass
class Selection:
    """What a resampling chose and how well it matches the domain.

    indices: selected generic window ids [n] (order of drawing); p_domain, p_generic,
    p_selected: cluster histograms [k]; kl_*: KL(P(c|D) || .) in nats."""

    indices: np.ndarray
    sampler: str
    p_domain: np.ndarray
    p_generic: np.ndarray
    p_selected: np.ndarray
    kl_selected: float
    kl_generic: float
    entropy_domain: float
    unmatched_mass: float
    repeats: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"sampler": self.sampler, "windows": int(len(self.indices)), "kl_selected": self.kl_selected,
                "kl_generic": self.kl_generic, "entropy_domain": self.entropy_domain,
                "unmatched_mass": self.unmatched_mass, "repeats": self.repeats}


def repetition(indices: np.ndarray) -> dict:
    """How often windows repeat: unique windows, the most repeats of one window, and
    how many windows were drawn 1, 2, 3, ... times."""
    _, counts = np.unique(indices, return_counts=True)
    times, how_many = np.unique(counts, return_counts=True)
    return {"unique": int(len(counts)), "max": int(counts.max()) if len(counts) else 0,
            "drawn_times": {int(t): int(h) for t, h in zip(times, how_many)}}


def select(generic_labels: np.ndarray, domain_labels: np.ndarray, k: int, n: int, sampler: str = "cluster",
           seed: int = 0) -> Selection:
    """Resample `n` generic windows so their cluster histogram matches the domain's."""
    if sampler not in SAMPLERS:
        raise SpecializeError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
    if len(domain_labels) == 0:
        raise SpecializeError("the domain has no windows to match")
    if n < 1:
        raise SpecializeError("select at least one window")
    p_generic, p_domain = histogram(generic_labels, k), histogram(domain_labels, k)
    if sampler == "cluster":
        picks = sample_cluster_first(generic_labels, p_domain, n, seed)
    else:
        picks = sample_gumbel_top_k(generic_labels, importance_weights(p_domain, p_generic), n, seed)
    p_selected = histogram(generic_labels[picks], k)
    return Selection(picks, sampler, p_domain, p_generic, p_selected, kl_divergence(p_domain, p_selected),
                     kl_divergence(p_domain, p_generic), entropy(p_domain),
                     float(p_domain[p_generic == 0].sum()), repetition(picks))
