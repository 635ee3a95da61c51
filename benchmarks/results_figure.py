"""The README's results figure, drawn from a committed results file (no model is run).

    python benchmarks/results_figure.py benchmarks/results/table8.jsonl --out docs/figures/methods.png

Reads one JSON object per line (method, target, domain_tokens, test_ppl, stage) and plots
the macro-averaged test perplexity of each method against the domain tokens it was
fine-tuned on (0: before fine-tuning), log scales, one line per method: the paper's Table
8 as a picture. `table8.jsonl` holds the run in BENCHMARKS.md ("Methods at equal
pre-training FLOPs"), transcribed from the table `benchmarks/method_table.py` printed;
the study (issue 18) will write its own results file cell by cell.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAMES = {"finetune": "SLM", "mix": "SLM-mix", "pn": "SLM-pn", "soup": "Soup-of-Experts", "is": "SLM-is"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", default="macro", help="a target domain, or macro")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["target"] == args.target]
    before_x = 30_000  # where "before fine-tuning" sits on the log axis
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = sorted((r["domain_tokens"], r["test_ppl"]) for r in rows if r["method"] == method)
        xs = [before_x if tokens == 0 else tokens for tokens, _ in cells]
        ax.plot(xs, [ppl for _, ppl in cells], marker="o", label=NAMES.get(method, method))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({before_x} | {r["domain_tokens"] for r in rows if r["domain_tokens"]})
    ax.set_xticks(ticks, ["before" if t == before_x else f"{t / 1e6:g}M" if t >= 1e6 else f"{t // 1000}k"
                          for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("domain tokens fine-tuned on")
    ax.set_ylabel(f"{args.target} test perplexity")
    preset = rows[0].get("preset", "")
    tokens = rows[0].get("pretrain_tokens")
    ax.set_title(f"equal generic pre-training ({preset}, {tokens:,} tokens), equal inference cost", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out} ({len(rows)} cells)")


if __name__ == "__main__":
    main()
