"""A study's typed settings: what the studies read, built once from a validated config at the CLI.

The command line loads a config (ml_collections, `ast_jax.configs`), validates it once and turns
it into a `StudySettings` (`ast_jax.cli.config.load_settings`); the studies take that object
and never see the config or its loader. Each section is a frozen dataclass whose fields are the
section's config keys, so `settings.ast.omega` reads what `--config.ast.omega` set.

`study_record` is the study's record (`study.json` and every stage's `run.json`): the settings as
JSON, in the config's shape, without `COMMAND_SECTIONS`. `TEACHER_NAMES` are the teachers a study
can have.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from ast_jax.data.specs import AugmentSpec
from ast_jax.defences.ini import InISettings
from ast_jax.defences.meco import MecoSettings
from ast_jax.engine.optim import TrainSettings
from ast_jax.losses import resolve_k

#: Every teacher a study can have: the thesis's (docs/method.md §3) and the training-time defences of
#: docs/method.md §11 (InI, MeCo). `stingy` is the base teacher's sparse release, trained by nobody.
TEACHER_NAMES: tuple[str, ...] = ("base", "stingy", "ast", "nasty", "stt", "ini", "meco")
#: The thesis's study, the default `config.teachers`.
THESIS_TEACHERS: tuple[str, ...] = TEACHER_NAMES[:5]
#: Sections of the commands that run many studies on one (the attack matrix, the sweep): they are
#: not part of the study's record (`study_record`), so changing them never refuses a work
#: directory the pipeline already uses.
COMMAND_SECTIONS: tuple[str, ...] = ("matrix", "attacks", "sweep")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """The data set (`ast_jax.data.DATASETS`), where it lives ('' = its default location), a
    class-balanced subset of `train_examples` training images (0 = all) and the training augmentation."""

    name: str
    data_dir: str
    train_examples: int
    augment: AugmentSpec


@dataclasses.dataclass(frozen=True)
class TeacherSettings:
    """The teachers' architecture, and a PyTorch state_dict to import as the base teacher ('' = train it)."""

    model: str
    torch_checkpoint: str


@dataclasses.dataclass(frozen=True)
class PGDSettings:
    """The PGD set of the AST teacher (thesis eq. 4, docs/method.md §2): ε, step and steps in `space`."""

    eps: float
    step_size: float
    steps: int
    space: str
    random_start: bool
    batch_size: int


@dataclasses.dataclass(frozen=True)
class Softening:
    """Temperature τ and weight ω of a tempered loss (NT's eq. 3, KD's eq. 1)."""

    temperature: float
    omega: float


@dataclasses.dataclass(frozen=True)
class SparseSoftening(Softening):
    """`Softening` with a sparsity: exactly one of `k` (kept classes) and `ratio` (of C) is set (`sparsity_k`)."""

    k: int | None
    ratio: float | None


@dataclasses.dataclass(frozen=True)
class STTSettings(SparseSoftening):
    """The Stingy Trained Teacher's loss: a sparse target and its `divergence` (EPD or KL)."""

    divergence: str


@dataclasses.dataclass(frozen=True)
class ASTSettings(STTSettings):
    """AST's loss (thesis eq. 5, docs/method.md §2): STT's plus how clean and PGD images pair and
    which BatchNorm statistics the sparse target sees (docs/method.md §4)."""

    pairing: str
    target_statistics: str


@dataclasses.dataclass(frozen=True)
class InITeacherSettings(InISettings):
    """InI's step settings (`InISettings`) and its OOD query set (`ood_set`, `ood_images` images)."""

    ood_set: str = "photos"
    ood_images: int = 10_000

    @property
    def objective(self) -> InISettings:
        """The step's objective: these settings without the OOD set (the step never sees it)."""
        return InISettings(**{field.name: getattr(self, field.name) for field in dataclasses.fields(InISettings)})


@dataclasses.dataclass(frozen=True)
class MatrixSettings:
    """`ast-jax matrix` (docs/method.md §10.5): victims, attack cells, clone ('' = the teacher's), seeds, batch."""

    victims: tuple[str, ...]
    attacks: tuple[str, ...]
    clone: str
    seeds: tuple[int, ...]
    batch_size: int


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """`ast-jax sweep` without --grid / --seeds (docs/method.md §12): grid entries "KEY=V1,V2,..." and seeds."""

    grid: tuple[str, ...]
    seeds: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """Every setting of one study (the keys of `ast_jax.configs.common.study_config`).

    `student_train` / `teacher_train`: architecture / teacher -> partial override of `train`
    (`train_for`, `teacher_train_for`). `attacks`: attack cell name -> its `kind` and settings
    (`ast_jax.attacks.DEFAULTS[kind]`).
    """

    name: str
    seed: int
    dtype: str
    data: DataSettings
    teacher: TeacherSettings
    train: TrainSettings
    pgd: PGDSettings
    ast: ASTSettings
    nasty: Softening
    stt: STTSettings
    stingy: SparseSoftening
    kd: Softening
    teachers: tuple[str, ...]
    ini: InITeacherSettings
    meco: MecoSettings
    teacher_train: Mapping[str, Mapping[str, Any]]
    students: tuple[str, ...]
    student_train: Mapping[str, Mapping[str, Any]]
    matrix: MatrixSettings
    attacks: Mapping[str, Mapping[str, Any]]
    sweep: SweepSettings

    def train_for(self, architecture: str) -> TrainSettings:
        """`train` with `student_train[architecture]` applied (architectures without one: `train`)."""
        return dataclasses.replace(self.train, **self.student_train.get(architecture, {}))

    def teacher_train_for(self, teacher: str) -> TrainSettings:
        """`train` with `teacher_train[teacher]` applied (InI's and MeCo's own schedules)."""
        return dataclasses.replace(self.train, **self.teacher_train.get(teacher, {}))


def sparsity_k(section: SparseSoftening, num_classes: int) -> int:
    """The `k` a sparse section (`ast`, `stt`, `stingy`) keeps out of `num_classes` classes.

    `k` when set, else ``int(ratio * C)`` as in the Stingy Teacher code (docs/method.md §2); see
    `losses.resolve_k`.
    """
    return resolve_k(num_classes, k=section.k, ratio=section.ratio)


def to_record(value: Any) -> Any:
    """Settings (a dataclass, or mappings and sequences of them) as plain JSON values (tuples as lists).

    A `TrainSettings` leaves out its fields with defaults (`schedule`, `nesterov`): they are the attack
    clones' options, which a study's config does not have.
    """
    if isinstance(value, TrainSettings):
        return {field.name: to_record(getattr(value, field.name)) for field in dataclasses.fields(value)
                if field.default is dataclasses.MISSING}
    if dataclasses.is_dataclass(value):
        return {field.name: to_record(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: to_record(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_record(item) for item in value]
    return value


def study_record(settings: StudySettings) -> dict:
    """The study's record (`study.json` and every stage's run.json): the settings without `COMMAND_SECTIONS`."""
    return {key: value for key, value in to_record(settings).items() if key not in COMMAND_SECTIONS}


def to_json(settings: Any) -> str:
    """Stable JSON of `settings` (sorted keys, 2-space indent), for run records."""
    return json.dumps(to_record(settings), sort_keys=True, indent=2)
