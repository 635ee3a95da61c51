"""bf16 mixed precision: the C++ bf16 matmul (built here, at first use) computes the
products of bf16-rounded operands in value and gradient, and training with
precision="bf16" follows the float32 loss curve within bf16 rounding.

Without MKL's bf16 GEMM (the CI's OpenBLAS) the extension multiplies the same bf16 values
with float32 BLAS (`MLXSPEC_BF16_EMULATE=1`): the same code path but for the one GEMM call.
"""

import json
import sys

import mlx.core as mx
import numpy as np
import pytest

from mlx_specialize import accel
from mlx_specialize.accel import bf16
from mlx_specialize.errors import SpecializeError
from helpers import tiny_loss_curve

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the C++ bf16 matmul is for Linux CPUs")


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """The extension, built into a temporary cache (then kept loaded in this process)."""
    from mlx_specialize.accel.native import load_bf16

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLXSPEC_CACHE", str(tmp_path_factory.mktemp("native-cache")))
        module = load_bf16()
    if not module.has_bf16_gemm():
        module.set_emulation(True)
    return module


def _rounded(x):
    """x rounded to bfloat16 by MLX, back in float32: the values the products must use."""
    return x.astype(mx.bfloat16).astype(mx.float32)


def test_to_bf16_rounds_like_mlx_and_keeps_specials(native):
    x = mx.concatenate([mx.random.normal((10_000,), key=mx.random.key(0)) * 1e3,
                        mx.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.4e38, float("inf"), -float("inf")])])
    got = native.to_bf16(x)
    assert got.dtype == mx.bfloat16
    assert mx.array_equal(got, x.astype(mx.bfloat16))
    assert mx.isnan(native.to_bf16(mx.array([float("nan")]))).item()
    strided = mx.random.normal((64, 40), key=mx.random.key(1))[:, ::3].T  # neither row- nor column-major
    assert mx.array_equal(native.to_bf16(strided), strided.astype(mx.bfloat16))


@pytest.mark.parametrize("layout", ["row-major", "transposed", "strided", "batched"])
def test_the_product_is_that_of_the_rounded_operands(native, layout):
    """The product reads bf16 operands of any layout: views of converted arrays."""
    a32 = mx.random.normal((96, 80), key=mx.random.key(2))
    b32 = mx.random.normal((80, 144), key=mx.random.key(3))
    view = {
        "row-major": (lambda a: a[:, :40], lambda b: b[:40, :72]),  # row slices: row-major, wider rows
        "transposed": (lambda a: a.T[:96, :40], lambda b: b.T[:40, :72]),  # column-major views
        "strided": (lambda a: a[:, ::2], lambda b: b[::2, ::2]),  # neither: copied inside
    }
    if layout == "batched":  # [B, H, rows, Dh] @ [B, H, Dh, keys] with a slice of the keys, as attention reads them
        a32 = mx.random.normal((2, 3, 96, 40), key=mx.random.key(2))
        b32 = mx.random.normal((2, 3, 90, 40), key=mx.random.key(3))
        pick_a, pick_b = (lambda a: a), (lambda b: b[:, :, :72].swapaxes(-1, -2))
    else:
        pick_a, pick_b = view[layout]
        if layout == "transposed":
            a32, b32 = mx.contiguous(a32.T), mx.contiguous(b32.T)
    got = native.bf16_matmul(pick_a(native.to_bf16(a32)), pick_b(native.to_bf16(b32)))
    want = pick_a(_rounded(a32)) @ pick_b(_rounded(b32))
    assert got.dtype == mx.float32 and got.shape == want.shape and got.shape[-2:] == (96, 72)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-4)
    assert not np.allclose(np.array(got), np.array(pick_a(a32) @ pick_b(b32)), rtol=1e-5, atol=1e-4)  # it did round


def test_gradients_are_float32_products_of_rounded_values(native):
    x = mx.random.normal((4, 16, 32), key=mx.random.key(4))
    w = mx.random.normal((24, 32), key=mx.random.key(5))
    weights = mx.random.normal((4, 16, 24), key=mx.random.key(6))

    def loss(x, w):
        with accel.scope("bf16"):
            return (bf16.matmul_t(x, w) * weights).sum()

    for fn in (mx.grad(loss, argnums=(0, 1)), mx.compile(mx.grad(loss, argnums=(0, 1)))):
        dx, dw = fn(x, w)
        assert dx.dtype == dw.dtype == mx.float32  # not rounded to bf16 on the way back
        g = _rounded(weights).reshape(-1, 24)
        np.testing.assert_allclose(np.array(dx), np.array((g @ _rounded(w)).reshape(x.shape)), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(np.array(dw), np.array(g.T @ _rounded(x).reshape(-1, 32)), rtol=1e-5, atol=1e-4)


def test_precision_is_checked_with_one_clear_line(native, monkeypatch):
    with pytest.raises(SpecializeError, match="unknown precision 'fp8'"):
        bf16.check("fp8")
    bf16.check("float32")
    if not native.has_bf16_gemm():
        monkeypatch.delenv("MLXSPEC_BF16_EMULATE", raising=False)
        with pytest.raises(SpecializeError, match=r"needs Intel MKL.*mlx-specialize\[bf16\]"):
            bf16.check("bf16")
    monkeypatch.setenv("MLXSPEC_BF16_EMULATE", "1")
    bf16.check("bf16")
    assert "emulated" in native.gemm()


def test_bf16_training_follows_the_float32_loss_curve(native, tokenizer, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLXSPEC_BF16_EMULATE", "1")
    curves = {}
    for precision in ("float32", "bf16"):
        out = tmp_path / precision
        curves[precision] = tiny_loss_curve(out, tokenizer, cache_dir, precision=precision)
        assert json.loads((out / "run.json").read_text())["train"]["precision"] == precision
    assert len(curves["float32"]) == len(curves["bf16"]) > 10
    np.testing.assert_allclose(curves["bf16"], curves["float32"], atol=0.01)
    assert curves["bf16"] != curves["float32"]  # the products were rounded
    assert curves["bf16"][-1] < curves["bf16"][0] - 0.5  # and it learned
