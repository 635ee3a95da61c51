"""Training checkpoints: the full state needed to continue a run exactly.

    RUN/checkpoints/step_00000120/
        model.safetensors      weights
        optimizer.safetensors  AdamW moments, step counter, learning rate
        state.json             step, data position, RNG key, early-stopping state,
                               budget counters (tokens, FLOPs, seconds)

A checkpoint is written into a temporary folder (`.tmp_step_...`) and renamed into place,
so it is either complete or absent; the newest `keep` are kept. A failed write (a full
disk) removes its temporary folder and leaves the previous checkpoints as they were.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import SpecializeError
from ..runtime.files import named
from ..models.io import load_arrays, write_safetensors

PREFIX = "step_"
TMP_PREFIX = f".tmp_{PREFIX}"  # + step + pid: a checkpoint being written; never listed by checkpoint_dirs


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").exists())


def refuse_existing_run(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Raise unless `run_dir` holds no run (no checkpoint, no summary), or the caller
    continues it (`resume`) or replaces it (`overwrite`)."""
    if (checkpoint_dirs(run_dir) or (run_dir / "summary.json").exists()) and not overwrite and not resume:
        raise SpecializeError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")


def save_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict, keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{step:08d}_{os.getpid()}"
    # Leftovers of a write that was killed (any process id: the one that resumes is
    # another): never listed as checkpoints, but on a full disk they hold the space this
    # write needs.
    for stale in root.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        write_safetensors(tmp / "model.safetensors", dict(tree_flatten(model.parameters())))
        write_safetensors(tmp / "optimizer.safetensors", dict(tree_flatten(optimizer.state)))
        try:
            (tmp / "state.json").write_text(json.dumps(state, indent=2))
        except OSError as err:  # a failed write() names no file
            raise named(err, tmp / "state.json") from None
    except BaseException:
        # A full disk (or Ctrl-C) mid-write: drop the partial folder now, so that the
        # space is free again and the previous checkpoint is all that is left.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, tokenizer_fingerprint: str) -> dict:
    """Restore weights and optimizer state in place; return the saved trainer state.

    Refuses a checkpoint written with another tokenizer before touching the model."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise SpecializeError(f"checkpoint {path} is corrupt (state.json unreadable)") from None
    if state.get("tokenizer") != tokenizer_fingerprint:
        raise SpecializeError(
            f"checkpoint {path} was written with another tokenizer ({state.get('tokenizer')}, "
            f"not {tokenizer_fingerprint}); resume with the run's own tokenizer"
        )
    weights = load_arrays(path / "model.safetensors")
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as err:
        raise SpecializeError(f"checkpoint {path} does not fit this model: {str(err).splitlines()[0]}") from None
    opt = load_arrays(path / "optimizer.safetensors")
    optimizer.state = tree_unflatten(list(opt.items()))
    mx.eval(model.parameters(), optimizer.state)
    return state
