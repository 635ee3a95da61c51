"""Is a preset's learning rate right for the study? Generic valid loss after pre-training
at a few peak rates, on the standard protocol's generic mix, at one of the study's
budgets (in SLM tokens; an LLM preset trains on the tokens of the same FLOPs).

    python benchmarks/preset_lr.py --preset small-llm --budget 2500000 --lrs 1e-3,2e-3,4e-3

`small`'s rate was tuned on the bundled demo; its LLM twins' follow a rule (presets.py).
This checks the rule where the study uses it, on the generic valid split (never a
target's test split). Each finished run is one line of benchmarks/results/preset_lr.jsonl
(the table is printed from it; a run already there is not run again). Needs
../shared/minipile and the study's tokenizer (`--tokenizer`, a model folder of the study
or its tokenizer.model: the study's first pre-training writes one to the cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlx_specialize.methods.llm import equal_flops_tokens  # noqa: E402
from mlx_specialize.models.presets import get_preset  # noqa: E402
from mlx_specialize.study import load_study  # noqa: E402
from mlx_specialize.training import pretrain_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "preset_lr.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small-llm")
    parser.add_argument("--budget", type=int, default=2_500_000, help="SLM (`small`) tokens of generic pre-training")
    parser.add_argument("--lrs", default="1e-3,2e-3,4e-3")
    parser.add_argument("--spec", type=Path, default=REPO / "studies" / "minipile" / "spec.toml")
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    study = load_study(args.spec)
    slm = study.preset
    tokens = args.budget if args.preset == slm else equal_flops_tokens(args.budget, slm, args.preset)
    done = []
    for text in RESULTS.read_text().splitlines() if RESULTS.is_file() else []:
        try:
            done.append(json.loads(text))
        except ValueError:  # a line cut short by a kill: that run is run again
            pass
    for lr in (float(x) for x in args.lrs.split(",")):
        key = {"preset": args.preset, "budget": args.budget, "tokens": tokens, "lr": lr, "seed": args.seed}
        if any({k: line[k] for k in key} == key for line in done):
            continue
        with tempfile.TemporaryDirectory() as scratch:
            summary = pretrain_run(Path(scratch) / "run", preset=args.preset, generic=study.generic, tokens=tokens,
                                   seed=args.seed, tokenizer=args.tokenizer, lr=lr)
        line = {**key, "best_valid_loss": summary["best_valid_loss"], "final_train_loss": summary["final_train_loss"],
                "steps": summary["steps"], "seconds": summary["seconds"]}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(line) + "\n")
        done.append(line)
    rule = get_preset(args.preset).lr
    print(f"{args.preset}, {tokens:,} tokens (the FLOPs of {args.budget:,} tokens of {slm}), seed {args.seed}: "
          f"generic valid loss after pre-training (the preset's rate: {rule:g})")
    print("| lr | best valid loss | final train loss | steps |")
    print("|---:|---:|---:|---:|")
    for line in sorted((d for d in done if (d["preset"], d["budget"], d["seed"]) == (args.preset, args.budget,
                                                                                      args.seed)),
                       key=lambda d: d["lr"]):
        mark = " (preset)" if line["lr"] == rule else ""
        loss = "-" if line["best_valid_loss"] is None else f"{line['best_valid_loss']:.3f}"
        print(f"| {line['lr']:g}{mark} | {loss} | {line['final_train_loss']:.3f} | {line['steps']} |")


if __name__ == "__main__":
    main()
