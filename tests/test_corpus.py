"""Corpus loading: every format, split rules, and clear errors on bad input."""

import gzip
import json

import pytest

import mlx_specialize as ms
from mlx_specialize.data.corpus import MAX_DOC_CHARS, SPLITS, hash_split
from mlx_specialize.errors import SpecializeError


@pytest.fixture(scope="module")
def docs():
    """Real documents with minipile's own splits (from the bundled python-code)."""
    corpus = ms.load_corpus("python-code")
    return {split: list(corpus.documents(split))[:6] for split in SPLITS}


def records(docs):
    return [{"text": t, "split": s, "source": "x"} for s in SPLITS for t in docs[s]]


def read_all(spec):
    corpus = ms.load_corpus(spec)
    return {split: list(corpus.documents(split)) for split in SPLITS}


def test_bundled_corpora_have_their_fixed_splits():
    assert set(ms.bundled_names()) >= {"go-code", "postgres-docs", "python-code", "python-docs"}
    got = read_all("python-docs")
    assert all(len(got[s]) > 0 for s in SPLITS)
    assert not set(got["train"]) & set(got["test"])


def test_jsonl_and_gzip_with_a_split_field(tmp_path, docs):
    lines = "\n".join(json.dumps(r) for r in records(docs)) + "\n"
    (tmp_path / "a.jsonl").write_text(lines)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(lines)
    assert read_all(str(tmp_path / "a.jsonl")) == docs
    assert read_all(str(tmp_path / "b.jsonl.gz")) == docs


def test_json_array_and_json_lines_named_json(tmp_path, docs):
    (tmp_path / "array.json").write_text(json.dumps(records(docs)))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in records(docs)))
    assert read_all(str(tmp_path / "array.json")) == docs
    assert read_all(str(tmp_path / "lines.json")) == docs


def test_parquet(tmp_path, docs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = records(docs)
    pq.write_table(pa.table({"content": [r["text"] for r in rows], "split": [r["split"] for r in rows]}),
                   tmp_path / "d.parquet")
    assert read_all(str(tmp_path / "d.parquet")) == docs


def test_only_folders_inside_the_named_folder_decide_a_split(tmp_path, docs):
    """A corpus that lives under a folder named like a split (a project in ~/dev, a venv
    under /test) is not that split: only the file's name and the folders inside the folder
    the user named count."""
    outer = tmp_path / "dev" / "project" / "test"
    (outer / "notes" / "train").mkdir(parents=True)
    (outer / "notes" / "valid").mkdir()
    (outer / "notes" / "train" / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in docs["train"]))
    (outer / "notes" / "valid" / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in docs["valid"]))
    found = read_all(str(outer / "notes"))
    assert found["train"] == docs["train"] and found["valid"] == docs["valid"] and not found.get("test")
    single = outer / "one.jsonl"  # a single file: its name alone could name a split
    texts = [f"{t}\n# copy {i}" for i, t in enumerate(docs["train"] * 20)]  # 120 distinct documents
    single.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    spread = read_all(str(single))
    assert 90 < len(spread["train"]) < 120 and len(spread["test"]) < 30  # the 90/5/5 hash split, not all "test"


def test_folder_with_split_named_files_and_text_files(tmp_path, docs):
    for split, name in (("train", "train"), ("valid", "validation"), ("test", "test")):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in docs[split]))
    assert read_all(str(tmp_path)) == docs
    # A plain-text file is cut at blank lines into documents of at most MAX_DOC_CHARS
    # characters: a paragraph joins the document before it only if the two, with the blank
    # line between them, still fit. Paragraphs sized on either side of that edge, by hand.
    limit = MAX_DOC_CHARS
    text = " ".join(" ".join(d.split()) for d in docs["train"])  # real code, no blank lines
    sizes = [limit // 2 - 2, limit // 2, limit // 2 - 2, limit // 2 + 1]
    ends = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    assert len(text) >= ends[-1]
    paras = [text[a:b] for a, b in zip(ends, ends[1:])]
    txt = tmp_path / "txt"
    (txt / "dev").mkdir(parents=True)
    (txt / "dev" / "notes.txt").write_text("\n\n".join(paras))
    expected = [paras[0] + "\n\n" + paras[1],  # exactly `limit` characters: one document
                paras[2], paras[3]]  # limit + 1 together: two
    assert read_all(str(txt))["valid"] == expected


def test_documents_without_splits_get_a_deterministic_hash_split(tmp_path):
    texts = [f"document number {i} " * 20 for i in range(400)]
    (tmp_path / "plain.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    got = read_all(str(tmp_path / "plain.jsonl"))
    assert sum(len(v) for v in got.values()) == 400
    assert 320 < len(got["train"]) < 390 and got["valid"] and got["test"]
    assert all(hash_split(t) == s for s in SPLITS for t in got[s])


def test_hf_datasets_spec_on_a_local_dataset_folder(tmp_path, docs):
    for split, name in (("train", "train"), ("valid", "validation"), ("test", "test")):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in docs[split]))
    got = read_all(f"hf:{tmp_path}?field=body")
    assert got == docs
    only_train = read_all(f"hf:{tmp_path}?field=body&split=train&streaming=0")
    assert sorted(sum(only_train.values(), [])) == sorted(docs["train"])


def test_a_mixture_concatenates_corpora():
    mix = ms.load_corpus("go-code,python-code")
    assert len(list(mix.documents("test"))) == (len(list(ms.load_corpus("go-code").documents("test")))
                                                 + len(list(ms.load_corpus("python-code").documents("test"))))


def test_fingerprint_follows_content(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "one document"}))
    first = ms.load_corpus(str(path)).fingerprint()
    assert ms.load_corpus(str(path)).fingerprint() == first
    path.write_text(json.dumps({"text": "another document"}))
    assert ms.load_corpus(str(path)).fingerprint() != first


def test_a_fingerprint_is_hashed_once_while_its_files_stay_as_they_were(tmp_path, monkeypatch):
    """A run asks for its corpora's fingerprints many times (its command, each cache key,
    each tokenized split): files that have not changed are read once. A write since moves
    a file's change time, so it is hashed again; a file changed too recently for its
    change time to tell a later write apart is never remembered."""
    from mlx_specialize.data import corpus as corpus_module

    monkeypatch.setattr(corpus_module, "_FINGERPRINTS", {})
    hashed = []
    real = corpus_module.LocalFiles.fingerprint
    monkeypatch.setattr(corpus_module.LocalFiles, "fingerprint", lambda self, h: (hashed.append(1), real(self, h)))
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "one document"}))
    first = ms.load_corpus(str(path)).fingerprint()
    assert ms.load_corpus(str(path)).fingerprint() == first and len(hashed) == 2  # just written: hashed each time
    monkeypatch.setattr(corpus_module, "SETTLED_SECONDS", -60.0)  # as if written a minute before
    assert ms.load_corpus(str(path)).fingerprint() == first and len(hashed) == 3
    assert ms.load_corpus(str(path)).fingerprint() == first and len(hashed) == 3  # remembered
    assert ms.load_corpus(f"{path},{path}").fingerprint() != first and len(hashed) == 5  # another corpus
    path.write_text(json.dumps({"text": "two document"}))  # the same size, a new change time
    assert ms.load_corpus(str(path)).fingerprint() != first and len(hashed) == 6


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "unknown corpus"),
        (lambda p: (p / "bin.jsonl").write_bytes(b"\x7fELF\x00\x01\x02" * 100), "binary file"),
        (lambda p: (p / "latin.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50), "not UTF-8"),
        (lambda p: (p / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n'), "not valid JSON"),
        (lambda p: (p / "nofield.jsonl").write_text('{"body": "x"}\n'), "no 'text' or 'content' field"),
        (lambda p: (p / "img.png").write_bytes(b"\x89PNG"), "unsupported file type"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, setup, message):
    setup(tmp_path)
    target = next(iter(sorted(tmp_path.iterdir())), tmp_path / "missing.jsonl")
    with pytest.raises(SpecializeError, match=message):
        corpus = ms.load_corpus(str(target))
        list(corpus.documents("train"))


def test_a_folder_of_notes_names_what_it_holds_and_what_to_do(tmp_path, docs):
    """A new user's `--domain my_notes/` of Markdown files: the error said only what the
    folder lacks. It names what it holds; a dataset folder's README.md beside its data is
    still not read as a document."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# one\n\nsome text\n")
    (notes / "b.rst").write_text("two\n===\n")
    (notes / "scan.pdf").write_bytes(b"%PDF-1.4")  # not text: no advice to rename it
    (notes / ".obsidian").mkdir()  # an editor's settings: hidden, not the corpus (nor a .git)
    (notes / ".obsidian" / "app.json").write_text('{"theme": "dark"}')
    load_corpus = ms.load_corpus
    with pytest.raises(SpecializeError, match=r"notes holds no .*\(it holds \.md, \.rst files: .*rename them to "
                                              r"\.txt\)$"):
        load_corpus(str(notes))
    with pytest.raises(SpecializeError, match=r"empty holds no [^(]*$"):  # nothing there: nothing more to say
        (tmp_path / "empty").mkdir()
        load_corpus(str(tmp_path / "empty"))
    (notes / "data.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs["train"]))
    read = read_all(str(notes))
    assert sorted(sum(read.values(), [])) == sorted(docs["train"])  # the notes beside it are not documents
