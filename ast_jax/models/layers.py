"""Shared PyTorch-compatible building blocks for the model zoo.

Every conv / BatchNorm / linear layer of every model is made here, so that the PyTorch
conventions live in one place:

* explicit symmetric padding ``((p, p), (p, p))`` (never ``'SAME'``), depthwise/grouped convs
  through ``feature_group_count``;
* BatchNorm with ``momentum=0.9`` (= PyTorch ``momentum=0.1``) and ``epsilon=1e-5``; batch
  statistics are computed in float32 by Flax whatever the compute dtype.  (PyTorch updates
  ``running_var`` with the unbiased batch variance, Flax with the biased one; this only affects
  the running statistics during training, never a forward pass with given variables.)
* PyTorch's default initialisation (``kaiming_uniform_(a=sqrt(5))`` for weights and
  ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for biases), so training from scratch starts from the
  same distribution as the reference code;
* parameters are always float32 (``param_dtype``); ``dtype`` is only the compute dtype.

A *layer* here is a function ``layer(x, name) -> y``; :func:`sequential` applies a list of them
and names the ``i``-th one ``f"{prefix}_{i}"``, exactly like the ``i``-th entry of a PyTorch
``nn.Sequential`` called ``prefix`` (activations take an index too, as in PyTorch).  The helpers
must be called inside a ``@nn.compact`` method: the submodules they create belong to it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Layer = Callable[[jax.Array, str], jax.Array]

#: PyTorch's default conv/linear weight init: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
#: ``normal_(0, sqrt(2 / (k*k*out_channels)))``, used by the reference PreResNet for its convs.
kaiming_fan_out_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_bias_init(fan_in: int):
    """PyTorch's default bias init ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


@dataclasses.dataclass(frozen=True)
class Ops:
    """Factory of PyTorch-like layers for one compute ``dtype`` and one ``train`` flag."""

    dtype: Any = jnp.float32
    train: bool = False
    axis_name: str | None = None  # mesh axis over which BatchNorm averages batch statistics

    def conv(self, features: int, kernel_size: int, stride: int = 1, padding: int = 0,
             groups: int = 1, bias: bool = False,
             kernel_init=torch_default_kernel_init) -> Layer:
        """``nn.Conv2d(in, features, kernel_size, stride, padding, groups=groups, bias=bias)``."""

        def layer(x, name):
            fan_in = x.shape[-1] // groups * kernel_size * kernel_size
            return nn.Conv(
                features, (kernel_size, kernel_size), strides=(stride, stride),
                padding=((padding, padding), (padding, padding)),
                feature_group_count=groups, use_bias=bias, dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=kernel_init,
                bias_init=torch_default_bias_init(fan_in), name=name)(x)

        return layer

    def bn(self) -> Layer:
        """``nn.BatchNorm1d/2d`` (normalises the last axis); running stats updated iff train."""

        def layer(x, name):
            return nn.BatchNorm(use_running_average=not self.train, momentum=0.9, epsilon=1e-5,
                                axis_name=self.axis_name if self.train else None,
                                dtype=self.dtype, param_dtype=jnp.float32, name=name)(x)

        return layer

    def dense(self, features: int) -> Layer:
        """``nn.Linear(in, features)`` with bias."""

        def layer(x, name):
            return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                            kernel_init=torch_default_kernel_init,
                            bias_init=torch_default_bias_init(x.shape[-1]), name=name)(x)

        return layer


def relu(x, _name=None):
    """``nn.ReLU`` as a layer (takes and ignores a name)."""
    return nn.relu(x)


def relu6(x, _name=None):
    """``nn.ReLU6`` as a layer (takes and ignores a name)."""
    return nn.relu6(x)


def sequential(x, prefix: str, layers: Sequence[Layer]):
    """Apply ``layers`` in order, naming entry ``i`` ``f"{prefix}_{i}"`` like ``nn.Sequential``."""
    for i, layer in enumerate(layers):
        x = layer(x, f"{prefix}_{i}")
    return x


def global_avg_pool(x):
    """Mean over H, W of an NHWC map: ``adaptive_avg_pool2d(x, 1)`` / ``avg_pool2d`` over the
    whole final map (what the references do at their native input size)."""
    return jnp.mean(x, axis=(1, 2))


def channel_shuffle(x, groups: int):
    """NHWC equivalent of PyTorch's
    ``x.view(N, g, C//g, H, W).transpose(1, 2).reshape(N, C, H, W)``: output channel
    ``j*g + i`` is input channel ``i*(C//g) + j``."""
    *lead, c = x.shape
    x = x.reshape(*lead, groups, c // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


def torch_key_to_flax(key: str) -> tuple[str, tuple[str, ...] | None]:
    """Map a PyTorch ``state_dict`` key onto ``(collection, path)`` of the Flax variables.

    Numeric components (``nn.Sequential`` indices) are glued to the preceding component with
    ``'_'``, the rest become separate path entries; the leaf is renamed (``weight`` ->
    ``kernel`` for conv/linear, ``scale`` for BatchNorm, ``running_mean``/``running_var`` ->
    ``mean``/``var`` in ``batch_stats``).  Which ``weight`` is a BatchNorm one cannot be told from
    the key alone, so ``weight`` maps to ``'kernel'`` and the caller renames it to ``'scale'`` for
    1-D BatchNorm weights.  ``num_batches_tracked`` has no Flax counterpart (returns ``None``).
    Example: ``layer2.0.shortcut.1.running_var`` -> ``('batch_stats',
    ('layer2_0', 'shortcut_1', 'var'))``.
    """
    *mods, leaf = key.split(".")
    path: list[str] = []
    for m in mods:
        if m.isdigit() and path:
            path[-1] = f"{path[-1]}_{m}"
        else:
            path.append(m)
    if leaf == "num_batches_tracked":
        return "batch_stats", None
    collection, leaf = {
        "weight": ("params", "kernel"),
        "bias": ("params", "bias"),
        "running_mean": ("batch_stats", "mean"),
        "running_var": ("batch_stats", "var"),
    }[leaf]
    return collection, (*path, leaf)
