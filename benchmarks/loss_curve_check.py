"""Do the speed-ups change what is learned? Loss curves with and without them.

    python benchmarks/loss_curve_check.py --preset small --tokens 300000

Pre-trains the same model on the bundled generic mix twice, in separate processes:
once plain (`MLXSPEC_STREAMS=1 MLXSPEC_FUSED_CE=0 MLXSPEC_FAST_MATH=0
MLXSPEC_BUFFER_CACHE=0`: one stream, MLX's own loss, exp, SiLU, attention and buffer
cache) and once with the defaults (parallel CPU streams, fused cross-entropy, the
vectorizable exp / softmax / SiLU / attention of `fastmath.py`, freed buffers kept).
Same seed, same data order. Prints both validation-loss curves, their largest
difference, and tok/s of each.

    python benchmarks/loss_curve_check.py --preset small --tokens 300000 --precision bf16

compares the defaults in float32 with the defaults in `--precision bf16` instead (needs
MKL and a CPU with AMX or AVX512-BF16, see mlx_specialize/bf16.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

GENERIC = "go-code,postgres-docs,python-code"


def run(out: Path, env_extra: dict, args, precision: str = "float32") -> list[dict]:
    cmd = [sys.executable, "-m", "mlxspec.main", "pretrain", str(out), "--generic", GENERIC, "--preset", args.preset,
           "--tokens", str(args.tokens), "--eval-every", str(args.eval_every), "--cache-dir", str(args.cache_dir),
           "--precision", precision, "--quiet"]
    subprocess.run(cmd, check=True, env={**os.environ, **env_extra}, cwd=Path(__file__).resolve().parents[1],
                   stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tokens", type=int, default=300_000)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "mlxspec-curve-cache")
    parser.add_argument("--precision", default="float32",
                        help="bf16: compare float32 and bf16 training, both with the defaults")
    args = parser.parse_args()
    plain_env = {"MLXSPEC_STREAMS": "1", "MLXSPEC_FUSED_CE": "0", "MLXSPEC_FAST_MATH": "0", "MLXSPEC_BUFFER_CACHE": "0"}
    if args.precision != "float32":
        plain_env = {}
        print(f"'plain' below is float32 with the defaults, 'fast' is --precision {args.precision}")
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(Path(tmp) / "plain", plain_env, args)
        fast = run(Path(tmp) / "fast", {}, args, args.precision)
    valid = {name: [m for m in runs if m["event"] == "valid"] for name, runs in (("plain", plain), ("fast", fast))}
    print(f"{'step':>6s} {'plain valid loss':>17s} {'fast valid loss':>16s} {'difference':>11s}")
    worst = 0.0
    for a, b in zip(valid["plain"], valid["fast"]):
        diff = b["valid_loss"] - a["valid_loss"]
        worst = max(worst, abs(diff))
        print(f"{a['step']:6d} {a['valid_loss']:17.4f} {b['valid_loss']:16.4f} {diff:+11.4f}")
    speed = {name: [m["tok_s"] for m in runs if m["event"] == "train"] for name, runs in (("plain", plain), ("fast", fast))}
    med = {k: sorted(v)[len(v) // 2] for k, v in speed.items()}
    print(f"largest |difference| {worst:.4f} nats; median tok/s plain {med['plain']:,.0f}, fast {med['fast']:,.0f} "
          f"({med['fast'] / med['plain']:.2f}x)")


if __name__ == "__main__":
    main()
