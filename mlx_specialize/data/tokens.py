"""Tokenized corpora on disk, and fixed-shape batches cut from them.

A split of a corpus is tokenized once into a flat array of token ids, each document as
`[BOS] ids [EOS]` (no BOS for tokenizers that prepend none, see `hf_tokenizer.py`), and cached as a raw `.bin` file (memory-mapped on read) plus a
`.json` of metadata, keyed by a hash of corpus content + tokenizer + split + limit. A
second run with the same inputs reads the cache and does not tokenize again. One process
at a time builds a split (a lock, see `cache.py`); the `.json`, written last, records the
`.bin`'s size and sha256, which are checked on use: a truncated or edited `.bin` is moved
aside and tokenized again.

Training batches are windows of `context + 1` tokens (inputs and shifted targets)
taken at stride `context` from the stream, shuffled per epoch by a seeded permutation:
`PackedWindows.batch(i)` is a pure function of `i`, so a resumed run continues with
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import SpecializeError
from ..runtime.cache import check_file, default_cache_dir, file_record, locked, move_aside
from ..runtime.files import atomic_write_bytes
from .corpus import Corpus
from .tokenizer import BOS_ID, Tokenizer, token_dtype

ENCODE_BATCH_DOCS = 256


@dataclass
class TokenizedSplit:
    """One split as a flat token stream.

    tokens:  memory-mapped array [n_tokens] of ids (uint16 or uint32)
    n_bytes: UTF-8 bytes of the text those tokens encode (for bits per byte)
    n_docs:  documents in the stream
    bos_id:  the id that starts each document (not a prediction target), or None
    """

    tokens: np.ndarray
    n_bytes: int
    n_docs: int
    name: str
    bos_id: int | None = BOS_ID

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])


def tokenize_split(
    corpus: Corpus,
    split: str,
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike | None = None,
    max_tokens: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> TokenizedSplit:
    """Tokenize `split` of `corpus` (the first `max_tokens` tokens of it, if given),
    reading the on-disk cache when it already holds this exact result.

    `on_progress(n_chars)` is called as text is consumed (for progress bars)."""
    cache = Path(cache_dir or default_cache_dir()) / "tokens"
    key_src = f"{corpus.fingerprint()}|{tokenizer.fingerprint}|{split}|{max_tokens}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    bin_path, meta_path = cache / f"{key}.bin", cache / f"{key}.json"
    name = f"{corpus.name}:{split}"
    with locked(cache / key, f"the tokens of {name}"):
        meta = _cached_meta(bin_path, meta_path)
        if meta is not None:
            return TokenizedSplit(_map(bin_path, meta), meta["n_bytes"], meta["n_docs"], name, meta.get("bos", BOS_ID))
        meta = _tokenize_into(bin_path, corpus, split, tokenizer, max_tokens, on_progress)
        atomic_write_bytes(meta_path, json.dumps(meta).encode())  # last: the split is complete
    return TokenizedSplit(_map(bin_path, meta), meta["n_bytes"], meta["n_docs"], name, tokenizer.bos_id)


def _cached_meta(bin_path: Path, meta_path: Path) -> dict | None:
    """The metadata of a complete cached split, or None: none yet, one from an older
    version (no record of its .bin: written over), or a bad one (moved aside)."""
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        record = meta.get("bin")
    except (OSError, ValueError, AttributeError):
        meta, record = None, {}
    if record is None:
        return None
    problem = check_file(bin_path, record)
    if problem is None:
        return meta
    for path in (bin_path, meta_path):
        if path.exists():
            move_aside(path, problem)
    return None


def _tokenize_into(bin_path: Path, corpus: Corpus, split: str, tokenizer: Tokenizer, max_tokens: int | None,
                   on_progress) -> dict:
    """Tokenize into `bin_path` (by rename); returns the metadata, with the file's record."""
    bin_path.with_suffix(".json").unlink(missing_ok=True)  # a crash before the new one: no stale record
    dtype = token_dtype(tokenizer.vocab_size)
    head = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    tmp = bin_path.with_suffix(f".tmp{os.getpid()}")
    n_tokens = n_bytes = n_docs = 0
    try:
        with open(tmp, "wb") as out:
            for docs in _chunks(corpus.documents(split), ENCODE_BATCH_DOCS):
                for doc, ids in zip(docs, tokenizer.encode_batch(docs)):
                    row = np.asarray([*head, *ids, tokenizer.eos_id], dtype=dtype)
                    if max_tokens is not None and n_tokens + len(row) > max_tokens:
                        keep = max_tokens - n_tokens
                        row = row[:keep]
                        n_bytes += len(tokenizer.decode(ids[: max(keep - len(head), 0)]).encode("utf-8"))
                    else:
                        n_bytes += len(doc.encode("utf-8"))
                    out.write(row.tobytes())
                    n_tokens += len(row)
                    n_docs += 1
                    if max_tokens is not None and n_tokens >= max_tokens:
                        break
                if on_progress:
                    on_progress(sum(len(d) for d in docs))
                if max_tokens is not None and n_tokens >= max_tokens:
                    break
        if n_tokens == 0:
            raise SpecializeError(f"corpus '{corpus.name}' has no text in its {split} split")
        record = file_record(tmp)
        os.replace(tmp, bin_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"n_tokens": n_tokens, "n_bytes": n_bytes, "n_docs": n_docs, "dtype": np.dtype(dtype).name,
            "corpus": corpus.name, "split": split, "tokenizer": tokenizer.fingerprint, "bos": tokenizer.bos_id,
            "bin": record}


def _map(path: Path, meta: dict) -> np.ndarray:
    return np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class PackedWindows:
    """Shuffled fixed-length training windows over a token stream.

    `batch(i)` -> int32 array [batch_size, context + 1]. Window w covers
    tokens[w * context : w * context + context + 1]. Epoch e visits all windows in the
    order of `default_rng([seed, e]).permutation`; batches run across epoch ends.
    """

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, seed: int = 0):
        self.tokens, self.context, self.batch_size, self.seed = tokens, context, batch_size, seed
        self.n_windows = (len(tokens) - 1) // context
        if self.n_windows < 1:
            raise SpecializeError(
                f"only {len(tokens)} tokens: fewer than one training window of {context + 1}; "
                "use more text or a shorter context"
            )
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)}
        return self._perms[epoch]

    @property
    def tokens_per_epoch(self) -> int:
        return self.n_windows * self.context

    def batch(self, index: int) -> np.ndarray:
        first = index * self.batch_size
        rows = []
        for k in range(first, first + self.batch_size):
            w = int(self._perm(k // self.n_windows)[k % self.n_windows])
            rows.append(self.tokens[w * self.context : w * self.context + self.context + 1])
        return np.stack(rows).astype(np.int32)


def target_mask(targets, bos_id: int | None):
    """Which next-token targets count (numpy or MLX array of token ids -> bool array):
    all but `bos_id`, which only marks a document start the model cannot predict."""
    return targets != (-1 if bos_id is None else bos_id)


def eval_batches(
    tokens: np.ndarray, context: int, batch_size: int, max_tokens: int | None = None, bos_id: int | None = BOS_ID
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Cover the stream once, in order, in fixed-shape batches.

    Yields (inputs [B, context] int32, targets [B, context] int32, mask [B, context]
    float32): every token after the first is a target exactly once; the last window
    and batch are padded and masked out. `bos_id` targets are masked (they only mark a
    document start, which the model cannot and need not predict)."""
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    starts = list(range(0, max(n - 1, 0), context))
    for b in range(0, len(starts), batch_size):
        x = np.zeros((batch_size, context), np.int32)
        y = np.zeros((batch_size, context), np.int32)
        m = np.zeros((batch_size, context), np.float32)
        for r, s in enumerate(starts[b : b + batch_size]):
            win = np.asarray(tokens[s : min(s + context + 1, n)], dtype=np.int32)
            k = len(win) - 1
            x[r, :k], y[r, :k] = win[:-1], win[1:]
            m[r, :k] = target_mask(win[1:], bos_id)
        yield x, y, m
