"""Model quality on minipile's standard protocol (see ../shared/minipile/README.md).

    python benchmarks/protocol.py --minipile ../shared/minipile --preset small \
        --pretrain-tokens 400000 --domain-tokens 100000

- generic set: the train splits of c-headers, go-code, kernel-docs, manpages,
  postgres-docs, python-code, python-docs (their valid splits for monitoring);
  pre-trained once, shared by every target;
- targets: fortunes, licenses, perl-docs: fine-tuned on the first N tokens of their train
  split, early-stopped on their valid split, scored on their test split;
- headline: macro-averaged test perplexity exp(mean over targets of per-token NLL), with
  bits per byte of text beside it; the protocol's xz floor (xz -9e) for reference.

Prints one row per target and the macro row; `--json` adds a JSON object at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
from mlx_specialize.methods.slm import cached_pretrain

GENERIC = ["c-headers", "go-code", "kernel-docs", "manpages", "postgres-docs", "python-code", "python-docs"]
TARGETS = ["fortunes", "licenses", "perl-docs"]
XZ_FLOOR_BPB = {"fortunes": 2.44, "licenses": 0.51, "perl-docs": 1.98}  # from the protocol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minipile", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "minipile")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--pretrain-tokens", type=int, default=400_000)
    parser.add_argument("--domain-tokens", type=int, default=100_000)
    parser.add_argument("--finetune-tokens", type=int, default=120_000)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="folder for the fine-tuned runs [temporary]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="finetune",
                        help="finetune (SLM), is (SLM-is), mix (SLM-mix), pn (SLM-pn) or soup (Soup-of-Experts)")
    parser.add_argument("--k", type=int, default=None, help="clusters [is 64, mix 4, pn / soup 16]")
    parser.add_argument("--select", default=None,
                        help="mix: frequent, loss or all [frequent]; pn / soup: frequent or histogram [pn frequent, "
                             "soup histogram]")
    parser.add_argument("--basis", type=int, default=None, help="pn / soup: basis matrices h [8]")
    parser.add_argument("--window", type=int, default=None, help="--method is: window tokens [preset context]")
    parser.add_argument("--embedder", default="hashed", help="--method is: hashed or minilm")
    parser.add_argument("--sampler", default="cluster", help="--method is: cluster or gumbel")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    files = {d: args.minipile / f"{d}.jsonl.gz" for d in GENERIC + TARGETS}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise SystemExit(f"error: minipile files missing: {', '.join(missing)}")
    cache_dir = args.cache_dir or ms.default_cache_dir()
    generic = ",".join(str(files[d]) for d in GENERIC)
    if args.method == "finetune":  # one generic SLM shared by all targets
        # the standard study's tokenizer (its mix's first characters), as BENCHMARKS.md's figures used
        base, pre, cached = cached_pretrain(generic, args.preset, args.pretrain_tokens, None, args.seed, cache_dir,
                                            tokenizer_sample="leading")
        options = {"base": str(base)}
    else:  # SLM-is: one importance-sampled pre-training per target; SLM-mix: k experts shared by all
        options = {"method": args.method, "pretrain_tokens": args.pretrain_tokens, "preset": args.preset, "k": args.k,
                   "window": args.window, "embedder": args.embedder, "sampler": args.sampler, "select": args.select}
        if args.method in ("pn", "soup"):
            options["basis"] = args.basis
    out = args.out or Path(tempfile.mkdtemp(prefix="protocol-"))
    rows = []
    for target in TARGETS:
        report = ms.specialize(domain=str(files[target]), generic=generic, out_dir=out / target,
                               domain_tokens=args.domain_tokens, finetune_tokens=args.finetune_tokens,
                               seed=args.seed, cache_dir=cache_dir, overwrite=True, tokenizer_sample="leading",
                               **options)
        rows.append({"target": target, **{k: report[k] for k in ("ppl_before", "ppl_after", "bpb_before", "bpb_after")},
                     "domain_tokens": report["phases"]["finetune"]["domain_tokens"],
                     "finetune_seconds": report["phases"]["finetune"]["seconds"]})
        if args.method != "finetune":
            pre, cached = report["phases"]["pretrain"], report["phases"]["pretrain"]["cached"]
            sel = report["phases"]["select"]
            rows[-1].update({k: sel[k] for k in ("kl_generic", "kl_selected", "expert", "cluster") if k in sel},
                            pretrain_seconds=pre["seconds"])
    macro = {
        "ppl_before": math.exp(sum(math.log(r["ppl_before"]) for r in rows) / len(rows)),
        "ppl_after": math.exp(sum(math.log(r["ppl_after"]) for r in rows) / len(rows)),
        "bpb_before": sum(r["bpb_before"] for r in rows) / len(rows),
        "bpb_after": sum(r["bpb_after"] for r in rows) / len(rows),
    }
    print(f"method {args.method}, preset {args.preset}, pre-training {pre['tokens']:,} tokens ({pre['flops']:.3g} FLOPs) in {pre['seconds']:.0f} s "
          f"({'cached' if cached else 'trained now'}{', last target' if args.method != 'finetune' else ''}), "
          f"{args.domain_tokens:,} domain tokens per target")
    print(f"{'target':10s} {'ppl before':>10s} {'ppl after':>10s} {'bpb before':>10s} {'bpb after':>10s} {'xz bpb':>10s}")
    for r in rows:
        print(f"{r['target']:10s} {r['ppl_before']:10.2f} {r['ppl_after']:10.2f} {r['bpb_before']:10.3f} "
              f"{r['bpb_after']:10.3f} {XZ_FLOOR_BPB[r['target']]:10.2f}"
              + (f"  KL(D||generic) {r['kl_generic']:.3f} -> selected {r['kl_selected']:.3f}" if "kl_selected" in r else "")
              + (f"  expert {r['expert']}" if "expert" in r else "")
              + (f"  cluster {r['cluster']}" if "cluster" in r else ""))
    print(f"{'macro':10s} {macro['ppl_before']:10.2f} {macro['ppl_after']:10.2f} {macro['bpb_before']:10.3f} "
          f"{macro['bpb_after']:10.3f}")
    if args.json:
        print(json.dumps({"method": args.method, "preset": args.preset, "pretrain": pre, "targets": rows, "macro": macro},
                         default=float))


if __name__ == "__main__":
    main()
