"""Perplexity and bits per byte of a model on a tokenized split."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import numpy as np

from .. import accel
from ..data.tokens import TokenizedSplit, eval_batches
from ..models.dense import Model
from ..accel import auto_streams, blas_per_stream, make_streams
from .parallel import masked_nll


@dataclass
class EvalResult:
    """nll: summed negative log-likelihood (nats) over `tokens` predicted tokens;
    `bytes`: UTF-8 bytes of text those tokens cover."""

    nll: float
    tokens: int
    bytes: float

    @property
    def loss(self) -> float:
        return self.nll / max(self.tokens, 1)

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(self.bytes, 1.0)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "ppl": self.ppl, "bpb": self.bits_per_byte, "tokens": self.tokens}


def make_eval_fn(model: Model, streams: list | None = None):
    """A compiled `(x, y, mask) -> summed NLL` that reads the model's current weights,
    with the batch's rows spread over `streams` (see `parallel.py`)."""
    streams = streams or [None]
    accel.prepare(model)

    def summed_nll(x, y, mask):
        with accel.scope():  # the prepared layers' fast paths, while traced
            return masked_nll(model, x, y, mask, streams)[0]

    return partial(mx.compile, inputs=model.state)(summed_nll)


def evaluate(
    model: Model,
    split: TokenizedSplit,
    context: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    eval_fn=None,
    on_batch=None,
    streams: int | None = None,
    world=None,
) -> EvalResult:
    """Evaluate on the split's tokens (its first `max_tokens`, if given): each token
    after the first predicted once, windows of `context` without overlap.

    `on_batch(n_targets)` is called after each batch (for progress bars); `streams`
    parallel CPU streams share each batch (default: auto). `world` (distributed.World):
    its processes take turns at the batches and sum their figures, so every rank returns
    the whole split's result."""
    n_streams = streams or auto_streams(batch_size)
    eval_fn = eval_fn or make_eval_fn(model, make_streams(n_streams))
    total = mx.array(0.0)
    count = 0
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    with blas_per_stream(n_streams, world.local if world is not None else 1):
        for j, (x, y, m) in enumerate(eval_batches(split.tokens, context, batch_size, max_tokens, split.bos_id)):
            if j % size != rank:
                continue
            total = total + eval_fn(mx.array(x), mx.array(y), mx.array(m))
            mx.eval(total)
            count += int(np.sum(m))
            if on_batch:
                on_batch(int(np.count_nonzero(y)))
    if size > 1:
        from ..runtime.distributed import all_sum

        summed = all_sum(mx.array([total.item(), float(count)], dtype=mx.float32), world)
        total, count = summed[0], int(summed[1].item())
    covered = min(split.n_tokens, (max_tokens or split.n_tokens) + 1)
    n_bytes = split.n_bytes * covered / max(split.n_tokens, 1)
    return EvalResult(float(total.item()), count, n_bytes)
