"""Making a study's stages: each missing one trained or made, in dependency order, runs of one kind batched.

Every stage (`ast_jax.studies.stages`) is skipped when its output is complete and resumes when
interrupted (training runs resume from their last checkpoint). `make` walks stages kind by
kind (`stages.KINDS`: the base teachers, the PGD sets, the defensive teachers, the students).
Runs of one kind train together on accelerators (`fit_stages`): the students of every teacher
with one architecture as one batch, across the studies of several seeds or of a sweep's cells
too (`train_studies`, `ast_jax.studies.sweep`, docs/method.md §12). A stage built from a PGD set
is checked against its record before that set is made, so a refused stage costs no PGD run.
`train_teacher`, `adversarial_set` and `distill_student` make one stage and the stages it needs.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from typing import Callable, Sequence

import numpy as np

from ast_jax.engine import RunResult, Teacher, batch_conflicts, checkpoints, fit_batch, make_mesh
from ast_jax.engine.progress import Progress
from ast_jax.studies.stages import (
    KINDS,
    Stage,
    adversarial_stage,
    finished,
    made,
    output,
    parameters_fingerprint,
    release,
    student_stage,
    study_stages,
    teacher_stage,
)
from ast_jax.studies.study import Study
from ast_jax.studies.study import stage_log as _stage_log


def make(stages: Sequence[Stage], progress: Progress | None = None) -> None:
    """Make `stages`, kind by kind in the order of `KINDS`: the training runs of a kind in as few
    programs as possible (`fit_stages`; a finished run is loaded), then its other stages one by
    one (an imported teacher; a PGD set, once the stages built from it pass their record check)."""
    ordered = sorted(stages, key=lambda stage: KINDS.index(stage.kind))
    for _, group in itertools.groupby(ordered, key=lambda stage: stage.kind):
        group = list(group)
        fit_stages([stage for stage in group if stage.trains], progress)
        for stage in group:
            if stage.trains:
                continue
            if stage.kind == "PGD set":
                for later in ordered:
                    if stage in later.needs:
                        later.check()
            stage.build(stage)


def with_needs(stage: Stage) -> list[Stage]:
    """`stage` after the stages it is built from (each after its own) that this session has not made."""
    if made(stage):
        return []
    return [needed for need in stage.needs for needed in with_needs(need)] + [stage]


def _made(stage: Stage):
    make(with_needs(stage))
    return output(stage)


def train_teacher(study: Study, name: str) -> RunResult:
    """Train (or resume, or load) teacher `name`; the base teacher and the PGD set come first.

    With `config.teacher.torch_checkpoint` set, the base teacher is imported instead of trained.
    """
    return _made(teacher_stage(study, name))


def adversarial_set(study: Study) -> np.ndarray:
    """The base teacher's PGD training set (model-input space), generated once, cached and checked."""
    return _made(adversarial_stage(study))


def distill_student(study: Study, teacher: str, architecture: str) -> RunResult:
    """The stealing attack: distil `architecture` from `teacher`'s released outputs (eq. 1)."""
    return _made(student_stage(study, teacher, architecture))


def released_teacher(study: Study, name: str) -> tuple[Teacher, dict]:
    """(Teacher, variables) as the attacker queries teacher `name` (`stages.release`), trained first."""
    return release(study, name), train_teacher(study, name).variables


def teacher_fingerprint(study: Study, name: str) -> str:
    """The fingerprint of teacher `name`'s parameters (the base's for `stingy`), trained first."""
    stage = teacher_stage(study, name)
    make(with_needs(stage))
    return parameters_fingerprint(stage)


def _images_to_train(stage: Stage) -> int:
    """Examples a run still has to train: its epochs after the last one `metrics.jsonl` records."""
    rows = checkpoints.read_metrics(stage.directory) if os.path.isdir(stage.directory) else []
    return max(stage.train_config.epochs - (rows[-1]["epoch"] if rows else 0), 0) * len(stage.study.train)


def train_studies(studies: Sequence[Study]) -> None:
    """Every stage of `studies` (`stages.study_stages`), each kind batched across the studies (`make`).

    Studies that share a base teacher (a sweep's cells) train it and its students once. A
    progress line (`Progress`) follows the runs this call trains.
    """
    walk = [stage for study in studies for stage in study_stages(study)]
    planned = {stage.directory: stage for stage in walk if stage.trains and not finished(stage)}
    progress = Progress(lambda message: studies[0].log(f"[progress] {message}"), list(planned),
                        sum(_images_to_train(stage) for stage in planned.values()))
    make(walk, progress)


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
    (`engine.fit_batch` under the study's `policy`, at most its `runs_per_program` runs each;
    CPU: one), whatever study they belong to; a
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
    batches = [batch for g in groups
               for batch in batch_plan(g, g[0].study.run_devices, g[0].study.policy.runs_per_program)]
    for group, spread in batches:
        first = group[0]
        log = _stage_log(first.study, ",".join(dict.fromkeys(stage.name for stage in group)))
        if len(group) == 1 and len(pending) > 1:  # a batch names its runs itself (`fit_batch`)
            log = functools.partial(_named_log, log, os.path.relpath(os.path.abspath(first.run.directory), common))
        mesh = make_mesh(first.study.mesh.devices, run_devices=spread)
        results = fit_batch([stage.run for stage in group], mesh=mesh, policy=first.study.policy, log=log,
                            progress=None if progress is None else progress.trained)
        for stage, result in zip(group, results):
            stage.study.runs[stage.run.directory] = result
        if progress is not None:
            progress.finished([stage.run.directory for stage in group])


def _named_log(log: Callable[[str], None], name: str, message: str) -> None:
    log(f"{name}: {message}")
