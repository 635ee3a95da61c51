"""A study's figures (matplotlib PNGs), from the macro table of its results
(`report.macro`): perplexity vs generic pre-training FLOPs (the paper's main figure), vs
domain-set size, and the cheapest total cost C(N) reaching a target perplexity vs N. Each
method is drawn in its default recipe (variants tried on the valid splits are in the
tables) with the same colour and marker everywhere, the planner's figure included.
"""

from __future__ import annotations

from pathlib import Path

from .report import ORDER, cost_curve, label, macro, methods_in, size_label, sizes_in


def figures(rows: list[dict], out_dir: Path, target_ppl: float | None = None) -> list[Path]:
    """The three figures (PNG) in `out_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    table = macro(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_vs_pretraining(table, out_dir / "ppl_vs_pretraining.png"),
            _vs_domain_size(table, out_dir / "ppl_vs_domain_size.png"),
            _cost_vs_domains(table, out_dir / "cost_vs_domains.png", target_ppl)]


MARKERS = "os^DvPX*h"  # with the colour, one per method of ORDER: lines that coincide stay visible


def method_style(method: str) -> dict:
    """The same colour and marker for a method in every figure."""
    i = ORDER.index(method) if method in ORDER else len(ORDER)
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "label": label(method)}


def _plotted(table: dict) -> list[str]:
    """The methods a figure draws: each one's default recipe. A variant (`llm-lora
    lr=0.002`) is a choice made on the valid splits, in the tables, not a method."""
    return [m for m in methods_in(table) if " " not in m]


def legend(axes):
    """One legend beside the last panel for the lines of every panel (the last alone may
    hold a few of the methods; inside a panel it hid the lines), or None where nothing
    was drawn."""
    shown = {}  # label -> handle, in the order first drawn
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            shown.setdefault(name, handle)
    if not shown:
        return None
    return axes[-1].legend(list(shown.values()), list(shown), fontsize=7, loc="upper left",
                           bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _save(fig, axes, path: Path, ppl_axis: bool = True) -> Path:
    """Log ticks on every panel (see `plain_log_ticks`), the legend (`legend`), the
    figure written."""
    import matplotlib.pyplot as plt

    for ax in axes:
        plain_log_ticks(ax, ppl_axis)
    legend(axes)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _errorbars(ax, points: list[tuple[float, float, float]], name: str) -> None:
    """(x, mean, std) points, sorted by x, as one method's line."""
    points = sorted(points)
    ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], capsize=3,
                **method_style(name))


def _vs_pretraining(table: dict, path: Path) -> Path:
    """The paper's main figure: macro perplexity vs the generic pre-training budget (each
    method at the same FLOPs: SLM-is spends its budget per domain, SLM-d twice, once per
    model; the tables give what each paid), one panel per domain set; SLM-nopt (no
    pre-training) as a dotted line."""
    import matplotlib.pyplot as plt

    sizes, smallest = sizes_in(table), min(k[1] for k in table)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes) + 1.6, 3.8), squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes):
        for m in _plotted(table):
            if m == "nopt":
                if (m, smallest, size) in table:
                    ax.axhline(table[(m, smallest, size)]["ppl"][0], color=method_style(m)["color"], ls=":",
                               label="SLM-nopt")
                continue
            points = [(st["budget_flops"][0], *st["ppl"]) for (mm, _, s), st in table.items() if mm == m and s == size]
            if points:
                _errorbars(ax, points, m)
        ax.set(xscale="log", yscale="log", title=f"domain set {size_label(size)}",
               xlabel="generic pre-training budget (FLOPs)")
    axes[0][0].set_ylabel("macro test perplexity")
    return _save(fig, list(axes[0]), path)


def _vs_domain_size(table: dict, path: Path) -> Path:
    """Macro perplexity vs the domain train tokens, at the largest budget."""
    import matplotlib.pyplot as plt

    budgets = sorted({k[1] for k in table})
    fig, ax = plt.subplots(figsize=(6.6, 3.8))
    for m in _plotted(table):
        budget = budgets[0] if m == "nopt" else budgets[-1]
        points = [(st["domain_tokens_used"][0], *st["ppl"]) for (mm, b, _), st in table.items()
                  if mm == m and b == budget]
        if points:
            _errorbars(ax, points, m)
    ax.set(xscale="log", yscale="log", xlabel="domain train tokens (targets' mean)", ylabel="macro test perplexity",
           title=f"at the largest budget ({size_label(budgets[-1])} tokens)")
    return _save(fig, [ax], path)


def _cost_vs_domains(table: dict, path: Path, target_ppl: float | None) -> Path:
    """For each method, the cheapest measured budget reaching the target perplexity:
    its total cost C(N) for N domains (smallest domain set)."""
    import matplotlib.pyplot as plt

    size = sizes_in(table)[0]
    target = target_ppl or default_target_ppl(table, size)
    fig, ax = plt.subplots(figsize=(6.6, 3.8))
    ns = [1, 2, 3, 5, 10, 20, 50, 100]
    for m in _plotted(table):
        best = [min((c for c, p, _ in cost_curve(table, m, size, n) if p <= target), default=None) for n in ns]
        if any(b is not None for b in best):
            ax.plot([n for n, b in zip(ns, best) if b], [b for b in best if b], **method_style(m))
    if not ax.get_legend_handles_labels()[0]:
        ax.text(0.5, 0.5, f"no method measured reaches\nmacro ppl <= {target:.1f}", ha="center", va="center",
                transform=ax.transAxes)
    ax.set(xscale="log", yscale="log", xlabel="number of domains N", ylabel="cheapest total cost C(N), FLOPs",
           title=f"reaching macro ppl <= {target:.1f} (domain set {size_label(size)})")
    return _save(fig, [ax], path, ppl_axis=False)


def plain_log_ticks(ax, ppl_axis: bool = True) -> None:
    """Log axes: FLOPs and token counts in scientific notation at every 1-2-5 step (a
    range narrower than a decade still shows numbers), perplexities as plain numbers: at
    every integer step where the drawn range is under 3x (29 to 40 still has ticks), at
    1-2-3-5 steps where it is wider (every integer step crowded 60-100 together). Called
    once the data are drawn: it reads the range."""
    from matplotlib.ticker import FormatStrFormatter, LogFormatterSciNotation, LogLocator, NullFormatter

    axes = [ax.xaxis] + ([] if ppl_axis else [ax.yaxis])
    for axis in axes:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
        axis.set_minor_formatter(NullFormatter())
    if ppl_axis:
        lo, hi = ax.get_ylim()
        narrow = lo > 0 and hi / lo < 3
        ax.yaxis.set_major_locator(LogLocator(subs=tuple(range(1, 10)) if narrow else (1.0, 2.0, 3.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def default_target_ppl(table: dict, size) -> float:
    """The target perplexity of the cost figure: SLM's at its largest budget (what each
    method pays to match the plain recipe's best), else the median of all."""
    slm = sorted((b, st["ppl"][0]) for (m, b, s), st in table.items() if m == "finetune" and s == size)
    if slm:
        return slm[-1][1]
    values = sorted(st["ppl"][0] for (m, b, s), st in table.items() if s == size)
    return values[len(values) // 2]
