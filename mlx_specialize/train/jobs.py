"""Whole training jobs: pre-train from scratch, fine-tune from a model, evaluate.

Each takes corpus specs and folders (what the command line takes) and returns a
summary dict; the command line is a thin layer over these functions. The checks a
command makes before a job (`check_run_folder`, `check_train_options`) are here too.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from .. import accel, ui
from ..data.corpus import SPLITS, Corpus, load_corpus
from ..data.tokenizer import TOKENIZER_SAMPLES, TOKENIZER_SCAN_CHARS, Tokenizer, train_tokenizer
from ..data.tokens import TokenizedSplit, tokenize_split
from ..errors import SpecializeError, check_choice
from ..models.dense import Model, count_params
from ..models.io import load_model, model_context, save_model
from ..models.presets import Preset
from ..runtime import distributed as dist
from ..runtime.files import atomic_write_bytes
from .evaluate import EvalResult, evaluate
from .lora import ADAPTERS, add_adapters, fuse_adapters, lora_flops_per_token
from .config import TrainConfig
from .trainer import Trainer

FOREIGN_LR = 3e-5  # full fine-tuning rate for a pre-trained model from elsewhere (AdamW)
# Fine-tuning runs until early stopping on the domain's valid split, as the paper's does;
# this many steps is only a safety bound (the paper's smallest cap, 2k steps), reported.
FINETUNE_MAX_STEPS = 2000
# The paper fine-tunes its smallest domain sets at the pre-training lr / 3 and larger
# ones at the pre-training lr. Ours: lr / 3 up to this many domain tokens (the protocol's
# 100k set), the base lr above (its 1M set and all of a target's train split).
SMALL_DOMAIN_TOKENS = 300_000
VALIDATIONS_PER_PASS = 8


def finetune_eval_every(domain_tokens: int, tokens_per_step: int) -> int:
    """Steps between fine-tuning validations: VALIDATIONS_PER_PASS per pass over the domain
    data, but no closer than 10 steps apart (a pass over a small set is only a few dozen
    steps): a large set does not spend most of its time validating (each validation reads
    up to 32k valid tokens)."""
    return max(10, round(domain_tokens / tokens_per_step / VALIDATIONS_PER_PASS))


def finetune_lr(base_lr: float, domain_tokens: int) -> float:
    """The fine-tuning learning rate for `domain_tokens` of domain data from a base
    pre-trained at `base_lr` (see SMALL_DOMAIN_TOKENS)."""
    return base_lr / 3 if domain_tokens <= SMALL_DOMAIN_TOKENS else base_lr


def tokenize(corpus: Corpus, split: str, tokenizer: Tokenizer, cache_dir=None, max_tokens: int | None = None) -> TokenizedSplit:
    """`tokenize_split` with a progress bar (cache hits are instant and silent)."""
    with ui.task(f"tokenizing {corpus.name}:{split} (characters)", None) as advance:
        return tokenize_split(corpus, split, tokenizer, cache_dir, max_tokens, on_progress=advance)


def fit_tokenizer(corpus: Corpus, vocab_size: int, sample_chars: int = 4_000_000,
                  sample: str = "uniform") -> Tokenizer:
    """A tokenizer trained on about `sample_chars` characters of the corpus' train split,
    drawn as `sample` says (data.tokenizer.TOKENIZER_SAMPLES; `uniform` reads the split once
    more to count it, up to TOKENIZER_SCAN_CHARS)."""
    check_choice("--tokenizer-sample", sample, TOKENIZER_SAMPLES)
    ui.info(f"training a {vocab_size}-token SentencePiece tokenizer on {corpus.name}")
    total = None
    if sample == "uniform":
        total = 0
        for doc in corpus.documents("train"):
            total += len(doc)
            if total >= TOKENIZER_SCAN_CHARS:
                break
    return train_tokenizer(corpus.documents("train"), vocab_size, sample_chars, total)


def train_tokenizer_folder(out_dir: str | os.PathLike, corpus: str, vocab_size: int,
                           sample_chars: int = 4_000_000) -> dict:
    """Train a tokenizer on `corpus`'s train split and save it in `out_dir` (never over
    another; the corpus is read through first). Returns its path, size and fingerprint."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecializeError(f"{out_dir} is a file; choose another folder")
    if (out_dir / "tokenizer.model").exists():
        raise SpecializeError(f"{out_dir}/tokenizer.model exists; choose another folder")
    source = load_corpus(corpus)
    source.check(("train",))
    tokenizer = fit_tokenizer(source, vocab_size, sample_chars)
    tokenizer.save(out_dir)
    return {"tokenizer": str(out_dir / "tokenizer.model"), "vocab_size": tokenizer.vocab_size,
            "fingerprint": tokenizer.fingerprint}


def check_run_folder(out_dir: str | os.PathLike, overwrite: bool, resume: bool = False) -> None:
    """Refuse, before any work, to write a training run over one already in `out_dir`
    (the trainer would refuse too, but only after tokenizing), or into a file."""
    from .checkpoint import refuse_existing_run

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecializeError(f"{out_dir} is a file, not a run folder")
    refuse_existing_run(out_dir, overwrite, resume)


def check_train_options(options: dict) -> None:
    """What a training's options can be refused for before any data work: an unknown
    `precision`, named; bf16 where this machine has no bf16 products (a missing MKL on an
    x86 CPU) fails in a second, not after tokenizing. The ranges are TrainConfig's."""
    precision = options.get("precision")
    if precision is not None:
        check_choice("--precision", precision, accel.PRECISIONS)
        accel.check_precision(precision)


def rank0_tokenizer(tokenizer, make, w: dist.World | None = None):
    """Rank 0's tokenizer on every rank: `tokenizer` there, or `make()` if None. A
    SentencePiece model is sent over (other ranks' own are ignored: a trained tokenizer
    need not be identical on every host); a Hugging Face one must be on every host."""
    w = w or dist.world()
    if w.size == 1:
        return tokenizer if tokenizer is not None else make()
    ours = (tokenizer if tokenizer is not None else make()) if w.is_main else tokenizer
    sendable = dist.broadcast_json(hasattr(ours, "model_bytes") if w.is_main else None, w)
    if not sendable:
        if ours is None:
            raise SpecializeError(f"rank {w.rank} has no tokenizer; give every host the same model folder")
        dist.same_everywhere(ours.fingerprint, "tokenizer", w)
        return ours
    data = dist.broadcast_bytes(ours.model_bytes if w.is_main else None, w)
    return ours if ours is not None and getattr(ours, "model_bytes", None) == data else Tokenizer(data, "<rank 0>")


def steps_for(tokens: int, cfg: TrainConfig) -> int:
    """Optimizer steps that consume `tokens` training tokens (at least 1)."""
    return max(1, math.ceil(tokens / cfg.tokens_per_step))


@dataclass
class JobResult:
    """What a job produced: the model folder and the run's summary."""

    model_dir: Path
    summary: dict


def pretrain(
    generic: str,
    preset: Preset,
    out_dir: str | os.PathLike,
    tokens: int,
    tokenizer: Tokenizer | None = None,
    vocab_size: int | None = None,
    cache_dir=None,
    resume: bool = False,
    overwrite: bool = False,
    train_split: TokenizedSplit | None = None,
    init_from: str | os.PathLike | None = None,
    **train_options,
) -> JobResult:
    """Pre-train a `preset` model from scratch on `tokens` tokens of the generic corpus.

    A tokenizer is trained on the generic corpus unless one is given. `train_split`
    (e.g. importance-sampled windows, or one cluster's, tokenized with `tokenizer`)
    replaces the corpus' train split; validation stays on the corpus' valid split, which
    then samples other text than the training's: it is only reported, and the run keeps
    its final model (`keep`), as the paper trains every model to its budget. `init_from`
    (a model folder of the same shape and tokenizer) replaces the random initialisation."""
    corpus = load_corpus(generic)
    # Several processes: all take rank 0's (given or trained) tokenizer.
    tokenizer = rank0_tokenizer(tokenizer, lambda: fit_tokenizer(corpus, vocab_size or preset.vocab))
    train = train_split if train_split is not None else tokenize(corpus, "train", tokenizer, cache_dir)
    valid = tokenize(corpus, "valid", tokenizer, cache_dir)
    mx.random.seed(train_options.get("seed", 0))
    model = Model(preset.model_args(tokenizer.vocab_size))
    if init_from is not None:
        base, _, _ = load_model(init_from, tokenizer=tokenizer, dtype="float32", dequantize=True)
        if base.args != model.args:
            raise SpecializeError(f"{init_from} is not a '{preset.name}' model: cannot start from it")
        model.update(base.parameters())
    options = {"batch_size": preset.batch_size, "context": preset.context, "lr": preset.lr,
               "warmup": preset.warmup, "keep": "best" if train_split is None else "final", **train_options}
    cfg = TrainConfig(steps=1, **options)
    cfg.steps = steps_for(tokens, cfg)
    ui.info(
        f"pre-training '{preset.name}' ({count_params(model.args)['total'] / 1e6:.2f}M params) on {train.name}: "
        f"{cfg.steps} steps x {cfg.tokens_per_step:,} tokens ({train.n_tokens:,} tokens in the set)"
    )
    meta = {"job": "pretrain", "preset": preset.name, "corpus": generic, "lr": cfg.lr, "batch_size": cfg.batch_size,
            **({"init": str(init_from)} if init_from is not None else {})}
    summary = Trainer(model, tokenizer, train, valid, cfg, out_dir, meta).run(resume=resume, overwrite=overwrite)
    return JobResult(Path(out_dir), summary)


def finetune(
    base: str | os.PathLike,
    domain: str,
    out_dir: str | os.PathLike,
    domain_tokens: int | None = None,
    max_tokens: int | None = None,
    cache_dir=None,
    resume: bool = False,
    overwrite: bool = False,
    loss=None,
    lora_rank: int | None = None,
    **train_options,
) -> JobResult:
    """Fine-tune the model in `base` on the first `domain_tokens` of the domain's train
    split until early stopping on its valid split, training on at most `max_tokens`
    tokens (default: FINETUNE_MAX_STEPS steps, a safety bound the summary reports as
    `max_steps`). The learning rate defaults to `finetune_lr` of the base's pre-training
    rate (its / 3 for small domain sets, as the paper's); the batch size to the base's. A
    base we did not train (an mlx-lm model, maybe quantized) is dequantized and trained
    in float32 with its own tokenizer, at FOREIGN_LR. `loss` replaces the trainer's
    next-token loss (e.g. `distill.DistillationLoss`). `lora_rank`: train LoRA adapters
    of that rank on the frozen base instead (`lora.py`), in OUT/adapters, and save the
    model with the adapters fused into OUT."""
    model, tokenizer, config = load_model(base, dtype="float32", dequantize=True)
    corpus = load_corpus(domain)
    train = tokenize(corpus, "train", tokenizer, cache_dir, domain_tokens)
    valid = tokenize(corpus, "valid", tokenizer, cache_dir)
    context = model_context(config)
    base_meta = config.get("mlxspec", {})
    # the rule scales the rate the lineage was pre-trained at ("lr" of a pre-trained model,
    # "pretrain_lr" of a fine-tuned one, whose "lr" is its own fine-tuning rate)
    pretrain_lr = base_meta.get("pretrain_lr", base_meta.get("lr"))
    base_lr = finetune_lr(pretrain_lr, train.n_tokens) if pretrain_lr is not None else FOREIGN_LR
    batch_size = train_options.get("batch_size", base_meta.get("batch_size", 8))
    options = {"patience": 3, "warmup": 10, "eval_every": finetune_eval_every(train.n_tokens, batch_size * context),
               "lr": base_lr, "batch_size": batch_size, "context": context, **train_options}
    cfg = TrainConfig(steps=1, **options)
    cfg.steps = steps_for(max_tokens, cfg) if max_tokens else FINETUNE_MAX_STEPS
    ui.info(
        f"fine-tuning {base} on {domain}: {train.n_tokens:,} domain tokens, at most {cfg.steps} steps "
        f"x {cfg.tokens_per_step:,} tokens, early stopping on valid (patience {cfg.patience})"
    )
    meta = {"job": "finetune", "base": str(base), "corpus": domain, "preset": base_meta.get("preset"),
            "lr": cfg.lr, "pretrain_lr": pretrain_lr, "batch_size": cfg.batch_size}  # None: a base from elsewhere
    run_dir, flops = Path(out_dir), None
    if lora_rank is not None:
        mx.random.seed(cfg.seed)  # the adapters' random start (lora_a) is the run's: its seed reproduces it
        add_adapters(model, lora_rank)
        run_dir, flops = run_dir / ADAPTERS, lora_flops_per_token(model.args, context, lora_rank)
        meta["lora_rank"] = lora_rank
    summary = Trainer(model, tokenizer, train, valid, cfg, run_dir, meta, loss=loss, flops_per_token=flops).run(
        resume=resume, overwrite=overwrite)
    if lora_rank is not None and dist.world().is_main:  # the served model: adapters fused, in OUT
        save_model(fuse_adapters(model, run_dir), out_dir, tokenizer, {**meta, "context": context})
        for name in ("metrics.jsonl", "run.json"):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, Path(out_dir) / name)
    if "domain_tokens" not in summary:  # in the run's summary.json too: a copy of the run says what it saw
        summary["domain_tokens"] = train.n_tokens
        if lora_rank is not None:
            summary["lora_rank"] = lora_rank
        if dist.world().is_main:
            atomic_write_bytes(Path(out_dir) / "summary.json", json.dumps(summary, indent=2).encode())
    return JobResult(Path(out_dir), summary)


def evaluate_model(
    model_dir: str | os.PathLike, corpus: str, split: str = "test", cache_dir=None, batch_size: int = 8,
    max_tokens: int | None = None, loaded: tuple | None = None,
) -> EvalResult:
    """Perplexity and bits per byte of a saved model on a corpus split."""
    model, tokenizer, config = loaded or load_model(model_dir)
    data = tokenize(load_corpus(corpus), split, tokenizer, cache_dir)
    context = model_context(config)
    targets = min(data.n_tokens - 1, max_tokens or data.n_tokens)
    with ui.task(f"evaluating {corpus}:{split}", targets) as advance:
        return evaluate(model, data, context, batch_size, max_tokens, on_batch=advance)


def evaluate_split(model: str | os.PathLike, corpus: str, split: str = "test", cache_dir=None,
                   max_tokens: int | None = None) -> dict:
    """`evaluate_model` for the command line: the split named, and the corpus read
    through (a truncated file, an empty split) before the model loads. Returns the model,
    corpus, split and the evaluation's figures."""
    check_choice("--split", split, SPLITS)
    load_corpus(corpus).check((split,))
    result = evaluate_model(model, corpus, split, cache_dir, max_tokens=max_tokens)
    return {"model": str(model), "corpus": corpus, "split": split, **result.to_dict()}
