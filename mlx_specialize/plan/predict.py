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

from ..stats import satterthwaite, t_quantile
from .fit import DOMAIN_FEATURES, NO_PRETRAINING, REFERENCE, TARGET_SLOPES

LEVEL = 0.90  # two-sided prediction intervals
EXTRAPOLATE = 2.0  # how far beyond its measured budgets and sizes a method's fit is followed
FEATURE_NAMES = {"entropy": "entropy", "kl_generic": "KL to the generic mix"}  # fit.DOMAIN_FEATURES, as said


def _reach(spec: dict, term: str) -> float:
    """How far beyond its measured range a method's fit is followed along a direction
    (term "u": the budget, "v": the domain-set size): EXTRAPOLATE times where its cells
    vary along it, not at all where not."""
    return EXTRAPOLATE if term in spec["terms"] else 1.0


def held(model: dict, method: str, B: float, D: float) -> tuple[float, float, list[str]]:
    """(B, D) where the method's fit is followed (see the module's note), and what was held."""
    spec, notes = model["methods"][method], []
    if method in NO_PRETRAINING:
        B = spec["B"][0]
    for name, value, key, term, unit in (("budget", B, "B", "u", "FLOPs"), ("domain set", D, "D", "v", "tokens")):
        lo, hi = spec[key]
        reach = _reach(spec, term)
        inside = min(max(value, lo / reach), hi * reach)
        show = (lambda x: f"{x:.3g}") if key == "B" else (lambda x: f"{x:,.0f}")  # FLOPs; tokens
        measured = show(lo) + (f"-{show(hi)}" if hi != lo else "")
        if not math.isclose(inside, value, rel_tol=1e-9) and not (method in NO_PRETRAINING and key == "B"):
            # which way the hold errs: a method given more than it was measured with would
            # most likely do better than predicted, one given less worse
            way = (f"predicted as with less than the {show(value)} given: likely pessimistic" if inside < value else
                   f"predicted as with more than the {show(value)} given: likely optimistic")
            side = "below" if inside < lo * (1 - 1e-9) else "above"
            notes.append(f"{name} held at {show(inside)} {unit}: " + (f"{reach:g}x {side} the measured {measured}"
                         if reach > 1 else "the only one measured") + f"; {way}")
        elif not lo * (1 - 1e-9) <= inside <= hi * (1 + 1e-9):
            side = "below" if inside < lo else "above"
            notes.append(f"{name} of {show(inside)} {unit} {side} the measured {measured}: its fitted slope followed "
                         "there, the interval widened with the distance")
        if key == "B":
            B = inside
        else:
            D = inside
    return B, D, notes


def common_floor(model: dict, methods) -> tuple[float, list[str]]:
    """The smallest domain-set size (tokens) that every one of `methods`' fits reaches
    (EXTRAPOLATE times below its smallest measured size where its fit has a slope along
    the size, that size where not), and the methods whose reach ends there (0 and none
    for no methods)."""
    edges = {}
    for method in methods:
        spec = model["methods"][method]
        edges[method] = spec["D"][0] / _reach(spec, "v")
    floor = max(edges.values(), default=0.0)
    return floor, [m for m, edge in edges.items() if edge >= floor * (1 - 1e-9)]


def _uv(model: dict, method: str, B: float, D: float) -> tuple[float, float]:
    """The fit's coordinates of a budget and a domain-set size (SLM-nopt has no budget)."""
    return 0.0 if method in NO_PRETRAINING else math.log(B / model["B0"]), math.log(D / model["D0"])


def _target_slope_parts(model: dict, du: float, dv: float) -> list[tuple[float, float]]:
    """The variance (and its dof) a new domain's own slopes add along (du, dv) from the
    fit's centre, or between two predictions: the study targets' spread of e_t and f_t,
    a new domain's as wide, around their mean (itself known from T targets)."""
    spread = model.get("target_slope_var") or {}
    T = len(model["targets"])
    var = sum(d * d * spread.get(kind, 0.0) for kind, d in (("tu", du), ("tv", dv))) * (1 + 1 / T)
    return [(var, T - 1)] if var > 0 else []


def _row(model: dict, method: str, B: float, D: float, target: str | None = None,
         features: dict | None = None) -> np.ndarray:
    """The design row of a cell of `method` at (B, D) on `target`, or on a new domain
    (the targets' mean level) of the domain `features` given (fit.DOMAIN_FEATURES by
    name; one not given: the targets' mean)."""
    u, v = _uv(model, method, B, D)
    values = {"b": 1.0, "u": u, "v": v, "uv": u * v}
    for name, centre in model["domain_features"].items():
        value = model["features"][target][name] if target is not None else (features or {}).get(name)
        values[DOMAIN_FEATURES[name][0]] = 0.0 if value is None else value - centre
    targets = model["targets"]
    x = np.zeros(len(model["columns"]))
    for i, (kind, name) in enumerate(model["columns"]):
        if kind == "a":
            x[i] = (1.0 if name == target else 0.0) if target else 1.0 / len(targets)
        elif kind in TARGET_SLOPES:  # effect-coded (fit._design); a new domain: the mean slope, 0 here
            term = values[TARGET_SLOPES[kind]]
            x[i] = term if name == target else -term if target is not None and target == targets[-1] else 0.0
        elif name == method:
            x[i] = values[kind]
    return x


def predict(model: dict, method: str, B: float, D: float, floor: float | None = None, target: str | None = None,
            bytes_per_token: float | None = None, features: dict | None = None) -> dict:
    """The method's bits per byte and perplexity after specialization at the generic
    budget B (FLOPs) with D domain tokens, each with its 90% prediction interval (None
    where the fit cannot measure a spread).

    Of which domain:
    - `target`: one of the study's, at its fitted level;
    - `floor`: a new domain, at the level its xz -9e bits per byte implies (the study
      targets' mean of level - floor, scattering as theirs did), its perplexity at
      `bytes_per_token` where it was tokenized, else at the targets' mean and spread; its
      cluster histogram `features` (entropy, KL to the generic mix) move the clustered
      methods (fit.CLUSTERED) where the fit has their terms;
    - neither: the study's targets on average (their macro perplexity, as the study
      reports it), the level and scatter averaged over them."""
    B, D, notes = held(model, method, B, D)
    theta, cov, s2, targets = np.array(model["theta"]), np.array(model["cov"]), model["s2"], model["targets"]
    if floor is None and target is None:
        out = {"method": method, "B": B, "D": D, "notes": notes, **_macro(model, method, B, D)}
        if out["fit_bpb"] < 0:
            notes.append(f"the fit runs below 0 bits per byte here ({out['fit_bpb']:+.3f}): cut at 0")
        return out
    T = len(targets)
    features = _held_features(model, features, notes) if target is None else None
    x = _row(model, method, B, D, target, features)
    bpb = float(x @ theta)
    parts = [(float(x @ cov @ x) + s2, model["dof"])]
    if target is None:  # a new domain
        if model["anchored"]:
            bpb += floor - sum(model["floors"].values()) / T
        else:
            notes.append("the fit has no floors: the domain's level is the study targets' mean")
        # its level lies as far from the targets' mean (itself known from T of them) as theirs did
        spread = model["offset_var"] if model["anchored"] else _level_var(model)
        parts.append((spread * (1 + 1 / T), T - 1) if spread is not None else (math.nan, 1))
        parts += _target_slope_parts(model, *_uv(model, method, B, D))
        # a feature not measured: the clustered method's slope in it adds the targets' spread of it
        parts += _feature_parts(model, _slopes(model, method), features)
    var = sum(v for v, _ in parts)
    half = None if math.isnan(var) else t_quantile(satterthwaite(parts), LEVEL) * math.sqrt(var)
    if bpb < 0:  # the study's gains, taken whole by a domain whose level sits lower
        notes.append(f"the fit runs below 0 bits per byte here ({bpb:+.3f}): cut at 0")
    # `fit_bpb`, uncut, orders methods (two cut at 0 are not tied) and centres the intervals
    out = {"method": method, "B": B, "D": D, "notes": notes, "bpb": max(bpb, 0.0), "fit_bpb": bpb,
           "bpb_interval": None if half is None else _nonnegative(bpb, half)}
    if target is not None:  # a study target's tokenization is known
        bytes_per_token = model["bytes_per_token_by_target"][target]
    known = bytes_per_token is not None
    bpt = bytes_per_token if known else model["bytes_per_token"]
    out["ppl"] = 2.0 ** (out["bpb"] * bpt)
    out["ppl_interval"] = None
    if half is not None and (known or model["bytes_per_token_var"] is not None):
        # ln ppl = ln 2 x bpb x bytes per token: its variance to first order (delta method),
        # an untokenized domain's bytes per token as uncertain as the targets' scatter says
        ln2 = math.log(2.0)
        ppl_parts = [((ln2 * bpt) ** 2 * v, d) for v, d in parts]
        if not known:
            ppl_parts.append(((ln2 * bpb) ** 2 * model["bytes_per_token_var"] * (1 + 1 / T), T - 1))
        ln_half = t_quantile(satterthwaite(ppl_parts), LEVEL) * math.sqrt(sum(v for v, _ in ppl_parts))
        # cut at 1, as bits per byte at 0: no model predicts a token likelier than certain
        out["ppl_interval"] = [max(math.exp(ln2 * bpb * bpt + sign * ln_half), 1.0) for sign in (-1, 1)]
    return out


def _nonnegative(mean: float, half: float) -> list[float]:
    """mean +- half, cut at 0 (no text codes in fewer than 0 bits)."""
    lo = max(mean - half, 0.0)
    return [lo, max(mean + half, lo)]


def _slopes(model: dict, method: str) -> dict:
    """The method's fitted slopes in the domain features, by name (none: 0)."""
    theta = dict(zip(map(tuple, model["columns"]), model["theta"]))
    return {name: theta.get((DOMAIN_FEATURES[name][0], method), 0.0) for name in model["domain_features"]}


def _feature_parts(model: dict, slopes: dict, features: dict | None) -> list[tuple[float, float]]:
    """The variance (and its dof) the domain features not given add through their slopes:
    the targets' spread of what those features moved them by, together (the entropy and
    the KL to the generic mix move together, KL = cross-entropy - entropy), a new domain's
    as wide."""
    unmeasured = {name: s for name, s in slopes.items() if s and (features or {}).get(name) is None}
    if not unmeasured:
        return []
    T = len(model["targets"])
    moved = [sum(s * model["features"][t][name] for name, s in unmeasured.items()) for t in model["targets"]]
    return [(float(np.var(moved, ddof=1)) * (1 + 1 / T), T - 1)]


def _held_features(model: dict, features: dict | None, notes: list[str]) -> dict | None:
    """A domain's features, each fitted one within the targets' measured range (its slope
    is not followed beyond it), and the notes where one was held."""
    if not features:
        return features
    out = dict(features)
    for name in model["domain_features"]:
        if out.get(name) is None:
            continue
        values = [model["features"][t][name] for t in model["targets"]]
        inside = min(max(out[name], min(values)), max(values))
        if inside != out[name]:
            notes.append(f"{FEATURE_NAMES[name]} held at {inside:.2f} nats: the targets' measured range")
        out[name] = inside
    return out


def _macro(model: dict, method: str, B: float, D: float) -> dict:
    """Mean bits per byte and macro perplexity (exp of the mean per-token NLL) over the
    study's targets, each at its own level and tokenization; the intervals from the fit
    and the scatter of one new cell per target."""
    theta, cov, s2, targets = np.array(model["theta"]), np.array(model["cov"]), model["s2"], model["targets"]
    T, t = len(targets), t_quantile(model["dof"], LEVEL)
    rows = [_row(model, method, B, D, target) for target in targets]
    out = {}
    for name, weights in (("bpb", [1 / T] * T),
                          ("ln_ppl", [math.log(2) * model["bytes_per_token_by_target"][g] / T for g in targets])):
        x = sum(w * r for w, r in zip(weights, rows))
        mean = float(x @ theta)
        half = t * math.sqrt(float(x @ cov @ x) + s2 * sum(w * w for w in weights))
        out[name] = (mean, _nonnegative(mean, half) if name == "bpb" else [mean - half, mean + half])
    (bpb, bpb_interval), (ln_ppl, ln_interval) = out["bpb"], out["ln_ppl"]
    return {"bpb": max(bpb, 0.0), "fit_bpb": bpb, "bpb_interval": bpb_interval, "ppl": max(math.exp(ln_ppl), 1.0),
            "ppl_interval": [max(math.exp(v), 1.0) for v in ln_interval], "macro": targets}


def _level_var(model: dict) -> float | None:
    levels = list(model["levels"].values())
    return float(np.var(levels, ddof=1)) if len(levels) > 1 else None


def difference(model: dict, first: str, second: str, B1: float, B2: float, D: float,
               features: dict | None = None, macro: bool = False) -> dict:
    """bpb(first at B1) - bpb(second at B2) on the same domain (of cluster histogram
    `features`, or unmeasured), with its 90% interval: the domain's level cancels; two
    cells' scatter does not (`macro`: two means over the study's targets, each of T
    cells)."""
    notes: list[str] = []
    features = None if macro else _held_features(model, features, notes)
    at = [held(model, first, B1, D)[:2], held(model, second, B2, D)[:2]]
    x = _row(model, first, *at[0], features=features) - _row(model, second, *at[1], features=features)
    theta, cov = np.array(model["theta"]), np.array(model["cov"])
    mean = float(x @ theta)
    parts = [(float(x @ cov @ x) + 2 * model["s2"] / (len(model["targets"]) if macro else 1), model["dof"])]
    if not macro:  # a new domain's own slopes: they cancel only where the two are at the same (u, v)
        (u1, v1), (u2, v2) = _uv(model, first, *at[0]), _uv(model, second, *at[1])
        parts += _target_slope_parts(model, u1 - u2, v1 - v2)
    if not macro:
        own, other = _slopes(model, first), _slopes(model, second)
        parts += _feature_parts(model, {name: own[name] - other[name] for name in own}, features)
    half = t_quantile(satterthwaite(parts), LEVEL) * math.sqrt(sum(v for v, _ in parts))
    return {"mean": mean, "interval": [mean - half, mean + half]}


def costs(model: dict, method: str, B: float, D: float) -> dict:
    """The method's shared and per-domain FLOPs at budget B (FLOPs) and D domain tokens,
    and seconds on the study's machine. Pre-training scales with B exactly, in seconds at
    its measured FLOP/s; the rest (fine-tuning until early stopping, a clustering, a
    selection) follows its fits (FLOPs and seconds apart), held along a budget never varied.
    Fine-tuning is bound by its steps (train.jobs.FINETUNE_MAX_STEPS), so the rest costs
    no more than the method's cells that ran to that bound did (from a weaker base or on
    more data it runs no more steps), and along the domain-set size it is held at the
    largest set measured rather than followed along a power law to steps that never run.
    A method measured at one size only grows as SLM does from its own size (the same
    fine-tuning until early stopping, to the same bound): quality held at a smaller set
    must not come with that set's cost, which would make more domain data look cheaper to
    use than it is."""
    spec, ref = model["methods"][method], model["methods"][REFERENCE]
    u = math.log(B / model["B0"])

    def grown(of: dict, part: str, name: str, size: float) -> float:
        """`of`'s rest at `size` tokens along its own slope (none: held), within its bound."""
        fit = of[part]
        value = fit[f"{name}0"] + fit.get(f"{name}u", 0.0) * u + fit.get(f"{name}v", 0.0) * math.log(
            min(size, of["D"][1]) / model["D0"])
        return min(math.exp(value), fit.get(f"{name}_cap", math.inf))

    def rest(part: str, name: str) -> float:
        if f"{name}0" not in spec[part]:
            return 0.0
        own = grown(spec, part, name, D)
        if f"{name}v" in spec[part] or f"{name}v" not in ref[part]:
            return own
        return own * grown(ref, part, name, D) / grown(ref, part, name, spec["D"][0])  # SLM's growth from its size

    out = {}
    for part in ("shared", "per_domain"):
        fit = spec[part]
        pretraining = fit["pretraining_ratio"] * B
        out[part] = pretraining + rest(part, "c")
        rate = fit.get("pretraining_flops_per_second")
        out[part + "_seconds"] = (pretraining / rate if rate else 0.0) + rest(part, "s")
    return out
