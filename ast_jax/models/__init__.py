"""Flax (Linen) ports of the CIFAR architectures of the Nasty Teacher / Stingy Teacher / AST code.

``create(name, num_classes, dtype)`` builds one of :data:`MODEL_NAMES`; the references are the
PyTorch models of the authors' reference code (docs/method.md §6), mirrored layer for layer:

============  ===================================================  =========================
name          reference (``model/*.py``)                           params at 32x32 (classes)
============  ===================================================  =========================
cnn           ``net.py`` ``Net`` (num_channels 32)                 357,514 (10) 369,124 (100)
preresnet20   ``preresnet.py`` ``PreResNet(20)``                   272,282 (10)
preresnet32   ``preresnet.py`` ``PreResNet(32)``                   466,714 (10)
resnet18      ``resnet.py`` ``ResNet18``                           11,173,962 / 11,220,132
resnet34      ``resnet.py`` ``ResNet34``                           21,282,122 (10)
resnet50      ``resnet.py`` ``ResNet50``                           23,520,842 / 23,705,252
shufflenetv2  ``shufflenetv2.py`` ``ShuffleNetV2``                 1,268,646 / 1,360,896
mobilenetv2   ``mobilenetv2.py`` ``MobileNetV2``                  2,369,380 (100)
============  ===================================================  =========================

Calling convention: ``variables = model.init(key, x, train=False)`` with NHWC input ``x`` (any
square size >= 8, 1 or 3 channels); ``model.apply(variables, x, train=False)`` for inference and
``model.apply(variables, x, train=True, mutable=['batch_stats'])`` for training (returns
``(logits, {'batch_stats': ...})``); ``mask=`` (bool ``(N,)``) marks the valid examples of a
padded training batch, the others are left out of the BatchNorm statistics.  Variables are ``{'params', 'batch_stats'}``; logits are
``(N, num_classes)`` float32.

Compute dtype: with ``dtype=jnp.bfloat16`` convs/linears/BatchNorm outputs are computed in bf16
while all parameters stay float32 (``param_dtype``) and BatchNorm batch statistics are computed
in float32; the logits are always cast to float32.

PyTorch ``state_dict`` <-> Flax variables (mechanical; see :mod:`ast_jax.interop.convert`):

* split the torch key on ``'.'``; every module name becomes one level of the Flax path (joined
  with ``'/'``), except that a numeric ``nn.Sequential`` index is glued to the name before it
  with ``'_'``: ``layer1.0.conv1.weight`` -> ``params/layer1_0/conv1/kernel``,
  ``stage2.3.residual.4.running_var`` -> ``batch_stats/stage2_3/residual_4/var``,
  ``pre.0.bias`` -> ``params/pre_0/bias``.  Sequential indices count activations too, as in
  PyTorch, so they are the reference's own indices.
* leaves: conv ``weight`` (O, I/groups, kh, kw) -> ``kernel`` transposed to (kh, kw, I/groups, O);
  linear ``weight`` (O, I) -> ``kernel`` (I, O); BatchNorm ``weight``/``bias`` -> ``scale``/
  ``bias``; ``running_mean``/``running_var`` -> ``batch_stats`` ``mean``/``var``;
  ``num_batches_tracked`` is dropped.  The CNN flattens in PyTorch's (C, H, W) order, so its
  ``fc1`` kernel is just the transposed torch weight.
* module names are the reference's: ``conv1``/``bn1``/``layer{s}_{i}``/``shortcut_{0,1}``/
  ``linear`` (resnet), ``conv1``/``layer{s}_{i}``/``downsample_0``/``bn``/``fc`` (preresnet),
  ``conv{1,2,3}``/``bn{1,2,3}``/``fc1``/``fcbn1``/``fc2`` (cnn), ``pre_{i}``/``stage{s}_{i}``/
  ``residual_{i}``/``shortcut_{i}``/``conv5_{i}``/``fc`` (shufflenetv2), ``pre_{i}``/
  ``stage1``/``stage{s}_{i}``/``stage7``/``residual_{i}``/``conv1_{i}``/``conv2`` (mobilenetv2).

Padding is explicit and symmetric like PyTorch's; BatchNorm is PyTorch's (``layers.BatchNorm``:
momentum 0.1, ``epsilon=1e-5``, running variance updated with the unbiased batch variance);
initialisation follows PyTorch's defaults (and the PreResNet's own conv re-initialisation).  The final average pools of the references cover the whole final map at
their native input size; here they are a global mean for any input size.  The reference CNN's
``view(-1, 2048)`` only works at 32x32; here its ``fc1`` takes whatever the flattened final map
is, so its size is fixed by the input used at ``init`` (2048 at 32x32).

Practical note: on small CPUs compiling the default threefry initialisers is slow (~10 s for the
CNN); ``jax.random.key(seed, impl='rbg')`` makes ``init`` several times cheaper to compile.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from ast_jax.models.cnn import CNN
from ast_jax.models.mobilenetv2 import LinearBottleNeck, MobileNetV2
from ast_jax.models.preresnet import PreActBlock, PreResNet
from ast_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from ast_jax.models.selfdistill import SelfDistillingResNet, trunk_variables
from ast_jax.models.shufflenetv2 import ShuffleNetV2, ShuffleUnit


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One entry of the model registry: the class `family` and the leading arguments `args` of its
    constructor, spelled the same in the Flax zoo (this package) and its PyTorch twin
    (`ast_jax.interop.torch_models`); a str in `args` names a block class of the same zoo."""

    family: str
    args: tuple = ()

    def constructor(self, zoo: types.ModuleType) -> Callable[..., Any]:
        """This architecture's constructor in `zoo`, the module that holds the family's classes."""
        args = tuple(getattr(zoo, a) if isinstance(a, str) else a for a in self.args)
        return functools.partial(getattr(zoo, self.family), *args)


#: The model registry: every architecture's name, built by `create` here and by
#: `ast_jax.interop.torch_models.create` in PyTorch.
ARCHITECTURES: dict[str, Architecture] = {
    "cnn": Architecture("CNN"),
    "preresnet20": Architecture("PreResNet", (20,)),
    "preresnet32": Architecture("PreResNet", (32,)),
    "resnet18": Architecture("ResNet", ("BasicBlock", (2, 2, 2, 2))),
    "resnet34": Architecture("ResNet", ("BasicBlock", (3, 4, 6, 3))),
    "resnet50": Architecture("ResNet", ("Bottleneck", (3, 4, 6, 3))),
    "shufflenetv2": Architecture("ShuffleNetV2"),
    "mobilenetv2": Architecture("MobileNetV2"),
}

#: Names accepted by :func:`create`.
MODEL_NAMES: tuple[str, ...] = tuple(ARCHITECTURES)
#: Trunks of the Skeptical Student's self-distilling clone (:func:`create_self_distilling`).
SELF_DISTILLING_TRUNKS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")


def canonical_name(name: str) -> str:
    """``name`` lower-cased, checked against :data:`MODEL_NAMES` (ValueError listing them)."""
    key = name.lower() if isinstance(name, str) else name
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return key


def check_num_classes(num_classes) -> int:
    """`num_classes` as an int, checked to be an integer >= 2 (ValueError otherwise)."""
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def create(name: str, num_classes: int, dtype: Any = jnp.float32, axis_name: str | None = None) -> nn.Module:
    """Build the Flax port of a reference CIFAR architecture (see the module docstring).

    Args:
      name: one of :data:`MODEL_NAMES` (case-insensitive): ``cnn`` (Nasty Teacher ``Net``),
        ``preresnet20``/``preresnet32`` (pre-activation CIFAR ResNet), ``resnet18/34/50``
        (CIFAR ResNet: 3x3 stem, no max-pool), ``shufflenetv2`` and ``mobilenetv2`` (CIFAR variants).
      num_classes: number of output logits, >= 2.
      dtype: compute dtype (parameters are always float32; logits are returned as float32).
      axis_name: mesh axis over which training-mode BatchNorm averages its batch statistics
        (``lax.pmean``), so a data-parallel step normalises with the statistics of the whole
        global batch; ``None`` for a single device. Inference mode never communicates.
    """
    build = ARCHITECTURES[canonical_name(name)].constructor(sys.modules[__name__])
    return build(num_classes=check_num_classes(num_classes), dtype=dtype, axis_name=axis_name)


def create_self_distilling(trunk: str, num_classes: int, dtype: Any = jnp.float32,
                           axis_name: str | None = None) -> nn.Module:
    """The Skeptical Student's clone (``selfdistill.SelfDistillingResNet``, docs/method.md §10.6) on
    the ResNet `trunk`, one of :data:`SELF_DISTILLING_TRUNKS`; ``trunk_variables`` of its variables
    are those of ``create(trunk, ...)``."""
    if canonical_name(trunk) not in SELF_DISTILLING_TRUNKS:
        raise ValueError(f"the self-distilling clone needs a ResNet trunk ({', '.join(SELF_DISTILLING_TRUNKS)}), "
                         f"got {trunk!r}")
    block, stage_sizes = ARCHITECTURES[canonical_name(trunk)].constructor(sys.modules[__name__]).args
    return SelfDistillingResNet(block, stage_sizes, num_classes=check_num_classes(num_classes), dtype=dtype,
                                axis_name=axis_name)


__all__ = [
    "ARCHITECTURES", "Architecture", "MODEL_NAMES", "SELF_DISTILLING_TRUNKS", "canonical_name", "create",
    "create_self_distilling", "SelfDistillingResNet", "trunk_variables",
    "CNN", "PreResNet", "PreActBlock", "ResNet", "BasicBlock", "Bottleneck",
    "ShuffleNetV2", "ShuffleUnit", "MobileNetV2", "LinearBottleNeck",
]
