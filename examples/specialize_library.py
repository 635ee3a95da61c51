"""Specialize a small model with the Python API instead of the command line.

    python examples/specialize_library.py [DOMAIN]

Pre-trains (or reuses from the cache) a generic `small` model on the bundled corpora
other than DOMAIN, fine-tunes it on DOMAIN's first 50k tokens, prints the report, and
samples a few lines from the specialized model.
"""

import json
import sys

import mlx_specialize as ms  # import before mlx.core: loads an optimized BLAS on Linux


def main(domain: str = "python-docs") -> None:
    report = ms.specialize(domain=domain, preset="small", domain_tokens=50_000)
    print(json.dumps({k: v for k, v in report.items() if k != "phases"}, indent=2))
    model, tokenizer, _ = ms.load_model(report["model"])
    print(ms.generate_text(model, tokenizer, "The ", max_tokens=60, temperature=0.7, seed=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
