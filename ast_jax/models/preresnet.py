"""Pre-activation CIFAR ResNet (He et al. 2016) as in the Nasty Teacher code
(``model/preresnet.py``, Wei Yang's port of fb.resnet.torch)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ast_jax.models.layers import Ops, global_avg_pool, kaiming_fan_out_normal


def _ops(dtype, train, axis_name, mask):
    ops = Ops(dtype, train, axis_name, mask)
    # The reference re-initialises every conv with normal(0, sqrt(2 / (k*k*out)));
    # its convs are bias-free.
    return ops, functools.partial(ops.conv, kernel_init=kaiming_fan_out_normal)


class PreActBlock(nn.Module):
    """Reference ``BasicBlock``: BN -> ReLU -> conv3x3 (stride) -> BN -> ReLU -> conv3x3, plus the
    identity, or ``downsample.0`` (1x1 strided conv, no BN, no bias) of the raw input when the
    shape changes."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        ops, conv = _ops(self.dtype, train, self.axis_name, mask)
        out = nn.relu(ops.bn()(x, "bn1"))
        out = conv(self.planes, 3, self.stride, 1)(out, "conv1")
        out = nn.relu(ops.bn()(out, "bn2"))
        out = conv(self.planes, 3, 1, 1)(out, "conv2")
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = conv(self.planes, 1, self.stride)(x, "downsample_0")
        return out + x


class PreResNet(nn.Module):
    """Reference ``PreResNet(depth)`` for ``depth = 6n + 2 < 44`` (basic blocks; the reference
    switches to bottlenecks from depth 44, not needed here): stem ``conv1`` (3x3, 16, no BN), three
    stages ``layer1..3`` of n pre-act blocks with 16/32/64 channels (stride 1/2/2), final ``bn`` ->
    ReLU -> global average pool (the reference's ``AvgPool2d(8)`` on the 8x8 map of a 32x32
    input) -> ``fc``."""

    depth: int
    num_classes: int
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        if (self.depth - 2) % 6 or not 8 <= self.depth < 44:
            raise ValueError(f"PreResNet depth must be 6n+2 in [8, 44), got {self.depth}")
        ops, conv = _ops(self.dtype, train, self.axis_name, mask)
        x = conv(16, 3, 1, 1)(x, "conv1")
        for stage, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), 1):
            for i in range((self.depth - 2) // 6):
                x = PreActBlock(planes, stride if i == 0 else 1, self.dtype, self.axis_name,
                                name=f"layer{stage}_{i}")(x, train, mask)
        x = global_avg_pool(nn.relu(ops.bn()(x, "bn")))
        return ops.dense(self.num_classes)(x, "fc").astype(jnp.float32)
