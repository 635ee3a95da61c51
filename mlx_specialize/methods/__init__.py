"""The paper's methods, one module each, behind one registry.

    finetune  SLM        slm.py         generic pre-training (shared), fine-tune
    is        SLM-is     importance.py  importance-sampled pre-training (per domain)
    mix       SLM-mix    mixture.py     one expert per generic cluster (shared), pick one
    pn        SLM-pn     projected.py   projected network (shared), instantiate one SLM
    soup      Soup-of-Experts  projected.py

clusters.py holds the clustered generic corpus the last four share. `specialize` (and
anything else that needs a method by name) goes through `get_method`.
"""

from __future__ import annotations

from ..errors import check_choice
from .base import Method, Prepared, Settings
from .importance import ImportanceSampled
from .mixture import Mixture
from .projected import Projected
from .slm import SLM

REGISTRY: dict[str, Method] = {m.name: m for m in (SLM(), ImportanceSampled(), Mixture(), Projected("pn"),
                                                   Projected("soup"))}
METHODS = tuple(REGISTRY)


def get_method(name: str) -> Method:
    """The method named `name` (`--method`); refuses an unknown one naming the option."""
    check_choice("--method", name, METHODS)
    return REGISTRY[name]


__all__ = ["METHODS", "REGISTRY", "Method", "Prepared", "Settings", "get_method"]
