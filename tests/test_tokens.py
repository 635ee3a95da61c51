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


@pytest.mark.parametrize("where", ["inside-first-doc", "end-of-second-doc", "third-doc-bos-only", "inside-third-doc"])
def test_max_tokens_keeps_the_first_tokens(tokenizer, tmp_path, where):
    """A split cut at `max_tokens` is the first tokens of the whole split, and its
    n_bytes (the denominator of bits per byte) is exactly the UTF-8 size of the text
    those tokens encode: each whole document's text, plus for the document cut short
    the text of its kept ids, decoded. Cuts inside a document, on a document's end
    (its EOS the last token kept), and one past it (only the next BOS kept, no text)."""
    corpus = ms.load_corpus("python-docs")
    docs = list(corpus.documents("valid"))
    ids = [tokenizer.encode(doc) for doc in docs]
    ends = np.cumsum([len(d) + 2 for d in ids])  # [BOS] ids [EOS] per document
    cut = int({"inside-first-doc": ends[0] // 2, "end-of-second-doc": ends[1], "third-doc-bos-only": ends[1] + 1,
               "inside-third-doc": ends[1] + len(ids[2]) // 2}[where])
    full = ms.tokenize_split(corpus, "valid", tokenizer, tmp_path)
    head = ms.tokenize_split(corpus, "valid", tokenizer, tmp_path, max_tokens=cut)
    assert head.n_tokens == cut
    np.testing.assert_array_equal(head.tokens, full.tokens[:cut])

    # By hand: whole documents counted from their text, then the one cut short.
    expected_bytes, start, n_docs = 0, 0, 0
    for doc, doc_ids in zip(docs, ids):
        if start >= cut:
            break
        n_docs += 1
        size = len(doc_ids) + 2
        if start + size <= cut:
            expected_bytes += len(doc.encode("utf-8"))
        else:
            kept = doc_ids[: cut - start - 1]  # the tokens kept after its BOS
            expected_bytes += len(tokenizer.decode(kept).encode("utf-8"))
        start += size
    assert head.n_bytes == expected_bytes
    assert head.n_docs == n_docs == int(np.sum(head.tokens == BOS_ID))
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


def test_eval_batches_never_target_a_document_start():
    """A stream of documents [BOS] ids [EOS] (BOS = 1, EOS = 2, content ids unique):
    every token after the first that is not a BOS is predicted exactly once, from the
    token just before it, in stream order; a BOS is never a target (it only marks where a
    document starts). Documents of 8, 3, 15, 6 and 22 tokens put BOS at positions 0, 8,
    11, 26 and 32: position 8 is the last target of the first window of 8 and the first
    input of the second, and with max_tokens=32 the BOS at 32 is the last target."""
    stream, next_id = [], 3
    for n_content in (6, 1, 13, 4, 20):
        stream += [BOS_ID, *range(next_id, next_id + n_content), EOS_ID]
        next_id += n_content
    stream = np.array(stream, dtype=np.int32)
    assert np.flatnonzero(stream == BOS_ID).tolist() == [0, 8, 11, 26, 32]

    for max_tokens in (None, 32):
        n = len(stream) if max_tokens is None else max_tokens + 1
        # By hand: (previous token, target) for each position 1..n-1 that is no BOS.
        expected = [(int(stream[i - 1]), int(stream[i])) for i in range(1, n) if stream[i] != BOS_ID]
        assert len(expected) == n - 1 - 4  # both runs reach the BOS at 8, 11, 26 and 32
        pairs, masked_bos = [], 0
        for x, y, m in eval_batches(stream, context=8, batch_size=3, max_tokens=max_tokens, bos_id=BOS_ID):
            assert x.shape == y.shape == m.shape == (3, 8)
            pairs += list(zip(x[m > 0].tolist(), y[m > 0].tolist()))
            # What is masked out is a BOS target or padding (zeros), nothing else.
            off = m == 0
            assert np.all((y[off] == BOS_ID) | ((y[off] == 0) & (x[off] == 0)))
            masked_bos += int(np.sum(y[off] == BOS_ID))
        assert pairs == expected
        assert masked_bos == int(np.sum(stream[1:n] == BOS_ID))

    # Without a BOS id (tokenizers that prepend none) every token after the first counts.
    targets = [t for _, y, m in eval_batches(stream, 8, 3, bos_id=None) for t in y[m > 0].tolist()]
    assert targets == stream[1:].tolist()
