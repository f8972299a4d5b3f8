"""Training engine: jitted data-parallel train steps, epochs as one `lax.scan`, checkpointed runs."""

from .ini import InISettings
from .loop import (LOOPS, default_loop, epoch_plan, epoch_rows, fixed_teacher_logits, make_pgd_attack,
                   make_mesh, make_predict, make_train_epoch, make_train_step, ood_rows, replicate, to_host)
from .optim import OPTIMIZERS, lr_schedule, make_optimizer
from .runner import (NonFiniteLossError, RunData, RunInterrupted, RunResult, TrainingDivergedError, TrainingRun,
                     batch_conflicts, evaluate, fit, fit_batch)
from .steps import (HYPERS, PAIRINGS, STEP_KINDS, TARGET_STATISTICS, StepSpec, Teacher, TrainState, example_keys, init_state,
                    train_step)

__all__ = [
    "HYPERS", "InISettings", "LOOPS", "default_loop", "OPTIMIZERS", "PAIRINGS", "STEP_KINDS", "TARGET_STATISTICS",
    "NonFiniteLossError",
    "RunData", "RunInterrupted", "RunResult", "StepSpec", "Teacher", "TrainingDivergedError", "TrainingRun",
    "TrainState", "batch_conflicts", "epoch_plan", "epoch_rows", "evaluate", "example_keys", "fit", "fit_batch", "fixed_teacher_logits", "init_state",
    "lr_schedule", "make_pgd_attack", "make_mesh", "make_optimizer", "make_predict", "make_train_epoch",
    "make_train_step", "ood_rows", "replicate", "to_host", "train_step",
]
