"""A training run: epochs of the jitted program, evaluation, metrics and checkpoints.

This is the edge where training meets the file system (through `ast_jax.checkpoints`); the
programs it runs are pure (`loop`, `steps`). A run resumes from its latest checkpoint: the
state's step counter says which epoch and step come next, data order and augmentation depend
only on (seed, epoch) and the state is restored exactly, so a resumed run ends with the same
parameters as an uninterrupted one, whether it stopped between epochs or inside one.

Stopping: SIGINT or SIGTERM during `fit` saves a checkpoint at the next step boundary (host
loop: after the current step; scan loop: after the current epoch, which is one program) and
raises `RunInterrupted`, whose `exit_code` is 130 or 143. Divergence: see `check_losses`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from .. import checkpoints
from ..data import ArraySplit, AugmentSpec
from ..losses import cross_entropy
from ..rng import Stream
from .loop import (fixed_teacher_logits, make_mesh, make_predict, make_train_epoch, replicate,
                   steps_per_epoch as epoch_steps, to_host)
from .optim import make_optimizer
from .steps import StepSpec, Teacher, init_state

DIVERGENCE_FACTOR = 1e3
"""A step's loss above this many times max(1, |the run's first step's loss|) stops the run."""

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainingDivergedError(ValueError):
    """Training produced an exploding or non-finite loss; no checkpoint of the diverged state is saved."""


class NonFiniteLossError(TrainingDivergedError):
    """Training produced a NaN or infinite loss."""


class RunInterrupted(Exception):
    """A signal stopped the run after its state was checkpointed; `exit_code` = 128 + the signal number."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = SIGNAL_EXIT_CODES.get(signal_number, 128 + signal_number)


@dataclasses.dataclass(frozen=True)
class RunData:
    """The data a run trains and evaluates on.

    `train`/`test`: uint8 images and labels; `mean`/`std`: per-channel normalisation;
    `adv_images`: the adversarial training set in model-input space, aligned with `train`
    (the `ast` step); `pairing`: how clean and adversarial images are paired (`loop.make_train_epoch`);
    `targets`: fixed target logits aligned with `train` (N, classes), e.g. the log-probabilities a
    black box released for a stealing attack's transfer set: the kd and l1 steps then need no
    teacher (only without augmentation, since the targets belong to the un-augmented images);
    `ood_images`: the out-of-distribution set in model-input space, any number of images of the
    training images' shape (the `ini` step, cycled by `loop.ood_rows`).
    """

    train: ArraySplit
    test: ArraySplit
    mean: tuple
    std: tuple
    augment_spec: AugmentSpec
    adv_images: np.ndarray | None = None
    pairing: str = "aligned"
    targets: np.ndarray | None = None
    ood_images: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """One training run: what is trained (`model`, `train_config`, `seed`), with what step
    (`spec`), on what data (`data`), from what frozen teacher (`teacher`, `teacher_variables`:
    the `kd` and `nasty` steps), and where (`directory`, holding `record`, the run's config as
    a JSON-able dict; a directory holding another record is refused)."""

    directory: str
    record: dict
    model: object
    train_config: object
    spec: StepSpec
    seed: int
    data: RunData
    teacher: Teacher | None = None
    teacher_variables: dict | None = None


@dataclasses.dataclass
class RunResult:
    variables: dict          # {'params', 'batch_stats'} after the last epoch
    history: list[dict]      # one row per epoch
    final_accuracy: float    # test accuracy after the last epoch
    best_accuracy: float     # best test accuracy over the evaluated epochs


def evaluate(predict, variables, split: ArraySplit) -> dict:
    """Accuracy and mean CE of `predict` on a whole split (host floats)."""
    logits = jnp.asarray(to_host(predict(variables, split.images)))
    labels = jnp.asarray(split.labels)
    return {"test_accuracy": float(jnp.mean(jnp.argmax(logits, -1) == labels)),
            "test_loss": float(jnp.mean(cross_entropy(logits, labels)))}


def check_losses(losses: np.ndarray, reference: float, where: Callable[[int], str], kept: str) -> None:
    """Raise if a step's loss is non-finite, or above DIVERGENCE_FACTOR x max(1, |reference|).

    `reference` is the loss of the run's first step (from the initial parameters, so sane by
    construction); `where(i)` names step i of `losses`; `kept` says which checkpoint is kept.
    The factor leaves room for every loss of the studies (the KD terms carry T^2) while a
    blow-up (1e19 at lr 1e4) is caught in its first epoch.
    """
    limit = DIVERGENCE_FACTOR * max(1.0, abs(reference))
    bad = np.flatnonzero(~np.isfinite(losses) | (np.abs(losses) > limit))
    if not bad.size:
        return
    loss = float(losses[bad[0]])
    finite = np.isfinite(loss)
    what = (f"loss {loss:.3g} exceeds {DIVERGENCE_FACTOR:g} x the first step's {reference:.3g}" if finite
            else f"non-finite loss ({loss})")
    error = TrainingDivergedError if finite else NonFiniteLossError
    raise error(f"{what} at {where(int(bad[0]))}; training stopped. {kept}. "
                f"Lower train.lr or the loss weight, or use float32.")


@contextlib.contextmanager
def _stop_signals():
    """Record SIGINT/SIGTERM instead of raising; yields `stop() -> signal number or 0`, the same on every process.

    A second signal raises KeyboardInterrupt at once. Outside the main thread no handler is installed.
    """
    received = []

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    def stop() -> int:
        mine = received[0] if received else 0
        if jax.process_count() == 1:
            return mine
        from jax.experimental import multihost_utils

        return int(np.max(multihost_utils.process_allgather(np.int32(mine))))  # every process stops at one step

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {number: signal.signal(number, handler) for number in SIGNAL_EXIT_CODES}
    try:
        yield stop
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def fit(run: TrainingRun, *, mesh=None, loop: str = "auto", log: Callable[[str], None] = print) -> RunResult:
    """Train `run.model` with `run.spec` for `run.train_config.epochs` epochs, checkpointing into `run.directory`.

    Without augmentation the teacher's outputs are computed once (`loop.fixed_teacher_logits`).
    `loop` picks how an epoch's steps are driven (see `loop.make_train_epoch`). Holds the run
    directory's lock (`checkpoints.workdir_lock`) throughout. Raises RunInterrupted after
    checkpointing when SIGINT/SIGTERM arrives, TrainingDivergedError on an exploding or
    non-finite loss (nothing of the diverged state is saved). `metrics.jsonl` gets one row per
    completed epoch; the row of an epoch resumed from inside averages the steps run after the
    resume. Epoch 1's row holds `reference_loss`, the first step's loss that `check_losses` uses.
    """
    spec, data = run.spec, run.data
    if spec.needs_adversarial and data.adv_images is None:
        raise ValueError("the ast step needs the adversarial training set (RunData.adv_images)")
    if spec.needs_ood and (data.ood_images is None or run.teacher is None or run.teacher_variables is None):
        raise ValueError("the ini step needs an OOD set (RunData.ood_images) and the frozen clone "
                         "(TrainingRun.teacher and teacher_variables)")
    if spec.needs_teacher and data.targets is None and (run.teacher is None or run.teacher_variables is None):
        raise ValueError(f"the {spec.kind} step needs a frozen teacher and its variables, or fixed targets")
    if data.targets is not None and not data.augment_spec.is_identity:
        raise ValueError("fixed targets (RunData.targets) belong to the un-augmented images: train without augmentation")
    with checkpoints.workdir_lock(run.directory), _stop_signals() as stop:
        checkpoints.claim(run.directory, run.record)
        mngr = checkpoints.manager(run.directory)
        try:
            return _train(run, mesh or make_mesh(), loop, log, mngr, stop)
        finally:
            mngr.wait_until_finished()
            mngr.close()


def _train(run: TrainingRun, mesh, loop: str, log, mngr, stop) -> RunResult:
    spec, data, config, directory = run.spec, run.data, run.train_config, run.directory
    batch_size, epochs = config.batch_size, config.epochs
    num_examples = len(data.train.labels)
    steps_per_epoch = epoch_steps(num_examples, batch_size)
    tx = make_optimizer(config, steps_per_epoch)
    train_epoch = make_train_epoch(run.model, tx, spec, mesh, batch_size=batch_size, augment_spec=data.augment_spec,
                                   mean=data.mean, std=data.std, teacher=run.teacher, pairing=data.pairing, loop=loop)
    predict = make_predict(run.model, mesh, batch_size=config.eval_batch_size, mean=data.mean, std=data.std)

    key = jax.random.PRNGKey(run.seed)
    init = functools.partial(init_state, run.model, tx, jax.random.fold_in(key, Stream.PARAMS_INIT), data.train.images.shape[1:])
    replicated = NamedSharding(mesh, P())
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), jax.eval_shape(init))
    state = checkpoints.restore_latest(mngr, abstract, warn=log)
    state = replicate(mesh, init()) if state is None else state
    done = int(to_host(state.step))
    start, first_step = divmod(done, steps_per_epoch)

    def position(step: int) -> str:
        epoch, index = divmod(step, steps_per_epoch)
        return f"epoch {epoch}" if index == 0 else f"epoch {epoch + 1}, step {index} of {steps_per_epoch}"

    def kept() -> str:
        latest = mngr.latest_step()
        return (f"No checkpoint of this run was saved in {directory}" if latest is None
                else f"The last good checkpoint ({position(latest)}) in {directory} is kept")

    with checkpoints.MetricsWriter(directory) as metrics_log:
        metrics_log.keep_through(start)  # rows of epochs after the checkpoint are redone
        if done and start < epochs:
            log(f"resuming {directory} after {position(done)}")
        inputs = _device_inputs(run, mesh, config) if start < epochs else None
        reference = metrics_log.rows[0].get("reference_loss") if metrics_log.rows else None
        run_start = time.perf_counter()
        for epoch in range(start, epochs):
            tick = time.perf_counter()
            state, metrics = train_epoch(state, *inputs, key, epoch, first_step, stop)
            losses = to_host(metrics["loss"])
            reference = float(losses[0]) if reference is None else reference
            check_losses(losses, reference, lambda i: position(epoch * steps_per_epoch + first_step + i + 1), kept())
            ran = first_step + len(losses)
            seconds = time.perf_counter() - tick
            row = {"epoch": epoch + 1, "train_loss": float(losses.mean()),
                   "train_accuracy": float(np.mean(to_host(metrics["accuracy"]))), "epoch_seconds": seconds,
                   "images_per_second": _real_examples(first_step, ran, batch_size, num_examples) / seconds}
            signum = stop()
            if ran < steps_per_epoch:  # a signal inside the epoch (host loop); the epoch's row is written when it ends
                checkpoints.save(mngr, epoch * steps_per_epoch + ran, state)
                raise _interrupted(mngr, signum, position(epoch * steps_per_epoch + ran), directory)
            if epoch == 0:
                row["reference_loss"] = reference
            last = epoch + 1 == epochs
            if last or (epoch + 1) % config.eval_every == 0:
                row.update(evaluate(predict, {"params": state.params, "batch_stats": state.batch_stats}, data.test))
                eta = (time.perf_counter() - run_start) / (epoch + 1 - start) * (epochs - epoch - 1)
                log(f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                             if k not in ("epoch", "reference_loss"))
                    + f" eta={eta:.0f}s")
            metrics_log.append(row)
            if last or (epoch + 1) % config.checkpoint_every == 0 or signum:
                checkpoints.save(mngr, (epoch + 1) * steps_per_epoch, state)
            if signum and not last:
                raise _interrupted(mngr, signum, position((epoch + 1) * steps_per_epoch), directory)
            first_step = 0
        history = metrics_log.rows
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    evaluated = [row["test_accuracy"] for row in history if "test_accuracy" in row]
    final = evaluated[-1] if evaluated else evaluate(predict, variables, data.test)["test_accuracy"]
    return RunResult(variables, history, final, max(evaluated, default=final))


def _real_examples(first_step: int, end_step: int, batch_size: int, num_examples: int) -> int:
    """How many real (not padding) examples steps `first_step .. end_step - 1` of an epoch trained."""
    return min(end_step * batch_size, num_examples) - min(first_step * batch_size, num_examples)


def _device_inputs(run: TrainingRun, mesh, config) -> tuple[dict, dict | None]:
    """(data, teacher_variables) on the devices: the training arrays (the OOD set for ini) and, for
    kd/nasty without augmentation, the teacher's fixed logits (or the given `RunData.targets`);
    a randomised teacher (`Teacher.is_random`) is queried anew in every step."""
    data = {"images": run.data.train.images, "labels": run.data.train.labels}
    if run.spec.needs_adversarial:
        data["adv_images"] = run.data.adv_images
    if run.spec.needs_ood:
        data["ood_images"] = run.data.ood_images
    if run.data.targets is not None:
        data["teacher_logits"] = run.data.targets
    data = replicate(mesh, data)
    teacher_variables = replicate(mesh, run.teacher_variables) if run.teacher_variables is not None else None
    if (run.spec.needs_teacher and run.data.augment_spec.is_identity and run.data.targets is None
            and not run.teacher.is_random):
        data["teacher_logits"] = fixed_teacher_logits(run.teacher, teacher_variables, data["images"], mesh,
                                                      batch_size=config.eval_batch_size, mean=run.data.mean,
                                                      std=run.data.std)
    return data, teacher_variables


def _interrupted(mngr, signum: int, where: str, directory: str) -> RunInterrupted:
    """Wait for the checkpoint just started, then the exception that ends the run."""
    mngr.wait_until_finished()
    return RunInterrupted(f"stopped by {signal.Signals(signum).name}: checkpoint saved in {directory} after {where}; "
                          f"run the same command again to resume", signum)
