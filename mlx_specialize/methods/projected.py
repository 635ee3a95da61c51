"""SLM-pn (`--method pn`) and Soup-of-Experts (`--method soup`): one network pre-trained
once on the clustered generic corpus, shared by every domain, from which the domain's
dense SLM is computed in closed form and then fine-tuned.

    generic windows + their clusters --pre-train (train/projected.py)--> network (shared)
    domain windows --assign--> most frequent cluster, or histogram --instantiate--> dense SLM

The models are in `models/projected.py`, their training in `train/projected.py`. The
domain's dense SLM is a cache entry of its own inside the network's folder
(`instances/<key>`, not in the network's manifest), with what was chosen in instance.json.
`mlxspec pretrain --arch pn|soup` is `Projected.pretrain`; `mlxspec instantiate` is
`instantiate_network`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ..runtime.cache import cache_entry
from .. import ui
from ..data.corpus import load_corpus
from ..errors import SpecializeError, check_choice
from ..runtime.files import atomic_write_bytes
from ..models.projected import one_hot, read_projected_config
from ..train.projected import domain_condition, instantiate_folder, pretrain_projected
from . import clusters as cl
from .base import Method, Prepared, PretrainJob, Settings

DEFAULT_BASIS = 8  # basis matrices h per MLP weight
INSTANCE_RULES = ("frequent", "histogram")  # a domain's condition: its most frequent cluster, or its histogram


def instantiate_for_domain(folder: str | os.PathLike, out_dir: str | os.PathLike, domain: str, rule: str,
                           domain_tokens: int | None = None, cache_dir=None) -> dict:
    """Write the dense SLM of `domain` for the network in `folder`: the domain's train
    windows (its first `domain_tokens`) are embedded and assigned to the network's own
    clustering, and `rule` (`frequent` or `histogram`) turns them into the condition.
    Returns what was chosen (rule, cluster or histogram)."""
    from ..data.hf_tokenizer import load_tokenizer
    from ..runtime.cache import default_cache_dir

    config = read_projected_config(folder)
    clusters_dir = config.get("mlxspec", {}).get("clusters")
    if not clusters_dir or not Path(clusters_dir).is_dir():
        raise SpecializeError(f"{folder} was trained on the clustering {clusters_dir}, which is gone: give --cluster "
                              "or --weights instead of --domain")
    clusters = cl.load_clusters(clusters_dir)
    tokenizer = load_tokenizer(Path(folder), config)
    cache_dir = cache_dir or default_cache_dir()
    split = cl.corpus_split(domain, "train", tokenizer, cache_dir, domain_tokens)
    labels = cl.domain_histogram_labels(clusters, split, tokenizer, cache_dir)
    cond, chosen = domain_condition(labels, clusters.k, rule)
    picked = {"cluster": chosen["cluster"]} if "cluster" in chosen else {}
    instantiate_folder(folder, out_dir, cond, {"domain": domain, "rule": rule, **picked})
    return {**chosen, "windows": int(len(labels))}


def instantiate_network(network: str | os.PathLike, out_dir: str | os.PathLike, domain: str | None = None,
                        select: str = "frequent", domain_tokens: int | None = None, cluster: int | None = None,
                        weights=None, overwrite: bool = False, cache_dir=None) -> dict:
    """`mlxspec instantiate`: write the dense SLM of the pn / soup in `network` for exactly
    one of a domain (`instantiate_for_domain`, by `select`), one cluster's expert, or
    cluster `weights` (k non-negative numbers, normalized). Checked before any work: the
    network, the choice, a model already in `out_dir` (replaced only with `overwrite`),
    the domain read through. Returns the model folder, the architecture, what was chosen."""
    config = read_projected_config(network)
    if sum(x is not None for x in (domain, cluster, weights)) != 1:
        raise SpecializeError("give exactly one of --domain, --cluster or --weights")
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and not overwrite:
        raise SpecializeError(f"{out_dir} already holds a model (pass --overwrite to replace it)")
    if domain is not None:
        check_choice("--select", select, INSTANCE_RULES)
        load_corpus(domain).check(("train",))
        chosen = instantiate_for_domain(network, out_dir, domain, select, domain_tokens, cache_dir)
    elif cluster is not None:
        instantiate_folder(network, out_dir, np.array(one_hot(cluster, config["projection"]["experts"])),
                           {"cluster": cluster})
        chosen = {"cluster": cluster}
    else:
        cond = np.asarray(weights, dtype=float)
        instantiate_folder(network, out_dir, cond)
        chosen = {"weights": cond.tolist()}
    return {"model": str(out_dir), "arch": config["projection"]["arch"], **chosen}


class Projected(Method):
    """pn: one expert per cluster, generated from a shared tensor (instantiated for the
    domain's most frequent cluster by default); soup: shared weights plus a mix of
    experts set by the domain's cluster histogram (the default there)."""

    default_k = 16

    def __init__(self, arch: str):
        self.name = self.arch = arch
        self.paper = {"pn": "SLM-pn", "soup": "Soup-of-Experts"}[arch]
        self.select_rules = INSTANCE_RULES if arch == "pn" else INSTANCE_RULES[::-1]
        self.recipe = 1 if arch == "pn" else 2  # the soup keeps its final model (train.projected)

    def check_pretrain(self, job: PretrainJob) -> None:
        """The run folder, the clustering and its generic corpus."""
        super().check_pretrain(job)
        cl.check_clustered_job(job, self.arch)

    def pretrain(self, job: PretrainJob) -> dict:
        """The network on the clustering of `job.clusters`, into `job.out_dir`; returns
        the run's summary with its parameters: in all, and per instantiated SLM (active)."""
        from ..models.presets import get_preset

        clusters, tokenizer, split, cache_dir = cl.clustered_job(job)
        t0 = time.perf_counter()
        valid, valid_labels = cl.clustered_valid(clusters, tokenizer, cache_dir)
        label_seconds = time.perf_counter() - t0
        summary = pretrain_projected(clusters, split, valid, valid_labels, tokenizer, get_preset(job.preset),
                                     job.out_dir, job.tokens, self.arch, expert_dim=job.expert_dim,
                                     basis=job.basis or DEFAULT_BASIS, support=job.soup_support, seed=job.seed,
                                     resume=job.resume, overwrite=job.overwrite, **job.train_options)
        label_flops = cl.valid_labelling_flops(clusters, tokenizer, cache_dir)  # as `prepare` counts them
        return {"model": str(job.out_dir), "arch": self.arch, **summary, "params": summary["params"]["total"],
                "active_params": summary["params"]["active"], "flops": summary["flops"] + label_flops,
                "seconds": summary["seconds"] + label_seconds, "label_flops": label_flops,
                "label_seconds": label_seconds}

    def prepare(self, s: Settings) -> Prepared:
        g = cl.clustered_generic(s)
        preset, tokenizer, clusters, generic_split = g.preset, g.tokenizer, g.clusters, g.generic
        basis = s.basis or DEFAULT_BASIS
        support = s.soup_support or clusters.k  # soup: all clusters by default (resolve checked it is no more)
        settings = (self.name, basis) if self.name == "pn" else (self.name, basis, f"support{support}",
                                                                 *self.recipe_key())
        folder = s.cache_dir / "projected" / cl.cache_key(clusters.folder.name, preset.__dict__, s.pretrain_tokens,
                                                          s.seed, *settings)
        with cache_entry(folder, f"the {self.name} network '{preset.name}' on {s.generic} (k={clusters.k})") as entry:
            if entry.ready:
                ui.info(f"using the cached {self.name} network {folder}")
                summary, cached = json.loads((folder / "summary.json").read_text()), entry.reused
            else:
                t0 = time.perf_counter()
                valid, valid_labels = cl.clustered_valid(clusters, tokenizer, s.cache_dir)
                label_seconds = time.perf_counter() - t0
                summary = pretrain_projected(clusters, generic_split, valid, valid_labels, tokenizer, preset,
                                             entry.build, s.pretrain_tokens, self.name, basis=basis, seed=s.seed,
                                             support=None if support == clusters.k else support,
                                             checkpoint_every=50)
                # kept with it: a reuse reports what making it took
                written = json.loads((entry.build / "summary.json").read_text())
                atomic_write_bytes(entry.build / "summary.json",
                                   json.dumps({**written, "label_seconds": label_seconds}, indent=2).encode())
                summary["label_seconds"] = label_seconds
                entry.publish()
                cached = False
        pre_phase = {key: summary[key] for key in ("tokens", "seconds", "flops")}
        # its validation windows were embedded to label them: counted with it (shared), apart
        # too, as they are no part of the training the budget buys (fit.cell_rows)
        pre_phase["label_flops"] = cl.valid_labelling_flops(clusters, tokenizer, s.cache_dir)
        pre_phase["label_seconds"] = summary.get("label_seconds", 0.0)
        pre_phase["flops"] += pre_phase["label_flops"]
        pre_phase["seconds"] += pre_phase["label_seconds"]
        pre_phase.update(cached=cached, model=str(folder), arch=self.name, k=s.k, basis=basis,
                         **({"support": support} if self.name == "soup" else {}))
        t0 = time.perf_counter()
        dense_dir = folder / "instances" / cl.cache_key(load_corpus(s.domain).fingerprint(), s.domain_tokens, s.select)
        with cache_entry(dense_dir, f"the {self.name} SLM of {s.domain}") as entry:
            if entry.ready:
                select_phase = json.loads((dense_dir / "instance.json").read_text())
            else:
                select_phase = instantiate_for_domain(folder, entry.build, s.domain, s.select, s.domain_tokens,
                                                      s.cache_dir)
                # what making it took, kept with it: a reuse reports the cost, as its FLOPs are
                select_phase["seconds"] = time.perf_counter() - t0
                atomic_write_bytes(entry.build / "instance.json", json.dumps(select_phase).encode())
                entry.publish()
        # per domain: its windows embedded (the instantiation itself is a few small products);
        # an instance made before its seconds were kept: this call's
        select_phase.setdefault("seconds", time.perf_counter() - t0)
        select_phase.update(k=s.k, instance=str(dense_dir),
                            flops=cl.embedding_flops(clusters.meta["embedder"]["embedder"], select_phase["windows"]))
        return Prepared(dense_dir, {"clusters": g.phase, "select": select_phase, "pretrain": pre_phase})
