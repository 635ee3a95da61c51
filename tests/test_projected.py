"""SLM-pn and Soup-of-Experts: closed-form instantiation, cluster-grouped batches,
expert isolation, the commands and their refusals."""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from typer.testing import CliRunner

import mlx_specialize as ms
from mlxspec.main import app
from mlx_specialize.methods import clusters as imp
from mlx_specialize.models.projected import (ProjectedModel, ProjectionArgs, load_projected, one_hot,
                                             read_projected_config)
from mlx_specialize.train.projected import ClusterBatches, SoupBatches, domain_condition, instantiate_folder

from helpers import GENERIC, domain_histogram


def network(arch: str, tokenizer, k: int = 5) -> ProjectedModel:
    mx.random.seed(3)
    args = ms.get_preset("tiny").model_args(tokenizer.vocab_size)
    return ProjectedModel(args, ProjectionArgs(arch=arch, experts=k, expert_dim=4, basis=3))


@pytest.mark.parametrize("arch", ["pn", "soup"])
def test_the_instantiated_slm_gives_the_networks_logits(arch, tokenizer, cache_dir, tmp_path):
    import mlx_lm

    model = network(arch, tokenizer)
    # Perturb every weight so nothing rests on an initialisation pattern.
    model.update(nn.utils.tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), model.parameters()))
    ms.save_model(model, tmp_path / "net", tokenizer, {"context": 128})
    loaded, _, _ = load_projected(tmp_path / "net")
    text = imp.corpus_split("python-docs", "valid", tokenizer, cache_dir)
    x = mx.array(np.asarray(text.tokens[:2 * 96], dtype=np.int32).reshape(2, 96))
    histogram = np.array([0.5, 0.0, 0.2, 0.3, 0.0])
    for cond, name in ((np.eye(5)[2], "one"), (histogram, "hist")):
        instantiate_folder(tmp_path / "net", tmp_path / name, cond)
        dense, _, config = ms.load_model(tmp_path / name)  # a plain dense SLM ...
        assert dense.args == model.args and config["mlxspec"]["arch"] == arch
        expected = loaded(x, cond=mx.array(cond, dtype=mx.float32))
        np.testing.assert_allclose(np.array(dense(x)), np.array(expected), atol=2e-5, rtol=1e-5)
        theirs, _ = mlx_lm.load(str(tmp_path / name))  # ... that mlx-lm runs unchanged
        np.testing.assert_allclose(np.array(theirs(x)), np.array(expected), atol=2e-5, rtol=1e-5)
    one, hist = (ms.load_model(tmp_path / n)[0].model.layers[0].mlp.up_proj.weight for n in ("one", "hist"))
    assert float(mx.abs(one - hist).max()) > 1e-3  # the condition matters


def test_pn_batches_hold_one_cluster_and_only_its_expert_learns(tokenizer):
    rng = np.random.default_rng(0)
    window, k = 16, 4
    labels = rng.choice(k, size=300, p=[0.5, 0.3, 0.2, 0.0])
    tokens = np.repeat(labels, window).astype(np.uint16)  # every token names its window's cluster
    batches = ClusterBatches(tokens, labels, window, 15, 6, k, seed=1)
    seen = {c: [] for c in range(k)}
    for i in range(1200):
        c = int(np.argmax(batches.condition(i)))
        rows = batches.batch(i)
        assert set(np.unique(rows[:, :-1])) == {c}  # a batch never mixes clusters
        seen[c].append(i)
    assert not seen[3] and len(seen[0]) > len(seen[1]) > len(seen[2]) > 0  # drawn by cluster size
    fresh = ClusterBatches(tokens, labels, window, 15, 6, k, seed=1)  # a pure function of the index
    np.testing.assert_array_equal(fresh.batch(1100), batches.batch(1100))
    # A cluster's windows are visited once each per epoch.
    n0 = int(np.sum(labels == 0))
    starts = [r for i in seen[0][: n0 // 6] for r in ClusterBatches(np.arange(len(tokens)), labels, window, 15, 6, k,
                                                                     seed=1).batch(i)[:, 0]]
    assert len(set(starts)) == len(starts)
    # The expert embedding of another cluster gets no gradient from this batch.
    model = network("pn", tokenizer, k)
    x = mx.array(rng.integers(0, tokenizer.vocab_size, (2, 17)), dtype=mx.int32)

    def loss(m):
        return nn.losses.cross_entropy(m(x[:, :-1], cond=one_hot(1, k)), x[:, 1:]).mean()

    grad = np.array(nn.value_and_grad(model, loss)(model)[1]["expert_embedding"])
    assert np.abs(grad[1]).max() > 0 and np.all(grad[[0, 2, 3]] == 0)


def test_soup_batches_follow_their_domain_weights():
    labels = np.repeat(np.arange(6), 40)
    tokens = np.repeat(labels, 8).astype(np.uint16)
    batches = SoupBatches(tokens, labels, 8, 8, 32, 6, seed=2, support=3)
    for i in range(50):
        weights = batches.condition(i)
        assert abs(weights.sum() - 1) < 1e-5 and np.count_nonzero(weights) <= 3
        assert set(np.unique(batches.batch(i)[:, :-1])) <= set(np.flatnonzero(weights))
    np.testing.assert_array_equal(SoupBatches(tokens, labels, 8, 8, 32, 6, seed=2, support=3).batch(7),
                                  batches.batch(7))
    assert np.count_nonzero(SoupBatches(tokens, labels, 8, 8, 32, 6, seed=2).condition(0)) == 6  # default: all


def test_a_domain_condition_is_its_most_frequent_cluster_or_its_histogram():
    """By hand: windows in clusters 2, 0, 2, 1, 0, 2 of k = 4 make the histogram
    [2, 1, 3, 0] / 6; `frequent` is cluster 2's one-hot (not the rarest, 3, nor the
    runner-up, 0), `histogram` the histogram itself."""
    labels = np.array([2, 0, 2, 1, 0, 2])
    cond, chosen = domain_condition(labels, 4, "frequent")
    assert chosen["cluster"] == 2 and cond.tolist() == [0.0, 0.0, 1.0, 0.0]
    cond, chosen = domain_condition(labels, 4, "histogram")
    np.testing.assert_allclose(cond, [2 / 6, 1 / 6, 3 / 6, 0.0])
    assert "cluster" not in chosen and chosen["entropy_nats"] == pytest.approx(
        -(2 / 6 * np.log(2 / 6) + 1 / 6 * np.log(1 / 6) + 3 / 6 * np.log(3 / 6)))


def test_pretrain_pn_instantiate_and_refusals(tmp_path, tiny_model_dir):
    runner = CliRunner()
    common = ["--cache-dir", str(tmp_path / "cache"), "--json"]

    def ok(args, cache=True):
        result = runner.invoke(app, [*args, *(common if cache else ["--json"])])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.strip().splitlines()[-1])

    folder = ok(["data", "embed", "--generic", GENERIC, "--vocab-size", "512", "--window", "128"])["embeddings"]
    ok(["data", "cluster", folder, "--k", "4", "--out", str(tmp_path / "cl")], cache=False)
    summary = ok(["pretrain", str(tmp_path / "pn"), "--arch", "pn", "--clusters", str(tmp_path / "cl"),
                  "--preset", "tiny", "--tokens", "8192", "--basis", "4"])
    assert summary["params"] > 2 * summary["active_params"] and summary["best_valid_loss"] is not None
    # labelling its valid windows by cluster is timed with it, as `specialize --method pn` counts it
    trained = json.loads((tmp_path / "pn" / "summary.json").read_text())
    assert summary["label_seconds"] > 0 and summary["seconds"] == trained["seconds"] + summary["label_seconds"]
    chosen = ok(["instantiate", str(tmp_path / "pn"), str(tmp_path / "dom"), "--domain", "python-docs"])
    expected = domain_histogram(tmp_path / "cl", "python-docs", tmp_path / "cache")
    np.testing.assert_allclose(chosen["histogram"], expected, atol=0.01)
    assert chosen["cluster"] == int(np.argmax(expected))  # the most frequent cluster, counted here
    written = ms.load_model(tmp_path / "dom")[2]["mlxspec"]  # ... is the one the dense SLM was made for
    assert written["cluster"] == chosen["cluster"] and written["condition"] == np.eye(4)[chosen["cluster"]].tolist()
    ok(["instantiate", str(tmp_path / "pn"), str(tmp_path / "c1"), "--cluster", "1"])
    assert (tmp_path / "c1" / "tokenizer.model").is_file()
    ok(["finetune", str(tmp_path / "c1"), str(tmp_path / "ft"), "--tokens", "2048"])  # a dense SLM like any other
    (tmp_path / "mixture").mkdir()
    (tmp_path / "mixture" / "mixture.json").write_text(json.dumps({"arch": "mix"}))
    cases = [
        (["eval", str(tmp_path / "pn")], "is a projected network ('pn'), not a dense model"),
        (["finetune", str(tmp_path / "pn"), str(tmp_path / "x")], "is a projected network ('pn')"),
        (["instantiate", str(tiny_model_dir), str(tmp_path / "x"), "--cluster", "0"], "is a dense model, not a projected"),
        (["instantiate", str(tmp_path / "mixture"), str(tmp_path / "x"), "--cluster", "0"], "is a mixture of experts"),
        (["instantiate", str(tmp_path / "pn"), str(tmp_path / "x"), "--cluster", "9"], "cluster 9 does not exist"),
        (["instantiate", str(tmp_path / "pn"), str(tmp_path / "x"), "--weights", "1,0"], "4 non-negative cluster weights"),
        (["instantiate", str(tmp_path / "pn"), str(tmp_path / "c1"), "--cluster", "0"], "already holds a model"),
        (["instantiate", str(tmp_path / "pn"), str(tmp_path / "x")], "exactly one of --domain, --cluster or --weights"),
        (["pretrain", str(tmp_path / "pn"), "--arch", "pn", "--clusters", str(tmp_path / "cl"), "--preset", "tiny",
          "--tokens", "8192"], "already holds a run"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and lines[-1].startswith("error:") and message in lines[-1], result.output
    assert ms.load_model(tmp_path / "c1")[0] is not None  # the refused overwrite left it whole


def test_specialize_with_a_projected_network_and_a_soup(tmp_path):
    options = {"domain": "python-docs", "k": 3, "preset": "tiny", "vocab_size": 512, "pretrain_tokens": 48 * 1024,
               "finetune_tokens": 16 * 1024, "cache_dir": tmp_path / "cache", "window": 128}
    pn = ms.specialize(method="pn", out_dir=tmp_path / "pn", **options)
    chosen = pn["phases"]["select"]
    clusters_dir = read_projected_config(pn["phases"]["pretrain"]["model"])["mlxspec"]["clusters"]
    expected = domain_histogram(clusters_dir, "python-docs", tmp_path / "cache")  # counted here
    assert chosen["rule"] == "frequent" and chosen["cluster"] == int(np.argmax(expected))
    condition = ms.load_model(chosen["instance"])[2]["mlxspec"]["condition"]  # what the SLM was made for
    assert condition == np.eye(3)[int(np.argmax(expected))].tolist()
    assert pn["ppl_after"] < pn["ppl_before"] and pn["phases"]["pretrain"]["arch"] == "pn"
    # its instance reused by the same command elsewhere: the seconds reported are what making
    # it took, as its FLOPs are, not this lookup's
    again = ms.specialize(method="pn", out_dir=tmp_path / "pn-again", **options)
    assert again["phases"]["select"]["instance"] == chosen["instance"]
    assert again["phases"]["select"]["seconds"] == chosen["seconds"] > 0
    soup = ms.specialize(method="soup", out_dir=tmp_path / "soup", **options)
    assert soup["phases"]["select"]["rule"] == "histogram" and "cluster" not in soup["phases"]["select"]
    condition = ms.load_model(soup["phases"]["select"]["instance"])[2]["mlxspec"]["condition"]
    np.testing.assert_allclose(condition, expected, atol=0.01)  # the whole histogram
    # the soup trains on mixtures of clusters that one-cluster validation does not sample:
    # it keeps its final model; the pn, validated on the clusters it trains on, its best
    runs = {name: json.loads((Path(r["phases"]["pretrain"]["model"]) / "run.json").read_text())["train"]
            for name, r in (("pn", pn), ("soup", soup))}
    assert runs["soup"]["keep"] == "final" and "keep" not in runs["pn"]
    assert soup["ppl_after"] < soup["ppl_before"]
    # trained on 2-cluster conditions: another network, cached apart, its support reported
    narrow = ms.specialize(method="soup", soup_support=2, out_dir=tmp_path / "soup2", **options)
    assert (soup["phases"]["pretrain"]["support"], narrow["phases"]["pretrain"]["support"]) == (3, 2)
    assert narrow["phases"]["pretrain"]["model"] != soup["phases"]["pretrain"]["model"]
    assert not narrow["phases"]["pretrain"]["cached"] and narrow["ppl_after"] != soup["ppl_after"]
    with pytest.raises(ms.SpecializeError, match="--soup-support goes with --method soup, not pn"):
        ms.specialize(method="pn", soup_support=2, out_dir=tmp_path / "x", **options)
    with pytest.raises(ms.SpecializeError, match=r"--soup-support 4: more than the 3 clusters \(--k\)"):
        ms.specialize(method="soup", soup_support=4, out_dir=tmp_path / "x", **options)
    slm = ms.count_params(ms.get_preset("tiny").model_args(512))["total"]
    assert pn["params"] == soup["params"] == slm  # inference runs one plain SLM
    with pytest.raises(ms.SpecializeError, match="--select frequent|histogram"):
        ms.specialize(method="pn", select="all", out_dir=tmp_path / "x", **options)
