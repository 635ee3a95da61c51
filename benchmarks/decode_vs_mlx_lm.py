"""Decoding speed: our generator vs `mlx_lm.stream_generate` on the same exported weights.

    python benchmarks/decode_vs_mlx_lm.py --preset small --preset medium --preset paper-slm

For each preset: a model (random weights: speed does not depend on their values) is
exported as an mlx-lm folder (`mlxspec export`'s code, optionally `--quantize`d), then
loaded by both sides. Rounds alternate ours / mlx-lm, each a batch-1 greedy generation of
`--generation-tokens` after the same random prompt of `--prompt-tokens`, after one
warm-up each; both with mlx-lm's definitions (generation tok/s from the first token to
the last). Prints medians, the ratio ours / mlx-lm, and each side's fraction of the
memory-bandwidth bound (weight bytes read per token over the measured copy bandwidth).

The tokenizer (needed by mlx-lm's loader) is trained on ../shared/minipile's generic
train split when present, else on the bundled corpora; the model's vocabulary is the
tokenizer's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import mlx_specialize as ms  # first: loads the optimized BLAS before mlx.core
import mlx.core as mx

from mlx_specialize.bench import bytes_per_decode_step, copy_bandwidth
from mlx_specialize.data.corpus import default_generic
from mlx_specialize.models.export import export_model, weight_bytes
from mlx_specialize.models.generate import random_prompts, time_generation

MINIPILE = Path(__file__).resolve().parents[2] / "shared" / "minipile"
GENERIC = ["c-headers", "go-code", "kernel-docs", "manpages", "postgres-docs", "python-code", "python-docs"]


def tokenizer_corpus() -> str:
    """The standard protocol's generic mix when ../shared/minipile is here, else the bundled one."""
    files = [MINIPILE / f"{d}.jsonl.gz" for d in GENERIC]
    if all(f.exists() for f in files):
        return ",".join(map(str, files))
    return default_generic("python-docs")


def make_model_folder(preset_name: str, tokenizer, root: Path, bits: int | None) -> Path:
    preset = ms.get_preset(preset_name)
    mx.random.seed(0)
    model = ms.Model(preset.model_args(tokenizer.vocab_size))
    mx.eval(model.parameters())
    src = root / f"{preset_name}-src"
    ms.save_model(model, src, tokenizer, {"preset": preset_name, "context": preset.context})
    out = root / f"{preset_name}-{'q' + str(bits) if bits else 'f32'}"
    export_model(src, out, bits=bits, overwrite=True)
    return out


def ours_trial(model, prompt: mx.array, gen: int) -> tuple[float, float]:
    speed = time_generation(model, prompt, gen)
    return speed.prompt_tok_s, speed.gen_tok_s


def mlx_lm_trial(model, tokenizer, prompt: list[int], gen: int) -> tuple[float, float]:
    from mlx_lm import stream_generate

    for response in stream_generate(model, tokenizer, prompt, max_tokens=gen):
        pass
    return response.prompt_tps, response.generation_tps


def run(preset_name: str, tokenizer, root: Path, args, bandwidth: float) -> dict:
    from mlx_lm import load

    folder = make_model_folder(preset_name, tokenizer, root, args.quantize)
    ours, _, _ = ms.load_model(folder)
    theirs, their_tokenizer = load(str(folder))
    their_tokenizer._eos_token_ids = set()  # as mlx_lm.benchmark: never stop early
    prompt = random_prompts(tokenizer.vocab_size, args.prompt_tokens, 1, seed=0)
    ours_trial(ours, prompt, 8)
    mlx_lm_trial(theirs, their_tokenizer, prompt[0].tolist(), 8)
    rows = {"ours": [], "mlx_lm": []}
    for _ in range(args.rounds):
        rows["ours"].append(ours_trial(ours, prompt, args.generation_tokens))
        rows["mlx_lm"].append(mlx_lm_trial(theirs, their_tokenizer, prompt[0].tolist(), args.generation_tokens))
    bound = bandwidth * 1e9 / bytes_per_decode_step(ours)
    result = {"preset": preset_name, "params": ms.count_params(ours.args)["total"], "bytes": weight_bytes(ours),
              "quantize": args.quantize, "bound_tok_s": bound}
    for side, trials in rows.items():
        result[side] = {"prompt_tps": statistics.median(t[0] for t in trials),
                        "generation_tps": statistics.median(t[1] for t in trials),
                        "rounds": [round(t[1], 1) for t in trials]}
        result[side]["of_bound"] = result[side]["generation_tps"] / bound
    result["ratio"] = result["ours"]["generation_tps"] / result["mlx_lm"]["generation_tps"]
    result["prompt_ratio"] = result["ours"]["prompt_tps"] / result["mlx_lm"]["prompt_tps"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="presets to measure [small, medium, paper-slm]")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--generation-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quantize", type=int, default=None, help="bits (4 or 8); default: float32")
    parser.add_argument("--vocab", type=int, default=8192, help="tokenizer vocabulary to train")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    presets = args.preset or ["small", "medium", "paper-slm"]
    corpus = ms.load_corpus(tokenizer_corpus())
    tokenizer = ms.train_tokenizer(corpus.documents("train"), args.vocab, sample_chars=2_000_000)
    bandwidth = copy_bandwidth()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in presets:
            results.append(run(name, tokenizer, Path(tmp), args, bandwidth))
    if args.json:
        print(json.dumps({"bandwidth_gb_s": bandwidth, "results": results}, indent=2))
        return
    print(f"copy bandwidth {bandwidth:.1f} GB/s; vocab {tokenizer.vocab_size}; prompt {args.prompt_tokens}, "
          f"generate {args.generation_tokens}, {args.rounds} alternating rounds, medians; "
          f"{'q' + str(args.quantize) if args.quantize else 'float32'}")
    print("| preset | params | MB | ours gen tok/s | mlx-lm gen tok/s | ours / mlx-lm | bound tok/s | ours of bound | "
          "mlx-lm of bound | prompt tok/s ours / mlx-lm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        o, t = r["ours"], r["mlx_lm"]
        print(f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['bytes'] / 1e6:.0f} | {o['generation_tps']:,.1f} | "
              f"{t['generation_tps']:,.1f} | **{r['ratio']:.2f}x** | {r['bound_tok_s']:,.0f} | {o['of_bound']:.0%} | "
              f"{t['of_bound']:.0%} | {o['prompt_tps']:,.0f} / {t['prompt_tps']:,.0f} |")
    for r in results:
        print(f"{r['preset']} rounds (gen tok/s): ours {r['ours']['rounds']}, mlx-lm {r['mlx_lm']['rounds']}")


if __name__ == "__main__":
    main()
