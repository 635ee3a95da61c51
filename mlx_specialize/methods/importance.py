"""SLM-is (`--method is`): pre-train on generic text resampled to look like the domain.

    domain windows --assign to the generic clusters (clusters.py)--> P(c|D)
    P(c|D), generic labels --resample--> N tokens of generic windows --> pre-train an SLM

The clustering is shared by every domain; the selection and the pre-training are paid per
domain (cached by domain and settings). A selection folder (in that cache entry, or
written by `select_for_domain`, `mlxspec data select`) holds `tokens.bin` + `tokens.json`
(the resampled token stream, windows concatenated), `report.json` and `histograms.png`
(the domain's, generic and selected cluster histograms).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .. import ui
from ..runtime.cache import cache_entry
from ..data.corpus import load_corpus
from ..data.embedding import n_windows, window_texts, window_tokens
from ..data.selection import SAMPLERS, Selection, select
from ..data.tokenizer import Tokenizer
from ..data.tokens import TokenizedSplit
from ..errors import SpecializeError, check_choice
from ..runtime.files import atomic_write_bytes
from ..train.jobs import pretrain
from . import clusters as cl
from .base import Method, Prepared, Settings
from .clusters import Clusters


def select_tokens(clusters: Clusters, generic: TokenizedSplit, domain_labels: np.ndarray, n_tokens: int,
                  out: str | os.PathLike, sampler: str = "cluster", seed: int = 0) -> tuple[TokenizedSplit, Selection]:
    """Resample generic windows to `n_tokens` tokens; writes the selection folder."""
    window = clusters.meta["window"]
    if n_windows(generic.tokens, window) != len(clusters.labels):
        raise SpecializeError("the generic token stream does not match the clustering (other corpus or tokenizer)")
    n = max(1, -(-n_tokens // window))
    selection = select(clusters.labels, domain_labels, clusters.k, n, sampler, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stream = window_tokens(generic.tokens, selection.indices, window)
    atomic_write_bytes(out / "tokens.bin", stream.tobytes())
    bytes_per_token = generic.n_bytes / max(len(generic.tokens), 1)
    meta = {"n_tokens": int(len(stream)), "dtype": stream.dtype.name, "n_bytes": int(bytes_per_token * len(stream)),
            "n_docs": int(len(selection.indices)), "bos": generic.bos_id, "generic": clusters.meta["generic"],
            "tokenizer": clusters.meta["tokenizer"]}
    atomic_write_bytes(out / "tokens.json", json.dumps(meta).encode())
    Tokenizer.load(clusters.folder).save(out)
    return load_selected(out), selection


def _selection_meta(folder: Path) -> dict:
    """A selection folder's tokens.json; refuses a folder that holds none."""
    if not (folder / "tokens.json").is_file():
        raise SpecializeError(f"no selection at {folder} (run `mlxspec data select` first)")
    return json.loads((folder / "tokens.json").read_text())


def load_selected(folder: str | os.PathLike) -> TokenizedSplit:
    """The token stream of a selection folder."""
    folder = Path(folder)
    meta = _selection_meta(folder)
    tokens = np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
    return TokenizedSplit(tokens, meta["n_bytes"], meta["n_docs"], f"selected:{folder.name}", meta.get("bos"))


def selected_from(folder: str | os.PathLike) -> str:
    """The generic corpus (spec) a selection folder's windows were drawn from."""
    return _selection_meta(Path(folder))["generic"]


def select_like_domain(clusters: Clusters, generic: TokenizedSplit, tokenizer, domain: str,
                       domain_tokens: int | None, n_tokens: int, out: Path, sampler: str, seed: int,
                       cache_dir) -> tuple[TokenizedSplit, dict]:
    """The importance sampling itself: the domain's train windows (its first
    `domain_tokens` tokens) assigned to the clusters give P(c|D), from which `n_tokens`
    generic tokens are resampled into the selection folder `out`, with its report and
    chart. Returns (the selected tokens, the report)."""
    domain_split = cl.corpus_split(domain, "train", tokenizer, cache_dir, domain_tokens)
    domain_labels = cl.domain_histogram_labels(clusters, domain_split, tokenizer, cache_dir)
    selected, selection = select_tokens(clusters, generic, domain_labels, n_tokens, out, sampler, seed)
    return selected, report(selection, clusters, generic, tokenizer, out)


def select_for_domain(clusters_dir: str | os.PathLike, domain: str, n_tokens: int, out_dir: str | os.PathLike,
                      domain_tokens: int | None = None, sampler: str = "cluster", seed: int = 0,
                      overwrite: bool = False, cache_dir=None) -> dict:
    """`mlxspec data select`: `select_like_domain` over the clustering in `clusters_dir`
    (its generic corpus, tokenizer and centroids) into the selection folder `out_dir`.
    Every input is checked before any work: the sampler, an existing selection (replaced
    only with `overwrite`), the clusters folder, both corpora read through. Returns the
    selection's report."""
    from ..runtime.cache import default_cache_dir

    check_choice("--sampler", sampler, SAMPLERS)
    out_dir = Path(out_dir)
    if (out_dir / "tokens.json").exists() and not overwrite:
        raise SpecializeError(f"{out_dir} already holds a selection (pass --overwrite to replace it)")
    cache_dir = cache_dir or default_cache_dir()
    clusters = cl.load_clusters(clusters_dir)
    load_corpus(domain).check(("train",))
    load_corpus(clusters.meta["generic"]).check(("train",))
    tokenizer = Tokenizer.load(clusters_dir)
    generic = cl.corpus_split(clusters.meta["generic"], "train", tokenizer, cache_dir)
    return select_like_domain(clusters, generic, tokenizer, domain, domain_tokens, n_tokens, out_dir, sampler, seed,
                              cache_dir)[1]


def report(selection: Selection, clusters: Clusters, generic: TokenizedSplit, tokenizer, out: str | os.PathLike,
           top: int = 8) -> dict:
    """report.json + histograms.png: KL, entropy, repeats, the top clusters with a text sample."""
    window = clusters.meta["window"]
    order = np.argsort(-selection.p_domain)[:top]
    top_clusters = []
    for c in order:
        if selection.p_domain[c] <= 0:
            break
        members = np.flatnonzero(clusters.labels == c)
        middle = int(members[len(members) // 2]) if len(members) else -1
        sample = window_texts(generic.tokens, tokenizer, window, middle, middle + 1)[0] if len(members) else ""
        top_clusters.append({"cluster": int(c), "p_domain": float(selection.p_domain[c]),
                             "p_generic": float(selection.p_generic[c]), "p_selected": float(selection.p_selected[c]),
                             "sample": " ".join(sample.split())[:160]})
    result = {**selection.summary(), "k": clusters.k, "top_clusters": top_clusters}
    out = Path(out)
    (out / "report.json").write_text(json.dumps(result, indent=2))
    _plot(selection, out / "histograms.png")
    return result


def _plot(selection: Selection, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-selection.p_domain)
    shown = order[: min(len(order), 64)]
    x = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(max(6, len(shown) * 0.18), 3.2), dpi=120)
    for offset, (values, label) in zip((-0.27, 0.0, 0.27), ((selection.p_domain, "domain P(c|D)"),
                                                           (selection.p_generic, "generic P(c|G)"),
                                                           (selection.p_selected, "selected"))):
        ax.bar(x + offset, values[shown], width=0.27, label=label)
    ax.set_xticks(x, [str(c) for c in shown], fontsize=6)
    ax.set_xlabel("cluster (in order of domain frequency)")
    ax.set_ylabel("share of windows")
    ax.set_title(f"{selection.sampler} sampler: KL(D||selected) {selection.kl_selected:.3f}, "
                 f"KL(D||generic) {selection.kl_generic:.3f} nats")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


SELECT_COST = "cost.json"  # in a selection folder made by `prepare`: its seconds and FLOPs


class ImportanceSampled(Method):
    name = "is"
    paper = "SLM-is"
    default_k = 64
    recipe = 2
    shared_phases = ("clusters",)  # the generic clustering; the selection and pre-training are per domain

    def prepare(self, s: Settings) -> Prepared:
        """Select `pretrain_tokens` generic tokens like the domain, pre-train on them
        (cached by domain and settings)."""
        g = cl.clustered_generic(s)
        preset, tokenizer, clusters, generic_split = g.preset, g.tokenizer, g.clusters, g.generic
        key = cl.cache_key(clusters.folder.name, load_corpus(s.domain).fingerprint(), s.domain_tokens,
                           s.pretrain_tokens, s.sampler, s.seed, preset.__dict__, *self.recipe_key())
        folder = s.cache_dir / "pretrained-is" / key
        with cache_entry(folder, f"the importance-sampled '{preset.name}' model for {s.domain}") as entry:
            if entry.ready:  # its selection too: report.json says what it was
                ui.info(f"using the cached importance-sampled model {folder}")
                summary, cached = json.loads((folder / "summary.json").read_text()), entry.reused
                summary_report = json.loads((folder / "selection" / "report.json").read_text())
                try:
                    select_cost = json.loads((folder / "selection" / SELECT_COST).read_text())
                except (OSError, ValueError):  # an entry made before selections recorded their cost
                    select_cost = {"seconds": None, "flops": None}
            else:
                t0 = time.perf_counter()
                selected, summary_report = select_like_domain(clusters, generic_split, tokenizer, s.domain,
                                                              s.domain_tokens, s.pretrain_tokens,
                                                              entry.build / "selection", s.sampler, s.seed,
                                                              s.cache_dir)
                select_cost = {"seconds": time.perf_counter() - t0,
                               "flops": cl.domain_embedding_flops(clusters, s, tokenizer)}
                atomic_write_bytes(entry.build / "selection" / SELECT_COST, json.dumps(select_cost).encode())
                summary = pretrain(s.generic, preset, entry.build, s.pretrain_tokens, tokenizer=tokenizer,
                                   cache_dir=s.cache_dir, resume=True, seed=s.seed, checkpoint_every=50,
                                   train_split=selected).summary
                entry.publish()
                cached = False
        # embedding the domain's windows, weighting the clusters, resampling the generic
        # windows: per domain, as its pre-training is (FLOPs: the embedder's)
        select_phase = {**select_cost, "clusters": str(clusters.folder),
                        "report": str(folder / "selection"),
                        **{name: summary_report[name] for name in ("k", "sampler", "windows", "kl_selected",
                                                                   "kl_generic", "entropy_domain", "unmatched_mass",
                                                                   "repeats")}}
        pre_phase = {"tokens": summary["tokens"], "seconds": summary["seconds"], "flops": summary["flops"],
                     "cached": cached, "model": str(folder)}
        return Prepared(folder, {"clusters": g.phase, "select": select_phase, "pretrain": pre_phase})
