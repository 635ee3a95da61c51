"""`specialize`: the main job. A small model, specialized to one domain.

    method.prepare (methods/)  -->  base model(s)  --(fine-tune on the domain's limited
    train data, early stopping on its valid split)-->  domain SLM  -->  report

1. The method (`methods/`, by name from its registry) pre-trains what it shares across
   domains, or finds it in the cache, and does its per-domain part: SLM takes the
   generic model, SLM-is pre-trains on generic text selected for the domain, SLM-mix
   picks an expert, SLM-pn and the soup instantiate a dense SLM for the domain.
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
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from . import ui
from .accel import warn_slow_paths
from .data.corpus import bundled_names, default_generic, load_corpus, split_hint
from .data.tokenizer import TOKENIZER_SAMPLES
from .errors import Interrupted, SpecializeError, check_choice
from .costs import split_costs
from .methods import METHODS, Method, Settings, get_method
from .models.dense import count_params, flops_per_token
from .models.generate import measure_generation
from .models.io import load_model, model_context
from .models.presets import PRESETS, get_preset
from .runtime.cache import building_for, default_cache_dir, locked
from .runtime.files import atomic_write_bytes, copy_run_files
from .train.config import MAX_TOKENS
from .train.jobs import evaluate_model, finetune

DEFAULT_DOMAIN = "python-docs"
DEFAULT_PRESET = "small"
DEFAULT_PRETRAIN_TOKENS = 600_000
DEFAULT_FINETUNE_TOKENS = None  # until early stopping (train.jobs.FINETUNE_MAX_STEPS at most)
RUN_STATE = "specialize.json"  # in the run folder: the command, and each phase once finished
RUN_FILES = (RUN_STATE, "report.json", "summary.json", "metrics.jsonl", "run.json", "checkpoints", "candidates",
             "selection-report.json", "selection-histograms.png", "adapters")


# Options added after run folders existed: left out of the command at the value that does
# what earlier versions did, so that an unfinished run of one (a study's cell, say) still
# continues.
LATER_OPTIONS = {"soup_support": None, "tokenizer_sample": "leading"}


def run_command(settings: Settings) -> dict:
    """What decides a run's result: its settings and the bytes of its corpora. A run
    folder continues only the same command (see `run_folder_state`)."""
    command = {key: value for key, value in asdict(settings).items()
               if key != "cache_dir" and not (key in LATER_OPTIONS and value == LATER_OPTIONS[key])}
    command["data"] = {"domain": load_corpus(settings.domain).fingerprint(),
                       "generic": load_corpus(settings.generic).fingerprint()}
    return command


def _read_state(out_dir: Path) -> dict | None:
    try:
        state = json.loads((out_dir / RUN_STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("command"), dict) else None


def _differences(old: dict, new: dict) -> str:
    """What differs, as options: `--seed 0 -> 1`."""
    # a later option missing from an earlier version's command was what LATER_OPTIONS says
    was = {key: old.get(key, LATER_OPTIONS.get(key)) for key in new}
    keys = [key for key in new if key != "data" and was[key] != new[key]]
    if keys:
        return ", ".join(f"--{key.replace('_', '-')} {_shown(was[key])} -> {_shown(new[key])}" for key in keys)
    changed = [name for name in ("domain", "generic") if old.get("data", {}).get(name) != new["data"][name]]
    return f"the {' and '.join(changed) or 'corpus'} data changed" if changed else "another version's settings"


def _shown(value) -> str:
    return "(default)" if value is None else str(value)


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
    names = {p.name for p in out_dir.iterdir() if not p.name.startswith(".")}  # its lock, a Mac's .DS_Store
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
        finished = state.get("done") and (out_dir / "report.json").is_file()
        raise SpecializeError(f"{out_dir} holds {'a' if finished else 'an unfinished'} run of another command "
                              f"({_differences(state['command'], command)}); pass --overwrite to replace it, or choose "
                              "another --out" + ("" if finished else " (that command, run again, continues it)"))
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
    copy_run_files(candidates / bases[best].name, out_dir)  # the run's files, not its checkpoints
    cost = {key: sum(r.summary[key] for r in results)
            for key in ("tokens", "seconds", "flops", "steps", "valid_flops", "valid_seconds")}
    return bases[best], results[best].summary, {**cost, "valid_losses": losses, "expert": best}


@dataclass
class RunPlan:
    """A `specialize` call with its defaults resolved, and what it will do with its folder."""

    method: Method
    settings: Settings
    out_dir: Path
    command: dict
    verdict: str  # "new", "resume" or "finished": see run_folder_state
    plan: dict | None = None  # `--method auto`'s decision (plan.auto_method), kept in the report
    warnings: tuple[str, ...] = ()  # said before the run starts (not before a finished run's report)


def _check_token_counts(**counts) -> None:
    """Each count of tokens named (an option without its dashes) at most MAX_TOKENS."""
    for name, count in counts.items():
        if count is not None and count > MAX_TOKENS:
            raise SpecializeError(f"--{name.replace('_', '-')}: {count:.3g} tokens is more than {MAX_TOKENS:.0e}, "
                                  "the most any budget here can train")


def check_domain_tokens(domain_tokens: int | None, preset: str) -> None:
    """`--domain-tokens` at most MAX_TOKENS and at least one training window of `preset`
    (`specialize` and `plan` refuse it alike)."""
    _check_token_counts(domain_tokens=domain_tokens)
    window_tokens = get_preset(preset).context + 1
    if domain_tokens is not None and domain_tokens < window_tokens:
        raise SpecializeError(f"--domain-tokens: {domain_tokens} tokens are fewer than one training window of the "
                              f"'{preset}' preset ({window_tokens} tokens)")


SMALL_HELD_OUT_CHARS = 20_000  # a few thousand tokens: under it a split's perplexity is noisy


def _small_held_out(domain: str, sizes: dict[str, tuple[int, int | None]]) -> str | None:
    """A warning where the domain's valid split (early stopping, the best model) or test
    split (the reported perplexity) holds little text, or None (also where a hub dataset
    leaves the sizes unknown): a folder of a few dozen documents, split 90/5/5 by hash,
    leaves one or two documents in each."""
    small = [split for split in ("valid", "test") if 0 < (sizes[split][1] or 0) < SMALL_HELD_OUT_CHARS]
    if not small:
        return None
    said = [f"{split} split holds {sizes[split][1]:,} characters ({sizes[split][0]} "
            f"document{'s' * (sizes[split][0] != 1)})" for split in small]
    return (f"--domain {domain}: its {' and its '.join(said)}: a perplexity measured on so little text is noisy "
            f"({SMALL_HELD_OUT_CHARS:,} characters or more each is advised); {split_hint(small[-1])}")


def resolve_run(domain: str, generic: str | None, method: str, base, preset: str, out_dir, domain_tokens,
                pretrain_tokens: int, finetune_tokens: int | None, vocab_size, lr, seed: int, overwrite: bool, k,
                embedder: str,
                window, sampler: str, metric: str, select, expert_init: str, basis, cache_dir=None,
                distill_temperature: float = 1.0, distill_alpha: float = 0.5,
                soup_support: int | None = None, tokenizer_sample: str = "uniform") -> RunPlan:
    """Check everything a `specialize` call can check before a pre-training that may take
    hours, each refused in one line naming its option; this is the only check (the
    command line makes none of its own). In order: the method and the preset, the
    method's options (`Method.resolve`), the domain data against one training window,
    every corpus read through for the splits the run uses, a `--base` loaded, then the
    run folder (an unfinished run of the same command continues, another command's is
    refused). Returns the resolved run."""
    chosen = get_method(method)
    check_choice("--preset", preset, PRESETS)
    check_choice("--tokenizer-sample", tokenizer_sample, TOKENIZER_SAMPLES)
    _check_token_counts(pretrain_tokens=pretrain_tokens, finetune_tokens=finetune_tokens)
    settings = chosen.resolve(Settings(
        domain=domain, generic=generic or "", method=method, preset=preset, pretrain_tokens=pretrain_tokens,
        finetune_tokens=finetune_tokens, domain_tokens=domain_tokens, vocab_size=vocab_size, seed=seed,
        cache_dir=Path(cache_dir or default_cache_dir()), base=base, lr=lr, k=k, embedder=embedder, window=window,
        sampler=sampler, metric=metric, select=select, expert_init=expert_init, basis=basis,
        distill_temperature=distill_temperature, distill_alpha=distill_alpha, soup_support=soup_support,
        tokenizer_sample=tokenizer_sample))
    if base is None:
        check_domain_tokens(domain_tokens, preset)
    from .runtime.distributed import world

    if world().size > 1:  # its reports and caches are written by one process
        raise SpecializeError("specialize runs as one process; under mlx.launch run its steps (mlxspec data, "
                              "pretrain, finetune) instead")
    domain_corpus = load_corpus(domain)
    sizes = domain_corpus.check_sizes(("train", "valid", "test"))  # fine-tune, early stopping, the report
    for split, (documents, _) in sizes.items():  # a hub dataset is only opened by check: its first document
        if not documents and next(domain_corpus.documents(split), None) is None:
            raise SpecializeError(f"domain corpus '{domain_corpus.spec}' has no documents in its {split} split")
    settings.domain = domain_corpus.spec  # as the corpus reads it: ' go-code\n' is the command 'go-code'
    generic = generic or default_generic(settings.domain)
    if not generic:
        raise SpecializeError(f"no generic corpus: pass --generic (bundled: {', '.join(bundled_names())})")
    generic_corpus = load_corpus(generic)
    if base is None:  # pre-training reads the generic corpus' train and valid splits
        generic_corpus.check(("train", "valid"))
    settings.generic = generic_corpus.spec
    if settings.domain in settings.generic.split(","):  # allowed (a check of the setup, say), but said
        ui.warn(f"--generic {settings.generic} holds the domain {settings.domain} itself: the generic pre-training "
                "trains on the domain's train split (the paper's generic corpus holds no target domain)")
    if base is not None:  # it loads: weights, configuration and tokenizer agree
        load_model(base)
    command = run_command(settings)
    out_dir = Path(out_dir) if out_dir else default_run_dir(command)
    small = _small_held_out(domain_corpus.spec, sizes)
    return RunPlan(chosen, settings, out_dir, command, run_folder_state(out_dir, command, overwrite),
                   warnings=(small,) if small else ())


def specialize(
    domain: str = DEFAULT_DOMAIN,
    generic: str | None = None,
    method: str = "finetune",
    base: str | None = None,
    preset: str = DEFAULT_PRESET,
    out_dir: str | os.PathLike | None = None,
    domain_tokens: int | None = None,
    pretrain_tokens: int = DEFAULT_PRETRAIN_TOKENS,
    finetune_tokens: int | None = DEFAULT_FINETUNE_TOKENS,
    vocab_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    k: int | None = None,
    embedder: str = "auto",
    window: int | None = None,
    sampler: str = "cluster",
    metric: str = "cosine",
    select: str | None = None,
    expert_init: str = "scratch",
    basis: int | None = None,
    distill_temperature: float = 1.0,
    distill_alpha: float = 0.5,
    soup_support: int | None = None,
    tokenizer_sample: str = "uniform",
) -> dict:
    """Specialize a small model to `domain`; returns the report (also RUN/report.json).

    `domain` and `generic` are corpus specs (see `data.corpus`); `generic` defaults to
    the bundled corpora other than the domain. An unfinished run of the same command in
    `out_dir` is continued; `wall_seconds` sums the sessions up to each one's last
    finished phase, `sessions` counts them.

    `method="auto"` asks the planner (`plan.auto_method`: `pretrain_tokens` as the
    pre-training budget, the preset's size as the inference budget, the domain's floor
    and size) and runs the method it recommends, at the budget it chose; the report
    carries the decision as `plan`. The checks that need no method (the preset,
    `domain_tokens`) come before the plan, which reads the domain (seconds); the chosen
    method's own options are checked once it is named, still before any training.

    `tokenizer_sample` says how the generic tokenizer's training text is drawn
    (data.tokenizer.TOKENIZER_SAMPLES): `leading` reproduces the standard study's."""
    decision = None
    check_choice("--method", method, (*METHODS, "auto"))
    if method == "auto":  # the checks that need no method first, then the plan (it reads the domain)
        if base is not None:
            raise SpecializeError("--method auto plans a pre-training; with --base there is none to plan")
        check_choice("--preset", preset, PRESETS)
        check_domain_tokens(domain_tokens, preset)
        from .plan.planner import auto_method

        decision = auto_method(domain, preset, pretrain_tokens, domain_tokens)
        method, pretrain_tokens = decision["method"], decision["pretrain_tokens"]
        at = "" if decision["budget_flops"] is None else f" at {pretrain_tokens:,} pre-training tokens"
        ui.info(f"--method auto: {decision['method']}{at}. {decision['reason']} " + " ".join(
            note[0].upper() + note[1:] + "." for note in decision["notes"]))
    run = resolve_run(domain, generic, method, base, preset, out_dir, domain_tokens, pretrain_tokens, finetune_tokens,
                      vocab_size, lr, seed, overwrite, k, embedder, window, sampler, metric, select, expert_init,
                      basis, cache_dir, distill_temperature, distill_alpha, soup_support, tokenizer_sample)
    run.plan = decision
    return run_plan(run, overwrite)


def run_plan(run: RunPlan, overwrite: bool = False) -> dict:
    """`specialize` for a call `resolve_run` has checked: warns of this platform's slow
    paths and of the run's own `warnings` unless the run is already finished, then
    carries it out in its folder."""
    # One process at a time in a run folder (a second run of the same command waits,
    # then finds the run finished); its state is read again once the lock is held. The
    # lock is a hidden file inside the folder: nothing is written beside it.
    run.out_dir.mkdir(parents=True, exist_ok=True)
    with locked(run.out_dir / ".specialize", f"the run in {run.out_dir}"):
        verdict = run_folder_state(run.out_dir, run.command, overwrite)
        if verdict == "finished":
            ui.info(f"{run.out_dir} holds this command's finished run: its report (--overwrite runs it again)")
            report = json.loads((run.out_dir / "report.json").read_text())
            if run.plan and report.get("plan") != run.plan:  # the same run, now asked for by the planner
                report["plan"] = run.plan
                atomic_write_bytes(run.out_dir / "report.json", json.dumps(report, indent=2).encode())
            return report
        warn_slow_paths()
        for message in run.warnings:
            ui.warn(message)
        try:
            return _carry_out(run, verdict)
        except Interrupted as err:  # a training's checkpoint is saved; say how to go on
            where = f" at step {err.step} of {err.run_dir}" if err.step is not None else ""
            raise Interrupted(f"interrupted{where}; the same command continues it") from None
        except KeyboardInterrupt:  # between phases: every finished phase is recorded
            raise Interrupted("interrupted; the same command continues it") from None


def _carry_out(run: RunPlan, verdict: str) -> dict:
    """`specialize`'s phases in the run folder, from the first unfinished one."""
    settings, out_dir, command = run.settings, run.out_dir, run.command
    domain, cache_dir = settings.domain, settings.cache_dir
    domain_tokens, finetune_tokens = settings.domain_tokens, settings.finetune_tokens

    # The run folder's state: the command, then each phase's figures once it finished, so
    # a rerun after an interruption (Ctrl-C, kill -9, a full disk) continues with the
    # first unfinished phase and reports what the first session measured. Phases that
    # build cache entries resume inside them; the fine-tuning from its checkpoints.
    t0 = time.perf_counter()
    if verdict == "new":
        if out_dir.exists():
            _clear_run(out_dir)
        state = {"command": command, "id": uuid.uuid4().hex, "phases": {}, "wall_seconds": 0.0, "sessions": 0}
    else:
        state = _read_state(out_dir)
        ui.info(f"continuing the unfinished run in {out_dir} (finished: {', '.join(state['phases']) or 'nothing yet'})")
    state.setdefault("id", uuid.uuid4().hex)  # a run folder written before runs had ids
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
        with building_for(state["id"]):  # what it builds counts as this run's, in any session
            prepared = run.method.prepare(settings)
        phases.update(prepared.phases)
        base_dir = prepared.base
        save(base=[str(b) for b in base_dir] if isinstance(base_dir, list) else str(base_dir))
    # Fine-tuning checkpoints every 50 steps, as pre-training does: an interruption costs
    # at most that, and the rerun continues from the checkpoint.
    options = {"seed": settings.seed, "checkpoint_every": 50, **run.method.finetune_options(settings, phases),
               **({"lr": settings.lr} if settings.lr is not None else {})}
    if isinstance(state["base"], list) and "finetune" not in phases:
        # SLM-mix --select all: k fine-tunings, k times the cost
        chosen, tuned, cost = finetune_best([Path(b) for b in state["base"]], domain, out_dir, domain_tokens,
                                            finetune_tokens, cache_dir, **options)
        # the k fine-tunings' cost is the fine-tuning phase's; choosing by their valid losses costs nothing more
        phases["select"].update(expert=cost["expert"], valid_losses=cost["valid_losses"], seconds=0.0, flops=0.0)
        phases["finetune"] = _finetune_phase(cost, tuned)
        save(base=str(chosen))
        shutil.rmtree(out_dir / "candidates", ignore_errors=True)
    base_dir = Path(state["base"])
    if "before" not in state:
        before = evaluate_model(base_dir, domain, "test", cache_dir, loaded=load_model(base_dir))
        save(before={"ppl": before.ppl, "bits_per_byte": before.bits_per_byte})
    if "finetune" not in phases:
        made = run.method.fine_tuned(settings, phases)
        if made is not None:  # made once for another method (SLM-d's teacher): copied, its cost counted
            ui.info(f"using the same fine-tuning, made for another method: {made}")
            copy_run_files(made, out_dir, skip=("manifest.json",))  # the cache entry's own record stays there
            tuned = json.loads((made / "summary.json").read_text())
        else:
            tuned = finetune(base_dir, domain, out_dir, domain_tokens, finetune_tokens, cache_dir=cache_dir,
                             resume=True, **options).summary
            run.method.keep_fine_tuned(settings, phases, out_dir)
        phases["finetune"] = {**_finetune_phase(tuned, tuned), "cached": made is not None}
        save()
    shutil.rmtree(out_dir / "candidates", ignore_errors=True)  # left by an interruption after the choice

    if "report" in phases.get("select", {}):  # the selection's report and chart, beside the run's
        for name in ("report.json", "histograms.png"):
            shutil.copy2(Path(phases["select"]["report"]) / name, out_dir / f"selection-{name}")
    loaded = load_model(out_dir)
    after = evaluate_model(out_dir, domain, "test", cache_dir, loaded=loaded)
    speed = measure_generation(loaded[0])
    save()
    args = loaded[0].args
    costs = {**split_costs(phases, run.method.shared_phases),
             "inference": {"params": count_params(args)["total"], "gen_tok_s": speed.gen_tok_s,
                           "prompt_tok_s": speed.prompt_tok_s,
                           # a token's forward pass at the full context (an upper bound)
                           "flops_per_token": flops_per_token(args, model_context(loaded[2]), training=False)}}
    report = {
        "domain": load_corpus(domain).name,
        "generic": settings.generic,
        "method": settings.method,
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
        "costs": costs,
        "wall_seconds": state["wall_seconds"],
        "sessions": state["sessions"],
        **({"plan": run.plan} if run.plan else {}),
    }
    atomic_write_bytes(out_dir / "report.json", json.dumps(report, indent=2).encode())
    save(done=True)
    return report


def _finetune_phase(cost: dict, summary: dict) -> dict:
    """The report's fine-tuning phase: `cost` summed over what was fine-tuned, the rest
    from the kept run's `summary`."""
    return {**{key: cost[key] for key in ("tokens", "seconds", "flops", "steps", "valid_flops", "valid_seconds")},
            "domain_tokens": summary["domain_tokens"], "stopped_early": summary["stopped_early"],
            "max_steps": summary.get("max_steps"), "lr": summary.get("lr"),
            "best_valid_loss": summary.get("best_valid_loss"),  # what choices are made on (never the test split)
            # whether the loss still fell where training stopped (a step cap, early stopping)
            "valid_curve": summary.get("valid_curve"),
            **({"lora_rank": summary["lora_rank"]} if "lora_rank" in summary else {})}
