"""Our checkpoints are mlx-lm models: `mlx_lm.load` reads them and computes the same logits."""

import mlx.core as mx
import numpy as np

import mlx_specialize as ms


def test_mlx_lm_loads_our_checkpoint_with_equal_logits(tiny_model_dir):
    from mlx_lm import load

    ours, tokenizer, _ = ms.load_model(tiny_model_dir)
    theirs, their_tokenizer = load(str(tiny_model_dir))
    text = "The os module provides a portable way of using operating system functionality — «ünïcode»."
    ids = [tokenizer.bos_id, *tokenizer.encode(text)]
    assert their_tokenizer.encode(text) == ids  # mlx-lm adds the same BOS we train with
    x = mx.array([ids])
    np.testing.assert_allclose(np.array(theirs(x)), np.array(ours(x)), rtol=1e-4, atol=1e-4)


def test_mlx_lm_generates_what_we_generate(tiny_model_dir):
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    ours, tokenizer, _ = ms.load_model(tiny_model_dir)
    theirs, their_tokenizer = load(str(tiny_model_dir))
    prompt = "import os\n"
    expected = ms.generate_text(ours, tokenizer, prompt, max_tokens=12, temperature=0)
    got = generate(theirs, their_tokenizer, prompt, max_tokens=12, sampler=make_sampler(temp=0.0))
    assert len(expected) > 0 and got == expected
