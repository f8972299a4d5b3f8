"""CIFAR ShuffleNetV2 (Ma et al. 2018) as in the Nasty Teacher code (``model/shufflenetv2.py``,
of the reference code)."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ast_jax.models.layers import Ops, channel_shuffle, global_avg_pool, relu, sequential


class ShuffleUnit(nn.Module):
    """Reference ``ShuffleUnit`` (all convs with bias).

    Down unit (``stride != 1`` or channels change): both branches see the whole input;
    ``residual`` = 1x1 -> BN -> ReLU -> dw3x3 (stride) -> BN -> 1x1 (out/2) -> BN -> ReLU and
    ``shortcut`` = dw3x3 (stride) -> BN -> 1x1 (out/2) -> BN -> ReLU.  Basic unit: the first half
    of the channels is the (identity) shortcut, the second half goes through ``residual``.  Then
    concat [shortcut, residual] and channel shuffle with 2 groups.
    """

    out_channels: int
    stride: int = 1
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        ops = Ops(self.dtype, train, self.axis_name, mask)
        conv = functools.partial(ops.conv, bias=True)
        half = self.out_channels // 2

        def dw_tail(c):  # dw3x3 (stride) -> BN -> 1x1 (half) -> BN -> ReLU
            return [conv(c, 3, self.stride, 1, groups=c), ops.bn(), conv(half, 1), ops.bn(), relu]

        c = x.shape[-1]
        if self.stride != 1 or c != self.out_channels:
            shortcut = sequential(x, "shortcut", dw_tail(c))
            residual = x
        else:
            c //= 2
            shortcut, residual = x[..., :c], x[..., c:]
        residual = sequential(residual, "residual", [conv(c, 1), ops.bn(), relu] + dw_tail(c))
        return channel_shuffle(jnp.concatenate([shortcut, residual], axis=-1), 2)


class ShuffleNetV2(nn.Module):
    """Reference ``ShuffleNetV2(ratio=1)``: ``pre`` = conv3x3 (24, bias) -> BN (no ReLU, no
    max-pool), ``stage2..4`` with 116/232/464 channels of 1 down unit + 3/7/3 basic units,
    ``conv5`` = 1x1 conv (1024) -> BN -> ReLU, global average pool, ``fc``."""

    num_classes: int
    stage_channels: Sequence[int] = (116, 232, 464)
    stage_repeats: Sequence[int] = (3, 7, 3)
    final_channels: int = 1024
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        ops = Ops(self.dtype, train, self.axis_name, mask)
        x = sequential(x, "pre", [ops.conv(24, 3, 1, 1, bias=True), ops.bn()])
        for stage, (c, repeat) in enumerate(zip(self.stage_channels, self.stage_repeats), 2):
            for i in range(repeat + 1):
                unit = ShuffleUnit(c, 2 if i == 0 else 1, self.dtype, self.axis_name, name=f"stage{stage}_{i}")
                x = unit(x, train, mask)
        x = sequential(x, "conv5", [ops.conv(self.final_channels, 1, bias=True), ops.bn(), relu])
        return ops.dense(self.num_classes)(global_avg_pool(x), "fc").astype(jnp.float32)
