"""Which BLAS a fresh install should load: each candidate's size, needs and speed here.

    python benchmarks/blas_choice.py --preset small --rounds 3

For every candidate that is installed (the reference BLAS in MLX's wheel, PyPI's
scipy-openblas32, PyPI's MKL, Debian's OpenBLAS, plus any `--blas NAME=PATH`), in a fresh
process each with `MLXSPEC_BLAS` pointing at it: the float32 1024^3 matmul through MLX
(GFLOP/s, best of 5) and, with `--preset`, training tokens/s of our trainer (the worker
of train_throughput.py). Rounds alternate the candidates, so drifts of machine speed hit
all alike; medians are printed with the ratio to the reference BLAS of the same run,
and each library's size on disk and what it needs from outside the environment (its
ELF dependencies, resolved with `ldd`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GFLOPS = ("import json, mlx_specialize as ms; from mlx_specialize.accel.backend import matmul_gflops; "
          "print(json.dumps([ms.BLAS.name, matmul_gflops(1024, 5)]))")
SYSTEM_OK = ("libc.so", "libm.so", "libpthread.so", "libgcc_s.so", "libstdc++.so", "ld-linux", "libdl.so", "librt.so",
             "linux-vdso")


def _dist_size(*names: str) -> int | None:
    """Bytes on disk of the installed distributions `names` (None if one is missing)."""
    from importlib.metadata import PackageNotFoundError, distribution

    total = 0
    for name in names:
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            return None
        total += sum(f.size or 0 for f in dist.files or [])
    return total


def candidates() -> dict[str, dict]:
    """name -> {path, size (bytes), where from}, for what is installed here."""
    from mlx_specialize.accel import backend

    found = {}
    ref = backend.reference_blas_path()
    if ref:
        found["reference (mlx-cpu wheel)"] = {"path": "off", "size": os.path.getsize(ref), "lib": ref}
    for name, path in backend._candidates():
        size = {"Intel MKL (PyPI)": _dist_size("mkl", "intel-openmp", "tbb", "tcmlib", "umf"),
                "OpenBLAS (PyPI scipy-openblas32)": _dist_size("scipy-openblas32")}.get(name)
        found[name] = {"path": path, "size": size if size is not None else os.path.getsize(path), "lib": path}
    return found


def outside_needs(lib: str) -> list[str]:
    """Libraries `lib` loads from outside the environment other than glibc's, libgcc_s and
    libstdc++ (`ldd`), or the ones it cannot find."""
    try:
        out = subprocess.run(["ldd", lib], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        return [f"ldd failed: {err}"]
    needs = []
    for line in out.splitlines():
        parts = line.split()
        if not parts or os.path.basename(parts[0]).startswith(SYSTEM_OK):
            continue
        target = parts[2] if len(parts) > 2 and parts[1] == "=>" else parts[0]
        if "not found" in line:
            needs.append(f"{parts[0]} (not found)")
        elif not target.startswith(sys.prefix):
            needs.append(target)
    return needs


def run(cmd: list[str], blas: str) -> dict | list:
    env = {**os.environ, "MLXSPEC_BLAS": blas}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blas", action="append", default=[], help="NAME=PATH: also measure this library")
    parser.add_argument("--preset", help="also time training of this preset (train_throughput.py's worker)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--context", type=int)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    found = candidates()
    if args.preset:
        sys.path.insert(0, str(HERE))
        from train_throughput import resolve

        preset = resolve(args.preset)
        args.batch_size, args.context = args.batch_size or preset.batch_size, args.context or preset.context
    for item in args.blas:
        name, path = item.split("=", 1)
        found[name] = {"path": path, "size": os.path.getsize(path), "lib": path}
    from mlx_specialize.accel.backend import cpu_description

    shape = f"; training {args.preset}, batch {args.batch_size} x {args.context}" if args.preset else ""
    print(f"CPU: {cpu_description()}; candidates: {', '.join(found)}{shape}")
    gflops = {name: [] for name in found}
    tok_s = {name: [] for name in found}
    errors = {}
    for _ in range(args.rounds):
        for name, c in found.items():
            if name in errors:
                continue
            try:
                loaded, g = run([sys.executable, "-c", GFLOPS], c["path"])
                if c["path"] != "off" and loaded is None:
                    raise RuntimeError("did not load")
                gflops[name].append(g)
                if args.preset:
                    cmd = [sys.executable, str(HERE / "train_throughput.py"), "--worker", "mlx", "--preset",
                           args.preset, "--vocab", "8192", "--steps", str(args.steps), "--batch-size",
                           str(args.batch_size), "--context", str(args.context)]
                    tok_s[name].append(run(cmd, c["path"])["tok_s"])
            except RuntimeError as err:
                errors[name] = str(err)
    ref = next((n for n in found if n.startswith("reference")), None)
    rows = []
    for name, c in found.items():
        row = {"blas": name, "size_mb": round(c["size"] / 2**20, 1), "needs_from_outside": outside_needs(c["lib"]),
               "error": errors.get(name)}
        if gflops[name]:
            row["gflops"] = statistics.median(gflops[name])
            row["gflops_rounds"] = [round(g, 1) for g in gflops[name]]
        if tok_s[name]:
            row["tok_s"] = statistics.median(tok_s[name])
            row["tok_s_rounds"] = [round(t) for t in tok_s[name]]
        rows.append(row)
    base = next((r for r in rows if r["blas"] == ref), {})
    print(f"{'BLAS':34s} {'MB':>7s} {'GFLOP/s':>8s} {'x ref':>6s}" + (f" {'tok/s':>7s} {'x ref':>6s}" if args.preset else "")
          + "  needs from outside the environment")
    for r in rows:
        g = r.get("gflops")
        line = f"{r['blas']:34s} {r['size_mb']:7.1f} " + (f"{g:8.1f} {g / base['gflops']:6.1f}" if g and base.get("gflops") else f"{'-':>8s} {'-':>6s}")
        if args.preset:
            t = r.get("tok_s")
            line += f" {t:7.0f} {t / base['tok_s']:6.1f}" if t and base.get("tok_s") else f" {'-':>7s} {'-':>6s}"
        line += "  " + (", ".join(r["needs_from_outside"]) or "nothing") + (f"  [error: {r['error']}]" if r["error"] else "")
        print(line)
    if args.json:
        print(json.dumps({"cpu": cpu_description(), "preset": args.preset, "rows": rows}))


if __name__ == "__main__":
    main()
