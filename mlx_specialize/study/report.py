"""A study's tables, from its results file(s) alone: nothing is run (figures.py draws
its figures from the same macro table).

Per (method, budget, domain-set size, seed), the macro figures over the targets (only
where every target's cell is finished): test perplexity exp(mean over targets of the
per-token NLL), bits per byte (mean), costs (shared: the same for every target; per
domain: the targets' mean). Across seeds: mean and sample standard deviation.

Tables (markdown): macro perplexity per method and budget for each domain-set size; bits
per byte per target at the largest budget beside the spec's floors; the cost split; each
budget of SLM-is against the others at equal total cost C(N) for N = 1 and 3 domains;
with the spec, the cells it names that no line stands for yet.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from .. import ui
from ..costs import total_cost
from ..errors import SpecializeError
from ..stats import satterthwaite, t_quantile

# what a results line written before a field existed was measured with
LINE_DEFAULTS = {"recipe": 1, "tokenizer_sample": "leading"}

REFERENCE_METHOD = "finetune"  # SLM: what the other methods are set against
# methods that specialize SLM's own pre-trained model of the same seed (SLM-d's student):
# their seeds' noise is SLM's, so they are compared with it seed by seed; the others
# pre-train their own, and pairing would only spend degrees of freedom
SHARES_SLM_BASE = ("distill",)
ORDER = ["nopt", "finetune", "llm", "llm-lora", "distill", "is", "mix", "pn", "soup"]
LABEL = {"finetune": "SLM", "nopt": "SLM-nopt", "llm": "LLM", "llm-lora": "LLM + LoRA", "distill": "SLM-d",
         "is": "SLM-is", "mix": "SLM-mix", "pn": "SLM-pn", "soup": "Soup-of-Experts"}


def read_lines(paths) -> dict[str, dict]:
    """The results files' lines by cell key, as written (each file read once)."""
    from .run import read_results

    lines = {}
    for path in paths:
        if not Path(path).is_file():
            raise SpecializeError(f"no results file at {path}")
        lines.update(read_results(Path(path)))
    return lines


def load_lines(paths, lines: dict | None = None) -> list[dict]:
    """Every finished cell of the results files (or of their `lines`, read already),
    `same_as` lines resolved to their cell's figures under their own domain-set size."""
    paths = list(paths)
    lines = read_lines(paths) if lines is None else lines
    rows = []
    for line in lines.values():
        if "same_as" in line:
            if line["same_as"] in lines:
                rows.append({**lines[line["same_as"]], **{k: line[k] for k in ("cell", "domain_tokens")}})
        else:
            rows.append(dict(line))  # its method renamed below where a variant: not the line read
    if not rows:
        raise SpecializeError(f"{', '.join(map(str, paths))}: no finished cell")
    # a line of a method's earlier recipe (none recorded: its first) is not what the method
    # runs now, nor one of a later recipe (a newer version's): averaged with the current
    # recipe's, either would report neither
    current, other = [], defaultdict(int)
    for row in rows:
        recipe = row.get("recipe", LINE_DEFAULTS["recipe"])
        if recipe == _recipe(row["method"]):
            current.append(row)
        else:
            other[(row["method"], recipe)] += 1
    for later, why in ((False, "measured with a method's earlier recipe (run the study again to measure them "
                                "with its current one)"),
                       (True, "measured with a later recipe than this version runs (a newer mlx-specialize "
                              "reports them)")):
        left = {(m, r): n for (m, r), n in sorted(other.items()) if (r > _recipe(m)) == later}
        if left:
            ui.warn(f"left out, {why}: " + "; ".join(f"{n} line{'s' * (n > 1)} of {label(m)} (recipe {r}, this "
                                                     f"version's {_recipe(m)})" for (m, r), n in left.items()))
    rows = current
    if not rows:
        raise SpecializeError(f"{', '.join(map(str, paths))}: no finished cell of a method's current recipe")
    # a cell's options that not every cell of the study shares (an lr tried, a method's own k,
    # a tokenizer drawn otherwise) name its variant of the method, so cells with other
    # options are never averaged together
    pairs = [{(n, json.dumps(v)) for n, v in row.get("options", {}).items()}
             | {("tokenizer_sample", json.dumps(row.get("tokenizer_sample", LINE_DEFAULTS["tokenizer_sample"])))}
             for row in rows]
    common = set.intersection(*pairs)
    for row, own in zip(rows, pairs):
        extra = sorted(own - common)
        if extra:
            row["method"] += " " + ",".join(f"{n}={json.loads(v)}" for n, v in extra)
    return rows


def _recipe(method: str) -> int:
    """The recipe its method runs now (`Method.recipe`); 1 for a method this version lacks."""
    from ..methods import REGISTRY

    return getattr(REGISTRY.get(method), "recipe", 1)


def label(method: str) -> str:
    """The paper's name of a method, with the options that tell its variants apart."""
    base, _, variant = method.partition(" ")
    return LABEL.get(base, base) + (f" ({variant})" if variant else "")


def size_label(size) -> str:
    """Tokens as a short label: 100k, 1M, 12.5M, 1.2B, 3T (beyond, 1.2e+16); None (a whole
    train split) is "all"."""
    if size is None:
        return "all"
    size = float(f"{size:.3g}")  # rounded first: 999,999 is 1M, not 1e+03k
    if size >= 1e15:
        return f"{size:.3g}"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if size >= scale:
            return f"{size / scale:g}{suffix}"
    return f"{size:g}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def macro(rows: list[dict]) -> dict:
    """{(method, budget, size): {"ppl": (mean, std), "bpb": ..., "seeds": n, ...}} over
    the seeds whose every target finished; per seed first, then across seeds."""
    targets = sorted({r["target"] for r in rows})
    by_seed = defaultdict(dict)
    for r in rows:
        by_seed[(r["method"], r["budget"], r["domain_tokens"], r["seed"])][r["target"]] = r
    per_seed = defaultdict(dict)  # (method, budget, size) -> {seed: its macro figures}
    for (method, budget, size, seed), cells in by_seed.items():
        if sorted(cells) != targets:
            continue
        cs = list(cells.values())
        ln_ppl = sum(math.log(c["ppl_after"]) for c in cs) / len(cs)
        per_seed[(method, budget, size)][seed] = {
            "ppl": math.exp(ln_ppl), "ln_ppl": ln_ppl,
            "ppl_before": math.exp(sum(math.log(c["ppl_before"]) for c in cs) / len(cs)),
            "bpb": sum(c["bpb_after"] for c in cs) / len(cs),
            "shared": max(c["costs"]["shared"]["flops"] for c in cs),
            "per_domain": sum(c["costs"]["per_domain"]["flops"] for c in cs) / len(cs),
            "shared_s": max(c["costs"]["shared"]["seconds"] for c in cs),
            "per_domain_s": sum(c["costs"]["per_domain"]["seconds"] for c in cs) / len(cs),
            "inference": cs[0]["costs"]["inference"]["flops_per_token"],
            "gen_tok_s": sum(c["costs"]["inference"]["gen_tok_s"] for c in cs) / len(cs),
            "params": cs[0]["params"], "budget_flops": cs[0]["budget_flops"],
            "domain_tokens_used": sum(c["domain_tokens_used"] for c in cs) / len(cs)}
    out = {}
    for key, figures in per_seed.items():
        seeds = list(figures.values())
        out[key] = {name: _mean_std([s[name] for s in seeds]) for name in seeds[0]}
        out[key]["seeds"] = len(seeds)
        # each seed's own macro bits per byte, for comparisons seed by seed (`seed_differences`)
        out[key]["bpb_by_seed"] = {seed: s["bpb"] for seed, s in figures.items()}
    return out


def methods_in(table: dict) -> list[str]:
    """The methods of a `macro` table in the paper's order, each variant after its method."""
    present = {key[0] for key in table}
    rank = {m: i for i, m in enumerate(ORDER)}
    return sorted(present, key=lambda m: (rank.get(m.partition(" ")[0], len(ORDER)), m))


def _cell(stat: dict | None, name: str = "ppl", digits: int = 1) -> str:
    if stat is None:
        return "-"
    mean, std = stat[name]
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if stat["seeds"] > 1 else f"{mean:.{digits}f}"


def tables(rows: list[dict], floors: dict | None = None) -> str:
    """The study's tables, as markdown."""
    table = macro(rows)
    methods, budgets = methods_in(table), sorted({k[1] for k in table})
    sizes = sizes_in(table)
    out = []
    for size in sizes:
        out += [f"Macro test perplexity, domain set {size_label(size)} (mean ± std over seeds where more than one), "
                "per generic pre-training budget (tokens of the preset, and their training FLOPs)", "",
                "| method | " + " | ".join(f"{size_label(b)} tok ({_flops_of(table, b):.1e} FLOPs)" for b in budgets)
                + " |", "|---|" + "---:|" * len(budgets)]
        for m in methods:
            stats = [table.get((m, b, size)) for b in budgets]
            name = label(m)
            if m.partition(" ")[0] == "nopt":  # recorded at the smallest budget, it spends none: the same at each
                stats = [stats[0]] * len(budgets)
                name += " (no generic pre-training: the same cells at every budget)"
            if any(stats):
                out.append(f"| {name} | " + " | ".join(_cell(s) for s in stats) + " |")
        out.append("")
    top = budgets[-1]
    targets = sorted({r["target"] for r in rows})
    floors = floors or {}
    out += [f"Bits per byte at the largest budget ({size_label(top)} tokens), seed mean, per target", "",
            "| method | size | " + " | ".join(targets) + " | macro |", "|---|---|" + "---:|" * (len(targets) + 1)]
    marked = False
    for m in methods:
        for size in sizes:
            cells = [[r for r in rows if (r["method"], r["budget"], r["domain_tokens"], r["target"])
                      == (m, top, size, t)] for t in targets]
            if all(cells):
                values = [sum(r["bpb_after"] for r in c) / len(c) for c in cells]
                capped = [any(map(capped_training, c)) for c in cells]
                marked |= any(capped)
                out.append(f"| {label(m)} | {size_label(size)} | "
                           + " | ".join(f"{v:.3f}" + (" †" if cap else "") for v, cap in zip(values, capped))
                           + f" | {sum(values) / len(values):.3f} |")
    if floors:
        shown = [f"{floors[t]:.2f}" if t in floors else "-" for t in targets]
        out.append("| xz floor (the spec's) | | " + " | ".join(shown) + " | |")
    if marked:
        out += ["", "† a training of the cell (a seed's, or a teacher's) ended at its step cap, not by early "
                "stopping on the valid split: the cap, a safety bound elsewhere, bound there"]
    out += ["", *seed_differences(table), *cost_table(table), "", *equal_cost_table(table, sizes)]
    return headline(table) + "\n\n" + "\n".join(out)


def seed_differences(table: dict) -> list[str]:
    """Each method against SLM where both were run with several seeds: the difference in
    macro bits per byte (method - SLM) with its standard error, marked where its 95%
    interval (Student's t: few seeds, few degrees of freedom) leaves out 0, and the ratio
    of macro perplexities (of the seeds' geometric means, as bits per byte are a mean of
    logs). A method that starts from SLM's own pre-trained model (SHARES_SLM_BASE) is
    compared seed by seed where both ran the same seeds (paired, n - 1 degrees of
    freedom); any other of the two means, their standard errors added in quadrature
    (Welch-Satterthwaite's degrees of freedom). The seeds train
    on the same domain tokens (the first D of the split): the spread is the training's
    randomness, not the draw of the domain data. SLM-nopt, trained at no budget, is set
    against SLM at each budget. Empty until some budget has two seeds of SLM and of
    another method."""
    def repeated(key):
        s = table.get(key)
        return s if s and s["seeds"] > 1 else None

    rows = []
    for (m, budget, size), s in table.items():
        if m == REFERENCE_METHOD or not repeated((m, budget, size)):
            continue
        budgets = [budget] if not m.startswith("nopt") else sorted(
            {k[1] for k in table if k[0] == REFERENCE_METHOD and k[2] == size and repeated(k)})
        rows += [(b, size, m, s, table[(REFERENCE_METHOD, b, size)]) for b in budgets
                 if repeated((REFERENCE_METHOD, b, size))]
    if not rows:
        return []
    out = ["Differences to SLM where seeds were repeated: macro bits per byte, method - SLM (± its standard error, "
           "seed by seed for SLM-d, which fine-tunes SLM's own model, else of the two means; * where its 95% interval "
           "leaves out 0: Student's t with as many degrees of freedom as the seeds give, 2 for 3 paired seeds, "
           "Welch's for two means, so 2 standard errors are not enough), and the ratio of macro perplexities; the spread is the training's randomness on the same "
           "domain tokens", "",
           "| budget | size | method | seeds | bits/byte - SLM's | perplexity / SLM's |",
           "|---:|---:|---|---:|---:|---:|"]
    rank = {m: i for i, m in enumerate(methods_in(table))}
    for b, size, m, s, ref in sorted(rows, key=lambda r: (r[0], math.inf if r[1] is None else r[1], rank[r[2]])):
        mine, theirs = s["bpb_by_seed"], ref["bpb_by_seed"]
        if m.partition(" ")[0] in SHARES_SLM_BASE and set(mine) == set(theirs):  # paired
            d = [mine[k] - theirs[k] for k in mine]
            diff, spread = _mean_std(d)
            error, dof, seeds = spread / math.sqrt(len(d)), len(d) - 1, f"{len(d)} paired"
        else:
            parts = [(s["bpb"][1] ** 2 / s["seeds"], s["seeds"] - 1),
                     (ref["bpb"][1] ** 2 / ref["seeds"], ref["seeds"] - 1)]
            diff, error = s["bpb"][0] - ref["bpb"][0], math.sqrt(sum(v for v, _ in parts))
            dof, seeds = satterthwaite(parts), f"{s['seeds']} / {ref['seeds']}"
        mark = " *" if error > 0 and abs(diff) > t_quantile(dof, 0.95) * error else ""
        out.append(f"| {size_label(b)} | {size_label(size)} | {label(m)} | {seeds} | {diff:+.3f} ± {error:.3f}{mark} "
                   f"| {math.exp(s['ln_ppl'][0] - ref['ln_ppl'][0]):.3f} |")
    return out + [""]


def capped_training(line: dict) -> bool:
    """Whether a training of the cell (fine-tuning, a teacher's, SLM-nopt's) that was to
    stop early on the valid split ran to its step cap instead."""
    return any(isinstance(p, dict) and p.get("stopped_early") is False and p.get("max_steps")
               and p.get("steps", 0) >= p["max_steps"] for p in line.get("phases", {}).values())


def flushed(line: dict) -> bool:
    """Whether the process that finished a result line's cell had subnormal floats flushed
    to zero (x86, accel/subnormals.py; lines from before it say nothing: kept). With them
    kept, a run slowed down the longer it trained (late in the study's largest budget a
    LoRA step took 6.6x as long, BENCHMARKS.md): its seconds overstate the same run now."""
    return line.get("machine", {}).get("subnormals") == "flushed"


def cost_table(table: dict) -> list[str]:
    """Every measured method, budget and domain set's costs (seed means): where each is
    paid (shared once, per domain), C(1) and C(3), and what serving it costs."""
    out = ["Costs, seed means: FLOPs (seconds on the machine that ran it), validation passes included; C(N) = "
           "shared + N x per domain; serving: FLOPs per token at the full context and measured generation speed", "",
           "| method | budget | size | shared | per domain | C(1) | C(3) | inference FLOPs/token | gen tok/s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rank = {m: i for i, m in enumerate(methods_in(table))}
    for m, budget, size in sorted(table, key=lambda k: (rank[k[0]], k[1], math.inf if k[2] is None else k[2])):
        s = table[(m, budget, size)]
        c1, c3 = _totals(s)
        shown = "-" if m.startswith("nopt") else size_label(budget)  # no generic pre-training
        out.append(f"| {label(m)} | {shown} | {size_label(size)} | {s['shared'][0]:.2e} ({s['shared_s'][0]:.0f} s) "
                   f"| {s['per_domain'][0]:.2e} ({s['per_domain_s'][0]:.0f} s) | {c1['flops']:.2e} | "
                   f"{c3['flops']:.2e} | {s['inference'][0]:.2e} | {s['gen_tok_s'][0]:.0f} |")
    return out


def _totals(stat: dict) -> tuple[dict, dict]:
    """C(1) and C(3) of a `macro` entry's seed-mean costs (`costs.total_cost`)."""
    costs = {"shared": {"flops": stat["shared"][0], "seconds": stat["shared_s"][0]},
             "per_domain": {"flops": stat["per_domain"][0], "seconds": stat["per_domain_s"][0]}}
    return total_cost(costs, 1), total_cost(costs, 3)


def headline(table: dict, expected: list[str] | None = None) -> str:
    """The README's table: every method at the largest budget every method has reached
    with the smallest domain set (a study under way compares methods at equal budget;
    those already further are named below it; variants, settings tried on the valid
    splits, are only named): macro perplexity and bits per byte, and
    its costs in FLOPs (seconds on the machine that ran it): shared, per domain, C(1) and
    C(3), inference per token. `expected`: the study's methods; those with no row are
    named below it, so a table of a study under way does not read as complete."""
    size = sizes_in(table)[0]
    reached = defaultdict(set)  # each method's budgets, its variants (`lr=...`) and SLM-nopt aside
    for m, budget, s in table:
        if s == size and " " not in m and not m.startswith("nopt"):
            reached[m].add(budget)
    common = set.intersection(*reached.values()) if reached else set()
    top = max(common) if common else max(k[1] for k in table if k[2] == size and not k[0].startswith("nopt"))
    ahead = {m: max(bs) for m, bs in reached.items() if max(bs) > top}
    where = "the largest budget every method has reached" if ahead else "the largest budget"
    out = [f"At {where}, {size_label(top)} generic tokens ({_flops_of(table, top):.2e} training FLOPs), domain set "
           f"{size_label(size)}: macro test perplexity before / after fine-tuning and bits per byte (mean ± std over "
           "seeds where more than one); costs in FLOPs (seconds on the machine that ran it), validation passes "
           "included, C(N) = shared + N x per domain", "",
           "| method | params | ppl before | ppl after | bits/byte | shared | per domain | C(1) | C(3) | "
           "inference FLOPs/token | gen tok/s | seeds |", "|---|" + "---:|" * 11]
    smallest = min(k[1] for k in table)
    methods = [m for m in methods_in(table) if " " not in m] or methods_in(table)
    variants = [m for m in methods_in(table) if m not in methods]  # a setting tried on the valid splits
    for m in methods:
        s = table.get((m, smallest if m.startswith("nopt") else top, size))
        if s:
            c1, c3 = _totals(s)
            out.append(f"| {label(m)} | {s['params'][0] / 1e6:.2f}M | {_cell(s, 'ppl_before')} | {_cell(s)} | "
                       f"{_cell(s, 'bpb', 3)} | {s['shared'][0]:.2e} ({s['shared_s'][0]:.0f} s) | "
                       f"{s['per_domain'][0]:.2e} ({s['per_domain_s'][0]:.0f} s) | {c1['flops']:.2e} | "
                       f"{c3['flops']:.2e} | {s['inference'][0]:.2e} | {s['gen_tok_s'][0]:.0f} | {s['seeds']} |")
    if ahead:
        order = sorted((m for m in methods_in(table) if m in ahead), key=lambda m: -ahead[m])  # stable: methods' order
        further = ", ".join(f"{label(m)} ({size_label(ahead[m])})" for m in order)
        out += ["", f"Measured on every target at larger budgets so far: {further}; see the per-budget table."]
    if variants:
        out += ["", f"Other settings of a method, run beside its default (settings tried on the valid splits, a "
                f"bound's cost: {', '.join(label(m) for m in variants)}), are in the per-budget tables."]
    shown = {m for m in methods if table.get((m, smallest if m.startswith("nopt") else top, size))}
    missing = [m for m in expected or [] if m not in shown]
    if missing:
        out += ["", f"Not measured here yet on every target: {', '.join(label(m) for m in missing)} (the study's "
                "cells left: `mlxspec study SPEC --status`)."]
    return "\n".join(out)


def _flops_of(table: dict, budget: int) -> float:
    return next(v["budget_flops"][0] for k, v in table.items() if k[1] == budget)


def cost_curve(table: dict, method: str, size, n: float) -> list[tuple[float, float, int]]:
    """(C(N) FLOPs, macro ppl, budget) of a method's budgets at one domain-set size, by cost."""
    points = []
    for (m, budget, s), stat in table.items():
        if m == method and s == size:
            points.append((stat["shared"][0] + n * stat["per_domain"][0], stat["ppl"][0], budget))
    return sorted(points)


# Costs this close count as equal: SLM-is's and SLM's C(1) at the same budget differ by
# the clustering and the fine-tuning's length, a fraction of a percent, and neither is
# then "outside" the other's measured range.
EQUAL_COST = 0.01


def at_cost(points: list[tuple], cost: float) -> float | None:
    """A method's macro perplexity at total cost `cost`, from its (cost, ppl, ...) points:
    interpolated in log cost and log perplexity between its two measured budgets around
    it; a measured point's own within EQUAL_COST of it beyond the cheapest or dearest;
    None further out."""
    if not points:
        return None
    if cost < points[0][0]:
        return points[0][1] if cost >= points[0][0] * (1 - EQUAL_COST) else None
    if cost > points[-1][0]:
        return points[-1][1] if cost <= points[-1][0] * (1 + EQUAL_COST) else None
    for (c0, p0, *_), (c1, p1, *_) in zip(points, points[1:]):
        if c0 <= cost <= c1:
            t = 0.0 if c1 == c0 else (math.log(cost) - math.log(c0)) / (math.log(c1) - math.log(c0))
            return math.exp(math.log(p0) + t * (math.log(p1) - math.log(p0)))
    return points[0][1]  # a single point, at exactly its cost


def equal_cost_table(table: dict, sizes: list) -> list[str]:
    """Each budget of SLM-is against the other methods at the same total cost C(N)."""
    selected = [m for m in methods_in(table) if m.partition(" ")[0] == "is"]  # SLM-is and its variants
    others = [m for m in methods_in(table) if m not in selected]
    out = []
    for n in (1, 3) if selected else ():
        out += [f"SLM-is at equal total cost C({n}) (FLOPs; others interpolated between their measured budgets, "
                f"or at one within {EQUAL_COST:.0%} of its cost; - further out)", "",
                "| size | SLM-is | budget | C(N) | its ppl | " + " | ".join(label(m) for m in others) + " |",
                "|---|---|---:|---:|---:|" + "---:|" * len(others)]
        for size in sizes:
            for m in selected:
                for cost, ppl, budget in cost_curve(table, m, size, n):
                    shown = [at_cost(cost_curve(table, o, size, n), cost) for o in others]
                    out.append(f"| {size_label(size)} | {label(m)} | {size_label(budget)} | {cost:.2e} | {ppl:.1f} | "
                               + " | ".join("-" if p is None else f"{p:.1f}" for p in shown) + " |")
        out.append("")
    return out


def sizes_in(table: dict) -> list:
    """The domain-set sizes of a `macro` table, smallest first, the whole split (None) last."""
    return sorted({k[2] for k in table}, key=lambda s: math.inf if s is None else s)


HEADLINE_BEGIN, HEADLINE_END = "<!-- study headline: mlxspec study report --readme -->", "<!-- /study headline -->"


def _marked(readme: Path, begin: str = HEADLINE_BEGIN, end: str = HEADLINE_END, option: str = "--readme") -> str:
    """The markdown file's text, refused unless it holds both markers; errors name `option`."""
    where = f"{option}: " if option else ""
    if not readme.is_file():
        raise SpecializeError(f"{where}no such file: {readme}")
    body = readme.read_text()
    if begin not in body or end not in body:
        raise SpecializeError(f"{where}{readme} has no lines {begin} and {end} to write between")
    return body


def write_headline(readme: Path, text: str, begin: str = HEADLINE_BEGIN, end: str = HEADLINE_END,
                   option: str = "--readme") -> None:
    """Replace what lies between two marker lines of a markdown file (the headline's by
    default) with `text`; errors name `option` (the command line's, or none)."""
    from ..runtime.files import atomic_write_bytes

    head, rest = _marked(readme, begin, end, option).split(begin, 1)
    atomic_write_bytes(readme, (head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]).encode())


def unmeasured(study, lines: list[dict]) -> list[str]:
    """Markdown lines: how many of `study`'s cells (a spec loaded without its corpora) no
    results line (`lines`, as written) stands for yet, and which, in running order, those
    that differ only in their target on one line. A line stands for the cell whose axes
    it records (`cell_axes`): a report reads no corpus, so it cannot hash a cell's key."""
    from .run import cell_axes

    cells = study.cells()
    names = list(cell_axes(study, cells[0]))

    def axes(line: dict) -> str:
        return json.dumps({k: line.get(k, LINE_DEFAULTS.get(k)) for k in names}, sort_keys=True)

    seen = {axes(line) for line in lines}
    left = [cell for cell in cells if axes(cell_axes(study, cell)) not in seen]
    if not left:
        return [f"Every one of the spec's {len(cells)} cells is measured."]
    groups: list[tuple[str, list[str]]] = []
    for cell in left:
        extra = cell.variant(study.options)
        name = (f"{label(cell.method)}{f' ({extra})' if extra else ''}, "
                + ("no generic pre-training" if cell.method == "nopt" else f"{size_label(cell.budget)} generic tokens")
                + f", domain set {size_label(cell.domain_tokens)}, seed {cell.seed}")
        if groups and groups[-1][0] == name:
            groups[-1][1].append(cell.target)
        else:
            groups.append((name, [cell.target]))
    return [f"Not yet measured: {len(left)} of the spec's {len(cells)} cells, in running order (`mlxspec study "
            "SPEC --status` estimates their time)", "",
            *(f"- {name}: {', '.join(targets)}" for name, targets in groups)]


def report_study(paths, out_dir: str | Path | None = None, floors: dict | None = None,
                 target_ppl: float | None = None, readme: str | Path | None = None,
                 spec: str | Path | None = None) -> dict:
    """The tables (markdown) and, with `out_dir`, the figures and tables.md written there;
    with `readme`, the headline table written between its markers (`write_headline`);
    with `spec`, its floors (unless `floors` are given) and the cells not yet measured."""
    from .spec import load_study

    study = None if spec is None else load_study(spec, corpora=False)
    if readme is not None:  # before any work: a file without the markers is refused
        _marked(Path(readme))
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise SpecializeError(f"--out {out_dir} is a file; name a folder for the figures")
    written = read_lines(paths)
    rows = load_lines(paths, written)
    text = tables(rows, study.floors if floors is None and study else floors)
    if study is not None:
        text = text.rstrip("\n") + "\n\n" + "\n".join(unmeasured(study, list(written.values())))
    result = {"cells": len(rows), "tables": text,
              "headline": headline(macro(rows), study.methods if study is not None else None)}
    if out_dir is not None:
        out_dir = Path(out_dir)
        from .figures import figures  # matplotlib, only for a report that draws

        result["figures"] = [str(p) for p in figures(rows, out_dir, target_ppl)]
        (out_dir / "tables.md").write_text(text + "\n")
        result["tables_file"] = str(out_dir / "tables.md")
    if readme is not None:
        write_headline(Path(readme), result["headline"])
    return result
