"""Cache keys: a changed input must miss the cache, the same inputs must hit it.

Every cached result (tokenized splits, the generic tokenizer, embeddings, clusters, the
pre-trained generic model, the SLM-is model, the SLM-mix experts, the pn/soup network)
lives in a folder named by a hash of the inputs that decide it. If an input is left out
of the hash, two configurations silently share one cached result: a `--seed 1` run
reports the seed-0 model, a `--k 8` run trains on 4 clusters. The tests below list, from
what each result depends on (not from the key code), the inputs that must matter, and
check that changing each one alone gives another folder (a miss) while the same inputs
give the same folder (a hit).

Two ways to see a key:
- for the cheap steps (tokens, tokenizer, embeddings, clusters) and the generic model,
  the real function runs on small real text and its `reused` flag, folder and result
  are checked;
- for the SLM-is / SLM-mix / pn pre-trainings, the expensive step the job calls after
  its cache lookup is replaced by a stand-in that raises `Miss(folder)`: the job ran
  its real lookup, found nothing, and was about to train into `folder`. Everything
  before it (tokenizer, clusters, domain histogram) is real.
"""

import importlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import mlx_specialize as ms
from mlx_specialize.methods import clusters as imp
from mlx_specialize.data.embedding import HashedEmbedder, embed_windows, load_embedded
from mlx_specialize.data.tokenizer import BOS_ID, EOS_ID
from mlx_specialize.data.tokens import TokenizedSplit

slm = importlib.import_module("mlx_specialize.methods.slm")
importance = importlib.import_module("mlx_specialize.methods.importance")
mixture = importlib.import_module("mlx_specialize.methods.mixture")
projected = importlib.import_module("mlx_specialize.methods.projected")
jobs = importlib.import_module("mlx_specialize.train.jobs")


# ---- small real corpora --------------------------------------------------------------

def excerpts(name: str, n: int, chars: int = 1200) -> list[str]:
    """The first `n` train documents of a bundled corpus, cut to `chars` characters:
    real text, small enough that embedding and k-means take a fraction of a second."""
    return [doc[:chars] for doc in itertools.islice(ms.load_corpus(name).documents("train"), n)]


def write_jsonl(path: Path, texts: list[str], with_splits: bool = True) -> str:
    """A local corpus file; with_splits: every 10th document valid, the next one test."""
    split = {0: "valid", 1: "test"}
    rows = [{"text": t, **({"split": split.get(i % 10, "train")} if with_splits else {})} for i, t in enumerate(texts)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def edit_one_word(texts: list[str]) -> list[str]:
    """The same documents with one word changed in one of them (a corpus edited in place)."""
    out = list(texts)
    out[3] = out[3].replace(" ", " edited ", 1)
    assert out[3] != texts[3]
    return out


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Local corpora: a generic mix (go code + postgres docs, ~20k tokens), two domains."""
    folder = tmp_path_factory.mktemp("key-corpora")
    generic = excerpts("go-code", 20, 1000) + excerpts("postgres-docs", 20, 1000)
    return {
        "generic": write_jsonl(folder / "generic.jsonl", generic),
        "generic_texts": generic,
        "domain": write_jsonl(folder / "domain.jsonl", excerpts("python-docs", 30)),
        "other_domain": write_jsonl(folder / "other-domain.jsonl", excerpts("python-code", 30)),
    }


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the clusters test and the SLM-is/mix/pn job tests: they share
    generic tokenizers and clusterings, each of which is made once."""
    return tmp_path_factory.mktemp("key-cache")


# ---- seeing a key ----------------------------------------------------------------------

class Miss(Exception):
    """Raised by a stand-in for a job's expensive step: the cache missed; args[0] is the
    folder the step was asked to fill."""


def stand_in(monkeypatch, module, name, folder_of):
    """Replace `module.name` by a function that raises Miss(folder_of(args))."""
    def missed(*args, **kwargs):
        raise Miss(Path(folder_of(args)))

    monkeypatch.setattr(module, name, missed)


def missed_folder(job, *args, **settings) -> Path:
    with pytest.raises(Miss) as missed:
        job(*args, **settings)
    return missed.value.args[0]


def prepare(method: str, preset_name, tokens, rule=None, arch=None, **settings):
    """`get_method(method).prepare` on settings named as the tests name them."""
    from mlx_specialize.methods import Settings, get_method

    chosen = get_method(arch or method)
    return chosen.prepare(chosen.resolve(Settings(method=arch or method, preset=preset_name, pretrain_tokens=tokens,
                                                  finetune_tokens=1, select=rule, **settings)))


def check_keys(key_of, base: dict, changes: dict, unchanged: dict | None = None) -> None:
    """key_of(**base) twice gives one key (a hit); each entry of `changes` (a name and the
    settings it overrides) gives a key of its own, unlike the base's and every other
    change's (a miss); each entry of `unchanged` (settings the result does not depend
    on) gives the base key again."""
    first = key_of(**base)
    assert key_of(**base) == first, "the same settings gave another key"
    keys = {name: key_of(**{**base, **override}) for name, override in changes.items()}
    reused = [name for name, key in keys.items() if key == first]
    assert not reused, f"changing {reused} reused the cached result"
    assert len(set(keys.values())) == len(keys), f"two changes share a key: {keys}"
    for name, override in (unchanged or {}).items():
        assert key_of(**{**base, **override}) == first, f"{name} does not change the result but missed"


# ---- the token cache (data/tokens.py) -------------------------------------------------

def stream(tokenizer, texts: list[str]) -> list[int]:
    """The expected token stream, by hand: [BOS] ids [EOS] per document, in order."""
    return [t for text in texts for t in [BOS_ID, *tokenizer.encode(text), EOS_ID]]


def test_token_cache_misses_on_edited_text_another_tokenizer_or_a_moved_file(tokenizer, tmp_path, monkeypatch):
    """A tokenized split is reused only for the same corpus content, tokenizer, split
    and limit. Each changed input must give the tokens of the new input (checked
    against an encoding done here), never the cached ones."""
    cache = tmp_path / "cache"
    texts = excerpts("python-docs", 8, chars=600)
    path = tmp_path / "corpus.jsonl"
    write_jsonl(path, texts)  # documents 2..7 are train (write_jsonl)
    train = texts[2:]

    def tokens(tok=tokenizer, max_tokens=None) -> list[int]:
        return ms.tokenize_split(ms.load_corpus(str(path)), "train", tok, cache, max_tokens).tokens.tolist()

    assert tokens() == stream(tokenizer, train)
    with monkeypatch.context() as m:  # the same inputs: read from the cache, not encoded again
        m.setattr(type(tokenizer), "encode_batch", lambda *a, **k: pytest.fail("tokenized again"))
        assert tokens() == stream(tokenizer, train)
    assert tokens(max_tokens=50) == stream(tokenizer, train)[:50]  # another limit

    edited = edit_one_word(texts)  # the same file, one word changed in train document 3
    write_jsonl(path, edited)
    edited_train = edited[2:]
    assert tokens() == stream(tokenizer, edited_train)

    other = ms.train_tokenizer(texts, 400)
    assert other.fingerprint != tokenizer.fingerprint
    assert tokens(other) == stream(other, edited_train)

    # Splits from folders: moving train/2.jsonl to valid/ keeps every byte and the file
    # order, but the train split loses that file's documents.
    corpus = tmp_path / "split-folders"
    for name, part in (("train/1.jsonl", texts[:3]), ("train/2.jsonl", texts[3:6]), ("valid/3.jsonl", texts[6:])):
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(corpus / name, part, with_splits=False)
    before = ms.tokenize_split(ms.load_corpus(str(corpus)), "train", tokenizer, cache)
    assert before.tokens.tolist() == stream(tokenizer, texts[:6])
    shutil.move(corpus / "train" / "2.jsonl", corpus / "valid" / "2.jsonl")
    after = ms.tokenize_split(ms.load_corpus(str(corpus)), "train", tokenizer, cache)
    assert after.tokens.tolist() == stream(tokenizer, texts[:3]), "the train split still holds a moved file"


# ---- the generic tokenizer (importance.generic_tokenizer) ------------------------------

def test_generic_tokenizer_cache_follows_corpus_content_and_vocabulary(corpora, tmp_path, monkeypatch):
    """The tokenizer SLM-is/mix/pn share is cached by corpus content and vocabulary."""
    cache, path = tmp_path / "cache", tmp_path / "generic.jsonl"
    texts = corpora["generic_texts"][:30]
    write_jsonl(path, texts)
    first = imp.generic_tokenizer(str(path), 512, cache)
    with monkeypatch.context() as m:
        m.setattr(jobs, "fit_tokenizer", lambda *a: pytest.fail("trained again"))
        assert imp.generic_tokenizer(str(path), 512, cache).fingerprint == first.fingerprint
    assert imp.generic_tokenizer(str(path), 400, cache).vocab_size <= 400 < first.vocab_size
    write_jsonl(path, excerpts("python-code", 30))  # the same path, other text
    retrained = imp.generic_tokenizer(str(path), 512, cache)
    # What a fresh training on the new text gives, not the cached tokenizer.
    fresh = ms.train_tokenizer(ms.load_corpus(str(path)).documents("train"), 512)
    assert retrained.fingerprint == fresh.fingerprint != first.fingerprint


# ---- embeddings (data/embedding.py) -----------------------------------------------------

class CountingEmbedder(HashedEmbedder):
    calls = 0

    def embed(self, texts):
        type(self).calls += 1
        return super().embed(texts)


def test_embeddings_miss_on_window_embedder_tokenizer_or_stream(tokenizer, tmp_path):
    """Window vectors are reused only for the same token stream, tokenizer (which
    decodes the windows to text), window and embedder settings. At most 100 windows
    each, so that a window change does not also change the number of windows."""
    cache = tmp_path / "cache"
    split = ms.tokenize_split(ms.load_corpus("python-docs"), "valid", tokenizer, cache, max_tokens=6000)

    def folder(split=split, tok=tokenizer, embedder=None, window=32):
        return embed_windows(split, tok, embedder or CountingEmbedder(dim=32), window, cache, max_windows=100).folder

    first = folder()
    CountingEmbedder.calls = 0
    assert folder() == first and CountingEmbedder.calls == 0  # a hit: nothing embedded
    other = ms.train_tokenizer(ms.load_corpus("python-docs").documents("valid"), 1024)  # decodes the same ids
    assert other.vocab_size > tokenizer.vocab_size and other.fingerprint != tokenizer.fingerprint
    shuffled = TokenizedSplit(np.roll(np.asarray(split.tokens), 7), split.n_bytes, split.n_docs, split.name)
    misses = {
        "window": folder(window=48),
        "dim": folder(embedder=CountingEmbedder(dim=64)),
        "projection seed": folder(embedder=CountingEmbedder(dim=32, seed=1)),
        "idf": folder(embedder=CountingEmbedder(dim=32).fit_idf(["def return", "select from"])),
        "tokenizer": folder(tok=other),
        "stream (same name and length)": folder(split=shuffled),
    }
    reused = [name for name, got in misses.items() if got == first]
    assert not reused and len(set(misses.values())) == len(misses), f"reused: {reused}"
    # The new window in effect: the first vector embeds the text of the first 48 tokens.
    expected = CountingEmbedder(dim=32).embed([tokenizer.decode(split.tokens[:48])])[0]
    np.testing.assert_allclose(load_embedded(misses["window"]).vectors[:1][0], expected, atol=2e-3)


# ---- clusters (importance.cached_clusters) ----------------------------------------------

def test_clusters_miss_on_each_setting_and_hit_on_the_same(corpora, shared_cache, tmp_path, monkeypatch):
    """The k-means clustering shared by SLM-is/mix/pn is reused only for the same
    generic corpus (content), tokenizer, embedder, window, k, metric and seed: each
    change gets a folder of its own, holding a clustering made with the new setting
    (k, window, metric and tokenizer checked against counts made here)."""
    cache, generic = shared_cache, corpora["generic"]
    tok = imp.generic_tokenizer(generic, 512, cache)
    base = dict(generic=generic, tokenizer=tok, embedder_name="hashed", window=32, k=4, metric="cosine", seed=0,
                cache_dir=cache)
    first, _ = imp.cached_clusters(**base)  # made here, or by a job test below (the cache is shared)
    with monkeypatch.context() as m:  # the same settings: loaded, nothing embedded or clustered
        m.setattr(imp, "embed_generic", lambda *a, **k: pytest.fail("embedded again"))
        again, reused = imp.cached_clusters(**base)
        assert reused and again.folder == first.folder
        np.testing.assert_array_equal(again.centroids, first.centroids)

    changes = {"k": {"k": 5}, "window": {"window": 48}, "metric": {"metric": "euclidean"}, "seed": {"seed": 1},
               "tokenizer": {"tokenizer": imp.generic_tokenizer(generic, 384, cache)}}
    folders = {}
    for name, override in changes.items():
        got, _ = imp.cached_clusters(**{**base, **override})
        folders[name] = got.folder
        settings = {**base, **override}
        # The clustering found is one made with the new settings (counted here).
        clusters, labelled = len(got.centroids), len(got.labels)
        assert clusters == settings["k"], f"{name}: {clusters} clusters, not {settings['k']}"
        assert got.meta["metric"] == settings["metric"], f"{name}: clustered with another metric"
        windows = imp.corpus_split(generic, "train", settings["tokenizer"], cache).n_tokens // settings["window"]
        assert labelled == windows, f"{name}: {labelled} windows, not the {windows} of this window size"
    reused = [name for name, folder in folders.items() if folder == first.folder]
    assert not reused, f"changing {reused} reused the cached clusters"
    assert len(set(folders.values())) == len(folders)

    # The same corpus path with edited text (a smaller corpus, to keep it quick): from
    # here on a miss is seen without clustering, as the call to embed the generic corpus.
    edited = tmp_path / "edited.jsonl"
    write_jsonl(edited, corpora["generic_texts"][:20])
    imp.cached_clusters(**{**base, "generic": str(edited)})
    assert imp.cached_clusters(**{**base, "generic": str(edited)})[1]
    write_jsonl(edited, edit_one_word(corpora["generic_texts"][:20]))
    stand_in(monkeypatch, imp, "embed_generic", lambda args: args[2])
    with pytest.raises(Miss):
        imp.cached_clusters(**{**base, "generic": str(edited)})
    # Another embedder (MiniLM, whose checkpoint may be absent here) must not find the
    # hashed clustering.
    with pytest.raises(Miss):
        imp.cached_clusters(**{**base, "embedder_name": "minilm"})


# ---- the generic pre-trained model (specialize.cached_pretrain) -------------------------

def test_pretrained_model_key_follows_every_input(corpora, tmp_path, monkeypatch):
    """`CACHE/pretrained/<key>`: the generic model depends on the corpus (its content),
    the preset (and a context override), the token budget, the vocabulary and the seed."""
    stand_in(monkeypatch, slm, "pretrain", lambda args: args[2])
    edited = tmp_path / "edited.jsonl"
    write_jsonl(edited, corpora["generic_texts"])
    base = dict(generic=corpora["generic"], preset_name="tiny", tokens=4096, vocab_size=512, seed=0,
                cache_dir=tmp_path / "cache", context=None)
    check_keys(lambda **s: missed_folder(slm.cached_pretrain, **s), base, {
        "preset": {"preset_name": "small"},
        "context": {"context": 64},
        "pretrain tokens": {"tokens": 8192},
        "vocabulary": {"vocab_size": 384},
        "seed": {"seed": 1},
        "generic corpus": {"generic": corpora["domain"]},
    })
    # The same corpus file edited in place.
    before = missed_folder(slm.cached_pretrain, **{**base, "generic": str(edited)})
    write_jsonl(edited, edit_one_word(corpora["generic_texts"]))
    assert missed_folder(slm.cached_pretrain, **{**base, "generic": str(edited)}) != before


def test_a_changed_seed_or_vocabulary_pretrains_anew(corpora, tmp_path):
    """End to end, with real (two-step) pre-trainings: the same call reuses the model,
    another seed or vocabulary trains a new one, which differs from the first."""
    args = dict(generic=corpora["generic"], preset_name="tiny", tokens=2 * 8 * 128, vocab_size=512, seed=0,
                cache_dir=tmp_path / "cache")
    first, summary, reused = slm.cached_pretrain(**args)
    assert not reused and summary["tokens"] == 2 * 8 * 128
    again, _, reused = slm.cached_pretrain(**args)
    assert reused and again == first, "the same call trained again"
    model = ms.load_model(first)[0]

    seeded, _, reused = slm.cached_pretrain(**{**args, "seed": 1})
    assert not reused and seeded != first, "seed 1 reused the seed-0 model"
    # Another seed, another initialisation: different weights.
    assert not np.allclose(np.array(ms.load_model(seeded)[0].model.embed_tokens.weight),
                           np.array(model.model.embed_tokens.weight))

    smaller, _, reused = slm.cached_pretrain(**{**args, "vocab_size": 384})
    assert not reused and smaller not in (first, seeded), "vocabulary 384 reused a 512-token model"
    assert ms.load_model(smaller)[0].args.vocab_size <= 384 < model.args.vocab_size


# ---- SLM-is, SLM-mix and pn/soup pre-trainings -------------------------------------------

def job_settings(corpora, cache) -> dict:
    return dict(domain=corpora["domain"], generic=corpora["generic"], preset_name="tiny", tokens=4096,
                vocab_size=512, seed=0, cache_dir=cache, domain_tokens=3000, k=4, embedder="hashed", window=32,
                metric="cosine")


def test_importance_sampled_model_key(corpora, shared_cache, monkeypatch):
    """`CACHE/pretrained-is/<key>`: an SLM-is model depends on the domain (content and
    token budget), the pre-training budget, the sampler, the seed, the preset and,
    through the clustering, on k, the window, the metric and the vocabulary."""
    stand_in(monkeypatch, importance, "select_tokens", lambda args: Path(args[4]).parent)  # folder/"selection"
    check_keys(lambda **s: missed_folder(prepare, "is", **s),
               {**job_settings(corpora, shared_cache), "sampler": "cluster"}, {
        "domain": {"domain": corpora["other_domain"]},
        "domain tokens": {"domain_tokens": 2000},
        "pretrain tokens": {"tokens": 8192},
        "sampler": {"sampler": "gumbel"},
        "seed": {"seed": 1},
        "preset": {"preset_name": "small"},
        "k": {"k": 5},
        "window": {"window": 48},
        "metric": {"metric": "euclidean"},
        "vocabulary": {"vocab_size": 384},
    })


def test_mixture_of_experts_key(corpora, shared_cache, monkeypatch):
    """`CACHE/mixtures/<key>`: the k experts depend on k (one per cluster), the budget,
    the seed, the preset, the window, the vocabulary and their initialisation; not on
    the domain or the selection rule (one mixture serves every domain)."""
    stand_in(monkeypatch, mixture, "pretrain_mixture", lambda args: args[4])
    generic_model = (shared_cache / "a-generic-model", {"tokens": 0, "seconds": 0.0, "flops": 0.0}, True)
    monkeypatch.setattr(mixture, "cached_pretrain", lambda *a, **k: generic_model)
    check_keys(lambda **s: missed_folder(prepare, "mix", **s),
               {**job_settings(corpora, shared_cache), "rule": "frequent", "expert_init": "scratch"}, {
        "k (experts)": {"k": 5},
        "pretrain tokens": {"tokens": 8192},
        "seed": {"seed": 1},
        "preset": {"preset_name": "small"},
        "window": {"window": 48},
        "vocabulary": {"vocab_size": 384},
        "initialisation": {"expert_init": "generic"},
    }, unchanged={"domain": {"domain": corpora["other_domain"]}, "rule": {"rule": "loss"}})


def test_projected_network_key(corpora, shared_cache, monkeypatch):
    """`CACHE/projected/<key>`: a pn/soup network depends on the architecture, the
    basis size h, k, the budget, the seed, the preset, the window and the vocabulary;
    not on the domain or the instantiation rule (one network serves every domain)."""
    stand_in(monkeypatch, projected, "pretrain_projected", lambda args: args[6])
    check_keys(lambda **s: missed_folder(prepare, "pn", **s),
               {**job_settings(corpora, shared_cache), "arch": "pn", "rule": "frequent", "basis": 8}, {
        "architecture": {"arch": "soup"},
        "basis h": {"basis": 4},
        "k": {"k": 5},
        "pretrain tokens": {"tokens": 8192},
        "seed": {"seed": 1},
        "preset": {"preset_name": "small"},
        "window": {"window": 48},
        "vocabulary": {"vocab_size": 384},
    }, unchanged={"domain": {"domain": corpora["other_domain"]}, "rule": {"rule": "histogram"}})
