"""MeCo: distributionally robust training and a randomised release (docs/method.md §11.2).

Pure and jittable pieces, each for a batch of images in the model's input (normalised) space,
NHWC:

* `perturbation`: the per-image random perturbation h(x) = ε·B₂(ε·B₁(x)) with fresh weights ω and
  ε ~ U(ε_low, ε_high) for every image (MeCo §4.2; the authors' code never trains ω, and neither
  does this module: the paper's option of training ω is not implemented);
* `svgd_step` / `dro_particles`: the DRO inner step (MeCo eq. 11), the batch's images moved as
  SVGD particles towards a worst case;
* `meco_loss`: the trained model's objective on the clean, worst-case and perturbed batches;
* `input_defense` and `utility`: the randomised release x ↦ σ(T(x + s·h(x))) behind the black box
  and its cost to a benign user.

With `axis_name` set (inside `jax.shard_map`) every function gives each device's share of the
result the whole batch gives on one device: per-example randomness comes from
`rng.example_keys`, and the SVGD kernel, which couples all examples of the batch, is computed on
the batch gathered over the mesh axis.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ast_jax import losses
from ast_jax.data import to_unit_float
from ast_jax.engine.steps import Forward, objective_gradients, training_forward
from ast_jax.models.layers import torch_default_kernel_init
from ast_jax.rng import example_keys

FORMS = ("code", "paper")
#: Channels inside each block of h (the authors' `hidden_planes`).
HIDDEN_CHANNELS = 2
#: ε of the per-image normalisation (PyTorch BatchNorm's default, on a batch of one image).
NORM_EPSILON = 1e-5
#: The SVGD bandwidth h = BANDWIDTH_FACTOR·median²/log(B + 1) (the authors' median trick).
BANDWIDTH_FACTOR = 0.05


def _nonnegative(name: str, value) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"MeCo {name} must be a number >= 0, got {value!r}")


def check_eps_range(eps_range) -> tuple[float, float]:
    """(ε_low, ε_high) as floats, refused in one line unless 0 <= ε_low <= ε_high."""
    try:
        low, high = (float(v) for v in eps_range)
    except (TypeError, ValueError):
        raise ValueError(f"MeCo eps_range must be a pair (low, high), got {eps_range!r}") from None
    if not 0 <= low <= high:
        raise ValueError(f"MeCo eps_range {eps_range!r} is not 0 <= low <= high: give (low, high), e.g. (0.3, 0.6)")
    return low, high


@dataclasses.dataclass(frozen=True)
class MecoSettings:
    """MeCo's hyperparameters (defaults: the authors' code, docs/method.md §11.2).

    `scale` s multiplies h in every use (x + s·h(x)); `eps_range` the range of ε; `dro_steps` Q and
    `step_size` η of the SVGD inner loop; `distance_weight` the 0.2 of φ's distance penalty;
    `utility_weight` the weight of the utility term (0.001 on logits in the code; the paper gives
    no value for its γ); `form` "code" or "paper" (see `meco_loss`).
    """

    scale: float = 0.5
    eps_range: tuple[float, float] = (0.3, 0.6)
    dro_steps: int = 1
    step_size: float = 1e-4
    distance_weight: float = 0.2
    utility_weight: float = 0.001
    form: str = "code"

    def __post_init__(self):
        object.__setattr__(self, "eps_range", check_eps_range(self.eps_range))
        for name in ("scale", "step_size", "distance_weight", "utility_weight"):
            _nonnegative(name, getattr(self, name))
        if not isinstance(self.dro_steps, numbers.Integral) or self.dro_steps < 0:
            raise ValueError(f"MeCo dro_steps must be an integer >= 0, got {self.dro_steps!r}")
        if self.form not in FORMS:
            raise ValueError(f"MeCo form must be one of {FORMS}, got {self.form!r}")

    @property
    def kind(self) -> str:
        """The engine's step kind of this objective (`ast_jax.engine.StepSpec.objective`)."""
        return "meco"

    def gradients(self, model, teacher, state, batch: dict, mask, share, teacher_variables, key,
                  axis_name: str | None):
        """The `meco` step's gradient (`ast_jax.engine.steps.Objective`): the worst case z
        (`dro_particles`) and h(x), h(z) (same ω, ε per example, `perturbation`) are drawn first,
        with the pre-update parameters, and are constants of the update; then the gradient of
        `meco_loss`. Every forward runs in training mode and updates the running statistics in
        turn (the authors' order). `teacher` and `teacher_variables` are not used."""
        if key is None:
            raise ValueError("the meco step draws its perturbations from the step's key: pass key= to train_step")
        images, labels = batch["image"], batch["label"]
        worst, running_stats = dro_particles(training_forward(model, state.params, mask), state.batch_stats,
                                             images, labels, mask, self, axis_name)
        h_images, h_worst = (perturbation(key, x, self.eps_range, axis_name) for x in (images, worst))

        def objective(params):
            return meco_loss(training_forward(model, params, mask), running_stats, images, worst, h_images,
                             h_worst, labels, mask, self)

        return objective_gradients(objective, state.params, batch, mask, share, axis_name)


# --- the perturbation h ------------------------------------------------------------------------


def _instance_norm(x: jax.Array) -> jax.Array:
    """(x − mean_HW x) / sqrt(var_HW x + 1e-5) per channel of one (H, W, C) image, biased variance."""
    mean = jnp.mean(x, axis=(0, 1))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1))
    return (x - mean) * jax.lax.rsqrt(var + NORM_EPSILON)


def _conv(x: jax.Array, kernel: jax.Array, dilation: int = 1) -> jax.Array:
    """Stride-1 convolution of one (H, W, C) image with an HWIO kernel, padded to keep H × W."""
    pad = dilation * (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(x[None], kernel, (1, 1), ((pad, pad), (pad, pad)),
                                        rhs_dilation=(dilation, dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)[0]


def _random_block(key: jax.Array, channels: int) -> dict:
    """One block's weights from PyTorch's default init, U(±1/√fan_in).

    The 3×3 convolution's bias is not drawn: the per-image normalisation right after it subtracts
    every channel's mean, which removes any constant bias exactly.
    """
    keys = jax.random.split(key, 3)
    shapes = {"reduce": (1, 1, channels, HIDDEN_CHANNELS), "mix": (3, 3, HIDDEN_CHANNELS, HIDDEN_CHANNELS),
              "expand": (1, 1, HIDDEN_CHANNELS, channels)}
    return {name: torch_default_kernel_init(k, shape, jnp.float32) for k, (name, shape) in zip(keys, shapes.items())}


def perturbation_parameters(key: jax.Array, channels: int, eps_range=(0.3, 0.6)) -> tuple[tuple[dict, dict], jax.Array]:
    """One image's random ω (two blocks' weights) and ε ~ U(ε_low, ε_high), from `key`."""
    low, high = check_eps_range(eps_range)
    eps_key, first, second = jax.random.split(key, 3)
    eps = jax.random.uniform(eps_key, (), jnp.float32, low, high)
    return (_random_block(first, channels), _random_block(second, channels)), eps


def _block(weights: dict, x: jax.Array) -> jax.Array:
    """Conv1×1(C→2) → IN → ReLU → Conv3×3(2→2, dilation 2, pad 2) → IN → ReLU → Conv1×1(2→C) → IN."""
    x = jax.nn.relu(_instance_norm(_conv(x, weights["reduce"])))
    x = jax.nn.relu(_instance_norm(_conv(x, weights["mix"], dilation=2)))
    return _instance_norm(_conv(x, weights["expand"]))


def perturb_image(blocks: tuple[dict, dict], eps: jax.Array, image: jax.Array) -> jax.Array:
    """h(x) = ε·B₂(ε·B₁(x)) for one (H, W, C) image (no residual connection).

    The last normalisation gives every channel of B₂'s output mean 0 and standard deviation
    √(v/(v + 1e-5)), v its variance before normalising, so h has per-channel mean 0 and standard
    deviation ε up to that factor (1 without the 1e-5; measured ≥ 0.96 on 8×8 and ≥ 0.986 on
    32×32 images).
    """
    x = jnp.asarray(image, jnp.float32)
    for weights in blocks:
        x = eps * _block(weights, x)
    return x


def perturbation(key: jax.Array, images: jax.Array, eps_range=(0.3, 0.6), axis_name: str | None = None) -> jax.Array:
    """h(x) for every image of a batch (N, H, W, C), each with its own ω and ε.

    Image i draws from `example_keys(key, N, axis_name)[i]`, so the same key gives the same h for
    the same image at the same batch position, on 1 or N devices, and the same ω and ε for two
    batches at the same positions (MeCo's training perturbs x and its worst case z alike).
    """
    check_eps_range(eps_range)
    keys = example_keys(key, images.shape[0], axis_name)

    def one(image_key, image):
        blocks, eps = perturbation_parameters(image_key, image.shape[-1], eps_range)
        return perturb_image(blocks, eps, image)

    return jax.vmap(one)(keys, images)


# --- the DRO inner step (SVGD) -----------------------------------------------------------------


def _pairwise_squared_distances(particles: jax.Array) -> jax.Array:
    """‖z_i − z_j‖² of (B, d) particles, (B, B), summed from the differences themselves.

    Not from the Gram matrix: ‖z_i‖² + ‖z_j‖² − 2 z_i·z_j cancels in float32 for the close pairs,
    the only ones whose kernel entries are not 0 (the authors compute in float64). XLA fuses the
    broadcast difference into the sum, so the (B, B, d) array is not stored.
    """
    return jnp.sum(jnp.square(particles[:, None, :] - particles[None, :, :]), axis=-1)


def _masked_median(values: jax.Array, where: jax.Array) -> jax.Array:
    """NumPy's median (mean of the two middle values for an even count) of `values[where]`."""
    count = jnp.maximum(jnp.sum(where), 1)
    ordered = jnp.sort(jnp.where(where, values, jnp.inf).ravel())
    return 0.5 * (ordered[(count - 1) // 2] + ordered[count // 2])


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b in full float32 (no TF32 or bfloat16 passes on accelerators)."""
    return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)


def svgd_update(particles: jax.Array, grads: jax.Array, step_size, mask: jax.Array | None = None) -> jax.Array:
    """One SVGD step of the whole batch, MeCo eq. 11 as the authors compute it.

    z_i ← z_i − (η/n)[Σ_j K_ij G_j + (2/h) Σ_j K_ij (z_i − z_j)], K_ij = exp(−‖z_i − z_j‖²/h),
    h = 0.05·med²/log(n + 1), med the median of the n² distances ‖z_i − z_j‖ (zero diagonal
    included), over the n valid particles (`mask`; padding enters neither K, the median nor the
    sums, and stays where it is). `particles` and `grads` are (B, d). When h = 0 (one valid
    particle, or all equal) K is its limit, 1 between equal particles and 0 otherwise, and the
    kernel term vanishes.
    """
    valid = jnp.ones(particles.shape[:1], bool) if mask is None else mask
    pairs = valid[:, None] & valid[None, :]
    count = jnp.sum(valid)
    squared = _pairwise_squared_distances(particles)
    median = _masked_median(jnp.sqrt(squared), pairs)
    bandwidth = BANDWIDTH_FACTOR * jnp.square(median) / jnp.log(count + 1.0)
    positive = bandwidth > 0
    safe_bandwidth = jnp.where(positive, bandwidth, 1.0)
    kernel = jnp.where(positive, jnp.exp(-squared / safe_bandwidth), (squared == 0).astype(squared.dtype))
    kernel = jnp.where(pairs, kernel, 0.0)
    kernel_term = jnp.where(positive, 2.0 / safe_bandwidth, 0.0) * (
        particles * jnp.sum(kernel, axis=1, keepdims=True) - _matmul(kernel, particles))
    drive = _matmul(kernel, grads) + kernel_term
    moved = particles - step_size / jnp.maximum(count, 1) * drive
    return jnp.where(valid[:, None], moved, particles)


def svgd_step(particles: jax.Array, grads: jax.Array, step_size, mask: jax.Array | None = None,
              axis_name: str | None = None) -> jax.Array:
    """`svgd_update` of a batch of images (N, ...) and their gradients G = ∇_z φ, flattened per image.

    With `axis_name` this device's shard is updated with the kernel of the whole batch: particles,
    gradients and mask are gathered over the mesh axis (`lax.all_gather`, tiled), updated as on
    one device, and this device's rows kept.
    """
    local = particles.shape[0]
    mask = jnp.ones((local,), bool) if mask is None else mask
    flat, flat_grads = particles.reshape(local, -1), grads.reshape(local, -1)
    if axis_name is not None:
        flat, flat_grads, mask = jax.lax.all_gather((flat, flat_grads, mask), axis_name, tiled=True)
    moved = svgd_update(flat, flat_grads.astype(flat.dtype), step_size, mask)
    if axis_name is not None:
        moved = jax.lax.dynamic_slice_in_dim(moved, jax.lax.axis_index(axis_name) * local, local)
    return moved.reshape(particles.shape)


def _global_sum_over_count(values: jax.Array, mask: jax.Array, axis_name: str | None) -> jax.Array:
    """Σ_valid values / n over the global batch: this device's part of the batch mean, whose
    gradient with respect to this device's inputs is that of the global batch mean."""
    count = jnp.sum(mask.astype(jnp.float32))
    if axis_name is not None:
        count = jax.lax.psum(count, axis_name)
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(count, 1.0)


def dro_particles(forward: Forward, running_stats, images, labels, mask, settings: MecoSettings,
                  axis_name: str | None = None):
    """The worst-case batch z after Q SVGD steps from z = x, and the running statistics after them.

    φ(z) = −[CE(T(z), y) − λ·mean_i ‖z_i − x_i‖²] (batch means over the valid examples, λ =
    `distance_weight`), G_i = ∇_{z_i} φ with T in training mode (each step's forward updates the
    running statistics, as the authors' loop does), then `svgd_step`. `forward` must not carry
    gradients to the parameters (the step treats z as a constant).
    """

    def phi(z, stats):
        logits, stats = forward(stats, z)
        distance = jnp.sum(jnp.square(z - images).reshape(z.shape[0], -1), axis=1)
        per_example = losses.cross_entropy(logits, labels) - settings.distance_weight * distance
        return -_global_sum_over_count(per_example, mask, axis_name), stats

    z = images
    for _ in range(settings.dro_steps):
        grads, running_stats = jax.grad(phi, has_aux=True)(z, running_stats)
        z = svgd_step(z, grads, settings.step_size, mask, axis_name)
    return z, running_stats


# --- the training objective --------------------------------------------------------------------


def _chained_forwards(forward: Forward, running_stats, *batches):
    """Training-mode logits of each batch in turn, each forward updating the running statistics."""
    outputs = []
    for images in batches:
        logits, running_stats = forward(running_stats, images)
        outputs.append(logits)
    return outputs, running_stats


def meco_loss(forward: Forward, running_stats, images, worst, h_images, h_worst, labels, mask,
              settings: MecoSettings):
    """MeCo's objective; returns (loss, (clean training-mode logits, running statistics)).

    With s = `scale`, γ = `utility_weight`, x the batch, z its worst case (`dro_particles`) and
    batch means over the valid examples:

    * `code` (the authors' code): L = CE(T(x), y) + CE(T(z + s·h(z)), y) + γ·mean_{i,k}
      |T(z + s·h(z)) − T(z)|_{ik} on logits. The code also runs T(x + s·h(x)) and discards it;
      that forward is kept for the running statistics, which the code's five training-mode
      forwards update in the order z (the SVGD gradient), x + s·h(x), z + s·h(z), z, x.
    * `paper` (Alg. 1, line 6): L = CE(T(z + s·h(z)), y) + γ·mean_i ‖σ(T(x + s·h(x))) − σ(T(x))‖₁,
      statistics updated in that order (the paper states no s: s = 1 is its reading).

    `h_images` and `h_worst` are h of x and of z with the same ω and ε per image.
    """
    s, gamma = settings.scale, settings.utility_weight

    def ce(logits):
        return losses.batch_mean(losses.cross_entropy(logits, labels), mask)

    if settings.form == "code":
        (_, perturbed, worst_logits, clean), running_stats = _chained_forwards(
            forward, running_stats, images + s * h_images, worst + s * h_worst, worst, images)
        utility = losses.batch_mean(jnp.mean(jnp.abs(perturbed - worst_logits), axis=-1), mask)
        return ce(clean) + ce(perturbed) + gamma * utility, (clean, running_stats)
    (perturbed_worst, perturbed, clean), running_stats = _chained_forwards(
        forward, running_stats, worst + s * h_worst, images + s * h_images, images)
    utility = losses.batch_mean(jnp.sum(jnp.abs(jax.nn.softmax(perturbed) - jax.nn.softmax(clean)), axis=-1), mask)
    return ce(perturbed_worst) + gamma * utility, (clean, running_stats)


# --- the randomised release ----------------------------------------------------------------------


def input_defense(settings: MecoSettings = MecoSettings()) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`defend(x, key, axis_name=None) = x + s·h(x)` on normalised images, fresh ω and ε per image
    from `key` (per example through `example_keys` over the mesh axis `axis_name`).

    The black box's input-side defence (`blackbox.victim_release(..., input_defense=...)`): the
    victim then releases σ(T(x + s·h(x))) (MeCo §4.2), and the box's per-call keys make every
    query draw anew.
    """

    def defend(images, key, axis_name=None):
        return images + settings.scale * perturbation(key, images, settings.eps_range, axis_name)

    return defend


def utility(perturbed_release, clean_release, images, labels, key, batch_size: int = 256) -> dict:
    """The randomised release's cost to a benign user over a set (MeCo §5's utility).

    `perturbed_release(x, key)` and `clean_release(x, key)` are black-box releases (probabilities
    from pixels in [0, 1]); `images` are uint8 or float pixels; batch b of `images` draws from
    `fold_in(key, b)`. Returns the mean ℓ1 distance mean_i ‖σ(T(x_i + s·h(x_i))) − σ(T(x_i))‖₁ and
    the accuracies under perturbation and clean.
    """
    if batch_size < 1:
        raise ValueError(f"utility batch_size must be a positive number of images, got {batch_size}")
    perturbed_jit, clean_jit = jax.jit(perturbed_release), jax.jit(clean_release)
    l1, correct, clean_correct = [], [], []
    for index, start in enumerate(range(0, len(labels), batch_size)):
        batch = images[start:start + batch_size]
        batch = to_unit_float(batch) if batch.dtype == np.uint8 else jnp.asarray(batch, jnp.float32)
        batch_labels = np.asarray(labels[start:start + batch_size])
        batch_key = jax.random.fold_in(key, index)
        perturbed = np.asarray(perturbed_jit(batch, batch_key), np.float64)
        clean = np.asarray(clean_jit(batch, batch_key), np.float64)
        l1.append(np.sum(np.abs(perturbed - clean), axis=-1))
        correct.append(np.argmax(perturbed, -1) == batch_labels)
        clean_correct.append(np.argmax(clean, -1) == batch_labels)
    return {"l1": float(np.mean(np.concatenate(l1))), "accuracy": float(np.mean(np.concatenate(correct))),
            "clean_accuracy": float(np.mean(np.concatenate(clean_correct)))}
