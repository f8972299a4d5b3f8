"""Per-device train steps: one function, five objectives (SPEC §2).

A step kind is a pair (target, objective): the *target* is computed before differentiation
and is a constant of the update; the *objective* scores the trained model's training-mode
logits on the clean batch against it.

| kind    | target logits                                          | objective                 |
|---------|--------------------------------------------------------|---------------------------|
| `ce`    | none                                                   | CE                        |
| `kd`    | frozen teacher, inference mode, through its transform  | `losses.kd_loss` (eq. 1)  |
| `nasty` | frozen base model, inference mode                      | `losses.nasty_loss`       |
| `ast`   | the trained model itself, inference mode, adversarial  | `losses.ast_loss` (eq. 5) |
| `stt`   | the trained model itself, inference mode, clean image  | `losses.ast_loss`         |

"Inference mode" means BatchNorm running statistics, no statistics update, and the *current*
(pre-update) variables (SPEC §2, AST loss). The step runs on one device's shard of the batch;
with `axis_name` set it averages the gradients and metrics over that mesh axis, and the model's
BatchNorm layers (built with the same `axis_name`) average their batch statistics, so the update
equals the single-device update on the whole batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from .. import losses

STEP_KINDS = ("ce", "kd", "ast", "stt", "nasty")
PAIRINGS = ("aligned", "random")
#: BatchNorm statistics of the AST target: those from before the step, or those its clean train-mode
#: forward just updated (the reference code's order).
TARGET_STATISTICS = ("before_step", "after_train_forward")


@flax.struct.dataclass
class TrainState:
    """Everything a training run updates: a pytree, donated to each jitted epoch."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Static description of a step kind and its loss hyperparameters.

    `weight` is omega of the loss (`alpha` of kd/ast/stt, `omega` of nasty); `k` the number of
    classes the sparse target keeps (ast/stt).
    """

    kind: str
    temperature: float = 1.0
    weight: float = 0.0
    k: int | None = None
    divergence: str = "epd"

    def __post_init__(self):
        if self.kind not in STEP_KINDS:
            raise ValueError(f"step kind must be one of {STEP_KINDS}, got {self.kind!r}")
        if self.kind in ("ast", "stt") and self.k is None:
            raise ValueError(f"step kind {self.kind!r} needs k, the number of classes the sparse target keeps")

    @property
    def needs_teacher(self) -> bool:
        return self.kind in ("kd", "nasty")

    @property
    def needs_adversarial(self) -> bool:
        return self.kind == "ast"


def identity(logits: jax.Array) -> jax.Array:
    return logits


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen model queried in inference mode; `transform` maps its logits to what it releases.

    `transform` is the pluggable output defence: identity for an undefended teacher,
    `functools.partial(losses.sparse_topk, k=k)` for the Stingy Teacher. A defence that releases
    probabilities returns their logarithm (log-probabilities are valid logits).
    """

    module: nn.Module
    transform: Callable[[jax.Array], jax.Array] = identity

    def logits(self, variables, images: jax.Array) -> jax.Array:
        return self.transform(self.module.apply(variables, images, train=False))


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, image_shape) -> TrainState:
    """Fresh variables for `model` on images of shape (H, W, C) and the optimizer state."""
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}), tx.init(params))


def _target_logits(spec: StepSpec, model, teacher, state: TrainState, batch, teacher_variables):
    if spec.kind == "ce":
        return None
    if spec.needs_teacher:
        if "teacher_logits" in batch:  # the frozen teacher's outputs on these exact images, computed once
            return batch["teacher_logits"]
        return teacher.logits(teacher_variables, batch["image"])
    images = batch["adv_image"] if spec.kind == "ast" else batch["image"]
    own = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images, train=False)
    return jax.lax.stop_gradient(own)


def _objective(spec: StepSpec, logits, target, labels):
    if spec.kind == "ce":
        return jnp.mean(losses.cross_entropy(logits, labels))
    if spec.kind == "kd":
        return losses.kd_loss(logits, target, labels, spec.temperature, spec.weight)
    if spec.kind == "nasty":
        return losses.nasty_loss(logits, target, labels, spec.temperature, spec.weight)
    return losses.ast_loss(logits, target, labels, spec.temperature, spec.weight, spec.k, spec.divergence)


def train_step(model: nn.Module, tx: optax.GradientTransformation, spec: StepSpec, teacher: Teacher | None,
               state: TrainState, batch: dict, teacher_variables=None, *, axis_name: str | None = None):
    """One optimizer update on `batch` ({'image', 'label'[, 'adv_image'][, 'teacher_logits']}).

    Images are in model-input space. `teacher_logits`, when present, are the frozen teacher's
    released logits on `image` (kd/nasty), precomputed because they cannot change: the step
    then skips the teacher's forward pass (see `loop.make_train_epoch`).

    Returns the new state and {'loss', 'accuracy'} of the batch (training-mode logits).
    """
    target = _target_logits(spec, model, teacher, state, batch, teacher_variables)

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                      train=True, mutable=["batch_stats"])
        return _objective(spec, logits, target, batch["label"]), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
    if axis_name is not None:
        grads, batch_stats, metrics = jax.lax.pmean((grads, batch_stats, metrics), axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics
