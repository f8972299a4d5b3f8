"""CIFAR ResNet of the reference code (``resnet.py``): 3x3 stride-1 stem, no max-pool."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ast_jax.models.layers import Ops, global_avg_pool, sequential


def _shortcut(ops: Ops, x, features: int, stride: int):
    """Identity, or ``shortcut.0`` (1x1 strided conv) + ``shortcut.1`` (BN) if the shape changes."""
    if stride == 1 and x.shape[-1] == features:
        return x
    return sequential(x, "shortcut", [ops.conv(features, 1, stride), ops.bn()])


class BasicBlock(nn.Module):
    """conv3x3 (stride) -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU."""

    expansion = 1
    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        ops = Ops(self.dtype, train, self.axis_name, mask)
        out = nn.relu(ops.bn()(ops.conv(self.planes, 3, self.stride, 1)(x, "conv1"), "bn1"))
        out = ops.bn()(ops.conv(self.planes, 3, 1, 1)(out, "conv2"), "bn2")
        return nn.relu(out + _shortcut(ops, x, self.planes, self.stride))


class Bottleneck(nn.Module):
    """conv1x1 -> BN -> ReLU -> conv3x3 (stride) -> BN -> ReLU -> conv1x1 (x4) -> BN,
    + shortcut, ReLU."""

    expansion = 4
    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        ops = Ops(self.dtype, train, self.axis_name, mask)
        out = nn.relu(ops.bn()(ops.conv(self.planes, 1)(x, "conv1"), "bn1"))
        out = nn.relu(ops.bn()(ops.conv(self.planes, 3, self.stride, 1)(out, "conv2"), "bn2"))
        out = ops.bn()(ops.conv(4 * self.planes, 1)(out, "conv3"), "bn3")
        return nn.relu(out + _shortcut(ops, x, 4 * self.planes, self.stride))


class ResNet(nn.Module):
    """Reference ``ResNet(block, num_blocks)``: ``conv1`` (3x3 stride 1, 64) -> ``bn1`` -> ReLU (no
    max-pool), ``layer1..4`` with 64/128/256/512 planes (stride 1/2/2/2), global average pool
    (``adaptive_avg_pool2d(out, 1)``) -> ``linear``.  ResNet18/34: BasicBlock [2,2,2,2]/[3,4,6,3];
    ResNet50: Bottleneck [3,4,6,3].  With ``stages=True`` it returns ``(logits, (z_1, .., z_4))``,
    the stages' outputs (the self-distilling clone's heads read them, ``selfdistill``)."""

    block: type
    stage_sizes: Sequence[int]
    num_classes: int
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, stages: bool = False):
        ops = Ops(self.dtype, train, self.axis_name, mask)
        x = nn.relu(ops.bn()(ops.conv(64, 3, 1, 1)(x, "conv1"), "bn1"))
        outputs = []
        for stage, (n, planes) in enumerate(zip(self.stage_sizes, (64, 128, 256, 512)), 1):
            for i in range(n):
                stride = 2 if stage > 1 and i == 0 else 1
                x = self.block(planes, stride, self.dtype, self.axis_name, name=f"layer{stage}_{i}")(x, train, mask)
            outputs.append(x)
        logits = ops.dense(self.num_classes)(global_avg_pool(x), "linear").astype(jnp.float32)
        return (logits, tuple(outputs)) if stages else logits
