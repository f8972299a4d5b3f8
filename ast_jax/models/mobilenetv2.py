"""CIFAR MobileNetV2 (Sandler et al. 2018) as in the Nasty Teacher code (``model/mobilenetv2.py``,
of the reference code)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ast_jax.models.layers import Ops, global_avg_pool, relu6, sequential

# (units, out_channels, first stride) of stage2..stage6; stage1 and stage7 are single units.
_STAGES = ((2, 24, 2), (3, 32, 2), (4, 64, 2), (3, 96, 1), (3, 160, 1))


class LinearBottleNeck(nn.Module):
    """Reference ``LinearBottleNeck`` (all convs with bias, expansion conv kept even for t=1):
    ``residual`` = 1x1 (in*t) -> BN -> ReLU6 -> dw3x3 (stride) -> BN -> ReLU6 -> 1x1 (out) -> BN;
    identity added iff stride 1 and in == out (no projection shortcut)."""

    out_channels: int
    stride: int = 1
    t: int = 6
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        ops = Ops(self.dtype, train, self.axis_name, mask)
        conv = functools.partial(ops.conv, bias=True)
        c = x.shape[-1] * self.t
        out = sequential(x, "residual", [
            conv(c, 1), ops.bn(), relu6,
            conv(c, 3, self.stride, 1, groups=c), ops.bn(), relu6,
            conv(self.out_channels, 1), ops.bn()])
        if self.stride == 1 and x.shape[-1] == self.out_channels:
            out = out + x
        return out


class MobileNetV2(nn.Module):
    """Reference ``MobileNetV2``: ``pre`` = 1x1 conv with padding 1 (32 ch, bias; a quirk of the
    reference that grows 32x32 to 34x34) -> BN -> ReLU6; ``stage1`` (16, t=1); ``stage2..6`` per
    ``_STAGES`` (t=6); ``stage7`` (320); ``conv1`` = 1x1 (1280) -> BN -> ReLU6; global average
    pool; ``conv2`` = 1x1 conv classifier with bias (a conv, not a Linear)."""

    num_classes: int
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        ops = Ops(self.dtype, train, self.axis_name, mask)
        conv = functools.partial(ops.conv, bias=True)
        block = functools.partial(LinearBottleNeck, dtype=self.dtype, axis_name=self.axis_name)
        x = sequential(x, "pre", [conv(32, 1, 1, 1), ops.bn(), relu6])
        x = block(16, 1, 1, name="stage1")(x, train, mask)
        for stage, (units, out, stride) in enumerate(_STAGES, 2):
            for i in range(units):
                x = block(out, stride if i == 0 else 1, name=f"stage{stage}_{i}")(x, train, mask)
        x = block(320, 1, 6, name="stage7")(x, train, mask)
        x = sequential(x, "conv1", [conv(1280, 1), ops.bn(), relu6])
        x = conv(self.num_classes, 1)(global_avg_pool(x)[:, None, None, :], "conv2")
        return x.reshape(x.shape[0], -1).astype(jnp.float32)
