"""What every method shares: the settings of one `specialize` call, and the contract.

A method turns the generic corpus (and, for some, the domain's data) into the model(s)
that `specialize` fine-tunes on the domain. The paper's costs split the same way:

    C(N domains) = C_shared + N x C_per_domain

`prepare` pays what the method pre-trains once for every domain (cached, so a later
domain finds it done) and what it does per domain before fine-tuning (a selection, an
instantiation, SLM-is's whole pre-training); `specialize` then fine-tunes and reports.
`resolve` is the one check of a `specialize` call's options. A method that owns an
architecture (`arch`) also pre-trains it alone, into a folder of the user's, for
`mlxspec pretrain --arch` (`check_pretrain`, then `pretrain`, on a `PretrainJob`).
Adding a method: one module in this package with a `Method` subclass, listed in
`methods/__init__.py`'s registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.clustering import METRICS
from ..data.embedding import EMBEDDER_CHOICES
from ..data.selection import SAMPLERS
from ..errors import SpecializeError, check_choice

EXPERT_INITS = ("scratch", "generic")  # SLM-mix's experts start from scratch or from the generic SLM


@dataclass
class Settings:
    """One `specialize` call with its defaults resolved (corpus specs as the user wrote
    them, budgets in tokens)."""

    domain: str
    generic: str
    method: str
    preset: str
    pretrain_tokens: int
    finetune_tokens: int | None  # None: until early stopping (a safety bound of steps)
    domain_tokens: int | None
    vocab_size: int | None
    seed: int
    cache_dir: Path
    base: str | None = None
    lr: float | None = None
    k: int | None = None  # clusters of the generic corpus (methods that use them)
    embedder: str = "auto"  # an embedder, or auto: chosen by cost when the clusters are made
    window: int | None = None
    sampler: str = "cluster"
    metric: str = "cosine"
    select: str | None = None
    expert_init: str = "scratch"
    basis: int | None = None
    distill_temperature: float = 1.0  # SLM-d: softmax temperature of the KL term
    distill_alpha: float = 0.5  # SLM-d: weight of the KL term (1 - alpha: the data's NLL)
    soup_support: int | None = None  # soup: clusters in each training condition (None: all)
    tokenizer_sample: str = "uniform"  # how the generic tokenizer's text is drawn (data.tokenizer)


@dataclass
class Prepared:
    """What `prepare` hands to the fine-tuning: the model folder to fine-tune (a list:
    fine-tune each, keep the best on the domain's valid split) and the report's phases
    so far ("pretrain", and "select" for the methods that choose per domain)."""

    base: Path | list[Path]
    phases: dict = field(default_factory=dict)


@dataclass
class PretrainJob:
    """One `mlxspec pretrain` call: pre-train an architecture into `out_dir` (a run
    folder of the user's, not a cache entry) on `tokens` tokens. Which fields a method
    reads depends on its architecture: dense reads `generic` (or a `selection` folder),
    `tokenizer`, `vocab_size`; the clustered ones read `clusters`; pn / soup `basis`,
    `expert_dim`, `soup_support`. `train_options` go to the trainer (TrainConfig's names)."""

    out_dir: Path
    generic: str | None  # None: the bundled corpora, or what the selection / clustering was built on
    preset: str
    tokens: int
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    cache_dir: Path | None = None
    train_options: dict = field(default_factory=dict)
    vocab_size: int | None = None
    tokenizer: Path | None = None
    selection: Path | None = None
    clusters: Path | None = None
    init: Path | None = None  # start from this model's weights (same preset and tokenizer)
    basis: int | None = None
    expert_dim: int = 16
    soup_support: int | None = None


def check_generic_is(job: PretrainJob, built_on: str, what: str) -> None:
    """Refuse a `--generic` that is not `built_on`, the corpus `what` (a selection, a
    clustering) was built on and the job trains on: it would be ignored."""
    from ..data.corpus import load_corpus

    if job.generic is not None and load_corpus(job.generic).fingerprint() != load_corpus(built_on).fingerprint():
        raise SpecializeError(f"--generic {job.generic}: {what} was built on {built_on}, which the pre-training "
                              "trains on; leave --generic out")


class Method:
    """One way to get a domain's small model. Subclasses set the class attributes and
    implement `prepare`."""

    name = ""  # --method
    paper = ""  # the paper's name for it
    default_k: int | None = None  # clusters of the generic corpus it uses (None: none)
    select_rules: tuple[str, ...] = ()  # --select values, the default first
    # The report's phases paid once for every domain (costs.split_costs); the others are
    # paid per domain. SLM-is's pre-training is per domain: its `shared_phases` lack it.
    shared_phases: tuple[str, ...] = ("clusters", "pretrain")
    arch: str | None = None  # the architecture `mlxspec pretrain --arch` pre-trains with this method
    # The version of what the method measures: raised when a change alters its models (a
    # study then measures its cells again, `study.spec`; its caches are keyed by it). 2:
    # SLM-is, SLM-mix's experts and the soup keep their final pre-trained model, not the
    # one best on a valid split their training data does not sample.
    recipe: int = 1

    def recipe_key(self) -> tuple:
        """What a cache key of the method's models adds for its recipe (nothing for the first)."""
        return () if self.recipe == 1 else (f"recipe{self.recipe}",)

    def resolve(self, settings: Settings) -> Settings:
        """Check the options of a `specialize` call, each refused naming its option (the
        command line checks them nowhere else), and fill the method's defaults in. Only
        looks at the values: runs before any file is read."""
        if self.select_rules:  # the other methods take no --select
            check_choice("--select", settings.select, self.select_rules)
            settings.select = settings.select or self.select_rules[0]
        check_choice("--expert-init", settings.expert_init, EXPERT_INITS)
        check_choice("--embedder", settings.embedder, EMBEDDER_CHOICES)
        check_choice("--sampler", settings.sampler, SAMPLERS)
        check_choice("--metric", settings.metric, METRICS)
        if not settings.distill_temperature > 0:
            raise SpecializeError(f"--distill-temperature must be positive, not {settings.distill_temperature}")
        if not 0.0 <= settings.distill_alpha <= 1.0:
            raise SpecializeError(f"--distill-alpha must be between 0 and 1, not {settings.distill_alpha}")
        if settings.soup_support is not None and settings.soup_support < 1:
            raise SpecializeError(f"--soup-support must be at least 1, not {settings.soup_support}")
        if settings.soup_support is not None and self.name != "soup":
            raise SpecializeError(f"--soup-support goes with --method soup, not {self.name}")
        if settings.base is not None and self.name != "finetune":
            raise SpecializeError(f"--method {self.name} pre-trains its own base: drop --base")
        if settings.k is None:
            settings.k = self.default_k
        if settings.soup_support is not None and settings.soup_support > settings.k:
            raise SpecializeError(f"--soup-support {settings.soup_support}: more than the {settings.k} clusters (--k)")
        return settings

    def prepare(self, settings: Settings) -> Prepared:
        raise NotImplementedError

    def finetune_options(self, settings: Settings, phases: dict) -> dict:
        """What the domain fine-tuning takes beyond `train.jobs.finetune`'s defaults (its
        keyword arguments: a learning rate, a `loss`), from the settings and the phases
        `prepare` reported; asked again by a resumed run, so it must not build anything."""
        return {}

    def fine_tuned(self, settings: Settings, phases: dict) -> Path | None:
        """A folder holding this run's fine-tuning already made by another method (the
        same base, data and options: SLM-d's teacher is the LLM's fine-tuning), which
        `specialize` copies instead of training again; None: fine-tune here."""
        return None

    def keep_fine_tuned(self, settings: Settings, phases: dict, run_dir: Path) -> None:
        """Offer this run's finished fine-tuning (in `run_dir`) to the methods that
        reuse it (see `fine_tuned`)."""

    def check_pretrain(self, job: PretrainJob) -> None:
        """Refuse, before any work, a `pretrain` job this method cannot run: by default a
        run folder that holds a run, unless the job continues (`resume`) or replaces
        (`overwrite`) it. Subclasses add what their architecture reads."""
        from ..train.jobs import check_run_folder

        check_run_folder(job.out_dir, job.overwrite, job.resume)

    def pretrain(self, job: PretrainJob) -> dict:
        """Pre-train this method's architecture for `job` (checked by `check_pretrain`);
        returns the summary to report."""
        raise NotImplementedError(f"--method {self.name} has no architecture of its own to pre-train")
