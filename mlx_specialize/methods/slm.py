"""SLM (`--method finetune`): the generic model, pre-trained once, fine-tuned per domain.

The pre-training is the budget every domain shares: its result is cached under
`CACHE/pretrained/<hash of corpus, preset, budget, vocabulary, seed>`, built by one process
at a time in `<key>.partial` (an interrupted pre-training resumes there from its last
checkpoint) and published with its manifest (`cache.py`). `--base` replaces it with a
model given by the user (ours, or an mlx-lm one with its own tokenizer).

SLM owns the dense architecture: `mlxspec pretrain --arch dense` pre-trains one into a
folder of the user's, on the generic corpus or on a selection (`mlxspec data select`,
SLM-is's pre-training data).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import ui
from ..runtime.cache import cache_entry
from ..data.corpus import bundled_names, load_corpus
from ..data.tokenizer import Tokenizer
from ..models.presets import get_preset, with_overrides
from ..train.jobs import pretrain
from .base import Method, Prepared, PretrainJob, Settings, check_generic_is
from .clusters import generic_tokenizer, sample_key
from .importance import load_selected, selected_from


def _generic(job: PretrainJob) -> str:
    """A dense job's generic corpus: the one given, else every bundled corpus."""
    return job.generic or ",".join(bundled_names())


def pretrain_key(fingerprint: str, preset, tokens: int, vocab: int | None, seed: int,
                 tokenizer_sample: str = "uniform") -> str:
    src = json.dumps([fingerprint, preset.__dict__, tokens, vocab, seed, *sample_key(tokenizer_sample)],
                     sort_keys=True, default=str)
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def cached_pretrain(generic: str, preset_name: str, tokens: int, vocab_size: int | None, seed: int,
                    cache_dir: Path, context: int | None = None,
                    tokenizer_sample: str = "uniform") -> tuple[Path, dict, bool]:
    """Pre-train (or reuse) the generic base model, with the generic tokenizer drawn as
    `tokenizer_sample` says. Returns (folder, summary, reused)."""
    preset = with_overrides(get_preset(preset_name), context=context)
    corpus = load_corpus(generic)
    folder = Path(cache_dir) / "pretrained" / pretrain_key(corpus.fingerprint(), preset, tokens, vocab_size, seed,
                                                           tokenizer_sample)
    with cache_entry(folder, f"the generic model '{preset.name}' on {generic} ({tokens:,} tokens)") as entry:
        if entry.ready:
            ui.info(f"using the cached generic model {folder}")
            return folder, json.loads((folder / "summary.json").read_text()), entry.reused
        # the generic tokenizer, made once per corpus and vocabulary (not once per budget)
        tokenizer = generic_tokenizer(generic, vocab_size or preset.vocab, cache_dir, tokenizer_sample)
        result = pretrain(generic, preset, entry.build, tokens, tokenizer=tokenizer, cache_dir=cache_dir,
                          resume=True, seed=seed, checkpoint_every=50)
        entry.publish()
    return folder, result.summary, False


class SLM(Method):
    name = "finetune"
    paper = "SLM"
    arch = "dense"

    def prepare(self, s: Settings) -> Prepared:
        if s.base is not None:
            return Prepared(Path(s.base), {"pretrain": {"tokens": 0, "seconds": 0.0, "flops": 0.0, "given": str(s.base)}})
        folder, summary, reused = cached_pretrain(s.generic, s.preset, s.pretrain_tokens, s.vocab_size, s.seed,
                                                  s.cache_dir, tokenizer_sample=s.tokenizer_sample)
        # its validations apart too: the LLM trains at SLM's FLOPs, but validates the same
        # tokens through the larger model
        return Prepared(folder, {"pretrain": {"tokens": summary["tokens"], "seconds": summary["seconds"],
                                              "flops": summary["flops"], "valid_flops": summary.get("valid_flops"),
                                              "cached": reused, "model": str(folder)}})

    def check_pretrain(self, job: PretrainJob) -> None:
        """The run folder, then the corpus read through: the generic train and valid
        splits, or only the valid split behind a selection (its windows are the train split)."""
        super().check_pretrain(job)
        if job.selection is not None:
            load_corpus(selected_from(job.selection)).check(("valid",))
            check_generic_is(job, selected_from(job.selection), f"the selection {job.selection}")
        else:
            load_corpus(_generic(job)).check(("train", "valid"))

    def pretrain(self, job: PretrainJob) -> dict:
        """A dense model on the generic corpus, or on a selection's windows (with the
        selection's tokenizer, validated on its generic corpus). The tokenizer: the job's,
        else the one of the run being resumed, the selection's or the `init` model's, else
        one trained on the generic corpus."""
        tokenizer = Tokenizer.load(job.tokenizer) if job.tokenizer else None
        if tokenizer is None and job.resume and (job.out_dir / "tokenizer.model").exists():
            tokenizer = Tokenizer.load(job.out_dir)
        generic, train_split = _generic(job), None
        if job.selection is not None:
            train_split, tokenizer = load_selected(job.selection), Tokenizer.load(job.selection)
            generic = selected_from(job.selection)
        if job.init is not None and tokenizer is None:
            tokenizer = Tokenizer.load(job.init)
        result = pretrain(generic, get_preset(job.preset), job.out_dir, job.tokens, tokenizer=tokenizer,
                          vocab_size=job.vocab_size, cache_dir=job.cache_dir, resume=job.resume,
                          overwrite=job.overwrite, seed=job.seed, train_split=train_split, init_from=job.init,
                          **job.train_options)
        return {"model": str(result.model_dir), **result.summary}
