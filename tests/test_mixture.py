"""SLM-mix: experts see only their cluster, the selection rules, architecture checks."""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_specialize as ms
from mlx_specialize.methods import clusters as imp
from mlx_specialize.methods.mixture import choose_expert, expert_split, load_mixture

from helpers import domain_histogram


def test_an_expert_trains_on_its_cluster_and_nothing_else():
    rng = np.random.default_rng(0)
    window, labels = 16, rng.integers(0, 3, size=200)
    tokens = np.repeat(labels, window).astype(np.uint16)  # every token names its window's cluster
    generic = ms.TokenizedSplit(tokens, 10 * len(tokens), 200, "generic", None)
    for c in range(3):
        split = expert_split(generic, labels, c, window)
        assert set(np.unique(split.tokens)) == {c}  # no other cluster's window
        assert len(split.tokens) == window * np.count_nonzero(labels == c)  # all of its own
    with pytest.raises(ms.SpecializeError, match="cluster 3 has no generic windows"):
        expert_split(generic, labels, 3, window)


@pytest.fixture
def two_experts(tmp_path, tiny_model_dir, tokenizer):
    """expert-000: untrained; expert-001: the pre-trained tiny model (lower loss on text)."""
    mixture = tmp_path / "mixture"
    mx.random.seed(1)
    untrained = ms.Model(ms.load_model(tiny_model_dir)[0].args)
    ms.save_model(untrained, mixture / "expert-000", tokenizer, {"context": 128})
    shutil.copytree(tiny_model_dir, mixture / "expert-001", ignore=shutil.ignore_patterns("checkpoints"))
    (mixture / "mixture.json").write_text(json.dumps({"arch": "mix", "k": 2, "experts": ["expert-000", "expert-001"]}))
    return mixture


def test_selection_rules_pick_as_specified(two_experts, tokenizer, cache_dir, tmp_path):
    """`frequent`: the expert of the cluster most of the domain's windows fall in (by hand:
    windows in clusters 2, 0, 2, 1, 0, 2, 3 of k = 4 count [2, 1, 3, 1], so expert 2, not the
    rarest, 1, nor the runner-up, 0); `loss`: the expert with the lowest loss on the domain."""
    four = tmp_path / "four"  # `frequent` reads only mixture.json, not the experts
    four.mkdir()
    (four / "mixture.json").write_text(json.dumps({"arch": "mix", "k": 4,
                                                    "experts": [f"expert-{c:03d}" for c in range(4)]}))
    chosen, scores = choose_expert(four, "frequent", domain_labels=np.array([2, 0, 2, 1, 0, 2, 3]))
    assert chosen == 2
    np.testing.assert_allclose(scores, [2 / 7, 1 / 7, 3 / 7, 1 / 7])
    domain = imp.corpus_split("python-docs", "valid", tokenizer, cache_dir)
    labels = np.array([0, 0, 0, 1])  # the domain's windows mostly fall in cluster 0 ...
    assert choose_expert(two_experts, "frequent", domain_labels=labels)[0] == 0
    chosen, scores = choose_expert(two_experts, "loss", domain_split=domain, eval_tokens=2048)
    assert chosen == 1 and scores[1] > scores[0]  # ... but expert 1 models its text better


def test_a_dense_model_is_not_a_mixture(tiny_model_dir, tmp_path):
    with pytest.raises(ms.SpecializeError, match="is a dense model, not a mixture of experts"):
        load_mixture(tiny_model_dir)
    (tmp_path / "mixture.json").write_text(json.dumps({"arch": "pn"}))
    with pytest.raises(ms.SpecializeError, match="holds a 'pn' model, not a hard mixture"):
        choose_expert(tmp_path, "frequent", domain_labels=np.array([0]))


def test_specialize_with_a_mixture_of_experts(tmp_path):
    report = ms.specialize("python-docs", method="mix", k=3, preset="tiny", vocab_size=512,
                           pretrain_tokens=48 * 1024, finetune_tokens=16 * 1024, out_dir=tmp_path / "run",
                           cache_dir=tmp_path / "cache", window=128)
    chosen = report["phases"]["select"]
    clusters_dir = load_mixture(report["phases"]["pretrain"]["model"])["clusters"]
    expected = domain_histogram(clusters_dir, "python-docs", tmp_path / "cache")  # counted here
    assert chosen["rule"] == "frequent" and chosen["expert"] == int(np.argmax(expected))
    np.testing.assert_allclose(chosen["scores"], expected, atol=0.01)
    assert report["phases"]["pretrain"]["experts"] == 3 and report["ppl_after"] < report["ppl_before"]
    meta = load_mixture(report["phases"]["pretrain"]["model"])
    assert meta["arch"] == "mix" and len(meta["experts"]) == 3
    # each expert trained on its cluster alone, which the generic valid split does not
    # sample: it keeps its final model (train.config.TrainConfig.keep)
    for expert in meta["experts"]:
        folder = Path(report["phases"]["pretrain"]["model"]) / expert
        run = json.loads((folder / "run.json").read_text())["train"]
        assert run["keep"] == "final" and ms.load_model(folder)[2]["mlxspec"]["step"] == run["steps"]
    assert ms.load_model(tmp_path / "run")[0].args.hidden_size == ms.get_preset("tiny").hidden  # one plain dense SLM
    # --select all: every expert fine-tuned (k times the cost), the lowest valid loss kept.
    every = ms.specialize("python-docs", method="mix", k=3, select="all", preset="tiny", vocab_size=512,
                          pretrain_tokens=48 * 1024, finetune_tokens=16 * 1024, out_dir=tmp_path / "run-all",
                          cache_dir=tmp_path / "cache", window=128)
    picked = every["phases"]["select"]
    assert every["phases"]["pretrain"]["cached"] and len(picked["valid_losses"]) == 3
    assert picked["expert"] == int(np.argmin(picked["valid_losses"]))
    assert every["phases"]["finetune"]["tokens"] > 2 * report["phases"]["finetune"]["tokens"]
    # counted once: the k fine-tunings are the per-domain cost, the choice adds nothing
    costs = every["costs"]["per_domain"]
    assert "unknown" not in costs and costs["flops"] == pytest.approx(every["phases"]["finetune"]["flops"])
    assert costs["seconds"] == pytest.approx(every["phases"]["finetune"]["seconds"])
    assert not (tmp_path / "run-all" / "candidates").exists() and (tmp_path / "run-all" / "model.safetensors").is_file()


def test_commands_refuse_the_other_architecture(two_experts, tmp_path):
    from typer.testing import CliRunner

    from mlxspec.main import app

    cases = [
        (["eval", str(two_experts)], "is a mixture of experts, not a dense model"),
        (["finetune", str(two_experts), str(tmp_path / "ft")], "is a mixture of experts, not a dense model"),
        (["pretrain", str(tmp_path / "p"), "--arch", "mix"], "--arch mix needs --clusters"),
        (["pretrain", str(tmp_path / "p"), "--arch", "pn"], "--arch pn needs --clusters"),
        (["pretrain", str(tmp_path / "p"), "--arch", "moe"], "--arch: 'moe' is not one of dense, mix, pn, soup"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and lines[-1].startswith("error:") and message in lines[-1], result.output


def test_experts_can_start_from_the_generic_model(tiny_model_dir, tokenizer, cache_dir, tmp_path):
    """One training step at a tiny learning rate: an expert started from the generic model
    stays next to it; one started from scratch does not."""
    from mlx.utils import tree_flatten

    from mlx_specialize.methods.mixture import pretrain_mixture

    generic = imp.corpus_split("go-code", "train", tokenizer, cache_dir)
    labels = np.arange(len(generic.tokens) // 128) % 2
    clusters = imp.Clusters(tmp_path, np.zeros((2, 4), np.float32), labels,
                            {"window": 128, "generic": "go-code"}, None)
    base = dict(tree_flatten(ms.load_model(tiny_model_dir)[0].parameters()))
    far = {}
    for init in (tiny_model_dir, None):
        out = tmp_path / f"mix-{init is None}"
        meta = pretrain_mixture(clusters, generic, tokenizer, ms.get_preset("tiny"), out, 1024, cache_dir,
                                init_from=init, lr=1e-7, warmup=1, eval_every=1000)
        assert meta["init"] == (str(init) if init else "scratch")
        expert = dict(tree_flatten(ms.load_model(out / "expert-001")[0].parameters()))
        far[init is None] = max(float(np.abs(np.array(expert[k]) - np.array(base[k])).max()) for k in base)
    assert far[False] < 1e-3 < far[True]
