"""Tests for ast_jax.interop: PyTorch twins of the zoo, state_dict <-> Flax conversion, .pt files.

Training-mode BatchNorm: both frameworks normalise with the biased batch variance and update
``running_var`` with the unbiased one (factor n/(n-1), n = N*H*W), so the running statistics
are compared directly.
"""

import copy
import functools
import importlib
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import PARAM_COUNTS, randomize_torch_batchnorm  # noqa: E402

from ast_jax import models
from ast_jax.interop import (  # noqa: E402
    flax_to_torch_key,
    from_torch_state_dict,
    load_torch_checkpoint,
    save_torch_checkpoint,
    to_torch_state_dict,
    torch_key_to_flax,
    torch_models,
)
from ast_jax.models.layers import BatchNorm  # noqa: E402

# The CNN's reference fc1 (2048 inputs) and the PreResNet's AvgPool2d(8) are made for 32x32.
SIZES = {"cnn": 32, "preresnet20": 32, "preresnet32": 32}
CLASSES = 10
BATCH = 4
#: Every zoo model, the ones other than the CNN and PreResNet-20 marked slow: comparing them against
#: PyTorch compiles each one (seconds to tens of seconds on a CPU); the quick path keeps the two smallest.
ZOO = [name if name in ("cnn", "preresnet20") else pytest.param(name, marks=pytest.mark.slow)
       for name in models.MODEL_NAMES]


@functools.lru_cache(maxsize=None)
def _case(name: str):
    """(randomised torch model in eval mode, its Flax variables, NCHW float32 input)."""
    size = SIZES.get(name, 16)
    torch.manual_seed(0)
    model = torch_models.create(name, CLASSES, image_size=size)
    randomize_torch_batchnorm(model)
    model.eval()
    x = np.random.default_rng(0).normal(size=(BATCH, 3, size, size)).astype(np.float32)
    return model, from_torch_state_dict(model.state_dict(), name, CLASSES), x


def _nhwc(x):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


# --------------------------------------------------------------------------- architectures

@pytest.mark.parametrize("name,classes", sorted(PARAM_COUNTS))
def test_param_count_matches_spec(name, classes):
    with torch.device("meta"):
        model = torch_models.create(name, classes)
    assert torch_models.count_parameters(model) == PARAM_COUNTS[(name, classes)]


def test_create_validates():
    assert torch_models.MODEL_NAMES == models.MODEL_NAMES
    with pytest.raises(ValueError, match="unknown model name 'vgg16'"):
        torch_models.create("vgg16", 10)
    with pytest.raises(ValueError, match="num_classes"):
        torch_models.create("cnn", 1)
    bn = [m for m in torch_models.create("ResNet18", 10).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.momentum == 0.1 and m.eps == 1e-5 for m in bn)


@pytest.mark.parametrize("name", ZOO)
def test_inference_matches_pytorch(name):
    model, variables, x = _case(name)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    apply = jax.jit(lambda v, x: models.create(name, CLASSES).apply(v, x, train=False))
    logits = np.asarray(apply(variables, _nhwc(x)))
    assert logits.shape == expected.shape == (BATCH, CLASSES)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ZOO)
def test_training_mode_matches_pytorch(name):
    base, variables, x = _case(name)
    model = copy.deepcopy(base).train()
    batchnorms = [mod_name for mod_name, m in model.named_modules()
                  if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    apply = jax.jit(lambda v, x: models.create(name, CLASSES).apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = apply(variables, _nhwc(x))
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-4)

    state = model.state_dict()
    assert batchnorms
    for mod_name in batchnorms:
        _, path = torch_key_to_flax(f"{mod_name}.running_mean")
        new = updates["batch_stats"]
        for comp in path[:-1]:
            new = new[comp]
        for leaf, key in (("mean", "running_mean"), ("var", "running_var")):
            np.testing.assert_allclose(np.asarray(new[leaf]), state[f"{mod_name}.{key}"].numpy(),
                                       rtol=1e-4, atol=1e-5, err_msg=f"{mod_name}.{key}")


@pytest.mark.parametrize("shape", [(8, 5, 5, 3), (8, 6), (2, 6)], ids=["2d", "1d", "1d-batch2"])
def test_batchnorm_training_update_equals_pytorch(shape):
    """One training-mode forward of the zoo's BatchNorm and of torch.nn.BatchNorm2d/1d on the same
    input: same outputs, same running mean and (unbiased-updated) running variance."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.7, 1.9, size=shape).astype(np.float32)
    channels = shape[-1]
    twin = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(channels).train()
    randomize_torch_batchnorm(twin, seed=1)
    variables = {"params": {"scale": jnp.asarray(twin.weight.detach().numpy()),
                            "bias": jnp.asarray(twin.bias.detach().numpy())},
                 "batch_stats": {"mean": jnp.asarray(twin.running_mean.numpy()),
                                 "var": jnp.asarray(twin.running_var.numpy())}}
    with torch.no_grad():
        expected = twin(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy()
    y, updates = BatchNorm(use_running_average=False).apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(np.moveaxis(np.asarray(y), -1, 1), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], twin.running_mean.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(updates["batch_stats"]["var"], twin.running_var.numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_round_trips_are_exact(name):
    model, variables, _ = _case(name)
    state_dict = to_torch_state_dict(variables, name, CLASSES)
    reference = model.state_dict()
    # torch -> flax -> torch: same keys in the same (module) order, same values
    assert list(state_dict) == list(reference)
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            assert int(value) == 0
        else:
            assert value.dtype == torch.float32 and value.is_contiguous()
            assert torch.equal(value, reference[key]), key
    fresh = torch_models.create(name, CLASSES, image_size=SIZES.get(name, 16))
    fresh.load_state_dict(state_dict, strict=True)
    # flax -> torch -> flax
    back = from_torch_state_dict(state_dict, name, CLASSES)
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
        assert a.dtype == jnp.float32 and np.array_equal(np.asarray(a), np.asarray(b))
    # every torch key has an inverse
    for key in reference:
        if not key.endswith("num_batches_tracked"):
            collection, path = torch_key_to_flax(key)
            assert flax_to_torch_key(collection, path) == key


def test_flax_initialised_cnn_1ch_16px_round_trip():
    """Variables made by Flax (1 channel, 16x16: fc1 has 512 inputs) convert and load."""
    flax_model = models.create("cnn", 5)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 1)), jnp.float32)
    variables = jax.jit(lambda x: flax_model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)  # one compile
    state_dict = to_torch_state_dict(variables, "cnn", 5)
    assert state_dict["conv1.weight"].shape == (32, 1, 3, 3)
    assert state_dict["fc1.weight"].shape == (128, 512)
    model = torch_models.create("cnn", 5, in_channels=1, image_size=16).eval()
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        expected = model(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2))).numpy()
    logits = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-4)
    back = from_torch_state_dict(state_dict, "cnn", 5)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------- validation

def _small_state_dict():
    model, _, _ = _case("preresnet20")
    return model.state_dict()


def test_wrong_architecture_lists_everything():
    with pytest.raises(ValueError) as info:
        from_torch_state_dict(_small_state_dict(), "resnet18", CLASSES)
    message = str(info.value)
    assert "'resnet18'" in message
    for section in ("missing", "unexpected", "mis-shaped"):
        assert section in message
    assert "layer4.1.bn2.weight (512,)" in message  # missing from the preresnet
    assert "fc.weight (10, 64)" in message  # unexpected in a resnet
    assert "conv1.weight: got (16, 3, 3, 3), expected (64, 3, 3, 3)" in message


def test_missing_unexpected_and_misshaped_keys_listed_together():
    sd = dict(_small_state_dict())
    del sd["fc.bias"], sd["layer2.1.bn1.running_var"]
    sd["extra.weight"] = torch.zeros(3)
    sd["layer9.0.bn1.num_batches_tracked"] = torch.tensor(0)
    sd["layer1.0.conv1.weight"] = torch.zeros(16, 16, 1, 1)
    sd["bn.running_mean"] = torch.zeros(32)
    sd["fc.weight"] = torch.zeros(100, 64)
    with pytest.raises(ValueError) as info:
        from_torch_state_dict(sd, "preresnet20", CLASSES)
    message = str(info.value)
    assert "missing (2)" in message and "unexpected (2)" in message and "mis-shaped (3)" in message
    for text in ("fc.bias (10,)", "layer2.1.bn1.running_var (32,)", "extra.weight (3,)",
                 "layer9.0.bn1.num_batches_tracked ()",
                 "layer1.0.conv1.weight: got (16, 16, 1, 1), expected (16, 16, 3, 3)",
                 "bn.running_mean: got (32,), expected (64,)",
                 "fc.weight: got (100, 64), expected (10, 64)"):
        assert text in message, text


def test_to_torch_validates_flax_variables():
    _, variables, _ = _case("preresnet20")
    params = dict(variables["params"])
    params["fc"] = {"kernel": params["fc"]["kernel"][:, :3], "bias": params["fc"]["bias"]}
    params.pop("bn")
    params["junk"] = {"kernel": jnp.zeros(2)}
    with pytest.raises(ValueError) as info:
        to_torch_state_dict({"params": params, "batch_stats": variables["batch_stats"]}, "preresnet20", CLASSES)
    message = str(info.value)
    for text in ("missing (2)", "bn.weight (64,)", "bn.bias (64,)", "unexpected (1)",
                 "params/junk/kernel", "fc.weight: got (3, 64), expected (10, 64)"):
        assert text in message, text


# --------------------------------------------------------------------------- files

def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("layout", ["raw", "state_dict", "model_state_dict", "net", "module_prefix",
                                    "state_dict_module_prefix"])
def test_load_checkpoint_layouts(tmp_path, layout):
    _, variables, _ = _case("preresnet20")
    sd = _small_state_dict()
    if "module_prefix" in layout:
        sd = {f"module.{k}": v for k, v in sd.items()}
    obj = sd if layout in ("raw", "module_prefix") else {
        "epoch": 3, layout.replace("_module_prefix", ""): sd, "optim_dict": {"state": {}, "lr": 0.1}}
    path = tmp_path / "ckpt.pth.tar"
    torch.save(obj, path)
    _assert_same(load_torch_checkpoint(path, "preresnet20", CLASSES), variables)


def test_checkpoint_without_weights_or_wrong_model(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "acc": 0.9}, path)
    with pytest.raises(ValueError, match="no state_dict.*'epoch', 'acc'"):
        load_torch_checkpoint(path, "preresnet20", CLASSES)
    torch.save(_small_state_dict(), path)
    with pytest.raises(ValueError, match=r"missing \(60\):\n    layer1.3.bn1.weight \(16,\)"):
        load_torch_checkpoint(path, "preresnet32", CLASSES)
    with pytest.raises(FileNotFoundError):
        load_torch_checkpoint(tmp_path / "absent.pt", "preresnet20", CLASSES)


_EXPLOITED = []


def _exploit(marker):
    _EXPLOITED.append(marker)
    return marker


class _Malicious:
    def __reduce__(self):
        return _exploit, ("code ran",)


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_is_refused(tmp_path, legacy):
    path = tmp_path / "evil.pt"
    obj = {"state_dict": dict(_small_state_dict()), "payload": _Malicious()}
    if legacy:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    else:
        torch.save(obj, path)
    with pytest.raises(ValueError, match="not a plain weights checkpoint"):
        load_torch_checkpoint(path, "preresnet20", CLASSES)
    assert not _EXPLOITED


def test_save_checkpoint_round_trip_and_no_overwrite(tmp_path):
    _, variables, _ = _case("preresnet20")
    path = tmp_path / "out.pt"
    save_torch_checkpoint(variables, path, "preresnet20", CLASSES)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert set(saved) == {"state_dict"}
    _assert_same(load_torch_checkpoint(path, "preresnet20", CLASSES), variables)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=str(path)):
        save_torch_checkpoint(variables, path, "preresnet20", CLASSES)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["out.pt"]
    changed = jax.tree.map(lambda a: a + 1, variables)
    save_torch_checkpoint(changed, str(path), "preresnet20", CLASSES, overwrite=True)
    _assert_same(load_torch_checkpoint(path, "preresnet20", CLASSES), changed)
    assert sorted(os.listdir(tmp_path)) == ["out.pt"]


def test_import_without_torch_says_how_to_install(monkeypatch):
    for mod in [m for m in sys.modules if m == "ast_jax.interop" or m.startswith("ast_jax.interop.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "ast_jax\[torch\]"'):
        importlib.import_module("ast_jax.interop")


# (model, torch state_dict key, torch shape) from the reference PyTorch models (10 classes,
# mobilenetv2 100) (shapes from ``jax.eval_shape`` of ``init``, nothing is computed).
TORCH_KEYS = [
    ("cnn", "conv2.weight", (64, 32, 3, 3)),
    ("cnn", "fc1.weight", (128, 2048)),
    ("cnn", "fcbn1.running_var", (128,)),
    ("preresnet20", "layer2.0.downsample.0.weight", (32, 16, 1, 1)),
    ("preresnet20", "layer3.2.bn2.running_mean", (64,)),
    ("preresnet20", "fc.bias", (10,)),
    ("resnet18", "layer2.0.shortcut.0.weight", (128, 64, 1, 1)),
    ("resnet18", "layer4.1.conv2.weight", (512, 512, 3, 3)),
    ("resnet18", "linear.weight", (10, 512)),
    ("resnet50", "layer1.0.shortcut.1.running_var", (256,)),
    ("shufflenetv2", "pre.0.bias", (24,)),
    ("shufflenetv2", "stage2.0.shortcut.0.weight", (24, 1, 3, 3)),
    ("shufflenetv2", "stage3.5.residual.3.weight", (116, 1, 3, 3)),
    ("shufflenetv2", "conv5.1.running_mean", (1024,)),
    ("mobilenetv2", "pre.0.weight", (32, 3, 1, 1)),
    ("mobilenetv2", "stage1.residual.3.weight", (32, 1, 3, 3)),
    ("mobilenetv2", "stage4.3.residual.6.weight", (64, 384, 1, 1)),
    ("mobilenetv2", "conv2.weight", (100, 1280, 1, 1)),
]


@pytest.mark.parametrize("name,key,torch_shape", TORCH_KEYS)
def test_torch_key_maps_onto_flax_path(name, key, torch_shape):
    model = models.create(name, 100 if name == "mobilenetv2" else 10)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    collection, path = torch_key_to_flax(key)
    leaf = variables[collection]
    for part in path:
        leaf = leaf[part]
    # conv OIHW -> HWIO, linear (O, I) -> (I, O), 1-D unchanged
    expected = torch_shape[2:] + torch_shape[1::-1] if len(torch_shape) == 4 else torch_shape[::-1]
    assert leaf.shape == expected
