"""The CPU-vectorizable exp, softmax, SiLU and attention equal MLX's, in value and
gradient, compiled or not, and training with them follows the plain loss curve."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlx_specialize as ms
from mlx_specialize import accel
from mlx_specialize.accel import fastmath
from mlx_specialize.accel.backend import keep_freed_buffers
from mlx_specialize.accel.losses import cross_entropy
from helpers import calls_in_the_training_loss, tiny_loss_curve


@pytest.fixture(autouse=True)
def _without_the_cpp_kernels(monkeypatch, on_cpu):
    """These tests are of fastmath's own ops, on the CPU device they are used on: the C++
    kernels that replace some of them where built are tested in test_native_kernels.py."""
    monkeypatch.setenv("MLXSPEC_NATIVE_KERNELS", "0")


def _compiled(f):
    """f compiled, traced inside a fast scope (as the trainer's step is)."""
    def traced(*args):
        with accel.scope(fast=True):
            return f(*args)
    return mx.compile(traced)


def _grad(f, argnums=0):
    """Compiled gradient of sum(f(...) * fixed weights), traced inside a fast scope."""
    def loss(*args):
        with accel.scope(fast=True):
            out = f(*args)
        weights = mx.random.normal(out.shape, key=mx.random.key(7))
        return (out * weights).sum()
    return mx.compile(mx.grad(loss, argnums=argnums))


@pytest.mark.parametrize("compiled", [True, False])
def test_exp_matches_mlx_on_its_domain_and_flushes_below_it(compiled):
    x = mx.concatenate([mx.linspace(-87.0, 0.0, 200_001), -mx.abs(mx.random.normal((50_000,), key=mx.random.key(0))) * 12])
    fn = mx.compile(fastmath.exp_nonpositive) if compiled else fastmath.exp_nonpositive
    got, want = np.array(fn(x)), np.array(mx.exp(x))
    assert np.max(np.abs(got - want) / want) < 4e-7
    tails = mx.array([-87.7, -88.0, -100.0, -1e4, -1e9, -1e30])
    assert np.array(fn(tails)).tolist() == [0.0] * 6  # MLX gives subnormals < 8.3e-39 there
    # exp(-87.5) = 9.98e-39 is subnormal: 0 where the package flushes subnormals (x86 Linux)
    from mlx_specialize.accel import subnormals

    want_tail = 0.0 if subnormals.STATE["flushed"] else np.exp(np.float64(-87.5))
    np.testing.assert_allclose(np.array(fn(mx.array([-87.5]))), want_tail, rtol=1e-6)
    assert np.isnan(np.array(fn(mx.array([float("nan")])))).all()
    assert np.array(fn(mx.array([0.0, -0.0]))).tolist() == [1.0, 1.0]
    np.testing.assert_allclose(np.array(mx.grad(lambda v: fn(v).sum())(x[:1000])), want[:1000], rtol=4e-7)


def test_softmax_and_silu_match_mlx_in_value_and_gradient():
    x = mx.random.normal((64, 700), key=mx.random.key(1)) * 6
    x = mx.concatenate([x, mx.array([[-40.0, -17.5, -1e-20, 0.0, 1e-20, 17.5, 40.0] * 100])])
    pairs = [(fastmath.softmax, lambda v: mx.softmax(v, axis=-1)), (fastmath.silu, nn.silu)]
    for fast, plain in pairs:
        np.testing.assert_allclose(np.array(_compiled(fast)(x)), np.array(plain(x)), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(np.array(_grad(fast)(x)), np.array(_grad(plain)(x)), rtol=1e-5, atol=1e-6)
    # SiLU of very negative inputs keeps its relative accuracy (no cancellation)
    tail = mx.array([-10.0, -30.0, -80.0])
    np.testing.assert_allclose(np.array(fastmath.silu(tail)), np.array(nn.silu(tail)), rtol=1e-6)


@pytest.mark.parametrize("heads,kv_heads,length,block,mask", [
    (4, 4, 200, 64, "causal"),  # ragged last block
    (4, 2, 96, 32, "causal"),  # grouped queries
    (2, 2, 50, 128, "causal"),  # one block
    (4, 2, 40, 128, None),
])
def test_attention_matches_sdpa_in_value_and_gradient(heads, kv_heads, length, block, mask):
    keys = [mx.random.key(i) for i in range(3)]
    q = mx.random.normal((2, heads, length, 16), key=keys[0])
    k, v = (mx.random.normal((2, kv_heads, length, 16), key=key) for key in keys[1:])
    scale = 16**-0.5

    def fast(q, k, v):
        return fastmath.attention(q, k, v, scale, mask, block=block)

    def plain(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)

    np.testing.assert_allclose(np.array(_compiled(fast)(q, k, v)), np.array(plain(q, k, v)), atol=2e-6)
    for got, want in zip(_grad(fast, (0, 1, 2))(q, k, v), _grad(plain, (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=2e-5)
    with pytest.raises(ValueError):
        fastmath.attention(q, k[:, :, :-1], v[:, :, :-1], scale, "causal")


def test_fused_cross_entropy_with_fast_exp_matches_mlx():
    logits = mx.random.normal((96, 900), key=mx.random.key(3)) * 5
    targets = mx.random.randint(0, 900, (96,), key=mx.random.key(4))

    def fast(l):
        return cross_entropy(l, targets, fused=True)

    np.testing.assert_allclose(np.array(_compiled(fast)(logits)),
                               np.array(nn.losses.cross_entropy(logits, targets)), rtol=2e-6)
    np.testing.assert_allclose(np.array(_grad(fast)(logits)),
                               np.array(_grad(lambda l: nn.losses.cross_entropy(l, targets))(logits)), atol=5e-6)


def test_the_scope_decides_and_only_float32_uses_the_fast_ops(monkeypatch):
    x = mx.zeros((2, 2))
    assert not fastmath.active(x)
    with accel.scope(fast=True):
        assert fastmath.active(x) and not fastmath.active(x.astype(mx.bfloat16))
        with accel.scope(fast=False):
            assert not fastmath.active(x)  # the innermost scope decides
        assert fastmath.active(x)
    assert not fastmath.active()
    monkeypatch.setenv("MLXSPEC_FAST_MATH", "0")
    with accel.scope() as on:
        assert not on.fast and not fastmath.active(x)
    monkeypatch.setenv("MLXSPEC_FAST_MATH", "1")
    with accel.scope() as on:
        assert on.fast and fastmath.active(x)


def _train_losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "train"]


def test_training_with_fast_math_follows_the_plain_loss_curve(tokenizer, cache_dir, tmp_path, monkeypatch):
    """The same curve within 2e-3, and the fast ops did run in the trainer's step: its
    loss called fastmath's SiLU, attention and shifted exp with fast math on and none
    of them off, and the training losses are not bit-identical (equal curves would also
    come from a step that never took the fast path)."""
    curves, calls = {}, {}
    counted = calls_in_the_training_loss(monkeypatch, fastmath, ("silu", "attention", "exp_shifted"))
    for setting in ("0", "1"):
        monkeypatch.setenv("MLXSPEC_FAST_MATH", setting)
        counted.clear()
        curves[setting] = tiny_loss_curve(tmp_path / f"fast{setting}", tokenizer, cache_dir)
        calls[setting] = list(counted)
    assert len(curves["0"]) == len(curves["1"]) > 10
    np.testing.assert_allclose(curves["1"], curves["0"], atol=2e-3)
    assert curves["0"][-1] < curves["0"][0] - 0.5  # it did learn: the comparison is not between two flat lines
    assert calls["0"] == []
    used = set(calls["1"])
    assert used == {"silu", "attention", "exp_shifted"}, f"the step's loss called only {used}"
    assert _train_losses(tmp_path / "fast1") != _train_losses(tmp_path / "fast0")  # other float rounding


def test_freed_buffers_are_kept_for_reuse_on_cpu(monkeypatch):
    before = mx.set_cache_limit(32 << 20)
    try:
        monkeypatch.setenv("MLXSPEC_BUFFER_CACHE", "0")
        assert keep_freed_buffers() is None
        monkeypatch.delenv("MLXSPEC_BUFFER_CACHE")
        assert keep_freed_buffers() == mx.get_memory_limit()
        assert mx.set_cache_limit(mx.get_memory_limit()) == mx.get_memory_limit()
        assert keep_freed_buffers() is None  # already raised: left alone, never lowered
    finally:
        mx.set_cache_limit(before)


def test_row_max_equals_mlx_max_on_every_row_length():
    for shape in [(3, 5, 128), (7, 8192), (2, 48), (4, 100), (6, 64)]:
        x = mx.random.normal(shape, key=mx.random.key(sum(shape))) * 30
        x = x.at[0, ..., -1].add(1000.0)  # a peak in the last element: folding must not lose it
        assert mx.array_equal(fastmath.row_max(x), x.max(axis=-1, keepdims=True)), shape
        assert mx.array_equal(_compiled(fastmath.row_max)(x), x.max(axis=-1, keepdims=True)), shape


def test_custom_functions_are_built_per_stream_and_reused():
    built = []

    @fastmath.per_stream
    def double(stream):
        built.append(repr(stream))

        @mx.custom_function
        def f(x):
            return 2 * x

        @f.vjp
        def f_vjp(primals, cotangent, output):
            with mx.stream(stream):
                built.append(("vjp", repr(mx.default_stream(mx.default_device()))))
                return 2 * cotangent
        return f

    other = mx.new_stream(mx.cpu)
    x = mx.ones((3,))
    for _ in range(2):
        double(x)
        with mx.stream(other):
            grad = mx.grad(lambda x: double(x).sum())(x)  # traced on `other`, differentiated there
    assert built[0] == repr(mx.default_stream(mx.cpu)) and built[1] == repr(other)
    assert built[2:] == [("vjp", repr(other))] * 2  # built once per stream, then reused
    assert mx.array_equal(grad, 2 * mx.ones((3,)))


def test_clipping_and_update_on_streams_equal_mlx_clip_grad_norm_and_adamw():
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten, tree_map
    from mlx_specialize.train.parallel import clip_and_update

    results = []
    for streams in ([None], [mx.new_stream(mx.cpu), mx.new_stream(mx.cpu)]):
        mx.random.seed(0)
        model = ms.Model(ms.get_preset("tiny").model_args(512))
        opt = optim.AdamW(1e-2, weight_decay=0.1, bias_correction=True)
        # gradients as MLX gives them for x @ W.T: transposed views for the matrices
        grads = tree_map(lambda p: mx.contiguous((p * 3).T).T if p.ndim == 2 else p * 3, model.trainable_parameters())
        if streams[0] is None:
            grads, norm = optim.clip_grad_norm(grads, 1.0)
            opt.update(model, grads)
        else:
            norm = clip_and_update(opt, model, grads, 1.0, streams)
        mx.eval(model.parameters(), opt.state)
        results.append((norm.item(), dict(tree_flatten(model.parameters())), dict(tree_flatten(opt.state))))
    (norm_a, params_a, state_a), (norm_b, params_b, state_b) = results
    assert norm_a == pytest.approx(norm_b, rel=1e-6) and norm_a > 1.0  # clipping was active
    assert params_a.keys() == params_b.keys() and state_a.keys() == state_b.keys()
    for k in params_a:
        np.testing.assert_allclose(np.array(params_a[k]), np.array(params_b[k]), rtol=1e-6, atol=1e-7, err_msg=k)
    for k in state_a:
        np.testing.assert_allclose(np.array(state_a[k]), np.array(state_b[k]), rtol=1e-6, atol=1e-7, err_msg=k)
