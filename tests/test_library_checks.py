"""The library checks its own inputs: every check of a command is in the function it
calls (the command line only parses), each refusal one line naming the option, in the
order the options are read, before any work: nothing written, no model loaded.

`pretrain_run` finds the architecture's method in the methods registry and runs its
checks, then its pre-training.
"""

import pytest

from mlx_specialize import methods, training
from mlx_specialize.bench import BenchConfig, export_and_compare, run_bench
from mlx_specialize.errors import SpecializeError
from mlx_specialize.methods.clusters import cluster_embeddings, embed_corpus
from mlx_specialize.methods.importance import select_for_domain
from mlx_specialize.specialize import resolve_run
from mlx_specialize.train.jobs import evaluate_split


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
    ({"method": "magic"}, "--method: 'magic' is not one of finetune, nopt, llm, llm-lora, distill, is, mix, pn, soup"),
    ({"preset": "gigantic"}, "--preset: 'gigantic' is not one of"),
    ({"method": "mix", "select": "best"}, "--select: 'best' is not one of frequent, loss, all"),
    ({"method": "pn", "select": "all"}, "--select: 'all' is not one of frequent, histogram"),
    ({"expert_init": "warm"}, "--expert-init: 'warm' is not one of scratch, generic"),
    ({"embedder": "bert"}, "--embedder: 'bert' is not one of auto, hashed, minilm"),
    ({"sampler": "topk"}, "--sampler: 'topk' is not one of cluster, gumbel"),
    ({"metric": "manhattan"}, "--metric: 'manhattan' is not one of"),
    ({"method": "is", "base": "some/model"}, "--method is pre-trains its own base: drop --base"),
    ({"domain_tokens": 50}, "--domain-tokens: 50 tokens are fewer than one training window of the 'tiny' preset"),
    ({"domain": "klingon-poetry"}, "unknown corpus 'klingon-poetry'"),
    # the first refusal wins, in the order of the checks: the method's choices before the data
    ({"method": "mix", "select": "best", "embedder": "bert", "domain_tokens": 50}, "--select: "),
    ({"embedder": "bert", "sampler": "topk"}, "--embedder: "),
    ({"sampler": "topk", "domain": "klingon-poetry"}, "--sampler: "),
    ({"method": "soup", "soup_support": 0}, "--soup-support must be at least 1, not 0"),
    ({"method": "soup", "soup_support": 17}, r"--soup-support 17: more than the 16 clusters"),
    ({"soup_support": 3}, "--soup-support goes with --method soup, not finetune"),
    ({"pretrain_tokens": 10**16}, "--pretrain-tokens: 1e+16 tokens is more than 1e+15"),
    ({"finetune_tokens": 10**23}, "--finetune-tokens: 1e+23 tokens is more than 1e+15"),
    ({"domain_tokens": 2 * 10**15}, "--domain-tokens: 2e+15 tokens is more than 1e+15"),
])
def test_specialize_is_checked_once_in_the_library(tmp_path, changes, expected):
    refused(lambda: resolve_run(**{**SPECIALIZE, **changes}), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no runs/, no cache


def test_a_method_resolves_its_defaults():
    settings = methods.get_method("soup").resolve(methods.Settings(
        domain="d", generic="g", method="soup", preset="tiny", pretrain_tokens=1, finetune_tokens=1,
        domain_tokens=None, vocab_size=None, seed=0, cache_dir="c"))
    assert (settings.k, settings.select) == (16, "histogram")


def test_every_architecture_is_pretrained_by_its_method_from_the_registry():
    assert list(methods.ARCHS) == ["dense", "mix", "pn", "soup"]
    owners = {arch: method.name for arch, method in methods.ARCHS.items()}
    assert owners == {"dense": "finetune", "mix": "mix", "pn": "pn", "soup": "soup"}
    for method in methods.ARCHS.values():
        assert type(method).pretrain is not methods.Method.pretrain, method.name
    refused(lambda: methods.get_arch("moe"), "--arch: 'moe' is not one of dense, mix, pn, soup")


def test_pretrain_run_checks_then_warns_then_pretrains_with_the_architectures_method(monkeypatch, tmp_path):
    said = []
    monkeypatch.setattr(training, "warn_slow_paths", lambda: said.append("warn"))
    for arch, method in methods.ARCHS.items():
        monkeypatch.setattr(method, "check_pretrain", lambda job, name=method.name: said.append(("check", name, job)))
        monkeypatch.setattr(method, "pretrain", lambda job, name=method.name: said.append(("train", name)) or {})
    training.pretrain_run(tmp_path / "run", "pn", preset="tiny", tokens=4096, clusters="cl", basis=4, lr=1e-3)
    (check, name, job), warned, trained = said
    assert (check, name, warned, trained) == ("check", "pn", "warn", ("train", "pn"))
    assert (job.clusters.name, job.basis, job.train_options, job.tokens) == ("cl", 4, {"lr": 1e-3}, 4096)
    assert job.generic is None  # the default: the bundled corpora (dense), the clustering's (here)


@pytest.mark.parametrize("kwargs, expected", [
    ({"arch": "moe", "preset": "gigantic"}, "--arch: 'moe'"),
    ({"preset": "gigantic", "precision": "fp8"}, "--preset: 'gigantic'"),
    ({"precision": "fp8", "arch": "pn"}, "--precision: 'fp8' is not one of float32, bf16"),
    ({"arch": "pn"}, "--arch pn needs --clusters"),
    ({"arch": "mix"}, "--arch mix needs --clusters"),
    ({"arch": "pn", "clusters": "no-clusters"}, "no clusters at no-clusters"),
    ({"arch": "dense", "selection": "no-selection"}, "no selection at no-selection"),
    ({"arch": "dense", "generic": "klingon-poetry"}, "unknown corpus 'klingon-poetry'"),
])
def test_pretrain_run_refuses_before_any_work(tmp_path, kwargs, expected):
    refused(lambda: training.pretrain_run(tmp_path / "run", **kwargs), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_run_folder_that_holds_a_run_is_refused_before_the_data_is_read(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    for arch in ("dense", "pn", "soup"):  # before --clusters, and before the (unknown) corpus
        refused(lambda: training.pretrain_run(run, arch, generic="klingon-poetry"), "already holds a run")
    refused(lambda: training.finetune_run("no-model", "klingon-poetry", run), "already holds a run")
    refused(lambda: training.finetune_run("no-model", "klingon-poetry", run, precision="fp8"), "--precision: ")
    refused(lambda: training.finetune_run("no-model", "klingon-poetry", tmp_path / "new"), "unknown corpus")
    (tmp_path / "afile").write_text("x")
    refused(lambda: training.finetune_run("no-model", "python-docs", tmp_path / "afile"), "is a file")


def test_the_other_commands_refuse_by_option_before_loading_anything(tmp_path):
    """Each names the option, although the model, the clusters or the embeddings named
    next to it do not exist: refused before they are looked at."""
    refused(lambda: evaluate_split("no-model", "python-docs", "dev"), "--split: 'dev' is not one of train, valid, test")
    refused(lambda: export_and_compare("no-model", tmp_path / "out", bits=7), "--quantize: '7' is not one of")
    refused(lambda: export_and_compare("no-model", tmp_path / "out", bits=4, group_size=7), "--group-size: '7'")
    refused(lambda: export_and_compare("no-model", tmp_path / "out", dtype="half"), "--dtype: 'half'")
    refused(lambda: run_bench(["no-model"], BenchConfig(quantize=(4, 7))), "--quantize: '7'")
    refused(lambda: run_bench(["no-model"], BenchConfig(eval_corpus="klingon-poetry")), "unknown corpus")
    refused(lambda: embed_corpus("python-docs", embedder="bert"), "--embedder: 'bert'")
    refused(lambda: cluster_embeddings("no-embeddings", 4, tmp_path / "cl", metric="manhattan"), "--metric: ")
    refused(lambda: select_for_domain("no-clusters", "python-docs", 100, tmp_path / "sel", sampler="topk"),
            "--sampler: 'topk'")
    (tmp_path / "sel").mkdir()
    (tmp_path / "sel" / "tokens.json").write_text("{}")
    refused(lambda: select_for_domain("no-clusters", "python-docs", 100, tmp_path / "sel"), "already holds a selection")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sel"]


def test_a_generic_corpus_holding_the_domain_is_said(tmp_path, monkeypatch):
    """Allowed (a check of a setup), but said before any work: its pre-training would
    train on the domain's own train split."""
    from io import StringIO

    from rich.console import Console

    from mlx_specialize import ui

    for generic, said in (("python-docs,go-code", True), ("go-code,postgres-docs", False)):
        monkeypatch.setattr(ui, "console", Console(file=StringIO(), width=300))
        resolve_run(**{**SPECIALIZE, "generic": generic})
        assert ("warning: --generic python-docs,go-code holds the domain python-docs itself"
                in ui.console.file.getvalue()) == said
