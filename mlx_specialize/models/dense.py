"""Dense decoder-only transformer, weight-compatible with mlx-lm's `llama`.

Pre-norm RMSNorm blocks, rotary positions, multi-head attention
(`mx.fast.scaled_dot_product_attention`), a gated (SwiGLU) MLP, tied or untied output
embedding, KV cache for generation. Plain MLX: the layers a platform computes its own
way (linear, norm, activation, attention) are modules that `accel.prepare` swaps from
outside (layers.py). Parameter names and `config.json` fields are those
of mlx-lm's llama, so a checkpoint we write loads with `mlx_lm.load` unchanged.

The paper's MLP has two matrices of width 4d (8 d^2 parameters); we use SwiGLU, three
matrices of width 8d/3, the same parameters and FLOPs, because it is what mlx-lm's llama
(and every llama-style tool) runs.

Shapes: B batch, L sequence length, D hidden_size, H heads, Dh head dim, V vocab.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import mlx.core as mx
import mlx.nn as nn

from ..layers import ScaledDotProductAttention, SwiGLU


@dataclass
class ModelArgs:
    """The model's `config.json` (mlx-lm / Hugging Face llama field names)."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_traditional: bool = False
    rope_scaling: dict | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 1024
    model_type: str = "llama"

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.num_attention_heads} heads do not split into {self.num_key_value_heads} KV groups")

    @classmethod
    def from_dict(cls, params: dict) -> "ModelArgs":
        """Build from a config dict, ignoring fields this class does not know."""
        names = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in params.items() if k in names})

    def to_dict(self) -> dict:
        """The config.json fields; optional ones left at their default are omitted."""
        out = asdict(self)
        for name in ("rope_scaling", "rope_traditional", "attention_bias", "mlp_bias"):
            if not out[name]:
                del out[name]
        return out


class KVCache:
    """Keys and values of past positions for one layer, grown in steps of 256.

    `update_and_fetch(k, v)` with k, v [B, Hkv, L, Dh] appends them and returns all
    keys and values so far, [B, Hkv, offset + L, Dh]."""

    step = 256

    def __init__(self):
        self.keys = self.values = None
        self.offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        prev = self.offset
        if self.keys is None or prev + keys.shape[2] > self.keys.shape[2]:
            B, H, _, Dh = keys.shape
            grow = ((keys.shape[2] + self.step - 1) // self.step) * self.step
            new_k = mx.zeros((B, H, grow, Dh), keys.dtype)
            new_v = mx.zeros((B, H, grow, Dh), values.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[..., :prev, :], new_k], axis=2)
                self.values = mx.concatenate([self.values[..., :prev, :], new_v], axis=2)
        self.offset += keys.shape[2]
        self.keys[..., prev : self.offset, :] = keys
        self.values[..., prev : self.offset, :] = values
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]


class StaticKVCache:
    """A fixed-size cache for compiled decoding: keys / values [B, Hkv, max_len, Dh]
    allocated once, written at `offset` (an int32 array, so one compiled step serves
    every position), read whole under a mask of the positions written so far.
    `state` / `from_state` carry it through `mx.compile` as plain arrays."""

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array):
        self.keys, self.values, self.offset = keys, values, offset

    @classmethod
    def empty(cls, batch: int, args: "ModelArgs", max_len: int, dtype=mx.float32) -> "StaticKVCache":
        shape = (batch, args.num_key_value_heads, max_len, args.head_dim)
        return cls(mx.zeros(shape, dtype), mx.zeros(shape, dtype), mx.array(0, dtype=mx.int32))

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        start = self.offset.reshape(1)
        self.keys = mx.slice_update(self.keys, keys.astype(self.keys.dtype), start, axes=(2,))
        self.values = mx.slice_update(self.values, values.astype(self.values.dtype), start, axes=(2,))
        self.offset = self.offset + keys.shape[2]
        return self.keys, self.values

    def attention_mask(self, n_queries: int) -> mx.array:
        """[n_queries, max_len] bool: query i (at offset + i) sees positions <= offset + i."""
        positions = mx.arange(self.keys.shape[2])
        return positions[None, :] <= (self.offset + mx.arange(n_queries))[:, None]


def attention_mask(n_queries: int, cache: list | None):
    """One query: attend to everything cached (None). Several: "causal" (which also
    aligns the mask to the end when keys are longer than queries, as with a cache). A
    static cache holds unwritten positions too: it masks them itself."""
    if cache is not None and isinstance(cache[0], StaticKVCache):
        return cache[0].attention_mask(n_queries)
    return "causal" if n_queries > 1 else None


def rope(dims: int, args: ModelArgs) -> nn.Module:
    """Rotary positions over `dims` features: plain RoPE, or the linear / llama3 / yarn
    scalings that llama-style checkpoints declare in `rope_scaling`, built by mlx-lm's
    constructor. Plain RoPE is what that constructor returns without a scaling, made here
    because importing mlx-lm loads `transformers` (a second or more): every command that
    builds one of our models, and any that never builds one, would pay it at start."""
    if args.rope_scaling is None:
        return nn.RoPE(dims, traditional=args.rope_traditional, base=args.rope_theta, scale=1.0)
    from mlx_lm.models.rope_utils import initialize_rope

    return initialize_rope(dims, args.rope_theta, args.rope_traditional, args.rope_scaling,
                           args.max_position_embeddings)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        D, H, Hkv, Dh = args.hidden_size, args.num_attention_heads, args.num_key_value_heads, args.head_dim
        self.n_heads, self.n_kv_heads, self.scale = H, Hkv, Dh**-0.5
        bias = args.attention_bias
        self.q_proj = nn.Linear(D, H * Dh, bias=bias)
        self.k_proj = nn.Linear(D, Hkv * Dh, bias=bias)
        self.v_proj = nn.Linear(D, Hkv * Dh, bias=bias)
        self.o_proj = nn.Linear(H * Dh, D, bias=bias)
        self.rope = rope(Dh, args)
        self.attend = ScaledDotProductAttention(self.scale)

    def __call__(self, x: mx.array, mask, cache: KVCache | None = None) -> mx.array:
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = self.attend(q, k, v, mask, cache)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        D, F, bias = args.hidden_size, args.intermediate_size, args.mlp_bias
        self.gate_proj = nn.Linear(D, F, bias=bias)
        self.up_proj = nn.Linear(D, F, bias=bias)
        self.down_proj = nn.Linear(F, D, bias=bias)
        self.act = SwiGLU()

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(self.act(self.gate_proj(x), self.up_proj(x)))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask, cache: KVCache | None = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, inputs: mx.array, cache: list[KVCache] | None = None) -> mx.array:
        h = self.embed_tokens(inputs)
        mask = attention_mask(h.shape[1], cache)
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, cache[i] if cache is not None else None)
        return self.norm(h)


class Model(nn.Module):
    """`Model(args)(inputs [B, L] int, cache=None) -> logits [B, L, V] float32`."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = LlamaModel(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs: mx.array, cache: list[KVCache] | None = None) -> mx.array:
        h = self.model(inputs, cache)
        if not self.args.tie_word_embeddings:
            return self.lm_head(h)
        return self.model.embed_tokens.as_linear(h)

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.model.layers]

    def flops_per_token(self, context: int, training: bool = True, batch_tokens: int | None = None) -> float:
        """FLOPs per token at `context` (see `flops_per_token`); `batch_tokens`, the
        tokens of one forward pass, changes nothing for a dense model."""
        return flops_per_token(self.args, context, training)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Drop what Hugging Face llama checkpoints store but this model computes:
        rotary frequency tables, and `lm_head` when the embeddings are tied."""
        weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return weights

    @property
    def layers(self):
        return self.model.layers


def count_params(args: ModelArgs) -> dict[str, int]:
    """Parameter counts: `total` (stored), `embedding` (V x D, counted once when tied),
    `non_embedding` (blocks and final norm), `matmul` (what a token's forward pass
    multiplies by: blocks plus the V x D output projection)."""
    D, F, V, L = args.hidden_size, args.intermediate_size, args.vocab_size, args.num_hidden_layers
    q, kv = args.num_attention_heads * args.head_dim, args.num_key_value_heads * args.head_dim
    attn_bias = (q + 2 * kv + D) if args.attention_bias else 0
    mlp_bias = (2 * F + D) if args.mlp_bias else 0
    block = 2 * D * q + 2 * D * kv + 3 * D * F + 2 * D + attn_bias + mlp_bias
    non_embedding = L * block + D
    embedding = V * D * (1 if args.tie_word_embeddings else 2)
    return {
        "total": non_embedding + embedding,
        "embedding": embedding,
        "non_embedding": non_embedding,
        "matmul": non_embedding + V * D,
    }


def flops_per_token(args: ModelArgs, context: int, training: bool = True) -> float:
    """FLOPs per token: 2 N_matmul + 2 n_layer context D forward (Kaplan et al. 2020,
    attention scores and values over the full context), times 3 for training."""
    attn_width = args.num_attention_heads * args.head_dim
    forward = 2 * count_params(args)["matmul"] + 2 * args.num_hidden_layers * context * attn_width
    return 3 * forward if training else forward
