"""Data sets for ast_jax: host-side loading into NumPy plus jittable augmentation.

Data sets (`DATASETS`): ``digits`` (scikit-learn, embedded default), ``fashion_mnist``
(IDX files, Debian ``dataset-fashion-mnist``), ``cifar10``/``cifar100``/``tiny_imagenet``
(prepared TFDS ArrayRecord data, read without TensorFlow). See docs/data.md.

Typical use by a training loop::

    spec = dataset_spec("cifar10")
    train = load_split("cifar10", "train", data_dir)         # uint8 NumPy, host memory
    images = jax.device_put(train.images)                     # once
    for idx in epoch_batches(epoch_key, len(train), 128):     # (steps, 128) int32
        x = augment(step_key, images[idx], spec.augment)      # float32 [0, 1], inside jit
        x = normalize(x, spec.mean, spec.std)
"""

from ast_jax.data.augment import augment, augment_one, epoch_batches, normalize, to_unit_float
from ast_jax.data.errors import DataNotFoundError
from ast_jax.data.query_sets import QUERY_SETS, QuerySet, load_query_set
from ast_jax.data.sources import (
    ArraySplit,
    class_balanced_indices,
    class_balanced_subset,
    load_split,
    preparation_instructions,
)
from ast_jax.data.specs import DATASETS, AugmentSpec, DatasetSpec, dataset_spec


def prepare_dataset(name: str, manual_dir: str, data_dir: str) -> str:
    """One-time, offline, TensorFlow-free preparation of cifar10/cifar100/tiny_imagenet.

    Reads the official archive from `manual_dir` and writes TFDS ArrayRecord data under
    `data_dir/<name>/<version>/` (returned). See `ast_jax.data.tfds_builders`; the command line is
    `python -m ast_jax.data.prepare`.
    """
    from ast_jax.data import tfds_builders  # Imports tensorflow_datasets: keep it lazy.

    return tfds_builders.prepare(name, manual_dir, data_dir)


__all__ = [
    "DATASETS",
    "QUERY_SETS",
    "QuerySet",
    "ArraySplit",
    "AugmentSpec",
    "DataNotFoundError",
    "DatasetSpec",
    "augment",
    "augment_one",
    "class_balanced_indices",
    "class_balanced_subset",
    "dataset_spec",
    "epoch_batches",
    "load_query_set",
    "load_split",
    "normalize",
    "preparation_instructions",
    "prepare_dataset",
    "to_unit_float",
]
