"""How well the planner predicts a domain it never saw: leave one target out.

For each target of a study, the planner's model is fitted on the other targets' cells
alone and asked about the held-out target, anchored on its floor (the xz bits per byte
a user's `--domain` gives) and with its cluster histogram's entropy (`--clusters`) as a
new domain would be:
- coverage: the share of the held-out cells whose measured bits per byte and perplexity
  fall inside the predicted 90% intervals;
- recommendations: for each budget and domain-set size the held-out target was measured
  at, the method predicted best among those measured there (SLM-nopt, which has no
  budget, in every budget's group), against the method measured best: exact picks, the
  regret (how many bits per byte the pick measured behind the best) and hits, the same
  method or one whose measured difference to the best lies inside the 90% interval the
  plan stated for it (the plan knew how close they were). Exact picks and regret judge
  the decision; hits judge the plan's statement of its own uncertainty.
Decisions are made per inference budget: among the methods of the preset's size (the
SLM's), and among all. Coverage is also given per held-out target: a target's cells share
its level's error, so three targets are three chances, not one per cell.
"""

from __future__ import annotations

from collections import defaultdict

from ..errors import SpecializeError
from .fit import NO_PRETRAINING, cell_rows, fit_results, target_features
from .predict import difference, predict


def leave_one_target_out(rows: list[dict], floors: dict) -> dict:
    """Coverage and recommendation hits of the model fitted without each target in turn;
    `rows`: the study's lines (`study.report.load_lines`)."""
    cells = cell_rows(rows)
    targets = sorted({r["target"] for r in cells})
    if len(targets) < 3:
        raise SpecializeError(f"leave-one-target-out needs three targets or more (fitting on two measures the spread "
                              f"of their levels); the results have {len(targets)}")
    entropy = {t: f["entropy"] for t, f in target_features(rows).items()}
    missing = [t for t in targets if t not in floors]
    if missing:
        raise SpecializeError(f"leave-one-target-out needs every target's floor; none for {', '.join(missing)}")
    held_cells, decisions = [], []
    for target in targets:
        model = fit_results([r for r in rows if r["target"] != target], floors, source=f"without {target}")
        own = [r for r in cells if r["target"] == target and r["method"] in model["methods"]]
        for r in own:
            # as `plan --domain --tokenizer` would: its floor and its bytes per token measured
            p = predict(model, r["method"], r["B"], r["D"], floors[target], bytes_per_token=r["bytes_per_token"],
                        entropy=entropy.get(target))
            held_cells.append({"target": target, "method": r["method"], "budget": r["budget"], "D": r["D"],
                               "seed": r["seed"], "bpb": r["bpb"], "predicted": p["bpb"],
                               "interval": p["bpb_interval"], "ppl": 2 ** (r["bpb"] * r["bytes_per_token"]),
                               "ppl_predicted": p["ppl"], "ppl_interval": p["ppl_interval"]})
        decisions += _decisions(model, own, target, floors[target], entropy.get(target))
    return {"targets": targets, "cells": held_cells, "decisions": decisions,
            "bpb_coverage": _share(held_cells, "bpb", "interval"),
            "ppl_coverage": _share(held_cells, "ppl", "ppl_interval"),
            "coverage_by_target": {t: {"bpb": _share([c for c in held_cells if c["target"] == t], "bpb", "interval"),
                                       "ppl": _share([c for c in held_cells if c["target"] == t], "ppl",
                                                     "ppl_interval")} for t in targets},
            "hit_rate": {scope: _rate([d for d in decisions if d["scope"] == scope])
                         for scope in ("preset size", "any size")}}


def _decisions(model: dict, own: list[dict], target: str, floor: float, entropy: float | None) -> list[dict]:
    """One decision per (budget, domain-set size) of the held-out target and inference
    scope, over the methods measured there (seed means)."""
    groups = defaultdict(lambda: defaultdict(list))
    for r in own:
        if r["method"] not in NO_PRETRAINING:
            groups[(r["budget"], r["D"])][r["method"]].append(r)
    for r in own:  # the same cells whatever the budget: a choice at every budget
        if r["method"] in NO_PRETRAINING:
            for budget, D in list(groups):
                if D == r["D"]:
                    groups[(budget, D)][r["method"]].append(r)
    smallest = min(spec["params"] for spec in model["methods"].values())
    out = []
    for (budget, D), by_method in sorted(groups.items()):
        for scope in ("preset size", "any size"):
            methods = [m for m in by_method if scope == "any size" or model["methods"][m]["params"] <= smallest]
            if len(methods) < 2:
                continue
            measured = {m: sum(r["bpb"] for r in by_method[m]) / len(by_method[m]) for m in methods}
            B = {m: by_method[m][0]["B"] for m in methods}
            predicted = {m: predict(model, m, B[m], D, floor, entropy=entropy)["bpb"] for m in methods}
            pick, best = min(methods, key=predicted.get), min(methods, key=measured.get)
            d = difference(model, pick, best, B[pick], B[best], D, entropy)
            gap = measured[pick] - measured[best]
            out.append({"target": target, "budget": budget, "D": D, "scope": scope, "methods": len(methods),
                        "recommended": pick, "measured_best": best, "gap_bpb": gap,
                        "hit": pick == best or d["interval"][0] <= gap <= d["interval"][1]})
    return out


def _share(cells: list[dict], key: str, interval: str) -> float | None:
    judged = [c for c in cells if c[interval] is not None]
    if not judged:
        return None
    return sum(c[interval][0] <= c[key] <= c[interval][1] for c in judged) / len(judged)


def _rate(decisions: list[dict]) -> dict:
    gaps = [d["gap_bpb"] for d in decisions]
    return {"decisions": len(decisions), "exact": sum(d["recommended"] == d["measured_best"] for d in decisions),
            "hits": sum(d["hit"] for d in decisions), "mean_regret_bpb": sum(gaps) / len(gaps) if gaps else None,
            "max_regret_bpb": max(gaps, default=None)}
