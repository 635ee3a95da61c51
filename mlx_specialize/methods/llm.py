"""LLM (`--method llm`): SLM's recipe on the preset's large twin, the paper's upper reference.

`small` -> `small-llm` and so on (`LLM_TWIN`; an `*-llm` preset is taken as it is): the
generic pre-training (shared by every domain, cached as SLM's is) and the fine-tuning are
SLM's. Its inference costs the large model's FLOPs per token, which the report's
`params`, `inference_flops_per_token` and measured generation speed show.
"""

from __future__ import annotations

from ..errors import SpecializeError
from ..models.presets import PRESETS
from .base import Settings
from .slm import SLM

LLM_TWIN = {name: f"{name}-llm" for name in PRESETS if f"{name}-llm" in PRESETS}
LLM_TWIN["paper-slm"] = "paper-llm"


def llm_twin(preset: str) -> str:
    """The large twin of a small preset (an LLM preset is its own)."""
    if preset in PRESETS and PRESETS[preset].role == "llm":
        return preset
    if preset not in LLM_TWIN:
        raise SpecializeError(f"--preset {preset} has no LLM twin (those with one: {', '.join(LLM_TWIN)})")
    return LLM_TWIN[preset]


class LLM(SLM):
    name = "llm"
    paper = "LLM"
    arch = None  # the dense architecture's pre-training is SLM's (`pretrain --arch dense --preset small-llm`)

    def resolve(self, settings: Settings) -> Settings:
        settings = super().resolve(settings)
        settings.preset = llm_twin(settings.preset)
        return settings
