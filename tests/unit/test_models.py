"""Tests for ast_jax.models: exact reference parameter counts (docs/method.md §6), shapes, BN state, bf16."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PARAM_COUNTS  # noqa: E402

from ast_jax.models import MODEL_NAMES, create
from ast_jax.models.layers import (
    BatchNorm,
    channel_shuffle,
    conv_as_matrix,
    conv_lowering,
    lowering_platform,
    max_pool_2x2,
)


@functools.lru_cache(maxsize=None)
def _abstract_init(name, classes):
    """Variables (shapes/dtypes only, no compile) of ``create(name, classes)`` at 1x32x32x3."""
    model = create(name, classes)
    x = jnp.zeros((1, 32, 32, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _n_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_model_names():
    assert MODEL_NAMES == ("cnn", "preresnet20", "preresnet32", "resnet18", "resnet34",
                           "resnet50", "shufflenetv2", "mobilenetv2")


@pytest.mark.parametrize("name,classes", sorted(PARAM_COUNTS))
def test_param_count_matches_reference(name, classes):
    variables = _abstract_init(name, classes)
    assert set(variables) == {"params", "batch_stats"}
    assert _n_params(variables["params"]) == PARAM_COUNTS[(name, classes)]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_1ch_8x8_inference_bf16(name):
    model, x = create(name, 7, dtype=jnp.bfloat16), jnp.zeros((1, 8, 8, 1))

    def run():
        variables = model.init(jax.random.key(0), x, train=False)
        return variables, model.apply(variables, x, train=False)

    variables, out = jax.eval_shape(run)
    assert out.shape == (1, 7) and out.dtype == jnp.float32
    # bf16 compute, float32 parameters and BatchNorm statistics
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_3ch_16x16_train(name):
    model, x = create(name, 7), jnp.zeros((2, 16, 16, 3))

    def run():
        variables = model.init(jax.random.key(0), x, train=False)
        return variables, model.apply(variables, x, train=True, mutable=["batch_stats"])

    variables, (out, state) = jax.eval_shape(run)
    assert out.shape == (2, 7) and out.dtype == jnp.float32
    expected = {"batch_stats": variables["batch_stats"]}
    assert jax.tree.structure(state) == jax.tree.structure(expected)


def _input(shape=(2, 16, 16, 3), seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _numpy_variables(model, x):
    """Concrete variables without running the (slow to compile on CPU) RNG initialisers."""
    rng = np.random.default_rng(0)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

    def fill(path, leaf):
        name = path[-1].key
        if name == "var":
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "mean":
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        return jnp.asarray(rng.uniform(-1, 1, leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def test_real_init_follows_pytorch_defaults():
    # one real init (rbg key: threefry init compiles very slowly on small CPUs)
    x = _input()
    variables = jax.jit(lambda x: create("cnn", 10).init(jax.random.key(0, impl="rbg"), x, train=False))(x)
    params, stats = variables["params"], variables["batch_stats"]
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(variables))
    bound = 1 / np.sqrt(32 * 9)  # conv2: fan_in = 32 * 3 * 3
    for leaf in (params["conv2"]["kernel"], params["conv2"]["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound and float(jnp.std(leaf)) > bound / 3
    np.testing.assert_array_equal(params["bn1"]["scale"], 1)
    np.testing.assert_array_equal(params["bn1"]["bias"], 0)
    np.testing.assert_array_equal(stats["fcbn1"]["var"], 1)
    np.testing.assert_array_equal(stats["fcbn1"]["mean"], 0)


@pytest.mark.parametrize("name", ["cnn", "preresnet20"])
def test_real_forward_and_batch_stats(name):
    model, x = create(name, 10), _input()
    variables = _numpy_variables(model, x)

    logits = model.apply(variables, x, train=False)  # no mutable needed in inference mode
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_array_equal(logits, model.apply(variables, x, train=False))

    train_logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert bool(jnp.all(jnp.isfinite(train_logits)))
    old, new = variables["batch_stats"], state["batch_stats"]
    assert jax.tree.structure(old) == jax.tree.structure(new)
    assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
    # train mode normalises with batch statistics, inference mode with the running ones
    assert not np.allclose(train_logits, logits)


def test_bf16_computes_in_bf16():
    x = _input()
    f32, bf16 = create("cnn", 10), create("cnn", 10, dtype=jnp.bfloat16)
    variables = _numpy_variables(f32, x)
    out32 = jax.jit(lambda v, x: f32.apply(v, x, train=False))(variables, x)
    out16, inter = jax.jit(lambda v, x: bf16.apply(v, x, train=False, capture_intermediates=True))(variables, x)
    assert out16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out16)))
    assert inter["intermediates"]["conv1"]["__call__"][0].dtype == jnp.bfloat16
    assert inter["intermediates"]["fc2"]["__call__"][0].dtype == jnp.bfloat16
    assert not np.array_equal(out16, out32)
    np.testing.assert_allclose(out16, out32, atol=0.05, rtol=0.05)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        create("vgg16", 10)
    assert all(n in str(err.value) for n in MODEL_NAMES)


@pytest.mark.parametrize("classes", [1, 0, -3])
def test_bad_num_classes(classes):
    with pytest.raises(ValueError, match="num_classes"):
        create("cnn", classes)


def test_channel_shuffle_matches_pytorch_nchw_order():
    n, c, h, w, g = 2, 12, 3, 3, 2
    x_nchw = np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w)
    # torch: x.view(N, g, C//g, H, W).transpose(1, 2).contiguous().view(N, C, H, W)
    ref = x_nchw.reshape(n, g, c // g, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)
    out = channel_shuffle(jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), g)
    np.testing.assert_array_equal(np.asarray(out).transpose(0, 3, 1, 2), ref)


@pytest.mark.parametrize("shape", [(6, 3, 3, 4), (6, 4)], ids=["2d", "1d"])
def test_batchnorm_mask_keeps_padding_out_of_the_statistics(shape):
    """A masked training-mode BatchNorm gives the valid examples the outputs and the running
    statistics of the same layer on the valid examples alone; float64 NumPy formulas
    (PyTorch's update: unbiased batch variance, momentum 0.1)."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=shape).astype(np.float32)
    mask = np.array([True, False, True, True, False, True])
    layer = BatchNorm(use_running_average=False)
    variables = {"params": {"scale": jnp.full(shape[-1], 1.5), "bias": jnp.full(shape[-1], 0.25)},
                 "batch_stats": {"mean": jnp.full(shape[-1], 0.5), "var": jnp.full(shape[-1], 2.0)}}
    y, updates = layer.apply(variables, x, mask, mutable=["batch_stats"])
    valid = x[mask].astype(np.float64).reshape(-1, shape[-1])
    n, mu, var = valid.shape[0], valid.mean(0), valid.var(0)
    expected = (x[mask] - mu) / np.sqrt(var + 1e-5) * 1.5 + 0.25
    np.testing.assert_allclose(np.asarray(y)[mask], expected, rtol=1e-5, atol=1e-5)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.9 * 0.5 + 0.1 * mu, rtol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 * 2.0 + 0.1 * var * n / (n - 1), rtol=1e-6)
    y_valid, updates_valid = layer.apply(variables, x[mask], mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y)[mask], y_valid, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(updates_valid)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_batchnorm_single_value_per_channel_keeps_a_finite_variance():
    """n = 1 (one valid example into a BatchNorm1d): the unbiased factor n/(n-1) is guarded."""
    layer = BatchNorm(use_running_average=False)
    variables = layer.init(jax.random.key(0), jnp.zeros((2, 3)))
    _, updates = layer.apply(variables, jnp.ones((2, 3)), jnp.array([True, False]), mutable=["batch_stats"])
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9, rtol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1, rtol=1e-6)


def _conv_float64(x, w, stride, padding):
    """Direct NHWC x HWIO convolution in float64: y[n,i,j,o] = sum_abc x_pad[n, s i + a, s j + b, c] w[a,b,c,o]."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    w = np.asarray(w, np.float64)
    kh, kw = w.shape[:2]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            y[:, i, j] = np.einsum("nabc,abco->no", patch, w)
    return y


@pytest.mark.parametrize("size,kernel,stride,padding", [(2, 3, 1, 1), (4, 3, 2, 1), (5, 3, 1, 1), (4, 1, 2, 0)])
def test_conv_as_matrix_is_the_convolution(size, kernel, stride, padding):
    rng = np.random.default_rng(size + kernel + stride)
    x = rng.normal(size=(3, size, size, 5)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, 5, 7)).astype(np.float32)
    pads = ((padding, padding), (padding, padding))
    got = conv_as_matrix(jnp.asarray(x), jnp.asarray(w), (stride, stride), pads)
    np.testing.assert_allclose(np.asarray(got), _conv_float64(x, w, stride, padding), rtol=1e-5, atol=1e-5)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (stride, stride), pads,
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))))

    want = jax.grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1))(x, w)
    for g, h in zip(jax.grad(loss(conv_as_matrix), argnums=(0, 1))(x, w), want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), rtol=1e-4, atol=1e-5)


def test_conv_lowering_takes_patches_only_where_the_kernel_overhangs_the_output_on_cpu():
    on_cpu = jax.default_backend() == "cpu"
    assert (conv_lowering(3, 1, 1, 1, (2, 2)) is conv_as_matrix) == on_cpu  # 2x2 map: kernel overhangs it
    assert (conv_lowering(3, 2, 1, 1, (4, 4)) is conv_as_matrix) == on_cpu  # 4x4 -> 2x2, stride 2
    assert conv_lowering(3, 1, 1, 1, (4, 4)) is None
    assert conv_lowering(1, 2, 0, 1, (4, 4)) is None
    assert conv_lowering(3, 1, 1, 4, (2, 2)) is None  # grouped: XLA's
    with lowering_platform("tpu"):  # traced for an accelerator (ahead-of-time, on this host): XLA's everywhere
        assert conv_lowering(3, 1, 1, 1, (2, 2)) is None
    with lowering_platform("cpu"):
        assert conv_lowering(3, 1, 1, 1, (2, 2)) is conv_as_matrix
    with pytest.raises(ValueError, match="dense, undilated"):
        conv_as_matrix(jnp.zeros((1, 2, 2, 4)), jnp.zeros((3, 3, 1, 4)), (1, 1), ((1, 1), (1, 1)), feature_group_count=4)


def test_max_pool_2x2_routes_the_gradient_to_the_first_maximum():
    """Forward = the 2x2 window maximum; backward = PyTorch's: all of a window's gradient to its first
    maximum in row-major order, ties included (float64 NumPy oracle)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (2, 4, 6, 3)).astype(np.float32)  # small integers: many ties
    upstream = rng.normal(size=(2, 2, 3, 3))
    windows = x.reshape(2, 2, 2, 3, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(2, 2, 3, 3, 4)
    first = windows.argmax(-1)  # NumPy's argmax: the first maximum
    want_grad = np.zeros((2, 2, 3, 3, 4))
    np.put_along_axis(want_grad, first[..., None], upstream[..., None], -1)
    want_grad = want_grad.reshape(2, 2, 3, 3, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(x.shape)
    y, vjp = jax.vjp(max_pool_2x2, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), windows.max(-1))
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(upstream, jnp.float32))[0]), want_grad, rtol=1e-6)


def test_max_pool_2x2_drops_an_odd_last_row_and_column():
    """PyTorch's floor mode: a 7x7 map pools to 3x3 (the CNN on 28x28 images after two poolings)."""
    x = np.arange(2 * 7 * 7 * 3, dtype=np.float32).reshape(2, 7, 7, 3)
    expected = x[:, :6, :6].reshape(2, 3, 2, 3, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(np.asarray(max_pool_2x2(jnp.asarray(x))), expected)
