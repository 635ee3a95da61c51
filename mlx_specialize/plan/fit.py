"""The planner's model: each method's quality and costs as functions of the budgets,
fitted on a study's measured cells (`mlxspec study` results lines).

Quality, in bits per byte of the domain's test text after specialization (tokenizer-free,
so domains compare), one least-squares fit over every cell of every method:

    bpb(method m, target t, budget B, domain tokens D)
        = a_t + e_t u + f_t v + b_m + g_m u + d_m v + z_m u v + noise,
    u = ln(B / B0), v = ln(D / D0)

- a_t: the target's level; for a domain the study never saw it is predicted from the
  domain's xz -9e bits per byte (the protocol's floor): a = floor + the study targets' mean
  of (a_t - floor_t), with their spread as its uncertainty; without a floor, the targets'
  mean level and spread. The level is shared by the methods, so it widens every method's
  interval but not the comparison between two methods.
- e_t, f_t: how much more than the study targets' mean a target gains from budget and
  domain data, whatever the method (a repetitive domain gains from more of its own data
  sooner); they sum to 0 over the targets (effect coding), so g_m and d_m are the mean
  slopes. A new domain's are unknown: its prediction takes the mean slopes, and the
  targets' spread of e_t and f_t (`target_slope_var`) widens its interval with the
  distance from B0 and D0. Shared by the methods, they cancel from a comparison of two
  methods at the same budget and size, which without them would carry them as noise.
- b_m, g_m, d_m, z_m: the method's offset and its slopes in log budget and log domain
  size (the scaling-law literature's power laws, in the log-loss regime the study
  measured), each fitted only where the method's cells vary along it; the reference
  method (SLM, `finetune`) has no offset. SLM-nopt has no generic pre-training: no u.
- noise: the cells' scatter around the fit: within a method's cells on one target (seeds,
  budgets off the fit) and between targets (what a method gains on one target more than
  on another), two variance components (`_variance`).

Perplexity follows from bits per byte and the domain's bytes per token (the study
targets' mean, with their spread: a domain's tokenization is not known before it is
tokenized). Costs: per method, its pre-training at a measured ratio to B, and ln of the
rest of its shared and its per-domain part linear in u and v in the same way (SLM-is pays
its pre-training per domain, so its per-domain cost grows with B); in FLOPs and, at each
part's measured FLOP/s, in time (`_cost_fit`).

Everything here is plain numpy on the results' numbers; the fitted model is a JSON-able
dict (`fit_results`), saved with the package so `mlxspec plan` answers offline.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import SpecializeError
# SLM: the method the others' offsets are measured from, as the study's tables set the others against it
from ..study.report import REFERENCE_METHOD as REFERENCE, capped_training, flushed

NO_PRETRAINING = ("nopt",)  # methods whose quality does not depend on the generic budget
SLM_PRETRAINING = (REFERENCE, "is")  # methods whose pre-training phase trains SLM's model and nothing else
# the methods built on the generic clusters, whose gain the paper finds vanishing on domains
# whose cluster histogram has high entropy: with enough targets, each gets a slope in it
CLUSTERED = ("is", "mix", "pn", "soup")
# a domain's features (`target_features`) the clustered methods get slopes in: the design's
# column kind, and the targets needed. A method's offsets on T targets leave T - 1 degrees
# of freedom beyond its mean offset; each slope takes one, and two must be left to tell it
# from the method x target scatter: the entropy from 4 targets, the KL to the generic mix too from 5
DOMAIN_FEATURES = {"entropy": ("h", 4), "kl_generic": ("k", 5)}
ENTROPY_TARGETS = DOMAIN_FEATURES["entropy"][1]
# the columns constant over a method's cells on one target: fitted on the (method, target) clusters
LEVEL_KINDS = ("a", "b", *(kind for kind, _ in DOMAIN_FEATURES.values()))
TARGET_SLOPES = {"tu": "u", "tv": "v"}  # the targets' own slopes in the budget and the domain-set size
# the fitted model's layout; `plan` refuses another (2: seconds fitted apart from FLOPs; 3: the targets'
# slopes; 4: slopes in the KL to the generic mix beside the entropy)
FORMAT = 4


def cell_rows(rows: list[dict], complete_only: bool = True) -> list[dict]:
    """The study's lines (`study.report.load_lines`) as the fit's rows: each method's
    default recipe only (a variant, `llm-lora lr=0.002`, is a choice the study made on
    the valid splits, not a method the planner offers), each measurement once, and (with
    `complete_only`) only where its method, budget, domain set and seed are measured on
    every target of the lines: a study under way has budgets that one target reached
    first, and a slope fitted on one target's cell would carry that target's own gain as
    the method's, with no scatter to warn of it."""
    if complete_only:
        targets = {r["target"] for r in rows}
        covered = defaultdict(set)
        for r in rows:
            covered[_group(r)].add(r["target"])
        complete = [r for r in rows if covered[_group(r)] == targets]
        if rows and not complete:
            raise SpecializeError(f"no method, budget and domain set is measured on every target yet "
                                  f"({', '.join(sorted(targets))}; results files refitted together must share "
                                  "their targets)")
        rows = complete
    out, seen = [], set()
    for r in rows:
        # a cell asking for more domain tokens than the split holds is the whole split's
        # cell (`same_as`): one measurement, counted once
        key = (r["method"], r["target"], r["seed"], r["budget"], r["domain_tokens_used"])
        if " " in r["method"] or key in seen:
            continue
        seen.add(key)
        bytes_per_token = math.log2(r["ppl_after"]) / r["bpb_after"]
        paid = {part: "pretrain" in r["costs"][part]["phases"] for part in ("shared", "per_domain")}
        phase = r["phases"].get("pretrain", {})
        # what the budget buys: a projected network's labelling of its valid windows (one
        # embedding pass, whatever the budget) is fitted with the rest, not as B x a ratio
        pretraining = {part: float(phase["flops"]) - float(phase.get("label_flops", 0.0)) if paid[part] else 0.0
                       for part in paid}
        pretraining_s = {part: float(phase.get("seconds") or 0.0) - float(phase.get("label_seconds", 0.0))
                         if paid[part] else 0.0 for part in paid}
        out.append({"method": r["method"], "target": r["target"], "seed": r["seed"], "B": float(r["budget_flops"]),
                    "budget": r["budget"], "D": float(r["domain_tokens_used"]), "bpb": float(r["bpb_after"]),
                    "bytes_per_token": bytes_per_token, "shared": float(r["costs"]["shared"]["flops"]),
                    "per_domain": float(r["costs"]["per_domain"]["flops"]),
                    "shared_pretraining": pretraining["shared"], "per_domain_pretraining": pretraining["per_domain"],
                    "shared_pretraining_s": pretraining_s["shared"],
                    "per_domain_pretraining_s": pretraining_s["per_domain"],
                    "shared_s": float(r["costs"]["shared"]["seconds"]),
                    "per_domain_s": float(r["costs"]["per_domain"]["seconds"]),
                    "params": int(r["costs"]["inference"]["params"]),
                    "inference_flops": float(r["costs"]["inference"]["flops_per_token"]),
                    "gen_tok_s": float(r["costs"]["inference"]["gen_tok_s"]), "preset": r["preset"],
                    "capped": capped_training(r), **_ran_flushed(r)})
    if not out:
        raise SpecializeError("the results hold no cell of a method's default recipe to fit the planner on")
    return out


def _ran_flushed(line: dict) -> dict:
    """Which of a line's timed parts ran in its own flushed process: {part}_flushed for
    each part's phases besides pre-training, pretraining_flushed for the pre-training. A
    phase taken from the cache keeps its first run's seconds, and SLM-d's pre-training
    phase holds its teacher's (the LLM's, from the cache where the LLM cells made it)."""
    ran = flushed(line)
    phases = line["phases"]
    out = {part + "_flushed": ran and not any(phases.get(name, {}).get("cached")
                                              for name in line["costs"][part]["phases"] if name != "pretrain")
           for part in ("shared", "per_domain")}
    pretrain = phases.get("pretrain", {})
    out["pretraining_flushed"] = ran and not pretrain.get("cached") and "teacher" not in pretrain
    return out


def _group(line: dict) -> tuple:
    return line["method"], line["budget"], line["domain_tokens"], line["seed"]


def target_features(lines: list[dict]) -> dict:
    """Each target's cluster histogram entropy and KL divergence to the generic mix (nats),
    as its SLM-is cells' selections measured them, on the largest domain set measured on
    every target (a histogram drawn from more windows has a larger entropy: a study under
    way, with one target's larger set measured first, would compare unlike estimates);
    where no size is measured on every target, each target's largest."""
    by_key = {r["cell"]: r for r in lines if "cell" in r}
    sizes = defaultdict(dict)  # domain set asked for (None: the whole split) -> target -> features
    for r in lines:
        measured = by_key.get(r["same_as"], {}) if "same_as" in r else r  # a size that is the whole split
        select = measured.get("phases", {}).get("select", {})
        if r.get("method") == "is" and "entropy_domain" in select:
            sizes[r.get("domain_tokens")][r["target"]] = {
                "entropy": float(select["entropy_domain"]), "kl_generic": float(select["kl_generic"]),
                "k": int(select["k"]), "domain_tokens": measured.get("domain_tokens_used")}
    order = sorted(sizes, key=lambda d: math.inf if d is None else d)  # the whole split is the largest
    targets = {r["target"] for r in lines}
    complete = [d for d in order if set(sizes[d]) == targets]
    if complete:
        return sizes[complete[-1]]
    found = {}
    for d in order:
        found.update(sizes[d])
    return found


def _terms(rows: list[dict], method: str) -> list[str]:
    """Which of the method's slopes its cells can fit: u and v where they vary, u v where
    its (u, v) points are not all on two lines (an L-shaped grid, as a study fills: every
    budget at one size, every size at one budget, makes u v a sum of 1, u and v there)."""
    points = {(r["u"], r["v"]) for r in rows if r["method"] == method}
    terms = [t for t, i in (("u", 0), ("v", 1)) if len({p[i] for p in points}) > 1]
    if len(terms) == 2 and np.linalg.matrix_rank(np.array([[1.0, u, v, u * v] for u, v in points])) == 4:
        terms.append("uv")
    return terms


def _columns(rows: list[dict], methods: list[str], targets: list[str], needed: dict) -> list[tuple]:
    """The design's columns; `needed`: the targets each fitted domain feature needs."""
    cols = [("a", t) for t in targets] + [("b", m) for m in methods if m != REFERENCE]
    # the targets' own slopes, effect-coded: one column per target but the last (`_design`)
    cols += [(kind, t) for kind in TARGET_SLOPES for t in targets[:-1]]
    for m in methods:
        cols += [(term, m) for term in _terms(rows, m)]
        measured_on = len({r["target"] for r in rows if r["method"] == m})
        cols += [(DOMAIN_FEATURES[name][0], m) for name, n in needed.items() if m in CLUSTERED and measured_on >= n]
    return cols


def _independent(X: np.ndarray) -> list[int]:
    """The columns kept, in order, each only where it adds to the rank of those before:
    the fit then has one solution, and nothing is predicted along a direction the cells
    never measured (a method on one target only, say)."""
    keep: list[int] = []
    for j in range(X.shape[1]):
        if np.linalg.matrix_rank(X[:, keep + [j]]) == len(keep) + 1:
            keep.append(j)
    return keep


def _variance(X: np.ndarray, residual: np.ndarray, clusters: list, level_columns: int) -> tuple[float, np.ndarray,
                                                                                                 int, dict]:
    """(variance of a new cell, covariance of the coefficients, degrees of freedom, the
    components). A method's cells on one target share what it gains on that target more
    than on others: their residuals are correlated. Within a (method, target) cluster the
    cells scatter by sw2 (seeds, budgets off the fit); the clusters' means by sb2 more
    (one-way ANOVA on the residuals). The coefficients' covariance is the sandwich
    (X'X)^-1 X'VX (X'X)^-1 with V = sw2 I + sb2 (same cluster); the degrees of freedom
    are the clusters' (less the `level_columns` fitted on them: the targets' levels, the
    methods' offsets) where sb2 > 0, as the clusters are the independent units."""
    n, p = X.shape
    index = defaultdict(list)
    for i, c in enumerate(clusters):
        index[c].append(i)
    C = len(index)
    within = sum(float(((residual[ix] - residual[ix].mean()) ** 2).sum()) for ix in index.values())
    between = sum(len(ix) * float(residual[ix].mean()) ** 2 for ix in index.values())
    sw2, sb2, dof = (within + between) / (n - p), 0.0, n - p  # all cells independent
    between_dof = C - level_columns
    if n - C >= p - level_columns + 1 and between_dof >= 1:
        sw2 = within / (n - C - (p - level_columns))  # the slopes are fitted within the clusters
        n_bar = (n - sum(len(ix) ** 2 for ix in index.values()) / n) / max(C - 1, 1)
        sb2 = (between / between_dof - sw2) / max(n_bar, 1.0)
        if sb2 > 0:
            dof = between_dof
        else:  # no (method, target) component: the cells are independent, pooled as such
            sw2, sb2 = (within + between) / (n - p), 0.0
    V = sw2 * np.eye(n)
    for ix in index.values():
        V[np.ix_(ix, ix)] += sb2
    inverse = np.linalg.inv(X.T @ X)
    cov = inverse @ X.T @ V @ X @ inverse
    return sw2 + sb2, cov, int(dof), {"within": sw2, "method_target": sb2}


def _design(rows: list[dict], cols: list[tuple], last_target: str | None = None) -> np.ndarray:
    """The cells' rows of the design; the targets' slopes effect-coded: a target's own
    column holds its u (v), `last_target`'s row minus u (v) in every target's column."""
    X = np.zeros((len(rows), len(cols)))
    index = {c: i for i, c in enumerate(cols)}
    coded = {kind: [i for i, (k, _) in enumerate(cols) if k == kind] for kind in TARGET_SLOPES}
    for i, r in enumerate(rows):
        if ("a", r["target"]) in index:
            X[i, index[("a", r["target"])]] = 1.0
        for kind, term in TARGET_SLOPES.items():
            if (kind, r["target"]) in index:
                X[i, index[(kind, r["target"])]] = r[term]
            elif r["target"] == last_target:
                X[i, coded[kind]] = -r[term]
        values = {"b": 1.0, "u": r["u"], "v": r["v"], "uv": r["u"] * r["v"],
                  **{kind: r.get(kind, 0.0) for kind, _ in DOMAIN_FEATURES.values()}}
        for key, value in values.items():
            if (key, r["method"]) in index:
                X[i, index[(key, r["method"])]] = value
    return X


def _target_slopes(cols: list[tuple], theta: np.ndarray, targets: list[str]) -> dict:
    """Each target's e_t (tu) and f_t (tv) where the fit has them all (the last target's:
    minus the others' sum), by kind."""
    out = {}
    for kind in TARGET_SLOPES:
        own = {t: float(theta[cols.index((kind, t))]) for t in targets[:-1] if (kind, t) in cols}
        if len(targets) > 1 and len(own) == len(targets) - 1:
            out[kind] = {**own, targets[-1]: -sum(own.values())}
    return out


def _cost_fit(rows: list[dict], part: str, flushed_rate: float = 1.0) -> dict:
    """One method's shared or per-domain FLOPs and seconds as functions of the budgets:
    its pre-training is the budget's FLOPs times a measured ratio (validation passes, a
    teacher's pre-training), taking seconds at its measured FLOP/s; the rest (fine-tuning
    until early stopping, a clustering, a selection) as ln(rest) = c0 + cu u + cv v in
    FLOPs, each slope only where the method's cells vary along it, held at the measured
    value where they do not; in seconds, the same line shifted by the part's own measured
    FLOP/s (s0 = c0 - ln rate, su = cu, sv = cv): a clustering's few FLOPs take far longer
    than training's at its FLOP/s, but a slope fitted to seconds alone would fit the
    machine's noise as a trend (the same clustering 18 s at one budget, 45 s at another).
    Where a cell's training ran to its step bound, the largest such rest is kept
    ({name}_cap): fine-tuning from a weaker base or on more data runs no more steps.
    Seconds are the study machine's with subnormals kept (`fit_results`): where the
    method's cells ran a phase with them flushed (`_ran_flushed`), that phase's FLOP/s is
    taken from those runs and scaled by `flushed_rate` (kept over flushed FLOP/s, of
    SLM's pre-training), else from all cells as measured:
    {pretraining,rest}_subnormals say which."""
    ratio = float(np.mean([r[part + "_pretraining"] / r["B"] for r in rows]))
    fit = {"pretraining_ratio": ratio}
    ran = [r for r in rows if r["pretraining_flushed"] and r[part + "_pretraining_s"] > 0]
    flops, seconds = (sum(r[part + "_pretraining" + unit] for r in ran or rows) for unit in ("", "_s"))
    if flops > 0 and seconds > 0:
        fit["pretraining_flops_per_second"] = flops / seconds * (flushed_rate if ran else 1.0)
        fit["pretraining_subnormals"] = "flushed" if ran else "kept"
    rest = {name: [r[part + unit] - r[part + "_pretraining" + unit] for r in rows]
            for name, unit in (("c", ""), ("s", "_s"))}
    fit.update(_log_linear(rows, rest["c"], "c"))
    pairs = [(r[part + "_flushed"], c, s) for r, c, s in zip(rows, rest["c"], rest["s"]) if c > 0 and s > 0]
    fresh = any(f for f, _, _ in pairs)
    timed = [(c, s) for f, c, s in pairs if f or not fresh]
    if timed:
        fit["rest_subnormals"] = "flushed" if fresh else "kept"
        # the rest's FLOP/s, geometric mean (flushed runs' on the kept scale)
        log_rate = float(np.mean([math.log(c / s) for c, s in timed])) + (math.log(flushed_rate) if fresh else 0.0)
        fit.update({"s" + key[1:]: value - (log_rate if key == "c0" else 0.0)
                    for key, value in list(fit.items()) if key[0] == "c" and key[1:] in ("0", "u", "v")})
    else:  # seconds with no FLOPs beside them (a line that timed a phase it did not count): on their own
        fit.update(_log_linear(rows, rest["s"], "s"))
    for name in ("c", "s"):
        # what a training run to its step bound cost, where one did: the rest can cost no more
        capped = [value for r, value in zip(rows, rest[name]) if r["capped"] and value > 0]
        if capped:
            fit[f"{name}_cap"] = max(capped)
    if timed and fresh and "c_cap" in fit:  # in seconds, those FLOPs at the flushed runs' (scaled) FLOP/s
        fit["s_cap"] = fit["c_cap"] / math.exp(log_rate)
    return fit


def _log_linear(rows: list[dict], values: list[float], name: str) -> dict:
    """ln(value) = {name}0 + {name}u u + {name}v v over the rows whose value is positive
    (a part with nothing besides pre-training has none: {})."""
    kept = [(r, v) for r, v in zip(rows, values) if v > 0]
    if not kept:
        return {}
    terms = [t for t in ("u", "v") if len({r[t] for r, _ in kept}) > 1]
    X = np.column_stack([np.ones(len(kept))] + [[r[t] for r, _ in kept] for t in terms])
    coef = np.linalg.lstsq(X, np.log([v for _, v in kept]), rcond=None)[0]
    return {f"{name}0": float(coef[0]), **{f"{name}{t}": float(c) for t, c in zip(terms, coef[1:])}}


def fit_results(rows: list[dict], floors: dict | None = None, source: str = "",
                feature_targets: dict | None = None) -> dict:
    """The planner's model, fitted on a study's result lines (`load_lines`); `floors`:
    the targets' xz bits per byte (the spec's [floors]) to anchor a new domain's level;
    the clustered methods get slopes in each domain feature from as many targets on as
    DOMAIN_FEATURES says, or `feature_targets` (by name; fewer, to see what such slopes
    would measure: benchmarks/plan_loto.py)."""
    lines, rows = rows, [dict(r) for r in cell_rows(rows)]
    pending = len(cell_rows(lines, complete_only=False)) - len(rows)
    B0 = math.exp(sum(math.log(r["B"]) for r in rows) / len(rows))
    D0 = math.exp(sum(math.log(r["D"]) for r in rows) / len(rows))
    for r in rows:
        r["u"] = 0.0 if r["method"] in NO_PRETRAINING else math.log(r["B"] / B0)
        r["v"] = math.log(r["D"] / D0)
    methods = sorted({r["method"] for r in rows})
    if REFERENCE not in methods:
        raise SpecializeError(f"the results hold no cell of SLM (`{REFERENCE}`), the planner's reference method")
    targets = sorted({r["target"] for r in rows})
    features = target_features(lines)
    needed = {name: n for name, (_, n) in DOMAIN_FEATURES.items()} | (feature_targets or {})
    needed = {name: n for name, n in needed.items() if len(targets) >= n and all(t in features for t in targets)}
    # each fitted feature centred on the targets' mean, as u and v are on B0 and D0
    centres = {name: sum(features[t][name] for t in targets) / len(targets) for name in needed}
    for r in rows:
        for name, centre in centres.items():
            r[DOMAIN_FEATURES[name][0]] = features[r["target"]][name] - centre
    cols = _columns(rows, methods, targets, needed)
    X = _design(rows, cols, targets[-1])
    kept = _independent(X)
    cols, X, y = [cols[j] for j in kept], X[:, kept], np.array([r["bpb"] for r in rows])
    if len(rows) - len(cols) < 1:
        raise SpecializeError(f"{len(rows)} cells fit {len(cols)} parameters exactly: the planner needs more cells "
                              "(more targets, seeds or budgets) to measure its own error")
    theta = np.linalg.lstsq(X, y, rcond=None)[0]
    residual = y - X @ theta
    s2, cov, dof, components = _variance(X, residual, [(r["method"], r["target"]) for r in rows],
                                         sum(kind in LEVEL_KINDS for kind, _ in cols))

    floors = {t: float(floors[t]) for t in targets if floors and t in floors}
    anchored = len(floors) == len(targets)
    levels = {t: float(theta[cols.index(("a", t))]) for t in targets}
    slopes = _target_slopes(cols, theta, targets)
    offsets = [levels[t] - (floors[t] if anchored else 0.0) for t in targets]
    bpt = defaultdict(list)
    for r in rows:
        bpt[r["target"]].append(r["bytes_per_token"])
    per_target_bpt = [sum(v) / len(v) for v in bpt.values()]

    # the study machine's pre-training speed, for time budgets (calibrate.py): SLM's model's
    # (its generic pre-training, or SLM-is's on the selected windows), run in the cell, not
    # taken from the cache, with subnormals kept as the study's first cells ran. Every
    # method's seconds are on that kept scale: a phase measured with them flushed has its
    # FLOP/s scaled by SLM's pre-training's kept over flushed FLOP/s, at the budgets
    # measured both ways on one CPU (`flushed_rate`, `_cost_fit`), so that a calibration
    # against this reference gives back the flushed run's speed, and a kept one's loses
    # SLM's slowdown. Where none was, the two are taken as equal (1): a trained SLM's step
    # took as long with subnormals kept as flushed (BENCHMARKS.md), and the flushed runs are the truer.
    speed = _pretraining_speed(lines)
    reference_rate = _rate(speed["kept"]) or _rate(speed["flushed"])
    both = set(speed["kept"]) & set(speed["flushed"])
    flushed_rate = _rate(speed["kept"], both) / _rate(speed["flushed"], both) if both else 1.0
    model = {"format": FORMAT, "source": source, "cells": len(rows), "pending_cells": pending,
             "reference_flops_per_second": reference_rate,
             "reference_subnormals": "kept" if speed["kept"] else "flushed" if speed["flushed"] else None,
             "flushed_rate": flushed_rate, "flushed_rate_measured": bool(both),
             "targets": targets, "floors": floors, "anchored": anchored, "B0": B0, "D0": D0,
             # the fitted domain features (name: the targets' mean); a new domain's move the clustered methods
             "features": features, "domain_features": centres,
             "columns": [list(c) for c in cols], "theta": theta.tolist(), "cov": cov.tolist(), "s2": s2,
             "dof": dof, "variance_components": components,
             "levels": levels, "target_slopes": slopes,
             # a new domain's slopes scatter around the targets' mean as the targets' did
             "target_slope_var": {kind: float(np.var(list(e.values()), ddof=1)) for kind, e in slopes.items()},
             "offset_var": float(np.var(offsets, ddof=1)) if len(offsets) > 1 else None,
             "bytes_per_token": float(np.mean(per_target_bpt)),
             "bytes_per_token_by_target": {t: sum(v) / len(v) for t, v in bpt.items()},
             "bytes_per_token_var": float(np.var(per_target_bpt, ddof=1)) if len(per_target_bpt) > 1 else None,
             "methods": {}}
    for m in methods:
        own = [r for r in rows if r["method"] == m]
        model["methods"][m] = {
            "cells": len(own), "terms": [kind for kind, name in cols if name == m and kind in ("u", "v", "uv")],
            "budgets": sorted({r["budget"] for r in own}), "B": [min(r["B"] for r in own), max(r["B"] for r in own)],
            "D": [min(r["D"] for r in own), max(r["D"] for r in own)],
            "shared": _cost_fit(own, "shared", flushed_rate), "per_domain": _cost_fit(own, "per_domain", flushed_rate),
            "params": own[0]["params"], "inference_flops": own[0]["inference_flops"],
            "gen_tok_s": float(np.mean([r["gen_tok_s"] for r in own])), "preset": own[0]["preset"],
            "tokens_per_budget_flop": own[0]["budget"] / own[0]["B"]}
    return model


def _pretraining_speed(lines: list[dict]) -> dict:
    """SLM's model's pre-trainings run in their cells (not from the cache), by whether
    subnormals were flushed: {"kept"/"flushed": {(budget, CPU): [FLOPs, seconds]}} (the
    study may have run on several machines: a CPU's speed is not the flush's)."""
    speed = {"kept": defaultdict(lambda: [0.0, 0.0]), "flushed": defaultdict(lambda: [0.0, 0.0])}
    for r in lines:
        phase = r.get("phases", {}).get("pretrain", {})
        if r.get("method") in SLM_PRETRAINING and phase.get("cached") is False and phase.get("seconds"):
            total = speed["flushed" if flushed(r) else "kept"][r["budget"], r.get("machine", {}).get("cpu")]
            total[0] += float(phase["flops"])
            total[1] += float(phase["seconds"])
    return speed


def _rate(totals: dict, keys=None) -> float | None:
    """FLOPs over seconds of `_pretraining_speed`'s totals, summed over `keys` (all by
    default); None where there are none."""
    chosen = [v for k, v in totals.items() if keys is None or k in keys]
    return sum(f for f, _ in chosen) / sum(s for _, s in chosen) if chosen else None


def results_digest(paths) -> str:
    """A short hash of the results files' bytes: which measurements a fit came from."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


FITTED = Path(__file__).with_name("fitted.json")  # the package's: fitted on the standard-protocol study
TOKENIZER = Path(__file__).with_name("tokenizer.model")  # that study's tokenizer: a domain's tokens as it counted


def refit(results, spec=None) -> dict:
    """The model fitted on results files (`mlxspec study` lines), anchored on the
    spec's [floors] where it has them."""
    from ..study import spec_floors
    from ..study.report import load_lines

    paths = [Path(p) for p in results]
    for path in paths:
        if not path.is_file():
            raise SpecializeError(f"no results file at {path}")
    floors = spec_floors(spec) if spec else {}
    source = ", ".join(p.name for p in paths) + f" ({results_digest(paths)})"
    return fit_results(load_lines(paths), floors, source)


def save_fitted(model: dict, path) -> None:
    """The fitted model as JSON (sorted keys, so a refit of the same results is the same
    file), written whole."""
    from ..runtime.files import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(model, indent=1, sort_keys=True) + "\n").encode())


RESULTS_GIVEN = " (it reads like a study's results file: pass it with --results)"


def load_fitted(path=FITTED) -> dict:
    """A saved fitted model; the package's by default."""
    if not Path(path).is_file():
        raise SpecializeError(f"no fitted planner model at {path}" + (" (a folder)" if Path(path).is_dir() else ""))
    try:
        text = Path(path).read_text()
        model = json.loads(text)
    except (OSError, ValueError) as e:
        # JSON lines, one object each: a study's results, given where a fit was asked for
        lines = text.splitlines() if isinstance(e, json.JSONDecodeError) else []
        results = len(lines) > 1 and all(line.lstrip().startswith("{") for line in lines if line.strip())
        raise SpecializeError(f"cannot read the planner's fitted model {path}: {e}"
                              + (RESULTS_GIVEN if results else "")) from None
    if not isinstance(model, dict) or "format" not in model:
        raise SpecializeError(f"{path} is not a fitted planner model"
                              + (RESULTS_GIVEN if isinstance(model, dict) and "cell" in model else ""))
    if model["format"] != FORMAT:
        raise SpecializeError(f"{path} is a fitted planner model of format {model['format']}; this version reads "
                              f"format {FORMAT}: fit it again from its results (--results FILE... --spec SPEC "
                              "--save-fit)")
    return model
