"""Data-free model extraction (DFME, Truong et al.; MAZE as a variant; docs/method.md §10.3).

A generator G maps noise z ~ N(0, I) to a = G(z); tanh(a) is the victim's *normalised* input,
so the pixels sent to the box are mean + std·tanh(a). Each iteration (batch N, fresh z):

1. Generator step: the per-sample disagreement L(a) = −(1/K) Σ_k |c_k − t_k| between the clone's
   logits c (inference mode) and the victim's recovered logits t = ℓ − mean_k ℓ,
   ℓ = log max(p′, 1e-12). G ascends the disagreement with a zeroth-order estimate of ∂L/∂a:
   m directions u uniform on the unit sphere of R^d (d = C·H·W), step ε,
   ĝ = (d/m) Σ_u [(L(a + εu) − L(a)) / ε]·u / (K·N) (the extra 1/K of the authors' code).
   The N·(m+1) query images go to the box in one call; ĝ is back-propagated through G (Jᵀĝ,
   `jax.vjp`) and G takes an Adam step (lr_G).
2. Clone steps (`clone_steps`, 5): on fresh samples, mean_{n,k} |c_k − t_k| (the `l1` train step), SGD.

Queries per iteration: N·((m + 1) + clone_steps) (1,792 at N = 256, m = 1). An epoch is
`iterations_per_epoch` iterations; epochs = ⌊Q / (iterations_per_epoch · cost)⌋ + 1; the attack stops
when less than one iteration's queries remain, and both learning rates are multiplied by
`lr_decay` (0.3) at the `lr_milestones` fractions (10/30/50 %) of the epochs (`decay_schedule`, the
reference's schedule exactly). The generator's BatchNorm always normalises with the batch's statistics.

`variant="maze"`: L = −KL(p′ ‖ σ(c)) per sample (no 1/(K·N)), the clone minimises KL(p′ ‖ σ(c))
(the kd step at T = 1, ω = 1), and the generator takes SGD steps (momentum 0.9, weight decay
5e-4); MAZE's m = 10 and N = 128 are settings. A killed DFME cell starts again.

On a mesh of several devices the clone steps are data-parallel (`make_train_step`), while the
generator's forward passes and its update run replicated, each device on the whole batch (the
generator's BatchNorm needs the whole batch's statistics); `ast-jax plan` plans that update.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ast_jax import losses
from ast_jax.attacks.common import AttackContext, AttackResult
from ast_jax.attacks.transfer import attacker_logits
from ast_jax.defences.blackbox import BlackBox
from ast_jax.engine import (
    LossHypers,
    StepSpec,
    evaluate,
    init_state,
    lr_schedule,
    make_predict,
    make_train_step,
    replicate,
    to_host,
)
from ast_jax.rng import ITERATION_DIRECTIONS, Stream

LOG_CLAMP = 1e-12


class Generator(nn.Module):
    """DFME's generator: noise (N, nz) -> a (N, H, W, C), BatchNorm with batch statistics throughout."""

    image_shape: tuple
    ngf: int = 64

    @nn.compact
    def __call__(self, z):
        height, width, channels = self.image_shape
        if height % 4 or width % 4:
            raise ValueError(f"the DFME generator needs image sides divisible by 4, got {height}x{width}")

        def norm(x, affine=True):
            return nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, use_bias=affine,
                                use_scale=affine)(x)

        def upsample(x):
            return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)

        x = nn.Dense(2 * self.ngf * (height // 4) * (width // 4))(z)
        x = norm(x.reshape(z.shape[0], height // 4, width // 4, 2 * self.ngf))
        x = nn.leaky_relu(norm(nn.Conv(2 * self.ngf, (3, 3))(upsample(x))), 0.2)
        x = nn.leaky_relu(norm(nn.Conv(self.ngf, (3, 3))(upsample(x))), 0.2)
        return norm(nn.Conv(channels, (3, 3))(x), affine=False)


def sphere_directions(key, m: int, shape) -> jax.Array:
    """m·N directions uniform on the unit sphere of R^d, d = prod(shape[1:]): (m, *shape)."""
    u = jax.random.normal(key, (m, *shape))
    return u / jnp.sqrt(jnp.sum(u * u, axis=tuple(range(2, u.ndim)), keepdims=True))


def probe_points(a: jax.Array, u: jax.Array, epsilon: float) -> jax.Array:
    """The N·(m+1) points a, a + εu_1, ..., a + εu_m, stacked (m+1, N, ...)."""
    return jnp.concatenate([a[None], a[None] + epsilon * u])


def zeroth_order_gradient(losses: jax.Array, u: jax.Array, epsilon: float) -> jax.Array:
    """(d/m) Σ_j [(L(a + εu_j) − L(a)) / ε]·u_j from per-sample losses (m+1, N) at `probe_points`."""
    m, d = u.shape[0], math.prod(u.shape[2:])
    slopes = (losses[1:] - losses[:1]) / epsilon
    return (d / m) * jnp.sum(slopes.reshape(*slopes.shape, *(1,) * (u.ndim - 2)) * u, axis=0)


def recovered_logits(released: jax.Array) -> jax.Array:
    """t = ℓ − mean_k ℓ with ℓ = log max(p′, 1e-12): the victim's logits up to a constant when undefended."""
    logs = jnp.log(jnp.maximum(released, LOG_CLAMP))
    return logs - jnp.mean(logs, axis=-1, keepdims=True)


def disagreement(clone_logits, released, variant: str) -> jax.Array:
    """Per-sample L (the generator maximises −L): mean_k |c − t| (dfme) or KL(p′ ‖ σ(c)) (maze)."""
    if variant == "maze":
        return losses.kl_to_logits(released / jnp.sum(released, axis=-1, keepdims=True), clone_logits)
    return jnp.mean(jnp.abs(clone_logits - recovered_logits(released)), axis=-1)


def iteration_cost(settings) -> int:
    """Queries per iteration: N·((m + 1) + clone_steps)."""
    return settings["batch_size"] * (settings["directions"] + 1 + settings["clone_steps"])


def schedule_plan(settings) -> tuple[int, int, list[int]]:
    """(iterations, epochs, milestone epochs) for the budget: the milestones int(f·epochs) of the
    `lr_milestones` fractions f, sorted, coinciding ones kept (each one decays)."""
    cost = iteration_cost(settings)
    iterations = settings["budget"] // cost
    epochs = settings["budget"] // (settings["iterations_per_epoch"] * cost) + 1
    return iterations, epochs, sorted(int(fraction * epochs) for fraction in settings["lr_milestones"])


def decay_schedule(settings, lr: float, steps_per_iteration: int) -> optax.Schedule:
    """The learning rate at each optimizer step (`steps_per_iteration` steps per iteration), the
    reference's `MultiStepLR` exactly.

    The authors' code (cake-lab/datafree-model-extraction, dfme/train.py) builds
    `MultiStepLR(optimizer, milestones, 0.3)` and calls `scheduler.step()` at the *start* of each
    epoch e = 1, 2, ...; PyTorch counts milestones with multiplicity (a milestone listed twice
    decays twice) and its constructor already applies a milestone at 0. So epoch i (0-based) runs at
    lr·lr_decay^#{m ∈ milestones : m ≤ i + 1}: a milestone m decays from 0-based epoch max(m − 1, 0),
    one epoch before the count of finished epochs reaches m, and milestones that coincide at
    small budgets (int(0.1·4) = int(0.3·4) = 0) multiply their decays (`optim.lr_schedule`).
    """
    shifted = [max(milestone - 1, 0) for milestone in schedule_plan(settings)[2]]
    return lr_schedule(lr, shifted, settings["lr_decay"], settings["iterations_per_epoch"] * steps_per_iteration)


def clone_optimizer(settings) -> optax.GradientTransformation:
    """The clone's SGD (momentum, weight decay), its lr decayed at the schedule's iterations (`clone_steps` steps each)."""
    return optax.chain(optax.add_decayed_weights(settings["weight_decay"]),
                       optax.sgd(decay_schedule(settings, settings["clone_lr"], settings["clone_steps"]),
                                 momentum=settings["momentum"]))


def generator_optimizer(settings) -> optax.GradientTransformation:
    """The generator's optimizer: Adam (dfme) or SGD with momentum and weight decay (maze), its lr
    decayed at the schedule's iterations (one step each)."""
    lr = decay_schedule(settings, settings["generator_lr"], 1)
    if settings["variant"] == "dfme":
        return optax.adam(lr)
    return optax.chain(optax.add_decayed_weights(settings["weight_decay"]),
                       optax.sgd(lr, momentum=settings["momentum"]))


def iteration_noise(key, iteration, index: int, batch: int, nz: int) -> jax.Array:
    """The noise z of draw `index` of an iteration (0: the generator step, 1..: the clone steps)."""
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, iteration), index), (batch, nz))


def iteration_directions(key, iteration, m: int, shape) -> jax.Array:
    """The iteration's m directions per sample of the generator's batch of `shape` (`sphere_directions`)."""
    return sphere_directions(jax.random.fold_in(jax.random.fold_in(key, iteration), ITERATION_DIRECTIONS), m, shape)


def make_generator_update(generator: nn.Module, clone: nn.Module, settings, num_classes: int) -> Callable:
    """Step 1 of an iteration (module docstring) as a pure function
    `update(g_params, g_opt, clone_variables, key, iteration, points, released) -> (g_params, g_opt)`:
    the clone's logits at the (m+1, N, ...) probe `points` against the box's `released` outputs
    there, the zeroth-order estimate of ∂L/∂a pulled back through G, one step of
    `generator_optimizer(settings)`."""
    batch, m, epsilon, variant = (settings[key] for key in ("batch_size", "directions", "fd_epsilon", "variant"))
    g_tx = generator_optimizer(settings)

    def update(g_params, g_opt, clone_variables, key, iteration, points, released):
        logits = clone.apply(clone_variables, jnp.tanh(points).reshape(-1, *points.shape[2:]), train=False)
        per_sample = -disagreement(logits, released, variant).reshape(m + 1, -1)
        estimate = zeroth_order_gradient(per_sample, iteration_directions(key, iteration, m, points.shape[1:]), epsilon)
        if variant == "dfme":
            estimate = estimate / (num_classes * batch)
        z = iteration_noise(key, iteration, 0, batch, settings["nz"])
        _, pullback = jax.vjp(lambda p: generator.apply({"params": p}, z, mutable=["batch_stats"])[0], g_params)
        updates, g_opt = g_tx.update(pullback(estimate)[0], g_opt, g_params)
        return optax.apply_updates(g_params, updates), g_opt

    return update


def clone_objective(variant: str) -> tuple[StepSpec, LossHypers]:
    """The clone step: mean_{n,k} |c_k − t_k| (`l1`, dfme), or KL(p′ ‖ σ(c)) (kd at T = 1, ω = 1, maze)."""
    if variant == "maze":
        return StepSpec("kd"), LossHypers(temperature=1.0, omega=1.0)
    return StepSpec("l1"), LossHypers()


def _released(box: BlackBox, pixels) -> jax.Array:
    """The box's release; a labels-only box's labels as one-hot vectors."""
    if box.labels_only:
        return jax.nn.one_hot(box.labels(pixels), box.num_classes)
    return box.probabilities(pixels)


def dfme(box: BlackBox, settings, context: AttackContext) -> AttackResult:
    """Run DFME (or MAZE) against `box` within `settings['budget']` queries."""
    mesh, spent_before = context.mesh, box.queries
    image_shape = tuple(context.test.images.shape[1:])
    batch, m, epsilon, variant = settings["batch_size"], settings["directions"], settings["fd_epsilon"], settings["variant"]
    iterations = schedule_plan(settings)[0]
    mean, std = jnp.asarray(context.mean, jnp.float32), jnp.asarray(context.std, jnp.float32)
    key = jax.random.PRNGKey(context.seed)

    generator = Generator(image_shape, settings["ngf"])
    g_params = generator.init(jax.random.fold_in(key, Stream.GENERATOR_INIT), jnp.zeros((2, settings["nz"])))["params"]
    g_opt = generator_optimizer(settings).init(g_params)
    c_tx = clone_optimizer(settings)
    state = replicate(mesh, init_state(context.clone, c_tx, jax.random.fold_in(key, Stream.PARAMS_INIT), image_shape))
    clone_spec, clone_hypers = clone_objective(variant)
    clone_step = jax.jit(make_train_step(context.clone, c_tx, clone_spec, mesh), donate_argnums=(0,))
    generator_update = jax.jit(make_generator_update(generator, context.clone, settings, box.num_classes),
                               donate_argnums=(0, 1))

    def generate(g_params, z):
        return generator.apply({"params": g_params}, z, mutable=["batch_stats"])[0]

    def noise(iteration, index):
        return iteration_noise(key, iteration, index, batch, settings["nz"])

    @jax.jit
    def probes(g_params, iteration):
        a = generate(g_params, noise(iteration, 0))
        points = probe_points(a, iteration_directions(key, iteration, m, a.shape), epsilon)
        return points, mean + std * jnp.tanh(points).reshape(-1, *image_shape)

    @jax.jit
    def clone_batch(g_params, iteration, index):
        images = jnp.tanh(generate(g_params, noise(iteration, index)))
        return images, mean + std * images

    predict = make_predict(context.clone, mesh, batch_size=context.eval_batch_size, mean=context.mean, std=context.std)
    history = []
    targets = (lambda released: attacker_logits(to_host(released))) if variant == "maze" else jax.jit(recovered_logits)
    labels = jnp.zeros(batch, jnp.int32)  # unused by the l1 and kd(omega=1) objectives
    for iteration in range(iterations):
        points, pixels = probes(g_params, iteration)
        g_params, g_opt = generator_update(g_params, g_opt, {"params": state.params, "batch_stats": state.batch_stats},
                                           key, iteration, points, _released(box, pixels))
        for index in range(1, settings["clone_steps"] + 1):
            images, pixels = clone_batch(g_params, iteration, index)
            step_batch = {"image": images, "label": labels, "teacher_logits": targets(_released(box, pixels))}
            state, _ = clone_step(state, step_batch, None, None, clone_hypers)
        if (iteration + 1) % settings["iterations_per_epoch"] == 0 or iteration + 1 == iterations:
            accuracy = evaluate(predict, {"params": state.params, "batch_stats": state.batch_stats}, context.test)
            history.append({"epoch": len(history) + 1, "iteration": iteration + 1,
                            "queries": box.queries - spent_before, **accuracy})
            context.log(f"dfme iteration {iteration + 1}/{iterations}: queries {box.queries - spent_before}, "
                        f"test accuracy {accuracy['test_accuracy']:.4f}")
    accuracies = [row["test_accuracy"] for row in history]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return AttackResult(variables, box.queries - spent_before, history, accuracies[-1], max(accuracies))


__all__ = ["Generator", "clone_objective", "clone_optimizer", "decay_schedule", "dfme", "disagreement",
           "generator_optimizer", "iteration_cost", "iteration_directions", "iteration_noise", "make_generator_update",
           "probe_points", "recovered_logits",
           "schedule_plan", "sphere_directions", "zeroth_order_gradient"]
