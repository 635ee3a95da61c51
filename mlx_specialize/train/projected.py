"""Pre-training a projected network (pn) or a Soup-of-Experts, and instantiating it.

Training data are the generic windows of the clustering (k-means of `methods/clusters.py`,
shared with SLM-is and SLM-mix), each with its cluster id:

- pn (`ClusterBatches`): batch i holds `batch_size` windows of one cluster c_i, drawn
  with probability proportional to the cluster's size (so every window is as likely as
  in plain pre-training) and trained with c_i's expert: its MLP weights are generated
  once per batch. Windows of a cluster are visited in a per-epoch permutation.
- soup (`SoupBatches`): batch i draws domain weights w_i ~ Dirichlet(1) over `support`
  clusters (default: all k; fewer are picked proportionally to size), then each row's
  cluster from w_i and a window of it; the model is built from w_i (Ablin et al. 2025).
  Over all k clusters the training conditions look like real domains' histograms, which
  spread over many clusters: on the protocol, support 16 (of k = 16) gave macro ppl
  663.75 / 186.02 before / after fine-tuning on 100k tokens, support 3 774.41 / 211.55.

Both are pure functions of i and the seed, so a resumed run sees the same batches.
Validation runs each valid window with its own cluster's one-hot condition.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlx.core as mx
import numpy as np

from .. import accel, ui
from ..data import selection
from ..data.embedding import n_windows, window_tokens
from ..data.tokens import TokenizedSplit
from ..errors import SpecializeError
from ..models.projected import ProjectedModel, ProjectionArgs, instantiate, load_projected, one_hot, param_counts
from .evaluate import EvalResult, evaluate
from .parallel import masked_nll

SCHEDULE_CHUNK = 1024  # batches whose clusters are drawn together


def _members(labels: np.ndarray, k: int) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in range(k)]


class ClusterBatches:
    """pn batches: `batch(i)` [batch_size, context + 1] int32, all from the cluster
    whose one-hot is `condition(i)` [k] float32."""

    def __init__(self, tokens: np.ndarray, labels: np.ndarray, window: int, context: int, batch_size: int,
                 k: int, seed: int = 0):
        if context > window:
            raise SpecializeError(f"training context {context} is longer than the clustering's {window}-token windows")
        self.tokens, self.window, self.context, self.batch_size, self.k, self.seed = (
            tokens, window, context, batch_size, k, seed)
        last = (len(tokens) - context - 1) // window  # windows with a next-token target for every position
        self.members = [m[m <= last] for m in _members(labels, k)]
        sizes = np.array([len(m) for m in self.members], dtype=np.float64)
        if sizes.sum() == 0:
            raise SpecializeError("no generic windows to train on")
        self.p = sizes / sizes.sum()
        self._chunks: list[np.ndarray] = []  # clusters of each batch, chunk by chunk
        self._before: list[np.ndarray] = [np.zeros(k, np.int64)]  # batches per cluster before each chunk
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _schedule(self, chunk: int) -> np.ndarray:
        while len(self._chunks) <= chunk:
            n = len(self._chunks)
            drawn = np.random.default_rng([self.seed, 1, n]).choice(self.k, SCHEDULE_CHUNK, p=self.p)
            self._chunks.append(drawn)
            self._before.append(self._before[-1] + np.bincount(drawn, minlength=self.k))
        return self._chunks[chunk]

    def cluster(self, index: int) -> int:
        return int(self._schedule(index // SCHEDULE_CHUNK)[index % SCHEDULE_CHUNK])

    def _window(self, c: int, position: int) -> int:
        members = self.members[c]
        epoch = position // len(members)
        if (c, epoch) not in self._perms:
            self._perms[(c, epoch)] = np.random.default_rng([self.seed, 2, c, epoch]).permutation(members)
        return int(self._perms[(c, epoch)][position % len(members)])

    def batch(self, index: int) -> np.ndarray:
        chunk, offset = divmod(index, SCHEDULE_CHUNK)
        schedule = self._schedule(chunk)
        c = int(schedule[offset])
        seen = int(self._before[chunk][c] + np.count_nonzero(schedule[:offset] == c))  # earlier batches of c
        rows = [self._row(self._window(c, seen * self.batch_size + j)) for j in range(self.batch_size)]
        return np.stack(rows).astype(np.int32)

    def _row(self, w: int) -> np.ndarray:
        return np.asarray(self.tokens[w * self.window : w * self.window + self.context + 1])

    def condition(self, index: int) -> np.ndarray:
        cond = np.zeros(self.k, np.float32)
        cond[self.cluster(index)] = 1.0
        return cond


class SoupBatches(ClusterBatches):
    """Soup batches: `condition(i)` = domain weights [k] (Dirichlet(1) over `support`
    clusters, default all), `batch(i)` = rows whose clusters are drawn from those weights."""

    def __init__(self, *args, support: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        nonempty = int(np.count_nonzero(self.p))
        self.support = max(1, min(support or nonempty, nonempty))

    def condition(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 3, index])
        chosen = rng.choice(self.k, self.support, replace=False, p=self.p)
        cond = np.zeros(self.k, np.float32)
        cond[chosen] = rng.dirichlet(np.ones(self.support))
        return cond

    def batch(self, index: int) -> np.ndarray:
        weights = self.condition(index).astype(np.float64)
        rng = np.random.default_rng([self.seed, 4, index])
        clusters = rng.choice(self.k, self.batch_size, p=weights / weights.sum())
        rows = [self._row(int(rng.choice(self.members[c]))) for c in clusters]
        return np.stack(rows).astype(np.int32)


def cluster_evaluator(valid: TokenizedSplit, labels: np.ndarray, window: int, context: int, k: int,
                      batch_size: int = 8, max_tokens: int = 32_768):
    """`evaluator(model) -> EvalResult`: the first `max_tokens` of the valid windows,
    each scored with its own cluster's one-hot condition (one compiled function)."""
    used = min(len(labels), max(1, max_tokens // window))
    groups = []
    for c in np.unique(labels[:used]):
        members = np.flatnonzero(labels[:used] == c)
        tokens = window_tokens(valid.tokens, members, window)
        n_bytes = valid.n_bytes * len(tokens) / max(len(valid.tokens), 1)
        groups.append((int(c), TokenizedSplit(tokens, n_bytes, len(members), f"valid-{c}", valid.bos_id)))

    compiled = {}

    def evaluator(model: ProjectedModel) -> EvalResult:
        if id(model) not in compiled:
            accel.prepare(model)

            def summed_nll(x, y, m, cond):
                with accel.scope():
                    return masked_nll(lambda v: model(v, cond=cond), x, y, m, [None])[0]
            compiled[id(model)] = mx.compile(summed_nll, inputs=model.state)
        fn = compiled[id(model)]
        total = EvalResult(0.0, 0, 0.0)
        for c, split in groups:
            cond = one_hot(c, k)
            part = evaluate(model, split, context, batch_size, eval_fn=lambda x, y, m: fn(x, y, m, cond), streams=1)
            total = EvalResult(total.nll + part.nll, total.tokens + part.tokens, total.bytes + part.bytes)
        return total

    return evaluator


def pretrain_projected(clusters, generic: TokenizedSplit, valid: TokenizedSplit, valid_labels: np.ndarray, tokenizer,
                       preset, out_dir: str | os.PathLike, tokens: int, arch: str = "pn", expert_dim: int = 16,
                       basis: int = 8, soup_hidden: int = 64, support: int | None = None, seed: int = 0,
                       resume: bool = True, overwrite: bool = False, **train_options) -> dict:
    """Pre-train a `preset`-sized pn or soup on `tokens` tokens of the clustered
    generic windows, validating on the generic valid split's windows `valid`, each with
    its cluster in `valid_labels` (`methods.clusters.clustered_valid`); returns the run
    summary (+ parameter counts). The pn trains on one cluster's windows at a time, as it
    is validated, and keeps its best model; the soup trains on mixtures of clusters that
    one-cluster validation does not sample: it is only reported, and the soup keeps its
    final model (`TrainConfig.keep`), as the paper trains every model to its budget."""
    from .jobs import steps_for
    from .trainer import TrainConfig, Trainer

    window = clusters.meta["window"]
    if n_windows(generic.tokens, window) != len(clusters.labels):
        raise SpecializeError("the generic token stream does not match the clustering (other corpus or tokenizer)")
    proj = ProjectionArgs(arch=arch, experts=clusters.k, expert_dim=expert_dim, basis=basis, soup_hidden=soup_hidden)
    mx.random.seed(seed)
    model = ProjectedModel(preset.model_args(tokenizer.vocab_size), proj)
    options = {"batch_size": preset.batch_size, "context": preset.context, "lr": preset.lr,
               "warmup": preset.warmup, "seed": seed, "keep": "final" if arch == "soup" else "best", **train_options}
    cfg = TrainConfig(steps=1, **options)
    cfg.steps = steps_for(tokens, cfg)
    source = SoupBatches if arch == "soup" else ClusterBatches
    extra = {"support": support} if arch == "soup" else {}
    batches = source(generic.tokens, clusters.labels, window, cfg.context, cfg.batch_size, clusters.k, seed, **extra)
    evaluator = cluster_evaluator(valid, valid_labels, window, cfg.context, clusters.k, cfg.eval_batch_size,
                                  cfg.eval_tokens)
    counts = param_counts(model)
    ui.info(f"pre-training a '{preset.name}' {arch} ({counts['total'] / 1e6:.2f}M params, "
            f"{counts['active'] / 1e6:.2f}M per instantiated SLM, k={clusters.k}, h={basis}): "
            f"{cfg.steps} steps x {cfg.tokens_per_step:,} tokens")
    if arch == "soup":
        ui.info(f"soup conditions: Dirichlet(1) weights over {batches.support} of {clusters.k} clusters")
    meta = {"job": "pretrain", "arch": arch, "preset": preset.name, "corpus": clusters.meta["generic"],
            "clusters": str(clusters.folder), "window": window, "lr": cfg.lr, "batch_size": cfg.batch_size}
    trainer = Trainer(model, tokenizer, generic, None, cfg, out_dir, meta, batches=batches, evaluator=evaluator)
    summary = trainer.run(resume=resume, overwrite=overwrite)
    return {**summary, "params": counts}


def instantiate_folder(folder: str | os.PathLike, out_dir: str | os.PathLike, cond: np.ndarray,
                       note: dict | None = None) -> Path:
    """Write the dense SLM of condition `cond` [k] of the network in `folder` as a
    plain model folder (mlx-lm loadable) that `finetune` takes like any generic SLM."""
    from ..models.io import save_model

    model, tokenizer, config = load_projected(folder)
    k = model.projection.experts
    cond = np.asarray(cond, dtype=np.float32)
    if cond.shape != (k,) or not np.all(np.isfinite(cond)) or cond.min() < 0 or cond.sum() <= 0:
        raise SpecializeError(f"a condition for {folder} is {k} non-negative cluster weights, not {cond.tolist()}")
    cond = cond / cond.sum()
    dense = instantiate(model, mx.array(cond))
    ours = config.get("mlxspec", {})
    meta = {key: ours[key] for key in ("preset", "context", "lr", "batch_size", "corpus") if key in ours}
    meta.update(instantiated_from=str(folder), arch=model.projection.arch, condition=cond.tolist(),
                **(note or {}))
    save_model(dense, out_dir, tokenizer, meta)
    return Path(out_dir)


def domain_condition(labels: np.ndarray, k: int, rule: str) -> tuple[np.ndarray, dict]:
    """The condition for a domain whose windows fall in clusters `labels`: its most
    frequent cluster's one-hot (`frequent`) or its cluster histogram (`histogram`)."""
    histogram = selection.histogram(labels, k)
    if rule == "frequent":
        cluster = int(np.argmax(histogram))
        return np.array(one_hot(cluster, k)), {"rule": rule, "cluster": cluster, "histogram": histogram.tolist()}
    if rule == "histogram":
        return histogram, {"rule": rule, "histogram": histogram.tolist(), "entropy_nats": selection.entropy(histogram)}
    raise SpecializeError(f"unknown instantiation '{rule}' (frequent or histogram)")
