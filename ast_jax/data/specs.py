"""Static descriptions of the supported data sets (no I/O, no heavy imports)."""

from __future__ import annotations

import dataclasses

DATASETS: tuple[str, ...] = ("digits", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet")

# Names of the data sets that are read from prepared TFDS ArrayRecord data.
TFDS_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "tiny_imagenet")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """Train-time augmentation, applied per example inside jit (see `augment.augment`).

    Frozen and hashable, so it can be a static argument of a jitted function.

    Attributes:
        crop_padding: zero-pad every side by this many pixels, then take a random crop of the
            original size (torchvision `RandomCrop(size, padding=p)`); 0 disables it.
        flip: random horizontal flip with probability 1/2.
        rotation_degrees: random rotation by an angle drawn uniformly from [-d, d] about the
            image centre, bilinear interpolation, zero fill outside the source; 0 disables it.
    """

    crop_padding: int = 0
    flip: bool = False
    rotation_degrees: float = 0.0

    def __post_init__(self):
        if int(self.crop_padding) != self.crop_padding or self.crop_padding < 0:
            raise ValueError(
                f"crop_padding must be a non-negative integer, got {self.crop_padding!r}"
            )
        if not self.rotation_degrees >= 0:
            raise ValueError(f"rotation_degrees must be >= 0, got {self.rotation_degrees!r}")

    @property
    def is_identity(self) -> bool:
        return self.crop_padding == 0 and not self.flip and self.rotation_degrees == 0


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a data set.

    `mean`/`std` are per channel, in pixel units scaled to [0, 1], and are what `normalize`
    should be called with. `augment` is the reference's default train augmentation.
    """

    name: str
    num_classes: int
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)


# CIFAR mean/std as in the authors' code (docs/method.md §4), used for CIFAR-10 *and* CIFAR-100.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.247, 0.243, 0.261)

_SPECS = {
    # scikit-learn digits, 8x8 grey. Statistics of the fixed stratified train split
    # (1,437 images, values round(v * 255 / 16) / 255); checked against the data by the tests.
    "digits": DatasetSpec(
        name="digits",
        num_classes=10,
        image_size=8,
        channels=1,
        mean=(0.3054,),
        std=(0.3760,),
        augment=AugmentSpec(),
    ),
    # Fashion-MNIST 28x28 grey; statistics of the 60k train images. The thesis does not use
    # Fashion-MNIST, so there is no reference augmentation: off by default.
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        num_classes=10,
        image_size=28,
        channels=1,
        mean=(0.2860,),
        std=(0.3530,),
        augment=AugmentSpec(),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        num_classes=10,
        image_size=32,
        channels=3,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        augment=AugmentSpec(crop_padding=4, flip=True),
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        num_classes=100,
        image_size=32,
        channels=3,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        augment=AugmentSpec(crop_padding=4, flip=True),
    ),
    "tiny_imagenet": DatasetSpec(
        name="tiny_imagenet",
        num_classes=200,
        image_size=64,
        channels=3,
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2302, 0.2265, 0.2262),
        augment=AugmentSpec(flip=True, rotation_degrees=20.0),
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    """Returns the static `DatasetSpec` of `name`; ValueError for an unknown name."""
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown dataset {name!r}; expected one of {DATASETS}.") from None
