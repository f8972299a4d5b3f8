"""The study of docs/method.md §3 as resumable stages in one work directory.

    <workdir>/study.json                     the study's config (another config is refused)
    <workdir>/teachers/<name>/               base, ast, nasty, stt, ini, meco: checkpointed training runs
    <workdir>/adversarial/<fingerprint>.npy  PGD training set of the base teacher (+ .json)
    <workdir>/students/<teacher>-<arch>/     students distilled from each teacher (kd step)
    <workdir>/report.{md,json,csv}, outputs.png
    <workdir>/matrix/..., matrix.{md,json,csv,png}  the stealing-attack matrix (`ast_jax.studies.matrix`)

Every stage is skipped when its output is complete and resumes when interrupted (training runs
resume from their last checkpoint). Runs of one kind train together on accelerators
(`train_studies`, `fit_stages`): the students of every teacher with one architecture as one
batch, across the studies of several seeds or of a sweep's cells too (`ast_jax.studies.sweep`,
docs/method.md §12). The Stingy Teacher (`stingy`) needs no training: it is the base teacher
releasing sparse outputs. `config.teachers` names the study's teachers: the
thesis's five by default, and the training-time defences InI (`ini`) and MeCo (`meco`,
released through its randomised input perturbation) where a config adds them (docs/method.md
§11). Teachers train with `config.train` and their own `config.teacher_train.<name>` keys.

Validation first. `open_study` checks the config, the data, the device count (every batch size
of every architecture the command trains), the batch sizes against the training set, the PyTorch
checkpoint (a file whose finite float tensors fit the architecture on this data) and the
requested teacher and students, all before `study.json` is written and before any compute.

Provenance. Each stage's `run.json` records, besides the study's config, the fingerprints of
what it was built from (`inputs`):

    every stage          train_data: sha256 of the training images and labels
    ast                  adversarial_set: the PGD set's name (itself a fingerprint, see below)
    nasty                base_teacher: fingerprint of the base teacher's parameters
    ini                  ood_set: fingerprint of the OOD images (a query set)
    students/<t>-<arch>  teacher: fingerprint of teacher t's parameters (the base's for stingy)

A teacher's fingerprint is a sha256 of its variables, so an imported PyTorch teacher is
fingerprinted by the weights its file holds. A stage whose recorded inputs differ from the
current ones is refused (`StaleStageError`, one line naming the stage, what changed and how to
start fresh: delete that stage's directory or use another --workdir); nothing is deleted or
retrained silently.

The adversarial set is named by a fingerprint of the base teacher's parameters, the PGD
settings, the seed and the training data; its `.json` records those settings and the sha256 of
the array. Before use it is checked: one row per training image, the model's input shape, a
float dtype, finite values, and the record matching both the settings and the content. A set
that fails is refused (`UnreadableFileError` naming the file): delete it to regenerate it.

`write_report` never trains and never runs PGD: it reports the stages that are finished, names
each missing one with the command that makes it, and draws the figure's adversarial column from
the cached set (left out when there is none).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ast_jax import losses, models
from ast_jax.data import (
    ArraySplit,
    AugmentSpec,
    DatasetSpec,
    class_balanced_subset,
    dataset_spec,
    load_split,
    normalize,
    to_unit_float,
)
from ast_jax.data.query_sets import load_query_set
from ast_jax.defences import meco
from ast_jax.defences.blackbox import victim_release
from ast_jax.defences.ini import InISettings
from ast_jax.engine import (
    RunData,
    RunResult,
    StepSpec,
    Teacher,
    TrainingRun,
    batch_conflicts,
    checkpoints,
    evaluate,
    fit_batch,
    make_mesh,
    make_pgd_attack,
    make_predict,
    to_host,
)
from ast_jax.engine.checkpoints import WorkdirConflictError
from ast_jax.engine.loop import AXIS, check_batch_size, check_run_devices, host_batched_map, steps_per_epoch
from ast_jax.files import UnreadableFileError, atomic_write, is_writer, load_npy, read_json, save_npy
from ast_jax.rng import Stream
from ast_jax.studies.settings import (
    TEACHER_NAMES,
    sparsity_k,
    study_record,
    teacher_train_config,
    to_json,
    train_config_for,
)

TEACHERS = TEACHER_NAMES
TRAINED_TEACHERS = tuple(name for name in TEACHERS if name != "stingy")
STUDY_RECORD = "study.json"


class StaleStageError(WorkdirConflictError):
    """A stage in the work directory was built from other inputs than the current ones (kept as is)."""


class MissingStageError(RuntimeError):
    """A stage `write_report` needs has not finished; the message names it and the command that runs it."""


@dataclasses.dataclass
class Study:
    """A study's config, its work directory and its data (host arrays)."""

    config: object
    workdir: str
    dataset: DatasetSpec
    train: ArraySplit
    test: ArraySplit
    mesh: object
    log: Callable[[str], None] = functools.partial(print, flush=True)  # progress reaches a log file as it happens
    runs: dict = dataclasses.field(default_factory=dict)  # stage directory -> RunResult, this session
    fingerprints: dict = dataclasses.field(default_factory=dict)  # teacher name -> parameter fingerprint
    compute: bool = True  # False: load finished stages only (MissingStageError for the others)
    base: "Study | None" = None  # a sweep cell's seed study: its base teacher, PGD sets and base students
    run_devices: int = 1  # the device groups (mesh axis `run`) a batch of runs is spread over (`batch_plan`)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @functools.cached_property
    def train_data(self) -> str:
        """sha256 of the training images and labels (every stage's input)."""
        return hashlib.sha256(self.train.images.tobytes() + self.train.labels.tobytes()).hexdigest()

    def model(self, architecture: str):
        return models.create(architecture, self.num_classes, jnp.dtype(self.config.dtype), axis_name=AXIS)


def open_study(config, workdir: str, log: Callable[[str], None] = functools.partial(print, flush=True), *,
               students: Sequence[str] | None = None, teacher: str | None = None, run_devices: int = 1) -> Study:
    """Load the data of the validated `config`, check it all (`check_study`), then claim `workdir`.

    `students` / `teacher`: what the command will distil (default: the config's students).
    `run_devices`: the number of device groups a batch of runs is spread over (`batch_plan`);
    it must divide the device count. Another study's work directory is refused.
    Everything that can fail on bad input fails before the work directory is touched and before
    any compute.
    """
    mesh = make_mesh()
    check_run_devices(run_devices, mesh.size)
    data_dir = config.data.data_dir or None
    spec = dataset_spec(config.data.name)
    train, test = load_split(config.data.name, "train", data_dir), load_split(config.data.name, "test", data_dir)
    if config.data.train_examples:
        if config.data.train_examples > len(train):
            raise ValueError(f"config.data.train_examples={config.data.train_examples} exceeds the {len(train)} "
                             f"training images of {config.data.name}; use at most {len(train)} (0 = all)")
        train = class_balanced_subset(train, config.data.train_examples, config.seed)
    check_study(config, spec, train, mesh, students=tuple(students or config.students), teacher=teacher)
    checkpoints.claim(workdir, study_record(config), record_name=STUDY_RECORD)
    return Study(config, workdir, spec, train, test, mesh, log, run_devices=run_devices)


def _train_key(config, architecture: str, field: str) -> str:
    """The config key that sets `field` of `architecture`'s training (its override, else `train`)."""
    override = config.student_train.get(architecture) if architecture in config.student_train else None
    return f"config.student_train.{architecture}.{field}" if override is not None and field in override \
        else f"config.train.{field}"


def _teacher_train_key(config, teacher: str, field: str) -> str:
    """The config key that sets `field` of teacher `teacher`'s training."""
    override = config.teacher_train.get(teacher) if teacher in config.teacher_train else None
    return f"config.teacher_train.{teacher}.{field}" if override is not None and field in override \
        else f"config.train.{field}"


def check_study(config, dataset: DatasetSpec, train: ArraySplit, mesh, *, students: Sequence[str],
                teacher: str | None = None) -> None:
    """Every check against the devices, the data and the files that needs no compute (ValueError, one line).

    Batch sizes of the teacher and of each student architecture (train, eval) and of PGD must be
    divisible by the device count, and each training batch must fit in the training set; the
    students and the teacher must exist; the PyTorch teacher checkpoint must be a file whose
    finite float tensors have the shapes of `config.teacher.model` on this data's images.
    """
    if teacher is not None and teacher not in TEACHERS:
        raise ValueError(f"unknown teacher {teacher!r}; valid: {', '.join(TEACHERS)}")
    for student in students:
        if student not in models.MODEL_NAMES:
            raise ValueError(f"unknown student architecture {student!r}; valid: {', '.join(models.MODEL_NAMES)}")
    schedules = [(train_config_for(config, architecture), functools.partial(_train_key, config, architecture))
                 for architecture in dict.fromkeys(students)]
    schedules += [(teacher_train_config(config, name), functools.partial(_teacher_train_key, config, name))
                   for name in TRAINED_TEACHERS]  # any of them can be trained (`ast-jax train --stage`)
    for train_config, key in schedules:
        for field in ("batch_size", "eval_batch_size"):
            check_batch_size(train_config[field], mesh, key(field))
        if train_config.batch_size > len(train):
            raise ValueError(f"{key('batch_size')}={train_config.batch_size} exceeds the {len(train)} training "
                             f"images; use at most {len(train)}")
    check_batch_size(config.pgd.batch_size, mesh, "config.pgd.batch_size")
    if config.teacher.torch_checkpoint:
        _check_torch_teacher(config, dataset, train.images.shape[1:])


def _check_torch_teacher(config, dataset: DatasetSpec, image_shape: tuple) -> None:
    """The PyTorch teacher file loads (interop's checks) and fits the model on `image_shape` inputs."""
    from ast_jax import interop

    path, architecture = config.teacher.torch_checkpoint, config.teacher.model
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.teacher.torch_checkpoint={path} does not exist; give the path of the "
                                f"teacher's PyTorch checkpoint file")
    variables = interop.load_torch_checkpoint(path, architecture, dataset.num_classes)
    model = models.create(architecture, dataset.num_classes)
    expected = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                              jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    shapes = {key: np.shape(leaf) for key, leaf in jax.tree_util.tree_leaves_with_path(variables)}
    for key, leaf in jax.tree_util.tree_leaves_with_path(expected):
        if shapes.get(key) != leaf.shape:
            raise ValueError(f"config.teacher.torch_checkpoint={path}: {jax.tree_util.keystr(key)} has shape "
                             f"{shapes.get(key)}, but {architecture} on {dataset.name} images {image_shape} needs "
                             f"{leaf.shape}; use a checkpoint trained on this data")


def augment_spec(config) -> AugmentSpec:
    """The training augmentation `config.data.augment` describes."""
    a = config.data.augment
    return AugmentSpec(crop_padding=a.crop_padding, flip=a.flip, rotation_degrees=a.rotation_degrees)


def _stage_log(study: Study, stage: str):
    return lambda message: study.log(f"[{stage}] {message}")


def _stage_inputs(study: Study, **inputs: str) -> dict:
    """A stage's inputs as recorded in its run.json: the training data's hash and `inputs`."""
    return {"train_data": study.train_data, **inputs}


def require_finished(study: Study, directory: str, train_config, command: str) -> None:
    """Without compute (`report`), a stage that has not finished is a MissingStageError naming `command`."""
    if not study.compute and not _finished(directory, train_config, len(study.train)):
        raise MissingStageError(f"{os.path.relpath(directory, study.workdir)} (run `ast-jax {command}`)")


def check_stage(study: Study, stage: str, directory: str, inputs: dict) -> None:
    """Refuse a stage whose run.json records other `inputs` (StaleStageError, one line).

    Nothing is deleted: the message says to delete `directory` or use another --workdir.
    """
    record_path = os.path.join(directory, checkpoints.RUN_RECORD)
    if os.path.exists(record_path):
        recorded = read_json(record_path).get("inputs") or {}
        changed = sorted(k for k in {*recorded, *inputs} if recorded.get(k) != inputs.get(k))
        if changed:
            raise StaleStageError(f"stage {stage} in {directory} was built from other inputs (changed: "
                                  f"{', '.join(changed)}); it is kept as it was. To start it fresh delete {directory}, "
                                  f"or use another --workdir")


def _finished(directory: str, train_config, num_examples: int) -> bool:
    """Whether the run in `directory` completed its epochs and saved that checkpoint (numbered by
    optimizer steps: epochs x steps per epoch)."""
    rows = checkpoints.read_metrics(directory)
    last_step = train_config.epochs * steps_per_epoch(num_examples, train_config.batch_size)
    return (bool(rows) and rows[-1]["epoch"] == train_config.epochs
            and os.path.isdir(os.path.join(directory, "checkpoints", str(last_step))))


@dataclasses.dataclass(frozen=True)
class Stage:
    """A training stage ready to fit: its study, its name in the log (`ast`, `base->cnn`) and its run."""

    study: Study
    name: str
    run: TrainingRun


def _stage(study: Study, stage: str, directory: str, architecture: str, train_config, spec: StepSpec, inputs: dict,
           *, adv_images=None, pairing: str = "aligned", ood_images=None, teacher: Teacher | None = None,
           teacher_variables=None) -> Stage:
    config = study.config
    data = RunData(study.train, study.test, study.dataset.mean, study.dataset.std, augment_spec(config),
                   adv_images=adv_images, pairing=pairing, ood_images=ood_images)
    record = {"stage": stage, "study": study_record(config), "inputs": inputs}
    run = TrainingRun(directory=directory, record=record, model=study.model(architecture), train_config=train_config,
                      spec=spec, seed=config.seed, data=data, teacher=teacher, teacher_variables=teacher_variables)
    return Stage(study, stage, run)


def max_batch_runs() -> int | None:
    """The most runs one program trains: no limit on accelerators, where the runs are vmapped;
    one on CPU. There two cores are kept busy by one run's convolutions, so a batch trains no
    faster than its runs one after another (0.3-1.05x vmapped, 0.56-1.2x unrolled, at R = 1-16
    on the digits models; benchmarks/README.md), while an unrolled program compiles in time
    growing with R (140 s at R = 16). One run per program compiles once for all the runs of a
    kind, whose ω, τ, k and lr are data of the program (`train.fit_batch`)."""
    return 1 if jax.default_backend() == "cpu" else None


def batch_plan(group: Sequence, run_devices: int, limit: int | None) -> list[tuple[list, int]]:
    """`group`'s runs as batches, each with the number of device groups its runs are spread over.

    The runs in multiples of `run_devices` make the fewest near-equal batches of at most `limit`
    runs (None: no limit; a limit below `run_devices` is raised to it), each spread over
    `run_devices` groups of the mesh's `run` axis (`loop.make_mesh`), every run's batch over the
    devices of its group. The runs left over (fewer than `run_devices`) are one more batch, spread
    over gcd(its size, run_devices) groups, so that every device works in every batch.
    """
    units, left = divmod(len(group), run_devices)
    per_batch = units if limit is None else max(limit // run_devices, 1)
    count = -(-units // per_batch) if units else 0
    size = -(-units // count) * run_devices if count else 0
    batches = [(list(group[i:i + size]), run_devices) for i in range(0, units * run_devices, size)] if size else []
    if left:
        batches.append((list(group[units * run_devices:]), math.gcd(left, run_devices)))
    return batches


def fit_stages(stages: Sequence[Stage], progress: "Progress | None" = None) -> None:
    """Fit the stages this session has not fitted yet in as few programs as possible.

    Stages whose runs may share a batch (`train.batch_conflicts`: the same model, step kind and
    schedule; seeds, ω, τ, k, lr and per-run inputs may differ) train as one program
    (`train.fit_batch`, at most `max_batch_runs()` runs each), whatever study they belong to; a
    stage named twice is fitted once. Each result lands in its study's `runs`. `progress` hears
    of every epoch and every finished run.
    """
    pending = list({stage.run.directory: stage for stage in stages
                    if stage.run.directory not in stage.study.runs}.values())
    groups: list[list[Stage]] = []
    for stage in pending:
        group = next((g for g in groups if not batch_conflicts(g[0].run, stage.run)), None)
        if group is None:
            groups.append([stage])
        else:
            group.append(stage)
    common = os.path.commonpath([os.path.abspath(stage.run.directory) for stage in pending]) if pending else ""
    batches = [batch for g in groups for batch in batch_plan(g, g[0].study.run_devices, max_batch_runs())]
    for group, spread in batches:
        first = group[0]
        log = _stage_log(first.study, ",".join(dict.fromkeys(stage.name for stage in group)))
        if len(group) == 1 and len(pending) > 1:  # a batch names its runs itself (`fit_batch`)
            log = functools.partial(_named_log, log, os.path.relpath(os.path.abspath(first.run.directory), common))
        mesh = make_mesh(first.study.mesh.devices, run_devices=spread)
        results = fit_batch([stage.run for stage in group], mesh=mesh, log=log,
                            progress=None if progress is None else progress.trained)
        for stage, result in zip(group, results):
            stage.study.runs[stage.run.directory] = result
        if progress is not None:
            progress.finished([stage.run.directory for stage in group])


def _named_log(log: Callable[[str], None], name: str, message: str) -> None:
    log(f"{name}: {message}")


class Progress:
    """One line about a command's training runs: runs done of all, images/s and the ETA.

    `runs`: the directories of the runs still to train, `images` the examples they still have to
    train; `trained(images)` after every epoch of a batch, `finished(directories)` after every
    batch (runs that had finished before are not counted); the line is logged at most every
    `every_seconds` and after every batch. The rate counts this session's images; the ETA divides
    the images still to train by it.
    """

    def __init__(self, log: Callable[[str], None], runs: Sequence[str], images: int, every_seconds: float = 30.0):
        self.log, self.pending, self.images, self.every_seconds = log, set(runs), images, every_seconds
        self.runs = len(self.pending)
        self.runs_done = self.images_done = 0
        self.start = self.last = time.perf_counter()

    def line(self) -> str:
        rate = self.images_done / max(time.perf_counter() - self.start, 1e-9)
        eta = f"{max(self.images - self.images_done, 0) / rate:.0f}s" if rate > 0 else "unknown"
        return f"runs {self.runs_done}/{self.runs} done, {rate:.0f} images/s, eta {eta}"

    def trained(self, images: int) -> None:
        self.images_done += images
        if time.perf_counter() - self.last >= self.every_seconds:
            self.last = time.perf_counter()
            self.log(self.line())

    def finished(self, directories: Sequence[str]) -> None:
        self.runs_done += len(self.pending.intersection(directories))
        self.last = time.perf_counter()
        self.log(self.line())


def teacher_spec(study: Study, name: str) -> StepSpec:
    """The step that trains teacher `name` (docs/method.md §2, §5)."""
    c = study.config
    if name == "base":
        return StepSpec("ce")
    if name == "ast":
        return StepSpec("ast", c.ast.temperature, c.ast.omega, sparsity_k(c.ast, study.num_classes), c.ast.divergence,
                        target_statistics=c.ast.target_statistics)
    if name == "nasty":
        return StepSpec("nasty", c.nasty.temperature, c.nasty.omega)
    if name == "stt":
        # STT is the AST step with a clean input (thesis §5): it follows the AST step's statistics ordering.
        return StepSpec("stt", c.stt.temperature, c.stt.omega, sparsity_k(c.stt, study.num_classes), c.stt.divergence,
                        target_statistics=c.ast.target_statistics)
    if name == "ini":
        return StepSpec("ini", objective=InISettings(**{k: v for k, v in c.ini.items() if k not in ("ood_set", "ood_images")}))
    if name == "meco":
        return StepSpec("meco", objective=meco_settings(study))
    raise ValueError(f"unknown trained teacher {name!r}; valid: {', '.join(TRAINED_TEACHERS)}")


def meco_settings(study: Study) -> meco.MecoSettings:
    return meco.MecoSettings(**study.config.meco.to_dict())


def ini_clone(study: Study) -> tuple[Teacher, dict]:
    """InI's surrogate clone: the teacher's architecture at a fresh initialisation (its own seed
    stream), never trained, always queried in inference mode (docs/method.md §11.1)."""
    module = study.model(study.config.teacher.model)
    key = jax.random.fold_in(jax.random.PRNGKey(study.config.seed), Stream.INI_CLONE)
    variables = module.init(key, jnp.zeros((1, *study.train.images.shape[1:]), jnp.float32), train=False)
    return Teacher(module), jax.device_get(variables)


def ood_set(study: Study):
    """InI's OOD images (`config.ini.ood_set`, `ood_images` of them, the victim's shape): a query set."""
    c = study.config
    return load_query_set(c.ini.ood_set, image_shape=study.train.images.shape[1:], num_images=c.ini.ood_images,
                          seed=c.seed, data_dir=c.data.data_dir or None, victim_examples=c.data.train_examples,
                          victim_seed=c.seed)


def import_base_teacher(study: Study) -> RunResult:
    """The base teacher from `config.teacher.torch_checkpoint` (a PyTorch state_dict), evaluated."""
    from ast_jax import interop

    path = study.config.teacher.torch_checkpoint
    if path not in study.runs:
        architecture = study.config.teacher.model
        variables = interop.load_torch_checkpoint(path, architecture, study.num_classes)
        predict = make_predict(study.model(architecture), study.mesh, batch_size=study.config.train.eval_batch_size,
                               mean=study.dataset.mean, std=study.dataset.std)
        accuracy = evaluate(predict, variables, study.test)["test_accuracy"]
        _stage_log(study, "base")(f"imported {path}: test accuracy {accuracy:.4f}")
        study.runs[path] = RunResult(variables, [], accuracy, accuracy)
    return study.runs[path]


def _owner(study: Study, teacher: str) -> Study:
    """The study whose work directory holds teacher `teacher`'s runs: a sweep cell's base study
    for the base teacher and the Stingy Teacher (docs/method.md §12), else `study` itself."""
    return study.base if study.base is not None and teacher in ("base", "stingy") else study


def teacher_directory(study: Study, name: str) -> str:
    return os.path.join(_owner(study, name).workdir, "teachers", name)


def train_teacher(study: Study, name: str) -> RunResult:
    """Train (or resume, or load) teacher `name`; the base teacher and the PGD set come first.

    With `config.teacher.torch_checkpoint` set, the base teacher is imported instead of trained.
    """
    study = _owner(study, name)
    directory = teacher_directory(study, name)
    if directory not in study.runs:
        if name == "base" and study.config.teacher.torch_checkpoint:
            return import_base_teacher(study)
        fit_stages([teacher_stage(study, name)])
    return study.runs[directory]


def teacher_stage(study: Study, name: str) -> Stage:
    """The training stage of teacher `name` (its inputs checked; the base teacher and the PGD set
    it needs are made first)."""
    study = _owner(study, name)
    spec = teacher_spec(study, name)
    architecture, train_config = study.config.teacher.model, teacher_train_config(study.config, name)
    directory = teacher_directory(study, name)
    require_finished(study, directory, train_config, f"train --stage {name}")
    inputs = _stage_inputs(study)
    kwargs = {}
    if name == "ast":
        inputs = _stage_inputs(study, adversarial_set=adversarial_set_name(study))
    elif name == "nasty":
        inputs = _stage_inputs(study, base_teacher=teacher_fingerprint(study, "base"))
    elif name == "ini":
        ood = ood_set(study)
        inputs = _stage_inputs(study, ood_set=ood.fingerprint)
    check_stage(study, name, directory, inputs)
    if name == "ast":
        kwargs = dict(adv_images=adversarial_set(study), pairing=study.config.ast.pairing)
    elif name == "nasty":
        kwargs = dict(teacher=Teacher(study.model(architecture)), teacher_variables=train_teacher(study, "base").variables)
    elif name == "ini":
        clone, clone_variables = ini_clone(study)
        kwargs = dict(ood_images=np.asarray(normalize(to_unit_float(ood.images), study.dataset.mean, study.dataset.std)),
                      teacher=clone, teacher_variables=clone_variables)
    return _stage(study, name, directory, architecture, train_config, spec, inputs, **kwargs)


def teacher_fingerprint(study: Study, name: str) -> str:
    """`fingerprint` of teacher `name`'s variables (the base's for `stingy`), once per session."""
    name = "base" if name == "stingy" else name
    if name not in study.fingerprints:
        study.fingerprints[name] = fingerprint(train_teacher(study, name).variables, {})
    return study.fingerprints[name]


def fingerprint(variables, settings: dict) -> str:
    """sha256 (16 hex digits) of a model's variables and a JSON-able dict of settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(variables), key=lambda kv: jax.tree_util.keystr(kv[0])):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()[:16]


def _pgd_settings(study: Study) -> dict:
    """What the adversarial set depends on besides the base teacher: PGD settings, seed, training images."""
    return {"pgd": json.loads(to_json(study.config.pgd)), "data": study.config.data.name, "seed": study.config.seed,
            "train_images": study.train_data}


def _progress_log(log: Callable[[str], None], every_seconds: float = 30.0) -> Callable[[int, int], None]:
    """`progress(done, total)` that logs images/s and the ETA at most every `every_seconds`, and at the end."""
    start = last = time.perf_counter()

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if done < total and now - last < every_seconds:
            return
        last, rate = now, done / max(now - start, 1e-9)
        log(f"{done}/{total} images, {rate:.1f} images/s, eta {(total - done) / rate:.0f}s")

    return progress


def make_attack(study: Study, progress: Callable[[int, int], None] | None = None):
    """`attack(variables, images_uint8, labels) -> adversarial images`: the study's PGD against its teacher model."""
    pgd = study.config.pgd
    attack = make_pgd_attack(study.model(study.config.teacher.model), study.mesh, batch_size=pgd.batch_size,
                             mean=study.dataset.mean, std=study.dataset.std, eps=pgd.eps,
                             step_size=pgd.step_size, steps=pgd.steps, space=pgd.space,
                             random_start=pgd.random_start, progress=progress)
    key = jax.random.fold_in(jax.random.PRNGKey(study.config.seed), Stream.PGD_START)
    return lambda variables, images, labels: attack(variables, images, labels, key)


def adversarial_set_name(study: Study) -> str:
    """The adversarial set's fingerprint: the base teacher's parameters and `_pgd_settings`."""
    return fingerprint(train_teacher(study, "base").variables, _pgd_settings(study))


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def adversarial_set_problem(adv: np.ndarray, train: ArraySplit, record, settings: dict) -> str | None:
    """What is wrong with a cached adversarial set for `train` and its `record` (None: nothing).

    It needs one row per training image, the training images' (H, W, C), a float dtype, finite
    values, and a record holding the current PGD `settings` and the array's sha256.
    """
    if adv.shape[:1] != (len(train),):
        return f"it has {adv.shape[0] if adv.ndim else 0} rows for {len(train)} training images"
    if adv.shape[1:] != train.images.shape[1:]:
        return f"its images have shape {adv.shape[1:]}, the model's input is {train.images.shape[1:]}"
    if not np.issubdtype(adv.dtype, np.floating):
        return f"its dtype is {adv.dtype}, not floating point"
    if not np.isfinite(adv).all():
        return "it holds NaN or infinite values"
    if record != {"settings": settings, "sha256": _array_sha256(adv)}:
        return "its record (the .json beside it) is missing or names other PGD settings or other content"
    return None


def adversarial_set(study: Study) -> np.ndarray:
    """The base teacher's PGD training set (model-input space), generated once, cached and checked.

    A cached set that fails `adversarial_set_problem` is refused (UnreadableFileError naming the
    file): delete it to regenerate it. Without compute (`report`) a missing set is a
    MissingStageError.
    """
    base = train_teacher(study, "base")
    name = adversarial_set_name(study)
    directory = os.path.join((study.base or study).workdir, "adversarial")
    path, record_path = os.path.join(directory, f"{name}.npy"), os.path.join(directory, f"{name}.json")
    if os.path.exists(path):
        adv = load_npy(path)
        record = read_json(record_path) if os.path.exists(record_path) else None
        problem = adversarial_set_problem(adv, study.train, record, _pgd_settings(study))
        if problem:
            raise UnreadableFileError(f"adversarial set {path} does not fit this study: {problem}; delete it "
                                      f"(and {record_path}) to regenerate it")
        return adv
    if not study.compute:
        raise MissingStageError(f"adversarial/{name}.npy (run `ast-jax attack-set`)")
    log = _stage_log(study, "attack-set")
    log(f"PGD on {len(study.train.labels)} training images ({study.config.pgd.steps} steps)")
    attack = make_attack(study, progress=_progress_log(log))
    adv = to_host(attack(base.variables, study.train.images, study.train.labels))
    if is_writer():  # the record first: a set on disk always has its record
        atomic_write(record_path, json.dumps({"settings": _pgd_settings(study), "sha256": _array_sha256(adv)},
                                             indent=1, sort_keys=True))
        save_npy(path, adv)
        log(f"wrote {path}")
    return adv


def released_teacher(study: Study, name: str) -> tuple[Teacher, dict]:
    """(Teacher, variables) as the attacker queries it: `stingy` is the base with sparse outputs;
    `meco` perturbs every query afresh (x + s·h(x), docs/method.md §11.2)."""
    module = study.model(study.config.teacher.model)
    if name == "stingy":
        k = sparsity_k(study.config.stingy, study.num_classes)
        return Teacher(module, functools.partial(losses.sparse_topk, k=k)), train_teacher(study, "base").variables
    return Teacher(module, input_defense=teacher_input_defense(study, name)), train_teacher(study, name).variables


def teacher_input_defense(study: Study, name: str):
    """The randomised input perturbation teacher `name` releases through: MeCo's, else None."""
    return meco.input_defense(meco_settings(study)) if name == "meco" else None


def release_key(study: Study) -> jax.Array:
    """The key of a randomised release's answers in the report and the matrix (`Stream.MECO_EVAL`)."""
    return jax.random.fold_in(jax.random.PRNGKey(study.config.seed), Stream.MECO_EVAL)


def released_logits(study: Study, released: Teacher, variables, images: np.ndarray) -> np.ndarray:
    """Teacher `released`'s logits on uint8 `images` (N, classes), float32, in batches of the eval
    batch size. A randomised release (MeCo) draws batch b's perturbations from
    `fold_in(release_key(study), b)`: the same numbers every time, and those of `meco.utility`
    over the same batches."""
    config, dataset = study.config, study.dataset
    predict = make_predict(released.module, study.mesh, batch_size=config.train.eval_batch_size,
                           mean=dataset.mean, std=dataset.std)
    if not released.is_random:
        return to_host(released.transform(predict(variables, images)))
    key = release_key(study)
    mean, std = jnp.asarray(dataset.mean, jnp.float32), jnp.asarray(dataset.std, jnp.float32)
    logits = jax.jit(lambda index, x: released.logits(variables, normalize(to_unit_float(x), mean, std),
                                                      jax.random.fold_in(key, index)))
    return to_host(host_batched_map(logits, study.mesh, config.train.eval_batch_size, images))


def distill_spec(study: Study, teacher: str) -> StepSpec:
    section = study.config.stingy if teacher == "stingy" else study.config.kd
    return StepSpec("kd", section.temperature, section.omega)


def student_directory(study: Study, teacher: str, architecture: str) -> str:
    return os.path.join(_owner(study, teacher).workdir, "students", f"{teacher}-{architecture}")


def distill_student(study: Study, teacher: str, architecture: str) -> RunResult:
    """The stealing attack: distil `architecture` from `teacher`'s released outputs (eq. 1)."""
    study = _owner(study, teacher)
    directory = student_directory(study, teacher, architecture)
    if directory not in study.runs:
        fit_stages([student_stage(study, teacher, architecture)])
    return study.runs[directory]


def student_stage(study: Study, teacher: str, architecture: str) -> Stage:
    """The training stage of `architecture` distilled from `teacher` (its teacher trained first)."""
    if teacher not in TEACHERS:
        raise ValueError(f"unknown teacher {teacher!r}; valid: {', '.join(TEACHERS)}")
    study = _owner(study, teacher)
    stage, directory = f"{teacher}->{architecture}", student_directory(study, teacher, architecture)
    train_config = train_config_for(study.config, architecture)
    require_finished(study, directory, train_config, f"distill --teacher {teacher} --student {architecture}")
    released, variables = released_teacher(study, teacher)
    inputs = _stage_inputs(study, teacher=teacher_fingerprint(study, teacher))
    check_stage(study, stage, directory, inputs)
    return _stage(study, stage, directory, architecture, train_config, distill_spec(study, teacher), inputs,
                  teacher=released, teacher_variables=variables)


def _planned_runs(studies: Sequence[Study]) -> dict[str, tuple]:
    """Stage directory -> (training config, images in the training set) of every run `train_studies` trains."""
    planned = {}
    for study in studies:
        config = study.config
        for name in config.teachers:
            if name != "stingy" and not (name == "base" and config.teacher.torch_checkpoint):
                planned[teacher_directory(study, name)] = (teacher_train_config(config, name), len(study.train))
            for architecture in config.students:
                planned[student_directory(study, name, architecture)] = (train_config_for(config, architecture),
                                                                         len(study.train))
    return planned


def _images_to_train(directory: str, train_config, num_examples: int) -> int:
    """Examples a run still has to train: its epochs after the last one `metrics.jsonl` records."""
    rows = checkpoints.read_metrics(directory) if os.path.isdir(directory) else []
    return max(train_config.epochs - (rows[-1]["epoch"] if rows else 0), 0) * num_examples


def train_studies(studies: Sequence[Study]) -> None:
    """Every teacher and student of `studies`, each kind batched across the studies (`fit_stages`).

    Order: the base teachers, the PGD sets (one study at a time), the other teachers, the students.
    Studies that share a base study (a sweep's cells) train its base teacher and its students once.
    A progress line (`Progress`) follows the runs this call trains.
    """
    planned = {directory: plan for directory, plan in _planned_runs(studies).items()
               if not _finished(directory, plan[0], plan[1])}
    progress = Progress(lambda message: studies[0].log(f"[progress] {message}"), list(planned),
                        sum(_images_to_train(d, *plan) for d, plan in planned.items()))
    with_base = [s for s in studies if "base" in s.config.teachers and not s.config.teacher.torch_checkpoint]
    fit_stages([teacher_stage(s, "base") for s in with_base], progress)
    for study in studies:
        if "ast" in study.config.teachers:
            adversarial_set(study)
    fit_stages([teacher_stage(s, name) for s in studies for name in s.config.teachers
                if name not in ("base", "stingy")], progress)
    fit_stages([student_stage(s, teacher, architecture) for s in studies for teacher in s.config.teachers
                for architecture in s.config.students], progress)


def run(study: Study) -> list[str]:
    """Every stage of the study, then the report; returns the report's paths."""
    train_studies([study])
    return write_report(study)


def _finished_or_missing(missing: list[str], stage: Callable, *args):
    """`stage(*args)`, or None after adding what is missing (MissingStageError's message) to `missing`."""
    try:
        return stage(*args)
    except MissingStageError as error:
        if str(error) not in missing:
            missing.append(str(error))
        return None


def write_report(study: Study, num_figure_images: int = 4) -> list[str]:
    """report.md/json/csv and outputs.png from the finished stages (docs/method.md §2 metrics).

    Trains nothing and runs no PGD: stages that have not finished are listed as missing with the
    command that makes them. The figure shows the first `num_figure_images` training images,
    whose adversarial versions (the "base (adversarial)" column) come from the cached PGD set;
    without it that column is left out.
    """
    from ast_jax.results import report

    study = dataclasses.replace(study, compute=False)  # shares the session's runs and fingerprints
    config, test, missing = study.config, study.test, []
    temperature = config.kd.temperature
    images, labels = study.train.images[:num_figure_images], study.train.labels[:num_figure_images]
    clean = normalize(to_unit_float(images), study.dataset.mean, study.dataset.std)
    figure_key = release_key(study)
    teacher_accuracy, stats, figure, utility = {}, {}, {}, {}
    for name in config.teachers:
        teacher = _finished_or_missing(missing, released_teacher, study, name)
        if teacher is None:
            continue
        released, variables = teacher
        logits = released_logits(study, released, variables, test.images)
        teacher_accuracy[name] = float(np.mean(np.argmax(logits, -1) == test.labels))
        stats[name] = report.output_statistics(logits, test.labels, temperature, seed=config.seed)
        figure[name] = np.asarray(losses.softmax_t(released.logits(variables, clean, figure_key), temperature))
        if released.is_random:
            utility[name] = meco.utility(
                victim_release(released.module, variables, study.dataset.mean, study.dataset.std,
                               input_defense=released.input_defense),
                victim_release(released.module, variables, study.dataset.mean, study.dataset.std), test.images,
                test.labels, release_key(study), config.train.eval_batch_size)
    student_accuracy = {}
    for teacher in config.teachers:
        for architecture in config.students:
            student = _finished_or_missing(missing, distill_student, study, teacher, architecture)
            if student is not None and teacher in teacher_accuracy:
                student_accuracy[(teacher, architecture)] = student.final_accuracy
    rows = report.result_rows(teacher_accuracy, student_accuracy) if "base" in teacher_accuracy else []
    adv = _finished_or_missing(missing, adversarial_set, study) if "base" in teacher_accuracy else None
    if adv is not None:
        base = train_teacher(study, "base").variables
        adv_logits = study.model(config.teacher.model).apply(base, adv[:num_figure_images], train=False)
        figure["base (adversarial)"] = np.asarray(losses.softmax_t(adv_logits, temperature))
    order = [name for name in ("base", "base (adversarial)", "stingy", "nasty", "stt", "ast", "ini", "meco")
             if name in figure]
    if order and is_writer():
        report.plot_outputs(os.path.join(study.workdir, "outputs.png"), np.asarray(to_unit_float(images)),
                            {name: figure[name] for name in order}, labels)
    notes = [f"Accuracies on the {len(test.labels)}-image test split after the last epoch; "
             f"output statistics of sigma_T at the attack's temperature T = {temperature:g}; "
             f"outputs.png: the first {num_figure_images} training images."]
    for name, figures in utility.items():
        notes.append(f"{name} is evaluated through its randomised release (fresh perturbation per query): "
                     f"test accuracy {figures['accuracy']:.4f} (clean {figures['clean_accuracy']:.4f}), "
                     f"mean l1 between released and clean probabilities {figures['l1']:.4f}")
    if missing:
        study.log("[report] missing: " + "; ".join(missing))
        notes.append("missing: " + "; ".join(missing))
    return report.write_report(study.workdir, title=f"ast_jax study: {config.name}", rows=rows, stats=stats,
                               notes=notes)
