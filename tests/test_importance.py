"""Importance sampling (SLM-is): k-means, samplers, resumable embeddings, the pipeline."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import mlx_specialize as ms
from mlxspec.main import app
from mlx_specialize.methods import clusters as imp
from mlx_specialize.methods.importance import load_selected
from mlx_specialize.data.clustering import assign, kmeans
from mlx_specialize.data.embedding import HashedEmbedder, embed_windows
from mlx_specialize.data.selection import histogram, importance_weights, kl_divergence, select

from helpers import GENERIC


def planted(n_per=400, k=6, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 6
    truth = np.repeat(np.arange(k), n_per)
    return (centers[truth] + rng.normal(size=(len(truth), d))).astype(np.float32), truth


@pytest.mark.parametrize("method,metric", [("lloyd", "euclidean"), ("minibatch", "euclidean"), ("lloyd", "cosine")])
def test_kmeans_recovers_planted_clusters(method, metric):
    x, truth = planted()
    result = kmeans(x, 6, metric=metric, method=method, seed=1, batch_size=512, max_iter=20)
    labels, _ = assign(x, result.centroids, metric)
    for c in range(6):  # every true cluster is one found cluster, and vice versa
        assert len(np.unique(labels[truth == c])) == 1
    assert len(np.unique(labels)) == 6 and sorted(result.counts) == [400] * 6


def test_kmeans_is_seeded_and_refuses_impossible_k():
    x, _ = planted(n_per=50)
    a, b = kmeans(x, 6, seed=3), kmeans(x, 6, seed=3)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    with pytest.raises(ms.SpecializeError, match="cannot make 400 clusters from 300"):
        kmeans(x, 400)


# A generic corpus far from uniform, and a domain that wants most of what it has least of:
# w(c) = P(c|D) / P(c|G) then differs a lot from P(c|D) (or P(c|D) * P(c|G)), so a sampler
# fed the wrong weights is caught (with a uniform generic, every such weight is a constant
# multiple of P(c|D) and draws the same windows).
GENERIC_P = np.array([0.02, 0.03, 0.05, 0.07, 0.09, 0.11, 0.13, 0.15, 0.17, 0.18])
DOMAIN_P = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.03, 0.02, 0.0])


def synthetic_labels(seed=0):
    rng = np.random.default_rng(seed)
    generic = rng.choice(10, size=200_000, p=GENERIC_P)
    domain = rng.choice(10, size=5_000, p=DOMAIN_P)
    return generic, domain, histogram(domain, 10)


def without_replacement_histogram(sizes, weights, n):
    """Expected cluster histogram of `n` windows drawn without replacement, each window
    with probability proportional to its cluster's weight (what Gumbel-top-n does), for
    many windows per cluster (Rosen's approximation of successive sampling, 1997): a window of
    cluster c is drawn with probability 1 - exp(-w(c) t), t such that the expected counts
    sum to n. Clusters the domain wants a lot of get used up, so this is not P(c|D)."""
    expected = lambda t: sizes * (1 - np.exp(-weights * t))
    lo, hi = 0.0, 1.0
    while expected(hi).sum() < n:
        hi *= 2
    for _ in range(100):  # bisection on t
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected(mid).sum() < n else (lo, mid)
    return expected(lo) / n


def test_importance_weights_by_hand():
    """w(c) = P(c|D) / P(c|G); a cluster without generic windows gets 0 (no window to draw)."""
    p_domain = np.array([0.5, 0.3, 0.2, 0.0])
    p_generic = np.array([0.25, 0.6, 0.0, 0.15])
    np.testing.assert_allclose(importance_weights(p_domain, p_generic), [2.0, 0.5, 0.0, 0.0])


@pytest.mark.parametrize("sampler,bound", [("cluster", 0.002), ("gumbel", 0.02)])
def test_selected_histogram_matches_the_domains(sampler, bound):
    """The selected windows' clusters, counted here, follow the histogram each sampler
    should give: P(c|D) itself (cluster first, with replacement), or, drawing 5% of the
    generic windows by w(c) = P(c|D) / P(c|G) without replacement, the histogram
    `without_replacement_histogram` expects from the cluster sizes and weights computed here."""
    generic, domain, _ = synthetic_labels()
    n = 10_000
    sizes = np.bincount(generic, minlength=10).astype(np.float64)
    p_domain = np.bincount(domain, minlength=10) / len(domain)
    p_generic = sizes / sizes.sum()
    selection = select(generic, domain, 10, n, sampler, seed=0)
    got = np.bincount(generic[selection.indices], minlength=10) / n
    if sampler == "cluster":
        expected = p_domain
    else:
        expected = without_replacement_histogram(sizes, p_domain / p_generic, n)
        # The test has power: the wrong weights would select far from the right ones.
        for wrong in (p_domain, p_domain * p_generic):
            assert np.abs(without_replacement_histogram(sizes, wrong, n) - expected).max() > 0.1
    assert np.abs(got - expected).max() < 0.02, (got, expected)
    assert kl_divergence(p_domain, p_generic) > 0.1  # generic is far from the target ...
    assert selection.kl_selected < bound  # ... the selection is close (without replacement: less so)
    if sampler == "gumbel":
        assert selection.repeats["max"] == 1 and selection.repeats["unique"] == n
    else:
        assert selection.repeats["unique"] < n  # with replacement


def test_unmatched_mass_is_the_domain_mass_without_generic_windows():
    """Domain windows in clusters the generic corpus lacks cannot be matched: their share
    of the domain (not of the generic corpus) is reported, and no sampler draws there."""
    generic = np.array([0, 1, 1, 2, 2, 2, 4] * 50)  # no cluster 3, nor 5
    domain = np.array([0, 0, 0, 1, 3, 3, 5, 4])  # clusters 3 and 5: 3 of its 8 windows
    for sampler in ("cluster", "gumbel"):
        selection = select(generic, domain, 6, 100, sampler, seed=0)
        assert selection.unmatched_mass == pytest.approx(3 / 8)
        assert not np.isin(generic[selection.indices], [3, 5]).any()


def test_samplers_are_deterministic_under_a_seed():
    generic, domain, _ = synthetic_labels()
    for sampler in ("cluster", "gumbel"):
        a = select(generic, domain, 10, 3000, sampler, seed=5).indices
        assert np.array_equal(a, select(generic, domain, 10, 3000, sampler, seed=5).indices)
        assert not np.array_equal(a, select(generic, domain, 10, 3000, sampler, seed=6).indices)


def test_selection_errors():
    generic, domain, _ = synthetic_labels()
    with pytest.raises(ms.SpecializeError, match="no windows"):
        select(generic, domain[:0], 10, 100)
    eligible = int(np.isin(generic, np.unique(domain)).sum())  # windows of the clusters the domain has
    with pytest.raises(ms.SpecializeError, match=f"without replacement but only {eligible} generic windows"):
        select(generic, domain, 10, eligible + 1, "gumbel")


class Interrupted(Exception):
    pass


class FailingEmbedder(HashedEmbedder):
    """Raises on the `fail_at`-th call, counts calls."""

    def __init__(self, fail_at=None):
        super().__init__(dim=32)
        self.calls, self.fail_at = 0, fail_at

    def embed(self, texts):
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupted
        return super().embed(texts)


def test_an_interrupted_embedding_job_resumes_where_it_stopped(tokenizer, tmp_path):
    split = ms.tokenize_split(ms.load_corpus("go-code"), "train", tokenizer, tmp_path)
    options = dict(window=64, cache_dir=tmp_path, shard_rows=256, batch=128, max_windows=1500)
    with pytest.raises(Interrupted):
        embed_windows(split, tokenizer, FailingEmbedder(fail_at=7), **options)  # dies in shard 3 of 6
    resumed = FailingEmbedder()
    got = embed_windows(split, tokenizer, resumed, **options)
    assert resumed.calls == 2 * 3  # only the shards not yet on disk: 3 shards x 2 batches
    fresh = embed_windows(split, tokenizer, FailingEmbedder(), **{**options, "cache_dir": tmp_path / "fresh"})
    np.testing.assert_array_equal(got.vectors, fresh.vectors)
    assert got.vectors.shape == (1500, 32) and got.vectors.dtype == np.float16
    whole = np.asarray(got.vectors)  # shards read lazily: rows by index or slice, across shard edges
    np.testing.assert_array_equal(got.vectors[np.array([1499, 0, 256, 255])], whole[[1499, 0, 256, 255]])
    np.testing.assert_array_equal(got.vectors[250:700], whole[250:700])


def test_cli_pipeline_embed_cluster_select_pretrain(tmp_path):
    runner = CliRunner()
    common = ["--cache-dir", str(tmp_path / "cache"), "--json"]
    emb = runner.invoke(app, ["data", "embed", "--generic", GENERIC, "--vocab-size", "512", "--window", "128", *common])
    assert emb.exit_code == 0, emb.output
    folder = json.loads(emb.stdout.strip().splitlines()[-1])["embeddings"]
    clu = runner.invoke(app, ["data", "cluster", folder, "--k", "8", "--out", str(tmp_path / "cl"), "--json"])
    assert clu.exit_code == 0, clu.output
    tokens = 40_000
    sel = runner.invoke(app, ["data", "select", "--clusters", str(tmp_path / "cl"), "--domain", "python-docs",
                              "--tokens", str(tokens), "--out", str(tmp_path / "sel"), *common])
    assert sel.exit_code == 0, sel.output
    report = json.loads(sel.stdout.strip().splitlines()[-1])
    windows = math.ceil(tokens / 128)  # whole 128-token windows that hold the tokens asked for
    assert report["kl_selected"] < report["kl_generic"] and report["windows"] == windows
    assert len(load_selected(tmp_path / "sel").tokens) == windows * 128
    assert (tmp_path / "sel" / "histograms.png").stat().st_size > 1000 and len(report["top_clusters"]) > 0
    pre = runner.invoke(app, ["pretrain", str(tmp_path / "pre"), "--selection", str(tmp_path / "sel"),
                              "--preset", "tiny", "--tokens", "8192", *common])
    assert pre.exit_code == 0, pre.output
    # The same domain again with other embedder settings than the centroids' is refused.
    clusters = imp.load_clusters(tmp_path / "cl")
    clusters.embedder = HashedEmbedder(dim=64)
    tok = ms.Tokenizer.load(tmp_path / "cl")
    domain = imp.corpus_split("python-docs", "train", tok, tmp_path / "cache")
    with pytest.raises(ms.SpecializeError, match="other embedder settings"):
        imp.domain_histogram_labels(clusters, domain, tok, tmp_path / "cache")
    # k larger than the generic windows, an empty domain, a domain shorter than one window: one error line each.
    (tmp_path / "empty.jsonl").write_text("")
    for args, message in ((["data", "cluster", folder, "--k", "100000", "--out", str(tmp_path / "c2")], "cannot make"),
                          (["data", "select", "--clusters", str(tmp_path / "cl"), "--domain", str(tmp_path / "empty.jsonl"),
                            "--tokens", "1000", "--out", str(tmp_path / "s3"), "--cache-dir", str(tmp_path / "cache")],
                           "no documents in its train split"),
                          (["data", "select", "--clusters", str(tmp_path / "cl"), "--domain", str(tmp_path / "one.jsonl"),
                            "--tokens", "1000", "--out", str(tmp_path / "s2"), "--cache-dir", str(tmp_path / "cache")],
                           "fewer than one 128-token window"),
                          # a --generic other than the one a selection or clustering was built on (and
                          # trains on) would be ignored: refused
                          (["pretrain", str(tmp_path / "p2"), "--selection", str(tmp_path / "sel"), "--generic",
                            "python-docs"], f"--generic python-docs: the selection {tmp_path / 'sel'} was built on "
                                            f"{GENERIC}, which the pre-training trains on; leave --generic out"),
                          (["pretrain", str(tmp_path / "p3"), "--arch", "pn", "--clusters", str(tmp_path / "cl"),
                            "--generic", "python-docs"], f"--generic python-docs: the clustering {tmp_path / 'cl'}")):
        (tmp_path / "one.jsonl").write_text(json.dumps({"text": "one short document", "split": "train"}) + "\n")
        result = runner.invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and lines[-1].startswith("error:") and message in lines[-1], result.output


def test_specialize_with_importance_sampling_lowers_domain_perplexity(tmp_path):
    report = ms.specialize("python-docs", method="is", preset="tiny", vocab_size=512, pretrain_tokens=40 * 1024,
                           finetune_tokens=16 * 1024, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", k=8,
                           window=128)
    select_phase, clusters = report["phases"]["select"], report["phases"]["clusters"]
    # --embedder auto: MiniLM would cost far more than this tiny pre-training (or is absent)
    assert clusters["embedder"] == "hashed" and clusters["embedder_reason"].startswith("auto: ")
    # costs where they are paid: the generic clustering once; the selection, its
    # pre-training and the fine-tuning for every domain
    costs = report["costs"]
    assert costs["shared"]["phases"] == ["clusters"] and clusters["seconds"] > 0 and clusters["flops"] > 0
    assert sorted(costs["per_domain"]["phases"]) == ["finetune", "pretrain", "select"]
    assert costs["per_domain"]["flops"] >= report["phases"]["pretrain"]["flops"] + report["phases"]["finetune"]["flops"]
    assert select_phase["kl_selected"] < select_phase["kl_generic"]
    assert report["ppl_after"] < report["ppl_before"]
    assert (tmp_path / "run" / "selection-histograms.png").is_file()
    # trained on resampled windows the generic valid split does not sample: it keeps its
    # final model, as the paper trains to the budget (train.config.TrainConfig.keep)
    pretrained = Path(report["phases"]["pretrain"]["model"])
    run = json.loads((pretrained / "run.json").read_text())["train"]
    assert run["keep"] == "final" and ms.load_model(pretrained)[2]["mlxspec"]["step"] == run["steps"]


def test_kmeans_fitted_on_a_sample_assigns_every_vector():
    """`max_points_per_centroid` (faiss' rule): centroids fitted on at most that many
    vectors per centre, then every vector assigned: labels and inertia over all n."""

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 10
    x = (centres[rng.integers(0, 4, 2000)] + rng.normal(size=(2000, 8))).astype(np.float32)
    sampled = kmeans(x, 4, max_points_per_centroid=50, seed=1)  # fitted on 200 of 2,000
    labels, d2 = assign(x, sampled.centroids)
    assert sampled.counts.sum() == 2000 and np.array_equal(np.bincount(labels, minlength=4), sampled.counts)
    assert sampled.inertia == pytest.approx(float(d2.astype(np.float64).sum()), rel=1e-6)
    full = kmeans(x, 4, seed=1)
    assert sampled.inertia <= 1.02 * full.inertia  # four well-separated blobs: the sample finds them too
