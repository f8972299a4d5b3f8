"""A study: its settings, its work directory, its data and its mesh (docs/method.md §3).

`open_study` loads the data and checks everything that can fail on bad input before the work
directory is claimed (`<workdir>/study.json` holds the study's config; another config is
refused) and before any compute: the config, the data, the device count (every batch size of
every architecture the command trains), the batch sizes against the training set, the PyTorch
checkpoint (a file whose finite float tensors fit the architecture on this data) and the
requested teacher and students. What the study makes in its work directory is laid out in
`ast_jax.studies.stages`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ast_jax import models
from ast_jax.data import ArraySplit, DatasetSpec, class_balanced_subset, dataset_spec, load_split
from ast_jax.data.query_sets import load_query_set
from ast_jax.engine import ExecutionPolicy, checkpoints, make_mesh
from ast_jax.engine.loop import AXIS, check_batch_size, check_run_devices
from ast_jax.studies.settings import TEACHER_NAMES, StudySettings, study_record

TEACHERS = TEACHER_NAMES
TRAINED_TEACHERS = tuple(name for name in TEACHERS if name != "stingy")
STUDY_RECORD = "study.json"


@dataclasses.dataclass
class Study:
    """A study's settings (`config`, built by the CLI from its validated config), its work directory
    and its data (host arrays).

    `runs` and `fingerprints` hold what this session made or loaded: a stage's result and a
    teacher's parameter fingerprint, by the stage's directory. `base_teacher`: for a sweep cell,
    the base-teacher stage of its seed's study, which it shares (`stages.teacher_stage`).
    """

    config: StudySettings
    workdir: str
    dataset: DatasetSpec
    train: ArraySplit
    test: ArraySplit
    mesh: object
    log: Callable[[str], None] = functools.partial(print, flush=True)  # progress reaches a log file as it happens
    runs: dict = dataclasses.field(default_factory=dict)  # stage directory -> RunResult, this session
    fingerprints: dict = dataclasses.field(default_factory=dict)  # teacher stage directory -> parameter fingerprint
    base_teacher: object = None  # a sweep cell's: its seed study's base-teacher `stages.Stage` (docs/method.md §12)
    run_devices: int = 1  # the device groups (mesh axis `run`) a batch of runs is spread over (`pipeline.batch_plan`)
    policy: ExecutionPolicy = dataclasses.field(default_factory=ExecutionPolicy.current)  # how its runs execute

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @functools.cached_property
    def train_data(self) -> str:
        """sha256 of the training images and labels (every stage's input)."""
        return hashlib.sha256(self.train.images.tobytes() + self.train.labels.tobytes()).hexdigest()

    @functools.cached_property
    def ood_set(self):
        """InI's OOD images (`config.ini.ood_set`, `ood_images` of them, the victim's shape): a query set."""
        c = self.config
        return load_query_set(c.ini.ood_set, image_shape=self.train.images.shape[1:], num_images=c.ini.ood_images,
                              seed=c.seed, data_dir=c.data.data_dir or None, victim_examples=c.data.train_examples,
                              victim_seed=c.seed)

    def model(self, architecture: str):
        return models.create(architecture, self.num_classes, jnp.dtype(self.config.dtype), axis_name=AXIS)


def stage_log(study: Study, stage: str) -> Callable[[str], None]:
    """The study's log, each line prefixed by `[stage]`."""
    return lambda message: study.log(f"[{stage}] {message}")


def open_study(config: StudySettings, workdir: str, log: Callable[[str], None] = functools.partial(print, flush=True), *,
               students: Sequence[str] | None = None, teacher: str | None = None, run_devices: int = 1,
               policy: ExecutionPolicy | None = None) -> Study:
    """Load the data of the study `config` describes, check it all (`check_study`), then claim `workdir`.

    `students` / `teacher`: what the command will distil (default: the config's students).
    `run_devices`: the number of device groups a batch of runs is spread over (`batch_plan`);
    it must divide the device count. `policy`: how its runs execute (None: `ExecutionPolicy.current()`).
    Another study's work directory is refused.
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
    return Study(config, workdir, spec, train, test, mesh, log, run_devices=run_devices,
                 policy=policy or ExecutionPolicy.current())


def _train_key(config: StudySettings, architecture: str, field: str) -> str:
    """The config key that sets `field` of `architecture`'s training (its override, else `train`)."""
    return f"config.student_train.{architecture}.{field}" if field in config.student_train.get(architecture, {}) \
        else f"config.train.{field}"


def _teacher_train_key(config: StudySettings, teacher: str, field: str) -> str:
    """The config key that sets `field` of teacher `teacher`'s training."""
    return f"config.teacher_train.{teacher}.{field}" if field in config.teacher_train.get(teacher, {}) \
        else f"config.train.{field}"


def check_study(config: StudySettings, dataset: DatasetSpec, train: ArraySplit, mesh, *, students: Sequence[str],
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
    schedules = [(config.train_for(architecture), functools.partial(_train_key, config, architecture))
                 for architecture in dict.fromkeys(students)]
    schedules += [(config.teacher_train_for(name), functools.partial(_teacher_train_key, config, name))
                   for name in TRAINED_TEACHERS]  # any of them can be trained (`ast-jax train --stage`)
    for train_config, key in schedules:
        for field in ("batch_size", "eval_batch_size"):
            check_batch_size(getattr(train_config, field), mesh, key(field))
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
