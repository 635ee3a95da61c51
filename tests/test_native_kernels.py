"""The C++ CPU kernels (mlx_specialize/accel/native/kernels.cpp, built here at first use) equal
MLX's own ops in value and gradient, on contiguous inputs and on views, compiled and on
parallel streams; the model and the trainer use them inside a fast-math scope and train
to the same loss curve; and where they are switched off, the fast math of fastmath.py
serves and `mlxspec doctor` says why."""

import json
import shutil
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx.utils import tree_flatten

import mlx_specialize as ms
from mlx_specialize import accel
from mlx_specialize.accel import fastmath, modules
from mlx_specialize.accel.backend import is_x86
from mlx_specialize.accel.losses import cross_entropy
from helpers import calls_in_the_training_loss, tiny_loss_curve

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not is_x86(),
    reason="the C++ kernels are for x86-64 Linux",
)


@pytest.fixture(scope="module")
def kernels():
    module = fastmath.kernels()
    assert module is not None, fastmath.kernels_status()  # on x86-64 Linux the build must work
    return module


def _grads(f, args, argnums):
    """Gradients of sum(f(*args) * fixed weights) with respect to args[argnums], compiled."""
    def loss(*a):
        out = f(*a)
        return (out * mx.random.normal(out.shape, key=mx.random.key(9))).sum()
    return mx.compile(mx.grad(loss, argnums=argnums))(*args)


def _close(got, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=rtol, atol=atol)


def test_cross_entropy_matches_mlx_in_value_and_gradient(kernels):
    logits = mx.random.normal((64, 1000), key=mx.random.key(0)) * 8  # wide logits: exps far below 1
    targets = mx.random.randint(0, 1000, (64,), key=mx.random.key(1)).astype(mx.uint16)
    want = nn.losses.cross_entropy(logits, targets)
    _close(kernels.cross_entropy(logits, targets), want, rtol=2e-6)
    _close(_grads(lambda x: kernels.cross_entropy(x, targets), (logits,), 0),
           _grads(lambda x: nn.losses.cross_entropy(x, targets), (logits,), 0), atol=2e-6)
    view = mx.stack([logits, logits], axis=-1).reshape(64, 2000)[:, ::2]  # strided: copied row-major first
    copies = kernels.row_major_copies()
    _close(kernels.cross_entropy(view, targets), want, rtol=2e-6)
    assert kernels.row_major_copies() == copies + 1
    _close(kernels.cross_entropy(logits[::-1], targets[::-1]), want[::-1], rtol=2e-6)
    assert kernels.row_major_copies() == copies + 2  # the logits view; the 1-D targets are read in place
    bad = kernels.cross_entropy(logits[:2], mx.array([3, 1000]))
    assert np.isfinite(bad[0].item()) and np.isnan(bad[1].item())  # a target outside the vocabulary


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_swiglu_matches_silu_times_up(kernels, layout):
    gate = mx.random.normal((6, 40, 96), key=mx.random.key(2)) * 6  # sigmoid's tails on both sides
    up = mx.random.normal((6, 40, 96), key=mx.random.key(3))
    if layout == "transposed":
        gate, up = gate.swapaxes(1, 2), up.swapaxes(1, 2)
    _close(kernels.swiglu(gate, up), nn.silu(gate) * up, rtol=2e-6, atol=1e-6)
    for got, want in zip(_grads(kernels.swiglu, (gate, up), (0, 1)),
                         _grads(lambda g, u: nn.silu(g) * u, (gate, up), (0, 1))):
        _close(got, want, rtol=1e-5, atol=2e-6)
    with pytest.raises(ValueError):
        kernels.swiglu(gate, up[..., :-1])


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_rms_norm_matches_mlx_fast_rms_norm(kernels, layout):
    x = mx.random.normal((3, 50, 64), key=mx.random.key(4)) * 3
    weight = mx.random.normal((64,), key=mx.random.key(5))
    if layout == "transposed":
        x = x.swapaxes(0, 1)
    _close(kernels.rms_norm(x, weight, 1e-5), mx.fast.rms_norm(x, weight, 1e-5), rtol=2e-6, atol=1e-6)
    for got, want in zip(_grads(lambda a, w: kernels.rms_norm(a, w, 1e-5), (x, weight), (0, 1)),
                         _grads(lambda a, w: mx.fast.rms_norm(a, w, 1e-5), (x, weight), (0, 1))):
        _close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        kernels.rms_norm(x, weight[:-1], 1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_layer_norm_matches_mlx_fast_layer_norm(kernels, layout):
    x = mx.random.normal((3, 50, 64), key=mx.random.key(6)) * 3 + 5  # a mean far from 0
    weight, bias = (mx.random.normal((64,), key=mx.random.key(i)) for i in (7, 8))
    if layout == "transposed":
        x = x.swapaxes(0, 1)
    _close(kernels.layer_norm(x, weight, bias, 1e-12), mx.fast.layer_norm(x, weight, bias, 1e-12),
           rtol=2e-6, atol=2e-6)
    for got, want in zip(_grads(lambda a, w, b: kernels.layer_norm(a, w, b, 1e-12), (x, weight, bias), (0, 1, 2)),
                         _grads(lambda a, w, b: mx.fast.layer_norm(a, w, b, 1e-12), (x, weight, bias), (0, 1, 2))):
        _close(got, want, rtol=1e-4, atol=1e-5)
    only_bias = _grads(lambda b: kernels.layer_norm(x, weight, b, 1e-12), (bias,), 0)
    _close(only_bias, _grads(lambda b: mx.fast.layer_norm(x, weight, b, 1e-12), (bias,), 0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        kernels.layer_norm(x, weight, bias[:-1], 1e-12)


@pytest.mark.parametrize("heads,kv_heads,length,block,causal,layout", [
    (4, 4, 200, 64, True, "contiguous"),  # ragged last block
    (4, 2, 96, 32, True, "contiguous"),  # grouped queries
    (2, 2, 50, 128, True, "contiguous"),  # one block
    (4, 2, 40, 128, False, "contiguous"),
    (4, 4, 64, 32, True, "model"),  # q, k, v as the model gives them: views of [B, L, H, Dh]
])
def test_fused_attention_matches_sdpa_in_value_and_gradient(kernels, heads, kv_heads, length, block, causal,
                                                            layout):
    keys = [mx.random.key(i) for i in range(3)]
    if layout == "model":
        q = mx.random.normal((2, length, heads, 16), key=keys[0]).transpose(0, 2, 1, 3)
        k, v = (mx.random.normal((2, length, kv_heads, 16), key=key).transpose(0, 2, 1, 3) for key in keys[1:])
    else:
        q = mx.random.normal((2, heads, length, 16), key=keys[0])
        k, v = (mx.random.normal((2, kv_heads, length, 16), key=key) for key in keys[1:])
    scale, mask = 16**-0.5, "causal" if causal else None

    def fused(q, k, v):
        return kernels.attention(q, k, v, scale, causal, block).transpose(0, 2, 1, 3)

    def sdpa(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)

    copies = kernels.row_major_copies()
    _close(fused(q, k, v), sdpa(q, k, v), rtol=1e-5, atol=2e-6)
    for got, want in zip(_grads(fused, (q, k, v), (0, 1, 2)), _grads(sdpa, (q, k, v), (0, 1, 2))):
        _close(got, want, rtol=1e-4, atol=2e-5)
    if layout == "model":
        assert kernels.row_major_copies() == copies  # read in place: the last axis has stride 1
    with pytest.raises(ValueError):
        kernels.attention(q, k[:, :, :-1], v[:, :, :-1], scale, True, block)


def test_kernels_run_on_the_stream_they_are_given_and_their_backward_follows(kernels):
    """Two streams, as the trainer splits a batch: each half's forward and backward on
    its own stream give the same gradient as one stream."""
    x = mx.random.normal((8, 32, 64), key=mx.random.key(7))
    weight, up = mx.random.normal((64,), key=mx.random.key(8)), mx.random.normal((8, 32, 64), key=mx.random.key(9))
    streams = [mx.new_stream(mx.cpu), mx.new_stream(mx.cpu)]

    def loss(x, weight, split):
        total = 0.0
        for i, stream in enumerate(streams if split else [mx.default_stream(mx.cpu)] * 2):
            with mx.stream(stream):
                rows = slice(4 * i, 4 * i + 4)
                h = kernels.swiglu(kernels.rms_norm(x[rows], weight, 1e-5), up[rows])
                total = total + kernels.cross_entropy(h.reshape(-1, 64), mx.zeros((128,), mx.int32)).sum()
        return total

    for got, want in zip(mx.compile(mx.grad(lambda x, w: loss(x, w, True), argnums=(0, 1)))(x, weight),
                         mx.grad(lambda x, w: loss(x, w, False), argnums=(0, 1))(x, weight)):
        _close(got, want, rtol=1e-5, atol=1e-6)


def test_the_model_uses_the_kernels_in_a_fast_scope_and_gets_the_same_loss_and_gradients(kernels, monkeypatch):
    args = ms.get_preset("tiny").model_args(256)
    model = ms.accel.prepare(ms.Model(args))
    x = mx.random.randint(0, 256, (2, 40), key=mx.random.key(10))
    y = mx.random.randint(0, 256, (2, 40), key=mx.random.key(11))
    given = []  # what the model was given each time it asked for the kernels
    monkeypatch.setattr(fastmath, "native", lambda t=None, real=fastmath.native: given.append(real(t)) or given[-1])

    def loss(x, y):
        with accel.scope(fast=True):
            return cross_entropy(model(x), y).mean()

    copies = kernels.row_major_copies()
    with_kernels = nn.value_and_grad(model, loss)(x, y)
    mx.eval(with_kernels)
    assert given and all(module is kernels for module in given)  # asked for, and used
    assert kernels.row_major_copies() == copies  # the model gives them row-major arrays: no copies
    monkeypatch.setenv("MLXSPEC_NATIVE_KERNELS", "0")
    assert fastmath.kernels() is None and "MLXSPEC_NATIVE_KERNELS=0" in fastmath.kernels_status()
    without = nn.value_and_grad(model, loss)(x, y)
    _close(with_kernels[0], without[0], rtol=1e-6)
    flat, other = dict(tree_flatten(with_kernels[1])), dict(tree_flatten(without[1]))
    assert flat.keys() == other.keys()
    for name in flat:
        _close(flat[name], other[name], rtol=1e-4, atol=2e-6)


def _train_losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "train"]


def test_training_with_the_kernels_follows_the_curve_without_them(kernels, tokenizer, cache_dir, tmp_path,
                                                                   monkeypatch):
    """The same curve within 2e-3 as fastmath's ops give, and the kernels did run in the
    trainer's step: its loss called all four (counted on the module) with them on and
    none off, and the training losses are not bit-identical (equal curves would also
    come from a step that never reached the kernels)."""
    curves, calls = {}, {}
    counted = calls_in_the_training_loss(monkeypatch, kernels, ("cross_entropy", "swiglu", "rms_norm", "attention"))
    monkeypatch.setenv("MLXSPEC_FAST_MATH", "1")
    for setting in ("0", "1"):
        monkeypatch.setenv("MLXSPEC_NATIVE_KERNELS", setting)
        counted.clear()
        curves[setting] = tiny_loss_curve(tmp_path / f"native{setting}", tokenizer, cache_dir)
        calls[setting] = list(counted)
    assert len(curves["0"]) == len(curves["1"]) > 10
    np.testing.assert_allclose(curves["1"], curves["0"], atol=2e-3)
    assert curves["1"][-1] < curves["1"][0] - 0.5  # it learned
    assert calls["0"] == []
    used = set(calls["1"])
    assert used == {"cross_entropy", "swiglu", "rms_norm", "attention"}, f"the step's loss called only {used}"
    assert _train_losses(tmp_path / "native1") != _train_losses(tmp_path / "native0")  # other float rounding


def test_the_kernels_reject_other_dtypes_and_shapes_and_the_model_then_uses_mlx(kernels):
    with pytest.raises(ValueError):
        kernels.swiglu(mx.ones((4,), mx.bfloat16), mx.ones((4,), mx.bfloat16))
    with pytest.raises(ValueError):
        kernels.cross_entropy(mx.ones((2, 3)), mx.zeros((3,), mx.int32))
    with accel.scope(fast=True):
        assert modules.SwiGLU()(mx.ones((4,), mx.bfloat16), mx.ones((4,), mx.bfloat16)).dtype == mx.bfloat16  # MLX's path


def test_a_failed_build_falls_back_to_fastmath_and_doctor_says_why(monkeypatch):
    from mlx_specialize.accel import native
    from mlx_specialize.accel.native import NativeUnavailable

    def broken(purpose):
        raise NativeUnavailable(f"{purpose} builds C++ code and needs a C++ compiler: apt-get install g++")

    monkeypatch.setattr(fastmath, "_native", {})  # forget this process's build
    monkeypatch.setattr(native, "load", broken)
    assert fastmath.kernels() is None
    assert fastmath.kernels_status().startswith("off (fast CPU training builds C++ code")
    gate, up = mx.random.normal((4, 8), key=mx.random.key(12)), mx.random.normal((4, 8), key=mx.random.key(13))
    with accel.scope(fast=True):
        assert fastmath.native(gate) is None
        _close(mx.compile(modules.SwiGLU())(gate, up), nn.silu(gate) * up, rtol=2e-6, atol=1e-6)  # fastmath's silu


def test_an_incomplete_install_falls_back_with_the_missing_file_named(monkeypatch, tmp_path):
    """A wheel without one of the C++ sources (as once without common.h) must not stop
    training: the kernels are off, and the reason names the file."""
    from mlx_specialize.accel import native

    for name in native.SOURCES:
        if name != "common.h":
            shutil.copy(native.SOURCE_DIR / name, tmp_path / name)
    monkeypatch.setattr(native, "SOURCE_DIR", tmp_path)
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(fastmath, "_native", {})
    assert fastmath.kernels() is None
    status = fastmath.kernels_status()
    assert status.startswith("off (the C++ sources are incomplete") and "common.h" in status


def test_any_failure_of_the_extension_falls_back(monkeypatch):
    from mlx_specialize.accel import native

    def crashing(purpose):
        raise RuntimeError("the compiler crashed")

    monkeypatch.setattr(fastmath, "_native", {})
    monkeypatch.setattr(native, "load", crashing)
    assert fastmath.kernels() is None
    assert "RuntimeError: the compiler crashed" in fastmath.kernels_status()
