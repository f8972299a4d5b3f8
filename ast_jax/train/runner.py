"""A training run: epochs of the jitted program, evaluation, metrics and checkpoints.

This is the edge where training meets the file system (through `ast_jax.checkpoints`); the
programs it runs are pure (`loop`, `steps`). A run resumes from its latest checkpoint: data order
and augmentation depend only on (seed, epoch) and the state is restored exactly, so a resumed
run ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from .. import checkpoints
from ..data import ArraySplit, AugmentSpec
from ..losses import cross_entropy
from .loop import fixed_teacher_logits, make_mesh, make_predict, make_train_epoch, replicate
from .optim import make_optimizer
from .steps import StepSpec, Teacher, init_state


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


@dataclasses.dataclass
class RunResult:
    variables: dict          # {'params', 'batch_stats'} after the last epoch
    history: list[dict]      # one row per evaluated epoch
    final_accuracy: float    # test accuracy after the last epoch
    best_accuracy: float     # best test accuracy over the evaluated epochs


def evaluate(predict, variables, split: ArraySplit) -> dict:
    """Accuracy and mean CE of `predict` on a whole split (host floats)."""
    logits = predict(variables, split.images)
    labels = jnp.asarray(split.labels)
    return {"test_accuracy": float(jnp.mean(jnp.argmax(logits, -1) == labels)),
            "test_loss": float(jnp.mean(cross_entropy(logits, labels)))}


def _first_non_finite(losses: np.ndarray) -> int | None:
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None


def fit(*, directory: str, record: dict, model, train_config, spec: StepSpec, seed: int, train: ArraySplit,
        test: ArraySplit, mean, std, augment_spec: AugmentSpec, adv_images=None, teacher: Teacher | None = None,
        teacher_variables=None, pairing: str = "aligned", mesh=None, loop: str = "auto",
        log: Callable[[str], None] = print) -> RunResult:
    """Train `model` with `spec` for `train_config.epochs` epochs, checkpointing into `directory`.

    `record` is the run's configuration as JSON-able dict: a directory holding another record is
    refused (checkpoints.WorkdirConflictError). `adv_images` (model-input space, aligned with
    `train`) is required by the `ast` step, `teacher`/`teacher_variables` by `kd` and `nasty`;
    without augmentation the teacher's outputs are computed once (`loop.fixed_teacher_logits`).
    `loop` picks how an epoch's steps are driven (see `loop.make_train_epoch`).
    """
    if spec.needs_adversarial and adv_images is None:
        raise ValueError("the ast step needs the adversarial training set (adv_images)")
    if spec.needs_teacher and (teacher is None or teacher_variables is None):
        raise ValueError(f"the {spec.kind} step needs a frozen teacher and its variables")
    checkpoints.claim(directory, record)
    mesh = mesh or make_mesh()
    batch_size, epochs = train_config.batch_size, train_config.epochs
    num_examples = len(train.labels)
    steps_per_epoch = -(-num_examples // batch_size)  # every example each epoch, the last batch padded
    tx = make_optimizer(train_config, steps_per_epoch)
    train_epoch = make_train_epoch(model, tx, spec, mesh, batch_size=batch_size, augment_spec=augment_spec,
                                   mean=mean, std=std, teacher=teacher, pairing=pairing, loop=loop)
    predict = make_predict(model, mesh, batch_size=train_config.eval_batch_size, mean=mean, std=std)

    key = jax.random.PRNGKey(seed)
    init = functools.partial(init_state, model, tx, jax.random.fold_in(key, 1 << 20), train.images.shape[1:])
    replicated = NamedSharding(mesh, P())
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), jax.eval_shape(init))
    mngr = checkpoints.manager(directory)
    restored = checkpoints.restore_latest(mngr, abstract)
    if restored is None:
        start, history, state = 0, [], replicate(mesh, init())
    else:
        start, state, _ = restored
        logged = checkpoints.read_metrics(directory)
        history = [row for row in logged if row["epoch"] <= start]
        if history != logged:  # drop the rows of epochs after the checkpoint: they are redone
            checkpoints.write_metrics(directory, history)
        if start < epochs:
            log(f"resuming {directory} after epoch {start}")
    teacher_variables = replicate(mesh, teacher_variables) if teacher_variables is not None else None
    data = None
    if start < epochs:
        data = {"images": train.images, "labels": train.labels}
        if spec.needs_adversarial:
            data["adv_images"] = adv_images
        data = replicate(mesh, data)
        if spec.needs_teacher and augment_spec.is_identity:
            data["teacher_logits"] = fixed_teacher_logits(teacher, teacher_variables, data["images"], mesh,
                                                          batch_size=train_config.eval_batch_size, mean=mean, std=std)
    run_start = time.perf_counter()
    tensorboard = checkpoints.tensorboard_writer(directory) if start < epochs else None
    for epoch in range(start, epochs):
        tick = time.perf_counter()
        state, metrics = train_epoch(state, data, teacher_variables, key, epoch)
        losses = np.asarray(metrics["loss"])
        bad_step = _first_non_finite(losses)
        if bad_step is not None:
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch + 1}, step {bad_step + 1} of {steps_per_epoch}; training stopped. "
                f"The last good checkpoint (epoch {mngr.latest_step() or 0}) in {directory} is kept. "
                f"Lower train.lr or the loss weight, or use float32.")
        seconds = time.perf_counter() - tick
        eta = (time.perf_counter() - run_start) / (epoch + 1 - start) * (epochs - epoch - 1)
        row = {"epoch": epoch + 1, "train_loss": float(losses.mean()),
               "train_accuracy": float(np.mean(metrics["accuracy"])), "epoch_seconds": seconds,
               "images_per_second": num_examples / seconds}
        last = epoch + 1 == epochs
        if last or (epoch + 1) % train_config.eval_every == 0:
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            row.update(evaluate(predict, variables, test))
            log(f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
                + f" eta={eta:.0f}s")
        history.append(row)
        checkpoints.write_metrics(directory, history)
        checkpoints.log_scalars(tensorboard, row)
        if last or (epoch + 1) % train_config.checkpoint_every == 0:
            checkpoints.save(mngr, epoch + 1, state, row)
    mngr.close()
    if tensorboard is not None:
        tensorboard.close()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    evaluated = [row["test_accuracy"] for row in history if "test_accuracy" in row]
    final = evaluated[-1] if evaluated else evaluate(predict, variables, test)["test_accuracy"]
    return RunResult(variables, history, final, max(evaluated, default=final))
