"""SLM-mix (`--method mix`), the hard mixture of experts (paper, section 2.3; Gross et al. 2017).

    generic windows --k-means (clusters.py, shared with the other clustered methods)--> k clusters
    cluster c's windows --pre-train--> expert c (a dense SLM, standalone checkpoint)
    domain --choose an expert--> fine-tune it: inference costs exactly one SLM

A mixture folder holds `mixture.json` (arch, k, the clustering it follows, the budget)
and one dense model folder per expert, `expert-000/` ... Each expert is trained only on
its own cluster's windows (`expert_split`), from scratch by default (the paper's setting;
experts share nothing, so they can train in separate processes or hosts) or from a shared
generic model (`init_from`), one after another in one process; a run that stops resumes at
the first unfinished expert. Under `mlx.launch -n N` the experts are dealt round-robin to
the N processes (expert c to rank c mod N), which train with no communication at all; they
meet once at the end, and rank 0 writes mixture.json (`trained_on` says which host holds
each expert's folder: on several hosts, copy them into one folder).

Choosing the expert for a domain (`choose_expert`), as in the paper's Table 5:
- `frequent` (default): the expert of the domain's most frequent cluster; costs one
  assignment of the domain's windows;
- `loss`: the expert with the lowest loss on the domain's train windows before
  fine-tuning; costs k evaluations;
- `all`: fine-tune every expert and keep the best on the domain's valid split; costs k
  fine-tunings (done by `specialize`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from .. import ui
from ..runtime.cache import cache_entry
from ..data.embedding import n_windows, window_tokens
from ..data.tokens import TokenizedSplit
from ..models.dense import flops_per_token
from ..errors import SpecializeError
from ..runtime.files import atomic_write_bytes
from . import clusters as cl
from .base import Method, Prepared, PretrainJob, Settings
from .slm import cached_pretrain

MIXTURE_FILE = "mixture.json"
SELECT_RULES = ("frequent", "loss", "all")
LOSS_RULE_TOKENS = 20_000  # --select loss: the domain train tokens each expert is scored on


def expert_split(generic: TokenizedSplit, labels: np.ndarray, cluster: int, window: int) -> TokenizedSplit:
    """The token stream of cluster `cluster`'s windows, in corpus order (memory-mapped
    source, gathered once)."""
    members = np.flatnonzero(labels == cluster)
    if len(members) == 0:
        raise SpecializeError(f"cluster {cluster} has no generic windows: no data for its expert")
    tokens = window_tokens(generic.tokens, members, window)
    n_bytes = int(generic.n_bytes * len(tokens) / max(len(generic.tokens), 1))
    return TokenizedSplit(tokens, n_bytes, len(members), f"cluster-{cluster}", generic.bos_id)


def pretrain_mixture(clusters, generic: TokenizedSplit, tokenizer, preset, out_dir: str | os.PathLike,
                     tokens_per_expert: int, cache_dir=None, seed: int = 0, init_from=None, **train_options) -> dict:
    """Pre-train one `preset` expert per cluster on its own windows; returns mixture.json.

    Experts start from scratch by default (the paper's setting: they share nothing, so
    they can train anywhere, in any order, with no common prerequisite); `init_from` (a
    generic model of the same preset and tokenizer) starts every expert from it instead,
    which buys a better start for the price of that model's pre-training."""
    from ..runtime import distributed as dist
    from ..train.jobs import pretrain

    out_dir = Path(out_dir)
    w = dist.world()
    window = clusters.meta["window"]
    if n_windows(generic.tokens, window) != len(clusters.labels):
        raise SpecializeError("the generic token stream does not match the clustering (other corpus or tokenizer)")
    meta = {"arch": "mix", "k": clusters.k, "clusters": str(clusters.folder), "preset": preset.name,
            "tokens_per_expert": tokens_per_expert, "init": str(init_from) if init_from else "scratch", "window": window,
            "experts": [f"expert-{c:03d}" for c in range(clusters.k)], "tokenizer": tokenizer.fingerprint}
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for c in w.shard(clusters.k):  # every expert alone; this process' share of them under mlx.launch
        folder = out_dir / meta["experts"][c]
        if (folder / "summary.json").exists():
            summaries[c] = json.loads((folder / "summary.json").read_text())
            continue
        ui.info(f"expert {c + 1}/{clusters.k}: cluster {c}" + (f" (rank {w.rank})" if w.size > 1 else ""))
        split = expert_split(generic, clusters.labels, c, window)
        with dist.solo():
            result = pretrain(clusters.meta["generic"], preset, folder, tokens_per_expert, tokenizer=tokenizer,
                              cache_dir=cache_dir, resume=True, seed=seed + c, train_split=split,
                              init_from=init_from, **train_options)
        summaries[c] = result.summary
    host = {"rank": w.rank, "host": socket.gethostname()}
    everyone = dist.gather_json({str(c): {**s, **host} for c, s in summaries.items()}, w)  # waits for all
    done = {int(c): s for part in everyone for c, s in part.items()}
    meta.update(tokens=sum(s["tokens"] for s in done.values()), flops=sum(s["flops"] for s in done.values()),
                seconds=sum(s["seconds"] for s in done.values()))
    if w.size > 1:
        meta["trained_on"] = [{"rank": done[c]["rank"], "host": done[c]["host"]} for c in range(clusters.k)]
        elsewhere = [meta["experts"][c] for c in range(clusters.k) if not (out_dir / meta["experts"][c]).is_dir()]
        if elsewhere and w.is_main:
            ui.info(f"{', '.join(elsewhere)} were trained on other hosts (see trained_on in {MIXTURE_FILE}): "
                    f"copy their folders into {out_dir}")
    if w.is_main:
        atomic_write_bytes(out_dir / MIXTURE_FILE, json.dumps(meta, indent=2).encode())
    return meta


def load_mixture(folder: str | os.PathLike) -> dict:
    """mixture.json of a mixture folder; refuses anything else with one clear message."""
    path = Path(folder) / MIXTURE_FILE
    if not path.is_file():
        config = Path(folder) / "config.json"
        kind = "not a model"
        if config.is_file():
            kind = "a projected network" if "mlxspec-projected" in config.read_text() else "a dense model"
        raise SpecializeError(f"{folder} is {kind}, not a mixture of experts (no {MIXTURE_FILE})")
    meta = json.loads(path.read_text())
    if meta.get("arch") != "mix":
        raise SpecializeError(f"{folder} holds a '{meta.get('arch')}' model, not a hard mixture ('mix')")
    return meta


def choose_expert(mixture_dir: str | os.PathLike, rule: str, domain_labels: np.ndarray | None = None,
                  domain_split: TokenizedSplit | None = None,
                  eval_tokens: int = LOSS_RULE_TOKENS) -> tuple[int, list[float]]:
    """(chosen expert, per-expert scores): the domain's cluster histogram (`frequent`)
    or minus the mean loss on its first `eval_tokens` train tokens (`loss`)."""
    from ..models.io import load_model, model_context
    from ..train.evaluate import evaluate

    meta = load_mixture(mixture_dir)
    if rule not in ("frequent", "loss"):
        raise SpecializeError(f"unknown expert selection '{rule}' (choose from {', '.join(SELECT_RULES)})")
    if rule == "frequent":
        counts = np.bincount(domain_labels, minlength=meta["k"]).astype(float)
        scores = list(counts / max(counts.sum(), 1.0))
    else:
        scores = []
        for name in meta["experts"]:
            model, _, config = load_model(Path(mixture_dir) / name)
            scores.append(-evaluate(model, domain_split, model_context(config), 8, eval_tokens).loss)
    return int(np.argmax(scores)), scores


class Mixture(Method):
    name = "mix"
    recipe = 2  # its experts keep their final model (train.jobs.pretrain on one cluster's windows)
    paper = "SLM-mix"
    default_k = 4
    select_rules = SELECT_RULES
    arch = "mix"

    def check_pretrain(self, job: PretrainJob) -> None:
        """The clustering and its generic corpus. No run-folder check: a mixture folder
        continues by itself (finished experts are kept, an unfinished one resumes)."""
        cl.check_clustered_job(job, self.arch)

    def pretrain(self, job: PretrainJob) -> dict:
        """One expert per cluster of `job.clusters` into `job.out_dir`, `job.tokens` in
        all; returns mixture.json."""
        from ..models.presets import get_preset

        clusters, tokenizer, split, _ = cl.clustered_job(job)
        return pretrain_mixture(clusters, split, tokenizer, get_preset(job.preset), job.out_dir,
                                job.tokens // clusters.k, job.cache_dir, job.seed, init_from=job.init,
                                **job.train_options)

    def prepare(self, s: Settings) -> Prepared:
        """Pre-train (or reuse) k experts on `pretrain_tokens` generic tokens in all, then
        choose the domain's expert (`--select all`: every expert, for `specialize` to
        fine-tune and keep the best). `expert_init="generic"` starts every expert from
        the generic SLM (itself pre-trained on `pretrain_tokens`, cached; its cost is added)."""
        g = cl.clustered_generic(s)
        preset, tokenizer, clusters, generic_split = g.preset, g.tokenizer, g.clusters, g.generic
        init_from, init_cost = None, {"tokens": 0, "seconds": 0.0, "flops": 0.0}
        if s.expert_init == "generic":
            init_from, init_cost, _ = cached_pretrain(s.generic, s.preset, s.pretrain_tokens, s.vocab_size, s.seed,
                                                      s.cache_dir, tokenizer_sample=s.tokenizer_sample)
        folder = s.cache_dir / "mixtures" / cl.cache_key(clusters.folder.name, preset.__dict__,
                                                         s.pretrain_tokens // s.k, s.seed, str(init_from),
                                                         *self.recipe_key())
        with cache_entry(folder, f"the {s.k} '{preset.name}' experts on {s.generic}") as entry:
            if entry.ready:
                ui.info(f"using the cached mixture of experts {folder}")
                meta, cached = json.loads((folder / MIXTURE_FILE).read_text()), entry.reused
            else:  # experts already trained (or checkpointed) in the build folder are resumed
                meta = pretrain_mixture(clusters, generic_split, tokenizer, preset, entry.build,
                                        s.pretrain_tokens // s.k, s.cache_dir, s.seed, init_from=init_from,
                                        checkpoint_every=50)
                entry.publish()
                cached = False
        pre_phase = {key: meta[key] + init_cost[key] for key in ("tokens", "seconds", "flops")}
        pre_phase.update(cached=cached, model=str(folder), experts=s.k, init=s.expert_init)
        if s.select == "all":
            return Prepared([folder / name for name in meta["experts"]],
                            {"clusters": g.phase, "select": {"rule": s.select, "k": s.k}, "pretrain": pre_phase})
        t0 = time.perf_counter()
        domain_split = cl.corpus_split(s.domain, "train", tokenizer, s.cache_dir, s.domain_tokens)
        labels = (cl.domain_histogram_labels(clusters, domain_split, tokenizer, s.cache_dir)
                  if s.select == "frequent" else None)
        chosen, scores = choose_expert(folder, s.select, labels, domain_split)
        if s.select == "frequent":  # the domain's windows embedded
            flops = cl.domain_embedding_flops(clusters, s, tokenizer)
        else:  # every expert's forward pass over the domain tokens it scores
            flops = s.k * min(LOSS_RULE_TOKENS, domain_split.n_tokens) * flops_per_token(
                preset.model_args(tokenizer.vocab_size), preset.context, training=False)
        select_phase = {"rule": s.select, "k": s.k, "expert": chosen, "scores": scores,
                        "seconds": time.perf_counter() - t0, "flops": flops}
        return Prepared(folder / meta["experts"][chosen], {"clusters": g.phase, "select": select_phase,
                                                           "pretrain": pre_phase})
