"""Model folders: `config.json` + `model.safetensors` + tokenizer files.

The layout is the one `mlx_lm.load` reads. Our own facts about a model (tokenizer hash,
context length, preset) live under the `mlxspec` key of `config.json`, which mlx-lm
ignores. Files are written to a temporary name and renamed into place, so a crash never
leaves a half-written file under the real name; `save_model` writes all of a folder's
files before it renames any, so a full disk never leaves a mix of two saves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from ..errors import SpecializeError
from ..runtime.files import named
from .dense import Model, ModelArgs

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STAGING_PREFIX = ".tmp_model_"  # + pid: where save_model writes a folder's files before renaming them


def write_safetensors(path: Path, arrays: dict[str, mx.array], metadata: dict | None = None) -> None:
    """Write a safetensors file (in place: callers write it under a temporary name).

    Through a Python file object, not MLX's own writer: that one reports a full disk or a
    file-size limit as a RuntimeError ("Unable to write N bytes") without the system's
    reason or the file, which the command line could only call an internal error; this way
    it is the OSError (ENOSPC, EFBIG) naming the file. Same bytes, same speed."""
    try:
        with open(path, "wb") as f:
            mx.save_safetensors(f, arrays, metadata=metadata or {})
    except OSError as err:
        raise named(err, path) from None


def save_arrays(path: Path, arrays: dict[str, mx.array], metadata: dict | None = None) -> None:
    """Write a safetensors file atomically; a failed write removes its temporary (on a
    full disk it would hold the space, under a name no later write reuses)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.safetensors")
    try:
        write_safetensors(tmp, arrays, metadata)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def load_arrays(path: Path) -> dict[str, mx.array]:
    """Read a safetensors file, turning any read error into one clear message."""
    if not path.is_file():
        raise SpecializeError(f"missing {path}")
    try:
        return mx.load(str(path))
    except (RuntimeError, ValueError, OSError) as err:
        raise SpecializeError(f"{path} is corrupt or truncated ({str(err).splitlines()[0]})") from None


SUPPORTED_TYPES = ("llama", "mistral")  # mlx-lm runs mistral checkpoints as llama
FOREIGN_CONTEXT = 512  # training / evaluation window for models we did not train


def model_context(config: dict) -> int:
    """Tokens per training or evaluation window for a model: the context it was trained
    with (ours), else min(its max_position_embeddings, FOREIGN_CONTEXT)."""
    ours = config.get("mlxspec", {}).get("context")
    return int(ours or min(config.get("max_position_embeddings") or FOREIGN_CONTEXT, FOREIGN_CONTEXT))


def save_model(model: Model, folder: str | os.PathLike, tokenizer=None, meta: dict | None = None,
               quantization: dict | None = None) -> None:
    """Write `model` (and its tokenizer) as an mlx-lm model folder. `quantization`
    ({group_size, bits, mode}) is recorded when the model's layers are quantized."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config_dict() if hasattr(model, "config_dict") else model.args.to_dict()
    if quantization:
        config["quantization"] = config["quantization_config"] = quantization
    ours = {**(meta or {})}
    if tokenizer is not None:
        ours.update(tokenizer=tokenizer.fingerprint, tokenizer_kind=tokenizer.kind)
    config["mlxspec"] = ours
    # The trainer saves its best model over the previous one in the run folder. Writing
    # each file to its own temporary was not enough: a full disk after the weights were
    # renamed left them beside the previous save's config.json (its step, its meta), and
    # the tokenizer, written in place, was cut to a stub. So every file is written into a
    # staging folder first (all the space the save needs is taken there), then renamed
    # into place, config.json last; a failed write removes the staging folder and leaves
    # the previous model whole. Leftovers of a killed save go at the next save.
    for stale in folder.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    stage = folder / f"{STAGING_PREFIX}{os.getpid()}"
    stage.mkdir()
    try:
        if tokenizer is not None:
            try:
                tokenizer.save(stage)
            except OSError as err:  # a write() error names no file: name the folder
                raise named(err, stage) from None
        write_safetensors(stage / WEIGHTS_FILE, dict(tree_flatten(model.parameters())), {"format": "mlx"})
        try:
            (stage / CONFIG_FILE).write_bytes(json.dumps(config, indent=2).encode())
        except OSError as err:
            raise named(err, stage / CONFIG_FILE) from None
        for name in sorted(os.listdir(stage), key=lambda name: name == CONFIG_FILE):
            os.replace(stage / name, folder / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def resolve_model_path(name: str | os.PathLike) -> Path:
    """A local model folder, or a Hugging Face hub name (`org/model`) fetched into the
    hub cache (config, weights and tokenizer files only)."""
    path = Path(name)
    if path.exists():
        return path
    text = str(name)
    if text.count("/") != 1 or text.startswith((".", "/")) or os.sep != "/" and os.sep in text:
        raise SpecializeError(f"no model at {name}")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "model*.safetensors", "*.model", "*.txt", "*.jinja"]
    if path.parent.is_dir():  # `runs/typo`: a folder here holds it, so it names a local model, not a hub one...
        try:  # ... unless the hub cache has it already (an `org/` folder here by chance)
            return Path(snapshot_download(text, allow_patterns=patterns, local_files_only=True))
        except Exception:
            raise SpecializeError(f"no model folder at {name} ({path.parent}/ has no {path.name}; a hub name is "
                                  f"fetched from a folder without a {path.parent}/ in it)") from None
    try:
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, gated: all one message
        raise SpecializeError(f"no model folder at {name}, and the hub download failed: {str(err).splitlines()[0]}") from None


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not Path(folder).exists():
        raise SpecializeError(f"no model at {folder}")
    if not path.is_file():
        if (Path(folder) / "mixture.json").is_file():
            raise SpecializeError(f"{folder} is a mixture of experts, not a dense model: give one of its experts "
                                  f"({Path(folder) / 'expert-000'}, ...) or use `specialize --method mix`")
        raise SpecializeError(f"{folder} is not a model folder (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SpecializeError(f"{path} is not valid JSON") from None
    if isinstance(config, dict) and config.get("model_type") == "mlxspec-projected":
        arch = config.get("projection", {}).get("arch", "pn")
        raise SpecializeError(f"{folder} is a projected network ('{arch}'), not a dense model: make one with "
                              f"`mlxspec instantiate {folder} OUT --domain D` or use `specialize --method {arch}`")
    if not isinstance(config, dict) or config.get("model_type") not in SUPPORTED_TYPES:
        model_type = config.get("model_type") if isinstance(config, dict) else None
        raise SpecializeError(
            f"{folder}: model_type '{model_type}' is not supported (llama-style only: {', '.join(SUPPORTED_TYPES)})"
        )
    return config


def _read_weights(folder: Path) -> dict[str, mx.array]:
    """All `model*.safetensors` of a folder (one file, or mlx-lm / HF shards)."""
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise SpecializeError(f"missing {folder / WEIGHTS_FILE}")
    weights: dict[str, mx.array] = {}
    for file in files:
        weights.update(load_arrays(file))
    return weights


def quantize_layers(model: Model, group_size: int, bits: int, mode: str = "affine", predicate=None) -> dict:
    """Quantize in place every Linear / Embedding whose input width splits into groups
    (mlx-lm's `convert` rule); `predicate(path, module)` narrows the choice further.
    Returns the layers left in float for their width: {path: input width}."""
    left = {}

    def wanted(path, module):
        if not hasattr(module, "to_quantized"):
            return False
        if module.weight.shape[-1] % group_size:
            left[path] = module.weight.shape[-1]
            return False
        return predicate is None or predicate(path, module)

    nn.quantize(model, group_size=group_size, bits=bits, mode=mode, class_predicate=wanted)
    return left


def load_model(folder: str | os.PathLike, tokenizer=None, dtype: str | None = None,
               dequantize: bool = False) -> tuple[Model, object, dict]:
    """Load a model folder, ours or any mlx-lm llama-style one: (model, tokenizer, config).

    `folder` may also be a Hugging Face hub name. With `tokenizer` given, checks that the
    checkpoint was trained with it; otherwise loads the folder's own tokenizer. `dtype`
    ("float32", "bfloat16", ...) casts the floating-point weights; `dequantize` turns a
    quantized checkpoint back into a plain one (to train it)."""
    from ..data.hf_tokenizer import load_tokenizer

    folder = resolve_model_path(folder)
    config = read_config(folder)
    saved = config.get("mlxspec", {}).get("tokenizer")
    if tokenizer is None:
        tokenizer = load_tokenizer(folder, config)
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
    weights = model.sanitize(_read_weights(folder))
    quantization = config.get("quantization")
    if quantization:
        quantize_layers(model, quantization["group_size"], quantization["bits"], quantization.get("mode", "affine"),
                        lambda path, _: f"{path}.scales" in weights)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as err:
        raise SpecializeError(f"{folder}: weights do not match its config: {str(err).splitlines()[0]}") from None
    if quantization and dequantize:  # plain layers holding the dequantized weights
        from mlx_lm.utils import dequantize_model

        dequantize_model(model)
        config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    if dtype is not None:
        cast_floats(model, dtype)
    mx.eval(model.parameters())
    return model, tokenizer, config


def cast_floats(model: Model, dtype: str) -> None:
    """Cast the model's floating-point parameters (not quantized codes) to `dtype`."""
    target = getattr(mx, dtype)
    model.update(tree_map(lambda p: p.astype(target) if mx.issubdtype(p.dtype, mx.floating) else p,
                          model.parameters()))
