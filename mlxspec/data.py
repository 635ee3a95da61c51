"""`mlxspec data`: importance-sampling data selection (SLM-is) step by step: embed the
generic corpus, cluster it, select generic windows like a domain's (`pretrain
--selection` trains on them). Each command calls one library function in `methods/`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mlx_specialize.methods.clusters import cluster_embeddings, embed_corpus
from mlx_specialize.methods.importance import select_for_domain

from .app import command, command_group
from .options import CACHE_OPT, DOMAIN_TOKENS_OPT, DataCluster, DataEmbed, DataSelect, overwrite_option, seed_option
from .output import emit, summary_table
from .reports import selection_view

data_app = command_group(help="Importance-sampling data selection (SLM-is): embed, cluster, select.")


@command(data_app, "embed")
def data_embed(
    generic: str = DataEmbed.generic,
    tokenizer: Optional[Path] = DataEmbed.tokenizer,
    vocab_size: int = DataEmbed.vocab_size,
    embedder: str = DataEmbed.embedder,
    window: int = DataEmbed.window,
    max_windows: Optional[int] = DataEmbed.max_windows,
    cache_dir: Optional[Path] = CACHE_OPT,
):
    """Embed the generic corpus's windows (resumable float16 shards in the cache)."""
    report = embed_corpus(generic, embedder, window, tokenizer, vocab_size, max_windows, cache_dir)
    emit(report, summary_table(f"embedded {generic}", {k: v for k, v in report.items() if k != "embedder"}))


@command(data_app, "cluster")
def data_cluster(
    embeddings: Path = DataCluster.embeddings,
    out_dir: Path = DataCluster.out_dir,
    k: int = DataCluster.k,
    metric: str = DataCluster.metric,
    seed: int = seed_option(),
    overwrite: bool = overwrite_option("Replace an existing clusters folder."),
):
    """k-means over the generic embeddings; keeps centroids, labels, embedder state."""
    report = cluster_embeddings(embeddings, k, out_dir, metric, seed, overwrite)
    emit(report, summary_table(f"k-means over {embeddings}", report))


@command(data_app, "select")
def data_select(
    clusters: Path = DataSelect.clusters,
    domain: str = DataSelect.domain,
    tokens: int = DataSelect.tokens,
    out_dir: Path = DataSelect.out_dir,
    domain_tokens: Optional[int] = DOMAIN_TOKENS_OPT,
    sampler: str = DataSelect.sampler,
    seed: int = seed_option(),
    overwrite: bool = overwrite_option("Replace an existing selection."),
    cache_dir: Optional[Path] = CACHE_OPT,
):
    """Resample generic windows so their cluster histogram matches the domain's."""
    report = select_for_domain(clusters, domain, tokens, out_dir, domain_tokens, sampler, seed, overwrite, cache_dir)
    emit(report, *selection_view(report, out_dir))
