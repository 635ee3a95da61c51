"""Export a model as a standalone mlx-lm model folder, optionally quantized.

    mlxspec export runs/python-docs-finetune out/python-docs-4bit --quantize 4

The folder holds `config.json`, `model.safetensors` and the tokenizer files, so
`mlx_lm.load`, `mlx_lm.generate`, `mlx_lm.server` and `mlx_lm.lora` take it as they
take any llama model. Quantization is MLX's affine quantization with mlx-lm's
`convert` rule: every Linear and Embedding whose input width is a multiple of the group
size gets `bits`-bit codes with a float scale and bias per group of `group_size`
weights; the config records `{"group_size", "bits", "mode"}` as mlx-lm expects.

The output is written to a temporary folder beside OUT and renamed into place, so an
interrupted export never leaves a half-written model, and an existing OUT is kept
unless `overwrite` is given.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .. import ui
from ..errors import SpecializeError
from .dense import Model, count_params
from .io import load_model, quantize_layers, save_model

QUANT_BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 64


def quantize(model: Model, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> dict:
    """Quantize `model` in place; returns the config entry mlx-lm reads back."""
    if bits not in QUANT_BITS:
        raise SpecializeError(f"cannot quantize to {bits} bits (choose from {', '.join(map(str, QUANT_BITS))})")
    if group_size not in GROUP_SIZES:
        raise SpecializeError(f"group size {group_size} is not one of {', '.join(map(str, GROUP_SIZES))}")
    # layers whose input width does not split into groups stay in float (mlx-lm's rule):
    # said, with the group sizes that would quantize them, rather than found in the size
    left = {}
    for path, width in quantize_layers(model, group_size, bits).items():
        left.setdefault(path.split(".")[-1], width)
    mx.eval(model.parameters())
    if left:
        widths = set(left.values())
        fits = [g for g in GROUP_SIZES if all(w % g == 0 for w in widths)]
        ui.warn(f"--group-size {group_size}: {', '.join(f'{name} (input width {w})' for name, w in left.items())} "
                f"kept in float, not a multiple of {group_size}"
                + (f"; --group-size {fits[0]} quantizes every layer" if fits else ""))
    return {"group_size": group_size, "bits": bits, "mode": "affine"}


def weight_bytes(model: Model) -> int:
    """Bytes of all stored parameters (quantized codes, scales and biases included)."""
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def bits_per_weight(model: Model) -> float:
    """Stored bits per parameter of the unquantized model (32 for float32, ~4.5 for
    4-bit with group size 64)."""
    return 8 * weight_bytes(model) / count_params(model.args)["total"]


def export_model(
    src: str | os.PathLike,
    out: str | os.PathLike,
    bits: int | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
    dtype: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Write `src` (a model folder or hub name) to `out` as an mlx-lm model folder.

    `dtype` casts the float weights first (e.g. "float16", "bfloat16"); `bits` then
    quantizes. Returns a summary: params, bytes, bits per weight, quantization."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SpecializeError(f"{out} already exists and is not empty (pass --overwrite to replace it)")
    model, tokenizer, config = load_model(src, dtype=dtype)
    if config.get("quantization") and bits:
        raise SpecializeError(f"{src} is already quantized ({config['quantization']['bits']} bits)")
    quantization = quantize(model, bits, group_size) if bits else config.get("quantization")
    meta = {**config.get("mlxspec", {}), "exported_from": str(src)}
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model(model, tmp, tokenizer, meta, quantization=quantization)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "model": str(out),
        "source": str(src),
        "params": count_params(model.args)["total"],
        "bytes": weight_bytes(model),
        "bits_per_weight": bits_per_weight(model),
        "quantization": quantization,
        "dtype": dtype or _float_dtype(model),  # what was written: the source's where not cast
    }


def _float_dtype(model) -> str:
    """The float type(s) of the model's parameters, e.g. "float32" (a quantized model's
    scales and norms, "float16")."""
    found = {str(v.dtype).removeprefix("mlx.core.") for _, v in tree_flatten(model.parameters())
             if mx.issubdtype(v.dtype, mx.floating)}
    return ", ".join(sorted(found))
