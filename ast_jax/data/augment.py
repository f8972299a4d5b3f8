"""Pure, jittable image transforms: scaling, normalisation, train augmentation, batching.

Images are NHWC. `augment` gives example i the key `jax.random.split(key, N)[i]`; with JAX's
default `jax_threefry_partitionable=True` (the default since JAX 0.5) that key does not depend
on N, so the transform of example i depends only on (key, i): augmenting a batch or any prefix
of it with the same key gives the same result for the shared examples (tested).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ast_jax.data.specs import AugmentSpec


def to_unit_float(images_uint8, dtype=jnp.float32) -> jax.Array:
    """uint8 pixels 0..255 -> `dtype` in [0, 1] (x / 255)."""
    return jnp.asarray(images_uint8).astype(dtype) / jnp.asarray(255, dtype)


def normalize(x01, mean, std) -> jax.Array:
    """(x - mean) / std per channel (last axis); mean/std in [0, 1] pixel units."""
    x01 = jnp.asarray(x01)
    dtype = x01.dtype if jnp.issubdtype(x01.dtype, jnp.floating) else jnp.float32
    mean = jnp.asarray(mean, dtype)
    std = jnp.asarray(std, dtype)
    return (x01.astype(dtype) - mean) / std


def _crop(image, padding: int, dy, dx):
    """Zero-pads by `padding` and takes the original-size window at offset (dy, dx)."""
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)


def rotate(image, angle_radians) -> jax.Array:
    """Rotates a float (H, W, C) image counter-clockwise by `angle_radians` about its centre.

    Same convention as torchvision's `rotate` (positive = counter-clockwise, centre
    ((W-1)/2, (H-1)/2), no expansion); bilinear interpolation, zero outside the source.
    """
    image = jnp.asarray(image)
    h, w, c = image.shape
    dtype = image.dtype
    angle = jnp.asarray(angle_radians, dtype)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=dtype), jnp.arange(w, dtype=dtype), indexing="ij")
    dy, dx = ys - cy, xs - cx
    # Output pixel (y, x) samples the source at its offset rotated back (y axis points down).
    src_y = jnp.broadcast_to((cos * dy + sin * dx + cy)[..., None], (h, w, c))
    src_x = jnp.broadcast_to((cos * dx - sin * dy + cx)[..., None], (h, w, c))
    chan = jnp.broadcast_to(jnp.arange(c, dtype=dtype), (h, w, c))
    return jax.scipy.ndimage.map_coordinates(
        image, [src_y, src_x, chan], order=1, mode="constant", cval=0.0
    )


@functools.partial(jax.jit, static_argnums=2)
def augment_one(key, image_uint8, spec: AugmentSpec) -> jax.Array:
    """Augments one (H, W, C) uint8 image with its own key -> float32 in [0, 1].

    Order: random crop after zero padding, horizontal flip, rotation. All random numbers of
    the example come from one draw `u = uniform(key, (4,))`: crop offsets
    floor(u[0:2] * (2p + 1)), flip if u[2] < 1/2, angle (2 u[3] - 1) * d degrees (one
    threefry call per example keeps the compiled program small and fast).
    """
    image = jnp.asarray(image_uint8)
    u = jax.random.uniform(key, (4,), jnp.float32)
    if spec.crop_padding > 0:
        p = int(spec.crop_padding)
        offsets = jnp.minimum(jnp.floor(u[:2] * (2 * p + 1)).astype(jnp.int32), 2 * p)
        image = _crop(image, p, offsets[0], offsets[1])
    if spec.flip:
        image = jnp.where(u[2] < 0.5, image[:, ::-1, :], image)
    image = to_unit_float(image)
    if spec.rotation_degrees > 0:
        degrees = (2.0 * u[3] - 1.0) * float(spec.rotation_degrees)
        image = rotate(image, degrees * (math.pi / 180.0))
    return image


@functools.partial(jax.jit, static_argnums=2)
def augment(key, images_uint8, spec: AugmentSpec) -> jax.Array:
    """Random train augmentation of a batch (N, H, W, C) uint8 -> float32 pixels in [0, 1].

    Per-example randomness: example i uses `jax.random.split(key, N)[i]`. Identity
    (`to_unit_float`) when `spec` is all-off. Pure; jitted with `spec` static (inlined when
    called inside another jitted function).
    """
    images_uint8 = jnp.asarray(images_uint8)
    if images_uint8.ndim != 4:
        raise ValueError(f"augment expects (N, H, W, C) images, got shape {images_uint8.shape}")
    if spec.is_identity:
        return to_unit_float(images_uint8)
    keys = jax.random.split(key, images_uint8.shape[0])
    return jax.vmap(augment_one, in_axes=(0, 0, None))(keys, images_uint8, spec)


def epoch_batches(key, num_examples: int, batch_size: int) -> jax.Array:
    """A random permutation of range(num_examples) cut into (steps, batch_size) int32 rows.

    steps = num_examples // batch_size; the remainder of the permutation is dropped.
    """
    num_examples, batch_size = int(num_examples), int(batch_size)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size {batch_size} exceeds the number of examples {num_examples}; "
            "no full batch can be formed"
        )
    steps = num_examples // batch_size
    perm = jax.random.permutation(key, num_examples)
    return perm[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)
