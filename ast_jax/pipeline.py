"""The study of SPEC §3 as resumable stages in one work directory.

    <workdir>/study.json                     the study's config (another config is refused)
    <workdir>/teachers/<name>/               base, ast, nasty, stt: checkpointed training runs
    <workdir>/adversarial/<fingerprint>.npy  PGD training set of the base teacher (+ .json)
    <workdir>/students/<teacher>-<arch>/     students distilled from each teacher (kd step)
    <workdir>/report.{md,json,csv}, outputs.png

Every stage is skipped when its output is complete and resumes when interrupted (training runs
resume from their last checkpoint). The adversarial set is named by a fingerprint of the base
teacher's parameters and the PGD settings, so it is reused only when both match. The Stingy
Teacher (`stingy`) needs no training: it is the base teacher releasing sparse outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoints, losses, models
from .config import sparsity_k, to_json, train_config_for, validate
from .data import ArraySplit, AugmentSpec, DatasetSpec, class_balanced_subset, dataset_spec, load_split, to_unit_float
from .train import (RunData, RunResult, StepSpec, Teacher, TrainingRun, evaluate, fit, make_adversarial_set, make_mesh,
                    make_predict, to_host)

TRAINED_TEACHERS = ("base", "ast", "nasty", "stt")
TEACHERS = ("base", "stingy", "ast", "nasty", "stt")
STUDY_RECORD = "study.json"


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

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def model(self, architecture: str):
        return models.create(architecture, self.num_classes, jnp.dtype(self.config.dtype), axis_name="data")


def open_study(config, workdir: str, log: Callable[[str], None] = functools.partial(print, flush=True)) -> Study:
    """Validate `config`, load the data, then claim `workdir` for it (refusing another study's).

    Everything that can fail on bad input fails before the work directory is touched.
    """
    validate(config)
    data_dir = config.data.data_dir or None
    spec = dataset_spec(config.data.name)
    train, test = load_split(config.data.name, "train", data_dir), load_split(config.data.name, "test", data_dir)
    if config.data.train_examples:
        if config.data.train_examples > len(train):
            raise ValueError(f"config.data.train_examples={config.data.train_examples} exceeds the {len(train)} "
                             f"training images of {config.data.name}; use at most {len(train)} (0 = all)")
        train = class_balanced_subset(train, config.data.train_examples, config.seed)
    checkpoints.claim(workdir, json.loads(to_json(config)), record_name=STUDY_RECORD)
    return Study(config, workdir, spec, train, test, make_mesh(), log)


def _augment_spec(config) -> AugmentSpec:
    a = config.data.augment
    return AugmentSpec(crop_padding=a.crop_padding, flip=a.flip, rotation_degrees=a.rotation_degrees)


def _stage_log(study: Study, stage: str):
    return lambda message: study.log(f"[{stage}] {message}")


def _fit(study: Study, stage: str, directory: str, architecture: str, spec: StepSpec, *, adv_images=None,
         pairing: str = "aligned", teacher: Teacher | None = None, teacher_variables=None) -> RunResult:
    if directory in study.runs:
        return study.runs[directory]
    config = study.config
    data = RunData(study.train, study.test, study.dataset.mean, study.dataset.std, _augment_spec(config),
                   adv_images=adv_images, pairing=pairing)
    run = TrainingRun(directory=directory, record={"stage": stage, "study": json.loads(to_json(config))},
                      model=study.model(architecture), train_config=train_config_for(config, architecture),
                      spec=spec, seed=config.seed, data=data, teacher=teacher, teacher_variables=teacher_variables)
    study.runs[directory] = fit(run, mesh=study.mesh, log=_stage_log(study, stage))
    return study.runs[directory]


def teacher_spec(study: Study, name: str) -> StepSpec:
    """The step that trains teacher `name` (SPEC §2, §5)."""
    c = study.config
    if name == "base":
        return StepSpec("ce")
    if name == "ast":
        return StepSpec("ast", c.ast.temperature, c.ast.alpha, sparsity_k(c.ast, study.num_classes), c.ast.divergence,
                        target_statistics=c.ast.target_statistics)
    if name == "nasty":
        return StepSpec("nasty", c.nasty.temperature, c.nasty.omega)
    if name == "stt":
        # STT is the AST step with a clean input (thesis §5): it follows the AST step's statistics ordering.
        return StepSpec("stt", c.stt.temperature, c.stt.alpha, sparsity_k(c.stt, study.num_classes), c.stt.divergence,
                        target_statistics=c.ast.target_statistics)
    raise ValueError(f"unknown trained teacher {name!r}; valid: {', '.join(TRAINED_TEACHERS)}")


def import_base_teacher(study: Study) -> RunResult:
    """The base teacher from `config.teacher.torch_checkpoint` (a PyTorch state_dict), evaluated."""
    from . import interop

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


def train_teacher(study: Study, name: str) -> RunResult:
    """Train (or resume, or load) teacher `name`; the base teacher and the PGD set come first.

    With `config.teacher.torch_checkpoint` set, the base teacher is imported instead of trained.
    """
    if name == "base" and study.config.teacher.torch_checkpoint:
        return import_base_teacher(study)
    spec = teacher_spec(study, name)
    kwargs = {}
    if name == "ast":
        kwargs = dict(adv_images=adversarial_set(study), pairing=study.config.ast.pairing)
    elif name == "nasty":
        base = train_teacher(study, "base")
        kwargs = dict(teacher=Teacher(study.model(study.config.teacher.model)), teacher_variables=base.variables)
    directory = os.path.join(study.workdir, "teachers", name)
    return _fit(study, name, directory, study.config.teacher.model, spec, **kwargs)


def fingerprint(variables, settings: dict) -> str:
    """sha256 (16 hex digits) of a model's variables and a JSON-able dict of settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(variables), key=lambda kv: jax.tree_util.keystr(kv[0])):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()[:16]


def _pgd_settings(study: Study) -> dict:
    """What the adversarial set depends on besides the base teacher: PGD settings, seed, training images."""
    images = hashlib.sha256(study.train.images.tobytes() + study.train.labels.tobytes()).hexdigest()
    return {"pgd": json.loads(to_json(study.config.pgd)), "data": study.config.data.name, "seed": study.config.seed,
            "train_images": images}


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


def make_attack(study: Study, architecture: str, batch_size: int | None = None,
                progress: Callable[[int, int], None] | None = None):
    """`attack(variables, images_uint8, labels) -> adversarial images` with the study's PGD settings."""
    pgd = study.config.pgd
    attack = make_adversarial_set(study.model(architecture), study.mesh, batch_size=batch_size or pgd.batch_size,
                                  mean=study.dataset.mean, std=study.dataset.std, eps=pgd.eps,
                                  step_size=pgd.step_size, steps=pgd.steps, space=pgd.space,
                                  random_start=pgd.random_start, progress=progress)
    key = jax.random.fold_in(jax.random.PRNGKey(study.config.seed), 7)
    return lambda variables, images, labels: attack(variables, images, labels, key)


def adversarial_set(study: Study) -> np.ndarray:
    """The base teacher's PGD training set (model-input space), generated once and cached."""
    base = train_teacher(study, "base")
    name = fingerprint(base.variables, _pgd_settings(study))
    directory = os.path.join(study.workdir, "adversarial")
    path = os.path.join(directory, f"{name}.npy")
    if os.path.exists(path):
        return np.load(path)
    log = _stage_log(study, "attack-set")
    log(f"PGD on {len(study.train.labels)} training images ({study.config.pgd.steps} steps)")
    attack = make_attack(study, study.config.teacher.model, progress=_progress_log(log))
    adv = to_host(attack(base.variables, study.train.images, study.train.labels))
    os.makedirs(directory, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        np.save(f, adv)
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
        json.dump(_pgd_settings(study), f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    log(f"wrote {path}")
    return adv


def released_teacher(study: Study, name: str) -> tuple[Teacher, dict]:
    """(Teacher, variables) as the attacker queries it: `stingy` is the base with sparse outputs."""
    module = study.model(study.config.teacher.model)
    if name == "stingy":
        k = sparsity_k(study.config.stingy, study.num_classes)
        return Teacher(module, functools.partial(losses.sparse_topk, k=k)), train_teacher(study, "base").variables
    return Teacher(module), train_teacher(study, name).variables


def distill_spec(study: Study, teacher: str) -> StepSpec:
    section = study.config.stingy if teacher == "stingy" else study.config.kd
    return StepSpec("kd", section.temperature, section.alpha)


def distill_student(study: Study, teacher: str, architecture: str) -> RunResult:
    """The stealing attack: distil `architecture` from `teacher`'s released outputs (eq. 1)."""
    if teacher not in TEACHERS:
        raise ValueError(f"unknown teacher {teacher!r}; valid: {', '.join(TEACHERS)}")
    released, variables = released_teacher(study, teacher)
    directory = os.path.join(study.workdir, "students", f"{teacher}-{architecture}")
    return _fit(study, f"{teacher}->{architecture}", directory, architecture, distill_spec(study, teacher),
                teacher=released, teacher_variables=variables)


def run(study: Study) -> list[str]:
    """Every stage of the study, then the report; returns the report's paths."""
    for name in TRAINED_TEACHERS:
        train_teacher(study, name)
    for teacher in TEACHERS:
        for architecture in study.config.students:
            distill_student(study, teacher, architecture)
    return write_report(study)


def write_report(study: Study, num_figure_images: int = 4) -> list[str]:
    """report.md/json/csv and outputs.png from the completed stages (SPEC §2 metrics)."""
    from . import report

    config, test = study.config, study.test
    temperature = config.kd.temperature
    predict = make_predict(study.model(config.teacher.model), study.mesh, batch_size=config.train.eval_batch_size,
                           mean=study.dataset.mean, std=study.dataset.std)
    teacher_accuracy, stats, figure = {}, {}, {}
    for name in TEACHERS:
        released, variables = released_teacher(study, name)
        logits = to_host(released.transform(predict(variables, test.images)))
        teacher_accuracy[name] = float(np.mean(np.argmax(logits, -1) == test.labels))
        stats[name] = report.output_statistics(logits, test.labels, temperature, seed=config.seed)
        figure[name] = np.asarray(losses.softmax_t(logits[:num_figure_images], temperature))
    student_accuracy = {(t, a): distill_student(study, t, a).final_accuracy
                        for t in TEACHERS for a in config.students}
    rows = report.result_rows(teacher_accuracy, student_accuracy)
    base = train_teacher(study, "base").variables
    images, labels = test.images[:num_figure_images], test.labels[:num_figure_images]
    figure_batch = -(-num_figure_images // study.mesh.size) * study.mesh.size
    adv = make_attack(study, config.teacher.model, figure_batch)(base, images, labels)
    adv_logits = study.model(config.teacher.model).apply(base, adv, train=False)  # adv is model input
    figure["base (adversarial)"] = to_host(losses.softmax_t(adv_logits, temperature))
    order = ["base", "base (adversarial)", "stingy", "nasty", "stt", "ast"]
    report.plot_outputs(os.path.join(study.workdir, "outputs.png"), np.asarray(to_unit_float(images)),
                        {name: figure[name] for name in order}, labels)
    notes = [f"Accuracies on the {len(test.labels)}-image test split after the last epoch; "
             f"output statistics of sigma_T at the attack's temperature T = {temperature:g}."]
    return report.write_report(study.workdir, title=f"ast_jax study: {config.name}", rows=rows, stats=stats,
                               notes=notes)

