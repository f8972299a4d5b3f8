"""Training engine: jitted data-parallel train steps, epochs as one `lax.scan`, checkpointed runs.

Built on the core (losses, models, data, adversarial); imports nothing above it. The
training-time defences (`ast_jax.defences.ini`, `ast_jax.defences.meco`) bring their own
objectives to `StepSpec.objective` (see `ast_jax.engine.steps`).
"""

from ast_jax.engine.loop import (
    LOOPS,
    epoch_plan,
    epoch_rows,
    fixed_teacher_logits,
    make_mesh,
    make_pgd_attack,
    make_predict,
    make_train_epoch,
    make_train_step,
    ood_rows,
    replicate,
    shard_examples,
    to_host,
)
from ast_jax.engine.optim import OPTIMIZERS, TrainSettings, lr_schedule, make_optimizer
from ast_jax.engine.policy import RUN_LOWERINGS, ExecutionPolicy
from ast_jax.engine.runner import (
    NonFiniteLossError,
    RunData,
    RunInterrupted,
    RunResult,
    TrainingDivergedError,
    TrainingRun,
    batch_conflicts,
    evaluate,
    fit,
    fit_batch,
)
from ast_jax.engine.steps import (
    PAIRINGS,
    SPARSE_KINDS,
    STEP_KINDS,
    TARGET_STATISTICS,
    LossHypers,
    StepSpec,
    Teacher,
    TrainState,
    init_state,
    train_step,
)

__all__ = [
    "LOOPS", "OPTIMIZERS", "PAIRINGS", "RUN_LOWERINGS", "SPARSE_KINDS", "STEP_KINDS", "TARGET_STATISTICS",
    "ExecutionPolicy", "LossHypers", "NonFiniteLossError", "RunData", "RunInterrupted", "RunResult", "StepSpec",
    "Teacher", "TrainingDivergedError", "TrainingRun", "TrainSettings", "TrainState",
    "batch_conflicts", "epoch_plan", "epoch_rows", "evaluate", "fit", "fit_batch",
    "fixed_teacher_logits", "init_state", "lr_schedule", "make_mesh", "make_optimizer", "make_pgd_attack",
    "make_predict", "make_train_epoch", "make_train_step", "ood_rows", "replicate", "shard_examples", "to_host",
    "train_step",
]
