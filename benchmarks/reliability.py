"""Reliability, the long version of the suite's checks: nothing lost, nothing wasted.

    python benchmarks/reliability.py                 # everything (about half an hour here)
    python benchmarks/reliability.py --only kills --kills 12 --methods is

1. kill -9 at random moments across whole `mlxspec specialize --method is` and `--method
   pn` runs, and once in each phase (training the tokenizer, tokenizing, embedding,
   clustering, pre-training, fine-tuning, evaluating: within 0.3 s of the log naming it),
   each followed by the same command again: the final weights
   must equal an uninterrupted run's bit for bit, the report too (less its timings), no
   cache entry may fail its manifest (sha256 of every file), and no temporary or
   half-built folder may be left.
2. two and three concurrent `specialize` runs on one cache and different domains: each
   must equal its run alone, and what they share (the generic pre-training, or the
   clustering and projected network) must be built once.
3. the suite's fuzz of corpus files and options (tests/test_fuzz.py) with many more
   examples, and its full-disk tests (tests/test_full_disk.py).

Each finished check appends one JSON line to benchmarks/results/reliability.jsonl;
BENCHMARKS.md ("Reliability") is written from it. Runs the `mlxspec` installed beside
this Python, on the bundled corpora with the `tiny` preset.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reliability.jsonl"
MLXSPEC = str(Path(sys.executable).with_name("mlxspec"))
os.environ["COLUMNS"] = "250"  # one message per log line (they wrap at the terminal's width)
GENERIC = "go-code,postgres-docs,python-code,python-docs"
# Budgets that make every phase last long enough to be hit, and checkpoint in both
# trainings (every 50 steps of 1,024 tokens).
BUDGET = ["--preset", "tiny", "--vocab-size", "512", "--pretrain-tokens", "122880", "--finetune-tokens", "122880"]
TIMINGS = {"seconds", "valid_seconds", "wall_seconds", "gen_tok_s", "prompt_tok_s", "sessions"}
PATHS = {"model", "report", "instance", "clusters"}
PHASES = [("tokeniz", "tokenize"), ("sentencepiece", "tokenizer"), ("embed", "embed"), ("k-means", "cluster"),
          ("select", "select"), ("sampl", "select"), ("pre-train", "pretrain"), ("instantiat", "instantiate"),
          ("fine-tun", "finetune"), ("training", "train"), ("evaluat", "evaluate"), ("generat", "report")]
# What a run's log says as each phase starts (or, for a progress bar, ends): a targeted
# kill waits for one, then strikes within 0.3 s.
MARKERS = {"tokenizer": "SentencePiece tokenizer", "tokenize": "tokenizing", "embed": "embedding", "cluster": "k-means",
           "pretrain": "pre-training", "finetune": "fine-tuning", "evaluate": "evaluating"}


def command(method: str, domain: str, cache: Path, out: Path) -> list[str]:
    return [MLXSPEC, "specialize", "--method", method, "--domain", domain, "--generic", GENERIC, *BUDGET,
            "--cache-dir", str(cache), "--out", str(out)]


def comparable(report, also=()):
    """A report less its timings and folders (and `also`): what two runs of one command share."""
    if isinstance(report, dict):
        return {k: comparable(v, also) for k, v in report.items() if k not in TIMINGS | PATHS | set(also)}
    return report


def differences(a, b, path: str = "") -> list[str]:
    """Where two comparable reports differ: `phases.pretrain.cached: False != True`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(a.keys() | b.keys()) for d in differences(a.get(key), b.get(key), f"{path}.{key}")]
    return [] if a == b else [f"{path.lstrip('.')}: {a!r} != {b!r}"]


def weights(out: Path) -> dict:
    from mlx_specialize.models.io import load_arrays

    return {k: np.array(v) for k, v in load_arrays(out / "model.safetensors").items()}


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def run_whole(args: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as err:
        done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=err)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): see {log}")
    return time.perf_counter() - t0


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def phase_of(log: Path) -> str:
    """The phase the run was in: the word of PHASES said last in its log."""
    tail = log.read_text(errors="replace")[-2000:].lower()
    found = [(tail.rfind(key), name) for key, name in PHASES if key in tail]
    return max(found)[1] if found else "start"


def leftovers(*folders: Path) -> list[str]:
    """What an interruption may have left that a finished run must not: build folders,
    temporaries, entries moved aside as corrupt, and entries failing their manifest."""
    from mlx_specialize.runtime.cache import MANIFEST, verify

    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            name = path.name
            if name.endswith(".partial") or ".corrupt-" in name or ".tmp" in name or name.startswith(".tmp_"):
                found.append(str(path.relative_to(folder)))
            elif path.is_dir() and (path / MANIFEST).exists() and (problem := verify(path, full=True)):
                found.append(f"{path.relative_to(folder)}: {problem}")
    return found


def record(result: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    with open(RESULTS, "a") as f:
        f.write(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit.strip(), **result}) + "\n")
    print(json.dumps(result), flush=True)


def finish_and_compare(args: list[str], chain: Path, ref: Path, reference: dict) -> list[str]:
    """Run an interrupted command to its end; what differs from the uninterrupted run in
    `ref` (report, weights) or was left behind."""
    run_whole(args, chain.with_suffix(".final.log"))
    report = json.loads((chain / "out" / "report.json").read_text())
    problems = [f"report: {d}" for d in differences(comparable(report), comparable(reference))]
    if not same_weights(chain / "out", ref / "out"):
        problems.append("weights differ")
    return problems + leftovers(chain / "cache", chain / "out")


def kills(method: str, n_kills: int, work: Path, rng: random.Random) -> dict:
    """Chains of up to 3 kills at random moments, each chain then run to its end."""
    ref = work / f"ref-{method}"
    seconds = run_whole(command(method, "python-docs", ref / "cache", ref / "out"), work / f"ref-{method}.log")
    reference = json.loads((ref / "out" / "report.json").read_text())
    points, chains, failures = [], 0, []
    while len(points) < n_kills:
        chains += 1
        chain = work / f"{method}-chain{chains}"
        args = command(method, "python-docs", chain / "cache", chain / "out")
        for _ in range(3):
            log = chain.with_suffix(f".{len(points)}.log")
            with open(log, "w") as err:
                proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
                at = rng.uniform(0.2, seconds)
                try:
                    proc.wait(timeout=at)
                    break  # finished before the kill: the chain is done
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
            line = last_line(log)
            points.append({"chain": chains, "at_s": round(at, 2), "phase": phase_of(log), "last_line": line})
            if len(points) >= n_kills:
                break
        problems = finish_and_compare(args, chain, ref, reference)
        if problems:
            failures.append({"chain": chains, "problems": problems})
        shutil.rmtree(chain, ignore_errors=True)
    phases = sorted({p["phase"] for p in points})
    return {"check": "kill -9", "method": method, "kills": len(points), "chains": chains, "run_seconds": round(seconds, 1),
            "phases_hit": phases, "failures": failures, "points": points}


def targeted(method: str, work: Path, rng: random.Random) -> dict:
    """One kill in each phase: the run is killed within 0.3 s of its log naming the
    phase, then run to its end and compared with an uninterrupted run."""
    ref = work / f"ref-{method}"
    if not (ref / "out" / "report.json").is_file():
        run_whole(command(method, "python-docs", ref / "cache", ref / "out"), work / f"ref-{method}.log")
    reference = json.loads((ref / "out" / "report.json").read_text())
    points, failures = [], []
    for phase, marker in MARKERS.items():
        chain = work / f"{method}-at-{phase}"
        args = command(method, "python-docs", chain / "cache", chain / "out")
        log = chain.with_suffix(".log")
        with open(log, "w") as err:
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
            while proc.poll() is None and marker.lower() not in log.read_text(errors="replace").lower():
                time.sleep(0.01)
            if proc.poll() is not None:
                points.append({"phase": phase, "killed": False})  # this method has no such phase
                shutil.rmtree(chain, ignore_errors=True)
                continue
            time.sleep(rng.uniform(0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        points.append({"phase": phase, "killed": True, "last_line": last_line(log)})
        problems = finish_and_compare(args, chain, ref, reference)
        if problems:
            failures.append({"phase": phase, "problems": problems})
        shutil.rmtree(chain, ignore_errors=True)
    hit = [p["phase"] for p in points if p["killed"]]
    return {"check": "kill -9 in each phase", "method": method, "kills": len(hit), "phases_hit": hit,
            "failures": failures, "points": points}


def concurrent(method: str, n: int, work: Path) -> dict:
    """n runs on n domains at once on one cache, against each run alone."""
    domains = GENERIC.split(",")[:n]
    alone = {}
    for domain in domains:
        folder = work / f"alone-{method}-{domain}"
        run_whole(command(method, domain, folder / "cache", folder / "out"), folder.with_suffix(".log"))
        alone[domain] = folder / "out"
    shared = work / f"shared-{method}-{n}"
    procs = []
    t0 = time.perf_counter()
    for domain in domains:
        log = open(shared.with_name(f"{shared.name}-{domain}.log"), "w")
        procs.append(subprocess.Popen(command(method, domain, shared / "cache", shared / domain), stdout=subprocess.DEVNULL,
                                      stderr=log))
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - t0
    failures = []
    built = 0
    for domain, code in zip(domains, codes):
        if code != 0:
            failures.append(f"{domain}: exit {code}")
            continue
        report = json.loads((shared / domain / "report.json").read_text())
        ref = json.loads((alone[domain] / "report.json").read_text())
        built += not report["phases"]["pretrain"].get("cached", False)
        # built by one of them, found by the others
        failures += [f"{domain}: report: {d}" for d in differences(comparable(report, ["cached"]),
                                                                   comparable(ref, ["cached"]))]
        if not same_weights(shared / domain, alone[domain]):
            failures.append(f"{domain}: weights differ from its run alone")
    if built != 1:
        failures.append(f"the shared pre-training was built {built} times")
    failures += leftovers(shared / "cache")
    shutil.rmtree(shared, ignore_errors=True)
    return {"check": "concurrent", "method": method, "runs": n, "seconds": round(seconds, 1),
            "shared_pretraining_built": built, "failures": failures}


def pytest_check(name: str, path: str, env: dict) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).with_name("pytest")), "-q", "-p", "no:cacheprovider", path],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-200:]
    return {"check": name, "passed": done.returncode == 0, "summary": tail, "seconds": round(time.perf_counter() - t0),
            **env}


def table(path: Path = RESULTS) -> str:
    """BENCHMARKS.md's "Reliability" tables, from the results file (the last line of each check)."""
    last = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        last[(r["check"], r.get("method"), r.get("runs"))] = r
    rows = ["| check | what | commit | outcome |", "|---|---|---|---|"]
    for (check, method, runs), r in sorted(last.items(), key=lambda kv: [str(x) for x in kv[0]]):
        ok = "nothing lost" if not r.get("failures") and r.get("passed", True) else f"FAILED: {r.get('failures') or r['summary']}"
        if check == "kill -9 in each phase":
            what = f"`specialize --method {method}`: one kill in each phase: {', '.join(r['phases_hit'])}"
        elif check == "kill -9":
            what = (f"`specialize --method {method}`: {r['kills']} kills in {r['chains']} chains, phases hit: "
                    f"{', '.join(r['phases_hit'])} (whole run {r['run_seconds']} s)")
        elif check == "concurrent":
            what = (f"{runs} concurrent `--method {method}` runs, one cache: shared pre-training built "
                    f"{r['shared_pretraining_built']} time(s), {r['seconds']} s")
        else:
            what = f"{r['summary']} ({r['seconds']} s" + (f", {r['MLXSPEC_FUZZ_EXAMPLES']} examples per property)"
                                                         if "MLXSPEC_FUZZ_EXAMPLES" in r else ")")
        rows.append(f"| {check} | {what} | {r.get('commit', '')} | {ok} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["kills", "targeted", "concurrent", "fuzz", "disk"], action="append")
    parser.add_argument("--kills", type=int, default=12, help="kill points per method")
    parser.add_argument("--methods", default="is,pn")
    parser.add_argument("--fuzz-examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", action="store_true", help="print BENCHMARKS.md's table from the results file")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    only = set(args.only or ["kills", "targeted", "concurrent", "fuzz", "disk"])
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="mlxspec-reliability-") as tmp:
        work = Path(tmp)
        if "kills" in only:
            for method in args.methods.split(","):
                record(kills(method, args.kills, work, rng))
        if "targeted" in only:
            for method in args.methods.split(","):
                record(targeted(method, work, rng))
        if "concurrent" in only:
            for method in ("finetune", "pn"):
                for n in (2, 3):
                    record(concurrent(method, n, work))
        if "fuzz" in only:
            record(pytest_check("fuzz", "tests/test_fuzz.py", {"MLXSPEC_FUZZ_EXAMPLES": str(args.fuzz_examples)}))
        if "disk" in only:
            record(pytest_check("full disk", "tests/test_full_disk.py", {}))


if __name__ == "__main__":
    main()
