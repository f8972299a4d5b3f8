"""Optimisers of the thesis (§5), built with optax.

SGD: momentum 0.9, PyTorch-style *coupled* weight decay (the decay is added to the gradient
before the momentum buffer: g <- g + wd * theta; b <- mu * b + g; theta <- theta - lr * b, which is
`torch.optim.SGD(momentum=mu, weight_decay=wd)` with dampening 0; with `nesterov` the step is
g + mu * b, as `torch.optim.SGD(nesterov=True)`), learning rate multiplied by `lr_decay` at each
epoch milestone. Adam (the CNN student): `torch.optim.Adam` defaults with
the same optional coupled decay and milestones.

The learning rate is a hyperparameter of the optimizer's *state* (`optax.inject_hyperparams`,
`learning_rate` in `opt_state.hyperparams`): runs that differ only in it share one update
function, and in a batch of runs (`loop.make_train_epoch(..., batched=True)`) each run's state
carries its own. The schedule is built inside the injected transformation from that value, with
the same operations as a schedule built from a constant lr, so the per-step learning rate is
bit for bit the one `lr_schedule` / `cosine_per_epoch` give.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ("sgd", "adam")
#: `multistep`: x lr_decay at each milestone epoch (the thesis); `cosine`: cosine annealing to 0 over
#: the run, updated once per epoch (the stealing attacks' clones, docs/method.md §10.3); `cosine_step`:
#: the same annealing updated every step (DCP's Knockoff clone).
SCHEDULES = ("multistep", "cosine", "cosine_step")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """One run's schedule (docs/method.md §5): the optimizer, its lr schedule, batches and epochs.

    A study's `config.train` (and each `student_train` / `teacher_train` override applied to it)
    becomes one of these at the command line; an attack builds its clone's. `milestones` are
    1-based epochs after which the lr is multiplied by `lr_decay` (`lr_schedule`); `schedule`
    `cosine` / `cosine_step` anneals instead (`cosine_per_epoch`, `cosine_per_step`: the attacks'
    clones, docs/method.md §10.3), and `nesterov` turns SGD's momentum into Nesterov's (DCP's
    Knockoff clone); a study config has neither key: its runs are multistep, plain momentum.
    `eval_every` / `checkpoint_every`: epochs between test evaluations and between checkpoints
    (the last epoch always gets both). `eval_batch_size` only sets memory use.
    """

    batch_size: int
    eval_batch_size: int
    epochs: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...]
    lr_decay: float
    checkpoint_every: int
    eval_every: int
    schedule: str = "multistep"
    nesterov: bool = False


def lr_schedule(lr: float, milestones, lr_decay: float, steps_per_epoch: int) -> optax.Schedule:
    """Piecewise-constant learning rate: lr * lr_decay^(number of milestones passed).

    The step counter is the number of optimizer updates already applied, so epoch e (0-based)
    runs at lr * lr_decay^#{m in milestones : m <= e}, like PyTorch's MultiStepLR stepped once
    per epoch; as there, a milestone listed twice decays twice.
    """
    boundaries: dict[int, float] = {}
    for milestone in milestones:
        step = int(milestone) * steps_per_epoch
        boundaries[step] = boundaries.get(step, 1.0) * lr_decay
    return optax.piecewise_constant_schedule(lr, boundaries)


def cosine_per_epoch(lr: float, epochs: int, steps_per_epoch: int) -> optax.Schedule:
    """lr·(1 + cos(π·e/epochs))/2 during epoch e (0-based), like PyTorch's CosineAnnealingLR stepped per epoch."""
    cosine = optax.cosine_decay_schedule(lr, epochs)
    return lambda step: cosine(step // steps_per_epoch)


def cosine_per_step(lr: float, epochs: int, steps_per_epoch: int) -> optax.Schedule:
    """lr·(1 + cos(π·t/T))/2 at step t (0-based), T = epochs·steps_per_epoch: PyTorch's
    CosineAnnealingLR(T_max=T) stepped after every batch."""
    return optax.cosine_decay_schedule(lr, epochs * steps_per_epoch)


def make_optimizer(train: TrainSettings, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer `train` describes (docs/method.md §5).

    Equal settings give the same object (memoised), so programs built from it are shared
    (`loop.make_train_epoch`). `train.lr` is the value `init` writes into the state; `update`
    reads the state's, so the transformation of one lr updates a state of any other."""
    momentum = train.momentum if train.optimizer == "sgd" else 0.0
    return _optimizer(train.optimizer, float(train.lr), float(momentum), float(train.weight_decay), train.schedule,
                      tuple(train.milestones), float(train.lr_decay), int(train.epochs), int(steps_per_epoch),
                      bool(train.nesterov))


@functools.lru_cache(maxsize=64)
def _optimizer(optimizer: str, lr: float, momentum: float, weight_decay: float, schedule_name: str,
               milestones: tuple, lr_decay: float, epochs: int, steps_per_epoch: int,
               nesterov: bool = False) -> optax.GradientTransformation:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"config.train.optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if schedule_name not in SCHEDULES:
        raise ValueError(f"the lr schedule must be one of {SCHEDULES}, got {schedule_name!r}")
    if schedule_name.startswith("cosine") and epochs < 1:
        raise ValueError("the cosine schedule needs the number of epochs (train config key `epochs`)")

    def scheduled(learning_rate):
        """The optimizer whose base learning rate is `learning_rate` (injected: a value of the state)."""
        if schedule_name == "cosine":
            schedule = cosine_per_epoch(learning_rate, epochs, steps_per_epoch)
        elif schedule_name == "cosine_step":
            schedule = cosine_per_step(learning_rate, epochs, steps_per_epoch)
        else:
            schedule = lr_schedule(learning_rate, milestones, lr_decay, steps_per_epoch)
        step = (optax.sgd(schedule, momentum=momentum, nesterov=nesterov) if optimizer == "sgd"
                else optax.adam(schedule))
        return optax.chain(optax.add_decayed_weights(weight_decay), step) if weight_decay else step

    return optax.inject_hyperparams(scheduled, hyperparam_dtype=jnp.float32)(learning_rate=lr)


def learning_rate(opt_state):
    """The base learning rate an optimizer state of `make_optimizer` carries (one per run in a batch)."""
    return opt_state.hyperparams["learning_rate"]


def from_constant_lr_state(inner_state, lr: float, count):
    """The state of `make_optimizer` from the state of the same optimizer built with a constant lr (how
    checkpoints stored it before the lr was injected): `inner_state` wrapped, `count` updates applied."""
    return optax.InjectStatefulHyperparamsState(count=jnp.asarray(count, jnp.int32),
                                                hyperparams={"learning_rate": np.float32(lr)},
                                                hyperparams_states={}, inner_state=inner_state)


def with_learning_rate(opt_state, lr: float):
    """`opt_state` (of `make_optimizer`) with base learning rate `lr`: a resumed run trains at the lr
    of its config, as it did when the lr was a constant of the optimizer."""
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": np.float32(lr)})
