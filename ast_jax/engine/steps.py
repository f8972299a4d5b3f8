"""Per-device train steps: one function, nine kinds (docs/method.md §2, §10.6, §11.1-11.2).

A step kind is a pair (target, objective): the *target* is computed before differentiation
and is a constant of the update; the *objective* scores the trained model's training-mode
logits on the clean batch against it.

| kind    | target logits                                          | objective                 | `LossHypers` read |
|---------|--------------------------------------------------------|---------------------------|-------------------|
| `ce`    | none                                                   | CE                        | none              |
| `kd`    | frozen teacher, inference mode, through its transform  | `losses.kd_loss` (eq. 1)  | τ, ω              |
| `nasty` | frozen base model, inference mode                      | `losses.nasty_loss`       | τ, ω              |
| `ast`   | the trained model itself, inference mode, adversarial  | `losses.ast_loss` (eq. 5) | τ, ω, k           |
| `stt`   | the trained model itself, inference mode, clean image  | `losses.ast_loss`         | τ, ω, k           |
| `l1`    | given logits (`teacher_logits` of the batch)           | mean_k abs(logits − target) (DFME clone) | none |

Where each value comes from: what the step computes (the kind, the divergence of eq. 5, the
target's statistics, a defence's objective) is the static `StepSpec`, part of the compiled
program; a run's loss values (τ, ω, k) are the data `LossHypers`, an argument of the step
(traced, one per run in a batch of runs); the learning rate is in the optimizer state
(`optim.make_optimizer`, `opt_state.hyperparams['learning_rate']`).

The kinds `ini` and `meco` are the training-time defences' objectives (`DEFENCE_KINDS`). The
engine does not know their losses: the defence brings them as `StepSpec.objective`, an object
with a `gradients` method (`Objective`): `ast_jax.defences.ini.InISettings` (InI, docs/method.md
§11.1: four losses against a frozen, untrained clone, which the `teacher` slot holds as
`Teacher(module=clone)` with its initial variables as `teacher_variables`, on the batch and an
OOD batch `ood_image`, combined by PCGrad) and `ast_jax.defences.meco.MecoSettings` (MeCo,
docs/method.md §11.2: every forward in training mode, the worst case z by SVGD before
differentiation, perturbations drawn per example from the step's `key`). The kind `skeptical`
is the Skeptical Student's self-distilling clone (docs/method.md §10.6), whose objective
`ast_jax.attacks.skeptical.SkepticalObjective` scores the clone's three heads against the
batch's fixed `teacher_logits`; `OBJECTIVE_KINDS` are the kinds that bring an objective.

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
from typing import Any, Callable, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ast_jax import losses

#: Kinds whose objective a training-time defence brings as `StepSpec.objective` (module docstring).
DEFENCE_KINDS = ("ini", "meco")
#: Kinds whose objective comes as `StepSpec.objective`: the defences' and the Skeptical Student's.
OBJECTIVE_KINDS = (*DEFENCE_KINDS, "skeptical")
STEP_KINDS = ("ce", "kd", "ast", "stt", "nasty", "l1", *OBJECTIVE_KINDS)
PAIRINGS = ("aligned", "random")
#: Which running statistics the model's own (ast, stt) target uses, see the module docstring.
TARGET_STATISTICS = ("before_step", "after_train_forward")
#: Step kinds whose sparse target keeps `LossHypers.k` classes.
SPARSE_KINDS = ("ast", "stt")


@flax.struct.dataclass
class TrainState:
    """Everything a training run updates: a pytree, donated to each jitted epoch."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


#: `forward(running_stats, images) -> (training-mode logits, updated running statistics)`.
Forward = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


class Objective(Protocol):
    """What a training-time defence brings to the engine (`StepSpec.objective`, kinds `DEFENCE_KINDS`).

    A frozen, hashable dataclass of the defence's settings (it is part of the static `StepSpec`)
    whose `kind` names its step kind and whose `gradients` returns the update direction for
    `state.params`, the new BatchNorm statistics and the batch's metrics ({'loss', 'accuracy', ...}),
    all already averaged over `axis_name`. `share` is this device's share of the valid examples
    (`_share_of_valid_examples`).
    """

    kind: str

    def gradients(self, model: nn.Module, teacher: "Teacher | None", state: "TrainState", batch: dict, mask,
                  share, teacher_variables, key, axis_name: str | None): ...


@flax.struct.dataclass
class LossHypers:
    """A run's loss values, data of the step (scalars; traced, and one per run in a batch of runs).

    `temperature` is τ and `omega` weighs the loss's divergence term (ω of eqs. 1 and 5 and of the
    Nasty Teacher); `k` is the number of classes the sparse target keeps (`SPARSE_KINDS`; None
    for the other kinds). The kinds ce, l1, ini and meco read none of them.
    """

    temperature: Any = 1.0
    omega: Any = 0.0
    k: Any = None


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Static description of a step kind: what the compiled step computes, never a run's values.

    `divergence` is the divergence of the ast/stt loss (eq. 5, `losses.ast_loss`);
    `target_statistics` (one of `TARGET_STATISTICS`) the running statistics of the ast/stt
    target; `objective` the training-time defence's objective (`Objective`) of the kinds
    `DEFENCE_KINDS`, and None for the others. The loss values are a run's `LossHypers`.
    """

    kind: str
    divergence: str = "epd"
    target_statistics: str = "before_step"
    objective: Objective | None = None

    def __post_init__(self):
        if self.kind not in STEP_KINDS:
            raise ValueError(f"step kind must be one of {STEP_KINDS}, got {self.kind!r}")
        if self.target_statistics not in TARGET_STATISTICS:
            raise ValueError(f"target_statistics must be one of {TARGET_STATISTICS}, "
                             f"got {self.target_statistics!r}")
        if self.kind in OBJECTIVE_KINDS and getattr(self.objective, "kind", None) != self.kind:
            settings = {"ini": "ast_jax.defences.ini.InISettings", "meco": "ast_jax.defences.meco.MecoSettings",
                        "skeptical": "ast_jax.attacks.skeptical.SkepticalObjective"}
            raise ValueError(f"step kind {self.kind!r} needs its defence's objective: "
                             f"StepSpec({self.kind!r}, objective={settings[self.kind]}(...)), "
                             f"got objective={self.objective!r}")
        if self.kind not in OBJECTIVE_KINDS and self.objective is not None:
            raise ValueError(f"step kind {self.kind!r} takes no objective (only {OBJECTIVE_KINDS} do)")

    def check_hypers(self, hypers: LossHypers) -> None:
        """ValueError if `hypers` lacks a value this kind reads (k of the sparse kinds)."""
        if self.kind in SPARSE_KINDS and hypers.k is None:
            raise ValueError(f"step kind {self.kind!r} needs k, the number of classes the sparse target keeps: "
                             f"pass LossHypers(..., k=...)")

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
    `input_defense(images, key, axis_name)`, when set, changes each query before the forward pass
    with fresh randomness per query (MeCo's x + s·h(x), `ast_jax.defences.meco.input_defense`): its outputs then
    differ between queries of the same image, so they are never computed once for a whole run.
    """

    module: nn.Module
    transform: Callable[[jax.Array], jax.Array] = identity
    input_defense: Callable | None = None

    @property
    def is_random(self) -> bool:
        return self.input_defense is not None

    def logits(self, variables, images: jax.Array, key: jax.Array | None = None,
               axis_name: str | None = None) -> jax.Array:
        if self.is_random:
            if key is None:
                raise ValueError("a teacher with an input defence draws from the step's key: pass key=")
            images = self.input_defense(images, key, axis_name)
        return self.transform(self.module.apply(variables, images, train=False))


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, image_shape) -> TrainState:
    """Fresh variables for `model` on images of shape (H, W, C) and the optimizer state."""
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}), tx.init(params))


def _target_logits(spec: StepSpec, model, teacher, params, batch_stats, batch, teacher_variables, key, axis_name):
    """The constant the objective scores against (gradients stopped); `batch_stats` are the
    running statistics the model's own target (ast, stt) is computed with."""
    if spec.kind == "ce":
        return None
    if spec.needs_teacher:
        if "teacher_logits" in batch:  # the frozen teacher's outputs on these exact images, computed once
            return batch["teacher_logits"]
        return jax.lax.stop_gradient(teacher.logits(teacher_variables, batch["image"], key, axis_name))
    images = batch["adv_image"] if spec.kind == "ast" else batch["image"]
    own = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
    return jax.lax.stop_gradient(own)


def _objective(spec: StepSpec, logits, target, labels, where, hypers: LossHypers):
    temperature, omega = hypers.temperature, hypers.omega
    if spec.kind == "ce":
        return losses.batch_mean(losses.cross_entropy(logits, labels), where)
    if spec.kind == "kd":
        return losses.kd_loss(logits, target, labels, temperature, omega, where)
    if spec.kind == "nasty":
        return losses.nasty_loss(logits, target, labels, temperature, omega, where)
    if spec.kind == "l1":
        return losses.batch_mean(jnp.mean(jnp.abs(logits - target), axis=-1), where)
    return losses.ast_loss(logits, target, labels, temperature, omega, hypers.k, spec.divergence, where)


def share_of_valid_examples(mask, axis_name: str | None):
    """This device's weight in the global mean: n_local * devices / n_global (1 on one device).

    `lax.pmean` of (share * local mean over the valid examples) is then the mean over all valid
    examples of the global batch, however unevenly they are spread over the devices.
    """
    if axis_name is None:
        return 1.0
    local = jnp.sum(mask.astype(jnp.float32))
    return local * jax.lax.psum(1.0, axis_name) / jnp.maximum(jax.lax.psum(local, axis_name), 1.0)


def training_forward(model: nn.Module, params, mask) -> Forward:
    """`forward(running_stats, images) -> (training-mode logits, updated running statistics)`."""

    def forward(running_stats, images):
        logits, updates = model.apply({"params": params, "batch_stats": running_stats}, images, train=True,
                                      mask=mask, mutable=["batch_stats"])
        return logits, updates["batch_stats"]

    return forward


def _distillation_objective(spec: StepSpec, model, teacher, state: TrainState, batch, mask, teacher_variables, key,
                            hypers: LossHypers, axis_name):
    """`objective(params) -> (loss, (clean training-mode logits, batch_stats))` of the target kinds."""

    def objective(params):
        logits, batch_stats = training_forward(model, params, mask)(state.batch_stats, batch["image"])
        target_stats = batch_stats if spec.target_statistics == "after_train_forward" else state.batch_stats
        target = _target_logits(spec, model, teacher, jax.lax.stop_gradient(params), target_stats, batch,
                                teacher_variables, key, axis_name)
        return _objective(spec, logits, target, batch["label"], mask, hypers), (logits, batch_stats)

    return objective


def objective_gradients(objective, params, batch: dict, mask, share, axis_name):
    """Gradient of `objective(params) -> (loss, (clean training-mode logits, batch_stats))` at
    `params`, the new BatchNorm statistics and the metrics, averaged over `axis_name`."""
    def loss_fn(params):
        loss, aux = objective(params)
        return share * loss, aux

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    correct = jnp.argmax(logits, -1) == batch["label"]
    metrics = {"loss": loss, "accuracy": share * losses.batch_mean(correct, mask)}
    if axis_name is not None:
        grads, batch_stats, metrics = jax.lax.pmean((grads, batch_stats, metrics), axis_name)
    return grads, batch_stats, metrics


def train_step(model: nn.Module, tx: optax.GradientTransformation, spec: StepSpec, teacher: Teacher | None,
               state: TrainState, batch: dict, teacher_variables=None, key: jax.Array | None = None,
               hypers: LossHypers | None = None, *, axis_name: str | None = None):
    """One optimizer update on `batch` ({'image', 'label'[, 'mask'][, 'adv_image'][, 'teacher_logits']
    [, 'ood_image']}).

    `key` is the step's PRNG key, the same on every device, for step kinds that draw random
    numbers (per example through `example_keys`: meco's perturbations; `ini`'s PCGrad task
    orders); the other kinds ignore it. `ini` takes the frozen clone as `teacher` and its variables as
    `teacher_variables`, and the OOD batch as `ood_image`.

    Where each value comes from: the kind, divergence, target statistics and defence objective
    from `spec` (static); τ, ω and k from `hypers` (`LossHypers`, scalars, possibly traced; None:
    `LossHypers()`, enough for the kinds that read none; ast/stt without k is a ValueError); the
    learning rate from `state.opt_state` (`optim.make_optimizer` injects it). A batch of runs
    that differ only in these values therefore shares one program
    (`loop.make_train_epoch(..., batched=True)`).

    Images are in model-input space. `mask` (bool, per example; all True if absent) marks the
    valid examples; the others are padding, left out of the loss, the metrics and the BatchNorm
    statistics. `teacher_logits`, when present, are the frozen teacher's released logits on
    `image` (kd/nasty), precomputed because they cannot change: the step then skips the teacher's
    forward pass (see `loop.make_train_epoch`).

    Returns the new state and {'loss', 'accuracy'} of the batch's valid examples (training-mode
    logits; `ini` adds its four unweighted losses, see `ast_jax.defences.ini.victim_gradient`).
    """
    hypers = LossHypers() if hypers is None else hypers
    spec.check_hypers(hypers)
    mask = batch.get("mask")
    if mask is None:
        mask = jnp.ones(batch["label"].shape, bool)
    share = share_of_valid_examples(mask, axis_name)
    if spec.objective is not None:
        grads, batch_stats, metrics = spec.objective.gradients(model, teacher, state, batch, mask, share,
                                                               teacher_variables, key, axis_name)
    else:
        objective = _distillation_objective(spec, model, teacher, state, batch, mask, teacher_variables, key,
                                            hypers, axis_name)
        grads, batch_stats, metrics = objective_gradients(objective, state.params, batch, mask, share, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics
