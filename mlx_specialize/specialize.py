"""`specialize`: the main job. A generic small model, specialized to one domain.

    generic SLM  --(fine-tune on the domain's limited train data)-->  domain SLM

1. Base model: the one given with `base`, or a `preset` model pre-trained on the
   generic corpus. Pre-training is the budget shared by every domain, so its result is
   cached under `CACHE/pretrained/<hash of corpus, preset, budget, seed>` and reused by
   later runs. Like every cache entry (`cache.py`) it is built by one process at a time in
   `<key>.partial` (an interrupted pre-training resumes there from its last checkpoint)
   and renamed into place, with a manifest checked on use, once complete.
2. Fine-tune on the first `domain_tokens` tokens of the domain's train split,
   early-stopping on its valid split (the specialization budget).
3. Report domain test perplexity and bits per byte before and after, tokens, FLOPs
   and seconds per phase, model size and measured generation speed.

The run folder (`out_dir`, default runs/DOMAIN-METHOD[-N]) keeps `specialize.json`: the
command (settings and corpus fingerprints) and the figures of each phase once finished.
Running the same command again after an interruption (Ctrl-C, kill -9, a full disk)
continues with the first unfinished phase: pre-training resumes in its cache entry, the
fine-tuning from its last checkpoint (every 50 steps), and the report gives what the
phases measured when they ran. A finished run's report is returned as it is; another
command's run is refused unless `overwrite`.

`method`: `finetune` (SLM: the generic model, fine-tuned), `is` (SLM-is: importance
sampling; the pre-training set is resampled from the generic corpus so its cluster
histogram matches the domain's, see `importance.py`; pre-training is then per domain,
cached by domain and settings, and the embedding and clustering are shared) or `mix`
(SLM-mix: one expert SLM per generic cluster, pre-trained once on the same total token
budget and shared by all domains; the domain's expert is chosen by `select` and
fine-tuned, see `models/mixture.py`), `pn` (SLM-pn, the projected network) or `soup`
(Soup-of-Experts): one network pre-trained once on the clustered generic corpus, shared by
all domains, from which the domain's dense SLM is computed in closed form (its most
frequent cluster, or its cluster histogram: `select`) and fine-tuned; see
`models/projected.py` and `train/projected.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import ui
from .cache import cache_entry
from .data.corpus import bundled_names, default_generic, load_corpus
from .data.tokens import default_cache_dir
from .errors import SpecializeError
from .files import atomic_write_bytes
from .models.dense import count_params
from .models.generate import measure_generation
from .models.io import load_model
from .models.presets import get_preset, with_overrides
from .train.jobs import evaluate_model, finetune, pretrain

METHODS = ("finetune", "is", "mix", "pn", "soup")
DEFAULT_K = {"is": 64, "mix": 4, "pn": 16, "soup": 16}  # clusters per method
DEFAULT_DOMAIN = "python-docs"
DEFAULT_PRESET = "small"
DEFAULT_PRETRAIN_TOKENS = 600_000
DEFAULT_FINETUNE_TOKENS = 120_000


def _pretrain_key(fingerprint: str, preset, tokens: int, vocab: int | None, seed: int) -> str:
    src = json.dumps([fingerprint, preset.__dict__, tokens, vocab, seed], sort_keys=True, default=str)
    return hashlib.sha256(src.encode()).hexdigest()[:16]


RUN_STATE = "specialize.json"  # in the run folder: the command, and each phase once finished
RUN_FILES = (RUN_STATE, "report.json", "summary.json", "metrics.jsonl", "run.json", "checkpoints", "candidates",
             "selection-report.json", "selection-histograms.png")


def run_command(domain: str, generic: str, method: str, base, preset: str, domain_tokens, pretrain_tokens: int,
                finetune_tokens: int, vocab_size, lr, seed: int, k: int, embedder: str, window, sampler: str,
                metric: str, select: str, expert_init: str, basis) -> dict:
    """What decides a run's result: its settings and the bytes of its corpora. A run
    folder continues only the same command (see `run_folder_state`)."""
    return {"domain": domain, "generic": generic, "method": method, "base": base, "preset": preset,
            "domain_tokens": domain_tokens, "pretrain_tokens": pretrain_tokens, "finetune_tokens": finetune_tokens,
            "vocab_size": vocab_size, "lr": lr, "seed": seed, "k": k, "embedder": embedder, "window": window,
            "sampler": sampler, "metric": metric, "select": select, "expert_init": expert_init, "basis": basis,
            "data": {"domain": load_corpus(domain).fingerprint(), "generic": load_corpus(generic).fingerprint()}}


def _read_state(out_dir: Path) -> dict | None:
    try:
        state = json.loads((out_dir / RUN_STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("command"), dict) else None


def _differences(old: dict, new: dict) -> str:
    keys = [key for key in new if key != "data" and old.get(key) != new[key]]
    if keys:
        return ", ".join(f"{key} {old.get(key)!r} -> {new[key]!r}" for key in keys)
    changed = [name for name in ("domain", "generic") if old.get("data", {}).get(name) != new["data"][name]]
    return f"the {' and '.join(changed) or 'corpus'} data changed" if changed else "another version's settings"


def run_folder_state(out_dir: Path, command: dict, overwrite: bool = False) -> str:
    """What `specialize` will do with `out_dir`, checked before any work: "new" (absent or
    empty, or a run replaced with `overwrite`), "resume" (an unfinished run of the same
    command: it continues from the phase it reached) or "finished" (the same command's
    finished run: its report is returned). Raises for a file, a folder of other files,
    and another command's run without `overwrite`."""
    if not out_dir.exists():
        return "new"
    if not out_dir.is_dir():
        raise SpecializeError(f"--out {out_dir} is a file; choose another --out")
    names = {p.name for p in out_dir.iterdir()}
    if not names:
        return "new"
    if not names & set(RUN_FILES):  # never write a run over (or delete) files that are not one
        raise SpecializeError(f"{out_dir} is not empty and holds no run; choose another --out")
    if overwrite:
        return "new"
    state = _read_state(out_dir)
    if state is None:
        raise SpecializeError(f"{out_dir} holds a run that `specialize` did not start (or an older version's); "
                              "pass --overwrite to replace it, or choose another --out")
    if state["command"] != command:
        raise SpecializeError(f"{out_dir} holds a run of another command ({_differences(state['command'], command)}); "
                              "pass --overwrite to replace it, or choose another --out")
    return "finished" if state.get("done") and (out_dir / "report.json").is_file() else "resume"


def default_run_dir(command: dict) -> Path:
    """runs/DOMAIN-METHOD, or the first runs/DOMAIN-METHOD-N that is free or holds this
    same command (which then continues, or is already done)."""
    domain = command["domain"]
    stem = Path("runs") / f"{Path(domain.split(',')[0].split('?')[0]).name.split('.')[0] or 'domain'}-{command['method']}"
    path, n = stem, 1
    while path.exists():
        state = _read_state(path) if path.is_dir() else None
        if state is not None and state["command"] == command:
            return path
        n += 1
        path = stem.with_name(f"{stem.name}-{n}")
    return path


def _clear_run(out_dir: Path) -> None:
    """Remove a replaced run's files (only those a run writes; the trainer rewrites the model)."""
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def cached_pretrain(generic: str, preset_name: str, tokens: int, vocab_size: int | None, seed: int,
                    cache_dir: Path, context: int | None = None) -> tuple[Path, dict, bool]:
    """Pre-train (or reuse) the generic base model. Returns (folder, summary, reused)."""
    preset = with_overrides(get_preset(preset_name), context=context)
    corpus = load_corpus(generic)
    folder = cache_dir / "pretrained" / _pretrain_key(corpus.fingerprint(), preset, tokens, vocab_size, seed)
    with cache_entry(folder, f"the generic model '{preset.name}' on {generic} ({tokens:,} tokens)") as entry:
        if entry.ready:
            ui.info(f"using the cached generic model {folder}")
            return folder, json.loads((folder / "summary.json").read_text()), True
        result = pretrain(generic, preset, entry.build, tokens, vocab_size=vocab_size, cache_dir=cache_dir,
                          resume=True, seed=seed, checkpoint_every=50)
        entry.publish()
    return folder, result.summary, False


def importance_pretrain(domain: str, generic: str, preset_name: str, tokens: int, vocab_size: int | None, seed: int,
                        cache_dir: Path, domain_tokens: int | None, k: int, embedder: str,
                        window: int | None, sampler: str, metric: str) -> tuple[Path, dict, dict]:
    """SLM-is pre-training: select `tokens` generic tokens like the domain, pre-train on
    them (cached). Returns (model folder, selection phase, pre-training phase)."""
    from . import importance as imp

    preset = get_preset(preset_name)
    window = window or preset.context
    t0 = time.perf_counter()
    tokenizer = imp.generic_tokenizer(generic, vocab_size or preset.vocab, cache_dir)
    clusters, reused = imp.cached_clusters(generic, tokenizer, embedder, window, k, metric, seed, cache_dir)
    generic_split = imp.corpus_split(generic, "train", tokenizer, cache_dir)
    key = imp.cache_key(clusters.folder.name, load_corpus(domain).fingerprint(), domain_tokens, tokens, sampler, seed,
                        preset.__dict__)
    folder = cache_dir / "pretrained-is" / key
    with cache_entry(folder, f"the importance-sampled '{preset.name}' model for {domain}") as entry:
        if entry.ready:  # its selection too: report.json says what it was
            ui.info(f"using the cached importance-sampled model {folder}")
            summary, cached = json.loads((folder / "summary.json").read_text()), True
            summary_report = json.loads((folder / "selection" / "report.json").read_text())
        else:
            domain_split = imp.corpus_split(domain, "train", tokenizer, cache_dir, domain_tokens)
            domain_labels = imp.domain_histogram_labels(clusters, domain_split, tokenizer, cache_dir)
            selected, selection = imp.select_tokens(clusters, generic_split, domain_labels, tokens,
                                                    entry.build / "selection", sampler, seed)
            summary_report = imp.report(selection, clusters, generic_split, tokenizer, entry.build / "selection")
            summary = pretrain(generic, preset, entry.build, tokens, tokenizer=tokenizer, cache_dir=cache_dir,
                               resume=True, seed=seed, checkpoint_every=50, train_split=selected).summary
            entry.publish()
            cached = False
    select_phase = {"seconds": time.perf_counter() - t0, "clusters": str(clusters.folder), "clusters_cached": reused,
                    "report": str(folder / "selection"),
                    **{name: summary_report[name] for name in ("k", "sampler", "windows", "kl_selected", "kl_generic",
                                                               "entropy_domain", "unmatched_mass", "repeats")}}
    pre_phase = {"tokens": summary["tokens"], "seconds": summary["seconds"], "flops": summary["flops"],
                 "cached": cached, "model": str(folder)}
    return folder, select_phase, pre_phase


def mixture_expert(domain: str, generic: str, preset_name: str, tokens: int, vocab_size: int | None, seed: int,
                   cache_dir: Path, domain_tokens: int | None, k: int, embedder: str, window: int | None,
                   metric: str, rule: str, expert_init: str = "scratch") -> tuple[Path, dict, dict]:
    """SLM-mix: pre-train (or reuse) k experts on `tokens` generic tokens in all, then
    choose the domain's expert. `expert_init="generic"` starts every expert from the
    generic SLM (itself pre-trained on `tokens`, cached; its cost is added). Returns
    (expert folder, selection phase, pre-training phase)."""
    from . import importance as imp
    from .models.mixture import SELECT_RULES, choose_expert, pretrain_mixture

    if rule not in SELECT_RULES:
        raise SpecializeError(f"unknown expert selection '{rule}' (choose from {', '.join(SELECT_RULES)})")
    if expert_init not in ("scratch", "generic"):
        raise SpecializeError(f"unknown expert initialisation '{expert_init}' (scratch or generic)")
    preset = get_preset(preset_name)
    window = window or preset.context
    tokenizer = imp.generic_tokenizer(generic, vocab_size or preset.vocab, cache_dir)
    clusters, _ = imp.cached_clusters(generic, tokenizer, embedder, window, k, metric, seed, cache_dir)
    generic_split = imp.corpus_split(generic, "train", tokenizer, cache_dir)
    init_from, init_cost = None, {"tokens": 0, "seconds": 0.0, "flops": 0.0}
    if expert_init == "generic":
        init_from, init_cost, _ = cached_pretrain(generic, preset_name, tokens, vocab_size, seed, cache_dir)
    folder = cache_dir / "mixtures" / imp.cache_key(clusters.folder.name, preset.__dict__, tokens // k, seed,
                                                    str(init_from))
    with cache_entry(folder, f"the {k} '{preset.name}' experts on {generic}") as entry:
        if entry.ready:
            ui.info(f"using the cached mixture of experts {folder}")
            meta, cached = json.loads((folder / "mixture.json").read_text()), True
        else:  # experts already trained (or checkpointed) in the build folder are resumed
            meta = pretrain_mixture(clusters, generic_split, tokenizer, preset, entry.build, tokens // k, cache_dir,
                                    seed, init_from=init_from, checkpoint_every=50)
            entry.publish()
            cached = False
    pre_phase = {key: meta[key] + init_cost[key] for key in ("tokens", "seconds", "flops")}
    pre_phase.update(cached=cached, model=str(folder), experts=k, init=expert_init)
    if rule == "all":  # `specialize` fine-tunes them all and keeps the best
        return [folder / name for name in meta["experts"]], {"rule": rule, "k": k}, pre_phase
    t0 = time.perf_counter()
    domain_split = imp.corpus_split(domain, "train", tokenizer, cache_dir, domain_tokens)
    labels = imp.domain_histogram_labels(clusters, domain_split, tokenizer, cache_dir) if rule == "frequent" else None
    chosen, scores = choose_expert(folder, rule, labels, domain_split)
    select_phase = {"rule": rule, "k": k, "expert": chosen, "scores": scores, "seconds": time.perf_counter() - t0}
    return folder / meta["experts"][chosen], select_phase, pre_phase


def projected_instance(domain: str, generic: str, preset_name: str, tokens: int, vocab_size: int | None, seed: int,
                       cache_dir: Path, domain_tokens: int | None, k: int, embedder: str, window: int | None,
                       metric: str, arch: str, rule: str, basis: int | None = None) -> tuple[Path, dict, dict]:
    """SLM-pn / soup: pre-train (or reuse) the network on `tokens` generic tokens, then
    write the domain's dense SLM in closed form, for its most frequent cluster
    (`frequent`) or its cluster histogram (`histogram`). Returns (dense folder,
    selection phase, pre-training phase)."""
    from . import importance as imp
    from .train.projected import instantiate_for_domain, pretrain_projected

    if rule not in ("frequent", "histogram"):
        raise SpecializeError(f"--method {arch} instantiates for the domain's most frequent cluster or its "
                              f"histogram: --select frequent|histogram, not '{rule}'")
    preset = get_preset(preset_name)
    window = window or preset.context
    tokenizer = imp.generic_tokenizer(generic, vocab_size or preset.vocab, cache_dir)
    clusters, _ = imp.cached_clusters(generic, tokenizer, embedder, window, k, metric, seed, cache_dir)
    generic_split = imp.corpus_split(generic, "train", tokenizer, cache_dir)
    basis = basis or 8
    settings = (arch, basis) if arch == "pn" else (arch, basis, f"support{clusters.k}")  # soup: all clusters
    folder = cache_dir / "projected" / imp.cache_key(clusters.folder.name, preset.__dict__, tokens, seed, *settings)
    with cache_entry(folder, f"the {arch} network '{preset.name}' on {generic} (k={clusters.k})") as entry:
        if entry.ready:
            ui.info(f"using the cached {arch} network {folder}")
            summary, cached = json.loads((folder / "summary.json").read_text()), True
        else:
            summary = pretrain_projected(clusters, generic_split, tokenizer, preset, entry.build, tokens, arch,
                                         cache_dir, basis=basis, seed=seed, checkpoint_every=50)
            entry.publish()
            cached = False
    pre_phase = {key: summary[key] for key in ("tokens", "seconds", "flops")}
    pre_phase.update(cached=cached, model=str(folder), arch=arch, k=k, basis=basis)
    t0 = time.perf_counter()
    # The domain's dense SLM: an entry of its own inside the network's folder (not in its
    # manifest), with what was chosen for it in instance.json.
    dense_dir = folder / "instances" / imp.cache_key(load_corpus(domain).fingerprint(), domain_tokens, rule)
    with cache_entry(dense_dir, f"the {arch} SLM of {domain}") as entry:
        if entry.ready:
            select_phase = json.loads((dense_dir / "instance.json").read_text())
        else:
            select_phase = instantiate_for_domain(folder, entry.build, domain, rule, domain_tokens, cache_dir)
            atomic_write_bytes(entry.build / "instance.json", json.dumps(select_phase).encode())
            entry.publish()
    select_phase.update(k=k, seconds=time.perf_counter() - t0, instance=str(dense_dir))
    return dense_dir, select_phase, pre_phase


def finetune_best(bases: list[Path], domain: str, out_dir: Path, domain_tokens, finetune_tokens, cache_dir,
                  **options):
    """Fine-tune every base in OUT/candidates/, copy the one with the lowest domain valid
    loss into `out_dir`. Each candidate resumes (or is found finished) on a rerun.
    Returns (its base, its summary, the summed cost and every valid loss)."""
    candidates = out_dir / "candidates"
    results = [finetune(base, domain, candidates / base.name, domain_tokens, finetune_tokens, cache_dir=cache_dir,
                        resume=True, **options) for base in bases]
    losses = [r.summary["best_valid_loss"] if r.summary["best_valid_loss"] is not None else float("inf")
              for r in results]
    best = int(min(range(len(bases)), key=losses.__getitem__))
    for path in sorted((candidates / bases[best].name).iterdir()):  # the run's files, not its checkpoints
        if path.is_file() and not path.name.startswith("."):
            tmp = out_dir / f".{path.name}.tmp{os.getpid()}"
            shutil.copy2(path, tmp)
            os.replace(tmp, out_dir / path.name)
    cost = {key: sum(r.summary[key] for r in results) for key in ("tokens", "seconds", "flops", "steps")}
    return bases[best], results[best].summary, {**cost, "valid_losses": losses, "expert": best}


@dataclass
class RunPlan:
    """A `specialize` call with its defaults resolved, and what it will do with its folder."""

    generic: str
    k: int
    select: str
    out_dir: Path
    command: dict
    verdict: str  # "new", "resume" or "finished": see run_folder_state


def resolve_run(domain: str, generic: str | None, method: str, base, preset: str, out_dir, domain_tokens,
                pretrain_tokens: int, finetune_tokens: int, vocab_size, lr, seed: int, overwrite: bool, k, embedder: str,
                window, sampler: str, metric: str, select, expert_init: str, basis) -> RunPlan:
    """Check a `specialize` call's arguments and run folder, before any work (the
    command line calls it first, with the same arguments, to fail in a second)."""
    if method not in METHODS:
        raise SpecializeError(f"unknown method '{method}' (available: {', '.join(METHODS)})")
    from .train.distributed import world

    if world().size > 1:  # its reports and caches are written by one process
        raise SpecializeError("specialize runs as one process; under mlx.launch run its steps (mlxspec data, "
                              "pretrain, finetune) instead")
    if base is not None and method != "finetune":
        raise SpecializeError(f"--method {method} pre-trains its own base: drop --base")
    domain_corpus = load_corpus(domain)
    for split in ("train", "valid", "test"):  # fail fast, before any pre-training
        if next(domain_corpus.documents(split), None) is None:
            raise SpecializeError(f"domain corpus '{domain}' has no documents in its {split} split")
    get_preset(preset)
    if base is not None:  # it loads: weights, configuration and tokenizer agree
        load_model(base)
    generic = generic or default_generic(domain)
    if not generic:
        raise SpecializeError(f"no generic corpus: pass --generic (bundled: {', '.join(bundled_names())})")
    k = k if k is not None else DEFAULT_K.get(method, 4)
    select = select or ("histogram" if method == "soup" else "frequent")
    command = run_command(domain, generic, method, base, preset, domain_tokens, pretrain_tokens, finetune_tokens,
                          vocab_size, lr, seed, k, embedder, window, sampler, metric, select, expert_init, basis)
    out_dir = Path(out_dir) if out_dir else default_run_dir(command)
    return RunPlan(generic, k, select, out_dir, command, run_folder_state(out_dir, command, overwrite))


def specialize(
    domain: str = DEFAULT_DOMAIN,
    generic: str | None = None,
    method: str = "finetune",
    base: str | None = None,
    preset: str = DEFAULT_PRESET,
    out_dir: str | os.PathLike | None = None,
    domain_tokens: int | None = None,
    pretrain_tokens: int = DEFAULT_PRETRAIN_TOKENS,
    finetune_tokens: int = DEFAULT_FINETUNE_TOKENS,
    vocab_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    k: int | None = None,
    embedder: str = "hashed",
    window: int | None = None,
    sampler: str = "cluster",
    metric: str = "cosine",
    select: str | None = None,
    expert_init: str = "scratch",
    basis: int | None = None,
) -> dict:
    """Specialize a small model to `domain`; returns the report (also RUN/report.json).

    `domain` and `generic` are corpus specs (see `data.corpus`); `generic` defaults to
    the bundled corpora other than the domain. An unfinished run of the same command in
    `out_dir` is continued; `wall_seconds` sums the sessions up to each one's last
    finished phase, `sessions` counts them."""
    run = resolve_run(domain, generic, method, base, preset, out_dir, domain_tokens, pretrain_tokens,
                      finetune_tokens, vocab_size, lr, seed, overwrite, k, embedder, window, sampler, metric, select,
                      expert_init, basis)
    generic, k, select, out_dir, command, verdict = run.generic, run.k, run.select, run.out_dir, run.command, run.verdict
    cache_dir = Path(cache_dir or default_cache_dir())
    domain_corpus = load_corpus(domain)
    if verdict == "finished":
        ui.info(f"{out_dir} holds this command's finished run: its report (--overwrite runs it again)")
        return json.loads((out_dir / "report.json").read_text())

    # The run folder's state: the command, then each phase's figures once it finished, so
    # a rerun after an interruption (Ctrl-C, kill -9, a full disk) continues with the
    # first unfinished phase and reports what the first session measured. Phases that
    # build cache entries resume inside them; the fine-tuning from its checkpoints.
    t0 = time.perf_counter()
    if verdict == "new":
        if out_dir.exists():
            _clear_run(out_dir)
        state = {"command": command, "phases": {}, "wall_seconds": 0.0, "sessions": 0}
    else:
        state = _read_state(out_dir)
        ui.info(f"continuing the unfinished run in {out_dir} (finished: {', '.join(state['phases']) or 'nothing yet'})")
    state["sessions"] += 1
    previous_wall = state["wall_seconds"]
    out_dir.mkdir(parents=True, exist_ok=True)

    def save(**updates) -> None:
        state.update(updates)
        state["wall_seconds"] = previous_wall + time.perf_counter() - t0
        atomic_write_bytes(out_dir / RUN_STATE, json.dumps(state, indent=1).encode())

    save()
    phases = state["phases"]
    bases = state.get("base")
    if bases is None or not all(Path(b).exists() for b in (bases if isinstance(bases, list) else [bases])):
        if base is not None:
            base_dir = Path(base)
            phases["pretrain"] = {"tokens": 0, "seconds": 0.0, "flops": 0.0, "given": str(base)}
        elif method == "is":
            base_dir, phases["select"], phases["pretrain"] = importance_pretrain(
                domain, generic, preset, pretrain_tokens, vocab_size, seed, cache_dir, domain_tokens, k,
                embedder, window, sampler, metric)
        elif method == "mix":
            base_dir, phases["select"], phases["pretrain"] = mixture_expert(
                domain, generic, preset, pretrain_tokens, vocab_size, seed, cache_dir, domain_tokens, k, embedder,
                window, metric, select, expert_init)
        elif method in ("pn", "soup"):
            base_dir, phases["select"], phases["pretrain"] = projected_instance(
                domain, generic, preset, pretrain_tokens, vocab_size, seed, cache_dir, domain_tokens, k, embedder,
                window, metric, method, select, basis)
        else:
            base_dir, summary, reused = cached_pretrain(generic, preset, pretrain_tokens, vocab_size, seed, cache_dir)
            phases["pretrain"] = {"tokens": summary["tokens"], "seconds": summary["seconds"],
                                  "flops": summary["flops"], "cached": reused, "model": str(base_dir)}
        save(base=[str(b) for b in base_dir] if isinstance(base_dir, list) else str(base_dir))
    # Fine-tuning checkpoints every 50 steps, as pre-training does: an interruption costs
    # at most that, and the rerun continues from the checkpoint.
    options = {"seed": seed, "checkpoint_every": 50, **({"lr": lr} if lr is not None else {})}
    if isinstance(state["base"], list) and "finetune" not in phases:
        # SLM-mix --select all: k fine-tunings, k times the cost
        chosen, tuned, cost = finetune_best([Path(b) for b in state["base"]], domain, out_dir, domain_tokens,
                                            finetune_tokens, cache_dir, **options)
        phases["select"].update(expert=cost["expert"], valid_losses=cost["valid_losses"], seconds=cost["seconds"])
        phases["finetune"] = _finetune_phase(cost, tuned)
        save(base=str(chosen))
        shutil.rmtree(out_dir / "candidates", ignore_errors=True)
    base_dir = Path(state["base"])
    if "before" not in state:
        before = evaluate_model(base_dir, domain, "test", cache_dir, loaded=load_model(base_dir))
        save(before={"ppl": before.ppl, "bits_per_byte": before.bits_per_byte})
    if "finetune" not in phases:
        tuned = finetune(base_dir, domain, out_dir, domain_tokens, finetune_tokens, cache_dir=cache_dir, resume=True,
                         **options).summary
        phases["finetune"] = _finetune_phase(tuned, tuned)
        save()
    shutil.rmtree(out_dir / "candidates", ignore_errors=True)  # left by an interruption after the choice

    if "report" in phases.get("select", {}):  # the selection's report and chart, beside the run's
        for name in ("report.json", "histograms.png"):
            shutil.copy2(Path(phases["select"]["report"]) / name, out_dir / f"selection-{name}")
    loaded = load_model(out_dir)
    after = evaluate_model(out_dir, domain, "test", cache_dir, loaded=loaded)
    speed = measure_generation(loaded[0])
    save()
    report = {
        "domain": domain_corpus.name,
        "generic": generic,
        "method": method,
        "preset": loaded[2].get("mlxspec", {}).get("preset"),
        "model": str(out_dir),
        "params": count_params(loaded[0].args)["total"],
        "ppl_before": state["before"]["ppl"],
        "ppl_after": after.ppl,
        "bpb_before": state["before"]["bits_per_byte"],
        "bpb_after": after.bits_per_byte,
        "test_tokens": after.tokens,
        "gen_tok_s": speed.gen_tok_s,
        "prompt_tok_s": speed.prompt_tok_s,
        "phases": phases,
        "wall_seconds": state["wall_seconds"],
        "sessions": state["sessions"],
    }
    atomic_write_bytes(out_dir / "report.json", json.dumps(report, indent=2).encode())
    save(done=True)
    return report


def _finetune_phase(cost: dict, summary: dict) -> dict:
    """The report's fine-tuning phase: `cost` summed over what was fine-tuned, the rest
    from the kept run's `summary`."""
    return {**{key: cost[key] for key in ("tokens", "seconds", "flops", "steps")},
            "domain_tokens": summary["domain_tokens"], "stopped_early": summary["stopped_early"]}
