"""Shared fixtures: a small real tokenizer and a tiny pre-trained model, built once.

Everything comes from the corpora bundled in the package (real text), so the suite
needs no network and nothing outside the repository.
"""

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import pytest

from mlx_specialize.data.corpus import default_generic

VOCAB = 512
DOMAIN = "python-docs"
GENERIC = default_generic(DOMAIN)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tokenizer():
    corpus = ms.load_corpus(GENERIC)
    return ms.train_tokenizer(corpus.documents("train"), VOCAB, sample_chars=1_000_000)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer, cache_dir):
    """A `tiny` model pre-trained for a few steps on the bundled generic mix."""
    out = tmp_path_factory.mktemp("tiny_pretrained")
    ms.pretrain(GENERIC, ms.get_preset("tiny"), out, tokens=40 * 8 * 128, tokenizer=tokenizer,
                cache_dir=cache_dir, eval_every=20, eval_tokens=4096, lr=3e-3, warmup=5)
    return out
