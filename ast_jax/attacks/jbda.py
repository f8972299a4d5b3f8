"""Jacobian-based dataset augmentation (JBDA, Papernot et al.; docs/method.md §10.3).

From `seeds` labelled victim training images S (a seeded class-balanced draw; `seed_order="first"`
takes the first ones in stored order, as the reference does), drawn from the attacker's `pool`
share of the training set (`common.attacker_indices`, docs/method.md §10.6), for rounds ρ = 1..R:

1. train the clone `epochs` epochs on S (soft: KL(r ‖ σ(c)), the kd step at T = 1, ω = 1; hard: CE
   on the released label); one clone and ONE optimiser across all rounds;
2. if ρ < R: S ← S ∪ {clip_[0,1](x + λ_ρ·sign ∇_x c_ŷ(x)) : x ∈ S}, ŷ the released label of x, c the
   clone's logits in inference mode, and query the new points.

λ_ρ = λ, or λ·(−1)^⌊ρ / flip_every⌋ with Papernot's periodic sign flip (`flip_every` > 0).
`space="reference"` takes the step in the normalised input space (λ·std in pixels) as the
reference code does. |S| doubles each round: 150·2^(R−1) = 4,800 points after 6 rounds, and as many
queries; `relabel_all` re-queries all of S every round instead (150·(2^R − 1) = 9,450 queries).
A killed JBDA cell starts again from its seeds.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ast_jax.attacks.common import AttackContext, AttackResult, attacker_indices
from ast_jax.attacks.transfer import clone_step, clone_training, query_targets
from ast_jax.data import AugmentSpec, class_balanced_indices, normalize
from ast_jax.defences.blackbox import BlackBox
from ast_jax.engine import (
    evaluate,
    init_state,
    make_optimizer,
    make_predict,
    make_train_epoch,
    replicate,
    to_host,
)
from ast_jax.rng import Stream


def seed_indices(labels: np.ndarray, num: int, order: str, seed: int) -> np.ndarray:
    """The seed images: a class-balanced draw (`balanced`) or the first `num` (`first`)."""
    return class_balanced_indices(labels, num, seed) if order == "balanced" else np.arange(num)


def jacobian_step(model, variables, images01, labels, step, mean, std) -> jax.Array:
    """clip_[0,1](x + step·sign ∇_x c_y(x)) for pixel images x, the clone in inference mode.

    `step` is in pixel units (a scalar or per channel).
    """
    def chosen_logit(x):
        logits = model.apply(variables, normalize(x, mean, std), train=False)
        return jnp.sum(jnp.take_along_axis(logits, labels[:, None], axis=-1))

    return jnp.clip(images01 + step * jnp.sign(jax.grad(chosen_logit)(images01)), 0.0, 1.0)


def round_step(settings, round_index: int, std) -> np.ndarray:
    """λ_ρ in pixel units for the augmentation after round ρ = round_index (1-based)."""
    sign = (-1.0) ** (round_index // settings["flip_every"]) if settings["flip_every"] else 1.0
    scale = np.asarray(std, np.float32) if settings["space"] == "reference" else np.float32(1.0)
    return sign * settings["step"] * scale


def jbda(box: BlackBox, settings, context: AttackContext) -> AttackResult:
    """Run JBDA against `box` (see the module docstring)."""
    mesh, train, spent_before = context.mesh, context.victim_train, box.queries
    pool = attacker_indices(len(train), settings["pool"], context.seed, "jbda's pool")
    if settings["seeds"] > len(pool):
        raise ValueError(f"jbda's seeds: {settings['seeds']} seeds asked of a pool of {len(pool)} images; "
                         f"lower seeds or raise pool")
    chosen = pool[seed_indices(train.labels[pool], settings["seeds"], settings["seed_order"], context.seed)]
    images = np.asarray(train.images[chosen], np.float32) / 255.0
    released, targets = query_targets(box, images, settings["labels"])
    training = clone_training(settings)
    spec, hypers = clone_step(settings["labels"])
    constant_lr = dataclasses.replace(training, schedule="multistep", milestones=())
    tx = make_optimizer(constant_lr, 1)  # one optimiser, constant lr, across the rounds
    train_epoch = make_train_epoch(context.clone, tx, spec, mesh, batch_size=training.batch_size,
                                   augment_spec=AugmentSpec(), mean=context.mean, std=context.std)
    predict = make_predict(context.clone, mesh, batch_size=context.eval_batch_size, mean=context.mean, std=context.std)
    mean, std = jnp.asarray(context.mean, jnp.float32), jnp.asarray(context.std, jnp.float32)
    augment = jax.jit(lambda variables, x, y, step: jacobian_step(context.clone, variables, x, y, step, mean, std))
    key = jax.random.PRNGKey(context.seed)
    state = replicate(mesh, init_state(context.clone, tx, jax.random.fold_in(key, Stream.PARAMS_INIT),
                                       train.images.shape[1:]))
    history, epoch = [], 0
    for round_index in range(1, settings["rounds"] + 1):
        data = replicate(mesh, {"images": images * 255.0, "labels": released, "teacher_logits": targets})
        for _ in range(settings["epochs"]):
            state, _ = train_epoch(state, data, None, key, epoch, hypers=hypers)
            epoch += 1
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        accuracy = evaluate(predict, variables, context.test)
        history.append({"round": round_index, "epoch": epoch, "points": len(images),
                        "queries": box.queries - spent_before,
                        **accuracy})
        context.log(f"jbda round {round_index}/{settings['rounds']}: {len(images)} points, "
                    f"test accuracy {accuracy['test_accuracy']:.4f}")
        if round_index == settings["rounds"]:
            break
        new = to_host(augment(variables, jnp.asarray(images), jnp.asarray(released),
                              round_step(settings, round_index, context.std)))
        if settings["relabel_all"]:
            images = np.concatenate([images, new])
            released, targets = query_targets(box, images, settings["labels"])
        else:
            new_released, new_targets = query_targets(box, new, settings["labels"])
            images = np.concatenate([images, new])
            released, targets = np.concatenate([released, new_released]), np.concatenate([targets, new_targets])
    accuracies = [row["test_accuracy"] for row in history]
    return AttackResult(variables, box.queries - spent_before, history, accuracies[-1], max(accuracies))


__all__ = ["jacobian_step", "jbda", "round_step", "seed_indices"]
