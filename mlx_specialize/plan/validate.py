"""How well the planner predicts a domain it never saw: leave one target out.

For each target of a study, the planner's model is fitted on the other targets' cells
alone and asked about the held-out target, anchored on its floor (the xz bits per byte
a user's `--domain` gives) and with its cluster histogram's entropy and KL to the generic
mix (`--clusters`) as a new domain would be:
- coverage: the share of the held-out cells whose measured bits per byte and perplexity
  fall inside the predicted 90% intervals;
- recommendations: for each budget and domain-set size the held-out target was measured
  at, the method predicted best among those measured there (SLM-nopt, which has no
  budget, in every budget's group), against the method measured best: exact picks, the
  regret (how many bits per byte the pick measured behind the best) and hits, the same
  method or one whose measured difference to the best lies inside the 90% interval the
  plan stated for it (the plan knew how close they were). Exact picks and regret judge
  the decision; hits judge the plan's statement of its own uncertainty.
Decisions are made in three scopes: among the methods of the preset's size (the SLM's),
among those the plan's default budgets afford (what `mlxspec plan` alone decides: its
per-domain budget rules out SLM-d, say), and among all. Two baselines put them in scale:
the regret of always running SLM (the plain recipe, no plan), and the coverage of the
plan's intervals on every difference between the pick and another method (the
differences decide; a held-out level's wide interval cannot make them look right).
Coverage is also given per held-out target: a target's cells share its level's error, so
three targets are three chances, not one per cell.
"""

from __future__ import annotations

from collections import defaultdict

from ..errors import SpecializeError
from .budgets import DEFAULT_PRETRAIN, DEFAULT_SPECIALIZE, compute_budget, within
from .fit import DOMAIN_FEATURES, NO_PRETRAINING, REFERENCE, cell_rows, fit_results, target_features
from .predict import costs, difference, predict

SCOPES = ("preset size", "default budgets", "any size")


def leave_one_target_out(rows: list[dict], floors: dict) -> dict:
    """Coverage and recommendation hits of the model fitted without each target in turn;
    `rows`: the study's lines (`study.report.load_lines`)."""
    cells = cell_rows(rows)
    targets = sorted({r["target"] for r in cells})
    if len(targets) < 3:
        raise SpecializeError(f"leave-one-target-out needs three targets or more (fitting on two measures the spread "
                              f"of their levels); the results have {len(targets)}")
    features = {t: {name: f[name] for name in DOMAIN_FEATURES} for t, f in target_features(rows).items()}
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
                        features=features.get(target))
            held_cells.append({"target": target, "method": r["method"], "budget": r["budget"], "D": r["D"],
                               "seed": r["seed"], "bpb": r["bpb"], "predicted": p["bpb"],
                               "interval": p["bpb_interval"], "ppl": 2 ** (r["bpb"] * r["bytes_per_token"]),
                               "ppl_predicted": p["ppl"], "ppl_interval": p["ppl_interval"]})
        decisions += _decisions(model, own, target, floors[target], features.get(target))
    return {"targets": targets, "cells": held_cells, "decisions": decisions,
            "bpb_coverage": _share(held_cells, "bpb", "interval"),
            "ppl_coverage": _share(held_cells, "ppl", "ppl_interval"),
            "coverage_by_target": {t: {"bpb": _share([c for c in held_cells if c["target"] == t], "bpb", "interval"),
                                       "ppl": _share([c for c in held_cells if c["target"] == t], "ppl",
                                                     "ppl_interval")} for t in targets},
            "hit_rate": {scope: _rate([d for d in decisions if d["scope"] == scope]) for scope in SCOPES}}


def _decisions(model: dict, own: list[dict], target: str, floor: float, features: dict | None) -> list[dict]:
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
    from .planner import shared_flops_per_token

    smallest = min(spec["params"] for spec in model["methods"].values())
    per_token = shared_flops_per_token(model)
    pretrain, specialize = (compute_budget(DEFAULT_PRETRAIN, "", per_token)[0],
                            compute_budget(DEFAULT_SPECIALIZE, "", per_token)[0])

    def in_scope(scope: str, method: str, cells: list[dict]) -> bool:
        """Its size, and (the plan's default budgets) its costs as the plan predicts them,
        so that the scope is what `plan` would have afforded."""
        small = all(r["params"] <= smallest for r in cells)
        c = costs(model, method, cells[0]["B"], cells[0]["D"])
        affordable = within(c["shared"], pretrain) and within(c["per_domain"], specialize)
        return scope == "any size" or small and (scope == "preset size" or affordable)

    out = []
    for (budget, D), by_method in sorted(groups.items()):
        for scope in SCOPES:
            methods = [m for m in by_method if in_scope(scope, m, by_method[m])]
            if len(methods) < 2:
                continue
            measured = {m: sum(r["bpb"] for r in by_method[m]) / len(by_method[m]) for m in methods}
            B = {m: by_method[m][0]["B"] for m in methods}
            predicted = {m: predict(model, m, B[m], D, floor, features=features)["fit_bpb"] for m in methods}
            pick, best = min(methods, key=predicted.get), min(methods, key=measured.get)
            gap = measured[pick] - measured[best]
            covered = 0  # the plan's interval on pick - m holds the measured difference, for each other m
            for m in methods:
                if m != pick:
                    lo, hi = difference(model, pick, m, B[pick], B[m], D, features)["interval"]
                    covered += lo <= measured[pick] - measured[m] <= hi
            hit = pick == best or _inside(model, pick, best, B, D, features, gap)
            out.append({"target": target, "budget": budget, "D": D, "scope": scope, "methods": len(methods),
                        "recommended": pick, "measured_best": best, "gap_bpb": gap, "hit": hit,
                        "slm_gap_bpb": measured[REFERENCE] - measured[best] if REFERENCE in measured else None,
                        "differences": len(methods) - 1, "differences_covered": covered})
    return out


def _inside(model, pick, best, B, D, features, gap) -> bool:
    lo, hi = difference(model, pick, best, B[pick], B[best], D, features)["interval"]
    return lo <= gap <= hi


def _share(cells: list[dict], key: str, interval: str) -> float | None:
    judged = [c for c in cells if c[interval] is not None]
    if not judged:
        return None
    return sum(c[interval][0] <= c[key] <= c[interval][1] for c in judged) / len(judged)


def _rate(decisions: list[dict]) -> dict:
    gaps = [d["gap_bpb"] for d in decisions]
    slm = [d["slm_gap_bpb"] for d in decisions if d["slm_gap_bpb"] is not None]
    pairs = sum(d["differences"] for d in decisions)
    return {"decisions": len(decisions), "exact": sum(d["recommended"] == d["measured_best"] for d in decisions),
            "hits": sum(d["hit"] for d in decisions), "mean_regret_bpb": sum(gaps) / len(gaps) if gaps else None,
            "max_regret_bpb": max(gaps, default=None),
            # the baseline: always SLM, where it was measured
            "slm_exact": sum(g == 0 for g in slm), "slm_decisions": len(slm),
            "slm_mean_regret_bpb": sum(slm) / len(slm) if slm else None,
            "difference_coverage": sum(d["differences_covered"] for d in decisions) / pairs if pairs else None}
