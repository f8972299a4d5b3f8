"""Tests of ast_jax.data: loaders (on data the tests write themselves) and jittable transforms.

No network access: CIFAR and Tiny-ImageNet are prepared from tiny fake archives in tmp dirs with
the TensorFlow-free builders of `ast_jax.data.tfds_builders`, then read back with `load_split`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tarfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ast_jax import data
from ast_jax.data import (
    DATASETS,
    ArraySplit,
    AugmentSpec,
    DataNotFoundError,
    DatasetSpec,
    augment,
    class_balanced_subset,
    dataset_spec,
    epoch_batches,
    load_query_set,
    load_split,
    normalize,
    to_unit_float,
)
from ast_jax.data.augment import augment_one, rotate

# ----------------------------------------------------------------------------------------
# Specs
# ----------------------------------------------------------------------------------------


def test_dataset_specs():
    expected = {
        "digits": (10, 8, 1),
        "fashion_mnist": (10, 28, 1),
        "cifar10": (10, 32, 3),
        "cifar100": (100, 32, 3),
        "tiny_imagenet": (200, 64, 3),
    }
    for name in DATASETS:
        spec = dataset_spec(name)
        assert isinstance(spec, DatasetSpec) and spec.name == name
        assert (spec.num_classes, spec.image_size, spec.channels) == expected[name]
        assert len(spec.mean) == len(spec.std) == spec.channels
        hash(spec.augment)  # static jit argument
    cifar = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    assert (dataset_spec("cifar10").mean, dataset_spec("cifar10").std) == cifar
    assert (dataset_spec("cifar100").mean, dataset_spec("cifar100").std) == cifar
    assert dataset_spec("cifar10").augment == AugmentSpec(crop_padding=4, flip=True)
    assert dataset_spec("tiny_imagenet").augment == AugmentSpec(flip=True, rotation_degrees=20.0)
    assert dataset_spec("tiny_imagenet").mean == (0.4802, 0.4481, 0.3975)
    assert dataset_spec("tiny_imagenet").std == (0.2302, 0.2265, 0.2262)
    assert dataset_spec("digits").augment == AugmentSpec()
    assert dataset_spec("fashion_mnist").augment == AugmentSpec()


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError) as err:
        dataset_spec("mnist")
    for name in DATASETS:
        assert name in str(err.value)
    with pytest.raises(ValueError):
        load_split("mnist", "train")
    with pytest.raises(ValueError):
        load_split("digits", "validation")
    with pytest.raises(ValueError):
        AugmentSpec(crop_padding=-1)


# ----------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------


def test_digits_split():
    train = load_split("digits", "train")
    test = load_split("digits", "test")
    assert isinstance(train, ArraySplit)
    assert train.images.shape == (1437, 8, 8, 1) and test.images.shape == (360, 8, 8, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
    assert test.images.dtype == np.uint8 and test.labels.dtype == np.int32
    assert train.images.max() == 255 and train.images.min() == 0
    # Stratified: every class's share of the test split is ~20 % of its total.
    n_train = np.bincount(train.labels, minlength=10)
    n_test = np.bincount(test.labels, minlength=10)
    frac = n_test / (n_train + n_test)
    assert np.all(np.abs(frac - 0.2) < 0.01), frac
    # The two splits partition the 1,797 images (compared as image+label rows).
    from sklearn.datasets import load_digits

    ref = load_digits()
    ref_images = np.round(ref.images * 255 / 16).astype(np.uint8)
    all_rows = [r.tobytes() + bytes([l]) for r, l in zip(ref_images, ref.target)]
    got = sorted(
        [im.tobytes() + bytes([l]) for im, l in zip(train.images[..., 0], train.labels)]
        + [im.tobytes() + bytes([l]) for im, l in zip(test.images[..., 0], test.labels)]
    )
    assert got == sorted(all_rows)
    # Deterministic across calls.
    again = load_split("digits", "train")
    np.testing.assert_array_equal(again.images, train.images)
    np.testing.assert_array_equal(again.labels, train.labels)


def test_class_balanced_subset():
    # Unbalanced classes: 0 has 50 examples, 1 has 30, 2 has 5; images carry their row index.
    labels = np.array([0] * 50 + [1] * 30 + [2] * 5, np.int32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    split = ArraySplit(np.arange(len(labels), dtype=np.uint8)[order].reshape(-1, 1, 1, 1), labels[order])
    sub = class_balanced_subset(split, 30, seed=4)
    rows = sub.images.ravel().astype(int)
    assert len(sub) == 30 and len(set(rows)) == 30
    assert sorted(np.bincount(sub.labels, minlength=3)) == [5, 12, 13]  # class 2 runs out at 5
    np.testing.assert_array_equal(labels[rows], sub.labels)  # images stay with their labels
    positions = [int(np.flatnonzero(split.images.ravel() == r)[0]) for r in rows]
    assert positions == sorted(positions)  # the split's order is kept
    balanced = class_balanced_subset(split, 9, seed=4)
    assert list(np.bincount(balanced.labels, minlength=3)) == [3, 3, 3]
    again = class_balanced_subset(split, 30, seed=4)
    np.testing.assert_array_equal(again.images, sub.images)
    other = class_balanced_subset(split, 30, seed=5)
    assert not np.array_equal(other.images, sub.images)
    for bad in (0, 86, 2.5, True):
        with pytest.raises(ValueError, match=r"subset size must be an int in \[1, 85\]"):
            class_balanced_subset(split, bad, seed=0)


def test_digits_mean_std_constants():
    spec = dataset_spec("digits")
    x = load_split("digits", "train").images.astype(np.float64) / 255
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), spec.mean, atol=1e-3)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), spec.std, atol=1e-3)


# ----------------------------------------------------------------------------------------
# fashion_mnist
# ----------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(directory, rng, n_train=12, n_test=5, gz=True):
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for stem, array in arrays.items():
        payload = _idx_bytes(array)
        if gz:
            with gzip.open(os.path.join(directory, stem + ".gz"), "wb") as f:
                f.write(payload)
        else:
            with open(os.path.join(directory, stem), "wb") as f:
                f.write(payload)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_data_dir(tmp_path, gz):
    arrays = _write_fashion(tmp_path / "fm", np.random.default_rng(0), gz=gz)
    train = load_split("fashion_mnist", "train", data_dir=str(tmp_path / "fm"))
    test = load_split("fashion_mnist", "test", data_dir=str(tmp_path / "fm"))
    assert train.images.shape == (12, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (5, 28, 28, 1) and test.labels.dtype == np.int32
    np.testing.assert_array_equal(train.images[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(train.labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(test.images[..., 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(test.labels, arrays["t10k-labels-idx1-ubyte"])


def test_fashion_mnist_subfolder(tmp_path):
    """A data_dir shared with other data sets may hold the files in a fashion-mnist/ folder."""
    _write_fashion(tmp_path / "fashion-mnist", np.random.default_rng(1))
    assert load_split("fashion_mnist", "train", data_dir=str(tmp_path)).images.shape[0] == 12


@pytest.mark.parametrize("damage", ["not gzip", "cut gzip", "truncated idx"])
def test_bad_fashion_mnist_file_is_one_line_naming_it(tmp_path, damage):
    _write_fashion(tmp_path / "fm", np.random.default_rng(2))
    path = tmp_path / "fm" / "train-images-idx3-ubyte.gz"
    payload = gzip.decompress(path.read_bytes())
    if damage == "not gzip":
        path.write_bytes(b"this is no gzip stream" * 10)
    elif damage == "cut gzip":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(gzip.compress(payload[:-100]))
    with pytest.raises(ValueError) as err:
        load_split("fashion_mnist", "train", data_dir=str(tmp_path / "fm"))
    message = str(err.value)
    assert str(path) in message and "intact copy" in message and "\n" not in message


def test_prepare_function_and_module_are_two_names():
    import importlib
    import inspect

    importlib.import_module("ast_jax.data.prepare")  # the command line's module
    assert inspect.ismodule(data.prepare) and callable(data.prepare_dataset)


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_split("fashion_mnist", "train", data_dir=str(tmp_path / "nowhere"))
    assert isinstance(err.value, DataNotFoundError)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data_dir" in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert str(tmp_path / "nowhere") in message


_DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.mark.skipif(
    not os.path.exists(_DEBIAN_FASHION), reason="Debian package dataset-fashion-mnist not installed"
)
def test_fashion_mnist_debian_default():
    spec = dataset_spec("fashion_mnist")
    train = load_split("fashion_mnist", "train")
    test = load_split("fashion_mnist", "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert np.all(np.bincount(train.labels) == 6000)
    x = train.images.astype(np.float32) / 255
    np.testing.assert_allclose(x.mean(), spec.mean[0], atol=1e-3)
    np.testing.assert_allclose(x.std(dtype=np.float64), spec.std[0], atol=1e-3)


# ----------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 via TFDS (tiny fake binary archives -> ArrayRecord -> load_split)
# ----------------------------------------------------------------------------------------


def _cifar_batch(rng, n, label_bytes):
    """Returns (bytes, images (n,32,32,3), labels (n, label_bytes)) in CIFAR binary layout."""
    highs = [20, 100] if label_bytes == 2 else [10]  # CIFAR-100: coarse byte, then fine byte
    labels = np.stack([rng.integers(0, hi, n, dtype=np.uint8) for hi in highs], axis=1)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    rows = np.concatenate([labels, images.transpose(0, 3, 1, 2).reshape(n, -1)], axis=1)
    return rows.tobytes(), images, labels


def _add_to_tar(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _rows(images, labels):
    return sorted(im.tobytes() + int(l).to_bytes(1, "little") for im, l in zip(images, labels))


@pytest.fixture(scope="module")
def cifar_data(tmp_path_factory):
    """Fake CIFAR-10 and CIFAR-100 binary archives, prepared once into one TFDS data_dir."""
    root = tmp_path_factory.mktemp("cifar")
    manual, data_dir = root / "manual", root / "tfds"
    manual.mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    # CIFAR-10: 5 train batches of 3 records + 1 test batch of 4.
    train_im, train_lab = [], []
    with tarfile.open(manual / "cifar-10-binary.tar.gz", "w:gz") as tar:
        for i in range(1, 6):
            payload, im, lab = _cifar_batch(rng, 3, 1)
            _add_to_tar(tar, f"cifar-10-batches-bin/data_batch_{i}.bin", payload)
            train_im.append(im)
            train_lab.append(lab[:, 0])
        payload, test_im, test_lab = _cifar_batch(rng, 4, 1)
        _add_to_tar(tar, "cifar-10-batches-bin/test_batch.bin", payload)
        names = "airplane automobile bird cat deer dog frog horse ship truck".split()
        meta = ("\n".join(names) + "\n\n").encode()
        _add_to_tar(tar, "cifar-10-batches-bin/batches.meta.txt", meta)
    expected["cifar10"] = {
        "train": (np.concatenate(train_im), np.concatenate(train_lab)),
        "test": (test_im, test_lab[:, 0]),
    }
    # CIFAR-100 (coarse label byte, then fine label byte), as an extracted folder.
    folder = manual / "cifar-100-binary"
    folder.mkdir()
    payload, tr_im, tr_lab = _cifar_batch(rng, 7, 2)
    (folder / "train.bin").write_bytes(payload)
    payload, te_im, te_lab = _cifar_batch(rng, 3, 2)
    (folder / "test.bin").write_bytes(payload)
    (folder / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)))
    (folder / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)))
    expected["cifar100"] = {"train": (tr_im, tr_lab[:, 1]), "test": (te_im, te_lab[:, 1])}
    for name in ("cifar10", "cifar100"):
        path = data.prepare_dataset(name, str(manual), str(data_dir))
        assert path == str(data_dir / name / "3.0.2")
    return str(data_dir), expected


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_load_split(cifar_data, name):
    data_dir, expected = cifar_data
    with open(os.path.join(data_dir, name, "3.0.2", "dataset_info.json")) as f:
        assert json.load(f)["fileFormat"] == "array_record"
    for split in ("train", "test"):
        got = load_split(name, split, data_dir=data_dir)
        images, labels = expected[name][split]
        assert got.images.shape == images.shape and got.images.dtype == np.uint8
        assert got.labels.dtype == np.int32
        # TFDS stores examples in a hashed order: compare as multisets of (image, label).
        assert _rows(got.images, got.labels) == _rows(images, labels)
    # Deterministic order across loads.
    a, b = load_split(name, "train", data_dir), load_split(name, "train", data_dir)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_cifar_readable_by_stock_tfds_data_source(cifar_data):
    """The prepared folder is what the stock `cifar10` builder expects (name, version, features)."""
    import tensorflow_datasets as tfds

    data_dir, expected = cifar_data
    source = tfds.data_source("cifar10", split="test", data_dir=data_dir, download=False)
    assert len(source) == 4
    record = source[0]
    assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8
    images, labels = expected["cifar10"]["test"]
    match = [i for i in range(4) if np.array_equal(images[i], record["image"])]
    assert len(match) == 1 and labels[match[0]] == record["label"]
    assert record["id"].decode().startswith("test_")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing_data(tmp_path, name):
    with pytest.raises(FileNotFoundError) as err:
        load_split(name, "train", data_dir=str(tmp_path))
    assert isinstance(err.value, DataNotFoundError)
    message = str(err.value)
    assert str(tmp_path) in message
    assert f"python -m ast_jax.data.prepare {name} --manual_dir=" in message
    assert f"tfds build {name} --file_format=array_record" in message


def test_cifar_tfrecord_rejected(tmp_path):
    version_dir = tmp_path / "cifar10" / "3.0.2"
    version_dir.mkdir(parents=True)
    (version_dir / "dataset_info.json").write_text(
        json.dumps({"name": "cifar10", "splits": [{"name": "train"}, {"name": "test"}]})
    )
    with pytest.raises(DataNotFoundError, match="array_record"):
        load_split("cifar10", "train", data_dir=str(tmp_path))


def test_cifar_prepare_without_archive(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(DataNotFoundError, match="cifar-10-binary.tar.gz"):
        data.prepare_dataset("cifar10", str(tmp_path / "manual"), str(tmp_path / "tfds"))


# ----------------------------------------------------------------------------------------
# Tiny-ImageNet (fake tiny-imagenet-200.zip -> TFDS builder -> load_split)
# ----------------------------------------------------------------------------------------

# wnids.txt deliberately not sorted: class index = position in wnids.txt.
_WNIDS = ["n09999999", "n01443537", "n05555555"]
_COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230]], np.uint8)


def _jpeg(colour, mode="RGB"):
    from PIL import Image

    image = Image.fromarray(np.broadcast_to(colour, (64, 64, 3)).copy())
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _colour_class(images):
    """Nearest class colour of each image's mean colour."""
    means = images.reshape(len(images), -1, 3).mean(axis=1)
    return np.argmin(((means[:, None, :] - _COLOURS[None]) ** 2).sum(-1), axis=1)


@pytest.fixture(scope="module")
def tiny_imagenet_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    manual, data_dir = root / "manual", root / "tfds"
    manual.mkdir()
    # Validation: file i belongs to class val_class[i] (by the annotations only).
    val_class = [2, 0, 1, 1, 2, 0, 2]
    with zipfile.ZipFile(manual / "tiny-imagenet-200.zip", "w") as z:
        z.writestr("tiny-imagenet-200/wnids.txt", "\n".join(_WNIDS) + "\n")
        z.writestr("tiny-imagenet-200/words.txt", "".join(f"{w}\tthing\n" for w in _WNIDS))
        for c, wnid in enumerate(_WNIDS):
            for j in range(3 + c):  # 3, 4, 5 train images
                name = f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{j}.JPEG"
                z.writestr(name, _jpeg(_COLOURS[c]))
            z.writestr(f"tiny-imagenet-200/train/{wnid}/{wnid}_boxes.txt", "")
        # A greyscale JPEG (Tiny-ImageNet has some): must come back as 3 equal channels.
        z.writestr(
            f"tiny-imagenet-200/train/{_WNIDS[0]}/images/{_WNIDS[0]}_grey.JPEG",
            _jpeg(np.array([128, 128, 128], np.uint8), mode="L"),
        )
        lines = []
        for i, c in enumerate(val_class):
            z.writestr(f"tiny-imagenet-200/val/images/val_{i}.JPEG", _jpeg(_COLOURS[c]))
            lines.append(f"val_{i}.JPEG\t{_WNIDS[c]}\t0\t0\t63\t63")
        z.writestr("tiny-imagenet-200/val/val_annotations.txt", "\n".join(lines) + "\n")
        z.writestr("tiny-imagenet-200/test/images/test_0.JPEG", _jpeg(_COLOURS[0]))
    path = data.prepare_dataset("tiny_imagenet", str(manual), str(data_dir))
    assert path == str(data_dir / "tiny_imagenet" / "1.0.0")
    return str(data_dir), val_class


def test_tiny_imagenet_train(tiny_imagenet_data):
    data_dir, _ = tiny_imagenet_data
    train = load_split("tiny_imagenet", "train", data_dir=data_dir)
    assert train.images.shape == (13, 64, 64, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32
    assert np.bincount(train.labels, minlength=3).tolist() == [4, 4, 5]
    grey = np.all(train.images.reshape(13, -1, 3).std(axis=1) < 3, axis=1) & (
        np.abs(train.images.reshape(13, -1).mean(axis=1) - 128) < 3
    )
    assert grey.sum() == 1 and train.labels[grey][0] == 0
    coloured = ~grey
    # Label = index in wnids.txt order (not sorted order), matching the folder's colour.
    np.testing.assert_array_equal(_colour_class(train.images[coloured]), train.labels[coloured])


def test_tiny_imagenet_val_labels_from_annotations(tiny_imagenet_data):
    data_dir, val_class = tiny_imagenet_data
    test = load_split("tiny_imagenet", "test", data_dir=data_dir)
    assert test.images.shape == (len(val_class), 64, 64, 3)
    np.testing.assert_array_equal(_colour_class(test.images), test.labels)
    assert sorted(test.labels.tolist()) == sorted(val_class)
    with open(os.path.join(data_dir, "tiny_imagenet", "1.0.0", "dataset_info.json")) as f:
        info = json.load(f)
    assert info["fileFormat"] == "array_record"
    assert sorted(s["name"] for s in info["splits"]) == ["train", "validation"]


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_split("tiny_imagenet", "test", data_dir=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message
    assert "tiny-imagenet-200.zip" in message
    assert "python -m ast_jax.data.prepare tiny_imagenet --manual_dir=" in message
    (tmp_path / "manual").mkdir()
    with pytest.raises(DataNotFoundError, match="tiny-imagenet-200.zip"):
        data.prepare_dataset("tiny_imagenet", str(tmp_path / "manual"), str(tmp_path / "tfds"))


def test_tiny_imagenet_builder_instructions():
    from ast_jax.data.tfds_builders import TinyImagenet

    assert "tiny-imagenet-200.zip" in TinyImagenet.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert TinyImagenet.name == "tiny_imagenet"


# ----------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------


def _images(n=16, h=8, w=8, c=3, seed=0):
    # Values 1..255 so that zero padding is recognisable.
    return np.random.default_rng(seed).integers(1, 256, (n, h, w, c), dtype=np.uint8)


def test_to_unit_float_and_normalize():
    x = np.array([[[[0, 255, 51]]]], np.uint8)
    y = to_unit_float(x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), [[[[0.0, 1.0, 0.2]]]], atol=1e-7)
    assert to_unit_float(x, jnp.bfloat16).dtype == jnp.bfloat16
    z = normalize(y, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1))
    np.testing.assert_allclose(np.asarray(z), [[[[-1.0, 2.0, 0.0]]]], atol=1e-6)


def test_augment_all_off_is_identity():
    x = _images()
    out = augment(jax.random.key(0), x, AugmentSpec())
    assert out.dtype == jnp.float32 and out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out), np.asarray(to_unit_float(x)))
    # A rotation range of 0 degrees is the identity as well.
    out = augment(jax.random.key(0), x, AugmentSpec(rotation_degrees=0.0))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(to_unit_float(x)))


def test_augment_crop_flip_is_shifted_flipped_copy():
    x = _images(n=64, c=2)
    p = 2
    out = np.asarray(augment(jax.random.key(1), x, AugmentSpec(crop_padding=p, flip=True)))
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-3)  # still pixel values
    out = np.round(out * 255).astype(np.uint8)
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    seen_offsets, seen_flips = set(), set()
    for i in range(len(x)):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            for flip in (False, True)
            if np.array_equal(
                (lambda crop: crop[:, ::-1] if flip else crop)(padded[i, dy:dy + 8, dx:dx + 8]),
                out[i],
            )
        ]
        assert matches, f"example {i} is not a shifted/flipped copy"
        seen_offsets.add(matches[0][:2])
        seen_flips.add(matches[0][2])
    assert seen_flips == {False, True}
    assert len(seen_offsets) > 5
    # Zero padding shows up as exact zeros (inputs are >= 1).
    assert (out == 0).any()


def test_augment_flip_only_and_crop_only():
    x = _images(n=32)
    flipped = np.asarray(augment(jax.random.key(2), x, AugmentSpec(flip=True)))
    ref = np.asarray(to_unit_float(x))
    is_flip = [np.array_equal(flipped[i], ref[i, :, ::-1]) for i in range(32)]
    is_same = [np.array_equal(flipped[i], ref[i]) for i in range(32)]
    assert all(a or b for a, b in zip(is_flip, is_same)) and any(is_flip) and any(is_same)
    cropped = np.asarray(augment(jax.random.key(2), x, AugmentSpec(crop_padding=1)))
    assert cropped.shape == x.shape


def test_augment_deterministic_and_per_example():
    x = _images(n=10, h=16, w=16)
    spec = AugmentSpec(crop_padding=3, flip=True, rotation_degrees=15.0)
    key = jax.random.key(3)
    a = np.asarray(augment(key, x, spec))
    b = np.asarray(augment(key, x, spec))
    np.testing.assert_array_equal(a, b)
    c = np.asarray(augment(jax.random.key(4), x, spec))
    assert not np.array_equal(a, c)
    # Example i depends only on (key, i): a batch and its first half agree.
    half = np.asarray(augment(key, x[:5], spec))
    np.testing.assert_allclose(half, a[:5], atol=1e-6)
    # ... and example i is augment_one with the i-th split key.
    keys = jax.random.split(key, 10)
    np.testing.assert_allclose(np.asarray(augment_one(keys[7], x[7], spec)), a[7], atol=1e-6)
    # Same pixels, different positions -> different transforms (per-example randomness).
    same = np.repeat(x[:1], 8, axis=0)
    outs = np.asarray(augment(key, same, spec))
    assert len({o.tobytes() for o in outs}) > 1


def test_augment_under_jit_and_shapes():
    spec = AugmentSpec(crop_padding=4, flip=True, rotation_degrees=20.0)
    x = _images(n=6, h=12, w=10, c=3)
    jitted = jax.jit(augment, static_argnums=2)
    out = jitted(jax.random.key(5), x, spec)
    assert out.shape == x.shape and out.dtype == jnp.float32
    eager = augment(jax.random.key(5), x, spec)
    np.testing.assert_allclose(np.asarray(out), np.asarray(eager), atol=1e-6)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    grey = _images(n=3, h=8, w=8, c=1)
    out = jitted(jax.random.key(6), grey, AugmentSpec(crop_padding=2, flip=True))
    assert out.shape == grey.shape


def test_rotation():
    a = np.random.default_rng(0).random((9, 9, 2)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(rotate(a, 0.0)), a)
    # +90 degrees is counter-clockwise (torchvision convention) = np.rot90(k=1).
    np.testing.assert_allclose(np.asarray(rotate(a, np.pi / 2)), np.rot90(a, 1), atol=1e-5)
    # A tiny rotation range is (almost) the identity.
    x = _images(n=4, h=16, w=16)
    out = augment(jax.random.key(7), x, AugmentSpec(rotation_degrees=1e-4))
    np.testing.assert_allclose(np.asarray(out), np.asarray(to_unit_float(x)), atol=1e-3)
    # A constant image keeps its centre and gets zero-filled corners at large angles.
    ones = np.full((8, 15, 15, 1), 255, np.uint8)
    out = np.asarray(augment(jax.random.key(8), ones, AugmentSpec(rotation_degrees=45.0)))
    np.testing.assert_allclose(out[:, 7, 7, 0], 1.0, atol=1e-5)
    corners = out[:, [0, 0, -1, -1], [0, -1, 0, -1], 0]
    assert (corners < 0.5).mean() > 0.5
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6


# ----------------------------------------------------------------------------------------
# epoch_batches
# ----------------------------------------------------------------------------------------


def test_epoch_batches():
    key = jax.random.key(0)
    batches = epoch_batches(key, 103, 10)
    assert batches.shape == (10, 10) and batches.dtype == jnp.int32
    flat = np.asarray(batches).ravel()
    assert len(set(flat.tolist())) == 100  # no repeats
    assert flat.min() >= 0 and flat.max() < 103
    np.testing.assert_array_equal(np.asarray(epoch_batches(key, 103, 10)), np.asarray(batches))
    other = epoch_batches(jax.random.key(1), 103, 10)
    assert not np.array_equal(np.asarray(other), np.asarray(batches))
    exact = np.asarray(epoch_batches(key, 40, 8))
    assert exact.shape == (5, 8) and sorted(exact.ravel().tolist()) == list(range(40))
    assert epoch_batches(key, 5, 5).shape == (1, 5)
    with pytest.raises(ValueError):
        epoch_batches(key, 5, 6)
    with pytest.raises(ValueError):
        epoch_batches(key, 5, 0)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_query_set_is_the_train_split_through_the_real_loader(cifar_data, name):
    data_dir, expected = cifar_data
    images = load_query_set(name, image_shape=(32, 32, 3), num_images=0, seed=0, data_dir=data_dir).images
    assert sorted(im.tobytes() for im in images) == sorted(im.tobytes() for im in expected[name]["train"][0])
    assert len(load_query_set(name, image_shape=(32, 32, 3), num_images=2, seed=0, data_dir=data_dir).images) == 2
