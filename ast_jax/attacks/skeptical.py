"""The Skeptical Student (Kundu et al., NeurIPS 2021; docs/method.md §10.6).

The clone is a self-distilling ResNet (`models.create_self_distilling`: the trunk of `clone`
with two auxiliary heads). The attacker's share of the victim's training images (`budget`) is
queried once each for probabilities; the clone trains on them without augmentation with
`losses.skeptical_loss` (the teacher reaches only head 2 after stage 2), or with CE(s_0, y) alone
during its first `kd_delay` epochs. The step is the engine's (`StepSpec("skeptical",
objective=SkepticalObjective(...))`), the training loop `engine.fit`'s. The released clone is the
trunk with its final head: the auxiliary heads are dropped (`models.trunk_variables`), so the
matrix evaluates a plain `clone` network.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ast_jax import losses
from ast_jax.attacks.common import AttackContext, AttackResult
from ast_jax.attacks.transfer import attacker_data, distil, transfer_set
from ast_jax.defences.blackbox import BlackBox
from ast_jax.engine import LossHypers, StepSpec
from ast_jax.engine.steps import objective_gradients
from ast_jax.models import create_self_distilling, trunk_variables


@dataclasses.dataclass(frozen=True)
class SkepticalObjective:
    """The `skeptical` step's objective (`ast_jax.engine.steps.Objective`): `losses.skeptical_loss`
    of the clone's three training-mode heads against the batch's fixed `teacher_logits` (the
    attacker's target logits log p′), or CE(s_0, y) alone while the step count is below
    `delay_steps` (kd_delay epochs of steps)."""

    temperature: float
    omega: float
    delay_steps: int = 0

    @property
    def kind(self) -> str:
        return "skeptical"

    def gradients(self, model, teacher, state, batch: dict, mask, share, teacher_variables, key,
                  axis_name: str | None):
        def objective(params):
            (s0, s1, s2), updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                                train=True, mask=mask, heads=True, mutable=["batch_stats"])
            full = losses.skeptical_loss(s0, s1, s2, batch["teacher_logits"], batch["label"], self.temperature,
                                         self.omega, mask)
            warmup = losses.batch_mean(losses.cross_entropy(s0, batch["label"]), mask)
            return jnp.where(state.step < self.delay_steps, warmup, full), (s0, updates["batch_stats"])

        return objective_gradients(objective, state.params, batch, mask, share, axis_name)


def skeptical(box: BlackBox, settings, context: AttackContext) -> AttackResult:
    """Train the Skeptical Student against `box` (see the module docstring)."""
    data = attacker_data(settings, context)
    transfer, queries = transfer_set(box, data.images, "soft", context.directory)
    clone = context.clone
    model = create_self_distilling(settings["clone"], clone.num_classes, clone.dtype, clone.axis_name)
    steps_per_epoch = -(-len(data) // settings["batch_size"])
    spec = StepSpec("skeptical", objective=SkepticalObjective(float(settings["temperature"]), float(settings["omega"]),
                                                              settings["kd_delay"] * steps_per_epoch))
    result = distil(transfer, spec, LossHypers(), settings, context, queries, true_labels=data.labels, model=model)
    return dataclasses.replace(result, variables=trunk_variables(result.variables))


__all__ = ["SkepticalObjective", "skeptical"]
