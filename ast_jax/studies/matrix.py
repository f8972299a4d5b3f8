"""The stealing-attack matrix: every configured attack on every victim, per seed (docs/method.md §10.5).

    <workdir>/matrix/<victim>/<attack>/seed<k>/cell.json     the cell's inputs (fingerprints)
    <workdir>/matrix/<victim>/<attack>/seed<k>/result.json   its metrics, written last
    <workdir>/matrix.{md,json,csv}, matrix.png                the table over seeds and its heatmap
    <workdir>/matrix-best.csv                                 the strongest defence per attack and Δ_def budget

A *victim* is a teacher of the study (`base`, `stingy`, `ast`, `nasty`, `stt`) or the base
teacher behind an output defence (`dcp:beta=0.3`, `reverse_sigmoid:beta=0.04`, `top1`,
`topk_round:k=1,decimals=1`; DCP's and Reverse Sigmoid's γ default to `defenses.default_gamma`).
Teachers the pipeline already trained in the work directory are reused; missing ones are
trained. Each cell queries a fresh `blackbox.BlackBox` seeded by the cell's seed.

Per cell: the clone's test accuracy (last and best epoch) and its relative accuracy (clone /
defender, InI's), fidelity (the clone's arg-max equals the victim's clean arg-max), agreement (it
equals the released arg-max), the defender's accuracy (arg-max of the release) and its drop
against the undefended base, the mean ℓ1 distance between the released and the clean
probabilities on the test set and on the attack's own queries (DCP's number, measured by the
box), and the queries spent. Over the seeds: each metric's mean, sample std and 95% t-interval,
and per attack DCP's table of the strongest defence within a defender-accuracy budget
(`best_defences`). A complete cell is skipped; a cell whose recorded inputs differ is refused in
one line and kept as it is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ast_jax.attacks import AttackContext, run_attack
from ast_jax.data import load_query_set
from ast_jax.defences import outputs as defenses
from ast_jax.defences.blackbox import BlackBox, victim_release
from ast_jax.engine import make_predict, to_host
from ast_jax.engine.checkpoints import WorkdirConflictError, check_record
from ast_jax.engine.progress import Pace
from ast_jax.files import atomic_write, is_writer, read_json
from ast_jax.results import tables
from ast_jax.results.report import plot_heatmaps
from ast_jax.results.statistics import seed_spread
from ast_jax.studies.pipeline import released_teacher, teacher_fingerprint, train_teacher
from ast_jax.studies import attacker_data
from ast_jax.studies.provenance import fingerprint
from ast_jax.studies.settings import sparsity_k, to_record
from ast_jax.studies.stages import released_logits, teacher_input_defense
from ast_jax.studies.study import Study
from ast_jax.studies.victims import BASE, Victim, parse_victim

MATRIX_DIR = "matrix"
CELL_RECORD, CELL_RESULT = "cell.json", "result.json"
METRICS = ("clone_accuracy", "clone_best_accuracy", "relative_accuracy", "fidelity", "agreement",
           "defender_accuracy", "defender_drop", "l1", "query_l1", "queries")
#: DCP's defender-accuracy budgets: Δ_def ≤ 1, 2 and 5 points (as fractions).
DROP_BUDGETS = (0.01, 0.02, 0.05)
#: Cells that run but whose numbers say little (docs/method.md §10.5).
DEGENERATE = {("dfme", "top1"): "DFME's logits from a label", ("dfme", "topk_round"): "DFME's logits from zeros",
              ("knockoff", "noise"): "noise queries: a floor"}


class StaleCellError(WorkdirConflictError):
    """A matrix cell in the work directory was built from other inputs than the current ones (kept as is)."""


@dataclasses.dataclass(frozen=True)
class Cell:
    victim: Victim
    attack: str   # a cell name of config.attacks
    seed: int


def plan(study: Study, seeds=None) -> list[Cell]:
    """Every (victim, attack, seed) of the config, in table order."""
    config = study.config
    victims = [parse_victim(v, config.data.name, study.num_classes, f"config.matrix.victims[{i}]")
               for i, v in enumerate(config.matrix.victims)]
    return [Cell(victim, attack, seed) for victim in victims for attack in config.matrix.attacks
            for seed in (seeds or config.matrix.seeds)]


def cell_directory(study: Study, cell: Cell) -> str:
    return os.path.join(study.workdir, MATRIX_DIR, cell.victim.label, cell.attack, f"seed{cell.seed}")


def victim_defense(study: Study, victim: Victim):
    """The victim's output defence as a jittable function (the Stingy Teacher keeps config.stingy's k)."""
    if victim.teacher == "stingy":
        return defenses.make_defense("stingy", k=sparsity_k(study.config.stingy, study.num_classes))
    return defenses.make_defense(victim.defense, **dict(victim.params))


def victim_variables(study: Study, victim: Victim) -> dict:
    return train_teacher(study, "base" if victim.teacher == "stingy" else victim.teacher).variables


def defender_metrics(clean: np.ndarray, released: np.ndarray, labels: np.ndarray, base_accuracy: float) -> dict:
    """Defender accuracy (arg-max of the release), its drop against the undefended base, and the mean
    ℓ1 distance between released and clean probabilities."""
    accuracy = float(np.mean(np.argmax(released, -1) == labels))
    return {"defender_accuracy": accuracy, "defender_drop": base_accuracy - accuracy,
            "l1": float(np.mean(np.sum(np.abs(released.astype(np.float64) - clean), -1)))}


def relative_accuracy(row: Mapping) -> float | None:
    """Clone accuracy / defender accuracy (InI's relative accuracy; None when the defender scores 0)."""
    return row["clone_accuracy"] / row["defender_accuracy"] if row["defender_accuracy"] > 0 else None


def clone_metrics(clone_logits: np.ndarray, clean: np.ndarray, released: np.ndarray) -> dict:
    """Fidelity (clone arg-max = clean victim arg-max) and agreement (= released arg-max)."""
    predicted = np.argmax(clone_logits, -1)
    return {"fidelity": float(np.mean(predicted == np.argmax(clean, -1))),
            "agreement": float(np.mean(predicted == np.argmax(released, -1)))}


class _Matrix:
    """One `ast-jax matrix` session: victims' test outputs, query sets and compiled predictors, cached."""

    def __init__(self, study: Study, log: Callable[[str], None]):
        self.study, self.log = study, log
        config = study.config
        self.clone_architecture = config.matrix.clone or config.teacher.model
        self.model = study.model(config.teacher.model)
        self.predict_victim = make_predict(self.model, study.mesh, batch_size=config.train.eval_batch_size,
                                           mean=study.dataset.mean, std=study.dataset.std)
        self._predict_clone: dict[str, Callable] = {}
        self._outputs: dict[str, tuple] = {}
        self._query_sets: dict[str, Any] = {}

    def clone(self, settings: Mapping) -> str:
        """The clone's architecture: the attack's own `clone` setting (Knockoff's DCP recipe, the Skeptical
        Student's trunk), else config.matrix.clone."""
        return settings.get("clone") or self.clone_architecture

    def predict_clone(self, architecture: str) -> Callable:
        if architecture not in self._predict_clone:
            self._predict_clone[architecture] = make_predict(
                self.study.model(architecture), self.study.mesh, batch_size=self.study.config.train.eval_batch_size,
                mean=self.study.dataset.mean, std=self.study.dataset.std)
        return self._predict_clone[architecture]

    def outputs(self, victim: Victim) -> tuple[np.ndarray, np.ndarray]:
        """(clean, released) probabilities of `victim` on the test set, float64."""
        if victim.label not in self._outputs:
            variables = victim_variables(self.study, victim)
            logits = to_host(self.predict_victim(variables, self.study.test.images))
            clean = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
            released = victim_defense(self.study, victim)(clean)
            teacher, _ = released_teacher(self.study, victim.teacher)
            if teacher.is_random:  # a randomised release (MeCo): fresh perturbations per query
                released = jax.nn.softmax(released_logits(self.study, teacher, variables, self.study.test.images), -1)
            self._outputs[victim.label] = (np.asarray(clean, np.float64), np.asarray(released, np.float64))
        return self._outputs[victim.label]

    def query_set(self, settings: Mapping):
        """The attack's query set (knockoff), drawn once per session from the study's seed."""
        name = settings.get("query_set")
        if name is None:
            return None
        if name not in self._query_sets:
            config = self.study.config
            generated = name in ("photos", "noise")
            self._query_sets[name] = load_query_set(
                name, image_shape=self.study.dataset.image_shape, num_images=settings["budget"] if generated else 0,
                seed=config.seed, data_dir=config.data.data_dir or None, victim_examples=config.data.train_examples,
                victim_seed=config.seed)
        return self._query_sets[name]

    def inputs(self, cell: Cell) -> dict:
        """What the cell's result depends on, as recorded in its cell.json."""
        settings = to_record(self.study.config.attacks[cell.attack])
        query_set = self.query_set(settings)
        return {"victim": cell.victim.label, "teacher": teacher_fingerprint(self.study, cell.victim.teacher),
                "defense": {"name": cell.victim.defense, "params": dict(cell.victim.params)},
                "attack": settings, "query_set": None if query_set is None else query_set.fingerprint,
                "clone": self.clone(settings), "seed": cell.seed, "train_data": self.study.train_data}

    def run_cell(self, cell: Cell) -> dict:
        """The cell's result: loaded when complete, else computed (resuming what the attack kept)."""
        directory = cell_directory(self.study, cell)
        inputs = self.inputs(cell)
        record_path, result_path = os.path.join(directory, CELL_RECORD), os.path.join(directory, CELL_RESULT)
        if os.path.exists(record_path):
            check_record(read_json(record_path), inputs, StaleCellError, lambda changed: (
                f"matrix cell {os.path.relpath(directory, self.study.workdir)} was built from other inputs (changed: "
                f"{changed}); it is kept as it was. To redo it delete {directory}, or use another --workdir"))
            if os.path.exists(result_path):
                row = read_json(result_path)
                row.setdefault("relative_accuracy", relative_accuracy(row))  # a cell written before it was kept
                return row
        elif is_writer():
            atomic_write(record_path, json.dumps(inputs, indent=1, sort_keys=True))
        return self._compute(cell, inputs, directory, result_path)

    def _compute(self, cell: Cell, inputs: dict, directory: str, result_path: str) -> dict:
        study, settings = self.study, dict(inputs["attack"])
        kind = settings.pop("kind")
        architecture = inputs["clone"]
        if "clone" in settings:
            settings["clone"] = architecture
        victim = cell.victim
        variables, mean, std = victim_variables(study, victim), study.dataset.mean, study.dataset.std
        release = victim_release(self.model, variables, mean, std, victim_defense(study, victim),
                                 teacher_input_defense(study, victim.teacher))
        box = BlackBox(release, image_shape=study.dataset.image_shape, num_classes=study.num_classes,
                       mesh=study.mesh, batch_size=study.config.matrix.batch_size, seed=cell.seed,
                       labels_only=defenses.labels_only(victim.defense),
                       clean=victim_release(self.model, variables, mean, std))
        query_set = self.query_set(settings)
        context = AttackContext(
            clone=study.model(architecture), victim_train=study.train, test=study.test,
            mean=study.dataset.mean, std=study.dataset.std, mesh=study.mesh, seed=cell.seed, directory=directory,
            log=lambda message: self.log(f"[{victim.label}/{cell.attack}/seed{cell.seed}] {message}"),
            query_images=None if query_set is None else query_set.images,
            eval_batch_size=study.config.train.eval_batch_size)
        result = run_attack(kind, box, settings, context)
        clean, released = self.outputs(victim)
        clone_logits = to_host(self.predict_clone(architecture)(result.variables, study.test.images))
        base_accuracy = defender_metrics(*self.outputs(BASE), study.test.labels, 0.0)["defender_accuracy"]
        row = {"victim": victim.label, "attack": cell.attack, "kind": kind, "seed": cell.seed,
               "clone_accuracy": result.final_accuracy, "clone_best_accuracy": result.best_accuracy,
               **clone_metrics(clone_logits, clean, released),
               **defender_metrics(clean, released, study.test.labels, base_accuracy),
               "query_l1": result.query_l1, "queries": result.queries,
               "flag": flag(kind, victim.defense, settings.get("query_set")),
               "clone_fingerprint": fingerprint(result.variables, {})}
        row["relative_accuracy"] = relative_accuracy(row)
        if is_writer():
            atomic_write(result_path, json.dumps(row, indent=1, sort_keys=True))
        return row


def flag(kind: str, defense: str, query_set: str | None) -> str:
    """Why a cell is degenerate ("" when it is not)."""
    return DEGENERATE.get((kind, defense)) or DEGENERATE.get((kind, query_set), "")


def summarise(rows: list[dict]) -> list[dict]:
    """Per (victim, attack), in the rows' order: each metric's mean over seeds with `<metric>_std`
    and `<metric>_ci95` (`seed_spread`: sample std, 95% Student-t half-width; None for one seed).
    A metric some seed lacks (None, or absent from a cell written before it was measured) is None."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["victim"], row["attack"]), []).append(row)
    summary = []
    for (victim, attack), members in groups.items():
        entry = {"victim": victim, "attack": attack, "kind": members[0]["kind"], "flag": members[0]["flag"],
                 "seeds": [m["seed"] for m in members]}
        for metric in METRICS:
            values = [m.get(metric) for m in members]
            spread = (seed_spread(values) if None not in values else {"mean": None, "std": None, "ci95": None})
            entry[metric], entry[f"{metric}_std"], entry[f"{metric}_ci95"] = spread["mean"], spread["std"], spread["ci95"]
        summary.append(entry)
    return summary


def best_defences(summary: list[dict], budgets=DROP_BUDGETS) -> list[dict]:
    """DCP's table (docs/method.md §10.5): per attack and budget b, among the victims whose mean
    Δ_def ≤ b (the base teacher, Δ_def = 0, included), the one whose clone has the lowest mean
    accuracy (DCP's best adversary error is 100 % minus it), with its spread over seeds; flagged
    cells are left out. `victim` is None when no victim is within the budget."""
    table = []
    for attack in dict.fromkeys(e["attack"] for e in summary):
        for budget in budgets:
            within = [e for e in summary if e["attack"] == attack and not e["flag"]
                      and e["defender_drop"] <= budget + 1e-12]
            best = min(within, key=lambda e: e["clone_accuracy"], default=None)
            table.append({"attack": attack, "budget": budget, "candidates": len(within),
                          "victim": best and best["victim"],
                          **{key: best and best[key] for key in ("clone_accuracy", "clone_accuracy_std",
                                                                 "clone_accuracy_ci95", "defender_drop")}})
    return table


def _pm(entry: dict, metric: str, scale: float = 100.0, digits: int = 1) -> str:
    """`mean ± std [±ci95]`, scaled; the mean alone for one seed; "–" when not measured."""
    if entry[metric] is None:
        return "–"
    text = f"{scale * entry[metric]:.{digits}f}"
    if entry[f"{metric}_std"] is None:
        return text
    return f"{text} ± {scale * entry[metric + '_std']:.{digits}f} [±{scale * entry[metric + '_ci95']:.{digits}f}]"


def markdown(summary: list[dict], best: list[dict], title: str, notes: list[str]) -> str:
    """The cells' table, then DCP's table of the strongest defence per attack and Δ_def budget."""
    header = ["victim", "attack", "clone acc. (%)", "best (%)", "relative (%)", "fidelity (%)", "agreement (%)",
              "defender acc. (%)", "Δ_def (pts)", "ℓ1 test", "ℓ1 queries", "queries", "flag"]
    table = tables.markdown(header, [[
        e["victim"], e["attack"], _pm(e, "clone_accuracy"), _pm(e, "clone_best_accuracy"),
        _pm(e, "relative_accuracy"), _pm(e, "fidelity"), _pm(e, "agreement"), _pm(e, "defender_accuracy"),
        _pm(e, "defender_drop"), _pm(e, "l1", 1.0, 3), _pm(e, "query_l1", 1.0, 3), f"{e['queries']:.0f}",
        e["flag"]] for e in summary])
    budgets = list(dict.fromkeys(b["budget"] for b in best))
    best_table = tables.markdown(["attack", *(f"Δ_def ≤ {100 * b:g} pts" for b in budgets)], [
        [attack, *(f"{b['victim']}: {_pm(b, 'clone_accuracy')}" if b["victim"] else "none within"
                   for b in best if b["attack"] == attack)]
        for attack in dict.fromkeys(b["attack"] for b in best)])
    return "\n".join([f"# {title}", "", "Mean ± sample std [± the half-width of the 95% Student-t interval of the "
                      "mean] over the seeds of each cell.", "", table, *(f"- {n}" for n in notes), "",
                      "## The strongest defence within a defender-accuracy budget (DCP)", "",
                      ("Per attack, among the victims whose mean Δ_def is within the budget (the undefended base "
                       "included), the one whose clone is least accurate: its clone accuracy (%), mean ± sample std "
                       "[± 95% half-width]. DCP's best adversary error is 100 minus it. Flagged cells are left out."),
                      "", best_table, ""])


def csv_text(summary: list[dict]) -> str:
    return tables.csv_text(["victim", "attack", "kind", "flag",
                            *[f"{m}{s}" for m in METRICS for s in ("", "_std", "_ci95")]], summary)


def best_csv_text(best: list[dict]) -> str:
    return tables.csv_text(["attack", "budget", "victim", "clone_accuracy", "clone_accuracy_std",
                            "clone_accuracy_ci95", "defender_drop", "candidates"], best)


def heatmap(path: str, summary: list[dict]) -> None:
    """Victims × attacks, the clone's mean test accuracy, as a PNG."""
    victims = list(dict.fromkeys(e["victim"] for e in summary))
    attacks = list(dict.fromkeys(e["attack"] for e in summary))
    grid = np.full((len(victims), len(attacks)), np.nan)
    for e in summary:
        grid[victims.index(e["victim"]), attacks.index(e["attack"])] = 100 * e["clone_accuracy"]
    plot_heatmaps(path, [{"values": grid, "rows": victims, "cols": attacks, "label": "clone test accuracy (%)"}])


def run_matrix(study: Study, seeds=None, log: Callable[[str], None] | None = None) -> list[str]:
    """Run (or resume) every cell, then write matrix.md/json/csv, matrix-best.csv (`best_defences`)
    and matrix.png; returns their paths."""
    log = log or study.log
    matrix = _Matrix(study, log)
    cells = plan(study, seeds)
    for attack in study.config.matrix.attacks:  # every query set loads (or fails in one line) before any compute
        try:
            matrix.query_set(study.config.attacks[attack])
        except ValueError as error:
            raise ValueError(f"config.attacks.{attack}.query_set: {error}") from None
    rows, pace, computed = [], Pace(), 0
    for index, cell in enumerate(cells, 1):
        complete = os.path.exists(os.path.join(cell_directory(study, cell), CELL_RESULT))
        rows.append(matrix.run_cell(cell))
        computed += not complete
        left = sum(not os.path.exists(os.path.join(cell_directory(study, c), CELL_RESULT)) for c in cells[index:])
        now = pace.now()
        log(f"[matrix] {index}/{len(cells)} cells: {cell.victim.label} / {cell.attack} / seed {cell.seed}: clone "
            f"{100 * rows[-1]['clone_accuracy']:.1f}%{' (done before)' if complete else ''}; "
            f"elapsed {pace.elapsed(now):.0f}s, eta {pace.eta(computed, left, now)}")
    summary = summarise(rows)
    best = best_defences(summary)
    workdir = study.workdir
    paths = [os.path.join(workdir, f"matrix.{ext}") for ext in ("md", "json", "csv", "png")]
    paths.append(os.path.join(workdir, "matrix-best.csv"))
    if is_writer():
        notes = [f"Victim {study.config.teacher.model} on {study.config.data.name} ({len(study.test)} test images); "
                 f"clone {matrix.clone_architecture}; seeds {sorted({c.seed for c in cells})}.",
                 ("relative: clone accuracy / defender accuracy. Δ_def: undefended base accuracy minus the "
                  "defender's. ℓ1: mean |released − clean|₁ on the test set and on the queries the attack sent."),
                 "Flagged cells run but say little (see docs/method.md §10.5)."]
        atomic_write(paths[0], markdown(summary, best, f"Stealing attacks × defences: {study.config.name}", notes))
        atomic_write(paths[1], json.dumps({"cells": rows, "summary": summary, "best_defences": best, "notes": notes},
                                          indent=1, sort_keys=True))
        atomic_write(paths[2], csv_text(summary))
        heatmap(paths[3], summary)
        atomic_write(paths[4], best_csv_text(best))
        budgets = attacker_data.budget_cells(study.config.attacks, study.config.matrix.attacks)
        if budgets:  # one attack at several data budgets (docs/method.md §10.6)
            paths += attacker_data.write(workdir, rows, budgets, notes[:1],
                                         f"The attacker's data budget: {study.config.name}")
    return paths


__all__ = ["Cell", "StaleCellError", "Victim", "best_defences", "clone_metrics", "defender_metrics", "parse_victim",
           "plan", "relative_accuracy", "run_matrix", "summarise"]
