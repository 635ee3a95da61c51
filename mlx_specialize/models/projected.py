"""SLM-pn (the paper's projected network) and the Soup-of-Experts: one large network
that turns, in closed form, into the dense SLM of any cluster or domain.

Both keep the dense SLM's attention, norms and embeddings shared, and generate every
MLP weight matrix (gate, up, down of each layer; W is [out, in]) from a condition
`cond` [k], the weights of the k generic clusters (one-hot: one cluster's expert; a
histogram: a domain):

    pn    W(l) = sum_r c(l)[r] T(l)[r]            c(l) = (cond @ E) @ M(l)    [h]
    soup  W(l) = S(l) + sum_r a[r] T(l)[r]        a = MLP(cond)               [h]

E [k, m] are the expert embeddings, M(l) [m, h] a per-layer projection (shared by the
layer's three matrices), T(l) [h, out, in] a per-matrix basis that holds most of the
parameters, S(l) the soup's shared matrices and MLP a small network (k -> hidden -> h,
SiLU). The hard mixture of experts is the pn with h = m = k, E one-hot, M identity.
`instantiate(model, cond)` computes every W once and returns a plain dense `Model`
(mlx-lm loadable), whose logits equal the network's for that condition.

Defaults (ProjectionArgs): k = 16 clusters (the paper's hard mixture; it found k = 32
best for cost/quality at its scale, an option here), m = 16, h = 8: T holds 8x the
dense MLP parameters, so the network is 3.0x (`small`) to 4.2x (`medium`) the dense SLM
(`param_counts`), while a step costs the dense step plus generating the weights
(h x MLP parameters multiply-adds per batch, whatever the batch's token count).
A folder holds `config.json` (the dense fields, `model_type: mlxspec-projected` so
that dense loaders refuse it clearly, and `projection`), `model.safetensors` and the
tokenizer.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import SpecializeError
from ..layers import MatmulT, SwiGLU
from .dense import LlamaModel, Model, ModelArgs, attention_mask, count_params, flops_per_token

MODEL_TYPE = "mlxspec-projected"
ARCHS = ("pn", "soup")
MATRICES = ("gate_proj", "up_proj", "down_proj")
EXPERT_SPREAD = 0.1  # initial spread of the pn's expert embeddings around their shared start


@dataclass
class ProjectionArgs:
    """How MLP weights are generated. arch: "pn" or "soup"; experts: k, the length of
    a condition (the clustering's k); expert_dim: m (pn); basis: h, basis matrices per
    MLP weight; soup_hidden: width of the soup's coefficient MLP."""

    arch: str = "pn"
    experts: int = 16
    expert_dim: int = 16
    basis: int = 8
    soup_hidden: int = 64

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise SpecializeError(f"unknown projected architecture '{self.arch}' ({' or '.join(ARCHS)})")
        for name in ("experts", "expert_dim", "basis", "soup_hidden"):
            if int(getattr(self, name)) < 1:
                raise SpecializeError(f"{name} must be at least 1, not {getattr(self, name)}")


class GeneratedLinear(nn.Module):
    """A bias-free linear layer whose weight [out, in] is made from coefficients [h]:
    sum_r coef[r] basis[r] / sqrt(h) (+ shared, for the soup).

    Every basis matrix starts like nn.Linear's weight (variance 1 / (3 in)) and the sum
    is divided by sqrt(h): with unit-variance coefficients W starts like nn.Linear's,
    and an Adam step moves W by about as much as it moves a dense weight, so the dense
    SLM's learning rate suits the network too. The soup's shared matrix starts as
    nn.Linear's and its basis at a tenth of that, a perturbation of one dense model."""

    def __init__(self, in_dims: int, out_dims: int, basis: int, shared: bool):
        super().__init__()
        scale = 1 / math.sqrt(3 * in_dims)
        self.basis = mx.random.normal((basis, out_dims, in_dims)) * (scale * (0.1 if shared else 1.0))
        if shared:
            self.shared = mx.random.normal((out_dims, in_dims)) * scale

    def weight(self, coef: mx.array) -> mx.array:
        """coef [h] -> W [out, in]."""
        h, out_dims, in_dims = self.basis.shape
        flat = (coef.reshape(1, h) @ self.basis.reshape(h, out_dims * in_dims)) * (1 / math.sqrt(h))
        w = flat.reshape(out_dims, in_dims)
        return w + self.shared if "shared" in self else w


class GeneratedMLP(nn.Module):
    """The SwiGLU MLP of one layer with generated weights (and M(l) for the pn)."""

    def __init__(self, args: ModelArgs, proj: ProjectionArgs):
        super().__init__()
        D, F, h, soup = args.hidden_size, args.intermediate_size, proj.basis, proj.arch == "soup"
        self.gate_proj = GeneratedLinear(D, F, h, soup)
        self.up_proj = GeneratedLinear(D, F, h, soup)
        self.down_proj = GeneratedLinear(F, D, h, soup)
        if not soup:
            self.mix = mx.random.normal((proj.expert_dim, h)) / math.sqrt(proj.expert_dim)
        self.act, self.product = SwiGLU(), MatmulT()

    def weights(self, coef: mx.array) -> dict[str, mx.array]:
        return {name: getattr(self, name).weight(coef) for name in MATRICES}

    def __call__(self, x: mx.array, w: dict[str, mx.array]) -> mx.array:
        """The MLP with weights `w` (from `weights`): x [..., D] -> [..., D]."""
        gate, up = self.product(x, w["gate_proj"]), self.product(x, w["up_proj"])
        return self.product(self.act(gate, up), w["down_proj"])


class ProjectedModel(nn.Module):
    """`ProjectedModel(args, proj)(inputs [B, L], cache=None, cond=[k]) -> logits
    [B, L, V]`: the dense SLM `args` whose MLP weights come from `cond` (one condition
    for the whole batch: batches are grouped by cluster, so weights are made once)."""

    def __init__(self, args: ModelArgs, proj: ProjectionArgs):
        super().__init__()
        if args.mlp_bias:
            raise SpecializeError("projected networks have bias-free MLPs (mlp_bias must be false)")
        self.args, self.projection = args, proj
        self.model_type = MODEL_TYPE
        self.model = LlamaModel(args)
        for layer in self.model.layers:
            layer.mlp = GeneratedMLP(args, proj)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if proj.arch == "pn":
            # Experts start as near copies of one shared embedding (unit variance), so at
            # first every cluster's gradient moves the basis the same way, as for one dense
            # model; they grow apart as E learns. (Independent random rows make the
            # clusters pull the shared basis in random directions: measured worse.)
            shared = mx.random.normal((1, proj.expert_dim))
            noise = mx.random.normal((proj.experts, proj.expert_dim))
            self.expert_embedding = (shared + EXPERT_SPREAD * noise) / math.sqrt(1 + EXPERT_SPREAD**2)
        else:
            self.alpha = [nn.Linear(proj.experts, proj.soup_hidden), nn.Linear(proj.soup_hidden, proj.basis)]

    def coefficients(self, cond: mx.array) -> list[mx.array]:
        """cond [k] -> each layer's coefficients [h]."""
        if cond is None or cond.shape != (self.projection.experts,):
            shape = None if cond is None else tuple(cond.shape)
            raise SpecializeError(f"a projected network needs a condition of shape ({self.projection.experts},), "
                                  f"got {shape}")
        if self.projection.arch == "soup":
            a = self.alpha[1](nn.silu(self.alpha[0](cond)))
            return [a for _ in self.model.layers]
        e = cond @ self.expert_embedding  # [m]
        return [e @ layer.mlp.mix for layer in self.model.layers]

    def mlp_weights(self, cond: mx.array) -> list[dict[str, mx.array]]:
        """Every layer's dense MLP matrices for condition `cond`."""
        return [layer.mlp.weights(c) for layer, c in zip(self.model.layers, self.coefficients(cond))]

    def conditioned(self, cond: mx.array):
        """`forward(inputs, cache=None) -> logits` with the MLP weights of `cond` made
        once, for every call (the trainer's CPU streams share one weight set per batch)."""
        weights = self.mlp_weights(cond)
        return lambda inputs, cache=None: self.forward(inputs, weights, cache)

    def __call__(self, inputs: mx.array, cache=None, cond: mx.array | None = None) -> mx.array:
        return self.forward(inputs, self.mlp_weights(cond), cache)

    def forward(self, inputs: mx.array, weights: list[dict[str, mx.array]], cache=None) -> mx.array:
        """Logits [B, L, V] with the given MLP weights (from `mlp_weights`)."""
        body = self.model
        h = body.embed_tokens(inputs)
        mask = attention_mask(h.shape[1], cache)
        for i, layer in enumerate(body.layers):
            h = h + layer.self_attn(layer.input_layernorm(h), mask, cache[i] if cache is not None else None)
            h = h + layer.mlp(layer.post_attention_layernorm(h), weights[i])
        h = body.norm(h)
        return body.embed_tokens.as_linear(h) if self.args.tie_word_embeddings else self.lm_head(h)

    def config_dict(self) -> dict:
        """config.json: the dense fields, our model type, the projection."""
        return {**self.args.to_dict(), "model_type": MODEL_TYPE, "projection": asdict(self.projection)}

    def generation_flops(self, training: bool = True) -> float:
        """FLOPs to make all MLP weights once: h multiply-adds per MLP weight, forward,
        and backward too (3x) when `training`."""
        mlp = 3 * self.args.hidden_size * self.args.intermediate_size * self.args.num_hidden_layers
        return (3 if training else 1) * 2 * self.projection.basis * mlp

    def flops_per_token(self, context: int, training: bool = True, batch_tokens: int | None = None) -> float:
        """FLOPs per token of the network: the dense SLM it runs as, plus making its MLP
        weights, once per forward pass of `batch_tokens` tokens (one condition per batch)."""
        dense = flops_per_token(self.args, context, training)
        return dense + (self.generation_flops(training) / batch_tokens if batch_tokens else 0.0)


def param_counts(model: ProjectedModel) -> dict[str, int]:
    """total: stored parameters; active: those of one instantiated dense SLM (what
    inference runs)."""
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    return {"total": int(total), "active": count_params(model.args)["total"]}


def instantiate(model: ProjectedModel, cond: mx.array) -> Model:
    """The dense SLM of condition `cond` [k] (a cluster's one-hot, or a domain's
    cluster histogram): shared weights copied, MLP weights generated once."""
    dense = Model(model.args)
    shared = [(name, value) for name, value in tree_flatten(model.parameters())
              if ".mlp." not in name and not name.startswith(("expert_embedding", "alpha."))]
    generated = [(f"model.layers.{i}.mlp.{name}.weight", w)
                 for i, weights in enumerate(model.mlp_weights(cond)) for name, w in weights.items()]
    dense.load_weights(shared + generated, strict=True)
    mx.eval(dense.parameters())
    return dense


def one_hot(index: int, k: int) -> mx.array:
    if not 0 <= index < k:
        raise SpecializeError(f"cluster {index} does not exist (the network has {k} clusters: 0..{k - 1})")
    return mx.zeros((k,)).at[index].add(1.0)


def read_projected_config(folder: str | os.PathLike) -> dict:
    """config.json of a projected-network folder; anything else is refused clearly."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        what = "a mixture of experts" if (Path(folder) / "mixture.json").is_file() else "not a model folder"
        raise SpecializeError(f"{folder} is {what}, not a projected network (no config.json)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SpecializeError(f"{path} is not valid JSON") from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        raise SpecializeError(f"{folder} is a dense model, not a projected network (pn / soup)")
    return config


def load_projected(folder: str | os.PathLike, tokenizer=None) -> tuple[ProjectedModel, object, dict]:
    """(model, tokenizer, config) of a folder written by `pretrain --arch pn|soup`."""
    from ..data.hf_tokenizer import load_tokenizer
    from .io import WEIGHTS_FILE, load_arrays

    config = read_projected_config(folder)
    tokenizer = tokenizer or load_tokenizer(Path(folder), config)
    try:
        args = ModelArgs.from_dict({**config, "model_type": "llama"})
        proj = ProjectionArgs(**config["projection"])
    except (TypeError, ValueError, KeyError) as err:
        raise SpecializeError(f"{folder}/config.json is not a valid projected-network config: {err}") from None
    model = ProjectedModel(args, proj)
    try:
        model.load_weights(list(load_arrays(Path(folder) / WEIGHTS_FILE).items()), strict=True)
    except ValueError as err:
        raise SpecializeError(f"{folder}: weights do not match its config: {str(err).splitlines()[0]}") from None
    mx.eval(model.parameters())
    return model, tokenizer, config
