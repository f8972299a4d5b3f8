"""The report of a study, read from its finished stages (docs/method.md §2 metrics).

`write_report` never trains and never runs PGD: it reports the stages that are finished, names
each missing one with the command that makes it, and draws the figure's adversarial column from
the cached set (left out when there is none).
"""

from __future__ import annotations

import os

import numpy as np

from ast_jax import losses
from ast_jax.data import normalize, to_unit_float
from ast_jax.defences import meco
from ast_jax.defences.blackbox import victim_release
from ast_jax.files import is_writer
from ast_jax.studies.pipeline import make
from ast_jax.studies.stages import (
    Stage,
    adversarial_paths,
    adversarial_stage,
    finished,
    made,
    output,
    release,
    release_key,
    released_logits,
    student_stage,
    teacher_stage,
)
from ast_jax.studies.study import Study


def _missing(stage: Stage, location: str, missing: list[str]) -> bool:
    """Add `location` and the command that makes it to `missing` (once); False."""
    line = f"{os.path.relpath(location, stage.study.workdir)} (run `ast-jax {stage.command}`)"
    if line not in missing:
        missing.append(line)
    return False


def _load(stage: Stage, missing: list[str]) -> bool:
    """Load `stage` and the stages it is built from when all have finished (`pipeline.make` then
    trains nothing); else add the first that has not to `missing` and return False.

    A training stage is looked at before the stages it needs; the PGD set after its base teacher,
    whose parameters name it (it is loaded, and checked, where it is used).
    """
    if made(stage):
        return True
    if stage.trains and not finished(stage):
        return _missing(stage, stage.directory, missing)
    if not all(_load(need, missing) for need in stage.needs):
        return False
    if stage.kind == "PGD set":
        path = adversarial_paths(stage)[0]
        return os.path.exists(path) or _missing(stage, path, missing)
    make([stage])
    return True


def write_report(study: Study, num_figure_images: int = 4) -> list[str]:
    """report.md/json/csv and outputs.png from the finished stages (docs/method.md §2 metrics).

    Trains nothing and runs no PGD: stages that have not finished are listed as missing with the
    command that makes them. The figure shows the first `num_figure_images` training images,
    whose adversarial versions (the "base (adversarial)" column) come from the cached PGD set;
    without it that column is left out.
    """
    from ast_jax.results import report, statistics

    config, test, missing = study.config, study.test, []
    temperature = config.kd.temperature
    images, labels = study.train.images[:num_figure_images], study.train.labels[:num_figure_images]
    clean = normalize(to_unit_float(images), study.dataset.mean, study.dataset.std)
    figure_key = release_key(study)
    teacher_accuracy, stats, figure, utility = {}, {}, {}, {}
    for name in config.teachers:
        stage = teacher_stage(study, name)
        if not _load(stage, missing):
            continue
        released, variables = release(study, name), output(stage).variables
        logits = released_logits(study, released, variables, test.images)
        teacher_accuracy[name] = float(np.mean(np.argmax(logits, -1) == test.labels))
        stats[name] = statistics.output_statistics(logits, test.labels, temperature, seed=config.seed)
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
            stage = student_stage(study, teacher, architecture)
            if _load(stage, missing) and teacher in teacher_accuracy:
                student_accuracy[(teacher, architecture)] = output(stage).final_accuracy
    rows = statistics.result_rows(teacher_accuracy, student_accuracy) if "base" in teacher_accuracy else []
    attack_set = adversarial_stage(study)
    if "base" in teacher_accuracy and _load(attack_set, missing):
        base = output(teacher_stage(study, "base")).variables
        adv_logits = study.model(config.teacher.model).apply(base, output(attack_set)[:num_figure_images], train=False)
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
