"""A training run's folder: what is written there, and how a run continues from it.

    RUN/run.json                                     the configuration, written at start
    RUN/config.json, model.safetensors, tokenizer.*  the best model so far (mlx-lm loadable)
    RUN/metrics.jsonl                                one JSON object per log / evaluation
    RUN/summary.json                                 written when the run ends
    RUN/checkpoints/step_*/                          full state, the newest K kept

With several processes only rank 0 (`world.is_main`) writes; the others call the same
methods, which then do nothing. Every file but metrics.jsonl (appended a line at a time,
a line cut by a kill dropped on resume) is written whole or not at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import ui
from ..models.io import save_model
from ..runtime.files import atomic_write_bytes
from .checkpoint import checkpoint_dirs, load_checkpoint, refuse_existing_run, save_checkpoint


class RunFolder:
    def __init__(self, path, world):
        self.path = Path(path)
        self.world = world

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl."""
        if self.world.is_main:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")

    def valid_curve(self, points: int = 64) -> list[list[float]]:
        """[step, valid loss] of the run's validations (metrics.jsonl, every session of a
        resumed run), at most `points` of them evenly spread, the last always among them:
        enough to read whether the loss was still falling where training stopped."""
        if not self.metrics.is_file():
            return []
        curve = []
        for line in self.metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a crash
                continue
            if record.get("event") == "valid":
                curve.append([record["step"], round(record["valid_loss"], 4)])
        if len(curve) > points:
            curve = [curve[round(i * (len(curve) - 1) / (points - 1))] for i in range(points)]
        return curve

    def write_json(self, name: str, record: dict) -> None:
        """RUN/name, written whole (run.json, summary.json)."""
        if self.world.is_main:
            atomic_write_bytes(self.path / name, json.dumps(record, indent=2).encode())

    def save_best(self, model, tokenizer, meta: dict) -> None:
        """The model, as the run's best so far: weights, config.json, tokenizer."""
        if self.world.is_main:
            save_model(model, self.path, tokenizer, meta)

    def checkpoint(self, step: int, model, optimizer, state: dict, keep: int) -> Path | None:
        if not self.world.is_main:
            return None
        return save_checkpoint(self.path, step, model, optimizer, state, keep)

    def last_checkpoint(self) -> Path | None:
        found = checkpoint_dirs(self.path)
        return found[-1] if found else None

    def start(self, resume: bool, overwrite: bool, model, optimizer, tokenizer_fingerprint: str) -> dict | None:
        """Make the folder ready for this process to train in, and return the checkpoint
        state to continue from (weights and optimizer state restored in place), or None
        for a new run. A new run first clears every trace of an old one it replaces, so
        that nothing of it is resumed from or reported later; a folder holding a run is
        refused unless the caller continues (`resume`) or replaces (`overwrite`) it."""
        self.path.mkdir(parents=True, exist_ok=True)
        last = self.last_checkpoint()
        if resume and last is not None:
            state = load_checkpoint(last, model, optimizer, tokenizer_fingerprint)
            if self.metrics.exists():  # drop what was logged after the checkpoint (and a line cut by a kill)
                kept = [line for line in self.metrics.read_text().splitlines() if _logged_at_most(line, state["step"])]
                atomic_write_bytes(self.metrics, "".join(line + "\n" for line in kept).encode())
            ui.info(f"resuming {self.path} from step {state['step']}")
            return state
        refuse_existing_run(self.path, overwrite, resume)
        for old in (self.metrics, self.summary_file):
            if old.exists():
                old.unlink()
        shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
        return None

    def finished(self, config: dict, tokenizer_fingerprint: str) -> dict | None:
        """The summary of the same run (configuration and tokenizer) already ended in
        this folder, its last checkpoint at the summary's step: a resume returns it
        instead of training on. (A resume with more steps continues the run.)"""
        try:
            summary = json.loads(self.summary_file.read_text())
            last = self.last_checkpoint()
            state = json.loads((last / "state.json").read_text()) if last else {}
        except (OSError, ValueError):
            return None
        # through JSON, as the checkpoint stored it (tuples become lists)
        same = (state.get("config") == json.loads(json.dumps(config)) and state.get("tokenizer") == tokenizer_fingerprint
                and isinstance(summary, dict) and summary.get("steps") == state.get("step"))
        return summary if same else None


def _logged_at_most(line: str, step: int) -> bool:
    """Whether a metrics.jsonl line is whole and logged at or before `step`."""
    try:
        return json.loads(line)["step"] <= step
    except (ValueError, KeyError, TypeError):
        return False
