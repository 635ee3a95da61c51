"""The paper's methods, one module each, behind one registry.

    finetune  SLM        slm.py         generic pre-training (shared), fine-tune
    nopt      SLM-nopt   nopt.py        the domain data only, from a random initialisation
    llm       LLM        llm.py         SLM's recipe on the preset's large twin
    llm-lora  LLM + LoRA llm_lora.py    the LLM fine-tuned through LoRA adapters, fused
    distill   SLM-d      distill.py     SLM fine-tuned against the fine-tuned LLM
    is        SLM-is     importance.py  importance-sampled pre-training (per domain)
    mix       SLM-mix    mixture.py     one expert per generic cluster (shared), pick one
    pn        SLM-pn     projected.py   projected network (shared), instantiate one SLM
    soup      Soup-of-Experts  projected.py

clusters.py holds the clustered generic corpus the last four share. `specialize` (and
anything else that needs a method by name) goes through `get_method`; `mlxspec pretrain
--arch` finds the method that pre-trains an architecture through `get_arch`.
"""

from __future__ import annotations

from ..errors import check_choice
from .base import Method, Prepared, PretrainJob, Settings
from .distill import Distillation
from .importance import ImportanceSampled
from .llm import LLM
from .llm_lora import LLMLoRA
from .mixture import Mixture
from .nopt import NoPretraining
from .projected import Projected
from .slm import SLM

REGISTRY: dict[str, Method] = {m.name: m for m in (SLM(), NoPretraining(), LLM(), LLMLoRA(), Distillation(),
                                                   ImportanceSampled(), Mixture(), Projected("pn"), Projected("soup"))}
METHODS = tuple(REGISTRY)
# Each architecture and the method that pre-trains it on its own: dense is SLM's (SLM-is
# pre-trains a dense model too, on a selection: `pretrain --arch dense --selection`).
ARCHS: dict[str, Method] = {m.arch: m for m in REGISTRY.values() if m.arch is not None}


def get_method(name: str) -> Method:
    """The method named `name` (`--method`); refuses an unknown one naming the option."""
    check_choice("--method", name, METHODS)
    return REGISTRY[name]


def get_arch(arch: str) -> Method:
    """The method that pre-trains architecture `arch` (`--arch`)."""
    check_choice("--arch", arch, ARCHS)
    return ARCHS[arch]


__all__ = ["ARCHS", "METHODS", "REGISTRY", "Method", "Prepared", "PretrainJob", "Settings", "get_arch", "get_method"]
