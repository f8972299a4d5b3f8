"""The stages of a study, each after the stages it is built from (docs/method.md §3).

    <workdir>/study.json                     the study's config (`study.open_study`)
    <workdir>/teachers/<name>/               base, ast, nasty, stt, ini, meco: checkpointed training runs
    <workdir>/adversarial/<fingerprint>.npy  PGD training set of the base teacher (+ .json)
    <workdir>/students/<teacher>-<arch>/     students distilled from each teacher (kd step)
    <workdir>/report.{md,json,csv}, outputs.png     the report (`ast_jax.studies.report`)
    <workdir>/matrix/..., matrix.{md,json,csv,png}  the stealing-attack matrix (`ast_jax.studies.matrix`)

A study's stages (`study_stages`), in the order of `KINDS`: the base teacher (trained, or
imported from `config.teacher.torch_checkpoint`), the PGD set (when `config.teachers` has ast),
the defensive teachers of `config.teachers` and the students of every teacher. The Stingy
Teacher (`stingy`) needs no training: it is the base teacher releasing sparse outputs. Besides
the thesis's five, a config may add the training-time defences InI (`ini`) and MeCo (`meco`,
released through its randomised input perturbation; docs/method.md §11). Teachers train with
`config.train` and their own `config.teacher_train.<name>` keys.

A stage lives in the work directory of the study whose config its record holds: a student
with the teacher it is distilled from (the base teacher for stingy), the PGD sets beside the
base teacher they attack. A sweep cell shares its seed study's base teacher
(`Study.base_teacher`), and with it those students and PGD sets (docs/method.md §12). What each
stage records of its inputs: `ast_jax.studies.provenance`; who makes the stages:
`ast_jax.studies.pipeline`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ast_jax import losses
from ast_jax.data import normalize, to_unit_float
from ast_jax.defences import meco
from ast_jax.engine import (
    LossHypers,
    RunData,
    RunResult,
    StepSpec,
    Teacher,
    TrainingRun,
    evaluate,
    make_pgd_attack,
    make_predict,
    to_host,
)
from ast_jax.engine.loop import host_batched_map
from ast_jax.engine.progress import image_progress
from ast_jax.files import atomic_write, is_writer, save_npy
from ast_jax.rng import Stream
from ast_jax.studies import provenance
from ast_jax.studies.provenance import (
    adversarial_set_record,
    check_stage,
    checked_adversarial_set,
    fingerprint,
    pgd_settings,
    stage_inputs,
)
from ast_jax.studies.settings import sparsity_k, study_record
from ast_jax.studies.study import TEACHERS, TRAINED_TEACHERS, Study, stage_log

KINDS = ("base teacher", "PGD set", "defensive teacher", "student")
"""The kinds of stage, in the order a study makes them: each is built from kinds before it."""


@dataclasses.dataclass(frozen=True, eq=False)
class Stage:
    """One stage of a study: a training run (a teacher, a student), the PGD set or an imported teacher.

    `kind`: one of `KINDS`; `study`: the study whose config its record holds and whose `runs`
    keeps its result; `name`: its name in the log and in refusals (`base`, `attack-set`, `ast`,
    `base->cnn`); `directory`: where it lives (an imported teacher: its file); `command`: the
    `ast-jax` command that makes it; `needs`: the stages it is built from; `train_config`: its
    training schedule (None: it trains nothing); `inputs()`: what its run.json records of
    `needs` (`provenance.stage_inputs`); `build(stage)`: its training run, its inputs checked
    (`run`), or, for a stage that trains nothing, its output, loaded or made.
    """

    kind: str
    study: Study
    name: str
    directory: str
    command: str
    build: Callable[[Stage], Any]
    needs: tuple[Stage, ...] = ()
    train_config: Any = None
    inputs: Callable[[], dict] | None = None

    @property
    def trains(self) -> bool:
        return self.train_config is not None

    @functools.cached_property
    def run(self) -> TrainingRun:
        """The training run `pipeline.fit_stages` fits (its inputs checked against its record first)."""
        return self.build(self)

    def check(self) -> None:
        """Refuse the stage if its run.json records other inputs (`provenance.StaleStageError`)."""
        check_stage(self.name, self.directory, self.inputs())


# ---- the stages of a study ----
def study_stages(study: Study) -> list[Stage]:
    """The stages of `config.teachers` and `config.students`, in dependency order (`KINDS`)."""
    config = study.config
    teachers = [teacher_stage(study, name) for name in config.teachers if name != "stingy"]
    attack_sets = [stage.needs[0] for stage in teachers if stage.name == "ast"]
    students = [student_stage(study, teacher, architecture) for teacher in config.teachers
                for architecture in config.students]
    return [stage for stage in teachers if stage.name == "base"] + attack_sets + \
        [stage for stage in teachers if stage.name != "base"] + students


def teacher_stage(study: Study, name: str) -> Stage:
    """The stage of teacher `name` (the base teacher's for `stingy`, whose parameters it releases).

    The base teacher is a sweep cell's `Study.base_teacher`, else imported when
    `config.teacher.torch_checkpoint` is set, else trained like the others.
    """
    name = "base" if name == "stingy" else name
    if name == "base" and study.base_teacher is not None:
        return study.base_teacher
    if name == "base" and study.config.teacher.torch_checkpoint:
        return Stage("base teacher", study, "base", study.config.teacher.torch_checkpoint, "train --stage base",
                     _import_base_teacher)
    teacher_spec(study, name)  # an unknown teacher fails here
    needs = (adversarial_stage(study),) if name == "ast" else (teacher_stage(study, "base"),) if name == "nasty" else ()
    return Stage("base teacher" if name == "base" else "defensive teacher", study, name,
                 os.path.join(study.workdir, "teachers", name), f"train --stage {name}", _teacher_run, needs,
                 study.config.teacher_train_for(name), functools.partial(_teacher_inputs, study, name, needs))


def adversarial_stage(study: Study) -> Stage:
    """The PGD set of `study`'s PGD settings against its base teacher, in the base teacher's work directory."""
    base = teacher_stage(study, "base")
    return Stage("PGD set", study, "attack-set", os.path.join(base.study.workdir, "adversarial"), "attack-set",
                 _adversarial_set, (base,))


def student_stage(study: Study, teacher: str, architecture: str) -> Stage:
    """The stage of `architecture` distilled from `teacher`, in its teacher's study."""
    if teacher not in TEACHERS:
        raise ValueError(f"unknown teacher {teacher!r}; valid: {', '.join(TEACHERS)}")
    source = teacher_stage(study, teacher)
    home = source.study
    return Stage("student", home, f"{teacher}->{architecture}",
                 os.path.join(home.workdir, "students", f"{teacher}-{architecture}"),
                 f"distill --teacher {teacher} --student {architecture}",
                 functools.partial(_student_run, teacher=teacher, architecture=architecture), (source,),
                 home.config.train_for(architecture),
                 lambda: stage_inputs(home, teacher=parameters_fingerprint(source)))


# ---- what stages hold ----
def made(stage: Stage) -> bool:
    """Whether this session made or loaded `stage` (a PGD set is loaded afresh where it is used)."""
    return stage.directory in stage.study.runs


def output(stage: Stage):
    """A made stage's output: a teacher's or student's RunResult, or the PGD set (loaded and checked)."""
    return stage.study.runs[stage.directory] if stage.trains else stage.build(stage)


def finished(stage: Stage) -> bool:
    """Whether a training stage's run finished its epochs (`provenance.finished`)."""
    return provenance.finished(stage.directory, stage.train_config, len(stage.study.train))


def parameters_fingerprint(stage: Stage) -> str:
    """`fingerprint` of a made teacher stage's variables, once per session."""
    cache = stage.study.fingerprints
    if stage.directory not in cache:
        cache[stage.directory] = fingerprint(output(stage).variables, {})
    return cache[stage.directory]


def adversarial_set_name(stage: Stage) -> str:
    """The PGD set's name: a fingerprint of its (made) base teacher's parameters and `pgd_settings`."""
    return fingerprint(output(stage.needs[0]).variables, pgd_settings(stage.study))


def adversarial_paths(stage: Stage) -> tuple[str, str]:
    """The PGD set's .npy and its record, the .json beside it."""
    name = adversarial_set_name(stage)
    return os.path.join(stage.directory, f"{name}.npy"), os.path.join(stage.directory, f"{name}.json")


# ---- building the stages ----
def _training_run(stage: Stage, architecture: str, spec: StepSpec, hypers: LossHypers, inputs: dict,
                  **data) -> TrainingRun:
    """`stage`'s run of `architecture` with step `spec` and loss values `hypers`; `data`: the RunData
    and teacher fields it needs."""
    study, config = stage.study, stage.study.config
    teacher, teacher_variables = data.pop("teacher", None), data.pop("teacher_variables", None)
    run_data = RunData(study.train, study.test, study.dataset.mean, study.dataset.std, config.data.augment, **data)
    record = {"stage": stage.name, "study": study_record(config), "inputs": inputs}
    return TrainingRun(directory=stage.directory, record=record, model=study.model(architecture),
                       train_config=stage.train_config, spec=spec, seed=config.seed, data=run_data, teacher=teacher,
                       teacher_variables=teacher_variables, hypers=hypers)


def _teacher_inputs(study: Study, name: str, needs: tuple[Stage, ...]) -> dict:
    if name == "ast":
        return stage_inputs(study, adversarial_set=adversarial_set_name(needs[0]))
    if name == "nasty":
        return stage_inputs(study, base_teacher=parameters_fingerprint(needs[0]))
    if name == "ini":
        return stage_inputs(study, ood_set=study.ood_set.fingerprint)
    return stage_inputs(study)


def _teacher_run(stage: Stage) -> TrainingRun:
    """Teacher `stage.name`'s run: its inputs checked, then its PGD set, base teacher or OOD set and clone."""
    study, name = stage.study, stage.name
    spec, inputs = teacher_spec(study, name), stage.inputs()
    check_stage(name, stage.directory, inputs)
    data = {}
    if name == "ast":
        data = dict(adv_images=output(stage.needs[0]), pairing=study.config.ast.pairing)
    elif name == "nasty":
        data = dict(teacher=Teacher(study.model(study.config.teacher.model)),
                    teacher_variables=output(stage.needs[0]).variables)
    elif name == "ini":
        clone, clone_variables = ini_clone(study)
        data = dict(ood_images=np.asarray(normalize(to_unit_float(study.ood_set.images), study.dataset.mean,
                                                    study.dataset.std)),
                    teacher=clone, teacher_variables=clone_variables)
    return _training_run(stage, study.config.teacher.model, spec, teacher_hypers(study, name), inputs, **data)


def _student_run(stage: Stage, teacher: str, architecture: str) -> TrainingRun:
    """The stealing attack's run: `architecture` distilled from `teacher`'s released outputs (eq. 1)."""
    study = stage.study
    variables = output(stage.needs[0]).variables
    inputs = stage.inputs()
    check_stage(stage.name, stage.directory, inputs)
    return _training_run(stage, architecture, distill_spec(study, teacher), distill_hypers(study, teacher), inputs,
                         teacher=release(study, teacher), teacher_variables=variables)


def _adversarial_set(stage: Stage) -> np.ndarray:
    """The base teacher's PGD training set (model-input space), generated once, cached and checked.

    A cached set that fails `provenance.adversarial_set_problem` is refused (UnreadableFileError
    naming the file): delete it to regenerate it.
    """
    study = stage.study
    base = output(stage.needs[0])
    path, record_path = adversarial_paths(stage)
    if os.path.exists(path):
        return checked_adversarial_set(path, record_path, study.train, pgd_settings(study))
    log = stage_log(study, "attack-set")
    log(f"PGD on {len(study.train.labels)} training images ({study.config.pgd.steps} steps)")
    attack = make_attack(study, progress=image_progress(log))
    adv = to_host(attack(base.variables, study.train.images, study.train.labels))
    if is_writer():  # the record first: a set on disk always has its record
        atomic_write(record_path, json.dumps(adversarial_set_record(adv, pgd_settings(study)), indent=1,
                                             sort_keys=True))
        save_npy(path, adv)
        log(f"wrote {path}")
    return adv


def _import_base_teacher(stage: Stage) -> RunResult:
    """The base teacher from `config.teacher.torch_checkpoint` (a PyTorch state_dict), evaluated once."""
    from ast_jax import interop

    study, path = stage.study, stage.directory
    if path not in study.runs:
        architecture = study.config.teacher.model
        variables = interop.load_torch_checkpoint(path, architecture, study.num_classes)
        predict = make_predict(study.model(architecture), study.mesh, batch_size=study.config.train.eval_batch_size,
                               mean=study.dataset.mean, std=study.dataset.std)
        accuracy = evaluate(predict, variables, study.test)["test_accuracy"]
        stage_log(study, "base")(f"imported {path}: test accuracy {accuracy:.4f}")
        study.runs[path] = RunResult(variables, [], accuracy, accuracy)
    return study.runs[path]


# ---- steps and releases ----
def teacher_spec(study: Study, name: str) -> StepSpec:
    """The step that trains teacher `name` (docs/method.md §2, §5)."""
    c = study.config
    if name == "base":
        return StepSpec("ce")
    if name == "ast":
        return StepSpec("ast", c.ast.divergence, target_statistics=c.ast.target_statistics)
    if name == "nasty":
        return StepSpec("nasty")
    if name == "stt":
        # STT is the AST step with a clean input (thesis §5): it follows the AST step's statistics ordering.
        return StepSpec("stt", c.stt.divergence, target_statistics=c.ast.target_statistics)
    if name == "ini":
        return StepSpec("ini", objective=c.ini.objective)
    if name == "meco":
        return StepSpec("meco", objective=c.meco)
    raise ValueError(f"unknown trained teacher {name!r}; valid: {', '.join(TRAINED_TEACHERS)}")


def teacher_hypers(study: Study, name: str) -> LossHypers:
    """The loss values of teacher `name`'s step (`teacher_spec`): τ, ω and, for ast and stt, k."""
    c = study.config
    if name in ("ast", "stt"):
        section = getattr(c, name)
        return LossHypers(section.temperature, section.omega, sparsity_k(section, study.num_classes))
    if name == "nasty":
        return LossHypers(c.nasty.temperature, c.nasty.omega)
    return LossHypers()


def ini_clone(study: Study) -> tuple[Teacher, dict]:
    """InI's surrogate clone: the teacher's architecture at a fresh initialisation (its own seed
    stream), never trained, always queried in inference mode (docs/method.md §11.1)."""
    module = study.model(study.config.teacher.model)
    key = jax.random.fold_in(jax.random.PRNGKey(study.config.seed), Stream.INI_CLONE)
    variables = module.init(key, jnp.zeros((1, *study.train.images.shape[1:]), jnp.float32), train=False)
    return Teacher(module), jax.device_get(variables)


def make_attack(study: Study, progress: Callable[[int, int], None] | None = None):
    """`attack(variables, images_uint8, labels) -> adversarial images`: the study's PGD against its teacher model."""
    pgd = study.config.pgd
    attack = make_pgd_attack(study.model(study.config.teacher.model), study.mesh, batch_size=pgd.batch_size,
                             mean=study.dataset.mean, std=study.dataset.std, eps=pgd.eps,
                             step_size=pgd.step_size, steps=pgd.steps, space=pgd.space,
                             random_start=pgd.random_start, progress=progress)
    key = jax.random.fold_in(jax.random.PRNGKey(study.config.seed), Stream.PGD_START)
    return lambda variables, images, labels: attack(variables, images, labels, key)


def release(study: Study, name: str) -> Teacher:
    """Teacher `name` as the attacker queries it (its parameters: `teacher_stage(study, name)`'s):
    `stingy` is the base with sparse outputs; `meco` perturbs every query afresh (x + s·h(x),
    docs/method.md §11.2)."""
    module = study.model(study.config.teacher.model)
    if name == "stingy":
        k = sparsity_k(study.config.stingy, study.num_classes)
        return Teacher(module, functools.partial(losses.sparse_topk, k=k))
    return Teacher(module, input_defense=teacher_input_defense(study, name))


def teacher_input_defense(study: Study, name: str):
    """The randomised input perturbation teacher `name` releases through: MeCo's, else None."""
    return meco.input_defense(study.config.meco) if name == "meco" else None


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
    """The step that distils a student from `teacher`: kd (eq. 1), its τ and ω in `distill_hypers`."""
    return StepSpec("kd")


def distill_hypers(study: Study, teacher: str) -> LossHypers:
    """τ and ω of the students distilled from `teacher` (`config.stingy` for the Stingy Teacher, else `config.kd`)."""
    section = study.config.stingy if teacher == "stingy" else study.config.kd
    return LossHypers(section.temperature, section.omega)
