"""Text-window embedders, and embedding a corpus into resumable on-disk shards.

Two embedders share one interface (`name`, `dim`, `settings`, `embed(texts) -> [n, dim]
float32, L2-normalised rows`):

- `hashed`: model-free. Lower-cased word unigrams and bigrams, hashed (CRC-32) into
  2^20 buckets; sublinear term frequency (1 + log tf) times a smoothed inverse document
  frequency fitted on a sample of the generic windows; a fixed sparse random projection
  (each bucket adds +-1 to `signs` of the `dim` output coordinates, chosen by seeded
  hashes) to `dim` dimensions; L2 norm. Hundreds to thousands of windows per second on
  one CPU core.
- `minilm`: the paper's Sentence-BERT (all-MiniLM-L6-v2, `minilm.py`).

`embed_windows` cuts a tokenized split into non-overlapping windows of `window` tokens
(of the packed stream that pre-training reads, so a window may cross a document
boundary; the selected windows are then exactly training material), decodes each to text, embeds batches and appends them to float16 shards of `shard_rows`
rows under a folder keyed by (corpus, tokenizer, split, window, embedder settings). The
folder is a cache entry (`cache.py`): built by one process at a time in FOLDER.partial,
where each shard is written atomically, so an interrupted job resumes at the first
missing shard; published with its manifest when every shard is there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import ui
from ..runtime.cache import cache_entry
from ..errors import SpecializeError
from ..runtime.files import atomic_write_bytes
from ..runtime import distributed as dist

BUCKETS = 1 << 20
WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def _word_hashes(text: str) -> np.ndarray:
    """Unigram and bigram feature ids of a text (uint32 bucket ids, with repeats)."""
    words = WORD.findall(text.lower())
    if not words:
        return np.zeros(0, np.uint32)
    uni = np.fromiter((zlib.crc32(w.encode()) for w in words), np.uint64, len(words))
    bi = (uni[:-1] * np.uint64(0x9E3779B1) + uni[1:] + np.uint64(0x7F4A7C15)) & np.uint64(0xFFFFFFFF)
    return (np.concatenate([uni, bi]) % BUCKETS).astype(np.uint32)


class HashedEmbedder:
    """Hashed uni/bi-gram TF-IDF with a sparse random projection (see module docstring).

    `fit_idf(texts)` sets the document frequencies from a sample of windows; without
    it every feature has weight 1 (pure TF)."""

    name = "hashed"

    def __init__(self, dim: int = 256, signs: int = 4, seed: int = 0):
        if dim < 8:
            raise SpecializeError(f"hashed embedding dimension {dim} is too small (at least 8)")
        self.dim, self.signs, self.seed = dim, signs, seed
        rng = np.random.default_rng(seed)
        # Per bucket: `signs` output coordinates and +-1 signs (a sparse JL projection).
        self.columns = rng.integers(0, dim, size=(BUCKETS, signs), dtype=np.int32)
        self.values = rng.choice(np.array([-1.0, 1.0], np.float32), size=(BUCKETS, signs)) / np.sqrt(signs)
        self.idf = np.ones(BUCKETS, np.float32)
        self.idf_docs = 0

    @property
    def settings(self) -> dict:
        digest = hashlib.sha256(self.idf.tobytes()).hexdigest()[:16]
        return {"embedder": self.name, "dim": self.dim, "signs": self.signs, "seed": self.seed,
                "buckets": BUCKETS, "idf": digest, "idf_docs": self.idf_docs}

    def fit_idf(self, texts: list[str]) -> "HashedEmbedder":
        df = np.zeros(BUCKETS, np.int64)
        for text in texts:
            df[np.unique(_word_hashes(text))] += 1
        n = len(texts)
        self.idf = (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)
        self.idf_docs = n
        return self

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            ids, tf = np.unique(_word_hashes(text), return_counts=True)
            if len(ids) == 0:
                continue
            weight = (1 + np.log(tf)).astype(np.float32) * self.idf[ids]
            np.add.at(out[row], self.columns[ids].ravel(), (self.values[ids] * weight[:, None]).ravel())
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def state(self) -> dict[str, np.ndarray]:
        """What to save to rebuild this embedder exactly (the IDF table)."""
        return {"idf": self.idf}

    @classmethod
    def from_settings(cls, settings: dict, state: dict[str, np.ndarray] | None = None) -> "HashedEmbedder":
        emb = cls(settings["dim"], settings["signs"], settings["seed"])
        if state is not None and "idf" in state:
            emb.idf, emb.idf_docs = np.asarray(state["idf"], np.float32), settings.get("idf_docs", 0)
        return emb


EMBEDDERS = ("hashed", "minilm")
# what the clustered methods' --embedder takes: an embedder, or `auto`, which picks one per
# run by cost (methods/clusters.choose_embedder)
EMBEDDER_CHOICES = ("auto", *EMBEDDERS)


def make_embedder(name: str, **options):
    """An embedder by name: `hashed` (options dim, signs, seed) or `minilm` (model, batch_size)."""
    if name == "hashed":
        return HashedEmbedder(**options)
    if name == "minilm":
        from .minilm import MiniLMEmbedder

        return MiniLMEmbedder(**options)
    raise SpecializeError(f"unknown embedder '{name}' (choose from {', '.join(EMBEDDERS)})")


# ---- windows of a tokenized split, embedded into shards -------------------------
def window_texts(tokens: np.ndarray, tokenizer, window: int, start: int = 0, stop: int | None = None) -> list[str]:
    """Texts of windows start..stop-1 (window i = tokens[i*window : (i+1)*window])."""
    stop = n_windows(tokens, window) if stop is None else stop
    return [tokenizer.decode(tokens[i * window : (i + 1) * window]) for i in range(start, stop)]


def n_windows(tokens: np.ndarray, window: int) -> int:
    """Complete windows in a stream (a last partial one is dropped)."""
    return len(tokens) // window


def window_tokens(tokens: np.ndarray, ids: np.ndarray, window: int) -> np.ndarray:
    """The tokens of windows `ids`, in that order, concatenated: [len(ids) * window]."""
    rows = (np.arange(window)[None, :] + (np.asarray(ids, np.int64) * window)[:, None]).ravel()
    return np.asarray(tokens[rows])


class ShardedVectors:
    """Rows of several memory-mapped shards as one read-only [n, dim] array: slices and
    integer index arrays read only the rows they name, so k-means' mini-batches and
    streaming assignment never hold more than a batch in memory. `np.asarray` loads all."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s) for s in shards])
        self.shape = (int(self.offsets[-1]), int(shards[0].shape[1]))
        self.dtype = shards[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(self.shards)
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        if isinstance(key, slice):
            key = np.arange(*key.indices(len(self)))
        ids = np.asarray(key, dtype=np.int64)
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        out = np.empty((len(ids), self.shape[1]), self.dtype)
        for s in np.unique(shard):
            where = shard == s
            out[where] = self.shards[s][ids[where] - self.offsets[s]]
        return out


@dataclass
class EmbeddedWindows:
    """Embeddings of a split's windows: `vectors` [n_windows, dim] float16 (memory-mapped
    shards, see `ShardedVectors`), `window` tokens each, and the embedder's settings."""

    folder: Path
    vectors: ShardedVectors
    window: int
    settings: dict


def embed_windows(
    split,
    tokenizer,
    embedder,
    window: int,
    cache_dir: str | os.PathLike,
    shard_rows: int = 4096,
    batch: int = 256,
    max_windows: int | None = None,
    extra: dict[str, bytes] | None = None,
) -> EmbeddedWindows:
    """Embed every window of `split` (a `TokenizedSplit`), resuming from finished shards.
    `extra` (file name -> bytes) is kept in the folder too (see importance.embed_generic)."""
    if window < 8:
        raise SpecializeError(f"window of {window} tokens is too small")
    total = n_windows(split.tokens, window)
    if max_windows is not None:
        total = min(total, max_windows)
    if total == 0:
        raise SpecializeError(f"{split.name} has fewer than {window} tokens: not one window to embed")
    key_src = json.dumps([split.name, int(split.tokens.shape[0]), _stream_digest(split.tokens), tokenizer.fingerprint,
                          window, total, embedder.settings], sort_keys=True)
    folder = Path(cache_dir) / "embeddings" / hashlib.sha256(key_src.encode()).hexdigest()[:20]
    meta = {"split": split.name, "window": window, "n_windows": total, "dim": embedder.dim,
            "shard_rows": shard_rows, "settings": embedder.settings, "tokenizer": tokenizer.fingerprint}
    n_shards = -(-total // shard_rows)
    names = [f"shard-{s:05d}.npy" for s in range(n_shards)]
    what = f"the {embedder.name} embeddings of {split.name} ({total:,} windows of {window} tokens)"
    # Several processes (mlx.launch): rank 0 alone locks the entry and looks at it first (a
    # bad one moved aside), then the others, which on a shared disk so see what it left.
    w = dist.world()
    if not w.is_main:
        dist.barrier(w)
    with cache_entry(folder, what, lock=w.is_main) as entry:
        if w.is_main:
            dist.barrier(w)
        here = entry.folder if entry.ready else entry.build
        if not entry.ready:
            atomic_write_bytes(here / "meta.json", json.dumps(meta, indent=2).encode())
        # Shard s is embedded by rank s mod N, then sent to the ranks that lack it (see
        # distributed.share_files); a rank whose entry is ready only sends.
        todo = [s for s in range(n_shards) if not (here / names[s]).exists()]
        mine = [s for s in todo if s % w.size == w.rank]
        with ui.task(f"embedding {split.name} ({embedder.name})", len(todo) and total) as advance:
            advance(total - sum(min(shard_rows, total - s * shard_rows) for s in todo))
            for s in mine:
                lo, hi = s * shard_rows, min(total, (s + 1) * shard_rows)
                parts = []
                for b in range(lo, hi, batch):
                    parts.append(embedder.embed(window_texts(split.tokens, tokenizer, window, b, min(hi, b + batch))))
                    advance(min(hi, b + batch) - b)
                shard = io.BytesIO()
                np.save(shard, np.concatenate(parts).astype(np.float16))
                atomic_write_bytes(here / names[s], shard.getvalue())
            dist.share_files(here, names, w)
            advance(sum(min(shard_rows, total - s * shard_rows) for s in todo if s not in mine))
        if extra and not entry.ready:
            for name, data in extra.items():
                atomic_write_bytes(here / name, data)
        elif extra and any(not (here / name).is_file() for name in extra):  # published without them
            entry.amend(extra)
        dist.barrier(w)  # every rank done writing: rank 0 publishes first, for all on a shared disk
        if w.is_main:
            entry.publish()
        dist.barrier(w)
        if not w.is_main:
            entry.publish()
    return load_embedded(folder)


def load_embedded(folder: str | os.PathLike) -> EmbeddedWindows:
    """The vectors of a finished `embed_windows` folder."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    n_shards = -(-meta["n_windows"] // meta["shard_rows"])
    shards = [np.load(folder / f"shard-{s:05d}.npy", mmap_mode="r") for s in range(n_shards)]
    return EmbeddedWindows(folder, ShardedVectors(shards), meta["window"], meta["settings"])


def _stream_digest(tokens: np.ndarray) -> str:
    """A cheap content hash of a token stream: its length and a strided sample."""
    step = max(1, len(tokens) // 65536)
    return hashlib.sha256(np.ascontiguousarray(tokens[::step]).tobytes()).hexdigest()[:16]

