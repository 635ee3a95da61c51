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
