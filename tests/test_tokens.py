"""Token cache and batching: cached once, windows deterministic, eval covers every token."""

import numpy as np
import pytest

import mlx_specialize as ms
from mlx_specialize.data.tokenizer import BOS_ID, EOS_ID
from mlx_specialize.data.tokens import PackedWindows, eval_batches
from mlx_specialize.errors import SpecializeError


def test_second_tokenization_reads_the_cache(tokenizer, tmp_path, monkeypatch):
    corpus = ms.load_corpus("python-docs")
    first = ms.tokenize_split(corpus, "valid", tokenizer, tmp_path)
    assert first.tokens[0] == BOS_ID and first.tokens[-1] == EOS_ID
    assert first.n_docs == len(list(corpus.documents("valid")))

    def no_encoding(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(type(tokenizer), "encode_batch", no_encoding)
    again = ms.tokenize_split(corpus, "valid", tokenizer, tmp_path)
    assert isinstance(again.tokens, np.memmap)
    np.testing.assert_array_equal(again.tokens, first.tokens)
    assert again.n_bytes == first.n_bytes == sum(len(d.encode()) for d in corpus.documents("valid"))


def test_max_tokens_keeps_the_first_tokens(tokenizer, tmp_path):
    corpus = ms.load_corpus("python-docs")
    full = ms.tokenize_split(corpus, "valid", tokenizer, tmp_path)
    head = ms.tokenize_split(corpus, "valid", tokenizer, tmp_path, max_tokens=1000)
    assert head.n_tokens == 1000
    np.testing.assert_array_equal(head.tokens, full.tokens[:1000])
    assert 0 < head.n_bytes < full.n_bytes


def test_packed_windows_are_deterministic_and_cover_each_epoch():
    tokens = np.arange(1001, dtype=np.uint16)
    windows = PackedWindows(tokens, context=10, batch_size=4, seed=7)
    assert windows.n_windows == 100
    b0 = windows.batch(0)
    assert b0.shape == (4, 11) and b0.dtype == np.int32
    assert np.all(np.diff(b0, axis=1) == 1)  # each row is a contiguous slice
    np.testing.assert_array_equal(PackedWindows(tokens, 10, 4, seed=7).batch(3), windows.batch(3))
    assert not np.array_equal(PackedWindows(tokens, 10, 4, seed=8).batch(0), b0)
    starts = np.concatenate([windows.batch(i)[:, 0] for i in range(25)])
    assert sorted(starts.tolist()) == list(range(0, 1000, 10))  # one epoch = every window once


def test_too_little_text_for_one_window_is_a_clear_error():
    with pytest.raises(SpecializeError, match="fewer than one training window"):
        PackedWindows(np.arange(5, dtype=np.uint16), context=10, batch_size=2)


def test_eval_batches_predict_every_token_once():
    tokens = np.arange(3, 3 + 95, dtype=np.int32)
    targets = []
    for x, y, m in eval_batches(tokens, context=8, batch_size=3):
        assert x.shape == y.shape == m.shape == (3, 8)
        targets += y[m > 0].tolist()
    assert targets == tokens[1:].tolist()
