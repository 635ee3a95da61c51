"""How fast this machine trains, against the machine the study measured: the ratio that
turns the study's seconds into this machine's, for budgets given as time.

A short pre-training of the study's preset on random tokens (the same model, batch and
context as its pre-training; the first steps, which compile, are not timed); the study
machine's rate is its pre-trainings of SLM's model (SLM's and SLM-is's, run in their
cells, with subnormals kept as the first cells ran) FLOPs over their seconds, the scale
every method's seconds are fitted on (`fit_results`).
"""

from __future__ import annotations

import tempfile
from types import SimpleNamespace

import numpy as np

from ..errors import SpecializeError
from .fit import REFERENCE

STEPS, WARMUP = 12, 3  # steps run; steps before the timed ones (the first compiles the step)


def training_flops_per_second(preset_name: str, steps: int = STEPS, warmup: int = WARMUP) -> float:
    """This machine's training FLOP/s on `preset_name` at its pre-training batch shape."""
    import mlx.core as mx

    from ..data.tokens import BOS_ID, TokenizedSplit
    from ..models.dense import Model
    from ..models.presets import get_preset
    from ..train.config import TrainConfig
    from ..train.trainer import Trainer

    preset = get_preset(preset_name)
    mx.random.seed(0)
    model = Model(preset.model_args(preset.vocab))
    cfg = TrainConfig(steps=steps, batch_size=preset.batch_size, context=preset.context, lr=preset.lr,
                      warmup=preset.warmup)
    tokens = np.random.default_rng(0).integers(3, preset.vocab, steps * cfg.tokens_per_step + preset.context + 1,
                                               dtype=np.uint32)
    split = TokenizedSplit(tokens, n_bytes=len(tokens) * 4, n_docs=1, name="calibration")
    # the trainer's own compiled step and batches; the step reads only the tokenizer's BOS id
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, SimpleNamespace(bos_id=BOS_ID), split, None, cfg, run_dir)
        seconds = trainer.time_steps(steps - warmup, warmup)
    if seconds <= 0:
        raise SpecializeError("the calibration's timed steps took no measurable time")
    return (steps - warmup) * cfg.tokens_per_step * trainer.flops_per_token / seconds


def speed_ratio(model: dict) -> dict:
    """{"flops_per_second": this machine's, "study": the study machine's, "ratio": here / there}."""
    study = model.get("reference_flops_per_second")
    if not study:
        raise SpecializeError("the fitted model records no pre-training speed to calibrate time budgets against")
    here = training_flops_per_second(model["methods"][REFERENCE]["preset"])
    return {"flops_per_second": here, "study": study, "ratio": here / study}
