"""`mlxspec`: the command line. A thin Typer layer over `mlx_specialize`.

Every command turns a bad input into one `error: ...` line on stderr and exit code 2
(Ctrl-C: 130). Option ranges are checked by the options' own types; the library function
a command calls checks the rest before spending compute: choices, output folders, and
every corpus it will read, read through once. Progress goes to stderr; results go to
stdout (`--json`: one JSON object, last).
Everything printed from user data (corpus specs, paths, sample text) is plain text.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional

try:  # these take seconds (MLX, the BLAS): Ctrl-C meanwhile is still exit 130, not a traceback
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text
    from typer._click.exceptions import ClickException, MissingParameter, NoArgsIsHelpError
    from typer.core import TyperGroup

    import mlx_specialize as ms
    from mlx_specialize import ui
    from mlx_specialize.errors import Interrupted, SpecializeError
    from mlx_specialize.specialize import DEFAULT_FINETUNE_TOKENS, DEFAULT_PRETRAIN_TOKENS
except KeyboardInterrupt:
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)

MIN_VOCAB = 300  # byte fallback alone takes 259 ids (data/tokenizer.py refuses less)
MIN_WINDOW = 8  # tokens per embedded window (data/embedding.py refuses less)


class OneLineErrors(TyperGroup):
    """`mlxspec`'s command group. Click's own usage errors (a value out of range, an
    unknown option, a missing argument) come out like every other bad input: one
    `error:` line and exit 2, not Click's multi-line usage box. A command's exit code
    (`typer.Exit`) is the process's."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # the caller handles Click's exceptions itself
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as err:  # a bare `mlxspec` or `mlxspec data`: the help, as Click prints it
            err.show()
            sys.exit(err.exit_code)
        except ClickException as err:
            print_error(usage_message(err))
            sys.exit(2)
        except typer.Abort:  # end of input at a prompt
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def usage_message(err: ClickException) -> str:
    """Click's message as one line, the option first: `--domain-tokens: 0 is not in the range x>=1`."""
    param = getattr(err, "param", None)
    if isinstance(err, typer.BadParameter) and not isinstance(err, MissingParameter) and param is not None:
        name = param.opts[0] if param.param_type_name == "option" else param.human_readable_name
        return f"{name}: {' '.join(err.message.split()).rstrip('.')}"
    return " ".join(err.format_message().split())


def _typer(**kwargs) -> typer.Typer:
    # Plain help (rich_markup_mode=None): option help is text, so "[default: the
    # preset's]" prints its brackets, and a flag shows as a flag (`--json`), not `<bool>`.
    return typer.Typer(cls=OneLineErrors, rich_markup_mode=None, no_args_is_help=True, pretty_exceptions_enable=False,
                       add_completion=False, **kwargs)


app = _typer(help="Small language models specialized to your domain, cheap to run. "
             "Start with `mlxspec specialize` (runs on the bundled demo corpus).")
tokenizer_app = _typer(help="Tokenizer commands.")
app.add_typer(tokenizer_app, name="tokenizer")
data_app = _typer(help="Importance-sampling data selection (SLM-is): embed, cluster, select.")
app.add_typer(data_app, name="data")
# Results on stdout, plain text: a table cell or a path is printed as written (no
# markup, no emoji codes); logs (not a terminal) keep whole tables.
out = Console(width=None if sys.stdout.isatty() else 160, markup=False, emoji=False)


def positive(value: float | None) -> float | None:
    """Option callback: a value that must be > 0 (a learning rate), which `min=` cannot say."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not in the range x>0")
    return value


JSON_OPT = typer.Option(False, "--json", help="Print one JSON object on stdout (last).")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress bars or messages.")
CACHE_OPT = typer.Option(None, "--cache-dir", help="Token and model cache [default: $MLXSPEC_CACHE or ~/.cache/mlx-specialize].")
PRECISION_OPT = typer.Option(None, help="float32, or bf16: the linear layers' products in bfloat16, float32 weights "
                             "(x86 CPUs with AMX or AVX512-BF16 and `pip install 'mlx-specialize[bf16]'`; any GPU).")
MAX_SEED = 2**32 - 1  # every seed is 32 bits: MLX's keys take 64, NumPy's legacy seeding 32
MAX_VOCAB = 1 << 20  # SentencePiece parses the size as a 32-bit int; far beyond any model here


def seed_option(what: str = "Seed."):
    return typer.Option(0, min=0, max=MAX_SEED, help=what)


SEED_OPT = seed_option()


def handle_errors(fn):
    """Run a command; report user errors as one line (exit 2), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ui.set_quiet(bool(kwargs.get("quiet")) or bool(kwargs.get("json_out")))
        try:
            return fn(*args, **kwargs)
        except SpecializeError as err:
            # Raised while handling Ctrl-C (training checkpoints, then says how to resume):
            # still an interruption, exit 130.
            fail(str(err), code=130 if isinstance(err, Interrupted) or isinstance(err.__context__, KeyboardInterrupt) else 2)
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as err:
            fail(f"{err.strerror or err}: {err.filename}" if err.filename else str(err))
        except KeyboardInterrupt:
            fail("interrupted", code=130)
        except OSError as err:  # a full disk, a lost mount: the system's words and the file, exit 1
            if os.environ.get("MLXSPEC_DEBUG"):
                raise
            fail(f"{err.strerror or err}: {err.filename}" if err.filename else f"{err.strerror or err}", code=1)
        except Exception as err:  # a bug: still one line, traceback on request
            if os.environ.get("MLXSPEC_DEBUG"):
                raise
            from mlx_specialize.runtime import distributed as dist

            if dist.is_peer_lost(err):  # under mlx.launch: another process died
                fail(dist.peer_lost_message(dist.world(), err))
            fail(f"internal error: {type(err).__name__}: {err} (set MLXSPEC_DEBUG=1 for the traceback)", code=1)

    return wrapper


def print_error(message: str) -> None:
    # escaped: a message may hold brackets, e.g. pip install 'mlx-specialize[bf16]'; and a
    # value it echoes may hold a line break or a terminal escape: shown as \n, \x1b, so
    # the error stays one line and the terminal's state is left alone
    ui.console.print(f"[bold red]error:[/bold red] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def one_line(text: str) -> str:
    """`text` with its control characters (line breaks, tabs, escapes) written as Python writes them."""
    return "".join(repr(c)[1:-1] if (ord(c) < 32 or 127 <= ord(c) < 160) else c for c in text)


def fail(message: str, code: int = 2):
    print_error(message)
    raise typer.Exit(code)


# ---- checks before any compute ------------------------------------------------------
def check_text(option: str, value: str) -> None:
    """Refuse a value that is not Unicode text: bytes of the command line that are not
    UTF-8 reach Python as lone surrogates, which no tokenizer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecializeError(f"{option}: not UTF-8 text (check the terminal's encoding)") from None


def emit(result: dict, json_out: bool, table: Table | None = None) -> None:
    if ui.SECONDARY:  # under mlx.launch, rank 0 alone reports
        return
    if json_out:
        print(json.dumps(result, default=float))
    elif table is not None:
        out.print(table)


def _fmt(x: float) -> str:
    return f"{x:,.2f}" if x < 1e4 else f"{x:,.0f}"


def make_table(title: str, *columns: str, right: tuple[str, ...] = (), show_header: bool = True) -> Table:
    """A results table that fits the terminal: every column may wrap and folds what is
    too long (a path), so a number is never cut to "600,0…". Fill it with `add_row`."""
    table = Table(title=Text(title), show_header=show_header)
    for col in columns:
        table.add_column(col, overflow="fold", justify="right" if col in right else "left")
    return table


def add_row(table: Table, *cells) -> None:
    """Cells as plain text: user data (a corpus spec, a sample of text) may hold brackets or `:name:`."""
    table.add_row(*(Text(str(cell)) for cell in cells))


def _train_options(**opts) -> dict:
    return {k: v for k, v in opts.items() if v is not None}


# ---- doctor / presets ------------------------------------------------------------
@app.command()
@handle_errors
def doctor(json_out: bool = JSON_OPT):
    """Platform, device, versions, BLAS in use and measured matmul speed."""
    from mlx_specialize.bench import platform_facts

    report = platform_facts()
    if json_out:
        return emit(report, True)
    table = make_table("mlxspec doctor", "key", "value", show_header=False)
    for k, v in report.items():
        if k != "slow_paths":
            add_row(table, k, v)
    out.print(table)
    for line in report["slow_paths"]:
        ui.warn(line)


@app.command()
@handle_errors
def presets(json_out: bool = JSON_OPT):
    """Model presets with parameter counts and training FLOPs per token."""
    from mlx_specialize.models.presets import describe

    rows = [describe(p) for p in ms.PRESETS.values()]
    numbers = ("L", "d", "mlp", "heads", "vocab", "ctx", "params", "FLOP/tok")
    table = make_table("presets (parameters at each preset's default vocabulary)", "preset", "role", *numbers,
                       right=numbers)
    for r in rows:
        add_row(table, r["name"], r["role"], r["layers"], r["d_model"], r["mlp"], r["heads"], r["vocab"], r["context"],
                f"{r['params'] / 1e6:.1f}M", f"{r['train_flops_per_token'] / 1e6:,.0f}M")
    emit({"presets": rows}, json_out, table)


# ---- tokenizer -------------------------------------------------------------------
@tokenizer_app.command("train")
@handle_errors
def tokenizer_train(
    out_dir: Path = typer.Argument(..., help="Folder to write tokenizer.model (+ configs) into."),
    corpus: str = typer.Option(",".join(ms.bundled_names()), help="Corpus spec to train on (train split)."),
    vocab_size: int = typer.Option(8192, min=MIN_VOCAB, max=MAX_VOCAB, help="Vocabulary size (8k laptop presets, 32k paper presets)."),
    sample_chars: int = typer.Option(4_000_000, min=1, help="Characters of text to train on."),
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Train a SentencePiece BPE tokenizer (byte fallback) on a corpus sample."""
    from mlx_specialize.train.jobs import train_tokenizer_folder

    result = train_tokenizer_folder(out_dir, corpus, vocab_size, sample_chars)
    if json_out:
        return emit(result, True)
    out.print(f"wrote {result['tokenizer']} ({result['vocab_size']} tokens)")


# ---- training --------------------------------------------------------------------
def _summary_table(title: str, summary: dict) -> Table:
    table = make_table(title, "key", "value", show_header=False)
    for k, v in summary.items():
        add_row(table, k, _fmt(v) if isinstance(v, float) else v)
    return table


@app.command("pretrain")
@handle_errors
def pretrain_cmd(
    out_dir: Path = typer.Argument(..., help="Run folder (model, checkpoints, metrics)."),
    generic: str = typer.Option(",".join(ms.bundled_names()), help="Generic corpus spec."),
    preset: str = typer.Option("small", help="Model preset (see `mlxspec presets`)."),
    tokens: int = typer.Option(DEFAULT_PRETRAIN_TOKENS, min=1, help="Pre-training budget in tokens."),
    tokenizer: Optional[Path] = typer.Option(None, help="Use this tokenizer instead of training one."),
    selection: Optional[Path] = typer.Option(None, help="Train on this `mlxspec data select` folder (its tokenizer; "
                                             "validation on its generic corpus)."),
    arch: str = typer.Option("dense", help="dense; mix (one expert per cluster of --clusters; --tokens in all); pn "
                             "(projected network) or soup (Soup-of-Experts), conditioned on --clusters."),
    clusters: Optional[Path] = typer.Option(None, help="--arch mix|pn|soup: clusters folder (`mlxspec data cluster`)."),
    basis: int = typer.Option(8, min=1, help="--arch pn|soup: basis matrices h per MLP weight."),
    expert_dim: int = typer.Option(16, min=1, help="--arch pn: expert embedding width m."),
    soup_support: Optional[int] = typer.Option(None, min=1, help="--arch soup: clusters in each training condition "
                                               "(Dirichlet(1) weights) [all]."),
    init: Optional[Path] = typer.Option(None, help="Start from this model (same preset and tokenizer) instead of "
                                        "random weights; with --arch mix, every expert."),
    vocab_size: Optional[int] = typer.Option(None, min=MIN_VOCAB, max=MAX_VOCAB, help="Tokenizer vocabulary [default: the preset's]."),
    lr: Optional[float] = typer.Option(None, callback=positive, help="Peak learning rate [default: the preset's]."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Windows per step [default: the preset's]."),
    context: Optional[int] = typer.Option(None, min=1, help="Tokens per window [default: the preset's]."),
    grad_accum: Optional[int] = typer.Option(None, min=1, help="Micro-batches per optimizer step."),
    warmup: Optional[int] = typer.Option(None, min=0, help="Linear warm-up steps."),
    eval_every: Optional[int] = typer.Option(None, min=1, help="Validate every N steps."),
    patience: Optional[int] = typer.Option(None, min=0, help="Early-stop after N evaluations without improvement (0: off)."),
    checkpoint_every: Optional[int] = typer.Option(None, min=0, help="Checkpoint every N steps (0: only at the end)."),
    precision: Optional[str] = PRECISION_OPT,
    seed: int = seed_option("Seed of initialization and data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT_DIR from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Pre-train a model from scratch on a generic corpus.

    On N processes or Macs: `mlx.launch -n N -- mlxspec pretrain ...` (docs/distributed.md)."""
    from mlx_specialize.training import pretrain_run

    summary = pretrain_run(out_dir, arch, generic, preset, tokens, seed, resume, overwrite, cache_dir,
                           vocab_size=vocab_size, tokenizer=tokenizer, selection=selection, clusters=clusters,
                           init=init, basis=basis, expert_dim=expert_dim, soup_support=soup_support,
                           **_train_options(lr=lr, batch_size=batch_size, context=context, grad_accum=grad_accum,
                                            warmup=warmup, eval_every=eval_every, patience=patience,
                                            checkpoint_every=checkpoint_every, precision=precision))
    what = {"dense": preset, "mix": f"{summary.get('k')} '{preset}' experts"}.get(arch, f"a '{preset}' {arch}")
    emit(summary, json_out, _summary_table(f"pre-trained {what} -> {out_dir}",
                                          {k: v for k, v in summary.items() if k != "experts"}))


@app.command("finetune")
@handle_errors
def finetune_cmd(
    model: str = typer.Argument(..., help="Model folder (ours or any mlx-lm llama model) or hub name to start from."),
    out_dir: Path = typer.Argument(..., help="Run folder for the fine-tuned model."),
    domain: str = typer.Option("python-docs", help="Domain corpus spec."),
    domain_tokens: Optional[int] = typer.Option(None, min=1, help="Use only the first N tokens of the domain's train split."),
    tokens: Optional[int] = typer.Option(None, min=1, help="Fine-tuning budget in tokens [default: 4 passes over the domain data]."),
    lr: Optional[float] = typer.Option(None, callback=positive, help="Peak learning rate [default: the base's / 3]."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Windows per step [default: the base's, or 8]."),
    grad_accum: Optional[int] = typer.Option(None, min=1, help="Micro-batches per optimizer step."),
    warmup: Optional[int] = typer.Option(None, min=0, help="Linear warm-up steps [default: 10]."),
    eval_every: Optional[int] = typer.Option(None, min=1, help="Validate every N steps [default: 10]."),
    patience: Optional[int] = typer.Option(None, min=0, help="Early-stop after N evaluations without improvement "
                                           "[default: 3; 0: off]."),
    checkpoint_every: Optional[int] = typer.Option(None, min=0, help="Checkpoint every N steps (0: only at the end)."),
    precision: Optional[str] = PRECISION_OPT,
    seed: int = seed_option("Seed of the data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT_DIR from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Fine-tune a model on a domain, early-stopping on the domain's valid split.

    On N processes or Macs: `mlx.launch -n N -- mlxspec finetune ...` (docs/distributed.md)."""
    from mlx_specialize.training import finetune_run

    summary = finetune_run(model, domain, out_dir, domain_tokens, tokens, seed, resume, overwrite, cache_dir,
                           **_train_options(lr=lr, batch_size=batch_size, grad_accum=grad_accum, warmup=warmup,
                                            eval_every=eval_every, patience=patience,
                                            checkpoint_every=checkpoint_every, precision=precision))
    emit(summary, json_out, _summary_table(f"fine-tuned {model} on {domain} -> {out_dir}", summary))


# ---- eval / generate -------------------------------------------------------------
@app.command("eval")
@handle_errors
def eval_cmd(
    model: str = typer.Argument(..., help="Model folder (ours or any mlx-lm llama model) or hub name."),
    corpus: str = typer.Option("python-docs", help="Corpus spec."),
    split: str = typer.Option("test", help="train, valid or test."),
    max_tokens: Optional[int] = typer.Option(None, min=1, help="Evaluate only the first N tokens."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Perplexity and bits per byte of a model on a corpus split."""
    from mlx_specialize.train.jobs import evaluate_split

    report = evaluate_split(model, corpus, split, cache_dir, max_tokens)
    emit(report, json_out, _summary_table(f"{model} on {corpus}:{split}", report))


@app.command()
@handle_errors
def generate(
    model: str = typer.Argument(..., help="Model folder (ours or any mlx-lm llama model) or hub name."),
    prompt: str = typer.Option("", help="Text to continue."),
    max_tokens: int = typer.Option(100, min=1, help="Tokens to generate at most."),
    temperature: float = typer.Option(0.8, min=0.0, help="Sampling temperature (0: greedy)."),
    top_k: int = typer.Option(0, min=0, help="Sample from the k most likely tokens (0: all)."),
    seed: int = seed_option("Sampling seed."),
    json_out: bool = JSON_OPT,
):
    """Sample text from a model."""
    check_text("--prompt", prompt)
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
    quantize: Optional[int] = typer.Option(None, "--quantize", min=2, max=8, help="Quantize to 4 or 8 bits (also 2, 3, 5, 6)."),
    group_size: int = typer.Option(64, min=1, help="Weights per quantization group (32, 64, 128)."),
    dtype: Optional[str] = typer.Option(None, help="Cast float weights first: float32, float16 or bfloat16."),
    eval_corpus: Optional[str] = typer.Option(None, "--eval", help="Report test perplexity of the source and the export on this corpus."),
    eval_tokens: int = typer.Option(20_000, min=1, help="Test tokens for --eval."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Write a model as an mlx-lm folder (mlx_lm.generate / server / lora load it), optionally quantized."""
    from mlx_specialize.bench import export_and_compare

    report = export_and_compare(model, out_dir, quantize, group_size, dtype, overwrite, eval_corpus, eval_tokens,
                                cache_dir)
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
    domain_tokens: Optional[int] = typer.Option(None, min=1, help="With --domain: only its first N train tokens."),
    cluster: Optional[int] = typer.Option(None, min=0, help="Instantiate one cluster's expert."),
    weights: Optional[str] = typer.Option(None, help="Instantiate for these cluster weights (k comma-separated "
                                          "non-negative numbers, normalized)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in OUT_DIR."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Make the dense SLM of a domain, a cluster or cluster weights from a pn / soup, in closed form."""
    from mlx_specialize.methods.projected import instantiate_network

    if weights is not None:
        try:
            weights = [float(x) for x in weights.split(",")]
        except ValueError:
            raise SpecializeError(f"--weights: '{weights}' is not comma-separated numbers") from None
    result = instantiate_network(network, out_dir, domain, select, domain_tokens, cluster, weights, overwrite,
                                 cache_dir)
    if json_out:
        return emit(result, True)
    chosen = f"cluster {result['cluster']}" if "cluster" in result else "the given cluster weights"
    out.print(f"wrote the dense SLM of {chosen} of {network} -> {out_dir}")


@app.command()
@handle_errors
def bench(
    models: list[str] = typer.Argument(..., help="Model folders or hub names, side by side."),
    prompt_tokens: int = typer.Option(512, "--prompt-tokens", "-p", min=1, help="Prompt length."),
    generation_tokens: int = typer.Option(128, "--generation-tokens", "-g", min=1, help="Tokens generated per trial."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Prompts decoded together."),
    trials: int = typer.Option(5, "--num-trials", "-n", min=1, help="Timed trials (after one warm-up)."),
    quantize: list[int] = typer.Option([], "--quantize", min=2, max=8, help="Also measure each model quantized to this many bits (repeatable)."),
    group_size: int = typer.Option(64, min=1, help="Quantization group size."),
    dtype: Optional[str] = typer.Option(None, help="Cast float weights: float32, float16 or bfloat16 [default: as stored]."),
    eval_corpus: Optional[str] = typer.Option(None, "--eval", help="Also report test perplexity and bits/byte on this corpus."),
    eval_tokens: int = typer.Option(20_000, min=1, help="Test tokens for --eval."),
    seed: int = seed_option("Seed of the random prompts."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Inference speed, memory, size, bandwidth bound and serving cost of models on this device."""
    from mlx_specialize.bench import BenchConfig, run_bench

    cfg = BenchConfig(prompt_tokens, generation_tokens, batch_size, trials, seed, tuple(quantize), group_size, dtype,
                      eval_corpus, eval_tokens, str(cache_dir) if cache_dir else None)
    report = run_bench(models, cfg)
    if json_out:
        return emit(report, True)
    title = (f"{report['device']}: prompt {prompt_tokens} tokens, generate {generation_tokens}, batch {batch_size}, "
             f"mean ± std of {trials} trials")
    speed = make_table(title, "model", "variant", "prompt tok/s", "generation tok/s", "first token ms", "peak MB")
    cost_cols = ["model", "variant", "params", "MB", "bits/w", "bound tok/s", "of bound", "hours / 1B tok", "cost"]
    cost = make_table(f"size, bandwidth bound ({report['bandwidth_gb_s']:.1f} GB/s copy) and serving cost",
                      *cost_cols, *(["test ppl", "bits/byte"] if eval_corpus else []))
    for r in report["models"]:
        m, sd = r["mean"], r["std"]
        label = Path(r["model"]).name if Path(r["model"]).exists() else r["model"]
        add_row(speed, label, r["variant"], f"{m['prompt_tps']:,.0f} ± {sd['prompt_tps']:,.0f}",
                f"{m['generation_tps']:,.1f} ± {sd['generation_tps']:,.1f}",
                f"{m['ttft_s'] * 1e3:,.1f} ± {sd['ttft_s'] * 1e3:,.1f}", f"{m['peak_memory_gb'] * 1e3:,.1f}")
        row = [label, r["variant"], f"{r['params'] / 1e6:.2f}M", f"{r['bytes'] / 1e6:.1f}", f"{r['bits_per_weight']:.1f}",
               f"{r['bound_tok_s']:,.0f}", f"{r['fraction_of_bound']:.0%}", f"{r['device_hours_per_billion']:,.1f}",
               f"{r['cost_vs_first']:.2f}x"]
        add_row(cost, *row, *([f"{r['ppl']:.2f}", f"{r['bpb']:.3f}"] if eval_corpus else []))
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
    vocab_size: int = typer.Option(8192, min=MIN_VOCAB, max=MAX_VOCAB, help="Vocabulary when training the tokenizer."),
    embedder: str = typer.Option("hashed", help="hashed (fast, model-free) or minilm (the paper's Sentence-BERT)."),
    window: int = typer.Option(256, min=MIN_WINDOW, help="Tokens per window (non-overlapping)."),
    max_windows: Optional[int] = typer.Option(None, min=1, help="Embed only the first N windows."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Embed the generic corpus's windows (resumable float16 shards in the cache)."""
    from mlx_specialize.methods.clusters import embed_corpus

    report = embed_corpus(generic, embedder, window, tokenizer, vocab_size, max_windows, cache_dir)
    emit(report, json_out, _summary_table(f"embedded {generic}", {k: v for k, v in report.items() if k != "embedder"}))


@data_app.command("cluster")
@handle_errors
def data_cluster(
    embeddings: Path = typer.Argument(..., help="Folder printed by `mlxspec data embed`."),
    out_dir: Path = typer.Option(..., "--out", help="Clusters folder to write."),
    k: int = typer.Option(64, min=2, help="Clusters (the paper: 1024 for importance sampling; 16-256 in ablations)."),
    metric: str = typer.Option("cosine", help="cosine or euclidean."),
    seed: int = SEED_OPT,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing clusters folder."),
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """k-means over the generic embeddings; keeps centroids, labels, embedder state."""
    from mlx_specialize.methods.clusters import cluster_embeddings

    report = cluster_embeddings(embeddings, k, out_dir, metric, seed, overwrite)
    emit(report, json_out, _summary_table(f"k-means over {embeddings}", report))


@data_app.command("select")
@handle_errors
def data_select(
    clusters: Path = typer.Option(..., help="Clusters folder (`mlxspec data cluster`)."),
    domain: str = typer.Option(..., help="Target domain corpus spec (its train split)."),
    tokens: int = typer.Option(..., min=1, help="Tokens to select from the generic corpus."),
    out_dir: Path = typer.Option(..., "--out", help="Selection folder to write."),
    domain_tokens: Optional[int] = typer.Option(None, min=1, help="Use only the first N domain train tokens."),
    sampler: str = typer.Option("cluster", help="cluster (CRISP, with replacement) or gumbel (DSIR, without)."),
    seed: int = SEED_OPT,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing selection."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Resample generic windows so their cluster histogram matches the domain's."""
    from mlx_specialize.methods.importance import select_for_domain

    report = select_for_domain(clusters, domain, tokens, out_dir, domain_tokens, sampler, seed, overwrite, cache_dir)
    if json_out:
        return emit(report, True)
    table = make_table(f"{sampler} sampler: {report['windows']:,} windows -> {out_dir} "
                       f"(KL(D||selected) {report['kl_selected']:.4f}, KL(D||generic) {report['kl_generic']:.4f} nats, "
                       f"H(D) {report['entropy_domain']:.3f})", "cluster", "P(c|D)", "P(c|G)", "selected", "sample")
    for c in report["top_clusters"]:
        add_row(table, c["cluster"], f"{c['p_domain']:.3f}", f"{c['p_generic']:.3f}", f"{c['p_selected']:.3f}",
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
    domain_tokens: Optional[int] = typer.Option(None, min=1, help="Use only the first N domain train tokens (limited domain data)."),
    pretrain_tokens: int = typer.Option(DEFAULT_PRETRAIN_TOKENS, min=1, help="Generic pre-training budget in tokens (cached, shared by domains)."),
    finetune_tokens: int = typer.Option(DEFAULT_FINETUNE_TOKENS, min=1, help="Specialization budget in tokens (early stopping may use fewer)."),
    vocab_size: Optional[int] = typer.Option(None, min=MIN_VOCAB, max=MAX_VOCAB, help="Tokenizer vocabulary when pre-training [default: the preset's]."),
    lr: Optional[float] = typer.Option(None, callback=positive, help="Fine-tuning learning rate [default: pre-training rate / 3; 3e-5 for a --base from elsewhere]."),
    seed: int = SEED_OPT,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
    k: Optional[int] = typer.Option(None, min=2, help="Clusters of the generic corpus [is: 64, mix: 4 experts, pn / soup: 16]."),
    select: Optional[str] = typer.Option(None, help="mix: the expert of the domain's most frequent cluster "
                                         "(frequent, default), of the lowest domain loss (loss), or fine-tune all, keep "
                                         "the best (all); pn / soup: instantiate for the most frequent cluster "
                                         "(frequent, pn's default) or the domain's cluster histogram (histogram, soup's)."),
    basis: Optional[int] = typer.Option(None, min=1, help="--method pn / soup: basis matrices h per MLP weight [8]."),
    expert_init: str = typer.Option("scratch", help="--method mix: experts start from scratch (the paper) or from "
                                    "the generic SLM (generic; its pre-training is counted)."),
    embedder: str = typer.Option("hashed", help="--method is: hashed or minilm."),
    window: Optional[int] = typer.Option(None, min=MIN_WINDOW, help="--method is: tokens per window [default: the preset's context]."),
    sampler: str = typer.Option("cluster", help="--method is: cluster or gumbel."),
    cache_dir: Optional[Path] = CACHE_OPT,
    json_out: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Specialize a small model to a domain: pre-train (or reuse) what the method shares, fine-tune, report.

    Interrupted (Ctrl-C, a crash, kill -9, a full disk)? Run the same command again: it
    continues from the first unfinished phase, in the same --out folder (without --out,
    the same command finds its own runs/ folder). A finished run's report is printed again."""
    report = ms.specialize(domain, generic, method, base, preset, out_dir, domain_tokens, pretrain_tokens,
                           finetune_tokens, vocab_size, lr, seed, cache_dir, overwrite, k, embedder, window, sampler,
                           "cosine", select, expert_init, basis)
    if not json_out:
        out.print(specialize_table(report))
        fin = report["phases"]["finetune"]
        out.print(f"generation: {report['gen_tok_s']:.0f} tok/s (batch 1); domain data: {fin['domain_tokens']:,} tokens"
                  f"{', early-stopped' if fin['stopped_early'] else ''}")
    emit(report, json_out)


def specialize_table(report: dict) -> Table:
    """`specialize`'s summary: one row per phase (selection, pre-training, fine-tuning)."""
    table = make_table(f"{report['method']} on {report['domain']}: {report['params'] / 1e6:.2f}M params -> "
                       f"{report['model']}", "phase", "tokens", "seconds", "FLOPs", "test ppl", "test bits/byte",
                       right=("tokens", "seconds", "FLOPs", "test ppl", "test bits/byte"))
    pre, fin = report["phases"]["pretrain"], report["phases"]["finetune"]
    cached = " (cached)" if pre.get("cached") else " (given)" if "given" in pre else ""
    sel = report["phases"].get("select", {})
    kind = {"is": "importance-sampled", "mix": f"{sel.get('k')} experts'", "pn": "projected network",
            "soup": "soup of experts"}.get(report["method"], "generic")
    before = (f"{report['ppl_before']:.2f}", f"{report['bpb_before']:.3f}")
    pretrain_row = (f"{kind} pre-train{cached}", f"{pre['tokens']:,}", f"{pre['seconds']:.0f}", f"{pre['flops']:.2e}")
    # In the order the phases ran; the test figures before fine-tuning on the row of the
    # model they measure (SLM-mix's chosen expert, pn's instantiated SLM).
    if "kl_selected" in sel:  # SLM-is: select, then pre-train on the selection
        add_row(table, f"select (k={sel['k']}, KL {sel['kl_generic']:.3f} -> {sel['kl_selected']:.3f})",
                f"{sel['windows']:,} win", f"{sel['seconds']:.0f}", "", "", "")
        add_row(table, *pretrain_row, *before)
    elif "expert" in sel or "instance" in sel:  # pre-train once for all domains, then choose
        add_row(table, *pretrain_row, "", "")
        if "expert" in sel:
            chosen = f"choose expert {sel['expert']} of {sel['k']} ({sel['rule']})"
        else:
            target = f"cluster {sel['cluster']}" if "cluster" in sel else "the domain's histogram"
            chosen = f"instantiate for {target} of {sel['k']}"
        add_row(table, chosen, "", f"{sel['seconds']:.0f}", "", *before)
    else:
        add_row(table, *pretrain_row, *before)
    add_row(table, "domain fine-tune", f"{fin['tokens']:,}", f"{fin['seconds']:.0f}", f"{fin['flops']:.2e}",
            f"{report['ppl_after']:.2f}", f"{report['bpb_after']:.3f}")
    return table


def main() -> None:
    app()


if __name__ == "__main__":
    main()
