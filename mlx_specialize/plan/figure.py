"""`mlxspec plan --plot`: the plan as a figure (PNG).

Left: each affordable method's predicted perplexity against its generic pre-training
budget (in tokens of the preset, as the table gives it) at the domain's size, over the
budgets it may run at; the recommendation starred at the budget the plan chose (SLM-nopt,
which has none, at the user's), with its 90% band. Only its band: a new domain's interval
is mostly its level's uncertainty, which every method shares and which cancels between
two of them, so bands that overlap would not say the methods are alike (the plan's text
gives the interval of each difference that decides). Right: each method's total cost
C(N) = shared + N x per domain against the number of domains N, at its chosen budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..study.figures import method_style, plain_log_ticks
from .fit import NO_PRETRAINING
from .planner import GRID, Budgets, _affordable, shared_flops_per_token
from .predict import predict


def plan_figure(model: dict, result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = Budgets(**result["budgets"])
    # x: the generic budget in tokens of the preset, as the table gives it (a budget in FLOPs
    # counts validation passes besides the training FLOPs of B, so B in FLOPs sits left of it)
    mine = budgets.pretrain_tokens or (budgets.pretrain / shared_flops_per_token(model)
                                        if budgets.pretrain_unit == "flops" else None)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ns = np.unique(np.geomspace(1, max(100, 10 * budgets.domains), 40).round())
    points = 0
    for entry in result["methods"]:
        method = entry["method"]
        tokens = model["methods"][method]["tokens_per_budget_flop"]
        options = _affordable(model, method, budgets)[0]

        def at(B):
            return predict(model, method, B, budgets.quality_tokens, budgets.floor,
                           bytes_per_token=budgets.bytes_per_token, features=budgets.features)

        if method in NO_PRETRAINING:
            p = at(options[0])
            line = left.axhline(p["ppl"], ls=":", color="grey", label=f"{entry['label']} (no generic budget)")
        elif len(options) < 2:  # one budget measured and affordable: a point
            p = at(options[0])
            lo, hi = p["ppl_interval"] if p["ppl_interval"] and method == result["recommended"] else (p["ppl"],) * 2
            points += 1  # methods measured at one budget share it: each drawn a little apart, to be seen
            line = left.errorbar([options[0] * tokens * 1.04 ** points], [p["ppl"]],
                                 yerr=[[p["ppl"] - lo], [hi - p["ppl"]]],
                                 marker="o", capsize=3, label=entry["label"],
                                 color=method_style(method)["color"]).lines[0]
        else:
            Bs = np.geomspace(min(options), max(options), GRID // 4)
            ps = [at(B) for B in Bs]
            (line,) = left.plot(Bs * tokens, [p["ppl"] for p in ps], label=entry["label"],
                                color=method_style(method)["color"])
            if method == result["recommended"] and all(p["ppl_interval"] for p in ps):
                left.fill_between(Bs * tokens, [p["ppl_interval"][0] for p in ps], [p["ppl_interval"][1] for p in ps],
                                  color=line.get_color(), alpha=0.12)
        right.plot(ns, entry["shared_flops"] + ns * entry["per_domain_flops"], color=line.get_color(),
                   ls=":" if method in NO_PRETRAINING else "-", label=entry["label"],
                   lw=2.5 if method == result["recommended"] else 1.2)
        if method == result["recommended"]:
            if method in NO_PRETRAINING:  # no generic budget of its own: starred at the user's, on its line
                x = mine or model["methods"][method]["B"][0] * tokens
            else:
                x = (entry["pretrain_flops"] or model["methods"][method]["B"][0]) * tokens * (
                    1.04 ** points if len(options) < 2 else 1.0)
            left.plot([x], [entry["ppl"]], marker="*", ms=16, color=line.get_color(), ls="none",
                      label=f"recommended: {entry['label']}")
    if mine:  # the budget the user gave, where the methods stand against it
        left.axvline(mine, color="grey", ls="--", lw=0.8, label="your pre-training budget")
    left.set(xscale="log", yscale="log", xlabel=f"generic pre-training budget (tokens of {result['fit']['preset']})",
             ylabel="predicted test perplexity (band: the pick's 90%)",
             title=f"domain of {budgets.domain_tokens:,.0f} tokens" + (
                 f"\n(predicted as with {budgets.lifted_domain_tokens:,.0f}: see the warning)"
                 if budgets.lifted_domain_tokens else "\n(some held at a smaller set: see the notes)"
                 if any(n.startswith("domain set held at") for e in result["methods"] for n in e["notes"]) else ""))
    left.title.set_fontsize(10)
    right.axvline(budgets.domains, color="grey", ls="-.", lw=0.8, label=f"your N = {budgets.domains:,}")
    right.set(xscale="log", yscale="log", xlabel="number of domains N", ylabel="total cost C(N), FLOPs",
              title="C(N) = shared + N x per domain")
    plain_log_ticks(left)
    plain_log_ticks(right, ppl_axis=False)
    # one legend for both panels (a method has one colour in both), below them: inside, it
    # hid the curves and their bands
    handles, labels = left.get_legend_handles_labels()
    more, names = right.get_legend_handles_labels()  # the methods again, then your N (drawn last)
    handles, labels = handles + more[-1:], labels + names[-1:]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
