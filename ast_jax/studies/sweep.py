"""Studies over seeds and grids of AST teachers, their runs of one kind batched (docs/method.md §12).

`run_seeds` (`ast-jax pipeline --seeds 0,1,2`) is the study once per seed:

    <workdir>/study.json               {"kind": "seeds", "study": the config's record without its seed}
    <workdir>/seed-<s>/                the study of seed s (`pipeline`'s layout, its own report)
    <workdir>/report.{md,json,csv}     every (teacher, student) as mean ± std over the seeds, 95% interval

`run_sweep` (`ast-jax sweep --grid ast.omega=0.01,0.05 --grid ast.temperature=4,20 --seeds 0,1,2`)
trains an AST teacher per cell of the grid and seed, and the configured students of each:

    <workdir>/study.json               {"kind": "sweep", "study": the config's record without its seed}
    <workdir>/seed-<s>/                the seed's base study: base teacher, PGD sets, students of the base
    <workdir>/cells/<cell>/seed-<s>/   the cell's AST teacher and its students; its base is seed-<s>
    <workdir>/sweep.{md,json,csv}, sweep.png

Cells reuse their seed's base teacher, its PGD set (one per PGD setting: the set is named by its
fingerprint) and the students distilled from the base teacher, so a grid may vary only what
those do not depend on: the keys under `ast.`, `pgd.` and `teacher_train.ast.`. Runs of one kind
(the base teachers, the AST teachers, each student architecture) train together across cells
and seeds wherever `train.batch_conflicts` allows; the ω, τ, k, lr and seed of a run are data
of the program, so a grid over them compiles once (on CPU one run per program: the
`ExecutionPolicy`'s `runs_per_program`). Every run resumes from its own checkpoints:
a killed sweep goes on where it stopped, finished runs are loaded, not retrained.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from ast_jax.engine import ExecutionPolicy, checkpoints
from ast_jax.engine.loop import check_run_devices
from ast_jax.results import report
from ast_jax.results.statistics import effect_headline, result_rows, summarise_seeds
from ast_jax.studies.pipeline import distill_student, train_studies, train_teacher
from ast_jax.studies.report import write_report
from ast_jax.studies.settings import StudySettings, study_record
from ast_jax.studies.stages import teacher_stage
from ast_jax.studies.study import STUDY_RECORD, Study, check_study, open_study

LOG = functools.partial(print, flush=True)
GRID_PREFIXES = ("ast.", "pgd.", "teacher_train.ast.")
SEED_DIR = "seed-{seed}"
CELLS_DIR = "cells"


def _seed_config(config: StudySettings, seed: int) -> StudySettings:
    return dataclasses.replace(config, seed=seed)


def claim_root(config: StudySettings, workdir: str, kind: str) -> None:
    """Claim `workdir` for a study over seeds (`kind` seeds or sweep) of `config` (its seed aside)."""
    record = study_record(config)
    record.pop("seed")
    os.makedirs(workdir, exist_ok=True)
    checkpoints.claim(workdir, {"kind": kind, "study": record}, record_name=STUDY_RECORD)


def open_seed_studies(config: StudySettings, workdir: str, seeds: Sequence[int], log: Callable[[str], None] = LOG, *,
                      kind: str = "seeds", run_devices: int = 1, policy: ExecutionPolicy | None = None) -> list[Study]:
    """`study.open_study` of `config` at every seed, in `<workdir>/seed-<s>` (`run_devices`: the
    device groups a batch of runs is spread over; `policy`: how runs execute, see `open_study`); every seed's checks pass before `workdir` is claimed."""
    if not seeds or len(set(seeds)) < len(seeds):
        raise ValueError(f"--seeds needs distinct seeds, got {list(seeds)}")
    studies = []
    for seed in seeds:
        seeded = _seed_config(config, seed)
        studies.append((seeded, os.path.join(workdir, SEED_DIR.format(seed=seed))))
    check_run_devices(run_devices, jax.device_count())
    claim_root(config, workdir, kind)
    return [open_study(seeded, directory, log, run_devices=run_devices, policy=policy)
            for seeded, directory in studies]


def run_seeds(studies: Sequence[Study], workdir: str) -> list[str]:
    """The whole study at every seed (`open_seed_studies`; every stage, batched across the seeds,
    `pipeline.train_studies`), each seed's report, then `<workdir>/report.*` over the seeds. Returns those paths."""
    train_studies(studies)
    config, seeds = studies[0].config, [study.config.seed for study in studies]
    rows = {}
    for study in studies:
        write_report(study)
        rows[study.config.seed] = report.read_csv_rows(os.path.join(study.workdir, "report.csv"))
    notes = [f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); each seed's own report is in seed-<s>/report.md.",
             f"Test split of {len(studies[0].test)} images."]
    summary = summarise_seeds(rows)
    return report.write_spread_report(workdir, "report", title=f"ast_jax study: {config.name}, over seeds",
                                      summary=summary, notes=notes, headline=effect_headline(summary))


# ---- grids ----
def check_grid_key(key: str) -> None:
    """ValueError unless a sweep may vary `key` (`GRID_PREFIXES`); names the key to use instead."""
    if not key.startswith(GRID_PREFIXES):
        hint = (f"; to vary the AST teacher's training use teacher_train.ast.{key.split('.', 1)[1]}"
                if key.startswith("train.") else "")
        raise ValueError(f"--grid {key}: a sweep varies only the AST teacher (keys under "
                         f"{', '.join(GRID_PREFIXES)}), since every cell shares its seed's base teacher and base "
                         f"students{hint}")


def grid_cells(grid: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the first key varying slowest."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def cell_name(cell: Mapping[str, str]) -> str:
    """The cell's directory name: `ast.omega-0.01_ast.temperature-4`."""
    return "_".join(f"{key}-{value}" for key, value in cell.items())


def cell_study(base: Study, config: StudySettings, workdir: str) -> Study:
    """The study of one cell and seed: `config` (the cell's, at the base's seed) on the base
    study's data, sharing its base teacher (and so its base students and PGD sets). Claims `workdir`."""
    check_study(config, base.dataset, base.train, base.mesh, students=tuple(config.students))
    checkpoints.claim(workdir, study_record(config), record_name=STUDY_RECORD)
    return Study(config, workdir, base.dataset, base.train, base.test, base.mesh, base.log,
                 base_teacher=teacher_stage(base, "base"), run_devices=base.run_devices, policy=base.policy)


def _cell_rows(study: Study) -> list[dict]:
    """The result rows of a cell's trained study: base and ast with each student."""
    accuracy = {name: train_teacher(study, name).final_accuracy for name in ("base", "ast")}
    students = {(name, architecture): distill_student(study, name, architecture).final_accuracy
                for name in ("base", "ast") for architecture in study.config.students}
    return result_rows(accuracy, students)


@dataclasses.dataclass
class Sweep:
    """An opened sweep: its grid and seeds, the seeds' base studies and the (cell name, seed) studies."""

    workdir: str
    grid: dict
    seeds: tuple
    bases: list
    cells: dict


def open_sweep(config: StudySettings, workdir: str, grid: Mapping[str, Sequence[str]],
               cell_configs: Mapping[str, StudySettings],
               seeds: Sequence[int], log: Callable[[str], None] = LOG, *, run_devices: int = 1,
               policy: ExecutionPolicy | None = None) -> Sweep:
    """Claim `workdir` and open the base and cell studies of `grid`; `cell_configs` maps each
    `cell_name` of `grid_cells(grid)` to its settings (`ast_jax.cli.config.sweep_cell_settings`).
    `run_devices`: the device groups a batch of runs is spread over (`pipeline.batch_plan`); `policy`:
    how runs execute (`pipeline.open_study`)."""
    configs = {cell_name(cell): cell_configs[cell_name(cell)] for cell in grid_cells(grid)}
    base_config = dataclasses.replace(config, teachers=("base",))  # a seed's base study: base teacher, its students
    bases = open_seed_studies(base_config, workdir, seeds, log, kind="sweep", run_devices=run_devices, policy=policy)
    cells = {(name, base.config.seed): cell_study(base, _seed_config(cell, base.config.seed),
                                                  os.path.join(workdir, CELLS_DIR, name,
                                                               SEED_DIR.format(seed=base.config.seed)))
             for name, cell in configs.items() for base in bases}
    return Sweep(workdir, dict(grid), tuple(seeds), bases, cells)


def run_sweep(sweep: Sweep) -> list[str]:
    """Train (or resume) every cell at every seed, then write sweep.md/json/csv and sweep.png; returns their paths."""
    train_studies(list(sweep.cells.values()))
    cells, seeds = grid_cells(sweep.grid), sweep.seeds
    summary = []
    for cell in cells:
        rows = {seed: _cell_rows(sweep.cells[(cell_name(cell), seed)]) for seed in seeds}
        summary += [{**cell, **entry} for entry in summarise_seeds(rows) if entry["teacher"] == "ast"]
    base_rows = {seed: _cell_rows(sweep.cells[(cell_name(cells[0]), seed)]) for seed in seeds}
    summary = [entry for entry in summarise_seeds(base_rows) if entry["teacher"] == "base"] + summary
    figure = "sweep.png"
    report.plot_heatmaps(os.path.join(sweep.workdir, figure), heatmap_panels(summary, list(sweep.grid)), columns=3)
    config = sweep.bases[0].config
    values = "; ".join(f"{key} in {', '.join(options)}" for key, options in sweep.grid.items())
    notes = [f"Grid: {values}. Seeds {', '.join(map(str, seeds))}; {config.teacher.model} teachers, students "
             f"{', '.join(config.students)}, test split of {len(sweep.bases[0].test)} images.",
             "The base rows are the seeds' shared base teacher and its students (no grid key applies)."]
    return report.write_spread_report(sweep.workdir, "sweep", title=f"ast_jax sweep: {config.name}", summary=summary,
                                      notes=notes, leading=list(sweep.grid), figure=figure) + [
        os.path.join(sweep.workdir, figure)]


def heatmap_panels(summary: Sequence[Mapping], keys: Sequence[str]) -> list[dict]:
    """Heatmap panels of the AST teacher's and each student's mean accuracy (%) over the first two
    grid `keys` (rows, columns; one key: a single row), one set of panels per value of the others."""
    rows_key, cols_key = keys[0], (keys[1] if len(keys) > 1 else None)
    ast = [e for e in summary if e["teacher"] == "ast"]
    row_values = list(dict.fromkeys(e[rows_key] for e in ast))
    col_values = list(dict.fromkeys(e[cols_key] for e in ast)) if cols_key else [""]
    others = list(dict.fromkeys(tuple(e[k] for k in keys[2:]) for e in ast))
    students = list(dict.fromkeys(e["student"] for e in ast))
    panels = []
    for other in others:
        suffix = ", ".join(f"{k}={v}" for k, v in zip(keys[2:], other))
        members = [e for e in ast if tuple(e[k] for k in keys[2:]) == other]
        for title, field, student in [("AST teacher", "teacher_accuracy", students[0]),
                                      *((f"{s} student of AST", "student_accuracy", s) for s in students)]:
            values = np.full((len(row_values), len(col_values)), np.nan)
            for e in members:
                if e["student"] == student and e[field] is not None:
                    values[row_values.index(e[rows_key]), col_values.index(e[cols_key]) if cols_key else 0] = \
                        100 * e[field]
            panels.append({"title": f"{title} ({suffix})" if suffix else title, "values": values, "rows": row_values,
                           "cols": col_values, "ylabel": rows_key, "xlabel": cols_key or "",
                           "label": "test accuracy (%)"})
    return panels
