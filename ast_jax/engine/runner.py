"""A training run: epochs of the jitted program, evaluation, metrics and checkpoints.

This is the edge where training meets the file system (through `ast_jax.engine.checkpoints`); the
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
import os
import signal
import threading
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ast_jax.data import ArraySplit, AugmentSpec
from ast_jax.engine import checkpoints
from ast_jax.engine.loop import (
    fixed_teacher_logits,
    make_mesh,
    make_predict,
    make_train_epoch,
    replicate,
    run_devices,
    run_partition,
    shard_examples,
    to_host,
)
from ast_jax.engine.loop import steps_per_epoch as epoch_steps
from ast_jax.engine.optim import TrainSettings, from_constant_lr_state, make_optimizer, with_learning_rate
from ast_jax.engine.policy import ExecutionPolicy
from ast_jax.engine.progress import Pace
from ast_jax.engine.steps import SPARSE_KINDS, LossHypers, StepSpec, Teacher, init_state
from ast_jax.losses import cross_entropy
from ast_jax.rng import Stream

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
    teacher (only without augmentation, since the targets belong to the un-augmented images, unless
    `augmented_targets`: each target then stays with its augmented image, DCP's Knockoff clone);
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
    augmented_targets: bool = False


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """One training run: what is trained (`model`, `train_config`: its `optim.TrainSettings`, `seed`), with what step
    (`spec`) and loss values (`hypers`: τ, ω, k; the lr is `train_config.lr`), on what data
    (`data`), from what frozen teacher (`teacher`, `teacher_variables`: the `kd` and `nasty`
    steps), and where (`directory`, holding `record`, the run's config as
    a JSON-able dict; a directory holding another record is refused)."""

    directory: str
    record: dict
    model: object
    train_config: TrainSettings
    spec: StepSpec
    seed: int
    data: RunData
    teacher: Teacher | None = None
    teacher_variables: dict | None = None
    hypers: LossHypers = LossHypers()


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


def fit(run: TrainingRun, *, mesh=None, policy: ExecutionPolicy | None = None,
        log: Callable[[str], None] = print) -> RunResult:
    """Train `run.model` with `run.spec` for `run.train_config.epochs` epochs, checkpointing into `run.directory`.

    Without augmentation the teacher's outputs are computed once (`loop.fixed_teacher_logits`).
    `policy` (None: `ExecutionPolicy.current()`) says how an epoch's steps are driven (see
    `loop.make_train_epoch`). Holds the run directory's lock (`checkpoints.workdir_lock`) throughout. Raises RunInterrupted after
    checkpointing when SIGINT/SIGTERM arrives, TrainingDivergedError on an exploding or
    non-finite loss (nothing of the diverged state is saved). `metrics.jsonl` gets one row per
    completed epoch; the row of an epoch resumed from inside averages the steps run after the
    resume. Epoch 1's row holds `reference_loss`, the first step's loss that `check_losses` uses.
    """
    return fit_batch([run], mesh=mesh, policy=policy, log=log)[0]


def fit_batch(runs: Sequence[TrainingRun], *, mesh=None, policy: ExecutionPolicy | None = None,
              log: Callable[[str], None] = print, progress: Callable[[int], None] | None = None) -> list[RunResult]:
    """Train runs that differ only in their seeds, their `LossHypers` (τ, ω, k), their learning
    rates and their per-run inputs (adversarial set, teacher, targets) as one program over a
    leading run axis (`loop.make_train_epoch(..., batched=True)`: the step mapped over the runs by
    the `policy`'s run lowering, None: `ExecutionPolicy.current()`). The program holds none of the
    runs' values: τ, ω, k are its `hypers` argument (`_batch_hypers`), each run's lr is in its
    own optimizer state (`optim.make_optimizer`).

    Each run keeps its own directory, checkpoints, metrics and lock, exactly as `fit` writes them
    (`fit` is this function on one run), so a run of a batch can be resumed or read on its own.
    A resumed batch restores each run's latest checkpoint: finished runs are loaded, not
    retrained, and runs that stopped at different steps continue in groups of equal progress.
    The number of runs must be a multiple of the mesh's `run` axis. Everything else as in `fit`;
    a diverged run stops the whole batch (the message names its directory). `progress(images)`,
    if given, is called after every epoch with the number of examples the batch trained in it
    (summed over its runs). `batch_conflicts` says whether two runs may share a batch.
    """
    runs = list(runs)
    _check_batch(runs)
    for run in runs:
        _check_run(run)
    mesh = mesh or make_mesh()
    policy = policy or ExecutionPolicy.current()
    with contextlib.ExitStack() as stack:
        for run in runs:
            stack.enter_context(checkpoints.workdir_lock(run.directory))
        stop = stack.enter_context(_stop_signals())
        for run in runs:
            checkpoints.claim(run.directory, run.record)
        managers = [checkpoints.manager(run.directory) for run in runs]
        for mngr in managers:
            stack.callback(mngr.close)
            stack.callback(mngr.wait_until_finished)
        return _train_batch(runs, mesh, policy, log, managers, stop, progress)


def _check_run(run: TrainingRun) -> None:
    spec, data = run.spec, run.data
    spec.check_hypers(run.hypers)
    if spec.needs_adversarial and data.adv_images is None:
        raise ValueError("the ast step needs the adversarial training set (RunData.adv_images)")
    if spec.needs_ood and (data.ood_images is None or run.teacher is None or run.teacher_variables is None):
        raise ValueError("the ini step needs an OOD set (RunData.ood_images) and the frozen clone "
                         "(TrainingRun.teacher and teacher_variables)")
    if spec.needs_teacher and data.targets is None and (run.teacher is None or run.teacher_variables is None):
        raise ValueError(f"the {spec.kind} step needs a frozen teacher and its variables, or fixed targets")
    if data.targets is not None and not (data.augment_spec.is_identity or data.augmented_targets):
        raise ValueError("fixed targets (RunData.targets) belong to the un-augmented images: train without "
                         "augmentation, or set RunData.augmented_targets to keep each target with its image")


def _batch_signature(run: TrainingRun) -> dict:
    """What every run of a batch must share: model, step, schedule (but the lr), data, teacher module."""
    data = run.data
    train = dataclasses.replace(run.train_config, lr=0.0)
    return {"model": run.model, "spec": run.spec, "train": train, "teacher": run.teacher,
            "augment": (data.augment_spec, data.augmented_targets), "pairing": data.pairing, "mean": data.mean,
            "std": data.std,
            "per_run": (data.adv_images is None, data.targets is None, run.teacher_variables is None)}


def _same_array(a, b) -> bool:
    return a is b or (a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b))


def distinct_arrays(arrays: Sequence) -> tuple[list, np.ndarray]:
    """(the distinct arrays of `arrays`, in order of first appearance; for each array the index of
    its equal among them, int32): a batch of runs holds each adversarial set once (the cells of a
    sweep at one seed share their base teacher's set) instead of once per run."""
    distinct, index = [], []
    for array in arrays:
        same = next((i for i, seen in enumerate(distinct) if _same_array(seen, array)), None)
        if same is None:
            distinct.append(array)
            same = len(distinct) - 1
        index.append(same)
    return distinct, np.asarray(index, np.int32)


def batch_conflicts(first: TrainingRun, run: TrainingRun) -> list[str]:
    """What keeps `run` out of a batch with `first` (empty: they can train as one program)."""
    first_signature, signature = _batch_signature(first), _batch_signature(run)
    differs = [key for key in first_signature if signature[key] != first_signature[key]]
    shared = [("train", run.data.train.images, first.data.train.images),
              ("train labels", run.data.train.labels, first.data.train.labels),
              ("test", run.data.test.images, first.data.test.images),
              ("ood_images", run.data.ood_images, first.data.ood_images)]
    return differs + [name for name, a, b in shared if not (a is None and b is None) and not _same_array(a, b)]


def _check_batch(runs: list[TrainingRun]) -> None:
    """Refuse a batch whose runs cannot share one program (ValueError naming the first difference)."""
    if not runs:
        raise ValueError("fit_batch needs at least one run")
    directories = [run.directory for run in runs]
    if len(set(directories)) < len(runs):
        raise ValueError(f"two runs of a batch share a directory: {directories}")
    first = runs[0]
    for run in runs[1:]:
        differs = batch_conflicts(first, run)
        if differs:
            raise ValueError(f"runs {first.directory} and {run.directory} cannot train as one batch: they differ in "
                             f"{', '.join(differs)} (a batch may vary only the seed, the LossHypers, the lr "
                             f"and per-run inputs); train them in separate batches")


def _batch_hypers(runs: list[TrainingRun]) -> LossHypers:
    """The runs' `LossHypers` stacked over a leading run axis (τ, ω float32; k int32 for the
    `SPARSE_KINDS`, else None): data of the program, so every batch of one kind, whatever its
    values and size, runs one program."""
    sparse = runs[0].spec.kind in SPARSE_KINDS
    return LossHypers(temperature=np.asarray([float(run.hypers.temperature) for run in runs], np.float32),
                      omega=np.asarray([float(run.hypers.omega) for run in runs], np.float32),
                      k=np.asarray([int(run.hypers.k) for run in runs], np.int32) if sparse else None)


@functools.partial(jax.jit, static_argnums=1)
def _unstack(tree, runs: int) -> list:
    """The runs of a tree with a leading run axis, as `runs` trees (one jitted call, not R x leaves slices)."""
    return [jax.tree.map(lambda x: x[r], tree) for r in range(runs)]


def _train_batch(runs: list[TrainingRun], mesh, policy: ExecutionPolicy, log, managers, stop,
                 progress) -> list[RunResult]:
    first = runs[0]
    config, data = first.train_config, first.data
    steps_per_epoch = epoch_steps(len(data.train.labels), config.batch_size)
    replicated = NamedSharding(mesh, P())
    states, done = [], []
    for run, mngr in zip(runs, managers):
        tx = make_optimizer(run.train_config, steps_per_epoch)  # its `init` writes the run's own lr
        init = functools.partial(init_state, run.model, tx,
                                 jax.random.fold_in(jax.random.PRNGKey(run.seed), Stream.PARAMS_INIT),
                                 data.train.images.shape[1:])
        abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                                jax.eval_shape(init))
        lr = run.train_config.lr
        state = checkpoints.restore_latest(mngr, abstract, warn=log, older=_constant_lr_layout(abstract, lr))
        if state is not None:  # the config's lr, as when it was a constant of the optimizer
            state = state.replace(opt_state=with_learning_rate(state.opt_state, lr))
        states.append(jax.device_get(init() if state is None else state))
        done.append(int(states[-1].step))
    results = [None] * len(runs)
    for steps_done in sorted(set(done)):  # runs that stopped at the same step continue together
        members = [i for i, d in enumerate(done) if d == steps_done]
        group = _train_group([runs[i] for i in members], [states[i] for i in members],
                             [managers[i] for i in members], steps_done, mesh, policy, log, stop, progress)
        for i, result in zip(members, group):
            results[i] = result
    return results


def _constant_lr_layout(abstract, lr: float):
    """(layout, upgrade) of the checkpoints written while the lr was a constant of the optimizer
    (`checkpoints.restore_latest`'s `older`): the optimizer state without the injected lr."""
    def upgrade(state):
        return state.replace(opt_state=from_constant_lr_state(state.opt_state, lr, state.step))

    return abstract.replace(opt_state=abstract.opt_state.inner_state), upgrade


def _train_group(runs, states, managers, done: int, mesh, policy: ExecutionPolicy, log, stop,
                 progress) -> list[RunResult]:
    """Train runs that have all run `done` steps to the end, as one batch (each run's lr in its
    state's optimizer state, its τ, ω, k in `_batch_hypers`)."""
    first = runs[0]
    spec, data, config = first.spec, first.data, first.train_config
    batch_size, epochs, count = config.batch_size, config.epochs, len(runs)
    if count % run_devices(mesh):
        raise ValueError(f"a batch of {count} runs cannot be split over the mesh's {run_devices(mesh)} run devices; "
                         f"use a multiple of {run_devices(mesh)} runs")
    num_examples = len(data.train.labels)
    steps_per_epoch = epoch_steps(num_examples, batch_size)
    tx = make_optimizer(config, steps_per_epoch)
    train_epoch = make_train_epoch(first.model, tx, spec, mesh, batch_size=batch_size,
                                   augment_spec=data.augment_spec, augmented_targets=data.augmented_targets,
                                   mean=data.mean, std=data.std, teacher=first.teacher, pairing=data.pairing,
                                   policy=policy, batched=True)
    predict = make_predict(first.model, mesh, batch_size=config.eval_batch_size, mean=data.mean, std=data.std,
                           loop=policy.loop)
    per_run = NamedSharding(mesh, run_partition(mesh))
    state = jax.device_put(jax.tree.map(lambda *leaves: np.stack(leaves), *states), per_run)
    keys = jax.device_put(jnp.stack([jax.random.PRNGKey(run.seed) for run in runs]), per_run)
    hypers = jax.device_put(_batch_hypers(runs), per_run)
    start, first_step = divmod(done, steps_per_epoch)
    names = _run_names([run.directory for run in runs])
    logs = [log if count == 1 else (lambda message, name=name: log(f"{name}: {message}")) for name in names]

    def position(step: int) -> str:
        epoch, index = divmod(step, steps_per_epoch)
        return f"epoch {epoch}" if index == 0 else f"epoch {epoch + 1}, step {index} of {steps_per_epoch}"

    def kept(run, mngr) -> str:
        latest = mngr.latest_step()
        return (f"No checkpoint of this run was saved in {run.directory}" if latest is None
                else f"The last good checkpoint ({position(latest)}) in {run.directory} is kept")

    def save(step: int, run_states) -> None:
        for mngr, run_state in zip(managers, run_states):
            checkpoints.save(mngr, step, run_state)

    with contextlib.ExitStack() as stack:
        # rows of epochs after the checkpoint are redone
        writers = [stack.enter_context(checkpoints.MetricsWriter(run.directory, through_epoch=start)) for run in runs]
        if done and start < epochs:
            for run_log, run in zip(logs, runs):
                run_log(f"resuming {run.directory} after {position(done)}")
        inputs = _device_inputs(runs, mesh, config) if start < epochs else None
        references = [writer.rows[0].get("reference_loss") if writer.rows else None for writer in writers]
        pace = Pace()  # of the epochs this session trains
        for epoch in range(start, epochs):
            tick = time.perf_counter()
            state, metrics = train_epoch(state, *inputs, keys, epoch, first_step, stop, hypers=hypers)
            losses, accuracies = to_host(metrics["loss"]), to_host(metrics["accuracy"])  # (steps, runs)
            for r, (run, mngr) in enumerate(zip(runs, managers)):
                references[r] = float(losses[0, r]) if references[r] is None else references[r]
                check_losses(losses[:, r], references[r],
                             lambda i: position(epoch * steps_per_epoch + first_step + i + 1), kept(run, mngr))
            ran = first_step + len(losses)
            seconds = time.perf_counter() - tick
            signum = stop()
            last = epoch + 1 == epochs
            evaluate_now = last or (epoch + 1) % config.eval_every == 0
            save_now = last or (epoch + 1) % config.checkpoint_every == 0 or signum
            # the runs are sliced out of the batch only for a checkpoint or an evaluation
            run_states = _unstack(state, count) if save_now or evaluate_now or ran < steps_per_epoch else None
            if ran < steps_per_epoch:  # a signal inside the epoch (host loop); the epoch's row is written when it ends
                save(epoch * steps_per_epoch + ran, run_states)
                raise _interrupted(managers, signum, position(epoch * steps_per_epoch + ran),
                                   ", ".join(run.directory for run in runs))
            examples = _real_examples(first_step, ran, batch_size, num_examples)
            rate = examples / seconds
            if progress is not None:
                progress(examples * count)
            for r, writer in enumerate(writers):
                row = {"epoch": epoch + 1, "train_loss": float(losses[:, r].mean()),
                       "train_accuracy": float(accuracies[:, r].mean()), "epoch_seconds": seconds,
                       "images_per_second": rate}
                if epoch == 0:
                    row["reference_loss"] = references[r]
                if evaluate_now:
                    variables = {"params": run_states[r].params, "batch_stats": run_states[r].batch_stats}
                    row.update(evaluate(predict, variables, data.test))
                    logs[r](f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                                      if k not in ("epoch", "reference_loss"))
                            + f" eta={pace.eta(epoch + 1 - start, epochs - epoch - 1)}")
                writer.append(row)
            if save_now:
                save((epoch + 1) * steps_per_epoch, run_states)
            if signum and not last:
                raise _interrupted(managers, signum, position((epoch + 1) * steps_per_epoch),
                                   ", ".join(run.directory for run in runs))
            first_step = 0
        histories = [writer.rows for writer in writers]
    results = []
    for run_state, history in zip(_unstack(state, count), histories):
        variables = {"params": run_state.params, "batch_stats": run_state.batch_stats}
        evaluated = [row["test_accuracy"] for row in history if "test_accuracy" in row]
        final = evaluated[-1] if evaluated else evaluate(predict, variables, data.test)["test_accuracy"]
        results.append(RunResult(variables, history, final, max(evaluated, default=final)))
    return results


def _run_names(directories: list[str]) -> list[str]:
    """Each directory relative to the folder they all share (how a batch's log lines name its runs)."""
    common = os.path.commonpath([os.path.abspath(d) for d in directories])
    return [os.path.relpath(os.path.abspath(d), common) for d in directories]


def _real_examples(first_step: int, end_step: int, batch_size: int, num_examples: int) -> int:
    """How many real (not padding) examples steps `first_step .. end_step - 1` of an epoch trained."""
    return min(end_step * batch_size, num_examples) - min(first_step * batch_size, num_examples)


def run_arrays(mesh, adv_images: Sequence | None = None, teacher_logits: Sequence | None = None) -> dict:
    """A batch's per-run inputs on the devices, one entry per run in each list given: the distinct
    adversarial sets, each once (`distinct_arrays`), split over the devices along the examples as
    `adv_images` (`loop.shard_examples`: no device holds a whole set) with `adv_set`, each run's set; the fixed teacher logits stacked over the runs (`loop.RUN_ARRAYS`)."""
    per_run = NamedSharding(mesh, run_partition(mesh))
    data = {}
    if adv_images is not None:
        sets, index = distinct_arrays(adv_images)
        data["adv_images"], data["adv_set"] = shard_examples(mesh, np.stack(sets), axis=1), jax.device_put(index, per_run)
    if teacher_logits is not None:
        data["teacher_logits"] = jax.device_put(np.stack([np.asarray(a) for a in teacher_logits]), per_run)
    return data


def _device_inputs(runs: list[TrainingRun], mesh, config) -> tuple[dict, dict | None]:
    """(data, teacher_variables) on the devices: the shared training arrays (the OOD set for ini)
    replicated, the per-run ones (`run_arrays`: the adversarial sets, and for kd/nasty without
    augmentation each teacher's fixed logits or the given `RunData.targets`) and the teacher
    variables stacked over the runs; a randomised teacher (`Teacher.is_random`) is queried anew in
    every step."""
    first = runs[0]
    data = {"images": first.data.train.images, "labels": first.data.train.labels}
    if first.spec.needs_ood:
        data["ood_images"] = first.data.ood_images
    data = replicate(mesh, data)
    teacher_variables = None
    if first.teacher_variables is not None:
        teacher_variables = jax.device_put(jax.tree.map(lambda *leaves: np.stack(leaves),
                                                        *(run.teacher_variables for run in runs)),
                                           NamedSharding(mesh, run_partition(mesh)))
    logits = None
    if first.data.targets is not None:
        logits = [run.data.targets for run in runs]
    elif first.spec.needs_teacher and first.data.augment_spec.is_identity and not first.teacher.is_random:
        logits = [to_host(fixed_teacher_logits(run.teacher, replicate(mesh, run.teacher_variables), data["images"],
                                               mesh, batch_size=config.eval_batch_size, mean=run.data.mean,
                                               std=run.data.std)) for run in runs]
    adv = [run.data.adv_images for run in runs] if first.spec.needs_adversarial else None
    return {**data, **run_arrays(mesh, adv, logits)}, teacher_variables


def _interrupted(managers, signum: int, where: str, directories: str) -> RunInterrupted:
    """Wait for the checkpoints just started, then the exception that ends the run."""
    for mngr in managers:
        mngr.wait_until_finished()
    return RunInterrupted(f"stopped by {signal.Signals(signum).name}: checkpoint saved in {directories} after {where}; "
                          f"run the same command again to resume", signum)
