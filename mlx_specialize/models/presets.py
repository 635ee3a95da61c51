"""Named model sizes: the paper's SLM/LLM pair and laptop pairs with the same ratio.

The paper's LLM has about 6x the parameters of its SLM (771M vs 126M, both 7 layers).
Each laptop SLM preset (`tiny`, `small`, `medium`) has an `-llm` twin of the same depth
and about 6x its parameters (at the laptop default 8k vocabulary), so the LLM baseline
keeps its relative cost at sizes that train in minutes on two CPU cores.

MLP widths are SwiGLU widths, 8/3 of d_model (see `dense.py`): the paper's 4096-wide
two-matrix MLP at d 1024 becomes 2752 here, the same parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import SpecializeError
from .dense import ModelArgs, count_params, flops_per_token


@dataclass(frozen=True)
class Preset:
    """A model size with the training defaults that suit it.

    context:    tokens per training window
    batch_size: windows per optimizer step
    warmup:     linear warm-up steps (the paper: 1000 at full scale)
    """

    name: str
    role: str  # "slm" or "llm"
    layers: int
    hidden: int
    mlp: int
    heads: int
    vocab: int
    context: int
    batch_size: int
    warmup: int
    lr: float = 1e-3
    note: str = ""
    # Laptop learning rates: `small` was tuned on the bundled demo (400k tokens: batch 8
    # at lr 6e-3 reached valid loss 5.91, 3e-3 5.96, batch 16 at 1e-3 6.78); the others
    # follow the usual rule that wider models want smaller rates. The paper presets keep
    # the paper's Adam lr 1e-4.

    def model_args(self, vocab_size: int | None = None) -> ModelArgs:
        return ModelArgs(
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            intermediate_size=self.mlp,
            num_attention_heads=self.heads,
            vocab_size=vocab_size or self.vocab,
            max_position_embeddings=self.context,
            tie_word_embeddings=True,
        )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("tiny", "slm", 2, 64, 160, 2, 8192, 128, 8, 20, lr=5e-3, note="tests and smoke runs"),
        Preset("tiny-llm", "llm", 2, 256, 672, 4, 8192, 128, 8, 20, lr=3e-3),
        Preset("small", "slm", 4, 128, 352, 4, 8192, 256, 8, 20, lr=5e-3, note="default: minutes on a laptop CPU"),
        Preset("small-llm", "llm", 4, 408, 1088, 6, 8192, 256, 8, 20, lr=2e-3),
        Preset("medium", "slm", 6, 256, 672, 4, 8192, 256, 16, 50, lr=3e-3),
        Preset("medium-llm", "llm", 6, 704, 1888, 11, 8192, 256, 16, 50, lr=1e-3),
        Preset("paper-slm", "slm", 7, 1024, 2752, 8, 32000, 1024, 128, 1000, lr=1e-4,
               note="the paper's SLM (126M with its 32k vocab and 2-matrix MLP)"),
        Preset("paper-llm", "llm", 7, 2816, 7488, 22, 32000, 1024, 128, 1000, lr=1e-4,
               note="the paper's LLM (771M)"),
    ]
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SpecializeError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    return PRESETS[name]


def with_overrides(preset: Preset, **changes) -> Preset:
    """A copy of `preset` with the non-None `changes` applied."""
    return replace(preset, **{k: v for k, v in changes.items() if v is not None})


def describe(preset: Preset) -> dict:
    """Row for `mlxspec presets`: sizes, parameter counts and training FLOPs/token."""
    args = preset.model_args()
    counts = count_params(args)
    return {
        "name": preset.name,
        "role": preset.role,
        "layers": preset.layers,
        "d_model": preset.hidden,
        "mlp": preset.mlp,
        "heads": preset.heads,
        "vocab": preset.vocab,
        "context": preset.context,
        "params": counts["total"],
        "non_embedding_params": counts["non_embedding"],
        "train_flops_per_token": flops_per_token(args, preset.context),
        "note": preset.note,
    }
