"""Training: loss falls on real text, exact resume after SIGKILL, early stopping."""

import json
import os
import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest

import mlx_specialize as ms
from mlx_specialize.errors import SpecializeError
from mlx_specialize.train.checkpoint import checkpoint_dirs
from helpers import DOMAIN, GENERIC


def test_loss_falls_on_real_text(tiny_model_dir, tokenizer, cache_dir):
    metrics = [json.loads(l) for l in (tiny_model_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m["loss"] for m in metrics if m["event"] == "train"]
    valid = [m["valid_loss"] for m in metrics if m["event"] == "valid"]
    assert train[-1] < train[0] - 0.5
    assert valid[-1] < np.log(tokenizer.vocab_size) - 0.5  # well below a uniform guess
    summary = json.loads((tiny_model_dir / "summary.json").read_text())
    assert summary["tokens"] == summary["steps"] * 8 * 128
    assert summary["flops"] == pytest.approx(summary["tokens"] * ms.flops_per_token(
        ms.load_model(tiny_model_dir)[0].args, 128))
    assert summary["seconds"] > 0 and summary["peak_memory_bytes"] > 0


def test_finetuning_lowers_domain_perplexity(tiny_model_dir, cache_dir, tmp_path):
    before = ms.evaluate_model(tiny_model_dir, DOMAIN, "test", cache_dir, max_tokens=4096)
    result = ms.finetune(tiny_model_dir, DOMAIN, tmp_path / "ft", max_tokens=30 * 8 * 128, cache_dir=cache_dir,
                         batch_size=8, eval_every=10, eval_tokens=4096, lr=3e-3)
    after = ms.evaluate_model(result.model_dir, DOMAIN, "test", cache_dir, max_tokens=4096)
    assert after.ppl < before.ppl
    assert after.bits_per_byte < before.bits_per_byte
    assert after.tokens == before.tokens == 4096


def _pretrain_cmd(out, tok_dir, cache_dir, *extra):
    return [sys.executable, "-m", "cli.main", "pretrain", str(out), "--generic", GENERIC, "--preset", "tiny",
            "--tokenizer", str(tok_dir), "--tokens", str(40 * 8 * 128), "--checkpoint-every", "4",
            "--eval-every", "8", "--cache-dir", str(cache_dir), "--quiet", *extra]


def test_kill_and_resume_ends_with_the_same_weights(tokenizer, cache_dir, tmp_path):
    tok_dir = tmp_path / "tok"
    tokenizer.save(tok_dir)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run(_pretrain_cmd(tmp_path / "a", tok_dir, cache_dir), check=True, env=env)

    proc = subprocess.Popen(_pretrain_cmd(tmp_path / "b", tok_dir, cache_dir), env=env)
    deadline = time.time() + 120
    while not checkpoint_dirs(tmp_path / "b") and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((checkpoint_dirs(tmp_path / "b")[-1] / "state.json").read_text())["step"]
    assert 0 < killed_at < 40
    subprocess.run(_pretrain_cmd(tmp_path / "b", tok_dir, cache_dir, "--resume"), check=True, env=env)

    final_a, final_b = checkpoint_dirs(tmp_path / "a")[-1], checkpoint_dirs(tmp_path / "b")[-1]
    assert final_a.name == final_b.name == "step_00000040"
    for name in ("model.safetensors", "optimizer.safetensors"):
        wa, wb = mx.load(str(final_a / name)), mx.load(str(final_b / name))
        assert wa.keys() == wb.keys()
        for k in wa:
            np.testing.assert_array_equal(np.array(wa[k]), np.array(wb[k]), err_msg=k)
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert sa["tokens"] == sb["tokens"] and sa["best_valid_loss"] == sb["best_valid_loss"]
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # nothing logged twice after the resume
    assert len(checkpoint_dirs(tmp_path / "b")) == 2  # only the last K are kept


def test_early_stopping_and_refusing_to_overwrite(tiny_model_dir, cache_dir, tmp_path):
    # A learning rate far too high makes validation worse at once: stop after 2 evals.
    out = tmp_path / "ft"
    result = ms.finetune(tiny_model_dir, DOMAIN, out, max_tokens=200 * 8 * 128, cache_dir=cache_dir,
                         batch_size=8, eval_every=2, eval_tokens=2048, lr=0.5, warmup=0, patience=2)
    assert result.summary["stopped_early"] and result.summary["steps"] < 200
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(SpecializeError, match="already holds a run"):
        ms.finetune(tiny_model_dir, DOMAIN, out, max_tokens=8 * 128, cache_dir=cache_dir, batch_size=8)
    assert (out / "model.safetensors").read_bytes() == before


def test_resuming_with_another_tokenizer_is_refused(tiny_model_dir, cache_dir, tmp_path):
    other = ms.train_tokenizer(ms.load_corpus("go-code").documents("valid"), 400)
    with pytest.raises(SpecializeError, match="another tokenizer"):
        ms.pretrain(GENERIC, ms.get_preset("tiny"), tiny_model_dir, tokens=8 * 128 * 50, tokenizer=other,
                    cache_dir=cache_dir, resume=True)


def test_gradient_accumulation_matches_one_big_batch(tokenizer, tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, tokenizer.vocab_size, 50_000).astype(np.uint16)  # no BOS: equal token counts
    split = ms.TokenizedSplit(tokens, 0, 0, "random")
    weights = {}
    for accum, batch in ((1, 8), (2, 4)):
        mx.random.seed(0)
        model = ms.Model(ms.get_preset("tiny").model_args(tokenizer.vocab_size))
        cfg = ms.TrainConfig(steps=3, batch_size=batch, grad_accum=accum, context=64, warmup=0, lr=1e-3)
        ms.Trainer(model, tokenizer, split, None, cfg, tmp_path / f"a{accum}").run()
        weights[accum] = dict(mx.load(str(tmp_path / f"a{accum}" / "model.safetensors")))
    for k in weights[1]:
        np.testing.assert_allclose(np.array(weights[1][k]), np.array(weights[2][k]), rtol=1e-4, atol=1e-5, err_msg=k)


def test_parallel_streams_compute_the_same_training_step(tokenizer, tmp_path):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, tokenizer.vocab_size, 50_000).astype(np.uint16)  # BOS included: masks differ per row
    split = ms.TokenizedSplit(tokens, 0, 0, "random")
    weights = {}
    for streams in (1, 2, 3):
        mx.random.seed(0)
        model = ms.Model(ms.get_preset("tiny").model_args(tokenizer.vocab_size))
        cfg = ms.TrainConfig(steps=3, batch_size=6, context=64, warmup=0, lr=1e-3, streams=streams)
        summary = ms.Trainer(model, tokenizer, split, None, cfg, tmp_path / f"s{streams}").run()
        weights[streams] = dict(mx.load(str(tmp_path / f"s{streams}" / "model.safetensors")))
        assert summary["steps"] == 3
    for streams in (2, 3):
        for k in weights[1]:
            np.testing.assert_allclose(np.array(weights[1][k]), np.array(weights[streams][k]),
                                       rtol=1e-4, atol=1e-5, err_msg=f"{streams} streams: {k}")
