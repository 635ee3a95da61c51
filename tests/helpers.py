"""Shared helpers that test modules import (`from helpers import ...`): the corpora the
suite trains on and a short loss curve for comparing speed-up settings.

pytest puts this folder on `sys.path` (rootdir-relative "prepend" import mode, no
`__init__.py`), so the import works under `pytest` and `python -m pytest` alike.
"""

import json

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import numpy as np

from mlx_specialize.methods import clusters as imp
from mlx_specialize.data.corpus import default_generic
from mlx_specialize.data.embedding import embed_windows
from mlx_specialize.train import trainer as trainer_module

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


def calls_in_the_training_loss(monkeypatch, owner, names) -> list[str]:
    """The names of `owner`'s functions `names` called while the trainer's loss is
    traced (inside `training_loss`, which its compiled step calls; not the validation's
    own scope), one entry per call, as they happen."""
    calls, inside = [], []
    real_loss = trainer_module.training_loss

    def training_loss(*args, **kwargs):
        inside.append(True)
        try:
            return real_loss(*args, **kwargs)
        finally:
            inside.pop()

    def counted(name, real):
        def call(*args, **kwargs):
            if inside:
                calls.append(name)
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(trainer_module, "training_loss", training_loss)
    for name in names:
        monkeypatch.setattr(owner, name, counted(name, getattr(owner, name)))
    return calls


def domain_histogram(clusters_dir, domain: str, cache_dir) -> np.ndarray:
    """P(c|D) recomputed here, not read from a report: the domain's train windows (embedded
    by the clustering's own embedder, a cache hit after the run) each go to the centroid of
    the largest cosine (or smallest squared distance), in numpy."""
    clusters = imp.load_clusters(clusters_dir)
    tokenizer = ms.Tokenizer.load(clusters_dir)
    split = imp.corpus_split(domain, "train", tokenizer, cache_dir)
    embedded = embed_windows(split, tokenizer, clusters.embedder, clusters.meta["window"], cache_dir)
    x, c = np.asarray(embedded.vectors, np.float64), clusters.centroids.astype(np.float64)
    if clusters.meta["metric"] == "cosine":
        x, c = (a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12) for a in (x, c))
        labels = np.argmax(x @ c.T, axis=1)
    else:
        labels = np.argmin((c * c).sum(1)[None, :] - 2 * x @ c.T, axis=1)
    return np.bincount(labels, minlength=len(c)) / len(labels)
