"""`mlxspec bench`: how fast, how big and how costly to serve each model is, on this device.

For every model (and every `--quantize` variant of it), after one warm-up generation:

- `trials` timed greedy generations of `generation_tokens` tokens after a fixed random
  prompt of `prompt_tokens` tokens, `batch_size` prompts at once, with mlx-lm's
  definitions (`mlx_lm.benchmark`): prompt tok/s = prompt tokens / time to first token;
  generation tok/s = generated tokens / time from the first to the last; peak memory in
  GB (1e9 bytes) from `mx.get_peak_memory`.
- Parameters, stored bytes and bits per weight.
- The memory-bandwidth bound of decoding: each decoding step reads every weight once
  (the embedding table only for the looked-up rows unless it is also the output
  projection), so tokens/s <= batch x bandwidth / bytes read per step. The bandwidth is
  this device's measured copy bandwidth (`copy_bandwidth`); each model's fraction of
  its bound is printed.
- The cost of serving: device hours per billion generated tokens at the measured
  generation speed (the paper's Table 2 puts its SLM at about 4x cheaper than its LLM).
- With an evaluation corpus: test perplexity and bits per byte, so the quality a
  quantization costs sits next to the speed it buys.

`mlxspec export --eval` measures the same quality before and after an export
(`export_and_compare`); `mlxspec doctor` reports the platform (`platform_facts`).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import ui
from .accel import device_name
from .data.corpus import load_corpus
from .errors import check_choice
from .models.dense import Model, count_params
from .models.export import (DEFAULT_GROUP_SIZE, GROUP_SIZES, QUANT_BITS, bits_per_weight, export_model, quantize,
                            weight_bytes)
from .models.generate import random_prompts, time_generation
from .models.io import load_model, model_context, read_config, resolve_model_path

SPEED_FIELDS = ("prompt_tps", "generation_tps", "ttft_s", "peak_memory_gb")
DTYPES = ("float32", "float16", "bfloat16")  # what float weights may be cast to


def check_weight_options(dtype: str | None, bits, group_size: int) -> None:
    """`--dtype`, each `--quantize` width and (when quantizing) `--group-size`, refused by
    name before any model loads."""
    check_choice("--dtype", dtype, DTYPES)
    for width in bits:
        check_choice("--quantize", width, QUANT_BITS)
    if bits:
        check_choice("--group-size", group_size, GROUP_SIZES)


def check_eval_corpus(eval_corpus: str | None) -> None:
    """An evaluation corpus' test split read through before any model loads."""
    if eval_corpus:
        load_corpus(eval_corpus).check(("test",))


@dataclass
class BenchConfig:
    """What to measure. `quantize`: bit widths to add as variants of each model (the
    unquantized model is always measured first)."""

    prompt_tokens: int = 512
    generation_tokens: int = 128
    batch_size: int = 1
    trials: int = 5
    seed: int = 0
    quantize: tuple[int, ...] = ()
    group_size: int = DEFAULT_GROUP_SIZE
    dtype: str | None = None
    eval_corpus: str | None = None
    eval_tokens: int = 20_000
    cache_dir: str | None = None


@dataclass
class BenchResult:
    """One model variant: sizes, trials, mean and spread, bound, cost, quality."""

    model: str
    variant: str
    params: int
    bytes: int
    bits_per_weight: float
    trials: list[dict] = field(default_factory=list)
    mean: dict = field(default_factory=dict)
    std: dict = field(default_factory=dict)
    bytes_per_step: int = 0
    bound_tok_s: float = 0.0
    fraction_of_bound: float = 0.0
    device_hours_per_billion: float = 0.0
    ppl: float | None = None
    bpb: float | None = None


def platform_facts() -> dict:
    """What `mlxspec doctor` reports: the platform, the device, the versions of Python,
    MLX, mlx-lm and this package, then `accel.diagnose.platform_report`'s BLAS, speeds
    and slow paths."""
    import platform

    from . import __version__
    from .accel.diagnose import platform_report

    try:
        import mlx_lm

        mlx_lm_version = mlx_lm.__version__
    except Exception:  # mlx-lm missing or broken: doctor still reports the rest
        mlx_lm_version = "not installed"
    facts = platform_report()
    return {"platform": facts.pop("platform"), "cpu": facts.pop("cpu"), "python": platform.python_version(),
            "device": facts.pop("device"), "mlx": facts.pop("mlx"), "mlx_lm": mlx_lm_version,
            "mlx_specialize": __version__, **facts}


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """This device's memory bandwidth in GB/s: bytes read + written per second by a
    float32 copy of `megabytes` MiB into a buffer allocated beforehand (median of
    `repeats`). On a GPU the copy is an MLX kernel. On CPU it is numpy's, on one thread
    and on one thread per core (the better of the two): MLX's CPU element-wise kernels
    run on one scalar thread and reach a fraction of what the memory delivers, while
    decoding reads its weights through the BLAS, so the hardware figure is the bound."""
    n = megabytes * 2**20 // 4
    if mx.default_device().type == mx.gpu:
        src = mx.random.uniform(shape=(n,))
        mx.eval(src)
        return 2 * n * 4 / _median_seconds(lambda: mx.eval(src * 1.0), repeats) / 1e9
    src = np.random.default_rng(0).random(n, dtype=np.float32)
    dst = np.empty_like(src)
    best = 0.0
    for threads in sorted({1, os.cpu_count() or 1}):
        bounds = [n * i // threads for i in range(threads + 1)]
        with ThreadPoolExecutor(threads) as pool:
            def copy():
                list(pool.map(lambda i: np.copyto(dst[bounds[i]:bounds[i + 1]], src[bounds[i]:bounds[i + 1]]),
                              range(threads)))

            best = max(best, 2 * n * 4 / _median_seconds(copy, repeats) / 1e9)
    return best


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bytes_per_decode_step(model: Model) -> int:
    """Weight bytes one decoding step reads: everything, except that an untied input
    embedding table is only looked up (one row per sequence, negligible)."""
    total = weight_bytes(model)
    if not model.args.tie_word_embeddings:
        total -= sum(v.nbytes for _, v in tree_flatten(model.model.embed_tokens.parameters()))
    return total


def _summarize(trials: list[dict]) -> tuple[dict, dict]:
    mean = {k: statistics.fmean(t[k] for t in trials) for k in SPEED_FIELDS}
    std = {k: statistics.stdev([t[k] for t in trials]) if len(trials) > 1 else 0.0 for k in SPEED_FIELDS}
    return mean, std


def bench_loaded(model: Model, name: str, variant: str, cfg: BenchConfig, bandwidth: float) -> BenchResult:
    """Time one loaded model; prints each trial."""
    prompts = random_prompts(model.args.vocab_size, cfg.prompt_tokens, cfg.batch_size, cfg.seed)
    time_generation(model, prompts, min(cfg.generation_tokens, 8))  # warm-up
    result = BenchResult(name, variant, count_params(model.args)["total"], weight_bytes(model), bits_per_weight(model))
    for i in range(cfg.trials):
        speed = asdict(time_generation(model, prompts, cfg.generation_tokens))
        trial = {"prompt_tps": speed["prompt_tok_s"], "generation_tps": speed["gen_tok_s"],
                 "ttft_s": speed["ttft_s"], "peak_memory_gb": speed["peak_memory_gb"], "total_s": speed["total_s"]}
        result.trials.append(trial)
        ui.info(f"  {name} [{variant}] trial {i + 1}: prompt {trial['prompt_tps']:,.1f} tok/s, generation "
                f"{trial['generation_tps']:,.1f} tok/s, first token {trial['ttft_s'] * 1e3:,.1f} ms, peak "
                f"{trial['peak_memory_gb']:.3f} GB")
    result.mean, result.std = _summarize(result.trials)
    result.bytes_per_step = bytes_per_decode_step(model)
    result.bound_tok_s = cfg.batch_size * bandwidth * 1e9 / result.bytes_per_step
    result.fraction_of_bound = result.mean["generation_tps"] / result.bound_tok_s
    result.device_hours_per_billion = 1e9 / result.mean["generation_tps"] / 3600
    return result


def _evaluate(model: Model, tokenizer, config: dict, cfg: BenchConfig) -> tuple[float, float]:
    from .train.evaluate import evaluate
    from .train.jobs import tokenize

    data = tokenize(load_corpus(cfg.eval_corpus), "test", tokenizer, cfg.cache_dir)
    result = evaluate(model, data, model_context(config), 8, cfg.eval_tokens)
    return result.ppl, result.bits_per_byte


def run_bench(models: list[str], cfg: BenchConfig) -> dict:
    """Benchmark each model folder (or hub name) and its quantized variants. The options
    and the evaluation corpus are checked first, then every model's configuration."""
    check_weight_options(cfg.dtype, cfg.quantize, cfg.group_size)
    check_eval_corpus(cfg.eval_corpus)
    mx.random.seed(cfg.seed)
    for name in models:  # a wrong name fails now, not after minutes of measuring
        read_config(resolve_model_path(name))
    bandwidth = None
    results = []
    for name in models:
        variants = [None, *cfg.quantize]
        for bits in variants:
            model, tokenizer, config = load_model(name, dtype=cfg.dtype)
            if bandwidth is None:
                bandwidth = copy_bandwidth()
                ui.info(f"{device_name()}: copy bandwidth {bandwidth:,.1f} GB/s")
            stored = config.get("quantization")
            if bits and stored:
                ui.info(f"  {name} is stored quantized ({stored['bits']} bits): skipping --quantize {bits}")
                continue
            if bits:
                quantize(model, bits, cfg.group_size)
            variant = f"q{bits}" if bits else (f"q{stored['bits']}" if stored else _dtype_name(model))
            result = bench_loaded(model, name, variant, cfg, bandwidth)
            if cfg.eval_corpus:
                result.ppl, result.bpb = _evaluate(model, tokenizer, config, cfg)
            results.append(result)
            del model
            mx.clear_cache()
    first = results[0].device_hours_per_billion if results else math.nan
    rows = [{**asdict(r), "cost_vs_first": r.device_hours_per_billion / first} for r in results]
    return {"device": device_name(), "bandwidth_gb_s": bandwidth, "settings": asdict(cfg), "models": rows}


def _dtype_name(model: nn.Module) -> str:
    dtypes = {v.dtype for _, v in tree_flatten(model.parameters())}
    return "/".join(sorted(str(d).split(".")[-1] for d in dtypes))


def export_and_compare(model: str, out_dir, bits: int | None = None, group_size: int = DEFAULT_GROUP_SIZE,
                       dtype: str | None = None, overwrite: bool = False, eval_corpus: str | None = None,
                       eval_tokens: int = 20_000, cache_dir=None) -> dict:
    """`models.export.export_model` with its options checked first, and with an
    evaluation corpus the test perplexity and bits per byte of the source and the export
    on its first `eval_tokens` tokens: what a quantization costs."""
    from .train.jobs import evaluate_model

    check_weight_options(dtype, [bits] if bits is not None else [], group_size)
    check_eval_corpus(eval_corpus)
    report = export_model(model, out_dir, bits, group_size, dtype, overwrite)
    if eval_corpus:
        before = evaluate_model(model, eval_corpus, "test", cache_dir, max_tokens=eval_tokens)
        after = evaluate_model(out_dir, eval_corpus, "test", cache_dir, max_tokens=eval_tokens)
        report.update(eval_corpus=eval_corpus, ppl_source=before.ppl, ppl_export=after.ppl,
                      bpb_source=before.bits_per_byte, bpb_export=after.bits_per_byte)
    return report
