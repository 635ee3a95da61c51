"""SLM-d (`--method distill`): the generic SLM fine-tuned against a fine-tuned LLM.

The paper's response-based distillation: the LLM (the preset's large twin, `llm.py`) is
pre-trained on the generic corpus at the same FLOPs as the SLM (fewer tokens) and
fine-tuned on the domain; it is the teacher. The SLM (SLM's own generic model) is then fine-tuned on the
same domain data with `train.distill.DistillationLoss`: alpha x T^2 x KL to the teacher's
next-token distribution plus (1 - alpha) x the data's NLL, early-stopped on the domain's
valid NLL.

Costs, as the paper counts them: both generic pre-trainings (the SLM's and the
teacher's) are shared by every domain (`pretrain`, with each part); the teacher's
fine-tuning is per domain (`teacher`); the student's fine-tuning counts the teacher's
forward pass on every training token (`finetune`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import ui
from ..data.tokenizer import Tokenizer
from ..errors import SpecializeError
from ..models.io import load_model, model_context
from ..runtime.cache import cache_entry
from ..train.distill import DistillationLoss
from ..train.jobs import finetune
from .base import Method, Prepared, Settings
from .llm import equal_flops_tokens, llm_twin, teacher_folder
from .slm import cached_pretrain

COSTS = ("tokens", "seconds", "flops")


def fine_tuned_teacher(s: Settings) -> tuple[Path, dict, dict, bool]:
    """The LLM twin pre-trained at the generic FLOPs of the student's pre-training
    (`equal_flops_tokens`; `--method llm` with those tokens shares its cache entry) and
    fine-tuned on the domain as SLM is (cached per domain). Returns (teacher folder, its
    pre-training summary, its fine-tuning summary, fine-tuning reused)."""
    twin = llm_twin(s.preset)
    tokens = equal_flops_tokens(s.pretrain_tokens, s.preset, twin, s.vocab_size)
    llm, llm_summary, _ = cached_pretrain(s.generic, twin, tokens, s.vocab_size, s.seed, s.cache_dir,
                                          tokenizer_sample=s.tokenizer_sample)
    folder = teacher_folder(s, llm)
    with cache_entry(folder, f"the '{twin}' teacher fine-tuned on {s.domain}") as entry:
        if entry.ready:
            ui.info(f"using the cached teacher {folder}")
            return folder, llm_summary, json.loads((folder / "summary.json").read_text()), entry.reused
        summary = finetune(llm, s.domain, entry.build, s.domain_tokens, s.finetune_tokens, cache_dir=s.cache_dir,
                           resume=True, seed=s.seed, checkpoint_every=50).summary
        entry.publish()
    return folder, llm_summary, summary, False


class Distillation(Method):
    name = "distill"
    paper = "SLM-d"

    def prepare(self, s: Settings) -> Prepared:
        student, student_summary, student_reused = cached_pretrain(s.generic, s.preset, s.pretrain_tokens,
                                                                   s.vocab_size, s.seed, s.cache_dir,
                                                                   tokenizer_sample=s.tokenizer_sample)
        teacher, teacher_pre, teacher_tuned, teacher_reused = fine_tuned_teacher(s)
        if Tokenizer.load(student).fingerprint != Tokenizer.load(teacher).fingerprint:
            raise SpecializeError(f"the teacher {teacher} and the student {student} use different tokenizers")
        pretrain_phase = {key: student_summary[key] + teacher_pre[key] for key in COSTS}
        pretrain_phase.update(cached=student_reused, model=str(student),
                              student={key: student_summary[key] for key in COSTS},
                              teacher={key: teacher_pre[key] for key in COSTS})
        teacher_phase = {**{key: teacher_tuned[key] for key in COSTS}, "cached": teacher_reused,
                         "model": str(teacher), "preset": llm_twin(s.preset),
                         "best_valid_loss": teacher_tuned.get("best_valid_loss")}
        return Prepared(student, {"pretrain": pretrain_phase, "teacher": teacher_phase})

    def finetune_options(self, s: Settings, phases: dict) -> dict:
        """The distillation loss against the fine-tuned teacher of `prepare`."""
        teacher, _, config = load_model(phases["teacher"]["model"])
        return {"loss": DistillationLoss(teacher, s.distill_temperature, s.distill_alpha, model_context(config))}
