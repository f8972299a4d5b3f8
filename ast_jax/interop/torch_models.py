"""PyTorch implementations of the docs/method.md §6 CIFAR architectures (NCHW), twins of ``ast_jax.models``.

Each class mirrors its Flax port (and the authors' reference model) layer for layer, with the
same module names, so that ``model.state_dict()`` keys map onto the Flax variable paths by
:func:`ast_jax.interop.convert.torch_key_to_flax` (``layer1.0.conv1.weight`` ->
``params/layer1_0/conv1/kernel``) and trainable parameter counts equal the table of docs/method.md §6. BatchNorm
uses PyTorch's defaults ``momentum=0.1``, ``eps=1e-5``; weights use PyTorch's default
initialisation (and the PreResNet's own conv re-initialisation, as in the reference).

Deviations from the references, all invisible at their native 3x32x32 input:

* the final average pools are global (``adaptive_avg_pool2d(x, 1)``), as in the Flax ports; the
  PreResNet reference uses ``AvgPool2d(8)``, which is the same on its 8x8 final map;
* the CNN flattens with ``torch.flatten(x, 1)`` (the reference's ``view(-1, 2048)``) and its
  ``fc1`` is sized for ``image_size`` (2048 inputs at 32x32, the default);
* ``in_channels`` (default 3) sets the stem's input channels (1 for grey-scale data).

Use :func:`create`; its names and constructor arguments are the registry's, :data:`ast_jax.models.ARCHITECTURES`.
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ast_jax.models import ARCHITECTURES, MODEL_NAMES, canonical_name, check_num_classes

__all__ = ["MODEL_NAMES", "create", "count_parameters", "CNN", "PreResNet", "PreActBlock",
           "ResNet", "BasicBlock", "Bottleneck", "ShuffleNetV2", "ShuffleUnit", "MobileNetV2",
           "LinearBottleNeck"]


# --------------------------------------------------------------------------- shared helpers

def conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
         groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """``nn.Conv2d`` with the argument order used throughout the zoo (bias off by default)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                     groups=groups, bias=bias)


def bn(channels: int) -> nn.BatchNorm2d:
    """``nn.BatchNorm2d`` with momentum 0.1 and eps 1e-5 (as ``ast_jax.models.layers.BatchNorm``)."""
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C)``: mean over the whole final map."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: output channel ``j*g + i`` is input channel ``i*(C//g) + j``."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- CNN

class CNN(nn.Module):
    """Nasty Teacher ``Net`` (``model/net.py``, ``num_channels=32``, dropout 0): 3 x [conv3x3 (bias)
    -> BN -> max-pool 2 -> ReLU] with 32/64/128 channels, flatten (C, H, W), ``fc1`` -> ``fcbn1``
    (BatchNorm1d) -> ReLU -> ``fc2``.  ``fc1`` takes the flattened final map of an
    ``image_size`` x ``image_size`` input (2048 features at 32)."""

    def __init__(self, num_classes: int, num_channels: int = 32, in_channels: int = 3,
                 image_size: int = 32):
        super().__init__()
        side = image_size // 8  # three floor-halving max-pools
        if side < 1:
            raise ValueError(f"CNN needs image_size >= 8, got {image_size}")
        widths = [in_channels] + [num_channels * 2**i for i in range(3)]
        for i in range(3):
            self.add_module(f"conv{i + 1}", conv(widths[i], widths[i + 1], 3, padding=1, bias=True))
            self.add_module(f"bn{i + 1}", bn(widths[i + 1]))
        self.fc1 = nn.Linear(widths[-1] * side * side, 4 * num_channels)
        self.fcbn1 = nn.BatchNorm1d(4 * num_channels, eps=1e-5, momentum=0.1)
        self.fc2 = nn.Linear(4 * num_channels, num_classes)

    def forward(self, x):
        for i in range(1, 4):
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
            x = F.relu(F.max_pool2d(x, 2))
        x = F.relu(self.fcbn1(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


# --------------------------------------------------------------------------- PreResNet

class PreActBlock(nn.Module):
    """Reference ``BasicBlock`` of ``preresnet.py``: BN -> ReLU -> conv3x3 (stride) -> BN -> ReLU ->
    conv3x3, plus the identity or ``downsample.0`` (1x1 strided conv, no BN) of the raw input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = bn(in_planes)
        self.conv1 = conv(in_planes, planes, 3, stride, 1)
        self.bn2 = bn(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1)
        self.downsample = (nn.Sequential(conv(in_planes, planes, 1, stride))
                           if stride != 1 or in_planes != planes else None)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (x if self.downsample is None else self.downsample(x))


class PreResNet(nn.Module):
    """Reference ``PreResNet(depth)`` (``depth = 6n + 2 < 44``, basic blocks): ``conv1`` (3x3, 16),
    ``layer1..3`` (16/32/64 planes, stride 1/2/2), ``bn`` -> ReLU -> average pool -> ``fc``."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 or not 8 <= depth < 44:
            raise ValueError(f"PreResNet depth must be 6n+2 in [8, 44), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv(in_channels, 16, 3, 1, 1)
        in_planes = 16
        for stage, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), 1):
            blocks = []
            for i in range(n):
                blocks.append(PreActBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.bn = bn(64)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # the reference's re-initialisation
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(global_avg_pool(F.relu(self.bn(x))))


# --------------------------------------------------------------------------- ResNet

def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Empty (identity), or ``0`` = 1x1 strided conv + ``1`` = BN when the shape changes."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(conv(in_planes, out_planes, 1, stride), bn(out_planes))


class BasicBlock(nn.Module):
    """conv3x3 (stride) -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv(in_planes, planes, 3, stride, 1)
        self.bn1 = bn(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1)
        self.bn2 = bn(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1 -> BN -> ReLU -> conv3x3 (stride) -> BN -> ReLU -> conv1x1 (x4) -> BN, + shortcut,
    ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = conv(in_planes, planes, 1)
        self.bn1 = bn(planes)
        self.conv2 = conv(planes, planes, 3, stride, 1)
        self.bn2 = bn(planes)
        self.conv3 = conv(planes, out_planes, 1)
        self.bn3 = bn(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Reference CIFAR ``ResNet(block, num_blocks)``: ``conv1`` (3x3 stride 1, 64) -> ``bn1`` ->
    ReLU (no max-pool), ``layer1..4`` (64/128/256/512 planes, stride 1/2/2/2), global average
    pool -> ``linear``."""

    def __init__(self, block: type, stage_sizes: Sequence[int], num_classes: int,
                 in_channels: int = 3):
        super().__init__()
        self.conv1 = conv(in_channels, 64, 3, 1, 1)
        self.bn1 = bn(64)
        in_planes = 64
        for stage, (n, planes) in enumerate(zip(stage_sizes, (64, 128, 256, 512)), 1):
            blocks = []
            for i in range(n):
                blocks.append(block(in_planes, planes, 2 if stage > 1 and i == 0 else 1))
                in_planes = block.expansion * planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.num_stages = len(stage_sizes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.linear(global_avg_pool(x))


# --------------------------------------------------------------------------- ShuffleNetV2

def _dw_tail(channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    """dw3x3 (stride) -> BN -> 1x1 (out) -> BN -> ReLU (all convs with bias)."""
    return [conv(channels, channels, 3, stride, 1, groups=channels, bias=True), bn(channels),
            conv(channels, out_channels, 1, bias=True), bn(out_channels), nn.ReLU(inplace=True)]


class ShuffleUnit(nn.Module):
    """Reference ``ShuffleUnit``.  Down unit (stride != 1 or channels change): ``shortcut`` =
    dw-tail of the whole input, ``residual`` = 1x1 -> BN -> ReLU -> dw-tail of the whole input.
    Basic unit: first half of the channels is the identity shortcut, the second half goes through
    ``residual``.  Then concat [shortcut, residual] and shuffle with 2 groups."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.split = stride == 1 and in_channels == out_channels
        half = out_channels // 2
        c = in_channels // 2 if self.split else in_channels
        self.shortcut = nn.Sequential() if self.split else nn.Sequential(*_dw_tail(c, half, stride))
        self.residual = nn.Sequential(conv(c, c, 1, bias=True), bn(c), nn.ReLU(inplace=True),
                                      *_dw_tail(c, half, stride))

    def forward(self, x):
        if self.split:
            shortcut, residual = torch.chunk(x, 2, dim=1)
        else:
            shortcut = residual = x
        x = torch.cat([self.shortcut(shortcut), self.residual(residual)], dim=1)
        return channel_shuffle(x, 2)


class ShuffleNetV2(nn.Module):
    """Reference ``ShuffleNetV2(ratio=1)``: ``pre`` = conv3x3 (24, bias) -> BN (no ReLU/max-pool),
    ``stage2..4`` (116/232/464 channels, 1 down unit + 3/7/3 basic units), ``conv5`` = 1x1 conv
    (1024) -> BN -> ReLU, global average pool, ``fc``."""

    def __init__(self, num_classes: int, in_channels: int = 3,
                 stage_channels: Sequence[int] = (116, 232, 464),
                 stage_repeats: Sequence[int] = (3, 7, 3), final_channels: int = 1024):
        super().__init__()
        self.pre = nn.Sequential(conv(in_channels, 24, 3, 1, 1, bias=True), bn(24))
        c_in = 24
        for stage, (c, repeat) in enumerate(zip(stage_channels, stage_repeats), 2):
            units = [ShuffleUnit(c_in if i == 0 else c, c, 2 if i == 0 else 1)
                     for i in range(repeat + 1)]
            self.add_module(f"stage{stage}", nn.Sequential(*units))
            c_in = c
        self.num_stages = len(stage_channels)
        self.conv5 = nn.Sequential(conv(c_in, final_channels, 1, bias=True), bn(final_channels),
                                   nn.ReLU(inplace=True))
        self.fc = nn.Linear(final_channels, num_classes)

    def forward(self, x):
        x = self.pre(x)
        for stage in range(2, self.num_stages + 2):
            x = getattr(self, f"stage{stage}")(x)
        return self.fc(global_avg_pool(self.conv5(x)))


# --------------------------------------------------------------------------- MobileNetV2

# (units, out_channels, first stride) of stage2..stage6; stage1 and stage7 are single units.
_MOBILENET_STAGES = ((2, 24, 2), (3, 32, 2), (4, 64, 2), (3, 96, 1), (3, 160, 1))


class LinearBottleNeck(nn.Module):
    """Reference ``LinearBottleNeck`` (convs with bias): ``residual`` = 1x1 (in*t) -> BN -> ReLU6 ->
    dw3x3 (stride) -> BN -> ReLU6 -> 1x1 (out) -> BN; identity added iff stride 1 and in == out."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, t: int = 6):
        super().__init__()
        c = in_channels * t
        self.residual = nn.Sequential(
            conv(in_channels, c, 1, bias=True), bn(c), nn.ReLU6(inplace=True),
            conv(c, c, 3, stride, 1, groups=c, bias=True), bn(c), nn.ReLU6(inplace=True),
            conv(c, out_channels, 1, bias=True), bn(out_channels))
        self.identity = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.residual(x)
        return out + x if self.identity else out


class MobileNetV2(nn.Module):
    """Reference CIFAR ``MobileNetV2``: ``pre`` = 1x1 conv with padding 1 (32, bias; grows 32x32 to
    34x34) -> BN -> ReLU6; ``stage1`` (16, t=1); ``stage2..6``; ``stage7`` (320); ``conv1`` = 1x1
    (1280) -> BN -> ReLU6; global average pool; ``conv2`` = 1x1 conv classifier with bias."""

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.pre = nn.Sequential(conv(in_channels, 32, 1, 1, 1, bias=True), bn(32),
                                 nn.ReLU6(inplace=True))
        self.stage1 = LinearBottleNeck(32, 16, 1, 1)
        c_in = 16
        for stage, (units, out, stride) in enumerate(_MOBILENET_STAGES, 2):
            self.add_module(f"stage{stage}", nn.Sequential(*[
                LinearBottleNeck(c_in if i == 0 else out, out, stride if i == 0 else 1)
                for i in range(units)]))
            c_in = out
        self.stage7 = LinearBottleNeck(c_in, 320, 1, 6)
        self.conv1 = nn.Sequential(conv(320, 1280, 1, bias=True), bn(1280), nn.ReLU6(inplace=True))
        self.conv2 = conv(1280, num_classes, 1, bias=True)

    def forward(self, x):
        x = self.stage1(self.pre(x))
        for stage in range(2, len(_MOBILENET_STAGES) + 2):
            x = getattr(self, f"stage{stage}")(x)
        x = self.conv1(self.stage7(x))
        x = self.conv2(F.adaptive_avg_pool2d(x, 1))
        return torch.flatten(x, 1)


# --------------------------------------------------------------------------- factory

def create(name: str, num_classes: int, *, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build the PyTorch twin of ``ast_jax.models.create(name, num_classes)`` (NCHW input).

    Args:
      name: one of :data:`MODEL_NAMES` (case-insensitive).
      num_classes: number of output logits, >= 2.
      in_channels: channels of the input images (3 for CIFAR; 1 for grey-scale data).
      image_size: input side length; only the CNN depends on it (its ``fc1`` input size).
        The other models take any input size >= 8.
    """
    key = canonical_name(name)
    kwargs = {"image_size": int(image_size)} if key == "cnn" else {}
    build = ARCHITECTURES[key].constructor(sys.modules[__name__])
    return build(num_classes=check_num_classes(num_classes), in_channels=int(in_channels), **kwargs)
