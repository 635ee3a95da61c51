"""LLM + LoRA (`--method llm-lora`): the LLM of `llm.py`, fine-tuned through low-rank
adapters on its frozen weights (the paper's appendix), then fused for serving.

The generic pre-training is the LLM's (shared, the same cache entry); per domain only the
adapters train (`train.lora`: mlx-lm's LoRA layers, the paper's rank 64 at width 2816
scaled to the preset's width), which costs about two thirds of a full fine-tuning's
FLOPs per token; fused into the weights, the served model is the LLM's size and speed.
"""

from __future__ import annotations

from pathlib import Path

from ..models.presets import get_preset
from ..train.lora import lora_rank
from .base import Settings
from .llm import LLM


class LLMLoRA(LLM):
    name = "llm-lora"
    paper = "LLM + LoRA"

    def finetune_options(self, s: Settings, phases: dict) -> dict:
        preset = get_preset(s.preset)  # the twin: `resolve` mapped it
        return {"lora_rank": lora_rank(preset.model_args(s.vocab_size or preset.vocab))}

    def fine_tuned(self, s: Settings, phases: dict) -> Path | None:
        return None  # its own fine-tuning: the adapters, not the LLM's full one

    def keep_fine_tuned(self, s: Settings, phases: dict, run_dir: Path) -> None:
        pass
