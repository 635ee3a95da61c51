"""Sampling text from a model with its KV cache."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx

from ..data.tokenizer import EOS_ID, Tokenizer
from .dense import Model, StaticKVCache


PREFILL_STEP = 2048  # prompt tokens per forward pass while filling the cache (mlx-lm's default)
CACHE_BLOCK = 256  # the static cache's length is a multiple of this


class Decoder:
    """Prompt prefill, then one compiled forward pass per new token.

    The cache is a `StaticKVCache` sized for prompt + new tokens (rounded up to
    CACHE_BLOCK), so every decoding step has the same shapes and `mx.compile` traces it
    once per (batch, cache length): elementwise ops fuse and per-op dispatch shrinks,
    which is most of a small model's decoding time (measured: BENCHMARKS.md, "Inference"). Prompt positions beyond the last are run without the
    vocabulary projection (it is never evaluated), as mlx-lm's prefill does."""

    def __init__(self, model: Model, batch: int, max_len: int):
        self.model = model
        length = -(-max_len // CACHE_BLOCK) * CACHE_BLOCK
        dtype = model.model.norm.weight.dtype
        self.cache = [StaticKVCache.empty(batch, model.args, length, dtype) for _ in model.layers]
        self._step = _compiled_step(model)

    def prefill(self, prompt: mx.array) -> mx.array:
        """prompt [B, P] -> logits of its last position [B, V] (lazy)."""
        while prompt.shape[1] > 1:
            n = min(PREFILL_STEP, prompt.shape[1] - 1)
            self.model(prompt[:, :n], cache=self.cache)  # logits never evaluated: only the cache
            mx.eval([(c.keys, c.values, c.offset) for c in self.cache])
            prompt = prompt[:, n:]
        return self.model(prompt, cache=self.cache)[:, -1, :]

    def step(self, tokens: mx.array) -> mx.array:
        """tokens [B] -> next-token logits [B, V] (lazy)."""
        state = [(c.keys, c.values) for c in self.cache]
        logits, state = self._step(tokens[:, None], self.cache[0].offset, state)
        offset = self.cache[0].offset + 1
        self.cache = [StaticKVCache(k, v, offset) for k, v in state]
        return logits


def _compiled_step(model: Model):
    """The model's compiled one-token step, made once per model and kept on it."""
    step = model.__dict__.get("_mlxspec_decode_step")
    if step is None:

        def one_token(tokens, offset, state):
            cache = [StaticKVCache(k, v, offset) for k, v in state]
            logits = model(tokens, cache=cache)[:, -1, :]
            return logits, [(c.keys, c.values) for c in cache]

        step = mx.compile(one_token, inputs=model.state)
        object.__setattr__(model, "_mlxspec_decode_step", step)
    return step


def _sampler(temperature: float, top_k: int, seed: int):
    """`sample(logits [B, V]) -> ids [B]`: greedy at temperature 0, else categorical
    (optionally over the top_k logits) with a seeded key split at every call."""
    key = [mx.random.key(seed)]

    def sample(logits: mx.array) -> mx.array:
        if temperature <= 0:
            return mx.argmax(logits, axis=-1)
        key[0], sub = mx.random.split(key[0])
        scaled = logits / temperature
        if 0 < top_k < scaled.shape[-1]:  # k at or above the vocabulary: every token
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

    The prompt fills the cache (chunks of PREFILL_STEP); then one compiled step per
    token (see `Decoder`). The next step is queued (`mx.async_eval`) before the current token is read
    back, so the device never waits for Python: mlx-lm's `generate_step` does the same."""
    sample = _sampler(temperature, top_k, seed)
    decoder = Decoder(model, 1, len(prompt) + max_tokens)
    y = sample(decoder.prefill(mx.array([prompt])))
    mx.async_eval(y)
    for n in range(max_tokens):
        if n + 1 < max_tokens:
            next_y = sample(decoder.step(y))
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
    decoder = Decoder(model, B, P + gen_tokens)
    y = mx.argmax(decoder.prefill(prompts), axis=-1)
    mx.eval(y)
    t1 = time.perf_counter()
    for _ in range(gen_tokens - 1):
        next_y = mx.argmax(decoder.step(y), axis=-1)
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
