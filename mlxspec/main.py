"""`mlxspec`: the command line. A thin Typer layer over `mlx_specialize`.

Each command parses its options (ranges by the options' own types, options.py), calls
one library function, which checks everything else before spending compute (choices,
output folders, every corpus it will read, read through once), and prints its result
(output.py, reports.py): progress on stderr, results on stdout (`--json`: one JSON
object, last). A bad input is one `error: ...` line on stderr and exit code 2 (Ctrl-C:
130), never a traceback (errors.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

try:  # these take seconds (MLX, the BLAS): Ctrl-C meanwhile is still exit 130, not a traceback
    import typer

    import mlx_specialize as ms
    from mlx_specialize import ui
    from mlx_specialize.bench import BenchConfig, export_and_compare, platform_facts, run_bench
    from mlx_specialize.methods.projected import instantiate_network
    from mlx_specialize.models.presets import describe
    from mlx_specialize.train.jobs import evaluate_split, train_tokenizer_folder
    from mlx_specialize.training import finetune_run, pretrain_run

    from . import output
    from .app import command, command_group
    from .data import data_app
    from .options import (CACHE_OPT, DOMAIN_TOKENS_OPT, DTYPE_OPT, EVAL_TOKENS_OPT, GROUP_SIZE_OPT, MODEL_ARG,
                          RESUME_OPT, Bench, Eval, Export, Finetune, Generate, Instantiate, Pretrain, Specialize,
                          TokenizerTrain, check_text, overwrite_option, seed_option, training_options)
    from .output import emit, summary_table
    from .reports import bench_view, presets_table, pretrain_table, specialize_view
    from .plan import plan
    from .study import study
except KeyboardInterrupt:
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)


app = command_group()
tokenizer_app = command_group(help="Tokenizer commands.")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(data_app, name="data")


def show_version(asked: bool) -> None:
    if asked:
        import mlx.core as mx

        print(f"mlxspec {ms.__version__} (MLX {mx.__version__})")
        raise typer.Exit()


@app.callback()
def top(version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                     help="Print the version and MLX's, and exit.")) -> None:
    """Small language models specialized to your domain, cheap to run. Start with
    `mlxspec specialize` (runs on the bundled demo corpus)."""


# ---- doctor / presets ------------------------------------------------------------
@command(app, quiet=False)
def doctor():
    """Platform, device, versions, BLAS in use and measured matmul speed."""
    report = platform_facts()
    # an empty note (the BLAS loaded as it should) is not a row
    emit(report, summary_table("mlxspec doctor", {k: v for k, v in report.items() if k != "slow_paths" and v != ""}))
    for line in [] if output.JSON else report["slow_paths"]:
        ui.warn(line)


@command(app, quiet=False)
def presets():
    """Model presets with parameter counts and training FLOPs per token."""
    rows = [describe(p) for p in ms.PRESETS.values()]
    emit({"presets": rows}, presets_table(rows))


# ---- tokenizer -------------------------------------------------------------------
@command(tokenizer_app, "train")
def tokenizer_train(
    out_dir: Path = TokenizerTrain.out_dir,
    corpus: str = TokenizerTrain.corpus,
    vocab_size: int = TokenizerTrain.vocab_size,
    sample_chars: int = TokenizerTrain.sample_chars,
):
    """Train a SentencePiece BPE tokenizer (byte fallback) on a corpus sample."""
    result = train_tokenizer_folder(out_dir, corpus, vocab_size, sample_chars)
    emit(result, f"wrote {result['tokenizer']} ({result['vocab_size']} tokens)")


# ---- training --------------------------------------------------------------------
@command(app, "pretrain")
@training_options("lr", "batch_size", "context", "grad_accum", "warmup", "eval_every", "patience",
                  "checkpoint_every", "precision",
                  defaults={"lr": "the preset's", "batch_size": "the preset's", "context": "the preset's"})
def pretrain_cmd(
    out_dir: Path = Pretrain.out_dir,
    generic: Optional[str] = Pretrain.generic,
    preset: str = Pretrain.preset,
    tokens: int = Pretrain.tokens,
    tokenizer: Optional[Path] = Pretrain.tokenizer,
    selection: Optional[Path] = Pretrain.selection,
    arch: str = Pretrain.arch,
    clusters: Optional[Path] = Pretrain.clusters,
    basis: int = Pretrain.basis,
    expert_dim: int = Pretrain.expert_dim,
    soup_support: Optional[int] = Pretrain.soup_support,
    init: Optional[Path] = Pretrain.init,
    vocab_size: Optional[int] = Pretrain.vocab_size,
    training: dict = None,  # the training options (options.py) given
    seed: int = seed_option("Seed of initialization and data order."),
    resume: bool = RESUME_OPT,
    overwrite: bool = overwrite_option("Replace a finished run in OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
):
    """Pre-train a model from scratch on a generic corpus.

    On N processes or Macs: `mlx.launch -n N -- mlxspec pretrain ...` (docs/distributed.md)."""
    summary = pretrain_run(out_dir, arch, generic, preset, tokens, seed, resume, overwrite, cache_dir,
                           vocab_size=vocab_size, tokenizer=tokenizer, selection=selection, clusters=clusters,
                           init=init, basis=basis, expert_dim=expert_dim, soup_support=soup_support, **training)
    emit(summary, pretrain_table(arch, preset, out_dir, summary))


@command(app, "finetune")
@training_options("lr", "batch_size", "grad_accum", "warmup", "eval_every", "patience", "checkpoint_every",
                  "precision", defaults={"lr": "the base's / 3 up to 300k domain tokens, the base's above",
                                         "batch_size": "the base's, or 8", "warmup": "10",
                                         "eval_every": "8 per pass over the domain data, no closer than 10 steps",
                                         "patience": "3"})
def finetune_cmd(
    model: str = Finetune.model,
    out_dir: Path = Finetune.out_dir,
    domain: str = Finetune.domain,
    domain_tokens: Optional[int] = DOMAIN_TOKENS_OPT,
    tokens: Optional[int] = Finetune.tokens,
    training: dict = None,  # the training options (options.py) given
    seed: int = seed_option("Seed of the data order."),
    resume: bool = RESUME_OPT,
    overwrite: bool = overwrite_option("Replace a finished run in OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
):
    """Fine-tune a model on a domain, early-stopping on the domain's valid split.

    On N processes or Macs: `mlx.launch -n N -- mlxspec finetune ...` (docs/distributed.md)."""
    summary = finetune_run(model, domain, out_dir, domain_tokens, tokens, seed, resume, overwrite, cache_dir, **training)
    emit(summary, summary_table(f"fine-tuned {model} on {domain} -> {out_dir}", summary))


# ---- eval / generate -------------------------------------------------------------
@command(app, "eval")
def eval_cmd(
    model: str = MODEL_ARG,
    corpus: str = Eval.corpus,
    split: str = Eval.split,
    max_tokens: Optional[int] = Eval.max_tokens,
    cache_dir: Optional[Path] = CACHE_OPT,
):
    """Perplexity and bits per byte of a model on a corpus split."""
    report = evaluate_split(model, corpus, split, cache_dir, max_tokens)
    emit(report, summary_table(f"{model} on {corpus}:{split}", report))


@command(app, quiet=False)
def generate(
    model: str = MODEL_ARG,
    prompt: str = Generate.prompt,
    max_tokens: int = Generate.max_tokens,
    temperature: float = Generate.temperature,
    top_k: int = Generate.top_k,
    seed: int = seed_option("Sampling seed."),
):
    """Sample text from a model."""
    check_text("--prompt", prompt)
    loaded, tokenizer, _ = ms.load_model(model)
    text = ms.generate_text(loaded, tokenizer, prompt, max_tokens, temperature=temperature, top_k=top_k, seed=seed)
    emit({"prompt": prompt, "text": text}, prompt + text)


# ---- export / instantiate / bench -------------------------------------------------
@command(app)
def export(
    model: str = Export.model,
    out_dir: Path = Export.out_dir,
    quantize: Optional[int] = Export.quantize,
    group_size: int = GROUP_SIZE_OPT,
    dtype: Optional[str] = DTYPE_OPT,
    eval_corpus: Optional[str] = Export.eval_corpus,
    eval_tokens: int = EVAL_TOKENS_OPT,
    overwrite: bool = overwrite_option("Replace a non-empty OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
):
    """Write a model as an mlx-lm folder (mlx_lm.generate / server / lora load it), optionally quantized."""
    report = export_and_compare(model, out_dir, quantize, group_size, dtype, overwrite, eval_corpus, eval_tokens,
                                cache_dir)
    emit(report, summary_table(f"exported {model} -> {out_dir}", report))


@command(app)
def instantiate(
    network: Path = Instantiate.network,
    out_dir: Path = Instantiate.out_dir,
    domain: Optional[str] = Instantiate.domain,
    select: str = Instantiate.select,
    domain_tokens: Optional[int] = Instantiate.domain_tokens,
    cluster: Optional[int] = Instantiate.cluster,
    weights: Optional[str] = Instantiate.weights,
    overwrite: bool = overwrite_option("Replace a model already in OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
):
    """Make the dense SLM of a domain, a cluster or cluster weights from a pn / soup, in closed form."""
    result = instantiate_network(network, out_dir, domain, select, domain_tokens, cluster, weights, overwrite,
                                 cache_dir)
    chosen = f"cluster {result['cluster']}" if "cluster" in result else "the given cluster weights"
    emit(result, f"wrote the dense SLM of {chosen} of {network} -> {out_dir}")


@command(app)
def bench(
    models: list[str] = Bench.models,
    prompt_tokens: int = Bench.prompt_tokens,
    generation_tokens: int = Bench.generation_tokens,
    batch_size: int = Bench.batch_size,
    trials: int = Bench.trials,
    quantize: list[int] = Bench.quantize,
    group_size: int = GROUP_SIZE_OPT,
    dtype: Optional[str] = DTYPE_OPT,
    eval_corpus: Optional[str] = Bench.eval_corpus,
    eval_tokens: int = EVAL_TOKENS_OPT,
    seed: int = seed_option("Seed of the random prompts."),
    cache_dir: Optional[Path] = CACHE_OPT,
):
    """Inference speed, memory, size, bandwidth bound and serving cost of models on this device."""
    report = run_bench(models, BenchConfig(prompt_tokens, generation_tokens, batch_size, trials, seed, tuple(quantize),
                                           group_size, dtype, eval_corpus, eval_tokens,
                                           str(cache_dir) if cache_dir else None))
    emit(report, *bench_view(report))


# ---- the main job ----------------------------------------------------------------
@command(app)
@training_options("lr", scope="Fine-tuning",
                  defaults={"lr": "the pre-training rate / 3 up to 300k domain tokens, the rate above; "
                                        "3e-5 for a --base from elsewhere"})
def specialize(
    domain: str = Specialize.domain,
    generic: Optional[str] = Specialize.generic,
    method: str = Specialize.method,
    base: Optional[str] = Specialize.base,
    preset: str = Specialize.preset,
    out_dir: Optional[Path] = Specialize.out_dir,
    domain_tokens: Optional[int] = DOMAIN_TOKENS_OPT,
    pretrain_tokens: int = Specialize.pretrain_tokens,
    finetune_tokens: Optional[int] = Specialize.finetune_tokens,
    vocab_size: Optional[int] = Specialize.vocab_size,
    training: dict = None,  # --lr (options.py), if given
    seed: int = seed_option(),
    overwrite: bool = overwrite_option("Replace an existing run in --out."),
    k: Optional[int] = Specialize.k,
    select: Optional[str] = Specialize.select,
    basis: Optional[int] = Specialize.basis,
    soup_support: Optional[int] = Specialize.soup_support,
    expert_init: str = Specialize.expert_init,
    embedder: str = Specialize.embedder,
    window: Optional[int] = Specialize.window,
    sampler: str = Specialize.sampler,
    distill_temperature: float = Specialize.distill_temperature,
    distill_alpha: float = Specialize.distill_alpha,
    tokenizer_sample: str = Specialize.tokenizer_sample,
    cache_dir: Optional[Path] = CACHE_OPT,
):
    """Specialize a small model to a domain: pre-train (or reuse) what the method shares, fine-tune, report.

    Interrupted (Ctrl-C, a crash, kill -9, a full disk)? Run the same command again: it
    continues from the first unfinished phase, in the same --out folder (without --out,
    the same command finds its own runs/ folder). A finished run's report is printed again."""
    report = ms.specialize(domain, generic, method, base, preset, out_dir, domain_tokens, pretrain_tokens,
                           finetune_tokens, vocab_size, training.get("lr"), seed, cache_dir, overwrite, k, embedder,
                           window, sampler, "cosine", select, expert_init, basis, distill_temperature=distill_temperature,
                           distill_alpha=distill_alpha, soup_support=soup_support, tokenizer_sample=tokenizer_sample)
    emit(report, *specialize_view(report))


command(app, "study")(study)
command(app, "plan")(plan)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
