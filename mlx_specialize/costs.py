"""What a specialized model cost, counted where it is paid: the paper's cost model.

    C(N domains) = C_shared + N x C_per_domain        (in FLOPs, and in measured seconds)

- shared: what a method pays once, before any domain is known, for every domain it will
  serve: the generic pre-training(s) (SLM's, the LLM's, a distillation teacher's, the
  experts', a projected network's) and the embedding and clustering of the generic corpus;
- per domain: everything paid once a domain's data arrives: SLM-is's selection and
  whole pre-training, a distillation teacher's fine-tuning, choosing or instantiating an
  expert, and the fine-tuning itself (validation passes included);
- inference: what serving the specialized model costs per generated token (FLOPs, its
  parameters, and the generation speed measured on this machine).

A `specialize` report carries these as `costs`; each phase of its `phases` is counted in
exactly one of the two sums (`Method.shared_phases` says which are shared). Reporting
(the test perplexity before and after) is not a cost of the method and is not counted.
"""

from __future__ import annotations

COST_KEYS = ("flops", "seconds")


def split_costs(phases: dict, shared_phases) -> dict:
    """{"shared": ..., "per_domain": ...} from a report's `phases`: each part's summed
    FLOPs and seconds and the phases in it. A phase whose FLOPs were not recorded (a
    clustering cached before costs were) adds nothing and is listed under `unknown`."""

    def part(names: list[str]) -> dict:
        result = {key: float(sum(phases[n].get(key) or 0.0 for n in names)) for key in COST_KEYS}
        unknown = [n for n in names if any(phases[n].get(key) is None for key in COST_KEYS)]
        return {**result, "phases": names, **({"unknown": unknown} if unknown else {})}

    costed = [name for name, phase in phases.items() if isinstance(phase, dict)]
    return {"shared": part([n for n in costed if n in shared_phases]),
            "per_domain": part([n for n in costed if n not in shared_phases])}


def total_cost(costs: dict, n_domains: float) -> dict:
    """C(N) = C_shared + N x C_per_domain, in FLOPs and in seconds, of a report's
    `costs` (or anything with its "shared" and "per_domain" parts)."""
    if n_domains < 0:
        raise ValueError(f"the number of domains must be >= 0, not {n_domains}")
    return {key: costs["shared"][key] + n_domains * costs["per_domain"][key] for key in COST_KEYS}
