"""A training run's configuration (hyper-parameters and budget), its learning-rate
schedule, and the counters of what it spent."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import mlx.core as mx
import mlx.optimizers as optim

from ..errors import SpecializeError

KEEP = ("best", "final")  # TrainConfig.keep
# the most tokens a budget may name: far past any run this tool makes, and far inside the
# step counters (a budget of 1e23 tokens overflowed them mid-run)
MAX_TOKENS = 10**15


@dataclass
class TrainConfig:
    """Hyper-parameters and budget of one training run.

    steps: optimizer steps at most (one step = grad_accum x batch_size windows of
    `context` tokens); lr: peak learning rate after `warmup` linear steps, then
    `schedule` ("cosine" to lr * min_lr_ratio, or "constant"); clip: max global
    gradient norm (paper: 5.0); patience: stop after this many evaluations without a
    better validation loss (0: never stop early); precision: "float32", or "bf16" for
    mixed precision (float32 weights and optimizer, bf16 matrix products; accel/bf16.py)."""

    steps: int
    batch_size: int = 16
    context: int = 256
    grad_accum: int = 1
    lr: float = 1e-3
    warmup: int = 50
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip: float = 5.0
    eval_every: int = 50
    eval_tokens: int = 32_768
    eval_batch_size: int = 8
    patience: int = 0
    seed: int = 0
    log_every: int = 10
    streams: int = 0  # parallel CPU streams per step (0: auto, see train/parallel.py)
    precision: str = "float32"  # or "bf16": the linear layers' products in bfloat16 (accel/bf16.py)
    checkpoint_every: int = 0
    keep_checkpoints: int = 2  # the newest K kept while training
    # ... and when it ends: its last state is all a longer run continues from; older ones (a
    # model and two optimizer moments each) would stay on disk for nothing
    keep_final_checkpoints: int = 1
    # the model the run leaves: "best", the one of the best validation loss (early
    # stopping's; the last step's where nothing is validated), or "final", the last step's,
    # validation only reported (a pre-training on data its valid split does not sample:
    # the generic split judges an importance-sampled model by the wrong text)
    keep: str = "best"

    def __post_init__(self):
        if self.keep not in KEEP:
            raise SpecializeError(f"unknown keep '{self.keep}' ({' or '.join(KEEP)})")

    @property
    def tokens_per_step(self) -> int:
        return self.grad_accum * self.batch_size * self.context

    def to_dict(self) -> dict:
        """What the run is, as its checkpoints and run.json record it (and a resume
        compares): the final retention is not part of it, nor `keep` where it is the
        default, so runs saved before they were options are still the same runs."""
        return {k: v for k, v in asdict(self).items()
                if k != "keep_final_checkpoints" and not (k == "keep" and v == "best")}


def lr_schedule(cfg: TrainConfig):
    """Linear warm-up from 0 to cfg.lr, then cosine decay or constant."""
    warmup = max(0, min(cfg.warmup, cfg.steps - 1))
    if cfg.schedule == "constant":
        after = lambda step: mx.array(cfg.lr)  # noqa: E731
    elif cfg.schedule == "cosine":
        after = optim.cosine_decay(cfg.lr, max(cfg.steps - warmup, 1), cfg.lr * cfg.min_lr_ratio)
    else:
        raise SpecializeError(f"unknown schedule '{cfg.schedule}' (cosine or constant)")
    if warmup == 0:
        return after
    return optim.join_schedules([optim.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


@dataclass
class Budget:
    """Counters of what a run spent: tokens trained on, their FLOPs and wall-clock
    seconds (the steps alone), and the same for validation (forward passes over the
    valid split: counted, as the paper's costs count every FLOP a method pays)."""

    tokens: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    valid_tokens: int = 0
    valid_flops: float = 0.0
    valid_seconds: float = 0.0
