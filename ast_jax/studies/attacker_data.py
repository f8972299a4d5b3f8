"""The attacker's data budget over an attack matrix (docs/method.md §10.6): D and the stolen clone's
accuracy against the share of the victim's training set the attacker holds.

`ast-jax matrix` writes, besides matrix.*, `attacker_data.{md,json,csv,png}` whenever one attack
kind runs at several budgets (`ast_jax.configs.ablations_digits:attacker_data`). Per seed, every
cell is a (teacher, student) row of `statistics.result_rows`: the teacher is the victim (its
accuracy is the defender's: the arg-max of its release), the student the cell's clone; so the
change is against the clone the same cell stole from the base teacher, D = victim − clone and
P = base − victim. `statistics.summarise_seeds` gives mean, sample std and the 95% Student-t
interval over the seeds; `tables.spread_table` the table, `figures.curves_png` the plot.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ast_jax.attacks.common import DATA_BUDGETS
from ast_jax.results import report
from ast_jax.results.statistics import result_rows, summarise_seeds

NAME = "attacker_data"


def budget_cells(attacks: Mapping[str, Mapping], cells: Sequence[str]) -> dict[str, tuple[str, float]]:
    """{cell: (kind, budget)} of the `cells` whose kind takes a `budget` share of the victim's training set,
    when some kind runs at more than one budget; {} otherwise."""
    chosen = {cell: (attacks[cell]["kind"], float(attacks[cell]["budget"])) for cell in cells
              if DATA_BUDGETS.get(attacks[cell]["kind"]) == "budget"}
    budgets: dict[str, set] = {}
    for kind, budget in chosen.values():
        budgets.setdefault(kind, set()).add(budget)
    return chosen if any(len(values) > 1 for values in budgets.values()) else {}


def summarise(rows: Sequence[Mapping], cells: Mapping[str, tuple[str, float]], base: str = "base") -> list[dict]:
    """`summarise_seeds` of the matrix `rows` of `cells` (victims as teachers, cells as students),
    each entry with its `attack` kind and `budget`, ordered by attack, victim and budget."""
    by_seed: dict[int, list[dict]] = {}
    for row in rows:
        if row["attack"] in cells:
            by_seed.setdefault(row["seed"], []).append(row)
    results = {}
    for seed, members in by_seed.items():
        teachers = {row["victim"]: row["defender_accuracy"] for row in members}
        if base not in teachers:
            raise ValueError(f"the attacker-data report needs the undefended victim {base!r} among the victims")
        results[seed] = result_rows({base: teachers[base], **teachers},
                                    {(row["victim"], row["attack"]): row["clone_accuracy"] for row in members})
    summary = [{"attack": cells[e["student"]][0], "budget": cells[e["student"]][1], **e}
               for e in summarise_seeds(results) if e["student"] is not None]
    kinds, victims = list(dict.fromkeys(k for k, _ in cells.values())), list(dict.fromkeys(e["teacher"] for e in summary))
    return sorted(summary, key=lambda e: (kinds.index(e["attack"]), victims.index(e["teacher"]), e["budget"]))


def curve_panels(summary: Sequence[Mapping]) -> list[dict]:
    """Per attack kind, D and the clone's accuracy (in points / %) against the budget, one curve per
    victim, with the 95% half-widths as error bars."""
    panels = []
    for kind in dict.fromkeys(e["attack"] for e in summary):
        for key, label in (("D", "D = victim − clone (pts)"), ("student_accuracy", "stolen clone accuracy (%)")):
            curves = []
            for victim in dict.fromkeys(e["teacher"] for e in summary):
                points = [e for e in summary if e["attack"] == kind and e["teacher"] == victim]
                curves.append({"label": victim, "x": [e["budget"] for e in points],
                               "y": [100 * e[key] for e in points],
                               "error": [None if e[f"{key}_ci95"] is None else 100 * e[f"{key}_ci95"] for e in points]})
            panels.append({"title": f"{kind}: {label}", "xlabel": "attacker's share of the victim's training set",
                           "ylabel": label, "xlog": True, "curves": curves})
    return panels


def write(workdir: str, rows: Sequence[Mapping], cells: Mapping[str, tuple[str, float]], notes: Sequence[str] = (),
          title: str = "The attacker's data budget") -> list[str]:
    """`attacker_data.{md,json,csv,png}` in `workdir`; returns their paths."""
    summary = summarise(rows, cells)
    figure = f"{NAME}.png"
    notes = [("Teacher: the victim (its accuracy is the arg-max of its release); student: the clone the cell's "
              "attack stole at the cell's budget; change: against the clone the same cell stole from the base "
              "teacher."), *notes]
    paths = report.write_spread_report(workdir, NAME, title=title, summary=summary, notes=notes,
                                       leading=("attack", "budget"), figure=figure)
    return [*paths, report.plot_curves(os.path.join(workdir, figure), curve_panels(summary))]


__all__ = ["budget_cells", "curve_panels", "summarise", "write"]
