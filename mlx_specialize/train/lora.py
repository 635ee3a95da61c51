"""LoRA fine-tuning (the paper's appendix "LLM + LoRA"), with mlx-lm's own LoRA layers.

The base is frozen and every linear layer of every block gets mlx-lm's `LoRALinear`
(`mlx_lm.tuner.utils.linear_to_lora_layers`): y = W x + scale B A x, A [in, r], B [r, out],
B starting at 0, so training starts from the base exactly. The paper gives its 771M LLM
(d = 2816) rank 64; `lora_rank` keeps that rank / width ratio for other widths.

The trainer's run goes in RUN/adapters (its checkpoints, and the adapter model it keeps at
the best validation); `fuse_adapters` then folds B A into each W and saves a plain dense
model in RUN, which serves at the base's own cost, plus the adapters alone in mlx-lm's
format (RUN/adapters/adapters.safetensors, adapter_config.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..models.dense import Model, ModelArgs, flops_per_token

PAPER_RANK, PAPER_WIDTH = 64, 2816  # the paper's LoRA rank for its LLM's hidden size
LORA_SCALE = 20.0  # mlx-lm's default scale of the low-rank update
ADAPTERS = "adapters"  # the trainer's run folder inside the fine-tuning's


def lora_rank(args: ModelArgs) -> int:
    """The paper's rank scaled to this width (at least 1)."""
    return max(1, round(args.hidden_size * PAPER_RANK / PAPER_WIDTH))


def lora_config(rank: int) -> dict:
    return {"rank": rank, "scale": LORA_SCALE, "dropout": 0.0}


def add_adapters(model: Model, rank: int) -> Model:
    """Freeze `model` and give every linear layer of its blocks a LoRA adapter (in place)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    linear_to_lora_layers(model, len(model.layers), lora_config(rank))
    return model


def adapter_params(args: ModelArgs, rank: int) -> int:
    """Trainable parameters: r (in + out) for each of a block's 7 linear layers."""
    D, F = args.hidden_size, args.intermediate_size
    q, kv = args.num_attention_heads * args.head_dim, args.num_key_value_heads * args.head_dim
    shapes = [(D, q), (D, kv), (D, kv), (q, D), (D, F), (D, F), (F, D)]
    return args.num_hidden_layers * sum(rank * (i + o) for i, o in shapes)


def lora_flops_per_token(args: ModelArgs, context: int, rank: int) -> float:
    """Training FLOPs per token with a frozen base: its forward pass and the backward
    pass through its activations (2 x forward: no gradient of a frozen weight), and the
    adapters' own forward and backward (3 x 2 per parameter)."""
    return 2 * flops_per_token(args, context, training=False) + 6 * adapter_params(args, rank)


def fuse_adapters(model: Model, run_dir: Path) -> Model:
    """Load the adapter model the trainer kept in `run_dir` (its best), write its adapters
    alone in mlx-lm's format beside it, and return the model with every adapter folded
    into its linear layer (plain `nn.Linear`s: a dense model of the base's shape)."""
    from mlx_lm.tuner.lora import LoRALinear

    weights = mx.load(str(run_dir / "model.safetensors"))
    model.load_weights(list(weights.items()))
    adapters = {name: value for name, value in tree_flatten(model.trainable_parameters())}
    mx.save_safetensors(str(run_dir / "adapters.safetensors"), adapters)
    rank = next(iter(adapters.values())).shape[-1] if adapters else 0
    (run_dir / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "num_layers": len(model.layers), "lora_parameters": lora_config(rank)}, indent=2))
    fused = [(name, module.fuse()) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    model.update_modules(tree_unflatten(fused))
    model.unfreeze()
    return model
