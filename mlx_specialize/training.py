"""`mlxspec pretrain` and `mlxspec finetune` as library calls.

Each checks every input before any work (a bad one raises SpecializeError, one line
naming its option), warns of this platform's slow paths, then trains into a run folder
of the caller's (`--resume` continues it, `--overwrite` replaces it). `pretrain_run`
finds the method that pre-trains the architecture in the methods registry
(`methods.get_arch`): dense is SLM's (on the generic corpus, or on the windows of an
`mlxspec data select` folder), mix SLM-mix's, pn and soup SLM-pn's and the soup's.
"""

from __future__ import annotations

import os
from pathlib import Path

from .accel import warn_slow_paths
from .data.corpus import load_corpus
from .errors import check_choice
from .methods import PretrainJob, get_arch
from .models.presets import PRESETS
from .specialize import DEFAULT_PRESET, DEFAULT_PRETRAIN_TOKENS
from .train.jobs import check_run_folder, check_train_options, finetune


def pretrain_run(out_dir: str | os.PathLike, arch: str = "dense", generic: str | None = None,
                 preset: str = DEFAULT_PRESET, tokens: int = DEFAULT_PRETRAIN_TOKENS, seed: int = 0,
                 resume: bool = False, overwrite: bool = False, cache_dir=None, *, vocab_size: int | None = None,
                 tokenizer=None, selection=None, clusters=None, init=None, basis: int | None = None,
                 expert_dim: int = 16, soup_support: int | None = None, **train_options) -> dict:
    """Pre-train a `preset` model of architecture `arch` into `out_dir` on `tokens` tokens
    (mix: in all, split between the experts); returns the summary. `generic` defaults
    to every bundled corpus; the other arguments are `methods.PretrainJob`'s, the
    `train_options` TrainConfig's (lr, batch_size, context, precision, ...). Checked
    first, in this order: the architecture, the preset, the training options, then the
    method's own checks (the run folder, the clusters, every corpus read through)."""
    method = get_arch(arch)
    check_choice("--preset", preset, PRESETS)
    check_train_options(train_options)
    job = PretrainJob(Path(out_dir), generic, preset, tokens, seed=seed, resume=resume,
                      overwrite=overwrite, cache_dir=cache_dir, train_options=train_options, vocab_size=vocab_size,
                      tokenizer=_path(tokenizer), selection=_path(selection), clusters=_path(clusters),
                      init=_path(init), basis=basis, expert_dim=expert_dim, soup_support=soup_support)
    method.check_pretrain(job)
    warn_slow_paths()
    return method.pretrain(job)


def finetune_run(base: str | os.PathLike, domain: str, out_dir: str | os.PathLike, domain_tokens: int | None = None,
                 tokens: int | None = None, seed: int = 0, resume: bool = False, overwrite: bool = False,
                 cache_dir=None, **train_options) -> dict:
    """`train.jobs.finetune` of `base` on `domain` into `out_dir`, its inputs checked first
    (the training options, the run folder, the domain's train and valid splits read
    through); returns the run's summary with its model folder."""
    check_train_options(train_options)
    check_run_folder(out_dir, overwrite, resume)
    load_corpus(domain).check(("train", "valid"))
    warn_slow_paths()
    result = finetune(base, domain, out_dir, domain_tokens, tokens, cache_dir=cache_dir, resume=resume,
                      overwrite=overwrite, seed=seed, **train_options)
    return {"model": str(result.model_dir), **result.summary}


def _path(value) -> Path | None:
    return Path(value) if value is not None else None
