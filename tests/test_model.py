"""The dense LM: causality, KV cache, parameter accounting, config round trip."""

import mlx.core as mx
import numpy as np
import pytest

import mlx_specialize as ms
from mlx_specialize.models.dense import ModelArgs, count_params
from mlx_specialize.models.generate import generate_tokens
from mlx.utils import tree_flatten


@pytest.fixture
def model():
    mx.random.seed(3)
    return ms.Model(ms.get_preset("tiny").model_args(vocab_size=300))


def test_changing_future_tokens_never_changes_past_logits(model):
    x = mx.random.randint(3, 300, (2, 40), key=mx.random.key(0))
    base = model(x)
    for cut in (1, 17, 39):
        y = mx.array(np.array(x))
        y[:, cut:] = (y[:, cut:] + 7) % 300
        changed = model(y)
        assert mx.array_equal(changed[:, :cut], base[:, :cut]).item()
        assert not mx.allclose(changed[:, cut:], base[:, cut:]).item()


def test_cached_forward_equals_full_forward(model):
    x = mx.random.randint(3, 300, (2, 30), key=mx.random.key(1))
    full = model(x)
    cache = model.make_cache()
    pieces = [model(x[:, :11], cache), model(x[:, 11:14], cache)]
    pieces += [model(x[:, i : i + 1], cache) for i in range(14, 30)]
    assert cache[0].offset == 30
    np.testing.assert_allclose(np.array(mx.concatenate(pieces, axis=1)), np.array(full), atol=2e-5)


def test_cache_grows_past_its_first_allocation(model):
    x = mx.random.randint(3, 300, (1, 300), key=mx.random.key(2))
    full = model(x)
    cache = model.make_cache()
    first = model(x[:, :250], cache)
    rest = [model(x[:, i : i + 1], cache) for i in range(250, 300)]
    np.testing.assert_allclose(np.array(mx.concatenate([first, *rest], axis=1)), np.array(full), atol=2e-5)


@pytest.mark.parametrize("prompt_len", [1, 9, 250])
def test_compiled_static_cache_decoding_equals_full_recompute(model, prompt_len):
    """The Decoder's prefill + compiled one-token steps (cache of 256 positions, crossed
    into a second block when the prompt is 250 long) give the logits of a full forward."""
    from mlx_specialize.models.generate import Decoder

    steps = 12
    x = mx.random.randint(3, 300, (2, prompt_len + steps), key=mx.random.key(4))
    full = np.array(model(x))
    decoder = Decoder(model, 2, prompt_len + steps)
    got = [decoder.prefill(x[:, :prompt_len])]
    got += [decoder.step(x[:, i]) for i in range(prompt_len, prompt_len + steps - 1)]
    np.testing.assert_allclose(np.array(mx.stack(got, axis=1)), full[:, prompt_len - 1 : -1], atol=2e-5)


def test_greedy_generation_matches_argmax_of_full_forward(model):
    prompt = [1, 50, 60, 70]
    generated = list(generate_tokens(model, prompt, 8, temperature=0, stop_at_eos=False))
    seq = list(prompt)
    for _ in range(8):
        seq.append(int(mx.argmax(model(mx.array([seq]))[0, -1]).item()))
    assert generated == seq[len(prompt):]


@pytest.mark.parametrize("extras", [{}, {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 2, "head_dim": 16}])
@pytest.mark.parametrize("tied", [True, False])
def test_count_params_matches_the_module(tied, extras):
    args = ModelArgs(**{"hidden_size": 48, "num_hidden_layers": 3, "intermediate_size": 128, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "vocab_size": 333, "tie_word_embeddings": tied, **extras})
    model = ms.Model(args)
    actual = sum(v.size for _, v in tree_flatten(model.parameters()))
    assert count_params(args)["total"] == actual


@pytest.mark.parametrize("tied", [True, False])
def test_flops_per_token_by_hand(tied):
    """FLOPs per token (Kaplan et al. 2020, as flops_per_token's docstring defines them):
    2 per weight a token is multiplied by in the forward pass, plus 2 n_layer context
    d_attn for attention, times 3 for training (forward + twice as much backward).
    Worked out by hand for 2 layers, d 64, SwiGLU width 172, 4 heads of 16, vocab 512,
    context 128. Tied or not, the input embedding is a lookup (no FLOPs) and the output
    projection is multiplied once, so the FLOPs are the same; only storage differs."""
    args = ModelArgs(hidden_size=64, num_hidden_layers=2, intermediate_size=172, num_attention_heads=4,
                     vocab_size=512, tie_word_embeddings=tied)
    # One block: q, k, v, o projections 4 * 64 * 64 = 16,384; gate, up, down
    # 3 * 64 * 172 = 33,024; two RMSNorm weights 2 * 64 = 128 (one multiply each).
    block = 16_384 + 33_024 + 128
    assert block == 49_536
    # Per token: 2 blocks + final norm (64) + output projection 512 * 64 = 32,768.
    n_matmul = 2 * block + 64 + 32_768
    assert n_matmul == 131_904
    # Stored: the same, plus the input embedding 512 * 64 when it is not the output's.
    assert count_params(args)["total"] == (131_904 if tied else 131_904 + 32_768)
    # Attention: 2 n_layer context d_attn = 2 * 2 * 128 * (4 * 16) = 32,768 (QK^T and
    # AV, 2 * context * d_attn each at full context, causal: half of it on average).
    forward = 2 * 131_904 + 32_768
    assert forward == 296_576
    assert ms.flops_per_token(args, 128, training=False) == forward
    assert ms.flops_per_token(args, 128) == 3 * 296_576 == 889_728
    # Twice the context adds the attention term once more, nothing else.
    assert ms.flops_per_token(args, 256, training=False) == 296_576 + 32_768


def test_flops_per_token_with_grouped_query_attention():
    """With 2 KV heads for 4 query heads, k and v shrink to 64 x 32 (fewer weights), but
    attention still runs over 4 query heads of 16 (d_attn 64)."""
    args = ModelArgs(hidden_size=64, num_hidden_layers=2, intermediate_size=172, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512)
    # q and o 2 * 64 * 64 = 8,192; k and v 2 * 64 * 32 = 4,096; MLP 33,024; norms 128.
    block = 8_192 + 4_096 + 33_024 + 128
    n_matmul = 2 * block + 64 + 32_768
    assert n_matmul == 123_712
    forward = 2 * 123_712 + 2 * 2 * 128 * 64
    assert forward == 280_192
    assert ms.flops_per_token(args, 128) == 3 * 280_192


def test_model_args_from_dict_ignores_unknown_fields():
    args = ModelArgs.from_dict({"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64,
                                "num_attention_heads": 2, "vocab_size": 300, "mlxspec": {"x": 1}, "torch_dtype": "f32"})
    assert args.num_key_value_heads == 2 and args.model_type == "llama"


def test_paper_presets_have_the_papers_sizes():
    slm = count_params(ms.get_preset("paper-slm").model_args())["total"]
    llm = count_params(ms.get_preset("paper-llm").model_args())["total"]
    assert 115e6 < slm < 130e6 and 740e6 < llm < 780e6
    for name in ("tiny", "small", "medium"):
        ratio = (count_params(ms.get_preset(f"{name}-llm").model_args())["total"]
                 / count_params(ms.get_preset(name).model_args())["total"])
        assert 5.0 < ratio < 7.0, (name, ratio)


def test_the_library_and_our_own_models_start_without_transformers():
    """Importing mlx-lm loads `transformers` (seconds at every command's start): the
    library and a model of ours (plain RoPE) run without it; only a checkpoint declaring
    a `rope_scaling` takes mlx-lm's constructor (tested with a llama3 one in test_interop)."""
    import subprocess
    import sys

    code = ("import sys, mlx.core as mx, mlx_specialize as ms, mlxspec.main\n"
            "model = ms.Model(ms.get_preset('tiny').model_args(vocab_size=300))\n"
            "mx.eval(model(mx.array([[1, 2, 3]])))\n"
            "print(sorted(m for m in ('transformers', 'mlx_lm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
