"""`mlxspec plan`: which method to invest the generic pre-training in, from the budgets,
with each method's predicted quality and costs. Calls `mlx_specialize.plan.make_plan`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from mlx_specialize.plan import make_plan
from mlx_specialize.plan.fit import DOMAIN_FEATURES
from mlx_specialize.plan.planner import the_budget
from mlx_specialize.plan.predict import FEATURE_NAMES
from mlx_specialize.study.report import size_label
from mlx_specialize.ui import duration

from .options import Plan
from .output import add_row, emit, make_table


def plan(
    pretrain: str = Plan.pretrain,
    specialize: str = Plan.specialize,
    inference: str = Plan.inference,
    domain_tokens: Optional[int] = Plan.domain_tokens,
    domains: int = Plan.domains,
    domain: Optional[str] = Plan.domain,
    tokenizer: Optional[Path] = Plan.tokenizer,
    clusters: Optional[Path] = Plan.clusters,
    results: Optional[List[Path]] = Plan.results,
    fit: Optional[Path] = Plan.fit,
    spec: Optional[Path] = Plan.spec,
    save_fit: Optional[Path] = Plan.save_fit,
    plot: Optional[Path] = Plan.plot,
):
    """Plan early: the method to pre-train for, from the four budgets, with predicted quality and costs.

    Predictions come from a model fitted on measured study results, with 90% prediction intervals: the package's
    is fitted on this project's standard-protocol study (the `small` preset and its LLM twin, on a 2-core CPU;
    the README says at what scale); --results refits on your own `mlxspec study` results."""
    def text(path: Optional[Path]) -> Optional[str]:
        return str(path) if path else None

    result = make_plan(pretrain, specialize, inference, domain_tokens=domain_tokens, domains=domains, domain=domain,
                       results=[str(p) for p in results] if results else None, spec=text(spec),
                       save_fit=text(save_fit), plot=text(plot), tokenizer=text(tokenizer), fit=text(fit),
                       clusters=text(clusters))
    emit(result, *plan_view(result))


def _interval(value: float, interval, digits: int) -> str:
    if interval is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _cost(flops: float, seconds: float | None) -> str:
    return f"{flops:.2e}" if seconds is None else f"{flops:.2e} ({duration(seconds)})"


def _budget(value: float, unit: str, tokens: float | None, of_preset: str) -> str:
    """A budget in its unit; one in FLOPs also in tokens of the preset's pre-training."""
    if unit == "seconds":
        return duration(value)
    return f"{value:.2e} FLOPs" + (f" ({size_label(tokens)} tokens{of_preset})" if tokens else "")


def _needs(ruled_out: dict, preset: str) -> str:
    """What a ruled-out method needs, at the budget where it comes closest to fitting."""
    needs = ruled_out["needs"]
    if ruled_out["budget"] == "inference":
        return f" (needs {needs['params']:,} params)"
    def amount(part: str) -> str:
        seconds = needs.get(part + "_seconds")
        return f"{needs[part]:.2e} FLOPs" + ("" if seconds is None else f" ({duration(seconds)})")

    if needs["budget_tokens"] is None:  # no pre-training: its per-domain cost is all it needs
        return f" (needs {amount('specialize')} per domain)"
    need = (f"at {size_label(needs['budget_tokens'])} tokens of {preset}, where it comes closest, it "
            f"needs {amount('pretrain')} shared and {amount('specialize')} per domain")
    if ruled_out.get("jointly"):  # neither alone: each budget it may run at fits one, not the other
        return f" together: no budget it may run at fits both ({need})"
    return f" ({need})"


def plan_view(result: dict) -> list:
    b = result["budgets"]
    n = b["domains"]
    preset = result["fit"].get("preset", "the preset")
    pretrain = _budget(b["pretrain"], b["pretrain_unit"], b["pretrain_tokens"], f" of {preset}")
    specialize = _budget(b["specialize"], b["specialize_unit"], b["specialize_tokens"], "")
    title = (f"mlxspec plan: pre-training {pretrain}, {specialize} per domain, serving <= "
             f"{size_label(b['inference'])} params, {size_label(b['domain_tokens'])} domain tokens, N = {n:,}")
    table = make_table(title, "method", f"budget (tokens of {preset})", "bits/byte (90%)", "perplexity (90%)",
                       "shared FLOPs (time)",
                       "per domain", f"C({n})", "params",
                       right=(f"budget (tokens of {preset})", "shared FLOPs (time)", "per domain", f"C({n})", "params"))
    for e in result["methods"]:
        mark = " *" if e["method"] == result["recommended"] else ""
        add_row(table, e["label"] + mark, "-" if e["budget_tokens"] is None else f"{e['budget_tokens']:,}",
                _interval(e["bpb"], e["bpb_interval"], 3), _interval(e["ppl"], e["ppl_interval"], 1),
                _cost(e["shared_flops"], e.get("shared_seconds")),
                _cost(e["per_domain_flops"], e.get("per_domain_seconds")),
                _cost(e["total_flops"], e.get("total_seconds")), f"{e['params'] / 1e6:.2f}M")
    lines = [table if result["methods"] else title]  # no method fits: no empty table
    if result["methods"]:  # what the study's tables call a budget's FLOPs is its training alone
        lines.append("FLOPs count every pass a method makes, validation included (the study's tables give a "
                     "budget's training FLOPs alone)")
    machine = next((e["seconds_on"] for e in result["methods"] if "seconds_on" in e), None)
    if "calibration" in result:
        c = result["calibration"]
        lines.append(f"this machine pre-trains at {c['flops_per_second'] / 1e9:.1f} GFLOP/s, {c['ratio']:.2f}x the "
                     f"study's machine ({c['study'] / 1e9:.1f}): times are this machine's")
    elif machine:
        lines.append(f"times (in brackets) are those of {machine}")
    noted: dict[str, list[str]] = {}  # a note the methods share, once, with all their names
    for e in result["methods"]:
        for note in e["notes"]:
            noted.setdefault(note, []).append(e["label"])
    lines += [f"{', '.join(labels)}: {note}" for note, labels in noted.items()]
    for r in result["ruled_out"]:
        lines.append(f"ruled out: {r['label']}, by {the_budget(r['budget'])}{_needs(r, preset)}")
    if result.get("not_measured"):
        lines.append(f"not in the fit (no cell of theirs measured yet): {', '.join(result['not_measured'])}")
    if "domain" in result:
        d = result["domain"]
        lines.append(f"domain {d['corpus']}: xz -9e {d['floor']:.3f} bits per byte on its {d['held_out']} split "
                     f"({d['held_out_bytes'] / 1e3:,.1f} KB, after {d['context_bytes'] / 1e3:,.0f} KB of its train split)"
                     + (f"; cluster histogram entropy {d['entropy']:.2f} nats, KL to the generic mix "
                        f"{d['kl_generic']:.2f} over {d['k']} clusters" if "entropy" in d else ""))
        unused = [name for name in DOMAIN_FEATURES if name not in result["fit"]["domain_features"]]
        if "entropy" in d and unused:
            needs = " and ".join(f"the {FEATURE_NAMES[n]} from {DOMAIN_FEATURES[n][1]}" for n in unused)
            lines.append(f"(the fit does not use the {' nor the '.join(FEATURE_NAMES[n] for n in unused)}: its "
                         f"{len(result['fit']['targets'])} targets are too few to tell a method's slope in "
                         f"{'them' if len(unused) > 1 else 'it'} from noise; it fits {needs} targets on)")
    # no method fits: the lines above say what rules each out, and what it needs
    lines.append(f"recommended (*): {result['reason']}" if result["recommended"] else
                 "no method fits these budgets (the ruled-out lines say what each needs)")
    fit = result["fit"]
    pending = fit.get("pending_cells", 0)
    source = (f"the package's fit: {fit['cells']} cells of this project's standard-protocol study, "
              f"studies/minipile/{fit['source']}, measured with {preset} and its LLM twin on a 2-core CPU "
              "(--results fits your own study's)" if fit.get("packaged")
              else f"fitted on {fit['cells']} cells of {fit['source']}")
    lines.append(f"{source}, targets {', '.join(fit['targets'])}"
                 + (f" ({pending} more cell{'s' if pending != 1 else ''} left out until "
                    f"{'its' if pending == 1 else 'their'} budget and domain set are measured on every target)"
                    if pending else ""))
    if "plot" in result:
        lines.append(f"figure: {result['plot']}")
    return lines
