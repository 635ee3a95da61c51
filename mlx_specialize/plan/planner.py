"""`plan`: the method to invest the generic pre-training in, decided from the budgets
before the domains are known (the paper's "plan early"), with each method's predicted
quality and costs from the fitted model (fit.py, predict.py).

The budgets, in FLOPs (`budgets.py` reads tokens and hours too):
- pretrain: what may be spent once, before any domain is known (a method's shared cost);
- specialize: what may be spent per domain once its data arrives (its per-domain cost:
  fine-tuning, and SLM-is's whole pre-training);
- inference: the parameters of the largest model that can be served;
- the domain: its training tokens, how many domains will come (N), and optionally its
  xz bits per byte (anchors the predicted level).

Each method runs at the generic budget (in the preset's tokens) that its fit predicts
best among those both budgets afford; the one predicted best overall is recommended.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .. import ui
from ..errors import SpecializeError
from ..study.report import LABEL, ORDER, size_label
from .budgets import SMALL_CONTEXT_BYTES, SMALL_HELD_OUT_BYTES, within
from .fit import DOMAIN_FEATURES, NO_PRETRAINING, REFERENCE, save_fitted
from .predict import EXTRAPOLATE, common_floor, costs, difference, predict

GRID = 121  # budgets tried per method, evenly in log FLOPs over its reachable range
CAP = "--pretrain-tokens"  # what rules out a budget above `Budgets.max_budget` (`specialize --method auto`)


@dataclass
class Budgets:
    """pretrain, specialize: what may be spent once, and per domain, in FLOPs or (unit
    "seconds") in seconds on this machine, which runs `speed` times as fast as the study's
    (calibrate.py); inference: parameters of the served model; domain_tokens: the
    domain's training tokens; domains: N; floor: the domain's xz -9e bits per byte, or
    None; bytes_per_token: its measured bytes per token in the study's tokenization, or
    None; entropy, kl_generic: its cluster histogram's entropy and KL divergence to the
    generic mix's (nats), or None; max_budget: a cap on any method's generic pre-training budget B, whether it
    pre-trains once or per domain (`specialize --method auto`'s --pretrain-tokens)."""

    pretrain: float
    specialize: float
    inference: float
    domain_tokens: float = 100_000
    domains: int = 1
    floor: float | None = None
    bytes_per_token: float | None = None
    entropy: float | None = None
    kl_generic: float | None = None
    pretrain_unit: str = "flops"
    specialize_unit: str = "flops"
    speed: float | None = None
    max_budget: float | None = None  # no generic budget B above this, shared or per domain (FLOPs)
    # a FLOPs budget as tokens of the reference preset's generic pre-training (shown beside it)
    pretrain_tokens: float | None = None
    specialize_tokens: float | None = None
    # where domain_tokens lies below the domain-set size some affordable method's fit reaches:
    # the size every method's quality is predicted at instead (predict.common_floor); the
    # costs stay those of domain_tokens
    lifted_domain_tokens: float | None = None

    @property
    def quality_tokens(self) -> float:
        """The domain tokens the methods' quality is predicted at."""
        return self.lifted_domain_tokens or self.domain_tokens

    @property
    def features(self) -> dict:
        """The domain features measured (fit.DOMAIN_FEATURES by name)."""
        return {name: getattr(self, name) for name in DOMAIN_FEATURES if getattr(self, name) is not None}


def _spent(c: dict, budgets: Budgets) -> dict[str, float]:
    """What a method's costs `c` (predict.costs) spend of each budget, in its unit."""
    out = {}
    for name, part in (("pretrain", "shared"), ("specialize", "per_domain")):
        if getattr(budgets, name + "_unit") == "seconds":
            # a method whose cells recorded no time cannot be said to fit a time budget
            out[name] = math.inf if c[part + "_seconds"] is None else c[part + "_seconds"] / budgets.speed
        else:
            out[name] = c[part]
    return out


def _exceeded(c: dict, budgets: Budgets) -> set[str]:
    """The budgets a method's costs `c` (predict.costs) go beyond."""
    return {name for name, spent in _spent(c, budgets).items() if not within(spent, getattr(budgets, name))}


def _reach(spec: dict) -> tuple[float, float]:
    """The budgets (FLOPs) a method's fit is followed over: its measured ones, and
    EXTRAPOLATE times beyond either end where it has a budget slope."""
    reach = EXTRAPOLATE if "u" in spec["terms"] else 1.0
    return spec["B"][0] / reach, spec["B"][1] * reach


def _affordable(model: dict, method: str, budgets: Budgets) -> tuple[list[float], str | None, bool]:
    """The budgets B (FLOPs) the method may run at within both budgets, and, where there
    is none, the budget that rules it out and whether only jointly ("pretrain and
    specialize": each B it may run at exceeds one of them, but neither is exceeded at
    every B)."""
    spec = model["methods"][method]
    lo, hi = _reach(spec)
    if method in NO_PRETRAINING or lo * (1 - 1e-9) >= hi:  # one budget to run at
        candidates = [spec["B"][0]]
    else:
        # the grid, the measured budgets themselves (a budget written as a measured cell's
        # tokens affords that cell exactly) and a cap on the budget (run at it exactly)
        measured = [b / spec["tokens_per_budget_flop"] for b in spec["budgets"]]
        cap = [budgets.max_budget] if budgets.max_budget and lo <= budgets.max_budget <= hi else []
        candidates = sorted({*np.geomspace(lo, hi, GRID).tolist(), *measured, *cap})

    def exceeded_at(B: float) -> set[str]:
        exceeded = _exceeded(costs(model, method, B, budgets.domain_tokens), budgets)
        if _beyond_cap(method, B, budgets) and "pretrain" not in exceeded:  # the cap: what binds per domain
            exceeded.add(CAP)
        return exceeded

    fits, binding = [], None
    for B in candidates:
        exceeded = exceeded_at(B)
        binding = exceeded if binding is None else binding & exceeded  # exceeded at every budget tried
        if not exceeded:
            fits.append(B)
    if fits:
        # the edge between the largest budget that fits and the next one tried: a method that
        # costs a little more per token than SLM (whose cost a budget in tokens is) runs at
        # all the budget affords, not at the grid's step below it
        above = [B for B in candidates if B > max(fits)]
        if above:
            low, high = max(fits), above[0]
            for _ in range(40):
                mid = math.sqrt(low * high)
                # strictly within: the tolerance is for a budget written as a cost, not an edge to run to
                spent = _spent(costs(model, method, mid, budgets.domain_tokens), budgets)
                strict = (all(v <= getattr(budgets, name) for name, v in spent.items())
                          and not _beyond_cap(method, mid, budgets))
                low, high = (mid, high) if strict else (low, mid)
            fits.append(low)
        return fits, None, False
    # the budget exceeded at every budget it may run at; if none is, the two only jointly
    return [], " and ".join(sorted(binding)) if binding else "pretrain and specialize", not binding


def _beyond_cap(method: str, B: float, budgets: Budgets) -> bool:
    return budgets.max_budget is not None and method not in NO_PRETRAINING and not within(B, budgets.max_budget)


MORE = 1.1  # where the budgets afford this many times the budget a method is held at, the plan says so
SAVING = 0.10  # a method within the fit's error of the pick is named where it saves this share of the cost
# an interval's end this near 0 (bits per byte) holds 0 as printed, to three decimals: "within the
# fit's error" and the cheaper alternative it allows judge by the same rule
TIE = 0.0005


def _affords_more(model: dict, method: str, B: float, budgets: Budgets) -> bool:
    return not (_exceeded(costs(model, method, MORE * B, budgets.domain_tokens), budgets)
                or _beyond_cap(method, MORE * B, budgets))


def _closest_needed(model: dict, method: str, budgets: Budgets, rule: str) -> dict:
    """What the method needs at the budget B its fit reaches where it comes closest to the
    budgets `rule` names: the least overrun of them, among the B the others afford (the
    smallest B where the generic budget binds; where the per-domain one binds, wherever
    the per-domain cost is least: the largest B for fine-tuning, which costs less from a
    better base, anywhere for SLM-is, which pays its pre-training per domain): FLOPs (and
    seconds, as plan entries count them) shared and per domain, that budget and the
    smallest its fit reaches in tokens of its preset (None: it has no pre-training)."""
    spec, binding = model["methods"][method], rule.split(" and ")
    candidates = [spec["B"][0]] if method in NO_PRETRAINING else np.geomspace(*_reach(spec), GRID).tolist()
    tried = [(B, costs(model, method, B, budgets.domain_tokens)) for B in candidates]

    def overrun(tried_at: tuple[float, dict]) -> float:
        B, c = tried_at
        over = [v / max(getattr(budgets, name), 1e-300) for name, v in _spent(c, budgets).items() if name in binding]
        return max(over + ([B / budgets.max_budget] if CAP in binding else []))

    def others_fit(tried_at: tuple[float, dict]) -> bool:  # the budgets that do not bind are kept to
        B, c = tried_at
        return not _exceeded(c, budgets) - set(binding) and (CAP in binding or not _beyond_cap(method, B, budgets))

    B, c = min([t for t in tried if others_fit(t)] or tried, key=overrun)
    seconds = _seconds(c, budgets)
    return {"pretrain": c["shared"], "specialize": c["per_domain"],
            "pretrain_seconds": seconds.get("shared_seconds"), "specialize_seconds": seconds.get("per_domain_seconds"),
            "budget_tokens": None if method in NO_PRETRAINING else round(B * spec["tokens_per_budget_flop"]),
            "fit_starts_tokens": None if method in NO_PRETRAINING else round(candidates[0]
                                                                              * spec["tokens_per_budget_flop"])}


def plan(model: dict, budgets: Budgets) -> dict:
    """Every method's predicted quality and costs at its best affordable budget, the ones
    ruled out (and by which budget), and the recommendation with its reason."""
    if "seconds" in (budgets.pretrain_unit, budgets.specialize_unit) and not budgets.speed:
        raise SpecializeError("a budget in time needs this machine's speed against the study's "
                              "(Budgets.speed: calibrate.speed_ratio)")
    fitting, ruled_out, order = [], [], {}  # order: each fitting method's uncut predicted bits per byte
    affordable = {}
    for method, spec in model["methods"].items():
        if spec["params"] > budgets.inference:
            ruled_out.append({"method": method, "label": LABEL.get(method, method), "budget": "inference",
                              "needs": {"params": spec["params"]}})
            continue
        options, rule, jointly = _affordable(model, method, budgets)
        if not options:
            ruled_out.append({"method": method, "label": LABEL.get(method, method), "budget": rule,
                              "jointly": jointly, "needs": _closest_needed(model, method, budgets, rule)})
            continue
        affordable[method] = options
    floor, binding = common_floor(model, affordable)
    if budgets.domain_tokens < floor * (1 - 1e-9):
        # held at its own edge, a method measured only with more data than the user has would
        # be credited with it (optimistic) against one whose slope follows the size down: all
        # are predicted at the smallest size every one reaches, so none is credited with more
        budgets = replace(budgets, lifted_domain_tokens=floor)
        whose = ("any method's fit reaches" if len(binding) == len(affordable) else
                 "the fit reaches for " + ", ".join(LABEL.get(m, m) for m in binding))
        ui.warn(f"{budgets.domain_tokens:,.0f} domain tokens: fewer than {whose}; every method is predicted as "
                f"with {floor:,.0f}, likely optimistic, so that none is credited with more data than another")
    for method, options in affordable.items():
        spec = model["methods"][method]
        # the best predicted of the affordable budgets; a tie (held predictions) goes to the cheapest
        scored = [(round(predict(model, method, B, budgets.quality_tokens, budgets.floor,
                                 features=budgets.features)["fit_bpb"], 4), B) for B in options]
        order[method], B = min(scored)
        fitting.append(_entry(model, method, B, budgets))
        top = _reach(spec)[1]
        if method not in NO_PRETRAINING and B >= top * 0.999 and _affords_more(model, method, top, budgets):
            fitting[-1]["notes"].append(f"the generic budget held at {fitting[-1]['budget_tokens']:,} tokens of "
                                        f"{spec['preset']}, as far as its measured budgets carry its fit; the "
                                        "budgets afford more, whose gain is not predicted")
    fitting.sort(key=lambda e: order[e["method"]])
    unmeasured = [LABEL[m] for m in ORDER if m not in model["methods"]]
    result = {"budgets": asdict(budgets), "methods": fitting, "ruled_out": ruled_out, "not_measured": unmeasured,
              "fit": {**{k: model[k] for k in ("source", "cells", "targets", "anchored")},
                      "pending_cells": model.get("pending_cells", 0),
                      "domain_features": list(model["domain_features"]),
                      "preset": model["methods"][REFERENCE]["preset"]}}
    if fitting:
        result["recommended"] = fitting[0]["method"]
        result["cheaper_alternative"] = _cheaper_alternative(model, fitting, budgets)
        result["reason"] = _reason(model, fitting, ruled_out, budgets, result["cheaper_alternative"])
    else:
        result["recommended"], result["cheaper_alternative"] = None, None
        result["reason"] = "no method fits these budgets: " + "; ".join(
            f"{r['label']} is ruled out by {the_budget(r['budget'])}{_from(r)}" for r in ruled_out)
    return result


def _entry(model: dict, method: str, B: float, budgets: Budgets) -> dict:
    spec = model["methods"][method]
    p = predict(model, method, B, budgets.quality_tokens, budgets.floor, bytes_per_token=budgets.bytes_per_token,
                features=budgets.features)
    c = costs(model, method, B, budgets.domain_tokens)
    n = budgets.domains
    return {"method": method, "label": LABEL.get(method, method),
            "pretrain_flops": None if method in NO_PRETRAINING else B,
            "budget_tokens": None if method in NO_PRETRAINING else round(B * spec["tokens_per_budget_flop"]),
            "bpb": p["bpb"], "bpb_interval": p["bpb_interval"], "ppl": p["ppl"], "ppl_interval": p["ppl_interval"],
            "predicted_domain_tokens": p["D"], "notes": p["notes"], "shared_flops": c["shared"],
            "per_domain_flops": c["per_domain"],
            "total_flops": c["shared"] + n * c["per_domain"], **_seconds(c, budgets),
            "params": spec["params"], "inference_flops_per_token": spec["inference_flops"],
            "gen_tok_s": spec["gen_tok_s"]}


def _seconds(c: dict, budgets: Budgets) -> dict:
    """The costs in seconds: on this machine where it was calibrated, else on the study's."""
    if c["shared_seconds"] is None:
        return {}
    scale = 1.0 / budgets.speed if budgets.speed else 1.0
    shared, per_domain = c["shared_seconds"] * scale, c["per_domain_seconds"] * scale
    return {"shared_seconds": shared, "per_domain_seconds": per_domain,
            "total_seconds": shared + budgets.domains * per_domain,
            "seconds_on": "this machine" if budgets.speed else "the study's machine"}


def _from(ruled_out: dict) -> str:
    """Where a generic budget rules a method out (at every budget it may run at): the
    smallest its fit reaches, in tokens."""
    tokens = ruled_out["needs"].get("fit_starts_tokens")
    binding = ruled_out["budget"].split(" and ")
    if tokens is None or ruled_out.get("jointly") or not ("pretrain" in binding or CAP in binding):
        return ""
    return f" (its fit starts at {size_label(tokens)} tokens)"


def the_budget(name: str) -> str:
    """"the pretrain budget", "the pretrain and specialize budgets": what rules a method out."""
    return f"the {name} budget" + ("s" if " and " in name else "")


def _difference(model: dict, first: dict, second: dict, budgets: Budgets) -> dict:
    """bpb(first) - bpb(second), two plan entries at their budgets, with its 90% interval:
    on the user's domain, or over the study's targets where none was given."""
    return difference(model, first["method"], second["method"], first["pretrain_flops"] or model["B0"],
                      second["pretrain_flops"] or model["B0"], budgets.quality_tokens, budgets.features,
                      macro=budgets.floor is None)


def _cheaper_alternative(model: dict, fitting: list[dict], budgets: Budgets) -> dict | None:
    """Of the methods the fit cannot tell from the recommended one (their difference's
    90% interval holds 0), the one that costs least for the N domains, where it costs
    less than the recommended: the decision stays the best predicted quality, and the
    number of domains says what that quality costs against the same quality, as far as
    the fit can tell, for less (SLM-is's per-domain pre-training, multiplied by N). A
    saving under SAVING of the pick's cost (two methods at one budget differ by 1%) is not
    worth naming."""
    # the cost in the budgets' own terms: time where one is in time (a clustering's few
    # FLOPs are many seconds), else FLOPs
    key = "total_seconds" if "seconds" in (budgets.pretrain_unit, budgets.specialize_unit) else "total_flops"
    best, tied = fitting[0], []
    for entry in fitting[1:]:
        if entry.get(key) is not None and best.get(key) is not None and entry[key] <= (1.0 - SAVING) * best[key]:
            d = _difference(model, entry, best, budgets)
            if d["interval"][0] < TIE:
                tied.append((entry[key], entry, d))
    if not tied:
        return None
    total, entry, d = min(tied, key=lambda t: t[0])
    return {"method": entry["method"], "label": entry["label"], "bpb_difference": d["mean"],
            "bpb_difference_interval": d["interval"], "total_flops": entry["total_flops"],
            "total_seconds": entry.get("total_seconds"), "cost_ratio": best[key] / total,
            "compared": "seconds" if key == "total_seconds" else "FLOPs",
            "predicted_domain_tokens": entry["predicted_domain_tokens"]}


def _reason(model: dict, fitting: list[dict], ruled_out: list[dict], budgets: Budgets,
            alternative: dict | None = None) -> str:
    best = fitting[0]
    if len(fitting) == 1:
        why = "; ".join(f"{r['label']} by {the_budget(r['budget'])}{_from(r)}" for r in ruled_out)
        return f"{best['label']} is the only method these budgets afford" + (f" (ruled out: {why})." if why else ".")
    second = fitting[1]
    d = _difference(model, best, second, budgets)
    lo, hi = d["interval"]
    n = budgets.domains
    clear = hi <= -TIE
    sure = "clearly better" if clear else "though within the fit's error"
    # a method measured only at other domain-set sizes is predicted as with the nearest one:
    # two held differently are not compared at one size, whichever way that errs (not
    # "clearly better", though still within the error where the interval holds 0)
    if not math.isclose(best["predicted_domain_tokens"], second["predicted_domain_tokens"], rel_tol=1e-6):
        held = ", ".join(f"{e['label']} predicted with {e['predicted_domain_tokens']:,.0f} domain tokens"
                         for e in (best, second))
        sure = ("" if clear else sure + "; ") + "not like for like: " + held
    in_time = ("seconds" in (budgets.pretrain_unit, budgets.specialize_unit)  # the user's unit
               and best.get("total_seconds") is not None and second.get("total_seconds") is not None)
    if in_time:
        mine, theirs = ui.duration(best["total_seconds"]), ui.duration(second["total_seconds"])
    else:
        mine, theirs = f"{best['total_flops']:.2e} FLOPs", f"{second['total_flops']:.2e}"
    # the same cost as printed (SLM and the mixture's fine-tuning, say): not "x against x"
    cost = f"{mine}, as does {second['label']}" if mine.removesuffix(" FLOPs") == theirs else f"{mine} against {theirs}"
    reason = (f"{best['label']} has the lowest predicted bits per byte of the {len(fitting)} methods these budgets "
              f"afford: {d['mean']:+.3f} against {second['label']} ({sure}, 90% interval [{lo:+.3f}, {hi:+.3f}]); "
              f"for {n:,} domain{'s' if n != 1 else ''} it costs C({n:,}) = {cost}.")
    if alternative:
        a_lo, a_hi = alternative["bpb_difference_interval"]
        cost = (f"{alternative['total_flops']:.2e} FLOPs" if alternative["compared"] == "FLOPs"
                else ui.duration(alternative["total_seconds"]))
        unlike = ("" if math.isclose(alternative["predicted_domain_tokens"], best["predicted_domain_tokens"],
                                     rel_tol=1e-6)
                  else f"; not like for like: predicted with {alternative['predicted_domain_tokens']:,.0f} domain "
                       f"tokens, {best['label']} with {best['predicted_domain_tokens']:,.0f}")
        reason += (f" Within the fit's error of it, {alternative['label']} costs {alternative['cost_ratio']:.3g}x less "
                   f"for {n:,} domain{'s' if n != 1 else ''} (C({n:,}) = {cost}; "
                   f"{alternative['bpb_difference']:+.3f} bits per byte, 90% interval [{a_lo:+.3f}, {a_hi:+.3f}]"
                   f"{unlike}).")
    return reason


def shared_flops_per_token(model: dict) -> float:
    """What one token of generic pre-training of the reference preset costs, as a shared
    cost is counted (its validation passes included): the rate at which a budget written
    in tokens becomes FLOPs, so that "2.5M tokens" affords SLM's 2.5M-token cell."""
    ref = model["methods"][REFERENCE]
    return ref["shared"]["pretraining_ratio"] / ref["tokens_per_budget_flop"]


def make_plan(pretrain: str, specialize: str, inference: str, domain_tokens: int | None = None, domains: int = 1,
              domain: str | None = None, results=None, spec: str | None = None, save_fit: str | None = None,
              plot: str | None = None, tokenizer: str | None = None, fit: str | None = None,
              clusters: str | None = None, cache_dir=None) -> dict:
    """`mlxspec plan`: the budgets as written (budgets.py), the fitted model (the package's,
    one saved in `fit`, or refitted on `results` with `spec`'s floors, saved to
    `save_fit`), the plan; with `plot`, its figure (PNG). `domain` with `tokenizer` and
    `clusters` (the study's) also measures its cluster histogram. Every input is checked
    before the domain is read. The result's `warnings`: all it warned about on stderr."""
    with ui.collected_warnings() as said:
        result = _make_plan(pretrain, specialize, inference, domain_tokens, domains, domain, results, spec, save_fit,
                            plot, tokenizer, fit, clusters, cache_dir)
    return {**result, "warnings": said}


def _make_plan(pretrain, specialize, inference, domain_tokens, domains, domain, results, spec, save_fit, plot,
               tokenizer, fit, clusters, cache_dir) -> dict:
    from ..models.presets import PRESETS, describe
    from ..specialize import check_domain_tokens
    from .budgets import compute_budget, domain_features, inference_budget
    from .fit import load_fitted, refit

    if domains < 1:
        raise SpecializeError(f"--domains: at least 1, not {domains}")
    if plot is not None and Path(plot).suffix.lower() != ".png":
        raise SpecializeError(f"--plot {plot}: name a .png file")
    if save_fit is not None and Path(save_fit).is_dir():
        raise SpecializeError(f"--save-fit {save_fit} is a folder; name the file to write")
    for option, path in (("--plot", plot), ("--save-fit", save_fit)):
        if path is not None and not Path(path).absolute().parent.is_dir():  # a mistyped path, not a folder to make
            raise SpecializeError(f"{option} {path}: no folder {Path(path).parent}")
    if spec is not None and not results:
        raise SpecializeError("--spec goes with --results (the package's fit has its floors)")
    if fit is not None and results:
        raise SpecializeError("--fit and --results: one or the other (a saved fit, or results to fit now)")
    model = refit(results, spec) if results else load_fitted(fit) if fit else load_fitted()
    if domain and not results and not fit:  # the package's fit: its study's tokenizer is in the package
        tokenizer = _study_tokenizer(tokenizer)
    per_token = shared_flops_per_token(model)
    sizes = {name: describe(p)["params"] for name, p in PRESETS.items()}
    early: list[str] = []  # warnings about the budgets, said once the domain has been read without an error

    (pre, pre_unit, pre_written), (spec_, spec_unit, spec_written) = (
        compute_budget(pretrain, "--pretrain", per_token), compute_budget(specialize, "--specialize", per_token))
    for option, text, value, written in (("--pretrain", pretrain, pre, pre_written),
                                         ("--specialize", specialize, spec_, spec_written)):
        if not written and value < 1000 * per_token:
            # a bare number too small to be FLOPs: "2500000" meant as tokens, most likely
            early.append(f"{option} {text}: {value:.3g} FLOPs pay for fewer than 1,000 tokens of "
                         f"{model['methods'][REFERENCE]['preset']}; a budget in tokens is written '{text} tokens'")
    budgets = Budgets(pretrain=pre, specialize=spec_, inference=inference_budget(inference, "--inference", sizes),
                      domains=domains, pretrain_unit=pre_unit, specialize_unit=spec_unit,
                      pretrain_tokens=pre / per_token if pre_unit == "flops" else None,
                      specialize_tokens=spec_ / per_token if spec_unit == "flops" else None)
    measured_preset = model["methods"][REFERENCE]["preset"]
    check_domain_tokens(domain_tokens, measured_preset)  # as `specialize` refuses it
    window = PRESETS[measured_preset].context + 1
    if (tokenizer or clusters) and not domain:
        raise SpecializeError(f"{'--tokenizer' if tokenizer else '--clusters'} goes with --domain (it reads the "
                              "domain)")
    largest = max(m["params"] for m in model["methods"].values())
    if budgets.inference > 1.5 * largest:  # a larger preset fits the budget, but was never measured
        name = next((f" ({n})" for n, params in sizes.items() if params == largest), "")
        early.append(f"--inference {inference}: the fit measured models of at most {largest / 1e6:.2f}M parameters"
                     f"{name}; no larger model's quality is predicted, so the plan compares only the measured sizes")
    features = domain_features(domain, tokenizer, clusters, cache_dir) if domain else None
    if features and domain_tokens is None:
        held = features.get("train_tokens") or features["train_bytes"] / model["bytes_per_token"]
        if held < window:  # before any warning: the plan stops here
            raise SpecializeError(f"--domain {domain}: its train split holds about {held:,.0f} tokens, fewer than "
                                  f"one training window of the '{measured_preset}' preset ({window} tokens)")
    for message in early:
        ui.warn(message)
    if features:
        _warn_small_floor(domain, features)
        budgets.floor = features["floor"]
        budgets.bytes_per_token = features.get("bytes_per_token")
        budgets.entropy, budgets.kl_generic = features.get("entropy"), features.get("kl_generic")
    if domain_tokens is not None:
        budgets.domain_tokens = domain_tokens
        held = features and (features.get("train_tokens") or features["train_bytes"] / model["bytes_per_token"])
        if held and domain_tokens > 1.1 * held:
            ui.warn(f"--domain-tokens {domain_tokens:,}: {domain}'s train split holds about {held:,.0f} tokens")
    elif features:  # its train split (at the study targets' bytes per token, untokenized)
        budgets.domain_tokens = (features.get("train_tokens")
                                 or round(features["train_bytes"] / model["bytes_per_token"]))
    calibration = None
    if "seconds" in (pre_unit, spec_unit):  # time on this machine: how fast is it, against the study's?
        from .calibrate import speed_ratio

        ui.info("calibrating: a few pre-training steps time this machine against the study's")
        calibration = speed_ratio(model)
        budgets.speed = calibration["ratio"]
    result = plan(model, budgets)
    result["fit"]["packaged"] = not results and not fit
    if calibration:
        result["calibration"] = calibration
    if features:
        result["domain"] = {"corpus": domain, **features}
    if save_fit:
        save_fitted(model, save_fit)
        result["fit_file"] = str(save_fit)
    if plot:
        from .figure import plan_figure

        result["plot"] = str(plan_figure(model, result, Path(plot)))
    return result


def _warn_small_floor(domain: str, features: dict) -> None:
    """A warning where the domain's xz floor, which anchors its predicted level, is
    measured on far less text than the study's targets' were."""
    held, context = features["held_out_bytes"], features["context_bytes"]
    few = [part for part, small in ((f"{features['held_out']} text", held < SMALL_HELD_OUT_BYTES),
                                    ("context", context < SMALL_CONTEXT_BYTES)) if small]
    if few:
        ui.warn(f"--domain {domain}: its xz floor is measured on {held / 1e3:,.1f} KB of its {features['held_out']} "
                f"split after {context / 1e3:,.0f} KB of context from its train split: on so little "
                f"{' and '.join(few)} (the study's targets had 52-241 KB after 1.3-2 MB) the floor is a rough "
                "anchor, and the predictions anchored on it are less sure than their intervals say")


def _study_tokenizer(given: str | None) -> str:
    """The tokenizer the package's fit was measured with (packaged beside it), or the
    `--tokenizer` given, refused if it is another: a domain's bytes per token under
    another tokenizer would turn right bits per byte into wrong perplexities."""
    from ..data.tokenizer import Tokenizer
    from .fit import TOKENIZER

    if given is None:
        return str(TOKENIZER)
    if Tokenizer.load(given).fingerprint != Tokenizer.load(TOKENIZER).fingerprint:
        raise SpecializeError(f"--tokenizer {given} is not the tokenizer the package's fit was measured with; "
                              "leave it out (the package has that one), or give the fit of your own study "
                              "(--results or --fit) to plan with yours")
    return given


def run_tokens(chosen: int | None, given: int, preset: str, method: str) -> int:
    """The pre-training tokens `--method auto` runs `method` at: the plan's `chosen`
    budget, or the `given` one where both train the same steps (a method that validates
    more per token is planned a little under the budget given, yet pre-trains the same
    model: at the given tokens it is the cache entry `--method X --pretrain-tokens N`
    made, not a second, identical one)."""
    if chosen is None:
        return given
    from ..methods import REGISTRY
    from ..models.presets import get_preset
    from ..train.config import TrainConfig
    from ..train.jobs import steps_for

    spec, k = get_preset(preset), REGISTRY[method].default_k if method == "mix" else 1  # experts share the budget
    cfg = TrainConfig(steps=1, batch_size=spec.batch_size, context=spec.context)
    steps = [steps_for(tokens // k, cfg) for tokens in (chosen, given)]
    return given if steps[0] == steps[1] else chosen


def _more_pretraining(result: dict, pretrain_tokens: int, per_token: float, plan_at) -> str | None:
    """For `--method auto`: the least `--pretrain-tokens` (two figures, rounded up) at
    which the plan `plan_at(tokens)` affords a method that `pretrain_tokens` does not,
    and those methods; None where a larger budget brings none in (a method ruled out by
    the per-domain or the inference budget gains nothing from more)."""
    affords = {m["label"] for m in result["methods"]}
    candidates = set()
    for r in result["ruled_out"]:  # where each ruled-out method's pre-training would start to fit
        for need in (r["needs"].get("pretrain", 0) / per_token, r["needs"].get("fit_starts_tokens") or 0):
            if need > pretrain_tokens:
                scale = 10 ** (math.floor(math.log10(need)) - 1)
                candidates.add(math.ceil(need / scale) * scale)
    for tokens in sorted(candidates):
        gained = [m["label"] for m in plan_at(tokens)["methods"] if m["label"] not in affords]
        if gained:
            return f"--pretrain-tokens {size_label(tokens)} or more would weigh {', '.join(gained)} too"
    return None


def auto_method(domain: str, preset: str, pretrain_tokens: int, domain_tokens: int | None = None) -> dict:
    """`specialize --method auto`: the plan for a pre-training budget of `pretrain_tokens`
    tokens of `preset` (the preset the package's fit was measured with; no method
    pre-trains on more, SLM-is's per-domain pre-training included), the plan's
    default per-domain budget, serving one model of the preset's size, on `domain` (its
    xz floor, its size in the study's tokens); returns the recommended method, the pre-training tokens it runs at,
    the plan's reason and its notes."""
    from .budgets import DEFAULT_SPECIALIZE, compute_budget, domain_features
    from .fit import load_fitted

    model = load_fitted()
    measured = model["methods"][REFERENCE]["preset"]
    if preset != measured:
        raise SpecializeError(f"--method auto: the planner's predictions were measured with the '{measured}' preset, "
                              f"not '{preset}'; pass --preset {measured}, or name a --method")
    per_token = shared_flops_per_token(model)
    features = domain_features(domain, _study_tokenizer(None))  # its size in the study's tokens
    _warn_small_floor(domain, features)
    specialize = compute_budget(DEFAULT_SPECIALIZE, "--specialize", per_token)[0]

    def plan_at(tokens: int) -> dict:
        return plan(model, Budgets(pretrain=tokens * per_token, pretrain_tokens=tokens,
                                   inference=model["methods"][REFERENCE]["params"],
                                   max_budget=tokens / model["methods"][REFERENCE]["tokens_per_budget_flop"],
                                   specialize=specialize, floor=features["floor"],
                                   bytes_per_token=features["bytes_per_token"],
                                   domain_tokens=domain_tokens or features["train_tokens"]))

    result = plan_at(pretrain_tokens)
    hint = _more_pretraining(result, pretrain_tokens, per_token, plan_at)
    if result["recommended"] is None:
        raise SpecializeError(f"--method auto: {result['reason']}" + (f" ({hint})" if hint else ""))
    best = result["methods"][0]
    tokens = run_tokens(best["budget_tokens"], pretrain_tokens, preset, best["method"])
    return {"method": best["method"], "pretrain_tokens": tokens,
            "budget_flops": best["pretrain_flops"], "reason": result["reason"],
            "notes": best["notes"] + ([hint] if hint else []),
            "predicted_bpb": best["bpb"], "predicted_bpb_interval": best["bpb_interval"],
            "floor": features["floor"], "fit": result["fit"]}
