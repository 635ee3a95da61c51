"""The training loop: one compiled step over explicit state, budget accounting,
validation with early stopping, exact resume.

The loop takes its parts, as mlx-lm's `tuner/trainer.py` does: the model (which reports
its own FLOPs per token), the `loss` (default `parallel.training_loss`), the `batches`
(default: shuffled packed windows of the train split) and `callbacks` told of every
training and validation report. The run folder (files, checkpoints, what a resume
finds) is `run_folder.RunFolder`'s.

State = model weights + optimizer state (AdamW moments, step counter) + an explicit
PRNG key. `step(batch)` is compiled once with `mx.compile(inputs=state, outputs=state)`;
batches always have the shape [grad_accum, batch_size, context + 1], so it never
recompiles. Batch i of the run is `PackedWindows.batch(i)`, a pure function of i, so a
run resumed from a checkpoint sees exactly the batches it would have seen.

"""

from __future__ import annotations

import math
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import asdict, fields
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from .. import accel, ui
from ..data.tokenizer import Tokenizer
from ..data.tokens import PackedWindows, TokenizedSplit, target_mask
from ..accel import auto_streams, blas_per_stream, make_streams
from ..errors import Interrupted, SpecializeError
from ..models.dense import Model
from ..runtime import distributed as dist
from .config import Budget, TrainConfig, lr_schedule
from .evaluate import evaluate, make_eval_fn
from .parallel import clip_and_update, training_loss
from .run_folder import RunFolder


def peak_memory_bytes() -> int:
    """Peak memory of this process: MLX's allocator peak, or the RSS peak, the larger."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return max(int(mx.get_peak_memory()), int(rss))


class TrainingCallback:
    """What the loop tells its callbacks (mlx-lm's `TrainingCallback`): each record it
    logs, a dict with "step", "tokens" and the figures ("loss", "grad_norm", "lr",
    "tok_s", ... for training; "valid_loss", "valid_ppl", "valid_bpb" for validation)."""

    def on_train_loss_report(self, info: dict) -> None:
        pass

    def on_val_loss_report(self, info: dict) -> None:
        pass


class Trainer:
    """Trains `model` on `train` windows, validating on `valid` (optional)."""

    def __init__(
        self,
        model: Model,
        tokenizer: Tokenizer,
        train: TokenizedSplit,
        valid: TokenizedSplit | None,
        config: TrainConfig,
        run_dir: str | os.PathLike,
        meta: dict | None = None,
        batches=None,
        evaluator=None,
        loss=None,
        callbacks: tuple[TrainingCallback, ...] = (),
        flops_per_token: float | None = None,
    ):
        """`batches` replaces the shuffled windows of `train`: any object whose
        `batch(i)` gives batch i's rows, int32 [batch_size, context + 1], a pure
        function of i; if it also has `condition(i)` (float32 [n]), the model runs as
        `model.conditioned(condition(i))(x)` (the projected network's expert, or a soup's
        domain weights; its MLP weights made once per batch). `evaluator(model) -> EvalResult` replaces the plain
        validation on `valid`. `loss(model, x, y, streams, bos_id, count)` is the
        training loss of one micro-batch (default `parallel.training_loss`).
        `flops_per_token` replaces the model's own count of a training token's FLOPs
        (LoRA: a frozen base has no weight gradients)."""
        accel.check_precision(config.precision)  # bf16: builds its C++ matmul on first use
        # the platform's accelerated layers, used inside the step's accel.scope; builds the
        # C++ kernels here (once per machine), not inside the first timed step
        accel.prepare(model, config.precision)
        self.model, self.tokenizer, self.cfg = model, tokenizer, config
        self.train, self.valid = train, valid
        self.run_dir = Path(run_dir)
        self.meta = meta or {}
        self.windows = batches or PackedWindows(train.tokens, config.context, config.batch_size, config.seed)
        self.conditioned = hasattr(self.windows, "condition")
        self.evaluator = evaluator
        self.loss, self.callbacks = loss or training_loss, tuple(callbacks)
        self.optimizer = optim.AdamW(
            learning_rate=lr_schedule(config),
            betas=list(config.betas),
            eps=config.eps,
            weight_decay=config.weight_decay,
            bias_correction=True,
        )
        self.optimizer.init(model.trainable_parameters())
        self.rng = [mx.random.key(config.seed)]
        # Data parallel (see distributed.py): this process trains rows `self.rows` of
        # every global batch; alone, all of them.
        self.world = dist.world()
        self.rows = self.world.rows(config.batch_size)
        self.folder = RunFolder(run_dir, self.world)
        local_rows = self.rows.stop - self.rows.start
        # the model's own count: a projected network adds making its MLP weights, once per
        # micro-batch on every process (each makes them for its own rows); a loss that runs
        # another model (distillation's teacher) declares what it adds
        own = (flops_per_token if flops_per_token is not None else
               model.flops_per_token(config.context, batch_tokens=local_rows * config.context))
        self.flops_per_token = own + getattr(self.loss, "extra_flops_per_token", 0.0)
        # validation: the model's forward pass alone (a distillation's teacher is not run there)
        self.valid_flops_per_token = model.flops_per_token(config.context, training=False,
                                                           batch_tokens=config.eval_batch_size * config.context)
        self.streams = make_streams(config.streams or auto_streams(local_rows, self.world.local))
        accel.keep_freed_buffers()  # CPU: reuse the step's large buffers
        self.step = 0
        self.budget = Budget()
        self.best_valid = math.inf
        self.bad_evals = 0
        self.history: list[dict] = []

    # ---- the compiled step -------------------------------------------------------
    def _build_step(self):
        model, optimizer, cfg = self.model, self.optimizer, self.cfg
        state = [model.state, optimizer.state, self.rng]

        streams, bos_id, world, training_loss = self.streams, self.tokenizer.bos_id, self.world, self.loss

        def loss_fn(model, x, y, cond, count):
            # Summed NLL of this rank's rows / the global batch's target count, x world
            # size: average_gradients' mean over ranks is then the global batch's gradient.
            # traced once, inside mx.compile: the prepared layers' fast paths (accel/)
            with accel.scope(cfg.precision):
                forward = model if cond is None else model.conditioned(cond)
                loss = training_loss(forward, x, y, streams, bos_id, count)
            return loss * world.size if world.size > 1 else loss

        loss_and_grad = nn.value_and_grad(model, loss_fn)

        @partial(mx.compile, inputs=state, outputs=state)
        def step(batch, counts, cond=None):
            # batch: [grad_accum, rows, context + 1] int32 (this rank's rows); counts:
            # [grad_accum] float32 targets in each whole global micro-batch; cond: [grad_accum, n] or None
            self.rng[0], _ = mx.random.split(self.rng[0])
            # each micro-batch's summed NLL over the whole step's target count: their sum is
            # the mean over all the step's targets, as one big batch (a mean of the
            # micro-batches' means would weigh each target by its own micro-batch's count)
            count = counts.sum()
            conds = [None if cond is None else cond[a] for a in range(cfg.grad_accum)]
            loss, grads = loss_and_grad(model, batch[0, :, :-1], batch[0, :, 1:], conds[0], count)
            for a in range(1, cfg.grad_accum):
                loss_a, grads_a = loss_and_grad(model, batch[a, :, :-1], batch[a, :, 1:], conds[a], count)
                loss = loss + loss_a
                grads = tree_map(mx.add, grads, grads_a)
            if world.size > 1:
                grads = nn.average_gradients(grads, world.group)  # batched all-reduce
                loss = dist.all_sum(loss, world) / world.size  # for reporting
            grad_norm = clip_and_update(optimizer, model, grads, cfg.clip, streams)
            return loss, grad_norm

        return step

    def _batch(self, step: int) -> tuple[mx.array, ...]:
        """(tokens [grad_accum, rows, context + 1] of this rank's rows, target counts
        [grad_accum] of the whole global micro-batches) and, for a conditioned model, its
        conditions [grad_accum, n]."""
        indices = range(step * self.cfg.grad_accum, (step + 1) * self.cfg.grad_accum)
        full = [np.asarray(self.windows.batch(i)) for i in indices]
        counts = mx.array([float(np.count_nonzero(target_mask(b[:, 1:], self.tokenizer.bos_id))) for b in full])
        tokens = mx.array(np.stack([b[self.rows] for b in full]))
        if not self.conditioned:
            return tokens, counts
        return tokens, counts, mx.array(np.stack([self.windows.condition(i) for i in indices]).astype(np.float32))

    # ---- state -------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "step": self.step,
            "data_position": self.step * self.cfg.grad_accum,
            "rng_key": np.asarray(self.rng[0]).tolist(),
            "best_valid": None if math.isinf(self.best_valid) else self.best_valid,
            "bad_evals": self.bad_evals,
            **asdict(self.budget),  # tokens, flops, seconds and their validation counterparts
            "tokenizer": self.tokenizer.fingerprint,
            "config": self.cfg.to_dict(),
        }

    def _restore(self, state: dict) -> None:
        self.step = state["step"]
        self.rng[0] = mx.array(state["rng_key"], dtype=mx.uint32)
        self.best_valid = math.inf if state["best_valid"] is None else state["best_valid"]
        self.bad_evals = state["bad_evals"]
        # a checkpoint from before validation was counted has no valid_* counters: they start at 0
        self.budget = Budget(**{f.name: state.get(f.name, f.default) for f in fields(Budget)})

    def _log(self, record: dict) -> None:
        self.history.append(record)
        self.folder.log(record)
        for callback in self.callbacks:
            if record["event"] == "valid":
                callback.on_val_loss_report(record)
            else:
                callback.on_train_loss_report(record)

    def _prepare_run_dir(self, resume: bool, overwrite: bool) -> dict | None:
        """Check the run folder and return the checkpoint state to resume from, if any.

        Several processes: rank 0 alone reads (and writes) the run folder, then sends its
        verdict, weights and optimizer state to the others (which may be other hosts)."""
        if self.world.size == 1:
            return self._prepare_local(resume, overwrite)
        dist.same_everywhere(self.tokenizer.fingerprint, "tokenizer", self.world)
        error = state = None
        if self.world.is_main:
            try:
                state = self._prepare_local(resume, overwrite)
            except SpecializeError as err:
                error = str(err)
        dist.agree(error, self.world)
        state = dist.broadcast_json(state, self.world)
        self.model.update(dist.broadcast_tree(self.model.parameters(), self.world))
        self.optimizer.state = dist.broadcast_tree(self.optimizer.state, self.world)
        if state is not None and not self.world.is_main:
            self._restore(state)
        return state

    def _prepare_local(self, resume: bool, overwrite: bool) -> dict | None:
        state = self.folder.start(resume, overwrite, self.model, self.optimizer, self.tokenizer.fingerprint)
        if state is not None:
            self._restore(state)
        return state

    def checkpoint(self, keep: int | None = None) -> Path | None:
        """Save the full state at this step, keeping the newest `keep` checkpoints (the
        configuration's by default)."""
        return self.folder.checkpoint(self.step, self.model, self.optimizer, self._state(),
                                      self.cfg.keep_checkpoints if keep is None else keep)

    # ---- validation --------------------------------------------------------------
    def validate(self) -> float:
        t0 = time.perf_counter()
        if self.evaluator is not None:
            result = self.evaluator(self.model)
        else:
            result = evaluate(self.model, self.valid, self.cfg.context, self.cfg.eval_batch_size,
                              self.cfg.eval_tokens, self._eval_fn, streams=len(self.streams), world=self.world)
        if self.world.size > 1:  # every rank takes rank 0's figures: the same early-stopping decisions
            result = type(result)(*dist.broadcast_json([result.nll, result.tokens, result.bytes], self.world))
        self.budget.valid_tokens += result.tokens
        self.budget.valid_flops += result.tokens * self.valid_flops_per_token
        self.budget.valid_seconds += time.perf_counter() - t0
        self._log({"event": "valid", "step": self.step, "tokens": self.budget.tokens,
                   "valid_loss": result.loss, "valid_ppl": result.ppl, "valid_bpb": result.bits_per_byte})
        if result.loss < self.best_valid:
            self.best_valid, self.bad_evals = result.loss, 0
            if self.cfg.keep == "best":
                self._save_best()
        else:
            self.bad_evals += 1
        return result.loss

    def _save_best(self) -> None:
        self.folder.save_best(self.model, self.tokenizer, {**self.meta, "step": self.step, "context": self.cfg.context})

    # ---- the loop ----------------------------------------------------------------
    def time_steps(self, steps: int, warmup: int = 1) -> float:
        """Seconds that `steps` training steps take after `warmup` untimed ones (the first
        compiles), run as `run` runs them; nothing is logged or saved (a machine's
        calibration: `plan` with budgets in hours)."""
        step_fn = self._build_step()
        seconds = 0.0
        with blas_per_stream(len(self.streams), self.world.local):
            for i in range(warmup + steps):
                dt = self._step(step_fn, i)[2]
                seconds += dt if i >= warmup else 0.0
        return seconds

    def _step(self, step_fn, step: int) -> tuple[mx.array, mx.array, float]:
        """One training step on batch `step`, evaluated: (loss, gradient norm, seconds)."""
        t0 = time.perf_counter()
        loss, grad_norm = step_fn(*self._batch(step))
        mx.eval(loss, grad_norm, self.model.state, self.optimizer.state)
        return loss, grad_norm, time.perf_counter() - t0

    def run(self, resume: bool = False, overwrite: bool = False) -> dict:
        """Train until `steps`, early stopping, or an interrupt (which checkpoints).
        Returns the summary also written to RUN/summary.json.

        With several processes, a lost peer ends every survivor with its rank and step
        (a watchdog catches a peer that hangs instead of dying: see distributed.py)."""
        try:
            with dist.Watchdog(self.world) as self._watchdog:
                return self._run(resume, overwrite)
        except RuntimeError as err:
            if self.world.size > 1 and dist.is_peer_lost(err):
                raise SpecializeError(dist.peer_lost_message(self.world, err, self.step)) from None
            raise

    def _run(self, resume: bool, overwrite: bool) -> dict:
        cfg = self.cfg
        if resume and self.world.size == 1 and \
                (summary := self.folder.finished(cfg.to_dict(), self.tokenizer.fingerprint)) is not None:
            ui.info(f"{self.run_dir} already finished at step {summary['steps']}")
            return summary
        self._prepare_run_dir(resume, overwrite)
        self.folder.write_json("run.json", {"train": cfg.to_dict(), **self.meta})
        self._eval_fn = make_eval_fn(self.model, self.streams) if self.valid is not None and not self.evaluator else None
        step_fn = self._build_step()
        validating = self.valid is not None or self.evaluator is not None
        # A run killed after its early stop was checkpointed, but before its summary: stopped.
        stopped_early = bool(cfg.patience and validating and self.bad_evals >= cfg.patience)
        start_step = self.step
        mx.reset_peak_memory()
        window_tokens = 0
        window_start = time.perf_counter()
        try:
            with blas_per_stream(len(self.streams), self.world.local), ui.progress("loss", "toks") as bar, \
                    StopBetweenSteps() as stop:
                task = bar.add_task("training", total=cfg.steps, completed=self.step, loss="loss -", toks="")
                while self.step < cfg.steps and not stopped_early:
                    loss, grad_norm, dt = self._step(step_fn, self.step)
                    self.step += 1
                    self._watchdog.beat(self.step)
                    self.budget.tokens += cfg.tokens_per_step
                    self.budget.flops += cfg.tokens_per_step * self.flops_per_token
                    self.budget.seconds += dt
                    window_tokens += cfg.tokens_per_step
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        elapsed = time.perf_counter() - window_start
                        tok_s = window_tokens / max(elapsed, 1e-9)
                        loss_v = loss.item()
                        if not math.isfinite(loss_v):
                            raise SpecializeError(f"training diverged at step {self.step} (loss {loss_v}); lower --lr")
                        self._log({"event": "train", "step": self.step, "tokens": self.budget.tokens,
                                   "flops": self.budget.flops, "seconds": self.budget.seconds, "loss": loss_v,
                                   "grad_norm": grad_norm.item(), "lr": self.optimizer.learning_rate.item(),
                                   "tok_s": tok_s, "peak_memory_bytes": peak_memory_bytes()})
                        bar.update(task, loss=f"loss {loss_v:.3f}", toks=f"{tok_s:,.0f} tok/s")
                        window_tokens, window_start = 0, time.perf_counter()
                    bar.update(task, completed=self.step)
                    if validating and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                        self.validate()
                        if cfg.patience and self.bad_evals >= cfg.patience:
                            stopped_early = True
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.checkpoint()
                    self._watchdog.beat(self.step)
                    if stop.requested:  # Ctrl-C: the step is whole, its state is step `self.step`'s
                        self.checkpoint()
                        raise Interrupted(f"interrupted at step {self.step}; checkpoint saved in {self.run_dir}, "
                                          "--resume continues it", step=self.step, run_dir=self.run_dir)
                    if stopped_early:
                        ui.info(f"early stop at step {self.step}: no better validation loss in {cfg.patience} evaluations")
                        break
        except KeyboardInterrupt:  # a second Ctrl-C: at once, mid-step, so no checkpoint of this state
            last = self.folder.last_checkpoint()
            raise Interrupted(f"interrupted at step {self.step}, without a checkpoint; "
                              + (f"--resume continues from {last.name}" if last else "no checkpoint yet"),
                              step=self.step, run_dir=self.run_dir) from None
        if not validating or cfg.keep == "final":
            self._save_best()
        self.checkpoint(keep=cfg.keep_final_checkpoints)
        b = self.budget
        summary = {
            "steps": self.step,
            "steps_this_session": self.step - start_step,
            "max_steps": cfg.steps,  # the safety bound when early stopping is on
            "lr": cfg.lr,
            "tokens": b.tokens,
            # what the run cost: its steps and its validations (each also on its own)
            "flops": b.flops + b.valid_flops,
            "seconds": b.seconds + b.valid_seconds,
            "train_flops": b.flops,
            "train_seconds": b.seconds,
            "valid_tokens": b.valid_tokens,
            "valid_flops": b.valid_flops,
            "valid_seconds": b.valid_seconds,
            "tok_s": b.tokens / max(b.seconds, 1e-9),
            "peak_memory_bytes": peak_memory_bytes(),
            "stopped_early": stopped_early,
            "best_valid_loss": None if math.isinf(self.best_valid) else self.best_valid,
            "valid_curve": self.folder.valid_curve(),
            "best_valid_ppl": None if math.isinf(self.best_valid) else math.exp(self.best_valid),
            "final_train_loss": next((h["loss"] for h in reversed(self.history) if h["event"] == "train"), None),
            **({"processes": self.world.size} if self.world.size > 1 else {}),
        }
        self.folder.write_json("summary.json", summary)
        return summary


class StopBetweenSteps:
    """Ctrl-C during training, taken between steps. A KeyboardInterrupt raised inside a
    step can land after the compiled step has updated the weights and optimizer state
    but before the step counter moved: a checkpoint then holds step N+1's state under
    the number N, and the resumed run applies one step twice (its learning rate one step
    ahead). So the first Ctrl-C only asks the loop to stop, checkpoint and leave after the
    step under way; a second one interrupts at once, without a checkpoint."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopBetweenSteps":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
