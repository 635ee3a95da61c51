"""The fused cross-entropy equals MLX's own, in value and gradient."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_specialize.accel.losses import cross_entropy


def test_fused_cross_entropy_matches_mlx_in_value_and_gradient():
    logits = mx.random.normal((3, 5, 700), key=mx.random.key(0)) * 4
    targets = mx.random.randint(0, 700, (3, 5), key=mx.random.key(1))
    weights = mx.random.uniform(shape=(3, 5), key=mx.random.key(2))

    def loss(l, fused):
        return (cross_entropy(l, targets, fused=fused) * weights).sum()

    plain_value, plain_grad = mx.value_and_grad(lambda l: loss(l, False))(logits)
    fused_value, fused_grad = mx.value_and_grad(lambda l: loss(l, True))(logits)
    np.testing.assert_allclose(fused_value.item(), plain_value.item(), rtol=1e-6)
    np.testing.assert_allclose(np.array(fused_grad), np.array(plain_grad), atol=1e-6)
    per_position = cross_entropy(logits, targets, fused=True)
    np.testing.assert_allclose(np.array(per_position), np.array(nn.losses.cross_entropy(logits, targets)), rtol=1e-5)
    compiled = mx.compile(mx.grad(lambda l: loss(l, True)))
    np.testing.assert_allclose(np.array(compiled(logits)), np.array(plain_grad), atol=1e-6)
