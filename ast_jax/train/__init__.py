"""Training engine: jitted data-parallel train steps, epochs as one `lax.scan`, checkpointed runs."""

from .loop import (LOOPS, default_loop, epoch_plan, epoch_rows, fixed_teacher_logits, make_adversarial_set,
                   make_mesh, make_predict, make_train_epoch, make_train_step, replicate)
from .optim import OPTIMIZERS, lr_schedule, make_optimizer
from .runner import NonFiniteLossError, RunResult, evaluate, fit
from .steps import PAIRINGS, STEP_KINDS, TARGET_STATISTICS, StepSpec, Teacher, TrainState, init_state, train_step

__all__ = [
    "LOOPS", "default_loop", "OPTIMIZERS", "PAIRINGS", "STEP_KINDS", "TARGET_STATISTICS", "NonFiniteLossError",
    "RunResult", "StepSpec", "Teacher", "TrainState", "epoch_plan", "epoch_rows", "evaluate", "fit",
    "fixed_teacher_logits", "init_state", "lr_schedule", "make_adversarial_set", "make_mesh", "make_optimizer",
    "make_predict", "make_train_epoch", "make_train_step", "replicate", "train_step",
]
