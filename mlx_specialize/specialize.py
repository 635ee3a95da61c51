"""`specialize`: the main job. A generic small model, specialized to one domain.

    generic SLM  --(fine-tune on the domain's limited train data)-->  domain SLM

1. Base model: the one given with `base`, or a `preset` model pre-trained on the
   generic corpus. Pre-training is the budget shared by every domain, so its result is
   cached under `CACHE/pretrained/<hash of corpus, preset, budget, seed>` and reused by
   later runs (an interrupted pre-training resumes from its last checkpoint).
2. Fine-tune on the first `domain_tokens` tokens of the domain's train split,
   early-stopping on its valid split (the specialization budget).
3. Report domain test perplexity and bits per byte before and after, tokens, FLOPs
   and seconds per phase, model size and measured generation speed.

`method` names the specialization method; this version has `finetune`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from . import ui
from .data.corpus import bundled_names, default_generic, load_corpus
from .data.tokens import default_cache_dir
from .errors import SpecializeError
from .models.dense import count_params
from .models.generate import measure_generation
from .models.io import load_model
from .models.presets import get_preset, with_overrides
from .train.jobs import evaluate_model, finetune, pretrain

METHODS = ("finetune",)
DEFAULT_DOMAIN = "python-docs"
DEFAULT_PRESET = "small"
DEFAULT_PRETRAIN_TOKENS = 600_000
DEFAULT_FINETUNE_TOKENS = 120_000


def _pretrain_key(fingerprint: str, preset, tokens: int, vocab: int | None, seed: int) -> str:
    src = json.dumps([fingerprint, preset.__dict__, tokens, vocab, seed], sort_keys=True, default=str)
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def _fresh_run_dir(domain: str, method: str) -> Path:
    """runs/DOMAIN-METHOD, or the first runs/DOMAIN-METHOD-N that does not exist yet."""
    stem = Path("runs") / f"{Path(domain.split(',')[0].split('?')[0]).name.split('.')[0] or 'domain'}-{method}"
    path, n = stem, 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}")
    return path


def cached_pretrain(generic: str, preset_name: str, tokens: int, vocab_size: int | None, seed: int,
                    cache_dir: Path, context: int | None = None) -> tuple[Path, dict, bool]:
    """Pre-train (or reuse) the generic base model. Returns (folder, summary, reused)."""
    preset = with_overrides(get_preset(preset_name), context=context)
    corpus = load_corpus(generic)
    folder = cache_dir / "pretrained" / _pretrain_key(corpus.fingerprint(), preset, tokens, vocab_size, seed)
    summary_path = folder / "summary.json"
    if summary_path.exists():
        ui.info(f"using the cached generic model {folder}")
        return folder, json.loads(summary_path.read_text()), True
    result = pretrain(generic, preset, folder, tokens, vocab_size=vocab_size, cache_dir=cache_dir,
                      resume=True, seed=seed, checkpoint_every=50)
    return folder, result.summary, False


def specialize(
    domain: str = DEFAULT_DOMAIN,
    generic: str | None = None,
    method: str = "finetune",
    base: str | None = None,
    preset: str = DEFAULT_PRESET,
    out_dir: str | os.PathLike | None = None,
    domain_tokens: int | None = None,
    pretrain_tokens: int = DEFAULT_PRETRAIN_TOKENS,
    finetune_tokens: int = DEFAULT_FINETUNE_TOKENS,
    vocab_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Specialize a small model to `domain`; returns the report (also RUN/report.json).

    `domain` and `generic` are corpus specs (see `data.corpus`); `generic` defaults to
    the bundled corpora other than the domain."""
    if method not in METHODS:
        raise SpecializeError(f"unknown method '{method}' (available: {', '.join(METHODS)})")
    cache_dir = Path(cache_dir or default_cache_dir())
    domain_corpus = load_corpus(domain)
    for split in ("train", "valid", "test"):  # fail fast, before any pre-training
        if next(domain_corpus.documents(split), None) is None:
            raise SpecializeError(f"domain corpus '{domain}' has no documents in its {split} split")
    get_preset(preset)
    generic = generic or default_generic(domain)
    if not generic:
        raise SpecializeError(f"no generic corpus: pass --generic (bundled: {', '.join(bundled_names())})")
    out_dir = Path(out_dir) if out_dir else _fresh_run_dir(domain, method)
    phases: dict[str, dict] = {}

    t0 = time.perf_counter()
    if base is not None:
        base_dir, reused = Path(base), True
        phases["pretrain"] = {"tokens": 0, "seconds": 0.0, "flops": 0.0, "given": str(base)}
    else:
        base_dir, summary, reused = cached_pretrain(generic, preset, pretrain_tokens, vocab_size, seed, cache_dir)
        phases["pretrain"] = {"tokens": summary["tokens"], "seconds": summary["seconds"], "flops": summary["flops"],
                              "cached": reused, "model": str(base_dir)}
    base_model = load_model(base_dir)
    before = evaluate_model(base_dir, domain, "test", cache_dir, loaded=base_model)

    options = {"seed": seed, **({"lr": lr} if lr is not None else {})}
    tuned = finetune(base_dir, domain, out_dir, domain_tokens, finetune_tokens, cache_dir=cache_dir,
                     overwrite=overwrite, **options)
    phases["finetune"] = {k: tuned.summary[k] for k in ("tokens", "seconds", "flops", "steps")}
    phases["finetune"]["domain_tokens"] = tuned.summary["domain_tokens"]
    phases["finetune"]["stopped_early"] = tuned.summary["stopped_early"]

    loaded = load_model(out_dir)
    after = evaluate_model(out_dir, domain, "test", cache_dir, loaded=loaded)
    speed = measure_generation(loaded[0])
    report = {
        "domain": domain_corpus.name,
        "generic": generic,
        "method": method,
        "preset": loaded[2].get("mlxspec", {}).get("preset"),
        "model": str(out_dir),
        "params": count_params(loaded[0].args)["total"],
        "ppl_before": before.ppl,
        "ppl_after": after.ppl,
        "bpb_before": before.bits_per_byte,
        "bpb_after": after.bits_per_byte,
        "test_tokens": after.tokens,
        "gen_tok_s": speed.gen_tok_s,
        "prompt_tok_s": speed.prompt_tok_s,
        "phases": phases,
        "wall_seconds": time.perf_counter() - t0,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report
