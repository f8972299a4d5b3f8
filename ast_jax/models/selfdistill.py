"""The Skeptical Student's self-distilling clone (Kundu et al., NeurIPS 2021; docs/method.md §10.6).

A CIFAR ResNet trunk (``resnet.ResNet``, held as the submodule ``trunk``, so that its variables
alone are a plain ResNet's) with two auxiliary heads in the style of "Be Your Own Teacher",
e = the block's expansion (1 BasicBlock, 4 Bottleneck):

- ``SepConv(a -> b, stride t)``: depthwise 3x3 (stride t), 1x1 a -> a, BN, ReLU; depthwise 3x3,
  1x1 a -> b, BN, ReLU; no bias.
- attention on a stage output z (c channels): z * sigmoid(up2(ReLU(BN(SepConv(c -> c, 2)(z))))),
  up2 bilinear x2 with half-pixel centres; the masked map feeds only its head.
- ``head2`` (the KD head) after stage 2: attention, SepConv(128e -> 256e, 2),
  SepConv(256e -> 512e, 2), average pool, linear -> s_2.
- ``head1`` (the self-distilled head) after stage 3: attention, SepConv(256e -> 512e, 2),
  average pool, linear -> s_1.

The heads' average pools are a global mean (4x4 at 32x32 input, as in the code; any size here).
``apply(..., heads=False)`` (the default, what evaluation and the released clone use) returns the
trunk's logits s_0; ``heads=True`` returns (s_0, s_1, s_2). ``init`` always builds the heads.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ast_jax.models.layers import Ops, global_avg_pool
from ast_jax.models.resnet import ResNet


def sep_conv(ops: Ops, x, features: int, stride: int, name: str):
    """``SepConv(c -> features, stride)`` of the module docstring, its layers named ``{name}_{i}``."""
    channels = x.shape[-1]
    x = ops.conv(channels, 3, stride, 1, groups=channels)(x, f"{name}_0")
    x = nn.relu(ops.bn()(ops.conv(channels, 1)(x, f"{name}_1"), f"{name}_2"))
    x = ops.conv(channels, 3, 1, 1, groups=channels)(x, f"{name}_4")
    return nn.relu(ops.bn()(ops.conv(features, 1)(x, f"{name}_5"), f"{name}_6"))


def attention(ops: Ops, z, name: str):
    """z * sigmoid(up2(ReLU(BN(SepConv(c -> c, 2)(z))))), up2 bilinear with half-pixel centres."""
    mask = nn.relu(ops.bn()(sep_conv(ops, z, z.shape[-1], 2, f"{name}_sep"), f"{name}_bn"))
    up = jax.image.resize(mask, (mask.shape[0], 2 * mask.shape[1], 2 * mask.shape[2], mask.shape[3]), "bilinear")
    return z * jax.nn.sigmoid(up[:, :z.shape[1], :z.shape[2]])


class SelfDistillingResNet(ResNet):
    """A ``ResNet(block, stage_sizes)`` trunk (its fields) with the Skeptical Student's two auxiliary heads."""

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, heads: bool = False):
        s0, stages = ResNet(self.block, self.stage_sizes, self.num_classes, self.dtype, self.axis_name,
                            name="trunk")(x, train, mask, stages=True)
        if not (heads or self.is_initializing()):
            return s0
        ops, e = Ops(self.dtype, train, self.axis_name, mask), self.block.expansion
        z = attention(ops, stages[2], "head1_attention")
        z = sep_conv(ops, z, 512 * e, 2, "head1_sep")
        s1 = ops.dense(self.num_classes)(global_avg_pool(z), "head1_linear").astype(jnp.float32)
        z = attention(ops, stages[1], "head2_attention")
        z = sep_conv(ops, sep_conv(ops, z, 256 * e, 2, "head2_sep0"), 512 * e, 2, "head2_sep1")
        s2 = ops.dense(self.num_classes)(global_avg_pool(z), "head2_linear").astype(jnp.float32)
        return (s0, s1, s2) if heads else s0


def trunk_variables(variables: dict) -> dict:
    """The trunk's variables alone: a plain ``ResNet``'s (the released clone, heads dropped)."""
    return {collection: tree["trunk"] for collection, tree in variables.items()}
