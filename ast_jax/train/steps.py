"""Per-device train steps: one function, six objectives (docs/method.md §2, §11.1).

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
| `l1`    | given logits (`teacher_logits` of the batch)           | mean_k abs(logits − target) (DFME clone) |

The `ini` kind (InI, docs/method.md §11.1, `ini.victim_gradient`) is not a (target, objective)
pair: it combines four losses against a frozen, untrained clone (the `teacher` slot holds
`Teacher(module=clone)`, whose `transform` is not used, and `teacher_variables` the clone's
initial variables) on the batch and an OOD batch (`ood_image`), with second-order terms and
PCGrad over the per-task gradients, which are averaged over the devices before the projection.

"Inference mode" means BatchNorm running statistics, no statistics update, and the *current*
(pre-update) parameters. Which running statistics the model's own target (ast, stt) uses is
`StepSpec.target_statistics` (`TARGET_STATISTICS`): `before_step` takes those from before the
step (the thesis's reading); `after_train_forward` takes those the step's training-mode forward
on the clean batch has just updated, as the authors' `train_epoch` does (it runs the clean batch
in train mode first, then the adversarial batch in eval mode; docs/method.md §4).

A batch may carry a per-example `mask` (bool; the padding of an epoch's last partial batch is
False): padded examples enter neither the loss, the metrics nor the BatchNorm statistics. The
step runs on one device's shard of the batch; with `axis_name` set it averages the gradients and
metrics over that mesh axis, each device's mean weighted by its share of the valid examples, and
the model's BatchNorm layers (built with the same `axis_name`) sum their batch statistics over
it, so the update equals the single-device update on the whole batch's valid examples.
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
from .ini import InISettings, victim_gradient

STEP_KINDS = ("ce", "kd", "ast", "stt", "nasty", "l1", "ini")
PAIRINGS = ("aligned", "random")
#: Which running statistics the model's own (ast, stt) target uses, see the module docstring.
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

    `omega` weighs the loss's divergence term (ω of eqs. 1 and 5 and of the Nasty Teacher); `k` the number of
    classes the sparse target keeps (ast/stt); `target_statistics` (one of `TARGET_STATISTICS`)
    the running statistics of the ast/stt target; `ini` the InI settings (weights, loss forms,
    PCGrad) of the `ini` kind, ignored by the others.
    """

    kind: str
    temperature: float = 1.0
    omega: float = 0.0
    k: int | None = None
    divergence: str = "epd"
    target_statistics: str = "before_step"
    ini: InISettings = InISettings()

    def __post_init__(self):
        if self.kind not in STEP_KINDS:
            raise ValueError(f"step kind must be one of {STEP_KINDS}, got {self.kind!r}")
        if self.target_statistics not in TARGET_STATISTICS:
            raise ValueError(f"target_statistics must be one of {TARGET_STATISTICS}, "
                             f"got {self.target_statistics!r}")
        if self.kind in ("ast", "stt") and self.k is None:
            raise ValueError(f"step kind {self.kind!r} needs k, the number of classes the sparse target keeps")

    @property
    def needs_teacher(self) -> bool:
        """Whether the target comes from a frozen model's outputs (a teacher, or fixed target logits)."""
        return self.kind in ("kd", "nasty", "l1")

    @property
    def needs_adversarial(self) -> bool:
        return self.kind == "ast"

    @property
    def needs_ood(self) -> bool:
        """Whether the step takes an OOD batch (`ood_image`) and the frozen clone (`ini`)."""
        return self.kind == "ini"


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


def _target_logits(spec: StepSpec, model, teacher, params, batch_stats, batch, teacher_variables):
    """The constant the objective scores against (gradients stopped); `batch_stats` are the
    running statistics the model's own target (ast, stt) is computed with."""
    if spec.kind == "ce":
        return None
    if spec.needs_teacher:
        if "teacher_logits" in batch:  # the frozen teacher's outputs on these exact images, computed once
            return batch["teacher_logits"]
        return teacher.logits(teacher_variables, batch["image"])
    images = batch["adv_image"] if spec.kind == "ast" else batch["image"]
    own = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
    return jax.lax.stop_gradient(own)


def _objective(spec: StepSpec, logits, target, labels, where):
    if spec.kind == "ce":
        return losses.batch_mean(losses.cross_entropy(logits, labels), where)
    if spec.kind == "kd":
        return losses.kd_loss(logits, target, labels, spec.temperature, spec.omega, where)
    if spec.kind == "nasty":
        return losses.nasty_loss(logits, target, labels, spec.temperature, spec.omega, where)
    if spec.kind == "l1":
        return losses.batch_mean(jnp.mean(jnp.abs(logits - target), axis=-1), where)
    return losses.ast_loss(logits, target, labels, spec.temperature, spec.omega, spec.k, spec.divergence, where)


def _share_of_valid_examples(mask, axis_name: str | None):
    """This device's weight in the global mean: n_local * devices / n_global (1 on one device).

    `lax.pmean` of (share * local mean over the valid examples) is then the mean over all valid
    examples of the global batch, however unevenly they are spread over the devices.
    """
    if axis_name is None:
        return 1.0
    local = jnp.sum(mask.astype(jnp.float32))
    return local * jax.lax.psum(1.0, axis_name) / jnp.maximum(jax.lax.psum(local, axis_name), 1.0)


def example_keys(key: jax.Array, local_batch: int, axis_name: str | None = None) -> jax.Array:
    """One PRNG key per example of this device's shard: `fold_in(key, global position)`.

    The position counts over the whole batch (device d's shard starts at d * local_batch), so
    example i draws the same numbers on 1 or N devices.
    """
    start = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(local_batch))


def _objective_gradients(model, spec: StepSpec, teacher, state: TrainState, batch: dict, mask, share,
                         teacher_variables, axis_name):
    """Gradient of the (target, objective) kinds' loss, the new BatchNorm statistics and the
    metrics, averaged over `axis_name`."""
    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                      train=True, mask=mask, mutable=["batch_stats"])
        target_stats = updates["batch_stats"] if spec.target_statistics == "after_train_forward" else state.batch_stats
        target = _target_logits(spec, model, teacher, jax.lax.stop_gradient(params), target_stats, batch,
                                teacher_variables)
        loss = _objective(spec, logits, target, batch["label"], mask)
        return share * loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    correct = jnp.argmax(logits, -1) == batch["label"]
    metrics = {"loss": loss, "accuracy": share * losses.batch_mean(correct, mask)}
    if axis_name is not None:
        grads, batch_stats, metrics = jax.lax.pmean((grads, batch_stats, metrics), axis_name)
    return grads, batch_stats, metrics


def train_step(model: nn.Module, tx: optax.GradientTransformation, spec: StepSpec, teacher: Teacher | None,
               state: TrainState, batch: dict, teacher_variables=None, key: jax.Array | None = None, *,
               axis_name: str | None = None):
    """One optimizer update on `batch` ({'image', 'label'[, 'mask'][, 'adv_image'][, 'teacher_logits']
    [, 'ood_image']}).

    `key` is the step's PRNG key, the same on every device, for step kinds that draw random
    numbers (per example through `example_keys`; `ini`'s PCGrad task orders); the other kinds
    ignore it. `ini` takes the frozen clone as `teacher` and its variables as
    `teacher_variables`, and the OOD batch as `ood_image`.

    Images are in model-input space. `mask` (bool, per example; all True if absent) marks the
    valid examples; the others are padding, left out of the loss, the metrics and the BatchNorm
    statistics. `teacher_logits`, when present, are the frozen teacher's released logits on
    `image` (kd/nasty), precomputed because they cannot change: the step then skips the teacher's
    forward pass (see `loop.make_train_epoch`).

    Returns the new state and {'loss', 'accuracy'} of the batch's valid examples (training-mode
    logits; `ini` adds its four unweighted losses, see `ini.victim_gradient`).
    """
    mask = batch.get("mask")
    if mask is None:
        mask = jnp.ones(batch["label"].shape, bool)
    share = _share_of_valid_examples(mask, axis_name)
    if spec.needs_ood:
        if teacher is None or teacher_variables is None:
            raise ValueError("the ini step needs the frozen clone: teacher=Teacher(module=clone) and the clone's "
                             "initial variables as teacher_variables")
        grads, batch_stats, metrics = victim_gradient(model, teacher.module, state.params, state.batch_stats,
                                                      teacher_variables, batch, mask, share, key, spec.ini, axis_name)
    else:
        grads, batch_stats, metrics = _objective_gradients(model, spec, teacher, state, batch, mask, share,
                                                           teacher_variables, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics
