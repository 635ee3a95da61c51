"""`mlxspec`: the command line. A thin Typer layer over `mlx_specialize`.

Every command turns a bad input into one `error: ...` line on stderr and exit code 2;
progress goes to stderr; results go to stdout (`--json`: one JSON object, last).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mlx_specialize as ms
from mlx_specialize import autocast, fastmath, ui
from mlx_specialize.backend import BLAS, cpu_description, device_name, matmul_gflops, reference_matmul_gflops, train_dtype
from mlx_specialize.errors import SpecializeError
from mlx_specialize.slow_paths import slow_paths, warn_slow_paths
from mlx_specialize.specialize import DEFAULT_FINETUNE_TOKENS, DEFAULT_PRETRAIN_TOKENS

app = typer.Typer(
    help="Small language models specialized to your domain, cheap to run. "
    "Start with `mlxspec specialize` (runs on the bundled demo corpus).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tokenizer_app = typer.Typer(help="Tokenizer commands.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
data_app = typer.Typer(help="Importance-sampling data selection (SLM-is): embed, cluster, select.", no_args_is_help=True)
app.add_typer(data_app, name="data")
out = Console(width=None if sys.stdout.isatty() else 160)  # logs keep whole tables

JSON_OPT = typer.Option(False, "--json", help="Print one JSON object on stdout (last).")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress bars or messages.")
CACHE_OPT = typer.Option(None, "--cache-dir", help="Token and model cache [default: $MLXSPEC_CACHE or ~/.cache/mlx-specialize].")
PRECISION_OPT = typer.Option(None, help="float32, or bf16: the linear layers' products in bfloat16, float32 weights "
                             "(x86 CPUs with AMX or AVX512-BF16 and `pip install 'mlx-specialize[bf16]'`; any GPU).")


def handle_errors(fn):
    """Run a command; report user errors as one line (exit 2), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ui.set_quiet(bool(kwargs.get("quiet")) or bool(kwargs.get("json_out")))
        try:
            return fn(*args, **kwargs)
        except SpecializeError as err:
            fail(str(err))
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as err:
            fail(f"{err.strerror or err}: {err.filename}" if err.filename else str(err))
        except KeyboardInterrupt:
            fail("interrupted", code=130)
        except Exception as err:  # a bug: still one line, traceback on request
            if os.environ.get("MLXSPEC_DEBUG"):
                raise
            from mlx_specialize.train import distributed as dist

            if dist.is_peer_lost(err):  # under mlx.launch: another process died
                fail(dist.peer_lost_message(dist.world(), err))
            fail(f"internal error: {type(err).__name__}: {err} (set MLXSPEC_DEBUG=1 for the traceback)", code=1)

    return wrapper


def fail(message: str, code: int = 2):
    # escaped: a message may hold brackets, e.g. pip install 'mlx-specialize[bf16]'
    ui.console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def emit(result: dict, json_out: bool, table: Table | None = None) -> None:
    if ui.SECONDARY:  # under mlx.launch, rank 0 alone reports
        return
    if json_out:
        print(json.dumps(result, default=float))
    elif table is not None:
        out.print(table)


def _fmt(x: float) -> str:
    return f"{x:,.2f}" if x < 1e4 else f"{x:,.0f}"


def _train_options(**opts) -> dict:
    return {k: v for k, v in opts.items() if v is not None}


# ---- doctor / presets ------------------------------------------------------------
@app.command()
@handle_errors
def doctor(json_out: bool = JSON_OPT):
    """Platform, device, versions, BLAS in use and measured matmul speed."""
    import mlx.core as mx

    try:
        import mlx_lm

        mlx_lm_version = mlx_lm.__version__
    except Exception:  # mlx-lm missing or broken: doctor still reports the rest
        mlx_lm_version = "not installed"
    gflops = matmul_gflops()
    reference = reference_matmul_gflops() if sys.platform == "linux" else None
    report = {
        "platform": f"{platform.system()} {platform.machine()} ({platform.platform()})",
        "cpu": cpu_description(),
        "python": platform.python_version(),
        "device": device_name(),
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm_version,
        "mlx_specialize": ms.__version__,
        "blas": BLAS.name or "none",
        "blas_path": BLAS.path,
        "blas_note": BLAS.note,
        "matmul_gflops_f32": round(gflops, 1),
        "reference_blas_gflops_f32": None if reference is None else round(reference, 1),
        "blas_speedup": None if not reference else round(gflops / reference, 1),
        "dtype": train_dtype(),
        "cpu_fast_math": fastmath.status(),
        "cpu_kernels": fastmath.kernels_status(),
        "bf16_training": autocast.status(),
        "slow_paths": slow_paths(),
    }
    if json_out:
        return emit(report, True)
    table = Table(title="mlxspec doctor", show_header=False)
    for k, v in report.items():
        if k != "slow_paths":
            table.add_row(k, escape(str(v)))  # text, not markup: "[bf16]" must print
    out.print(table)
    for line in report["slow_paths"]:
        ui.warn(line)


@app.command()
@handle_errors
def presets(json_out: bool = JSON_OPT):
    """Model presets with parameter counts and training FLOPs per token."""
    from mlx_specialize.models.presets import describe

    rows = [describe(p) for p in ms.PRESETS.values()]
    table = Table(title="presets (parameters at each preset's default vocabulary)")
    for col in ("preset", "role", "L", "d", "mlp", "heads", "vocab", "ctx", "params", "FLOP/tok"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("preset", "role") else "right")
    for r in rows:
        table.add_row(r["name"], r["role"], str(r["layers"]), str(r["d_model"]), str(r["mlp"]), str(r["heads"]),
                      str(r["vocab"]), str(r["context"]), f"{r['params'] / 1e6:.1f}M",
                      f"{r['train_flops_per_token'] / 1e6:,.0f}M")
    emit({"presets": rows}, json_out, table)


# ---- tokenizer -------------------------------------------------------------------
@tokenizer_app.command("train")
@handle_errors
def tokenizer_train(
    out_dir: Path = typer.Argument(..., help="Folder to write tokenizer.model (+ configs) into."),
    corpus: str = typer.Option(",".join(ms.bundled_names()), help="Corpus spec to train on (train split)."),
    vocab_size: int = typer.Option(8192, help="Vocabulary size (8k laptop presets, 32k paper presets)."),
    sample_chars: int = typer.Option(4_000_000, help="Characters of text to train on."),
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Train a SentencePiece BPE tokenizer (byte fallback) on a corpus sample."""
    from mlx_specialize.train.jobs import fit_tokenizer

    if (out_dir / "tokenizer.model").exists():
        raise SpecializeError(f"{out_dir}/tokenizer.model exists; choose another folder")
    tok = fit_tokenizer(ms.load_corpus(corpus), vocab_size, sample_chars)
    tok.save(out_dir)
    result = {"tokenizer": str(out_dir / "tokenizer.model"), "vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint}
    if json_out:
        return emit(result, True)
    out.print(f"wrote {result['tokenizer']} ({tok.vocab_size} tokens)")


# ---- training --------------------------------------------------------------------
def _summary_table(title: str, summary: dict) -> Table:
    table = Table(title=title, show_header=False)
    for k, v in summary.items():
        table.add_row(k, _fmt(v) if isinstance(v, float) else str(v))
    return table


@app.command("pretrain")
@handle_errors
def pretrain_cmd(
    out_dir: Path = typer.Argument(..., help="Run folder (model, checkpoints, metrics)."),
    generic: str = typer.Option(",".join(ms.bundled_names()), help="Generic corpus spec."),
    preset: str = typer.Option("small", help="Model preset (see `mlxspec presets`)."),
    tokens: int = typer.Option(DEFAULT_PRETRAIN_TOKENS, help="Pre-training budget in tokens."),
    tokenizer: Optional[Path] = typer.Option(None, help="Use this tokenizer instead of training one."),
    selection: Optional[Path] = typer.Option(None, help="Train on this `mlxspec data select` folder (its tokenizer; "
                                             "validation on its generic corpus)."),
    arch: str = typer.Option("dense", help="dense; mix (one expert per cluster of --clusters; --tokens in all); pn "
                             "(projected network) or soup (Soup-of-Experts), conditioned on --clusters."),
    clusters: Optional[Path] = typer.Option(None, help="--arch mix|pn|soup: clusters folder (`mlxspec data cluster`)."),
    basis: int = typer.Option(8, help="--arch pn|soup: basis matrices h per MLP weight."),
    expert_dim: int = typer.Option(16, help="--arch pn: expert embedding width m."),
    soup_support: Optional[int] = typer.Option(None, help="--arch soup: clusters in each training condition "
                                               "(Dirichlet(1) weights) [all]."),
    init: Optional[Path] = typer.Option(None, help="Start from this model (same preset and tokenizer) instead of "
                                        "random weights; with --arch mix, every expert."),
    vocab_size: Optional[int] = typer.Option(None, help="Tokenizer vocabulary [default: the preset's]."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [default: the preset's]."),
    batch_size: Optional[int] = typer.Option(None, help="Windows per step [default: the preset's]."),
    context: Optional[int] = typer.Option(None, help="Tokens per window [default: the preset's]."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    warmup: Optional[int] = typer.Option(None, help="Linear warm-up steps."),
    eval_every: Optional[int] = typer.Option(None, help="Validate every N steps."),
    patience: Optional[int] = typer.Option(None, help="Early-stop after N evaluations without improvement (0: off)."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps (0: only at the end)."),
    precision: Optional[str] = PRECISION_OPT,
    seed: int = typer.Option(0, help="Seed of initialization and data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT_DIR from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Pre-train a model from scratch on a generic corpus.

    On N processes or Macs: `mlx.launch -n N -- mlxspec pretrain ...` (README: several processes)."""
    if precision is not None:
        autocast.check(precision)  # before any data work: a missing MKL fails in a second
    warn_slow_paths()
    p = ms.get_preset(preset)
    if arch not in ("dense", "mix", "pn", "soup"):
        raise SpecializeError(f"unknown architecture '{arch}' (dense, mix, pn or soup)")
    if arch != "dense":
        from mlx_specialize import importance as imp

        if clusters is None:
            raise SpecializeError(f"--arch {arch} needs --clusters (a folder from `mlxspec data cluster`)")
        loaded, tok = imp.load_clusters(clusters), ms.Tokenizer.load(clusters)
        cache = cache_dir or ms.data.tokens.default_cache_dir()
        split = imp.corpus_split(loaded.meta["generic"], "train", tok, cache)
    if arch in ("pn", "soup"):
        from mlx_specialize.train.projected import pretrain_projected

        summary = pretrain_projected(
            loaded, split, tok, p, out_dir, tokens, arch, cache, expert_dim=expert_dim, basis=basis, support=soup_support, seed=seed, resume=resume, overwrite=overwrite,
            **_train_options(lr=lr, batch_size=batch_size, context=context, grad_accum=grad_accum, warmup=warmup,
                             eval_every=eval_every, patience=patience, checkpoint_every=checkpoint_every, precision=precision))
        summary = {"model": str(out_dir), "arch": arch, **summary, "params": summary["params"]["total"],
                   "active_params": summary["params"]["active"]}
        return emit(summary, json_out, _summary_table(f"pre-trained a '{preset}' {arch} -> {out_dir}", summary))
    if arch == "mix":
        from mlx_specialize.models.mixture import pretrain_mixture

        meta = pretrain_mixture(loaded, split, tok, p, out_dir, tokens // loaded.k, cache_dir, seed, init_from=init,
                                **_train_options(lr=lr, batch_size=batch_size, context=context, grad_accum=grad_accum,
                                                 warmup=warmup, eval_every=eval_every, patience=patience,
                                                 checkpoint_every=checkpoint_every, precision=precision))
        return emit(meta, json_out, _summary_table(f"pre-trained {loaded.k} '{preset}' experts -> {out_dir}",
                                                   {k: v for k, v in meta.items() if k != "experts"}))
    tok = ms.Tokenizer.load(tokenizer) if tokenizer else None
    if tok is None and resume and (out_dir / "tokenizer.model").exists():
        tok = ms.Tokenizer.load(out_dir)
    train_split = None
    if selection is not None:
        from mlx_specialize.importance import load_selected

        train_split, tok = load_selected(selection), ms.Tokenizer.load(selection)
        generic = json.loads((selection / "tokens.json").read_text())["generic"]
    if init is not None and tok is None:
        tok = ms.Tokenizer.load(init)
    result = ms.pretrain(generic, p, out_dir, tokens, tokenizer=tok, vocab_size=vocab_size, cache_dir=cache_dir,
                         resume=resume, overwrite=overwrite, seed=seed, train_split=train_split, init_from=init,
                         **_train_options(lr=lr, batch_size=batch_size, context=context, grad_accum=grad_accum,
                                          warmup=warmup, eval_every=eval_every, patience=patience,
                                          checkpoint_every=checkpoint_every, precision=precision))
    summary = {"model": str(result.model_dir), **result.summary}
    emit(summary, json_out, _summary_table(f"pre-trained {preset} -> {out_dir}", summary))


@app.command("finetune")
@handle_errors
def finetune_cmd(
    model: str = typer.Argument(..., help="Model folder (ours or any mlx-lm llama model) or hub name to start from."),
    out_dir: Path = typer.Argument(..., help="Run folder for the fine-tuned model."),
    domain: str = typer.Option("python-docs", help="Domain corpus spec."),
    domain_tokens: Optional[int] = typer.Option(None, help="Use only the first N tokens of the domain's train split."),
    tokens: Optional[int] = typer.Option(None, help="Fine-tuning budget in tokens [default: 4 passes over the domain data]."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [default: the base's / 3]."),
    batch_size: Optional[int] = typer.Option(None, help="Windows per step [default: 16]."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    warmup: Optional[int] = typer.Option(None, help="Linear warm-up steps [default: 10]."),
    eval_every: Optional[int] = typer.Option(None, help="Validate every N steps [default: 10]."),
    patience: Optional[int] = typer.Option(None, help="Early-stop after N evaluations without improvement [default: 3]."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps (0: only at the end)."),
    precision: Optional[str] = PRECISION_OPT,
    seed: int = typer.Option(0, help="Seed of the data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT_DIR from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Fine-tune a model on a domain, early-stopping on the domain's valid split.

    On N processes or Macs: `mlx.launch -n N -- mlxspec finetune ...` (README: several processes)."""
    if precision is not None:
        autocast.check(precision)  # before any data work: a missing MKL fails in a second
    warn_slow_paths()
    result = ms.finetune(model, domain, out_dir, domain_tokens, tokens, cache_dir=cache_dir, resume=resume,
                         overwrite=overwrite, seed=seed,
                         **_train_options(lr=lr, batch_size=batch_size, grad_accum=grad_accum, warmup=warmup,
                                          eval_every=eval_every, patience=patience, checkpoint_every=checkpoint_every, precision=precision))
    summary = {"model": str(result.model_dir), **result.summary}
    emit(summary, json_out, _summary_table(f"fine-tuned {model} on {domain} -> {out_dir}", summary))


# ---- eval / generate -------------------------------------------------------------
@app.command("eval")
@handle_errors
def eval_cmd(
    model: str = typer.Argument(..., help="Model folder (ours or any mlx-lm llama model) or hub name."),
    corpus: str = typer.Option("python-docs", help="Corpus spec."),
    split: str = typer.Option("test", help="train, valid or test."),
    max_tokens: Optional[int] = typer.Option(None, help="Evaluate only the first N tokens."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Perplexity and bits per byte of a model on a corpus split."""
    result = ms.evaluate_model(model, corpus, split, cache_dir, max_tokens=max_tokens)
    report = {"model": str(model), "corpus": corpus, "split": split, **result.to_dict()}
    emit(report, json_out, _summary_table(f"{model} on {corpus}:{split}", report))


@app.command()
@handle_errors
def generate(
    model: str = typer.Argument(..., help="Model folder (ours or any mlx-lm llama model) or hub name."),
    prompt: str = typer.Option("", help="Text to continue."),
    max_tokens: int = typer.Option(100, help="Tokens to generate at most."),
    temperature: float = typer.Option(0.8, help="Sampling temperature (0: greedy)."),
    top_k: int = typer.Option(0, help="Sample from the k most likely tokens (0: all)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    json_out: bool = JSON_OPT,
):
    """Sample text from a model."""
    m, tok, _ = ms.load_model(model)
    text = ms.generate_text(m, tok, prompt, max_tokens, temperature=temperature, top_k=top_k, seed=seed)
    if json_out:
        return emit({"prompt": prompt, "text": text}, True)
    out.print(prompt + text, markup=False, highlight=False)


# ---- export / bench --------------------------------------------------------------
@app.command()
@handle_errors
def export(
    model: str = typer.Argument(..., help="Model folder or hub name."),
    out_dir: Path = typer.Argument(..., help="Folder to write (an mlx-lm model folder)."),
    quantize: Optional[int] = typer.Option(None, "--quantize", help="Quantize to 4 or 8 bits (also 2, 3, 5, 6)."),
    group_size: int = typer.Option(64, help="Weights per quantization group (32, 64, 128)."),
    dtype: Optional[str] = typer.Option(None, help="Cast float weights first: float32, float16 or bfloat16."),
    eval_corpus: Optional[str] = typer.Option(None, "--eval", help="Report test perplexity of the source and the export on this corpus."),
    eval_tokens: int = typer.Option(20_000, help="Test tokens for --eval."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Write a model as an mlx-lm folder (mlx_lm.generate / server / lora load it), optionally quantized."""
    from mlx_specialize.models.export import export_model

    _check_dtype(dtype)
    report = export_model(model, out_dir, quantize, group_size, dtype, overwrite)
    if eval_corpus:
        before = ms.evaluate_model(model, eval_corpus, "test", cache_dir, max_tokens=eval_tokens)
        after = ms.evaluate_model(out_dir, eval_corpus, "test", cache_dir, max_tokens=eval_tokens)
        report.update(eval_corpus=eval_corpus, ppl_source=before.ppl, ppl_export=after.ppl,
                      bpb_source=before.bits_per_byte, bpb_export=after.bits_per_byte)
    emit(report, json_out, _summary_table(f"exported {model} -> {out_dir}", report))


@app.command()
@handle_errors
def instantiate(
    network: Path = typer.Argument(..., help="A projected network or soup (`pretrain --arch pn|soup`)."),
    out_dir: Path = typer.Argument(..., help="Folder for the dense SLM (mlx-lm loadable; `finetune` takes it)."),
    domain: Optional[str] = typer.Option(None, help="Instantiate for this domain's cluster histogram (its train "
                                         "windows assigned to the network's clustering)."),
    select: str = typer.Option("frequent", help="With --domain: its most frequent cluster (frequent) or its whole "
                               "histogram (histogram)."),
    domain_tokens: Optional[int] = typer.Option(None, help="With --domain: only its first N train tokens."),
    cluster: Optional[int] = typer.Option(None, help="Instantiate one cluster's expert."),
    weights: Optional[str] = typer.Option(None, help="Instantiate for these cluster weights (k comma-separated "
                                          "non-negative numbers, normalized)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Make the dense SLM of a domain, a cluster or cluster weights from a pn / soup, in closed form."""
    from mlx_specialize.models.projected import one_hot, read_projected_config
    from mlx_specialize.train.projected import instantiate_folder, instantiate_for_domain

    config = read_projected_config(network)
    if sum(x is not None for x in (domain, cluster, weights)) != 1:
        raise SpecializeError("give exactly one of --domain, --cluster or --weights")
    if (out_dir / "config.json").exists() and not overwrite:
        raise SpecializeError(f"{out_dir} already holds a model (pass --overwrite to replace it)")
    k = config["projection"]["experts"]
    if domain is not None:
        result = instantiate_for_domain(network, out_dir, domain, select, domain_tokens, cache_dir)
    else:
        if cluster is not None:
            cond = np.array(one_hot(cluster, k))
        else:
            try:
                cond = np.array([float(x) for x in weights.split(",")])
            except ValueError:
                raise SpecializeError(f"--weights must be {k} comma-separated numbers, not '{weights}'") from None
        instantiate_folder(network, out_dir, cond, {"cluster": cluster} if cluster is not None else {})
        result = {"cluster": cluster} if cluster is not None else {"weights": cond.tolist()}
    result = {"model": str(out_dir), "arch": config["projection"]["arch"], **result}
    if json_out:
        return emit(result, True)
    chosen = f"cluster {result['cluster']}" if "cluster" in result else "the given cluster weights"
    out.print(f"wrote the dense SLM of {chosen} of {network} -> {out_dir}")


def _check_dtype(dtype: Optional[str]) -> None:
    if dtype is not None and dtype not in ("float32", "float16", "bfloat16"):
        raise SpecializeError(f"unknown dtype '{dtype}' (float32, float16 or bfloat16)")


@app.command()
@handle_errors
def bench(
    models: list[str] = typer.Argument(..., help="Model folders or hub names, side by side."),
    prompt_tokens: int = typer.Option(512, "--prompt-tokens", "-p", help="Prompt length."),
    generation_tokens: int = typer.Option(128, "--generation-tokens", "-g", help="Tokens generated per trial."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="Prompts decoded together."),
    trials: int = typer.Option(5, "--num-trials", "-n", help="Timed trials (after one warm-up)."),
    quantize: list[int] = typer.Option([], "--quantize", help="Also measure each model quantized to this many bits (repeatable)."),
    group_size: int = typer.Option(64, help="Quantization group size."),
    dtype: Optional[str] = typer.Option(None, help="Cast float weights: float32, float16 or bfloat16 [default: as stored]."),
    eval_corpus: Optional[str] = typer.Option(None, "--eval", help="Also report test perplexity and bits/byte on this corpus."),
    eval_tokens: int = typer.Option(20_000, help="Test tokens for --eval."),
    seed: int = typer.Option(0, help="Seed of the random prompts."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Inference speed, memory, size, bandwidth bound and serving cost of models on this device."""
    from mlx_specialize.bench import BenchConfig, run_bench

    _check_dtype(dtype)
    for name, value in (("--prompt-tokens", prompt_tokens), ("--generation-tokens", generation_tokens),
                        ("--batch-size", batch_size), ("--num-trials", trials)):
        if value < 1:
            raise SpecializeError(f"{name} must be at least 1")
    cfg = BenchConfig(prompt_tokens, generation_tokens, batch_size, trials, seed, tuple(quantize), group_size, dtype,
                      eval_corpus, eval_tokens, str(cache_dir) if cache_dir else None)
    report = run_bench(models, cfg)
    if json_out:
        return emit(report, True)
    title = (f"{report['device']}: prompt {prompt_tokens} tokens, generate {generation_tokens}, batch {batch_size}, "
             f"mean ± std of {trials} trials")
    speed = Table(title=title)
    for col in ("model", "variant", "prompt tok/s", "generation tok/s", "first token ms", "peak MB"):
        speed.add_column(col, no_wrap=True)
    cost = Table(title=f"size, bandwidth bound ({report['bandwidth_gb_s']:.1f} GB/s copy) and serving cost")
    cost_cols = ["model", "variant", "params", "MB", "bits/w", "bound tok/s", "of bound", "hours / 1B tok", "cost"]
    for col in cost_cols + (["test ppl", "bits/byte"] if eval_corpus else []):
        cost.add_column(col, no_wrap=True)
    for r in report["models"]:
        m, sd = r["mean"], r["std"]
        label = Path(r["model"]).name if Path(r["model"]).exists() else r["model"]
        speed.add_row(label, r["variant"], f"{m['prompt_tps']:,.0f} ± {sd['prompt_tps']:,.0f}",
                      f"{m['generation_tps']:,.1f} ± {sd['generation_tps']:,.1f}",
                      f"{m['ttft_s'] * 1e3:,.1f} ± {sd['ttft_s'] * 1e3:,.1f}", f"{m['peak_memory_gb'] * 1e3:,.1f}")
        row = [label, r["variant"], f"{r['params'] / 1e6:.2f}M", f"{r['bytes'] / 1e6:.1f}", f"{r['bits_per_weight']:.1f}",
               f"{r['bound_tok_s']:,.0f}", f"{r['fraction_of_bound']:.0%}", f"{r['device_hours_per_billion']:,.1f}",
               f"{r['cost_vs_first']:.2f}x"]
        cost.add_row(*row, *([f"{r['ppl']:.2f}", f"{r['bpb']:.3f}"] if eval_corpus else []))
    out.print(speed)
    out.print(cost)
    out.print("bound: batch x bandwidth / weight bytes read per decoding step; hours / 1B tok: device hours to "
              "generate a billion tokens at the measured speed; cost: relative to the first row.")


# ---- data: embed / cluster / select -----------------------------------------------
@data_app.command("embed")
@handle_errors
def data_embed(
    generic: str = typer.Option(..., help="Generic corpus spec (its train split is embedded)."),
    tokenizer: Optional[Path] = typer.Option(None, help="Tokenizer [default: train one on the generic corpus]."),
    vocab_size: int = typer.Option(8192, help="Vocabulary when training the tokenizer."),
    embedder: str = typer.Option("hashed", help="hashed (fast, model-free) or minilm (the paper's Sentence-BERT)."),
    window: int = typer.Option(256, help="Tokens per window (non-overlapping)."),
    max_windows: Optional[int] = typer.Option(None, help="Embed only the first N windows."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Embed the generic corpus's windows (resumable float16 shards in the cache)."""
    import time

    from mlx_specialize import importance as imp

    cache = cache_dir or ms.data.tokens.default_cache_dir()
    tok = ms.Tokenizer.load(tokenizer) if tokenizer else imp.generic_tokenizer(generic, vocab_size, cache)
    t0 = time.perf_counter()
    embedded = imp.embed_generic(generic, tok, embedder, window, cache, max_windows)
    seconds = time.perf_counter() - t0
    report = {"embeddings": str(embedded.folder), "windows": int(len(embedded.vectors)),
              "dim": int(embedded.vectors.shape[1]), "window": window, "embedder": embedded.settings,
              "seconds": seconds}
    emit(report, json_out, _summary_table(f"embedded {generic}", {k: v for k, v in report.items() if k != "embedder"}))


@data_app.command("cluster")
@handle_errors
def data_cluster(
    embeddings: Path = typer.Argument(..., help="Folder printed by `mlxspec data embed`."),
    out_dir: Path = typer.Option(..., "--out", help="Clusters folder to write."),
    k: int = typer.Option(64, help="Clusters (the paper: 1024 for importance sampling; 16-256 in ablations)."),
    metric: str = typer.Option("cosine", help="cosine or euclidean."),
    seed: int = typer.Option(0, help="Seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing clusters folder."),
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """k-means over the generic embeddings; keeps centroids, labels, embedder state."""
    from mlx_specialize import importance as imp

    if (out_dir / "clusters.safetensors").exists() and not overwrite:
        raise SpecializeError(f"{out_dir} already holds clusters (pass --overwrite to replace them)")
    clusters = imp.cluster_folder(embeddings, k, out_dir, metric, seed)
    counts = np.bincount(clusters.labels, minlength=clusters.k)
    report = {"clusters": str(out_dir), "k": clusters.k, "windows": int(len(clusters.labels)),
              "inertia": clusters.meta["inertia"], "iterations": clusters.meta["iterations"],
              "smallest": int(counts.min()), "largest": int(counts.max())}
    emit(report, json_out, _summary_table(f"k-means over {embeddings}", report))


@data_app.command("select")
@handle_errors
def data_select(
    clusters: Path = typer.Option(..., help="Clusters folder (`mlxspec data cluster`)."),
    domain: str = typer.Option(..., help="Target domain corpus spec (its train split)."),
    tokens: int = typer.Option(..., help="Tokens to select from the generic corpus."),
    out_dir: Path = typer.Option(..., "--out", help="Selection folder to write."),
    domain_tokens: Optional[int] = typer.Option(None, help="Use only the first N domain train tokens."),
    sampler: str = typer.Option("cluster", help="cluster (CRISP, with replacement) or gumbel (DSIR, without)."),
    seed: int = typer.Option(0, help="Seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing selection."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Resample generic windows so their cluster histogram matches the domain's."""
    from mlx_specialize import importance as imp

    if (out_dir / "tokens.json").exists() and not overwrite:
        raise SpecializeError(f"{out_dir} already holds a selection (pass --overwrite to replace it)")
    cache = cache_dir or ms.data.tokens.default_cache_dir()
    loaded = imp.load_clusters(clusters)
    tok = ms.Tokenizer.load(clusters)
    generic_split = imp.corpus_split(loaded.meta["generic"], "train", tok, cache)
    domain_split = imp.corpus_split(domain, "train", tok, cache, domain_tokens)
    labels = imp.domain_histogram_labels(loaded, domain_split, tok, cache)
    _, selection = imp.select_tokens(loaded, generic_split, labels, tokens, out_dir, sampler, seed)
    report = imp.report(selection, loaded, generic_split, tok, out_dir)
    if json_out:
        return emit(report, True)
    table = Table(title=f"{sampler} sampler: {report['windows']:,} windows -> {out_dir} "
                        f"(KL(D||selected) {report['kl_selected']:.4f}, KL(D||generic) {report['kl_generic']:.4f} nats, "
                        f"H(D) {report['entropy_domain']:.3f})")
    for col in ("cluster", "P(c|D)", "P(c|G)", "selected", "sample"):
        table.add_column(col, overflow="fold")
    for c in report["top_clusters"]:
        table.add_row(str(c["cluster"]), f"{c['p_domain']:.3f}", f"{c['p_generic']:.3f}", f"{c['p_selected']:.3f}",
                      c["sample"][:80])
    out.print(table)
    rep = report["repeats"]
    out.print(f"unique windows {rep['unique']:,}, most repeats of one window {rep['max']}, drawn n times: "
              f"{rep['drawn_times']}; unmatched domain mass {report['unmatched_mass']:.3f}; chart {out_dir / 'histograms.png'}")


# ---- the main job ----------------------------------------------------------------
@app.command()
@handle_errors
def specialize(
    domain: str = typer.Option("python-docs", help="Target domain: bundled name, file/folder, or hf:NAME."),
    generic: Optional[str] = typer.Option(None, help="Generic corpus [default: bundled corpora except the domain]."),
    method: str = typer.Option("finetune", help="finetune (SLM), is (SLM-is: importance-sampled pre-training), "
                               "mix (SLM-mix: one expert per generic cluster), pn (SLM-pn: projected network) or "
                               "soup (Soup-of-Experts)."),
    base: Optional[str] = typer.Option(None, help="Start from this pre-trained model (our folder, an mlx-lm llama-style "
                                       "folder or hub name, with its own tokenizer) instead of pre-training one."),
    preset: str = typer.Option("small", help="Model preset when pre-training (see `mlxspec presets`)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run folder [default: runs/DOMAIN-METHOD[-N]]."),
    domain_tokens: Optional[int] = typer.Option(None, help="Use only the first N domain train tokens (limited domain data)."),
    pretrain_tokens: int = typer.Option(DEFAULT_PRETRAIN_TOKENS, help="Generic pre-training budget in tokens (cached, shared by domains)."),
    finetune_tokens: int = typer.Option(DEFAULT_FINETUNE_TOKENS, help="Specialization budget in tokens (early stopping may use fewer)."),
    vocab_size: Optional[int] = typer.Option(None, help="Tokenizer vocabulary when pre-training [default: the preset's]."),
    lr: Optional[float] = typer.Option(None, help="Fine-tuning learning rate [default: pre-training rate / 3; 3e-5 for a --base from elsewhere]."),
    seed: int = typer.Option(0, help="Seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
    k: Optional[int] = typer.Option(None, help="Clusters of the generic corpus [is: 64, mix: 4 experts, pn / soup: 16]."),
    select: Optional[str] = typer.Option(None, help="mix: the expert of the domain's most frequent cluster "
                                         "(frequent, default), of the lowest domain loss (loss), or fine-tune all, keep "
                                         "the best (all); pn / soup: instantiate for the most frequent cluster "
                                         "(frequent, pn's default) or the domain's cluster histogram (histogram, soup's)."),
    basis: Optional[int] = typer.Option(None, help="--method pn / soup: basis matrices h per MLP weight [8]."),
    expert_init: str = typer.Option("scratch", help="--method mix: experts start from scratch (the paper) or from "
                                    "the generic SLM (generic; its pre-training is counted)."),
    embedder: str = typer.Option("hashed", help="--method is: hashed or minilm."),
    window: Optional[int] = typer.Option(None, help="--method is: tokens per window [default: the preset's context]."),
    sampler: str = typer.Option("cluster", help="--method is: cluster or gumbel."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Specialize a small model to a domain: pre-train (or reuse) a generic model, fine-tune, report."""
    warn_slow_paths()
    report = ms.specialize(domain=domain, generic=generic, method=method, base=base,
                           preset=preset, out_dir=out_dir, domain_tokens=domain_tokens, pretrain_tokens=pretrain_tokens,
                           finetune_tokens=finetune_tokens, vocab_size=vocab_size, lr=lr, seed=seed,
                           cache_dir=cache_dir, overwrite=overwrite, k=k, embedder=embedder, window=window,
                           sampler=sampler, select=select, expert_init=expert_init, basis=basis)
    table = Table(title=f"{report['method']} on {report['domain']}: {report['params'] / 1e6:.2f}M params -> {report['model']}")
    for col in ("phase", "tokens", "seconds", "FLOPs", "test ppl", "test bits/byte"):
        table.add_column(col, no_wrap=True)
    pre, fin = report["phases"]["pretrain"], report["phases"]["finetune"]
    cached = " (cached)" if pre.get("cached") else " (given)" if "given" in pre else ""
    sel = report["phases"].get("select", {})
    if "kl_selected" in sel:
        table.add_row(f"select (k={sel['k']}, KL {sel['kl_generic']:.3f} -> {sel['kl_selected']:.3f})",
                      f"{sel['windows']:,} win", f"{sel['seconds']:.0f}", "", "", "")
    elif "expert" in sel:
        table.add_row(f"choose expert {sel['expert']} of {sel['k']} ({sel['rule']})", "", f"{sel['seconds']:.0f}", "", "", "")
    elif "instance" in sel:
        chosen = f"cluster {sel['cluster']}" if "cluster" in sel else "the domain's histogram"
        table.add_row(f"instantiate for {chosen} of {sel['k']}", "", f"{sel['seconds']:.0f}", "", "", "")
    kind = {"is": "importance-sampled", "mix": f"{sel.get('k')} experts'", "pn": "projected network",
            "soup": "soup of experts"}.get(report["method"], "generic")
    table.add_row(f"{kind} pre-train{cached}", f"{pre['tokens']:,}", f"{pre['seconds']:.0f}", f"{pre['flops']:.2e}",
                  f"{report['ppl_before']:.2f}", f"{report['bpb_before']:.3f}")
    table.add_row("domain fine-tune", f"{fin['tokens']:,}", f"{fin['seconds']:.0f}", f"{fin['flops']:.2e}",
                  f"{report['ppl_after']:.2f}", f"{report['bpb_after']:.3f}")
    if not json_out:
        out.print(table)
        out.print(f"generation: {report['gen_tok_s']:.0f} tok/s (batch 1); domain data: {fin['domain_tokens']:,} tokens"
                  f"{', early-stopped' if fin['stopped_early'] else ''}")
    emit(report, json_out)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
