"""Host-side loading of whole splits into NumPy arrays (uint8 images, int32 labels).

* `digits`: scikit-learn `load_digits` (embedded, always available).
* `fashion_mnist`: IDX files, by default from the Debian package `dataset-fashion-mnist`.
* `cifar10`, `cifar100`, `tiny_imagenet`: prepared TFDS ArrayRecord data, read with the
  TFDS data-source API (no TensorFlow needed); see docs/data.md for the one-time preparation.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import zlib

import numpy as np

from ast_jax.data.errors import DataNotFoundError
from ast_jax.data.specs import DATASETS, dataset_spec

SPLITS = ("train", "test")

# --- digits ------------------------------------------------------------------------------
# Fixed stratified split of the 1,797 images: 1,437 train / 360 test.
DIGITS_TEST_SIZE = 0.2
DIGITS_SPLIT_SEED = 0

# --- fashion_mnist -----------------------------------------------------------------------
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# --- TFDS data sets ----------------------------------------------------------------------
# load_split's split name -> the TFDS split that holds it.
TFDS_SPLITS = {
    "cifar10": {"train": "train", "test": "test"},
    "cifar100": {"train": "train", "test": "test"},
    "tiny_imagenet": {"train": "train", "test": "validation"},
}
DEFAULT_TFDS_DATA_DIR = "~/tensorflow_datasets"


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """One split held in host memory: images (N, H, W, C) uint8, labels (N,) int32."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        # Shapes are checked; the dtypes are what the loaders return (not enforced, so that
        # callers may wrap other arrays, e.g. adversarial float images, in the same container).
        if np.ndim(self.images) != 4:
            raise ValueError(f"images must be (N, H, W, C), got shape {np.shape(self.images)}")
        if np.shape(self.labels) != np.shape(self.images)[:1]:
            raise ValueError(
                f"labels must have shape ({np.shape(self.images)[0]},), got {np.shape(self.labels)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def class_balanced_indices(labels: np.ndarray, num: int, seed: int) -> np.ndarray:
    """Sorted indices of `num` examples, as many of each class as `labels` allows, by a seeded shuffle.

    The examples are taken round-robin over the classes in the order of one
    `np.random.default_rng(seed)` permutation (the first of each class, then the second, ...),
    so each class gets floor or ceil of num / classes while it has enough examples.
    """
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or not 1 <= num <= len(labels):
        raise ValueError(f"subset size must be an int in [1, {len(labels)}] (the split's size), got {num!r}")
    order = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[order]
    rank_in_class = np.empty(len(order), np.int64)
    for label in np.unique(shuffled):
        members = shuffled == label
        rank_in_class[members] = np.arange(np.count_nonzero(members))
    return np.sort(order[np.lexsort((np.arange(len(order)), rank_in_class))[:num]])


def class_balanced_subset(split: ArraySplit, num: int, seed: int) -> ArraySplit:
    """`num` examples of `split` chosen by `class_balanced_indices`, in the split's order.
    For quick runs on part of a large training set."""
    chosen = class_balanced_indices(split.labels, num, seed)
    return ArraySplit(split.images[chosen], split.labels[chosen])


def load_split(name: str, split: str, data_dir: str | None = None) -> ArraySplit:
    """Loads a whole split of `name` into host memory.

    Args:
      name: one of `DATASETS`.
      split: "train" or "test" (for Tiny-ImageNet "test" is the official validation set).
      data_dir: where the data lives; None means the default of the data set: ignored for
        `digits`; for `fashion_mnist` a folder holding the four IDX files (default
        /usr/share/datasets/fashion-mnist); for the TFDS data sets the TFDS data_dir holding
        `<name>/<version>/` (default $TFDS_DATA_DIR, else ~/tensorflow_datasets).

    Raises:
      ValueError: unknown name or split.
      DataNotFoundError (a FileNotFoundError): the files are missing; the message says how to
        get or prepare them.
    """
    spec = dataset_spec(name)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    if name == "digits":
        out = _load_digits(split)
    elif name == "fashion_mnist":
        out = _load_fashion_mnist(split, data_dir)
    else:
        out = _load_tfds(name, split, data_dir)
    if out.images.shape[1:] != spec.image_shape:
        raise ValueError(
            f"{name}/{split}: images {out.images.shape[1:]}, expected {spec.image_shape}"
        )
    if len(out) and (out.labels.min() < 0 or out.labels.max() >= spec.num_classes):
        raise ValueError(f"{name}/{split}: labels outside [0, {spec.num_classes})")
    return out


# --- digits ------------------------------------------------------------------------------


def _load_digits(split: str) -> ArraySplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Values are integers 0..16; map to 0..255 by round(v * 255 / 16).
    images = np.round(digits.images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
    images = images[..., None]
    labels = digits.target.astype(np.int32)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        index, test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    idx = train_idx if split == "train" else test_idx
    return ArraySplit(np.ascontiguousarray(images[idx]), np.ascontiguousarray(labels[idx]))


# --- fashion_mnist -----------------------------------------------------------------------


def _fashion_mnist_instructions(searched: list[str]) -> str:
    names = ", ".join(f"{a}[.gz], {b}[.gz]" for a, b in FASHION_MNIST_FILES.values())
    return (
        f"Fashion-MNIST IDX files not found (searched: {', '.join(searched)}). Get them with\n"
        f"    apt-get install dataset-fashion-mnist   # installs {FASHION_MNIST_DEFAULT_DIR}/\n"
        f"or pass --config.data.data_dir=DIR (load_split(..., data_dir=DIR)) where DIR holds the "
        f"four IDX files: {names} (gzipped or not)."
    )


def _find_idx(directory: str, stem: str) -> str | None:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


IDX_FIX = "replace it with an intact copy (e.g. apt-get install --reinstall dataset-fashion-mnist)"


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (gzipped when its name ends in .gz) into a NumPy array.

    Raises ValueError naming the file for a corrupt gzip stream, a bad header or a truncated body.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: not a readable gzip file ({error}); {IDX_FIX}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number); {IDX_FIX}")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}; {IDX_FIX}")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(dtypes[data[2]])
    count = int(np.prod(shape)) if shape else 1
    offset = 4 + 4 * ndim
    if len(data) < offset + count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX file (header says shape {shape}); {IDX_FIX}")
    array = np.frombuffer(data, dtype, count=count, offset=offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _load_fashion_mnist(split: str, data_dir: str | None) -> ArraySplit:
    if data_dir is None:
        candidates = [FASHION_MNIST_DEFAULT_DIR]
    else:
        base = os.path.expanduser(os.fspath(data_dir))
        candidates = [
            base, os.path.join(base, "fashion-mnist"), os.path.join(base, "fashion_mnist")
        ]
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    for directory in candidates:
        image_path = _find_idx(directory, image_stem)
        label_path = _find_idx(directory, label_stem)
        if image_path and label_path:
            break
    else:
        raise DataNotFoundError(_fashion_mnist_instructions(candidates))
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{image_path}: expected (N, 28, 28) uint8 images, got {images.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{image_path} has {images.shape[0]} images, {label_path} has "
                         f"{labels.shape[0]} labels")
    return ArraySplit(np.ascontiguousarray(images[..., None]), labels.astype(np.int32))


# --- TFDS (cifar10, cifar100, tiny_imagenet) ---------------------------------------------


def default_tfds_data_dir() -> str:
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or DEFAULT_TFDS_DATA_DIR)


def preparation_instructions(name: str, data_dir: str) -> str:
    """The one-time commands that prepare `name` under `data_dir` (see docs/data.md)."""
    if name in ("cifar10", "cifar100"):
        archive = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}[name]
        url = f"https://www.cs.toronto.edu/~kriz/{archive}"
        return (
            f"Prepare it once (see docs/data.md), either\n"
            f"  (a) offline, no TensorFlow: fetch {url} on any machine, put it in DIR, then\n"
            f"        python -m ast_jax.data.prepare {name} --manual_dir=DIR "
            f"--data_dir={data_dir}\n"
            f"  (b) on a machine with internet and TensorFlow:\n"
            f"        pip install tensorflow tensorflow-datasets\n"
            f"        tfds build {name} --file_format=array_record --data_dir=OUT\n"
            f"      then copy OUT/{name}/ to {data_dir}/{name}/\n"
            f"or point --config.data.data_dir (load_split data_dir, or $TFDS_DATA_DIR) at the TFDS "
            f"data_dir that holds {name}/<version>/."
        )
    return (
        "Prepare it once (see docs/data.md): fetch "
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip on any machine, put it in DIR, then\n"
        f"    python -m ast_jax.data.prepare tiny_imagenet --manual_dir=DIR --data_dir={data_dir}\n"
        "or point --config.data.data_dir (load_split data_dir, or $TFDS_DATA_DIR) at the TFDS "
        "data_dir that holds tiny_imagenet/<version>/."
    )


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (-1,)


def find_prepared(name: str, data_dir: str) -> str | None:
    """Newest `<data_dir>/<name>/<version>` that holds a dataset_info.json, else None."""
    root = os.path.join(data_dir, name)
    if not os.path.isdir(root):
        return None
    versions = [
        v for v in os.listdir(root)
        if os.path.isfile(os.path.join(root, v, "dataset_info.json")) and _version_key(v) != (-1,)
    ]
    if not versions:
        return None
    return os.path.join(root, max(versions, key=_version_key))


def _check_array_record(name: str, version_dir: str, tfds_split: str, data_dir: str) -> None:
    with open(os.path.join(version_dir, "dataset_info.json")) as f:
        info = json.load(f)
    file_format = info.get("fileFormat", "tfrecord")
    if file_format != "array_record":
        raise DataNotFoundError(
            f"{version_dir} was prepared as {file_format!r}, but only ArrayRecord can be read "
            f"without TensorFlow. Rebuild it with file_format array_record.\n"
            + preparation_instructions(name, data_dir)
        )
    splits = [s.get("name") for s in info.get("splits", [])]
    if tfds_split not in splits:
        raise DataNotFoundError(
            f"{version_dir} has no split {tfds_split!r} (it has {splits}).\n"
            + preparation_instructions(name, data_dir)
        )


def _decode_image(data: bytes, channels: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        mode = "RGB" if channels == 3 else "L"
        if image.mode != mode:
            image = image.convert(mode)
        array = np.asarray(image, dtype=np.uint8)
    return array if array.ndim == 3 else array[..., None]


def _decode_records(records, start: int, shape, out_images, out_labels) -> None:
    """Parses serialized tf.train.Example records and decodes their images into the outputs."""
    from tensorflow_datasets.proto import tf_example_pb2  # TensorFlow-free proto of TFDS.

    for i, record in enumerate(records, start):
        feature = tf_example_pb2.Example.FromString(record).features.feature
        image = _decode_image(feature["image"].bytes_list.value[0], shape[-1])
        if image.shape != shape:
            raise ValueError(f"record {i}: image shape {image.shape}, expected {shape}")
        out_images[i] = image
        out_labels[i] = feature["label"].int64_list.value[0]


def _load_tfds(name: str, split: str, data_dir: str | None) -> ArraySplit:
    data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir or default_tfds_data_dir())))
    tfds_split = TFDS_SPLITS[name][split]
    version_dir = find_prepared(name, data_dir)
    if version_dir is None:
        raise DataNotFoundError(
            f"No prepared TFDS data for {name!r} in data_dir={data_dir} (looked for "
            f"{os.path.join(data_dir, name, '<version>', 'dataset_info.json')}).\n"
            + preparation_instructions(name, data_dir)
        )
    _check_array_record(name, version_dir, tfds_split, data_dir)

    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import decode as tfds_decode

    # Read exactly the prepared folder (no registry, version or GCS lookup, no TensorFlow).
    # The data source hands out the serialized records; they are parsed here with TFDS's own
    # tf.train.Example proto (much faster than the generic per-feature NumPy decoding of
    # tfds, about 100 us/record) and the images decoded with Pillow, forcing RGB (or L) so
    # that the few greyscale/CMYK JPEGs of Tiny-ImageNet get the expected channel count.
    # Decoding is Python-bound (threads do not help; about 0.1 ms per CIFAR PNG and 0.25 ms
    # per Tiny-ImageNet JPEG on one core), so it runs sequentially.
    builder = tfds.builder_from_directory(version_dir)
    source = builder.as_data_source(
        split=tfds_split, deserialize_method=tfds_decode.DeserializeMethod.RAW_BYTES
    )
    spec = dataset_spec(name)
    n = len(source)
    images = np.empty((n, *spec.image_shape), np.uint8)
    labels = np.empty((n,), np.int32)
    chunk = 4096
    for start in range(0, n, chunk):
        records = source.__getitems__(list(range(start, min(start + chunk, n))))
        _decode_records(records, start, spec.image_shape, images, labels)
    return ArraySplit(images, labels)


__all__ = ["ArraySplit", "DataNotFoundError", "DATASETS", "class_balanced_subset", "load_split", "read_idx"]
