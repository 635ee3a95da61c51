"""Text corpora: where documents come from and which split each belongs to.

A corpus is named by a *spec* string, the same everywhere (`--domain`, `--generic`):

- a bundled name: `python-docs`, `go-code`, `postgres-docs`, `python-code`
  (see `data/demo/SOURCES.md`);
- a local file or folder: `.jsonl`, `.json`, `.parquet`, `.txt`, optionally `.gz`;
  a folder is read recursively, in sorted order;
- a Hugging Face dataset: `hf:NAME[:CONFIG][?field=text&split=train&streaming=1]`,
  loaded with `datasets.load_dataset` (NAME may also be a local dataset folder);
- several of the above joined by commas: their documents concatenated (a mixture).

Splits: a record's own `split` field wins (minipile has one); then a file, or a folder
inside the folder named in the spec, called train / valid / validation / dev / test; then a dataset's own splits; otherwise a
deterministic document-level split from a hash of the text (90% / 5% / 5%).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs

from ..errors import SpecializeError

SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
    "testing": "test",
}
TEXT_EXTENSIONS = (".jsonl", ".json", ".parquet", ".txt")
NOTE_EXTENSIONS = (".md", ".markdown", ".rst", ".org", ".tex", ".adoc")  # plain text under another name
DEMO_DIR = Path(__file__).resolve().parent / "demo"
MAX_DOC_CHARS = 12_000  # plain-text files are cut at paragraph breaks into documents
# Corpus fingerprints already computed in this process, by the identity of the files
# hashed (see Corpus.fingerprint): a run asks for them many times (its command, each
# cache key, each tokenized split), and hashing a large corpus takes seconds.
_FINGERPRINTS: dict[tuple, str] = {}
SETTLED_SECONDS = 2.0  # a file changed this recently may change again unseen: never remembered


def bundled_names() -> list[str]:
    """Names of the corpora that ship inside the package."""
    return sorted(p.name[: -len(".jsonl.gz")] for p in DEMO_DIR.glob("*.jsonl.gz"))


def split_hint(split: str) -> str:
    """Why `split` can be empty, said where it is: a few documents split 90/5/5 may leave
    none there, and a corpus whose files name their splits may name no file for it."""
    names = {"valid": "valid (or validation, dev)"}.get(split, split)
    return (f"documents with no split named go 90/5/5 to train/valid/test by a hash of their text (a .txt file is "
            f"cut at blank lines into documents of about {MAX_DOC_CHARS:,} characters): give more text, or name "
            f"the split: a file or folder called {names}, or a `split` field")


def hash_split(text: str) -> str:
    """Deterministic document-level split: 90% train, 5% valid, 5% test."""
    bucket = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest(), "big") % 100
    return "train" if bucket < 90 else "valid" if bucket < 95 else "test"


def _split_from_path(path: Path, root: Path | None = None) -> str | None:
    """The split a file's name or its folders below `root` (the folder the user named)
    give it: folders above the corpus (a venv under ~/dev, a project under /test) never
    decide a split."""
    folders = path.parent.relative_to(root).parts if root is not None and root in path.parents else ()
    for part in [path.name.split(".")[0], *reversed(folders)]:
        if part.lower() in SPLIT_ALIASES:
            return SPLIT_ALIASES[part.lower()]
    return None


def _open_text(path: Path):
    """Open a (possibly gzipped) text file after checking it is not binary."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(8192)
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: a corrupt deflate stream (no OSError)
        raise SpecializeError(f"cannot read {path}: {err}") from None
    if b"\x00" in head:
        raise SpecializeError(f"{path} is a binary file, not text")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut by the 8 KiB window
            raise SpecializeError(f"{path} is not UTF-8 text") from None
    return io.TextIOWrapper(opener(path, "rb"), encoding="utf-8", errors="strict")


def _cut_paragraphs(text: str, limit: int = MAX_DOC_CHARS) -> Iterator[str]:
    """Cut long plain text at blank lines into documents of at most ~`limit` chars."""
    doc: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        if size and size + len(para) > limit:
            yield "\n\n".join(doc)
            doc, size = [], 0
        doc.append(para)
        size += len(para) + 2
    if doc:
        yield "\n\n".join(doc)


def _pick_text(record, field_name: str | None, where: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise SpecializeError(f"{where}: expected JSON objects or strings, got {type(record).__name__}")
    if field_name is not None:
        if field_name not in record:
            raise SpecializeError(f"{where}: no field '{field_name}' (fields: {', '.join(record)})")
        return record[field_name]
    for name in ("text", "content"):
        if name in record:
            return record[name]
    raise SpecializeError(f"{where}: no 'text' or 'content' field (fields: {', '.join(record)}); pass ?field=NAME")


@dataclass
class LocalFiles:
    """Documents from local files under `root` (the folder named in the spec; for a single
    file, its folder). Yields (text, split or None) pairs."""

    paths: list[Path]
    field_name: str | None = None
    root: Path | None = None

    def records(self) -> Iterator[tuple[str, str | None]]:
        for path in self.paths:
            file_split = _split_from_path(path, self.root)
            for text, split in self._file_records(path):
                yield text, split or file_split

    def _file_records(self, path: Path) -> Iterator[tuple[str, str | None]]:
        kind = path.name[: -len(".gz")] if path.name.endswith(".gz") else path.name
        if kind.endswith(".parquet"):
            yield from self._parquet(path)
        elif kind.endswith(".txt"):
            with _open_text(path) as f:
                text = self._read(f, path)
            for doc in _cut_paragraphs(text):
                yield doc, None
        elif kind.endswith(".jsonl"):
            yield from self._jsonl(path)
        else:  # .json: one array (or {"data": [...]}) or, as often on the hub, JSON lines
            with _open_text(path) as f:
                raw = self._read(f, path)
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as err:
                if "Extra data" not in err.msg:
                    raise SpecializeError(f"{path} is not valid JSON: {err}") from None  # with line and column
                yield from self._jsonl(path)
                return
            if isinstance(data, dict):
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            elif not isinstance(data, list):  # one bare value: a document if a string, else refused as a record
                data = [data]
            for i, rec in enumerate(data):
                yield self._record(rec, f"{path} item {i}")

    def _read(self, f, path: Path) -> str:
        try:
            return f.read()
        except UnicodeDecodeError:
            raise SpecializeError(f"{path} is not UTF-8 text") from None
        except (OSError, EOFError, zlib.error) as err:  # a truncated or corrupt .gz
            raise SpecializeError(f"cannot read {path}: {err}") from None

    def _record(self, rec, where: str) -> tuple[str, str | None]:
        text = _pick_text(rec, self.field_name, where)
        if isinstance(text, str) and not text.isascii():
            try:  # JSON may escape half of a surrogate pair (\ud83d): not Unicode, no UTF-8 to tokenize
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise SpecializeError(f"{where}: text holds an unpaired surrogate escape "
                                      f"(\\u{ord(err.object[err.start]):04x}), not Unicode text") from None
        split = rec.get("split") if isinstance(rec, dict) else None
        return text, SPLIT_ALIASES.get(str(split).lower()) if split is not None else None

    def _jsonl(self, path: Path) -> Iterator[tuple[str, str | None]]:
        with _open_text(path) as f:
            raw = f.buffer  # bytes, one line at a time: a decoding error names its own line
            lineno = 0
            while True:
                try:
                    data = raw.readline()
                except (OSError, EOFError, zlib.error) as err:  # a truncated or corrupt .gz
                    raise SpecializeError(f"cannot read {path} after line {lineno}: {err}") from None
                if not data:
                    return
                lineno += 1
                try:
                    line = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise SpecializeError(f"{path}:{lineno} is not UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    # The parser's whole message, its line number made the file's: the
                    # column is what finds a stray control character in a long line.
                    raise SpecializeError(f"{path}:{lineno} is not valid JSON: {err.msg}: "
                                          f"line {lineno} column {err.colno}") from None
                yield self._record(rec, f"{path}:{lineno}")

    def _parquet(self, path: Path) -> Iterator[tuple[str, str | None]]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises its own error types
            raise SpecializeError(f"{path} is not a readable parquet file: {err}") from None
        names = pf.schema_arrow.names
        text_col = self.field_name or next((n for n in ("text", "content") if n in names), None)
        if text_col not in names:
            raise SpecializeError(f"{path}: no column '{text_col or 'text'}' (columns: {', '.join(names)})")
        cols = [text_col] + (["split"] if "split" in names else [])
        batches = pf.iter_batches(columns=cols, batch_size=1024)
        while True:
            try:
                batch = next(batches, None)
            except Exception as err:  # a corrupt page: pyarrow raises its own error types
                raise SpecializeError(f"cannot read {path}: {err}") from None
            if batch is None:
                return
            rows = batch.to_pydict()
            splits = rows.get("split") or [None] * len(rows[text_col])
            for text, split in zip(rows[text_col], splits):
                yield text, SPLIT_ALIASES.get(str(split).lower()) if split is not None else None

    def identity(self) -> tuple:
        """What the fingerprint depends on, short of the bytes: the options and each file's
        path, inode, size and change times. Any write to a file changes its ctime."""
        files = []
        for path in self.paths:
            st = path.stat()
            files.append((str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return ("files", self.field_name, str(self.root), tuple(files))

    def fingerprint(self, h) -> None:
        h.update(f"files|{self.field_name}".encode())
        for path in self.paths:
            # Besides the bytes, what decides the documents: the split a file's place gives
            # its records, how it is read (.txt, .jsonl, ...) and where it ends. A file
            # moved to another split folder is another train split.
            kind = path.name.removesuffix(".gz").rsplit(".", 1)[-1]
            h.update(f"|{_split_from_path(path, self.root)}|{kind}|{path.stat().st_size}|".encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)


@dataclass
class HFDataset:
    """Documents from `datasets.load_dataset(name, config)`, one split at a time."""

    name: str
    config: str | None = None
    field_name: str | None = None
    split: str | None = None  # take only this dataset split, then hash-split it
    streaming: bool = True
    _splits: dict = field(default_factory=dict, repr=False)

    def _load(self):
        if not self._splits:
            import datasets

            datasets.logging.set_verbosity_error()
            try:
                loaded = datasets.load_dataset(self.name, self.config, streaming=self.streaming)
            except Exception as err:  # datasets raises many error types
                raise SpecializeError(f"cannot load dataset '{self.name}': {str(err).splitlines()[0]}") from None
            if self.split is not None:
                if self.split not in loaded:
                    raise SpecializeError(f"dataset '{self.name}' has no split '{self.split}' (has: {', '.join(loaded)})")
                loaded = {self.split: loaded[self.split]}
            self._splits = dict(loaded)
        return self._splits

    def records(self) -> Iterator[tuple[str, str | None]]:
        splits = self._load()
        own = {SPLIT_ALIASES.get(k.lower()) for k in splits} >= {"train", "valid"} and self.split is None
        for key, rows in splits.items():
            ours = SPLIT_ALIASES.get(key.lower()) if own else None
            for i, rec in enumerate(rows):
                yield _pick_text(rec, self.field_name, f"{self.name}[{key}] row {i}"), ours

    def identity(self) -> None:
        """None: a dataset's content has no cheap identity here; it is hashed every time."""
        return None

    def fingerprint(self, h) -> None:
        h.update(f"hf|{self.name}|{self.config}|{self.field_name}|{self.split}".encode())
        for key, ds in self._load().items():
            h.update(f"{key}|{getattr(ds, '_fingerprint', None)}".encode())


@dataclass
class Corpus:
    """A named source of documents with train / valid / test splits."""

    spec: str
    sources: list

    @property
    def name(self) -> str:
        return self.spec

    def documents(self, split: str) -> Iterator[str]:
        """Documents of one split (`train`, `valid` or `test`), in corpus order."""
        if split not in SPLITS:
            raise SpecializeError(f"unknown split '{split}' (use one of {', '.join(SPLITS)})")
        for source in self.sources:
            for text, own_split in source.records():
                if not isinstance(text, str) or not text.strip():
                    continue
                if (own_split or hash_split(text)) == split:
                    yield text

    def check(self, splits=SPLITS) -> dict[str, int]:
        """Read the corpus through once, as training will, and fail now with one line
        naming the file and line, not minutes or hours into a run: every local file to its
        end (the whole gzip stream, each JSON line parsed, UTF-8 decoded), and each of
        `splits` must hold a document. Returns the documents per split.

        A hub dataset (`hf:`) is only opened: reading it through would download it, and
        its splits are then not counted."""
        return {split: documents for split, (documents, _) in self.check_sizes(splits).items()}

    def check_sizes(self, splits=SPLITS) -> dict[str, tuple[int, int | None]]:
        """`check`, returning (documents, characters) per split, counted in the local
        files; characters are None where a hub dataset is among the sources (it is not
        read through, so they are unknown)."""
        for split in splits:
            if split not in SPLITS:
                raise SpecializeError(f"unknown split '{split}' (use one of {', '.join(SPLITS)})")
        documents, characters = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
        streamed = False
        for source in self.sources:
            if isinstance(source, HFDataset):
                source._load()
                streamed = True
                continue
            for text, own_split in source.records():  # every record, whatever its split: all are parsed
                if isinstance(text, str) and text.strip():
                    split = own_split or hash_split(text)
                    documents[split] += 1
                    characters[split] += len(text)
        for split in splits:
            if documents[split] == 0 and not streamed:
                raise SpecializeError(f"corpus '{self.name}' has no documents in its {split} split; "
                                      f"{split_hint(split)}")
        return {split: (documents[split], None if streamed else characters[split]) for split in SPLITS}

    def fingerprint(self) -> str:
        """A hash of the corpus content and options: the key of tokenized caches.

        Local files are hashed once per process while they stay as they were (the same
        `identity` before and after hashing, and no change in the SETTLED_SECONDS before
        it started, so a later write cannot share the change time seen): a run that asks
        for a corpus' fingerprint many times reads it once."""
        identity = self._identity()
        if identity is not None and identity in _FINGERPRINTS:
            return _FINGERPRINTS[identity]
        started = time.time_ns()
        h = hashlib.sha256()
        for source in self.sources:
            source.fingerprint(h)
        digest = h.hexdigest()[:16]
        settled = started - int(SETTLED_SECONDS * 1e9)
        if identity is not None and self._identity() == identity and all(
                file[-1] < settled for source in identity for file in source[-1]):
            _FINGERPRINTS[identity] = digest
        return digest

    def _identity(self) -> tuple | None:
        """Every source's identity (None if one has none)."""
        identities = tuple(source.identity() for source in self.sources)
        return None if any(i is None for i in identities) else identities


def _parse_hf(spec: str) -> HFDataset:
    body, _, query = spec[len("hf:"):].partition("?")
    name, _, config = body.partition(":")
    opts = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(opts) - {"field", "split", "streaming"}
    if unknown or not name:
        raise SpecializeError(f"bad dataset spec '{spec}': use hf:NAME[:CONFIG][?field=text&split=train&streaming=1]")
    streaming = opts.get("streaming", "1").lower() not in ("0", "false", "no")
    return HFDataset(name, config or None, opts.get("field"), opts.get("split"), streaming)


def _local_files(path: Path) -> list[Path]:
    def supported(p: Path) -> bool:
        name = p.name[: -len(".gz")] if p.name.endswith(".gz") else p.name
        return name.endswith(TEXT_EXTENSIONS)

    if path.is_file():
        if not supported(path):
            raise SpecializeError(f"{path}: unsupported file type (use {', '.join(TEXT_EXTENSIONS)}, optionally .gz)")
        return [path]
    # hidden files and folders (.git, an editor's .obsidian/) are not the corpus
    every = [p for p in path.rglob("*") if p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    files = sorted(p for p in every if supported(p))
    if not files:
        # a folder of notes: say what it holds, not only what it lacks. Not read as text by
        # itself: a dataset folder's README.md would join its documents
        notes = sorted({p.suffix for p in every if p.suffix.lower() in NOTE_EXTENSIONS})
        raise SpecializeError(f"{path} holds no {', '.join(TEXT_EXTENSIONS)} files"
                              + (f" (it holds {', '.join(notes)} files: text is read from .txt files, so copy or "
                                 "rename them to .txt)" if notes else ""))
    return files


def load_corpus(spec: str, field_name: str | None = None) -> Corpus:
    """Resolve a corpus spec (see module docstring) without reading documents yet."""
    if not spec.strip():
        raise SpecializeError("empty corpus name")
    sources: list = []
    parts = []  # as used: the spec written back without stray spaces or empty parts
    for part in spec.split(","):
        part = part if os.path.exists(part) else part.strip()  # a file or folder name may end in a space
        if not part:
            continue
        parts.append(part)
        if part.startswith("hf:"):
            sources.append(_parse_hf(part))
        elif part in bundled_names() and not os.path.exists(part):
            sources.append(LocalFiles([DEMO_DIR / f"{part}.jsonl.gz"], field_name, DEMO_DIR))
        elif os.path.exists(part):
            path = Path(part)
            sources.append(LocalFiles(_local_files(path), field_name, path if path.is_dir() else path.parent))
        else:
            raise SpecializeError(
                f"unknown corpus '{part}': not a file or folder, and not a bundled corpus "
                f"({', '.join(bundled_names())}) or hf:NAME dataset"
            )
    return Corpus(",".join(parts), sources)


def default_generic(domain_spec: str) -> str:
    """The bundled generic mix for a target domain: every bundled corpus but the target."""
    names = [n for n in bundled_names() if n != domain_spec.strip()]
    return ",".join(names)
