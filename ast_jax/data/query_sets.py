"""The attacker's query sets: images a thief sends to the black box (docs/method.md §10.4).

Each set is built from data that ships here, or read by the real loaders, in the victim's image
shape (H, W, C) as uint8, and fingerprinted (sha256 of the shape and the bytes):

| name                | images                                                                    |
|---------------------|---------------------------------------------------------------------------|
| `fashion_to_digits` | Fashion-MNIST train images resized to the victim's size (F→8 for digits)  |
| `digits_to_fashion` | all 1,797 digits resized to the victim's size (D→28 for Fashion-MNIST)    |
| `fashion_outside`   | Fashion-MNIST train images outside the victim's class-balanced subset (F-B) |
| `photos`            | random square crops (16-128 px) of scikit-learn's two sample photographs  |
| `noise`             | uniform random pixels                                                     |
| `cifar10`, `cifar100` | the CIFAR train split (the CIFAR-100 ↔ CIFAR-10 pairing)                |

Resizing is bilinear and antialiased (Pillow), grey is the ITU-R 601 luma of RGB, and a
grey set becomes RGB by repeating the channel. A set whose native size differs from the victim's
is resized only where the table says so; the CIFAR sets must match the victim's size.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from ast_jax.data.sources import class_balanced_indices, load_split

QUERY_SETS: tuple[str, ...] = ("fashion_to_digits", "digits_to_fashion", "fashion_outside", "photos", "noise",
                               "cifar10", "cifar100")
#: Sets with no natural size: `num_images` must be positive.
_GENERATED = ("photos", "noise")
PHOTO_CROP_SIZES = (16, 128)
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclasses.dataclass(frozen=True)
class QuerySet:
    """A query set: `images` uint8 (N, H, W, C) and `fingerprint`, a sha256 of their shape and bytes."""

    name: str
    images: np.ndarray
    fingerprint: str


def fingerprint_images(images: np.ndarray) -> str:
    """sha256 of an image array's shape, dtype and bytes."""
    digest = hashlib.sha256(f"{images.shape}{images.dtype}".encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, h, w, C) -> uint8 (N, size, size, C), bilinear; antialiased when shrinking (Pillow
    widens the filter's support by the scale factor)."""
    if images.shape[1:3] == (size, size):
        return images
    from PIL import Image

    def one(image: np.ndarray) -> np.ndarray:
        squeezed = image[..., 0] if image.shape[-1] == 1 else image
        resized = np.asarray(Image.fromarray(squeezed).resize((size, size), Image.Resampling.BILINEAR))
        return resized.reshape(size, size, image.shape[-1])

    return np.stack([one(image) for image in images]) if len(images) else np.zeros((0, size, size, images.shape[-1]),
                                                                                  np.uint8)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 grey <-> RGB: luma for 3 -> 1, repetition for 1 -> 3."""
    if images.shape[-1] == channels:
        return images
    if channels == 1:
        return np.round(images.astype(np.float64) @ _LUMA)[..., None].astype(np.uint8)
    return np.repeat(images, channels, axis=-1)


def _take(images: np.ndarray, num_images: int, rng: np.random.Generator) -> np.ndarray:
    """`num_images` of `images` drawn without replacement (all of them, in order, for 0)."""
    if not num_images:
        return images
    if num_images > len(images):
        raise ValueError(f"asked for {num_images} query images but the set has {len(images)}; "
                         f"use at most {len(images)} (0 = all)")
    return images[np.sort(rng.choice(len(images), num_images, replace=False))]


def photo_crops(num_images: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random square crops (PHOTO_CROP_SIZES px) of scikit-learn's sample photographs, resized, RGB uint8."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    out = np.empty((num_images, size, size, 3), np.uint8)
    for i in range(num_images):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(PHOTO_CROP_SIZES[0], PHOTO_CROP_SIZES[1] + 1))
        top, left = rng.integers(photo.shape[0] - side + 1), rng.integers(photo.shape[1] - side + 1)
        out[i] = resize(photo[None, top:top + side, left:left + side], size)[0]
    return out


def _source(name: str, image_shape: tuple, num_images: int, rng, data_dir, victim_examples: int,
            victim_seed: int) -> np.ndarray:
    """The set's images at their native size (resized where the table of the module docstring says so)."""
    size = image_shape[0]
    if name == "noise":
        return rng.integers(0, 256, (num_images, *image_shape), dtype=np.uint8)
    if name == "photos":
        return photo_crops(num_images, size, rng)
    if name == "digits_to_fashion":
        digits = np.concatenate([load_split("digits", split).images for split in ("train", "test")])
        return resize(_take(digits, num_images, rng), size)
    if name in ("fashion_to_digits", "fashion_outside"):
        train = load_split("fashion_mnist", "train", data_dir)
        images = train.images
        if name == "fashion_outside":
            inside = class_balanced_indices(train.labels, victim_examples, victim_seed)
            images = np.delete(images, inside, axis=0)
        return resize(_take(images, num_images, rng), size)
    return _take(load_split(name, "train", data_dir).images, num_images, rng)


def query_set_problem(name: str, image_shape, num_images: int, victim_examples: int | None) -> str | None:
    """Why query set `name` cannot serve a victim of `image_shape` (one line), or None.

    `victim_examples` None: the victim's training subset is not known yet (not checked).
    """
    if name not in QUERY_SETS:
        return f"unknown query set {name!r}; valid: {', '.join(QUERY_SETS)}"
    if name in _GENERATED and num_images < 1:
        return f"query set {name!r} is generated: give a positive number of images, got {num_images}"
    if name.startswith("cifar") and tuple(image_shape[:2]) != (32, 32):
        fitting = ", ".join(q for q in QUERY_SETS if not q.startswith("cifar"))
        return (f"query set {name!r} has 32x32 images but the victim takes {image_shape[0]}x{image_shape[1]}; "
                f"sets that fit it: {fitting}")
    if name == "fashion_outside" and victim_examples == 0:
        return ("query set 'fashion_outside' needs the victim's training subset (config.data.train_examples > 0): "
                "with the whole Fashion-MNIST training set no image lies outside it")
    return None


def load_query_set(name: str, *, image_shape, num_images: int, seed: int, data_dir: str | None = None,
                   victim_examples: int = 0, victim_seed: int = 0) -> QuerySet:
    """Query set `name` in the victim's `image_shape` (H, W, C), `num_images` of them (0 = all).

    `seed` draws the subset (and the crops and noise); `victim_examples`/`victim_seed` give the
    victim's class-balanced training subset, which `fashion_outside` leaves out. `data_dir` is
    the data sets' directory (Fashion-MNIST IDX files; prepared CIFAR data).
    """
    image_shape = tuple(int(v) for v in image_shape)
    problem = query_set_problem(name, image_shape, num_images, victim_examples)
    if problem:
        raise ValueError(problem)
    rng = np.random.default_rng(seed)
    images = to_channels(_source(name, image_shape, num_images, rng, data_dir, victim_examples, victim_seed),
                         image_shape[2])
    return QuerySet(name, images, fingerprint_images(images))
