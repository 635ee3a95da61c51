"""Model folders: `config.json` + `model.safetensors` + tokenizer files.

The layout is the one `mlx_lm.load` reads. Our own facts about a model (tokenizer hash,
context length, preset) live under the `mlxspec` key of `config.json`, which mlx-lm
ignores. Files are written to a temporary name and renamed into place, so a crash never
leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from ..data.tokenizer import Tokenizer
from ..errors import SpecializeError
from .dense import Model, ModelArgs

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_arrays(path: Path, arrays: dict[str, mx.array], metadata: dict | None = None) -> None:
    """Write a safetensors file atomically."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.safetensors")
    mx.save_safetensors(str(tmp), arrays, metadata=metadata or {})
    os.replace(tmp, path)


def load_arrays(path: Path) -> dict[str, mx.array]:
    """Read a safetensors file, turning any read error into one clear message."""
    if not path.is_file():
        raise SpecializeError(f"missing {path}")
    try:
        return mx.load(str(path))
    except (RuntimeError, ValueError, OSError) as err:
        raise SpecializeError(f"{path} is corrupt or truncated ({str(err).splitlines()[0]})") from None


def save_model(model: Model, folder: str | os.PathLike, tokenizer: Tokenizer | None = None, meta: dict | None = None) -> None:
    """Write `model` (and its tokenizer) as an mlx-lm model folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save(folder)
    save_arrays(folder / WEIGHTS_FILE, dict(tree_flatten(model.parameters())), {"format": "mlx"})
    config = model.args.to_dict()
    config["mlxspec"] = {**(meta or {}), **({"tokenizer": tokenizer.fingerprint} if tokenizer else {})}
    atomic_write_bytes(folder / CONFIG_FILE, json.dumps(config, indent=2).encode())


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not Path(folder).exists():
        raise SpecializeError(f"no model at {folder}")
    if not path.is_file():
        raise SpecializeError(f"{folder} is not a model folder (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SpecializeError(f"{path} is not valid JSON") from None
    if config.get("model_type") != "llama":
        raise SpecializeError(f"{folder}: model_type '{config.get('model_type')}' is not supported (llama only)")
    return config


def load_model(folder: str | os.PathLike, tokenizer: Tokenizer | None = None) -> tuple[Model, Tokenizer, dict]:
    """Load a model folder: (model, tokenizer, config).

    With `tokenizer` given, checks that the checkpoint was trained with it; otherwise
    loads the tokenizer saved in the folder."""
    folder = Path(folder)
    config = read_config(folder)
    saved = config.get("mlxspec", {}).get("tokenizer")
    if tokenizer is None:
        tokenizer = Tokenizer.load(folder)
    if saved is not None and saved != tokenizer.fingerprint:
        raise SpecializeError(
            f"{folder} was trained with another tokenizer ({saved}, not {tokenizer.fingerprint}); "
            "use that model's own tokenizer"
        )
    try:
        args = ModelArgs.from_dict(config)
    except (TypeError, ValueError) as err:
        raise SpecializeError(f"{folder}/{CONFIG_FILE} is not a valid model config: {err}") from None
    if args.vocab_size < tokenizer.vocab_size:
        raise SpecializeError(
            f"{folder} has {args.vocab_size} embeddings but its tokenizer has {tokenizer.vocab_size} tokens"
        )
    model = Model(args)
    weights = load_arrays(folder / WEIGHTS_FILE)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as err:
        raise SpecializeError(f"{folder}/{WEIGHTS_FILE} does not match its config: {str(err).splitlines()[0]}") from None
    mx.eval(model.parameters())
    return model, tokenizer, config
