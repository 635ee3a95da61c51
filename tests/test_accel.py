"""accel.prepare: the platform's layers swapped into every model (dense, pn, soup) from
outside, with the model's parameters and values unchanged.

The models are plain MLX (models/ imports nothing of accel: tests/test_layers.py); what
makes them fast on an x86 CPU is this swap plus `accel.scope`, so a model that escaped
the swap would silently train on the slow paths, as pn and soup once did (their MLP and
norms bypassed the dispatchers the dense model called).
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_specialize as ms
from mlx_specialize import layers
from mlx_specialize import accel
from mlx_specialize.accel import bf16, fastmath, modules
from mlx_specialize.models.projected import ProjectedModel, ProjectionArgs

NAMES = ("dense", "pn", "soup")
COND = mx.array([0.5, 0.25, 0.25, 0.0])  # a domain's cluster weights, k = 4


def make(name: str):
    args = ms.get_preset("tiny").model_args(256)
    mx.random.seed(3)
    if name == "dense":
        return ms.Model(args)
    return ProjectedModel(args, ProjectionArgs(name, experts=4, expert_dim=4, basis=3))


def logits(model, x):
    return model(x) if isinstance(model, ms.Model) else model(x, cond=COND)


def loss(model, x, y):
    return nn.losses.cross_entropy(logits(model, x), y).mean()


def classes(model) -> list[type]:
    return [type(m) for _, m in model.named_modules()]


def batch():
    key = mx.random.key(5)
    tokens = mx.random.randint(0, 256, (2, 33), key=key)
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("name", NAMES)
def test_prepare_swaps_every_platform_layer_and_keeps_the_parameters(name, monkeypatch):
    monkeypatch.setenv("MLXSPEC_FAST_MATH", "1")
    model = make(name)
    plain = classes(model)
    params = dict(tree_flatten(model.parameters()))
    assert accel.prepare(model) is model
    swapped = classes(model)
    assert not set(modules.SWAPS) & set(swapped), "a plain layer was left unswapped"
    expected = {modules.Linear, modules.Embedding, modules.RMSNorm, modules.SwiGLU, modules.ScaledDotProductAttention}
    if name != "dense":
        expected.add(modules.MatmulT)  # the generated MLP weights' products
    assert expected <= set(swapped)
    after = dict(tree_flatten(model.parameters()))
    assert after.keys() == params.keys() and all(after[k] is params[k] for k in params)  # the very same arrays
    assert classes(accel.unprepare(model)) == plain


def test_prepare_changes_nothing_where_nothing_is_faster(monkeypatch):
    """As on Apple silicon or a GPU in float32: no fast math wanted, no bf16."""
    monkeypatch.setenv("MLXSPEC_FAST_MATH", "0")
    model = make("pn")
    plain = classes(model)
    assert classes(accel.prepare(model, "float32")) == plain
    assert modules.Linear in classes(accel.prepare(model, "bf16"))  # bf16 products are wanted on any device


@pytest.mark.parametrize("name", NAMES)
def test_every_model_uses_the_kernels_in_a_scope_and_is_plain_outside_it(name, monkeypatch):
    kernels = fastmath.kernels()
    if kernels is None:
        pytest.skip(f"no C++ kernels here: {fastmath.kernels_status()}")
    monkeypatch.setenv("MLXSPEC_FAST_MATH", "1")
    model, (x, y) = make(name), batch()
    value_and_grad = nn.value_and_grad(model, loss)
    plain_loss, plain_grads = value_and_grad(model, x, y)
    mx.eval(plain_loss, plain_grads)

    calls = []
    for fn in ("rms_norm", "swiglu", "attention"):
        real = getattr(kernels, fn)
        monkeypatch.setattr(kernels, fn, lambda *a, _f=fn, _real=real: calls.append(_f) or _real(*a))
    accel.prepare(model)
    outside_loss, outside_grads = value_and_grad(model, x, y)  # no scope: MLX's own ops
    assert calls == [] and outside_loss.item() == plain_loss.item()
    for (k, g), (_, h) in zip(tree_flatten(plain_grads), tree_flatten(outside_grads)):
        assert mx.array_equal(g, h), k

    def scoped(model, x, y):
        with accel.scope(fast=True):
            return loss(model, x, y)

    fast_loss, fast_grads = nn.value_and_grad(model, scoped)(model, x, y)
    assert set(calls) == {"rms_norm", "swiglu", "attention"}, f"only {set(calls)} reached the kernels"
    np.testing.assert_allclose(fast_loss.item(), plain_loss.item(), rtol=1e-5)
    for (k, g), (_, h) in zip(tree_flatten(plain_grads), tree_flatten(fast_grads)):
        np.testing.assert_allclose(np.array(h), np.array(g), rtol=1e-3, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("name", NAMES)
def test_every_linear_product_is_in_bf16_inside_a_bf16_scope(name, monkeypatch):
    """Counted through a stand-in for the bf16 product (MLX's own rounding; the C++ one
    is tested in test_bf16.py): attention's four projections and the MLP's three
    products per layer, and the tied output layer."""
    products = []

    def matmul_t(x, w):
        products.append(w.shape)
        return (x.astype(mx.bfloat16) @ w.astype(mx.bfloat16).T).astype(mx.float32)

    monkeypatch.setattr(bf16, "matmul_t", matmul_t)
    model, (x, _) = make(name), batch()
    reference = logits(model, x)
    accel.prepare(model, "bf16")
    with accel.scope("bf16", fast=False):
        out = logits(model, x)
    layers = model.args.num_hidden_layers
    soup_alpha = 2 if name == "soup" else 0  # its coefficient MLP's two linear layers
    assert len(products) == 7 * layers + 1 + soup_alpha
    assert out.dtype == mx.float32 and not mx.array_equal(out, reference)  # rounded operands
    np.testing.assert_allclose(np.array(out), np.array(reference), atol=0.1)


@pytest.mark.parametrize("kernels", ["1", "0"])
def test_the_fast_gelu_and_padded_attention_equal_mlx_in_value_and_gradient(kernels, monkeypatch, on_cpu):
    """BERT's layers (data/minilm.py): the exact GELU (the C++ kernel, or fastmath's erf
    from vectorizable ops) and attention over padded keys (an additive mask, the fast
    softmax) give MLX's values and gradients."""
    monkeypatch.setenv("MLXSPEC_FAST_MATH", "1")
    monkeypatch.setenv("MLXSPEC_NATIVE_KERNELS", kernels)
    if kernels == "1" and fastmath.kernels() is None:
        pytest.skip(f"no C++ kernels here: {fastmath.kernels_status()}")
    x = mx.random.normal((4, 33, 96), key=mx.random.key(1)) * 3
    gelu = nn.GELU()
    plain = (gelu(x), mx.grad(lambda a: (gelu(a) * a).sum())(x))
    accel.prepare(gelu)
    assert type(gelu) is modules.GELU

    def fast_gelu(a):
        with accel.scope(fast=True):
            return gelu(a)

    fast = (mx.compile(fast_gelu)(x), mx.compile(mx.grad(lambda a: (fast_gelu(a) * a).sum()))(x))
    np.testing.assert_allclose(np.array(fast[0]), np.array(plain[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(fast[1]), np.array(plain[1]), rtol=1e-5, atol=1e-5)

    q, k, v = (mx.random.normal((2, 4, 16, 8), key=mx.random.key(i)) for i in (2, 3, 4))
    valid = mx.array([[1.0] * 16, [1.0] * 11 + [0.0] * 5])  # the second row's last 5 keys are padding
    mask = ((1.0 - valid) * -1e9)[:, None, None, :]
    attend = accel.prepare(layers.ScaledDotProductAttention(8**-0.5))

    def loss(q, k, v, fast):
        with accel.scope(fast=fast):
            out = attend(q, k, v, mask)
        return (out * out).sum(), out

    (_, want), want_grads = mx.value_and_grad(lambda *a: loss(*a, False), argnums=(0, 1, 2))(q, k, v)
    (_, got), got_grads = mx.value_and_grad(lambda *a: loss(*a, True), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=1e-4, atol=1e-5)


def test_the_nearest_centre_equals_mlx_argmin_ties_included(monkeypatch, on_cpu):
    """accel.nearest (k-means' assignment; the C++ kernel where built): the index and value
    of min_j ||c_j||^2 - 2 x.c_j of each row, the first index on ties, as MLX's argmin."""
    x = mx.random.normal((300, 16), key=mx.random.key(7))
    centres = mx.concatenate([x[:40], x[:8]])  # centres 40..47 repeat 0..7: exact ties
    products, norms = x @ centres.T, (centres * centres).sum(axis=1)
    scores = norms[None, :] - 2 * products
    want_index = mx.argmin(scores, axis=1)
    for setting in ("1", "0"):
        monkeypatch.setenv("MLXSPEC_NATIVE_KERNELS", setting)
        index, value = accel.nearest(products, norms)
        assert index.dtype == mx.int32 and mx.array_equal(index, want_index.astype(mx.int32)), setting
        assert mx.array_equal(value, scores.min(axis=1)), setting
    assert int(want_index[3]) == 3  # row 3 is centre 3 and centre 43: the first wins


def test_cluster_sums_equal_a_scatter_add(monkeypatch, on_cpu):
    """accel.cluster_sums (k-means' update; the C++ kernel where built) adds up each
    cluster's rows and counts them as MLX's scatter-add does, empty clusters zero."""
    x = mx.random.normal((500, 24), key=mx.random.key(8))
    labels = mx.random.randint(0, 9, (500,), key=mx.random.key(9)).astype(mx.int32)  # cluster 9 stays empty
    want = mx.zeros((10, 24)).at[labels].add(x), mx.zeros((10,)).at[labels].add(1.0)
    for setting in ("1", "0"):
        monkeypatch.setenv("MLXSPEC_NATIVE_KERNELS", setting)
        sums, counts = accel.cluster_sums(x, labels, 10)
        np.testing.assert_allclose(np.array(sums), np.array(want[0]), rtol=1e-5, atol=1e-5, err_msg=setting)
        assert mx.array_equal(counts, want[1]) and counts[9].item() == 0, setting


_SUBNORMAL_PROBE = """
import threading
import mlx_specialize
import mlx.core as mx
import numpy as np
tiny, scale = 1e-30, 1e-10  # their product, 1e-40, is subnormal in float32
stream = mx.new_stream(mx.cpu)  # a worker thread MLX starts after the import
# the CPU's default stream and a new one (a Mac's GPU flushes subnormals in any case)
got = [mx.multiply(mx.array(tiny), mx.array(scale), stream=s).item() for s in (mx.cpu, stream)]
got.append(float(np.float32(tiny) * np.float32(scale)))
out = []
worker = threading.Thread(target=lambda: out.append(float(np.float32(tiny) * np.float32(scale))))
worker.start(); worker.join()
print(got + out)
"""


@pytest.mark.parametrize("setting", [None, "0"])
def test_subnormals_are_flushed_to_zero_in_every_thread_on_x86_linux(setting):
    """A trained model's activations and gradients hold subnormals, which x86 computes with
    some hundred times slower: a LoRA step of the study's LLM twin took 5x as long after
    1,400 steps (BENCHMARKS.md). Importing the package sets FTZ / DAZ for the threads MLX
    and the BLAS start; MLXSPEC_FLUSH_SUBNORMALS=0 keeps subnormals."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLXSPEC_FLUSH_SUBNORMALS"}
    if setting is not None:
        env["MLXSPEC_FLUSH_SUBNORMALS"] = setting
    out = subprocess.run([sys.executable, "-c", _SUBNORMAL_PROBE], capture_output=True, text=True, env=env, check=True)
    values = [float(v) for v in out.stdout.strip().strip("[]").split(",")]
    flushed = setting is None and sys.platform == "linux" and accel.is_x86()
    assert values == ([0.0] * 4 if flushed else [pytest.approx(1e-40, rel=1e-3)] * 4), values
