"""Sampling text from a model with its KV cache."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx

from ..data.tokenizer import EOS_ID, Tokenizer
from .dense import Model


PREFILL_STEP = 2048  # prompt tokens per forward pass while filling the cache (mlx-lm's default)


def prefill(model: Model, prompt: mx.array, cache: list) -> mx.array:
    """Run `prompt` [B, P] through the model into `cache`, in chunks of PREFILL_STEP;
    returns the logits of the last position [B, V] (not yet evaluated)."""
    while prompt.shape[1] > PREFILL_STEP:
        model(prompt[:, :PREFILL_STEP], cache=cache)
        mx.eval([c.keys for c in cache] + [c.values for c in cache])
        prompt = prompt[:, PREFILL_STEP:]
    return model(prompt, cache=cache)[:, -1, :]


def _sampler(temperature: float, top_k: int, seed: int):
    """`sample(logits [B, V]) -> ids [B]`: greedy at temperature 0, else categorical
    (optionally over the top_k logits) with a seeded key split at every call."""
    key = [mx.random.key(seed)]

    def sample(logits: mx.array) -> mx.array:
        if temperature <= 0:
            return mx.argmax(logits, axis=-1)
        key[0], sub = mx.random.split(key[0])
        scaled = logits / temperature
        if top_k:
            kth = mx.sort(scaled, axis=-1)[:, -top_k][:, None]
            scaled = mx.where(scaled < kth, -mx.inf, scaled)
        return mx.random.categorical(scaled, key=sub)

    return sample


def generate_tokens(
    model: Model,
    prompt: list[int],
    max_tokens: int,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: int = 0,
    stop_at_eos: bool = True,
    eos_id: int = EOS_ID,
) -> Iterator[int]:
    """Yield up to `max_tokens` new token ids after `prompt` (temperature 0: greedy).

    The prompt fills the cache in one pass (chunks of PREFILL_STEP); then one token at
    a time. The next step is queued (`mx.async_eval`) before the current token is read
    back, so the device never waits for Python: mlx-lm's `generate_step` does the same."""
    sample = _sampler(temperature, top_k, seed)
    cache = model.make_cache()
    y = sample(prefill(model, mx.array([prompt]), cache))
    mx.async_eval(y)
    for n in range(max_tokens):
        if n + 1 < max_tokens:
            next_y = sample(model(y.reshape(1, 1), cache=cache)[:, -1, :])
            mx.async_eval(next_y)
        token = int(y.item())
        if stop_at_eos and token == eos_id:
            return
        yield token
        if n + 1 < max_tokens:
            y = next_y


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """A prompt as the model saw documents in training: BOS (if the tokenizer has one), then the text."""
    return ([] if tokenizer.bos_id is None else [tokenizer.bos_id]) + tokenizer.encode(text)


def generate_text(model: Model, tokenizer: Tokenizer, prompt: str, max_tokens: int = 100, **kwargs) -> str:
    ids = generate_tokens(model, encode_prompt(tokenizer, prompt), max_tokens, eos_id=tokenizer.eos_id, **kwargs)
    return tokenizer.decode(ids)


@dataclass
class GenerationSpeed:
    """One timed generation, with mlx-lm's definitions (`mlx_lm.benchmark`):

    ttft_s:         seconds from the start to the first new token (prefill + one sample)
    prompt_tok_s:   batch x prompt tokens / ttft_s
    gen_tok_s:      batch x new tokens / seconds from the first new token to the last
    peak_memory_gb: `mx.get_peak_memory()` after the run, 1e9 bytes
    """

    batch_size: int
    prompt_tokens: int
    generated: int
    ttft_s: float
    prompt_tok_s: float
    gen_tok_s: float
    peak_memory_gb: float
    total_s: float


def time_generation(model: Model, prompts: mx.array, gen_tokens: int) -> GenerationSpeed:
    """Greedy-decode `gen_tokens` tokens after each row of `prompts` [B, P] (no stop at
    end of text) and time it; the pipelining is `generate_tokens`'."""
    B, P = prompts.shape
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    cache = model.make_cache()
    y = mx.argmax(prefill(model, prompts, cache), axis=-1)
    mx.eval(y)
    t1 = time.perf_counter()
    for _ in range(gen_tokens - 1):
        next_y = mx.argmax(model(y[:, None], cache=cache)[:, -1, :], axis=-1)
        mx.async_eval(next_y)
        y.tolist()  # what a caller streaming tokens reads back, as mlx-lm does
        y = next_y
    y.tolist()
    t2 = time.perf_counter()
    return GenerationSpeed(B, P, gen_tokens, t1 - t0, B * P / (t1 - t0), B * gen_tokens / max(t2 - t1, 1e-9),
                           mx.get_peak_memory() / 1e9, t2 - t0)


def random_prompts(vocab_size: int, prompt_tokens: int, batch_size: int = 1, seed: int = 0) -> mx.array:
    """Fixed random prompts [B, P] (ids >= 3: no special tokens), as mlx-lm's benchmark."""
    return mx.random.randint(3, vocab_size, (batch_size, prompt_tokens), key=mx.random.key(seed))


def measure_generation(model: Model, prompt_tokens: int = 64, gen_tokens: int = 64, seed: int = 0) -> GenerationSpeed:
    """Batch-1 prefill and decoding speed on a fixed random prompt, after a warm-up."""
    prompts = random_prompts(model.args.vocab_size, prompt_tokens, 1, seed)
    time_generation(model, prompts, 4)  # warm-up
    return time_generation(model, prompts, gen_tokens)
