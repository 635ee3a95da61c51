"""SentencePiece tokenizer: lossless round trip, and the same ids through transformers."""

import pytest

import mlx_specialize as ms
from mlx_specialize.errors import SpecializeError

SAMPLES = [
    "héllo  wörld — naïve café, Ωmega, straße",
    "日本語のテキストと絵文字 🙂🚀 and Ελληνικά",
    "def f(x):\n\t\treturn x  # trailing spaces   \n\n\n",
    "  leading spaces, \r\nCRLF and\u00a0nbsp\u200b zero-width",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_lossless_on_non_ascii_text(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


def test_byte_fallback_encodes_unseen_characters_as_bytes(tokenizer):
    ids = tokenizer.encode("𓀀")  # an Egyptian hieroglyph: not in the training text
    assert len(ids) == 4  # four UTF-8 bytes
    assert tokenizer.decode(ids) == "𓀀"


def test_save_load_keeps_fingerprint_and_ids(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    again = ms.Tokenizer.load(tmp_path)
    assert again.fingerprint == tokenizer.fingerprint
    assert again.encode(SAMPLES[0]) == tokenizer.encode(SAMPLES[0])


def test_transformers_reads_the_saved_tokenizer_with_the_same_ids(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in SAMPLES:
        assert hf.encode(text, add_special_tokens=False) == tokenizer.encode(text)
        assert hf.decode(tokenizer.encode(text)) == text
    assert hf.encode("x", add_special_tokens=True)[0] == tokenizer.bos_id


def test_training_is_deterministic():
    docs = list(ms.load_corpus("go-code").documents("valid"))
    a = ms.train_tokenizer(docs, 400)
    b = ms.train_tokenizer(docs, 400)
    assert a.fingerprint == b.fingerprint


def test_a_file_that_is_no_tokenizer_is_one_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(SpecializeError, match="not a valid SentencePiece model"):
        ms.Tokenizer.load(tmp_path)


def test_a_mix_s_tokenizer_is_trained_on_all_of_it_not_its_first_corpus(tmp_path):
    """A generic mix is read corpus by corpus: its first characters are its first corpus.
    Drawn uniformly (the default), the tokenizer's text spans the whole mix, so the second
    corpus is coded about as compactly as by a tokenizer of its own; drawn from the start
    (`leading`, the standard study's), it is coded as text the tokenizer never saw. The
    draw is the same every time, and the generic tokenizer's cache keeps the two apart."""
    from mlx_specialize.methods.clusters import generic_tokenizer
    from mlx_specialize.train.jobs import fit_tokenizer

    mix = ms.load_corpus("go-code,postgres-docs")
    go_chars = sum(map(len, ms.load_corpus("go-code").documents("train")))
    sample = go_chars // 2  # the first half of the first corpus, when drawn from the start
    leading = fit_tokenizer(mix, 512, sample, "leading")
    uniform = fit_tokenizer(mix, 512, sample, "uniform")
    assert fit_tokenizer(mix, 512, sample, "uniform").fingerprint == uniform.fingerprint
    text = "\n".join(ms.load_corpus("postgres-docs").documents("test"))
    own = ms.train_tokenizer(ms.load_corpus("postgres-docs").documents("train"), 512, sample)
    tokens = {name: len(t.encode(text)) for name, t in (("leading", leading), ("uniform", uniform), ("own", own))}
    # the uniform draw recovers most of what a tokenizer of the corpus' own gains over the leading one
    assert tokens["own"] < tokens["uniform"] < tokens["leading"], tokens
    assert tokens["uniform"] - tokens["own"] < 0.5 * (tokens["leading"] - tokens["own"]), tokens
    cache = tmp_path / "cache"
    for how in ("uniform", "leading"):  # the same tokenizer here (the mix is under 4M characters), cached apart
        generic_tokenizer("go-code,postgres-docs", 512, cache, how)
    assert len(list((cache / "tokenizers").glob("*.model"))) == 2
    with pytest.raises(SpecializeError, match="--tokenizer-sample: .first. is not one of uniform, leading"):
        fit_tokenizer(mix, 512, sample, "first")


def test_a_uniform_draw_reads_a_corpus_no_further_than_its_scan_bound(monkeypatch):
    """A streamed hub dataset is not read through to be counted: the draw spreads over the
    first TOKENIZER_SCAN_CHARS characters. Bound within the first corpus of a mix, the mix's
    tokenizer is that corpus' own, drawn the same way."""
    from mlx_specialize.train import jobs

    go_chars = sum(map(len, ms.load_corpus("go-code").documents("train")))
    monkeypatch.setattr(jobs, "TOKENIZER_SCAN_CHARS", go_chars // 2)
    mix = jobs.fit_tokenizer(ms.load_corpus("go-code,postgres-docs"), 512, go_chars // 8)
    first = jobs.fit_tokenizer(ms.load_corpus("go-code"), 512, go_chars // 8)
    assert mix.fingerprint == first.fingerprint
