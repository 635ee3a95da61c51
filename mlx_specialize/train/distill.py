"""Response-based distillation: the training loss of SLM-d (`--method distill`).

The student learns the teacher's next-token distribution on the domain data as well as
the data's own next tokens. For each target position, with student logits s and teacher
logits t over the vocabulary, temperature T and mix alpha:

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * -log softmax(s)[y]

(Hinton et al.'s form: T^2 keeps the KL term's gradients at the NLL's scale as T grows).
Document starts are masked as in plain training, and the sum over targets is divided
by the step's target count, so alpha = 0 is exactly `parallel.training_loss`.

The teacher is a frozen model outside the student's parameters: its logits enter as
constants (`mx.stop_gradient`), its forward pass runs inside the compiled step on the
same rows and CPU streams as the student's, and its FLOPs are counted in the run's
budget (`extra_flops_per_token`: 2 per teacher weight per token, its attention too).
"""

from __future__ import annotations

import mlx.core as mx

from .. import accel
from ..accel import cross_entropy, on_stream, row_slices
from ..data.tokenizer import BOS_ID
from ..data.tokens import target_mask


def kl_to_teacher(student_logits: mx.array, teacher_logits: mx.array, temperature: float = 1.0) -> mx.array:
    """KL(softmax(teacher / T) || softmax(student / T)) per position, in nats:
    logits [..., V] -> [...]."""
    log_q = student_logits / temperature
    log_q = log_q - mx.logsumexp(log_q, axis=-1, keepdims=True)
    log_p = teacher_logits / temperature
    log_p = log_p - mx.logsumexp(log_p, axis=-1, keepdims=True)
    return (mx.exp(log_p) * (log_p - log_q)).sum(axis=-1)


class DistillationLoss:
    """The trainer's `loss(model, x, y, streams, bos_id, count)` against `teacher`."""

    def __init__(self, teacher, temperature: float = 1.0, alpha: float = 0.5, context: int = 256):
        if not temperature > 0:
            raise ValueError(f"the distillation temperature must be positive, not {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"the distillation mix alpha must be between 0 and 1, not {alpha}")
        teacher.freeze()
        accel.prepare(teacher)  # the platform's layers inside the step's scope, as the student's
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)
        # the teacher's forward pass per training token (the trainer adds it to its budget);
        # with alpha = 0 the teacher never runs, and costs nothing
        self.extra_flops_per_token = teacher.flops_per_token(context, training=False) if self.alpha > 0 else 0

    def __call__(self, model, x: mx.array, y: mx.array, streams: list, bos_id: int | None = BOS_ID,
                 count: mx.array | None = None) -> mx.array:
        mask = target_mask(y, bos_id).astype(mx.float32)
        total = local_count = None
        for rows, stream in zip(row_slices(x.shape[0], len(streams)), streams):
            with on_stream(stream):
                logits = model(x[rows])
                per_target = (1.0 - self.alpha) * cross_entropy(logits, y[rows])
                if self.alpha > 0:
                    teacher_logits = mx.stop_gradient(self.teacher(x[rows]))
                    kl = kl_to_teacher(logits, teacher_logits, self.temperature)
                    per_target = per_target + self.alpha * self.temperature ** 2 * kl
                part, part_count = (per_target * mask[rows]).sum(), mask[rows].sum()
            total = part if total is None else total + part
            local_count = part_count if local_count is None else local_count + part_count
        return total / mx.maximum(local_count if count is None else count, 1.0)
