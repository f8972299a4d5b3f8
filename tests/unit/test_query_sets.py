"""The attacker's query sets (docs/method.md §10.4): shapes, determinism, disjointness, bad input."""

import numpy as np
import pytest

from ast_jax.data import class_balanced_subset, load_query_set, load_split
from ast_jax.data.query_sets import resize, to_channels

FASHION = "/usr/share/datasets/fashion-mnist"


def test_every_set_has_the_victims_shape_and_is_deterministic_per_seed():
    for name, shape in [("fashion_to_digits", (8, 8, 1)), ("digits_to_fashion", (28, 28, 1)),
                        ("photos", (8, 8, 1)), ("photos", (32, 32, 3)), ("noise", (8, 8, 1))]:
        a = load_query_set(name, image_shape=shape, num_images=40, seed=0)
        assert a.images.shape == (40, *shape) and a.images.dtype == np.uint8
        b = load_query_set(name, image_shape=shape, num_images=40, seed=0)
        np.testing.assert_array_equal(a.images, b.images)
        assert a.fingerprint == b.fingerprint
        assert load_query_set(name, image_shape=shape, num_images=40, seed=1).fingerprint != a.fingerprint
    assert len(load_query_set("digits_to_fashion", image_shape=(28, 28, 1), num_images=0, seed=0).images) == 1797


def test_fashion_outside_leaves_out_the_victims_subset():
    train = load_split("fashion_mnist", "train", FASHION)
    victim = class_balanced_subset(train, 300, seed=3)
    outside = load_query_set("fashion_outside", image_shape=(28, 28, 1), num_images=0, seed=0,
                             victim_examples=300, victim_seed=3).images
    assert len(outside) == len(train) - 300
    inside = {image.tobytes() for image in victim.images}
    outside_bytes = {image.tobytes() for image in outside}
    # every image of the victim's subset that occurs once in the training set is missing from the set
    counts = {}
    for image in train.images:
        counts[image.tobytes()] = counts.get(image.tobytes(), 0) + 1
    unique_inside = [b for b in inside if counts[b] == 1]
    assert unique_inside and not set(unique_inside) & outside_bytes


def test_resize_keeps_a_constant_image_and_shrinks_by_averaging():
    constant = np.full((2, 28, 28, 1), 77, np.uint8)
    np.testing.assert_array_equal(resize(constant, 8), np.full((2, 8, 8, 1), 77, np.uint8))
    stripes = np.zeros((1, 16, 16, 1), np.uint8)
    stripes[:, :, ::2] = 200  # one-pixel stripes average out when shrunk 4x with antialiasing
    assert np.abs(resize(stripes, 4).astype(int) - 100).max() <= 15
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[..., 1] = 100
    assert to_channels(rgb, 1)[0, 0, 0, 0] == round(0.587 * 100)


def test_photo_crops_come_from_the_photographs():
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    crops = load_query_set("photos", image_shape=(16, 16, 3), num_images=20, seed=0).images
    low = min(p.min() for p in photos)
    high = max(p.max() for p in photos)
    assert low <= crops.mean(axis=(1, 2, 3)).min() and crops.mean(axis=(1, 2, 3)).max() <= high
    assert crops.std(axis=(1, 2, 3)).max() > 5  # textured, not constant


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="imagenet", image_shape=(8, 8, 1), num_images=5), "unknown query set 'imagenet'; valid: fashion_to"),
    (dict(name="cifar10", image_shape=(8, 8, 1), num_images=5), "32x32 images but the victim takes 8x8"),
    (dict(name="noise", image_shape=(8, 8, 1), num_images=0), "generated: give a positive number"),
    (dict(name="digits_to_fashion", image_shape=(28, 28, 1), num_images=5000), "the set has 1797"),
    (dict(name="fashion_outside", image_shape=(28, 28, 1), num_images=5), "needs the victim.s training subset"),
])
def test_bad_input_is_one_line(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match) as error:
        load_query_set(name, seed=0, **kwargs)
    assert "\n" not in str(error.value)
