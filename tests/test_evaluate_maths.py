"""Perplexity and bits per byte against a second evaluation written here with numpy.

`evaluate` batches windows, pads and masks them, runs a compiled (fastmath) forward pass
and sums the loss in float32; its `EvalResult` then turns that sum into loss, perplexity
and bits per byte with a byte count scaled to the part of the split it covered. Here
the same figures come from a plain loop: the token stream built from the documents
ourselves, one unpadded plain forward pass per window, log-softmax and the masked sum
in float64, and UTF-8 bytes counted from the text.
"""

import math

import mlx.core as mx
import numpy as np
import pytest

import mlx_specialize as ms
from mlx_specialize.data.tokenizer import BOS_ID, EOS_ID

from helpers import DOMAIN

CONTEXT = 128


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference_eval(model, stream: np.ndarray, context: int, max_tokens: int | None) -> tuple[float, int]:
    """(summed NLL in nats, number of predicted tokens) over the first `max_tokens`
    targets of `stream`: windows of `context` inputs without overlap, each token after
    the first predicted once, a document's BOS never a target (nothing predicts where a
    new document starts; its first real token is predicted from the BOS)."""
    n = len(stream) if max_tokens is None else min(len(stream), max_tokens + 1)
    nll, count = 0.0, 0
    for start in range(0, n - 1, context):
        window = stream[start : min(start + context + 1, n)]
        inputs, targets = window[:-1], window[1:]
        logits = np.array(model(mx.array(inputs[None].astype(np.int32)))[0], dtype=np.float64)
        logp = log_softmax(logits)[np.arange(len(targets)), targets]
        keep = targets != BOS_ID
        nll -= logp[keep].sum()
        count += int(keep.sum())
    return nll, count


@pytest.fixture(scope="module")
def domain_valid(tiny_model_dir):
    """The tiny model, its tokenizer, and the domain's valid documents with their
    token stream built here: each document as [BOS] ids [EOS]."""
    model, tokenizer, _ = ms.load_model(tiny_model_dir)
    docs = list(ms.load_corpus(DOMAIN).documents("valid"))
    stream = np.array([t for doc in docs for t in [BOS_ID, *tokenizer.encode(doc), EOS_ID]], dtype=np.int64)
    return model, tokenizer, docs, stream


def prefix_bytes(docs: list[str], tokenizer, n_tokens: int) -> int:
    """UTF-8 bytes of the text that the first `n_tokens` of the stream encode: whole
    documents counted from their text, the one cut short from its kept ids decoded."""
    total, used = 0, 0
    for doc in docs:
        ids = tokenizer.encode(doc)
        if used + len(ids) + 2 <= n_tokens:
            total += len(doc.encode("utf-8"))
            used += len(ids) + 2
        else:
            kept = ids[: max(n_tokens - used - 1, 0)]  # after the document's BOS
            return total + len(tokenizer.decode(kept).encode("utf-8"))
    return total


# python-docs' first valid documents are 1582 and 265 tokens long: 2000 tokens hold two
# document starts past the first token, so BOS masking is exercised. Cases:
# - the whole split tokenized, evaluation cut at 2000 targets: the byte count is the
#   split's bytes scaled by the share of its tokens covered (2001 of ~67k);
# - the split tokenized up to 2000 tokens, all evaluated: the bytes of that text;
# - the same with a max_tokens past its end: everything covered, the same bytes.
@pytest.mark.parametrize("cut, max_tokens", [(None, 2000), (2000, None), (2000, 10**6)])
def test_evaluate_matches_a_numpy_evaluation(domain_valid, cache_dir, cut, max_tokens):
    """Loss, perplexity and bits per byte equal the numpy loop's: the NLL summed over
    non-BOS targets, their count, exp(mean NLL), and NLL / ln 2 over the UTF-8 bytes
    covered, counted from the text."""
    model, tokenizer, docs, stream = domain_valid
    split = ms.tokenize_split(ms.load_corpus(DOMAIN), "valid", tokenizer, cache_dir, max_tokens=cut)
    stream = stream[:cut]
    # The split evaluated is the stream we score by hand (else nothing below compares).
    np.testing.assert_array_equal(split.tokens, stream)
    n = len(stream)
    targets = n - 1 if max_tokens is None else min(n - 1, max_tokens)
    split_bytes = prefix_bytes(docs, tokenizer, n)
    # Bytes of the part evaluated, estimated in proportion to its tokens: the targets
    # plus the first input, out of all the split's tokens.
    covered_bytes = split_bytes * (targets + 1) / n

    nll, count = reference_eval(model, stream, CONTEXT, max_tokens)
    bos_targets = int(np.sum(stream[1 : targets + 1] == BOS_ID))
    assert bos_targets >= 1  # the case exercises BOS masking (see above)
    assert count == targets - bos_targets

    # 16 windows (the last one short) in batches of 5: the last batch holds one window
    # and four empty rows, so padding of both kinds must stay out of the sums.
    result = ms.evaluate(model, split, CONTEXT, batch_size=5, max_tokens=max_tokens)
    assert result.tokens == count
    assert result.nll == pytest.approx(nll, rel=1e-4)
    assert result.loss == pytest.approx(nll / count, rel=1e-4)
    assert result.ppl == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert result.bytes == pytest.approx(covered_bytes, rel=1e-12)
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / covered_bytes, rel=1e-4)
    # A trained model beats the uniform guess over the vocabulary (ln 512 nats), so
    # the figures above are of a real model, not of noise.
    assert nll / count < math.log(512)
