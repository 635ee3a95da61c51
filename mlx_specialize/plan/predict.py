"""Predictions of the fitted planner model (`fit.fit_results`): a method's quality at a
budget and domain-set size with a 90% prediction interval, the difference between two
methods with its own interval, and the method's costs.

A prediction is made where the method was measured, or within EXTRAPOLATE times beyond
along a direction its cells vary in (its fitted slope carries it there, the interval
widening with the distance); further out, or along a direction never varied, the budget
or size is held at the nearest measured one and the prediction says so.
"""

from __future__ import annotations

import math

import numpy as np

from .fit import NO_PRETRAINING

LEVEL = 0.90  # two-sided prediction intervals
EXTRAPOLATE = 2.0  # how far beyond its measured budgets and sizes a method's fit is followed

# Student's t, one-sided 0.95 quantile (a two-sided 90% interval), by degrees of freedom;
# interpolated in 1/dof between the rows (the standard tables).
_T95 = [(1, 6.314), (2, 2.920), (3, 2.353), (4, 2.132), (5, 2.015), (6, 1.943), (7, 1.895), (8, 1.860),
        (9, 1.833), (10, 1.812), (15, 1.753), (20, 1.725), (30, 1.697), (60, 1.671), (120, 1.658)]


def t_quantile(dof: float) -> float:
    """The 0.95 quantile of Student's t with `dof` (>= 1, possibly fractional) degrees of
    freedom; the normal's 1.645 as dof grows without bound."""
    dof = max(float(dof), 1.0)
    rows = _T95 + [(math.inf, 1.645)]
    for (d0, t0), (d1, t1) in zip(rows, rows[1:]):
        if dof <= d1:
            x0, x1, x = 1 / d0, 1 / d1, 1 / dof
            return t0 + (t1 - t0) * (x0 - x) / (x0 - x1)
    return 1.645


def _satterthwaite(parts: list[tuple[float, float]]) -> float:
    """Effective degrees of freedom of a sum of variance estimates (variance, dof)."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / d for v, d in parts if v > 0)
    return total * total / denom if denom > 0 else math.inf


def held(model: dict, method: str, B: float, D: float) -> tuple[float, float, list[str]]:
    """(B, D) where the method's fit is followed (see the module's note), and what was held."""
    spec, notes = model["methods"][method], []
    if method in NO_PRETRAINING:
        B = spec["B"][0]
    for name, value, key, term, unit in (("budget", B, "B", "u", "FLOPs"), ("domain set", D, "D", "v", "tokens")):
        lo, hi = spec[key]
        reach = EXTRAPOLATE if term in spec["terms"] else 1.0
        inside = min(max(value, lo / reach), hi * reach)
        if not math.isclose(inside, value, rel_tol=1e-9) and not (method in NO_PRETRAINING and key == "B"):
            measured = f"{lo:.3g}" + (f"-{hi:.3g}" if hi != lo else "")
            notes.append(f"{name} held at {inside:.3g} {unit}: " + (f"{reach:g}x beyond the measured {measured}"
                         if reach > 1 else "the only one measured"))
        if key == "B":
            B = inside
        else:
            D = inside
    return B, D, notes


def _row(model: dict, method: str, B: float, D: float, target: str | None = None,
         entropy: float | None = None) -> np.ndarray:
    """The design row of a cell of `method` at (B, D) on `target`, or on a new domain
    (the targets' mean level) of cluster histogram entropy `entropy` (None: the targets'
    mean)."""
    u = 0.0 if method in NO_PRETRAINING else math.log(B / model["B0"])
    v = math.log(D / model["D0"])
    if target is not None and model.get("entropy_terms"):
        h = model["features"][target]["entropy"] - model["H0"]
    else:
        h = 0.0 if entropy is None or not model.get("entropy_terms") else entropy - model["H0"]
    values = {"b": 1.0, "u": u, "v": v, "uv": u * v, "h": h}
    targets = model["targets"]
    x = np.zeros(len(model["columns"]))
    for i, (kind, name) in enumerate(model["columns"]):
        if kind == "a":
            x[i] = (1.0 if name == target else 0.0) if target else 1.0 / len(targets)
        elif name == method:
            x[i] = values[kind]
    return x


def predict(model: dict, method: str, B: float, D: float, floor: float | None = None, target: str | None = None,
            bytes_per_token: float | None = None, entropy: float | None = None) -> dict:
    """The method's bits per byte and perplexity after specialization at the generic
    budget B (FLOPs) with D domain tokens, each with its 90% prediction interval (None
    where the fit cannot measure a spread).

    Of which domain:
    - `target`: one of the study's, at its fitted level;
    - `floor`: a new domain, at the level its xz -9 bits per byte implies (the study
      targets' mean of level - floor, scattering as theirs did), its perplexity at
      `bytes_per_token` where it was tokenized, else at the targets' mean and spread; its
      cluster histogram `entropy` moves the clustered methods where the fit has the
      terms (fit.CLUSTERED);
    - neither: the study's targets on average (their macro perplexity, as the study
      reports it), the level and scatter averaged over them."""
    B, D, notes = held(model, method, B, D)
    theta, cov, s2, targets = np.array(model["theta"]), np.array(model["cov"]), model["s2"], model["targets"]
    if floor is None and target is None:
        return {"method": method, "B": B, "D": D, "notes": notes, **_macro(model, method, B, D)}
    x = _row(model, method, B, D, target, entropy)
    bpb = float(x @ theta)
    parts = [(float(x @ cov @ x) + s2, model["dof"])]
    if target is None:  # a new domain
        T = len(targets)
        spread = model["offset_var"] if model["anchored"] else _level_var(model)
        if model["anchored"]:
            bpb += floor - sum(model["floors"].values()) / T
        parts.append((spread, T - 1) if spread is not None else (math.nan, 1))
    var = sum(v for v, _ in parts)
    half = None if math.isnan(var) else t_quantile(_satterthwaite(parts)) * math.sqrt(var)
    out = {"method": method, "B": B, "D": D, "notes": notes, "bpb": bpb,
           "bpb_interval": None if half is None else [max(bpb - half, 0.0), bpb + half]}
    if target is not None:  # a study target's tokenization is known
        bytes_per_token = model["bytes_per_token_by_target"][target]
    known = bytes_per_token is not None
    bpt = bytes_per_token if known else model["bytes_per_token"]
    out["ppl"] = 2.0 ** (bpb * bpt)
    out["ppl_interval"] = None
    if half is not None and (known or model["bytes_per_token_var"] is not None):
        # an untokenized domain's bytes per token is as uncertain as the targets' scatter says
        bpt_half = 0.0 if known else t_quantile(len(targets) - 1) * math.sqrt(
            model["bytes_per_token_var"] * (1 + 1 / len(targets)))
        lo, hi = out["bpb_interval"]
        out["ppl_interval"] = [2.0 ** (lo * max(bpt - bpt_half, 0.0)), 2.0 ** (hi * (bpt + bpt_half))]
    return out


def _macro(model: dict, method: str, B: float, D: float) -> dict:
    """Mean bits per byte and macro perplexity (exp of the mean per-token NLL) over the
    study's targets, each at its own level and tokenization; the intervals from the fit
    and the scatter of one new cell per target."""
    theta, cov, s2, targets = np.array(model["theta"]), np.array(model["cov"]), model["s2"], model["targets"]
    T, t = len(targets), t_quantile(model["dof"])
    rows = [_row(model, method, B, D, target) for target in targets]
    out = {}
    for name, weights in (("bpb", [1 / T] * T),
                          ("ln_ppl", [math.log(2) * model["bytes_per_token_by_target"][g] / T for g in targets])):
        x = sum(w * r for w, r in zip(weights, rows))
        mean = float(x @ theta)
        half = t * math.sqrt(float(x @ cov @ x) + s2 * sum(w * w for w in weights))
        out[name] = (mean, [max(mean - half, 0.0), mean + half])
    (bpb, bpb_interval), (ln_ppl, ln_interval) = out["bpb"], out["ln_ppl"]
    return {"bpb": bpb, "bpb_interval": bpb_interval, "ppl": math.exp(ln_ppl),
            "ppl_interval": [math.exp(v) for v in ln_interval], "macro": targets}


def _level_var(model: dict) -> float | None:
    levels = list(model["levels"].values())
    return float(np.var(levels, ddof=1)) if len(levels) > 1 else None


def difference(model: dict, first: str, second: str, B1: float, B2: float, D: float,
               entropy: float | None = None) -> dict:
    """bpb(first at B1) - bpb(second at B2) on the same domain (of cluster histogram
    `entropy`, or the targets' mean), with its 90% interval: the domain's level cancels;
    two cells' scatter does not."""
    x = (_row(model, first, *held(model, first, B1, D)[:2], entropy=entropy)
         - _row(model, second, *held(model, second, B2, D)[:2], entropy=entropy))
    theta, cov = np.array(model["theta"]), np.array(model["cov"])
    mean = float(x @ theta)
    half = t_quantile(model["dof"]) * math.sqrt(float(x @ cov @ x) + 2 * model["s2"])
    return {"mean": mean, "interval": [mean - half, mean + half]}


def costs(model: dict, method: str, B: float, D: float) -> dict:
    """The method's shared and per-domain FLOPs at budget B (FLOPs) and D domain tokens,
    and seconds at the FLOP/s its cells were measured at. Pre-training scales with B
    exactly; the rest follows its fit, held where it was never varied."""
    spec = model["methods"][method]
    u, v = math.log(B / model["B0"]), math.log(D / model["D0"])
    out = {}
    for part in ("shared", "per_domain"):
        fit = spec[part]
        rest = math.exp(fit["c0"] + fit.get("cu", 0.0) * u + fit.get("cv", 0.0) * v) if "c0" in fit else 0.0
        out[part] = fit["pretraining_ratio"] * B + rest
    rate = spec["flops_per_second"]
    out["shared_seconds"] = out["shared"] / rate if rate else None
    out["per_domain_seconds"] = out["per_domain"] / rate if rate else None
    return out
