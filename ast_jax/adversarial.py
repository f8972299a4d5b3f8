"""Untargeted L-infinity adversarial attacks (PGD, FGSM) used to build AST's adversarial set.

PGD (thesis eq. 4), with ``L`` the softmax cross-entropy against the true labels::

    x_{t+1} = clip( Π_ε( x_t + α · sign(∇_x L(f(x_t), y)) ), lo, hi )

where ``Π_ε`` projects onto the L∞ ball of radius ε around the clean input ``x_0``
(``x_0 + clip(x - x_0, -ε, ε)``). Thesis settings: ε = 0.3, α = 0.01, 40 steps, no random
start; the attacker is the trained baseline model in inference mode. FGSM is one such step
with α = ε.

Two spaces (``space=``), see docs/method.md §2 "PGD" and §4 first bullet:

* ``"pixel"`` (project default): ``images`` are float pixels in [0, 1]; ``apply_fn`` takes
  pixel images (it normalises internally); ε and α are in pixel units; the iterate is
  clipped to [0, 1]. Returns pixel images.
* ``"reference"``: reproduces the authors' PyTorch code. ``images`` are pixels in [0, 1];
  they are normalised ``z_0 = (x - mean) / std`` and the attack runs on ``z`` with
  ``apply_fn`` taking *normalised* images; ε and α are in normalised units (ε = 0.3 is about
  0.074 in pixels). The iterate is then clamped to [0, 1] *in normalised units* — a bug of
  the reference (it squashes contrast) that produced the published numbers, kept on
  purpose. Returns the *normalised* adversarial images; ``denormalize`` maps them back.

Both spaces share one step: they differ only in the input transform. The loss is the CE
*summed* over the batch (per-example gradients are then independent of the batch size and do
not shrink by 1/n; sign(∇) is the same as with the mean). Entries with an exactly zero
gradient do not move (sign(0) = 0). Images are channels-last (..., C); ``mean``/``std`` have
length C. Everything is jittable (``steps``, ``space`` and ``random_start`` must be static
Python values) and uses ``lax.fori_loop``, so the attack can run inside ``lax.scan``.
``pgd`` is ``pgd_start`` followed by ``steps`` times ``pgd_step``; a caller that wants to drive
the iterations itself (a host loop on CPU, see ``ast_jax.engine.make_pgd_attack``) uses
those two directly.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ast_jax.losses import cross_entropy

__all__ = ["pgd", "pgd_start", "pgd_step", "fgsm", "denormalize"]

SPACES = ("pixel", "reference")
_LO, _HI = 0.0, 1.0  # valid range of the iterate in both spaces (see module docstring)


def _is_concrete(v) -> bool:
    return not isinstance(v, jax.core.Tracer)


def _check_eps(eps) -> None:
    if _is_concrete(eps) and not float(eps) >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def _ce_sum(x, apply_fn, labels):
    return jnp.sum(cross_entropy(apply_fn(x), labels))


def pgd_step(apply_fn, x, x0, labels, *, step_size, eps) -> jax.Array:
    """One PGD step (thesis eq. 4): ascend sign(∇_x CE), project onto the ε-ball around x0, clip to range.

    ``x``, ``x0`` and ``labels`` are in the attack's space, as ``pgd_start`` returns them.
    """
    g = jax.grad(_ce_sum)(x, apply_fn, labels)
    x = x + step_size * jnp.sign(g)
    x = x0 + jnp.clip(x - x0, -eps, eps)
    return jnp.clip(x, _LO, _HI).astype(x0.dtype)


def _to_space(images, labels, space, mean, std):
    """Validate the inputs and return (x0, labels) in the space the attack iterates in."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    x0 = jnp.asarray(images)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"images must be a float array in [0, 1], got dtype {x0.dtype}")
    labels = jnp.asarray(labels)
    if labels.shape != x0.shape[:1]:
        raise ValueError(f"labels must have shape {x0.shape[:1]}, got {labels.shape}")
    if space == "reference":
        if mean is None or std is None:
            raise ValueError("space='reference' needs both mean and std")
        mean = jnp.asarray(mean, dtype=x0.dtype)
        std = jnp.asarray(std, dtype=x0.dtype)
        if mean.shape != x0.shape[-1:] or std.shape != x0.shape[-1:]:
            raise ValueError(
                f"mean and std must have shape {x0.shape[-1:]} (channels last), "
                f"got {mean.shape} and {std.shape}")
        x0 = (x0 - mean) / std
    return x0, labels


def pgd(apply_fn: Callable[[jax.Array], jax.Array], images, labels, *, eps, step_size,
        steps: int, random_start: bool = False, key=None, space: str = "pixel",
        mean=None, std=None) -> jax.Array:
    """Untargeted L∞ PGD (thesis eq. 4): ``x ← clip(Π_ε(x + α·sign(∇_x CE(f(x), y))), 0, 1)``.

    Args:
      apply_fn: ``x -> logits`` with the attacker's variables bound in inference mode; takes
        pixel images for ``space="pixel"`` and normalised images for ``space="reference"``.
      images: float array (N, ..., C) of pixels in [0, 1].
      labels: int array (N,) of true labels.
      eps: radius ε of the L∞ ball (thesis 0.3), >= 0, in the units of ``space``.
      step_size: α (thesis 0.01), > 0.
      steps: number of iterations (thesis 40), static Python int >= 1.
      random_start: if True (static), start from ``clip(x0 + U[-ε, ε], 0, 1)``; needs ``key``.
        The thesis and reference do not use it.
      key: PRNG key for the random start.
      space: ``"pixel"`` (default) or ``"reference"`` (see the module docstring).
      mean, std: per-channel normalisation (length C), required for ``space="reference"``.

    Returns:
      Adversarial images with the shape of ``images``: pixels for ``"pixel"``, *normalised*
      images for ``"reference"`` (use ``denormalize`` to get pixels back).
    """
    if _is_concrete(step_size) and not float(step_size) > 0.0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a Python int >= 1, got {steps!r}")
    x, x0, labels = pgd_start(images, labels, eps=eps, random_start=random_start, key=key, space=space,
                              mean=mean, std=std)
    return jax.lax.fori_loop(
        0, steps, lambda _, x: pgd_step(apply_fn, x, x0, labels, step_size=step_size, eps=eps), x)


def pgd_start(images, labels, *, eps, random_start: bool = False, key=None, space: str = "pixel",
              mean=None, std=None):
    """The PGD starting point: ``(x, x0, labels)`` in the attack's space.

    ``x0`` is the clean input (normalised for ``space="reference"``), ``x`` the first iterate:
    ``x0`` itself, or ``clip(x0 + U[-ε, ε], 0, 1)`` with ``random_start``. Arguments as ``pgd``.
    """
    _check_eps(eps)
    if not isinstance(random_start, bool):
        raise ValueError(f"random_start must be a Python bool, got {random_start!r}")
    if random_start and key is None:
        raise ValueError("random_start=True needs a PRNG key (key=...)")
    x0, labels = _to_space(images, labels, space, mean, std)
    if not random_start:
        return x0, x0, labels
    noise = jax.random.uniform(key, x0.shape, x0.dtype, minval=-eps, maxval=eps)
    return jnp.clip(x0 + noise, _LO, _HI).astype(x0.dtype), x0, labels


def fgsm(apply_fn: Callable[[jax.Array], jax.Array], images, labels, *, eps,
         space: str = "pixel", mean=None, std=None) -> jax.Array:
    """FGSM: one PGD step of size ε from the clean image, ``clip(x + ε·sign(∇_x CE), 0, 1)``.

    Same arguments, spaces and return convention as ``pgd``; no random start.
    """
    _check_eps(eps)
    x0, labels = _to_space(images, labels, space, mean, std)
    return pgd_step(apply_fn, x0, x0, labels, step_size=eps, eps=eps)


def denormalize(z, mean, std) -> jax.Array:
    """Map normalised images (channels last) back to pixels: ``z * std + mean``.

    Note that a ``space="reference"`` result was clamped to [0, 1] in normalised units, so
    its pixels lie in ``[mean, mean + std]`` per channel, not [0, 1].
    """
    z = jnp.asarray(z)
    return z * jnp.asarray(std, z.dtype) + jnp.asarray(mean, z.dtype)
