"""Sampling text from a model with its KV cache."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx

from ..data.tokenizer import BOS_ID, EOS_ID, Tokenizer
from .dense import Model


def generate_tokens(
    model: Model,
    prompt: list[int],
    max_tokens: int,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: int = 0,
    stop_at_eos: bool = True,
) -> Iterator[int]:
    """Yield up to `max_tokens` new token ids after `prompt` (temperature 0: greedy).

    The prompt is processed in one forward pass that fills the cache; then one token
    at a time, each step reading only the cache and the new token."""
    key = mx.random.key(seed)
    cache = model.make_cache()
    logits = model(mx.array([prompt]), cache=cache)[:, -1, :]
    for _ in range(max_tokens):
        if temperature <= 0:
            token = mx.argmax(logits, axis=-1)
        else:
            key, sub = mx.random.split(key)
            scaled = logits / temperature
            if top_k:
                kth = mx.sort(scaled, axis=-1)[:, -top_k][:, None]
                scaled = mx.where(scaled < kth, -mx.inf, scaled)
            token = mx.random.categorical(scaled, key=sub)
        next_id = int(token.item())
        if stop_at_eos and next_id == EOS_ID:
            return
        yield next_id
        logits = model(token.reshape(1, 1), cache=cache)[:, -1, :]


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """A prompt as the model saw documents in training: BOS, then the text."""
    return [BOS_ID, *tokenizer.encode(text)]


def generate_text(model: Model, tokenizer: Tokenizer, prompt: str, max_tokens: int = 100, **kwargs) -> str:
    return tokenizer.decode(generate_tokens(model, encode_prompt(tokenizer, prompt), max_tokens, **kwargs))


@dataclass
class GenerationSpeed:
    """prompt_tok_s: prompt tokens per second of prefill; gen_tok_s: new tokens per
    second of batch-1 decoding after the first."""

    prompt_tokens: int
    generated: int
    prompt_tok_s: float
    gen_tok_s: float


def measure_generation(model: Model, prompt_tokens: int = 64, gen_tokens: int = 64, seed: int = 0) -> GenerationSpeed:
    """Time prefill and greedy decoding on a fixed random prompt (after a warm-up)."""
    prompt = mx.random.randint(3, model.args.vocab_size, (prompt_tokens,), key=mx.random.key(seed)).tolist()
    for _ in generate_tokens(model, prompt, 4, temperature=0, stop_at_eos=False):
        pass  # warm-up
    cache = model.make_cache()
    t0 = time.perf_counter()
    logits = model(mx.array([prompt]), cache=cache)[:, -1, :]
    token = mx.argmax(logits, axis=-1)
    mx.eval(token)
    t1 = time.perf_counter()
    for _ in range(gen_tokens):
        token = mx.argmax(model(token.reshape(1, 1), cache=cache)[:, -1, :], axis=-1)
        mx.eval(token)
    t2 = time.perf_counter()
    return GenerationSpeed(prompt_tokens, gen_tokens, prompt_tokens / (t1 - t0), gen_tokens / (t2 - t1))
