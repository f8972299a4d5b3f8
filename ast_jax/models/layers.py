"""Shared PyTorch-compatible building blocks for the model zoo.

Every conv / BatchNorm / linear layer of every model is made here, so that the PyTorch
conventions live in one place:

* explicit symmetric padding ``((p, p), (p, p))`` (never ``'SAME'``), depthwise/grouped convs
  through ``feature_group_count``; on CPU, a convolution whose kernel is larger than its output
  map runs as one matrix product on the flattened map (:func:`conv_lowering`, the same sums);
* :class:`BatchNorm`, ``torch.nn.BatchNorm1d/2d`` exactly: ``momentum=0.1`` and ``eps=1e-5``,
  batch statistics in float32 whatever the compute dtype, normalisation with the biased batch
  variance and the running variance updated with the unbiased one (``n / (n - 1)``), as
  PyTorch does (Flax's own ``nn.BatchNorm`` puts the biased one in the running average); an
  optional per-example mask leaves padding examples out of the statistics;
* PyTorch's default initialisation (``kaiming_uniform_(a=sqrt(5))`` for weights and
  ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for biases), so training from scratch starts from the
  same distribution as the reference code;
* parameters are always float32 (``param_dtype``); ``dtype`` is only the compute dtype.

Every model's ``__call__(x, train=False, mask=None)`` takes the same per-example ``mask``
(bool ``(N,)``, ``None`` = all valid) and hands it to every BatchNorm through :class:`Ops`.

A *layer* here is a function ``layer(x, name) -> y``; :func:`sequential` applies a list of them
and names the ``i``-th one ``f"{prefix}_{i}"``, exactly like the ``i``-th entry of a PyTorch
``nn.Sequential`` called ``prefix`` (activations take an index too, as in PyTorch).  The helpers
must be called inside a ``@nn.compact`` method: the submodules they create belong to it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Layer = Callable[[jax.Array, str], jax.Array]

#: The platform the layers are traced for, where it is not JAX's default backend (`lowering_platform`).
_LOWERING_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("lowering_platform", default=None)


@contextlib.contextmanager
def lowering_platform(platform: str):
    """Trace the layers for `platform` ("cpu", "tpu", "gpu") inside the block, whatever JAX's
    default backend: ahead-of-time compilation on the host for an accelerator that is not attached
    (`ast_jax.engine.aot`) then gets the accelerator's layers, not the CPU's (`conv_lowering`,
    `max_pool_2x2`)."""
    token = _LOWERING_PLATFORM.set(platform)
    try:
        yield
    finally:
        _LOWERING_PLATFORM.reset(token)


def _on_cpu() -> bool:
    """Whether the layers are traced for XLA:CPU (`lowering_platform`, else JAX's default backend)."""
    return (_LOWERING_PLATFORM.get() or jax.default_backend()) == "cpu"

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


def _dense_conv_index(h: int, w: int, k: int, stride: int, padding: tuple) -> np.ndarray:
    """For every (input row, input column, output row, output column), the flat kernel tap
    ``a * k + b`` that connects them in a k x k convolution, or ``k * k`` where none does."""
    (top, bottom), (left, right) = padding
    ho, wo = (h + top + bottom - k) // stride + 1, (w + left + right - k) // stride + 1
    index = np.full((h, w, ho, wo), k * k, np.int32)
    for i, j, a, b in itertools.product(range(ho), range(wo), range(k), range(k)):
        row, column = stride * i + a - top, stride * j + b - left
        if 0 <= row < h and 0 <= column < w:
            index[row, column, i, j] = a * k + b
    return index


def conv_as_matrix(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None):
    """An NHWC x HWIO convolution (dense, undilated, square stride) as one matrix product on the
    flattened map: ``y.reshape(N, Ho Wo O) = x.reshape(N, H W C) @ T(w)``.

    ``T(w)[(p, q, c), (i, j, o)] = w[p - s i + pad, q - s j + pad, c, o]`` where that tap exists,
    else 0 (the doubly block-Toeplitz matrix of the convolution): the same sums as
    ``lax.conv_general_dilated``, gathered from the kernel instead of from shifted copies of the
    input. Same signature (the hook of ``nn.Conv``); meant for tiny maps, where T is small.
    """
    if feature_group_count != 1 or any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        raise ValueError("conv_as_matrix takes dense, undilated convolutions only")
    n, h, w, c = lhs.shape
    k, _, _, o = rhs.shape
    index = _dense_conv_index(h, w, k, window_strides[0], padding)
    taps = jnp.concatenate([rhs.reshape(k * k, c, o), jnp.zeros((1, c, o), rhs.dtype)])
    ho, wo = index.shape[2:]
    matrix = taps[index].transpose(0, 1, 4, 2, 3, 5).reshape(h * w * c, ho * wo * o)
    return jnp.dot(lhs.reshape(n, h * w * c), matrix, precision=precision).reshape(n, ho, wo, o)


def conv_lowering(kernel_size: int, stride: int, padding: int, groups: int, input_hw: tuple[int, int]):
    """The ``conv_general_dilated`` a conv layer runs: None (XLA's convolution) or :func:`conv_as_patches`.

    XLA:CPU rewrites a convolution whose kernel overhangs its whole output map (the 3x3 convs
    that make or take the 2x2 maps of the CNN and ResNetC-20 at 8x8 input), or the gradient of
    one, into a convolution its fast kernels do not take: 64 x 2x2 x 64->128 took 6.0 ms forward
    and 12.7 ms with both gradients, against 0.27 and 0.75 ms as one matrix product on the
    flattened map (:func:`conv_as_matrix`; 2-core CPU, benchmarks/README.md). Everywhere else,
    and on every other backend, XLA's convolution is as fast or faster, so it is kept.
    """
    output_hw = [(size + 2 * padding - kernel_size) // stride + 1 for size in input_hw]
    if _on_cpu() and groups == 1 and kernel_size > min(output_hw):
        return conv_as_matrix
    return None


def masked_moments(x: jax.Array, mask: jax.Array | None, axis_name: str | None):
    """Per-channel mean, biased variance and count of the valid entries of ``x`` (..., C), float32.

    ``mask`` (bool, ``(N,)``) marks the valid examples; their every position counts.  With
    ``axis_name`` the sums and the count run over all devices of that mesh axis (``lax.psum``),
    so the moments are those of the global batch however the valid examples are spread:
    ``mean = sum(x) / n`` and ``var = sum((x - mean)^2) / n`` (two passes, no cancellation).
    """
    x = x.astype(jnp.float32)
    valid = jnp.ones(x.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
    weight = jnp.broadcast_to(valid.reshape(-1, *[1] * (x.ndim - 1)), (*x.shape[:-1], 1))
    axes = tuple(range(x.ndim - 1))

    def total(v):
        v = jnp.sum(v, axis=axes)
        return v if axis_name is None else jax.lax.psum(v, axis_name)

    count = total(weight)
    safe_count = jnp.maximum(count, 1.0)
    mean = total(weight * x) / safe_count
    var = total(weight * jnp.square(x - mean)) / safe_count
    return mean, var, count


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm1d/2d`` over the last axis (variables ``params`` ``scale``/``bias``,
    ``batch_stats`` ``mean``/``var``, the names of Flax's ``nn.BatchNorm``).

    Training mode normalises with the batch's mean and biased variance (of the valid examples,
    over the mesh axis ``axis_name``) and updates the running statistics as PyTorch does:
    ``mean <- (1 - momentum) mean + momentum mu`` and
    ``var <- (1 - momentum) var + momentum sigma^2 n / (n - 1)`` with ``n`` the number of values
    per channel (the factor is 1 when ``n = 1``).  Inference mode uses the running statistics.
    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias``, computed in float32 and returned in
    ``dtype``.
    """

    use_running_average: bool = True
    momentum: float = 0.1  # PyTorch's convention: the weight of the new batch
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, mask=None):
        features = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, features, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, features, self.param_dtype)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            initializing = self.is_initializing()
            mean, var, count = masked_moments(x, mask, None if initializing else self.axis_name)
            if not initializing:
                unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
        y = (x.astype(jnp.float32) - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class Ops:
    """Factory of PyTorch-like layers for one compute ``dtype``, one ``train`` flag and one
    per-example ``mask`` (the valid examples of the batch, handed to every BatchNorm)."""

    dtype: Any = jnp.float32
    train: bool = False
    axis_name: str | None = None  # mesh axis over which BatchNorm sums batch statistics
    mask: jax.Array | None = None

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
                bias_init=torch_default_bias_init(fan_in), name=name,
                conv_general_dilated=conv_lowering(kernel_size, stride, padding, groups, x.shape[1:3]))(x)

        return layer

    def bn(self) -> Layer:
        """``nn.BatchNorm1d/2d`` (normalises the last axis); running stats updated iff train."""

        def layer(x, name):
            return BatchNorm(use_running_average=not self.train, axis_name=self.axis_name,
                             dtype=self.dtype, name=name)(x, self.mask)

        return layer

    def dense(self, features: int) -> Layer:
        """``nn.Linear(in, features)`` with bias."""

        def layer(x, name):
            return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                            kernel_init=torch_default_kernel_init,
                            bias_init=torch_default_bias_init(x.shape[-1]), name=name)(x)

        return layer


def max_pool_2x2(x):
    """``nn.MaxPool2d(2)`` on an NHWC map: the maximum of each 2x2 window; an odd last row or
    column is dropped, as PyTorch's floor mode does (a 7x7 map gives 3x3: Fashion-MNIST's 28x28
    images after two poolings of the CNN).

    On CPU it is computed as three ``where(p >= q, p, q)`` of the window's four strided views,
    in the order (0,0), (0,1), (1,0), (1,1), so a tie keeps the earlier element and the gradient
    goes to the first maximum in row-major order, as in PyTorch's ``max_pool2d`` backward (and
    XLA's ``select_and_scatter``). Elementwise, it fuses with its neighbours: the CNN's 8x8 train
    step took 15-20% less time than with ``reduce_window`` and its ``select_and_scatter``
    gradient (2-core CPU, benchmarks/README.md). Other backends keep ``nn.max_pool``.
    """
    if not _on_cpu():
        return nn.max_pool(x, (2, 2), strides=(2, 2))

    def first_max(p, q):
        return jnp.where(p >= q, p, q)

    x = x[:, : x.shape[1] // 2 * 2, : x.shape[2] // 2 * 2]
    top = first_max(x[:, 0::2, 0::2], x[:, 0::2, 1::2])
    bottom = first_max(x[:, 1::2, 0::2], x[:, 1::2, 1::2])
    return first_max(top, bottom)


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
