"""The library checks its own inputs: every check of a command is in the function it
calls (the command line only parses), each refusal one line naming the option, in the
order the options are read, before any work: nothing written, no model loaded.
"""

import pytest

from mlx_specialize import methods
from mlx_specialize.errors import SpecializeError
from mlx_specialize.specialize import resolve_run


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    """A scratch working folder and cache: a check that let its input through would write there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLXSPEC_CACHE", str(tmp_path / "cache"))


def refused(call, *expected: str) -> str:
    with pytest.raises(SpecializeError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and all(text in message for text in expected), message
    return message


SPECIALIZE = dict(domain="python-docs", generic=None, method="finetune", base=None, preset="tiny", out_dir=None,
                  domain_tokens=None, pretrain_tokens=1000, finetune_tokens=1000, vocab_size=None, lr=None, seed=0,
                  overwrite=False, k=None, embedder="hashed", window=None, sampler="cluster", metric="cosine",
                  select=None, expert_init="scratch", basis=None)


@pytest.mark.parametrize("changes, expected", [
    ({"method": "magic"}, "--method: 'magic' is not one of finetune, is, mix, pn, soup"),
    ({"preset": "gigantic"}, "--preset: 'gigantic' is not one of"),
    ({"method": "mix", "select": "best"}, "--select: 'best' is not one of frequent, loss, all"),
    ({"method": "pn", "select": "all"}, "--select: 'all' is not one of frequent, histogram"),
    ({"expert_init": "warm"}, "--expert-init: 'warm' is not one of scratch, generic"),
    ({"embedder": "bert"}, "--embedder: 'bert' is not one of hashed, minilm"),
    ({"sampler": "topk"}, "--sampler: 'topk' is not one of cluster, gumbel"),
    ({"metric": "manhattan"}, "--metric: 'manhattan' is not one of"),
    ({"method": "is", "base": "some/model"}, "--method is pre-trains its own base: drop --base"),
    ({"domain_tokens": 50}, "--domain-tokens: 50 tokens are fewer than one training window of the 'tiny' preset"),
    ({"domain": "klingon-poetry"}, "unknown corpus 'klingon-poetry'"),
    # the first refusal wins, in the order of the checks: the method's choices before the data
    ({"method": "mix", "select": "best", "embedder": "bert", "domain_tokens": 50}, "--select: "),
    ({"embedder": "bert", "sampler": "topk"}, "--embedder: "),
    ({"sampler": "topk", "domain": "klingon-poetry"}, "--sampler: "),
])
def test_specialize_is_checked_once_in_the_library(tmp_path, changes, expected):
    refused(lambda: resolve_run(**{**SPECIALIZE, **changes}), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no runs/, no cache


def test_a_method_resolves_its_defaults():
    settings = methods.get_method("soup").resolve(methods.Settings(
        domain="d", generic="g", method="soup", preset="tiny", pretrain_tokens=1, finetune_tokens=1,
        domain_tokens=None, vocab_size=None, seed=0, cache_dir="c"))
    assert (settings.k, settings.select) == (16, "histogram")
