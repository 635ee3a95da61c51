"""Shared helpers that test modules import (`from helpers import ...`): the corpora the
suite trains on and a short loss curve for comparing speed-up settings.

pytest puts this folder on `sys.path` (rootdir-relative "prepend" import mode, no
`__init__.py`), so the import works under `pytest` and `python -m pytest` alike.
"""

import json

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core

from mlx_specialize.data.corpus import default_generic

VOCAB = 512
DOMAIN = "python-docs"
GENERIC = default_generic(DOMAIN)


def tiny_loss_curve(out, tokenizer, cache_dir, **train) -> list[float]:
    """Pre-train `tiny` briefly on the generic mix into `out` (under the environment the
    caller set) and return its training and validation losses, in the order logged: the
    curve that tests compare between two settings of a speed-up."""
    ms.pretrain(GENERIC, ms.get_preset("tiny"), out, tokens=24 * 8 * 128, tokenizer=tokenizer,
                cache_dir=cache_dir, eval_every=8, eval_tokens=4096, lr=3e-3, warmup=4, log_every=2, **train)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("valid_loss")) for r in records if r["event"] in ("train", "valid")]
