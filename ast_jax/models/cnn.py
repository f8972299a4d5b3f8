"""The small CIFAR CNN of the Nasty Teacher code (``model/net.py``, class ``Net``)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ast_jax.models.layers import Ops, max_pool_2x2


class CNN(nn.Module):
    """Nasty Teacher ``Net`` (``num_channels=32``, ``dropout_rate=0.0`` as in its params.json).

    3 x [conv3x3 pad 1 (bias) -> BN -> max-pool 2 -> ReLU] with 32/64/128 channels, flatten in
    PyTorch's (C, H, W) order (2048 features for 32x32 input), ``fc1`` (-> 128) -> ``fcbn1``
    (BatchNorm1d) -> ReLU -> ``fc2``.  The reference's ``view(-1, 2048)`` only works at 32x32;
    here ``fc1`` takes the flattened final map of whatever size the input gives (so the number
    of ``fc1`` weights depends on the input size used at ``init``; 2048 inputs at 32x32).
    """

    num_classes: int
    num_channels: int = 32
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        ops = Ops(self.dtype, train, self.axis_name, mask)
        for i in range(3):
            x = ops.conv(self.num_channels * 2**i, 3, padding=1, bias=True)(x, f"conv{i + 1}")
            x = ops.bn()(x, f"bn{i + 1}")
            x = nn.relu(max_pool_2x2(x))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        x = nn.relu(ops.bn()(ops.dense(4 * self.num_channels)(x, "fc1"), "fcbn1"))
        return ops.dense(self.num_classes)(x, "fc2").astype(jnp.float32)
