"""LLM (`--method llm`): SLM's recipe on the preset's large twin, the paper's upper reference.

`small` -> `small-llm` and so on (`LLM_TWIN`; an `*-llm` preset is taken as it is): the
generic pre-training (shared by every domain, cached as SLM's is) and the fine-tuning are
SLM's. The budget, `pretrain_tokens`, is stated in tokens of the preset, as for every
method: the twin trains on the fewer tokens of the same FLOPs (`equal_flops_tokens`), as
the paper compares the two at equal pre-training cost and as SLM-d's teacher is trained. Its inference costs the large model's FLOPs per token, which the report's
`params`, `inference_flops_per_token` and measured generation speed show.
"""

from __future__ import annotations

from pathlib import Path

from ..data.corpus import load_corpus
from ..errors import SpecializeError
from ..runtime.cache import cache_entry
from ..runtime.files import copy_run_files
from ..models.dense import flops_per_token
from ..models.presets import PRESETS, get_preset
from .base import Settings
from .clusters import cache_key
from .slm import SLM

LLM_TWIN = {name: f"{name}-llm" for name in PRESETS if f"{name}-llm" in PRESETS}
LLM_TWIN["paper-slm"] = "paper-llm"


def equal_flops_tokens(tokens: int, preset: str, other: str, vocab_size: int | None = None) -> int:
    """The tokens `other` trains on for the generic pre-training FLOPs that `tokens`
    tokens of `preset` cost (each at its own context and vocabulary): the LLM's share
    of a budget stated in SLM tokens, as the paper compares them at equal GPU-hours."""
    ours, theirs = (get_preset(p) for p in (preset, other))
    flops = [flops_per_token(p.model_args(vocab_size or p.vocab), p.context) for p in (ours, theirs)]
    return max(1, round(tokens * flops[0] / flops[1]))


def llm_twin(preset: str) -> str:
    """The large twin of a small preset (an LLM preset is its own)."""
    if preset in PRESETS and PRESETS[preset].role == "llm":
        return preset
    if preset not in LLM_TWIN:
        raise SpecializeError(f"--preset {preset} has no LLM twin (those with one: {', '.join(LLM_TWIN)})")
    return LLM_TWIN[preset]


# what a `specialize` run folder holds beside its fine-tuned model: not the teacher's
NOT_THE_MODEL = ("specialize.json", "report.json", "selection-report.json", "selection-histograms.png")


def teacher_folder(s: Settings, base: Path) -> Path:
    """The cache entry of the LLM `base` fine-tuned on `s.domain` with SLM's recipe
    (SLM-d's teacher, and `--method llm`'s fine-tuning: made once for both)."""
    return s.cache_dir / "teachers" / cache_key(Path(base).name, load_corpus(s.domain).fingerprint(), s.domain_tokens,
                                                s.finetune_tokens, s.seed)


class LLM(SLM):
    name = "llm"
    paper = "LLM"
    arch = None  # the dense architecture's pre-training is SLM's (`pretrain --arch dense --preset small-llm`)

    def fine_tuned(self, s: Settings, phases: dict) -> Path | None:
        """SLM-d's teacher for this domain, if one was made from this same LLM (the
        fine-tuning's own lr: a run with --lr trains its own)."""
        folder = teacher_folder(s, Path(phases["pretrain"]["model"]))
        return folder if s.lr is None and (folder / "summary.json").is_file() else None

    def keep_fine_tuned(self, s: Settings, phases: dict, run_dir: Path) -> None:
        """Publish the fine-tuned LLM as SLM-d's teacher for this domain (once)."""
        if s.lr is not None or "given" in phases["pretrain"]:
            return
        with cache_entry(teacher_folder(s, Path(phases["pretrain"]["model"])), "the fine-tuned LLM") as entry:
            if not entry.ready:
                copy_run_files(run_dir, entry.build, skip=NOT_THE_MODEL)
                entry.publish()

    def resolve(self, settings: Settings) -> Settings:
        """The twin preset, and the budget in its tokens (the same FLOPs)."""
        settings = super().resolve(settings)
        twin = llm_twin(settings.preset)
        settings.pretrain_tokens = equal_flops_tokens(settings.pretrain_tokens, settings.preset, twin,
                                                      settings.vocab_size)
        settings.preset = twin
        return settings
