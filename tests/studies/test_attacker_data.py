"""The attacker's data budget over a matrix (docs/method.md §10.6): which cells count, D and the
clone's accuracy per budget against a NumPy / SciPy computation, and the written report."""

import json
import pathlib

import numpy as np
import pytest
from scipy import stats

from ast_jax.studies import attacker_data

ATTACKS = {"kd_p10": {"kind": "kd", "budget": 0.1}, "kd_p100": {"kind": "kd", "budget": 1.0},
           "hard_p10": {"kind": "kd_hard", "budget": 0.1}, "jbda": {"kind": "jbda", "pool": 1.0}}


def _rows():
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(4):
        for victim, teacher in (("base", 0.98), ("ast", 0.96)):
            for cell in ("kd_p10", "kd_p100", "hard_p10"):
                rows.append({"victim": victim, "attack": cell, "seed": seed, "defender_accuracy": teacher,
                             "clone_accuracy": float(rng.uniform(0.6, 0.99))})
    return rows


def test_only_an_attack_at_several_budgets_makes_a_report():
    assert attacker_data.budget_cells(ATTACKS, ("kd_p10", "jbda")) == {}
    cells = attacker_data.budget_cells(ATTACKS, tuple(ATTACKS))
    assert cells == {"kd_p10": ("kd", 0.1), "kd_p100": ("kd", 1.0), "hard_p10": ("kd_hard", 0.1)}


def test_d_and_clone_accuracy_per_budget_against_numpy():
    rows = _rows()
    summary = attacker_data.summarise(rows, attacker_data.budget_cells(ATTACKS, tuple(ATTACKS)))
    assert [(e["attack"], e["teacher"], e["budget"]) for e in summary] == [
        ("kd", "base", 0.1), ("kd", "base", 1.0), ("kd", "ast", 0.1), ("kd", "ast", 1.0),
        ("kd_hard", "base", 0.1), ("kd_hard", "ast", 0.1)]
    entry = summary[2]  # kd at 10% from the AST victim

    def pick(victim):
        return np.array([r["clone_accuracy"] for r in rows if r["victim"] == victim and r["attack"] == "kd_p10"],
                        np.float64)

    d = 0.96 - pick("ast")
    assert entry["D"] == pytest.approx(d.mean()) and entry["D_std"] == pytest.approx(d.std(ddof=1))
    assert entry["D_ci95"] == pytest.approx(stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2)
    assert entry["student_change"] == pytest.approx((pick("ast") - pick("base")).mean())
    assert entry["P"] == pytest.approx(0.02)


def test_report_files(tmp_path):
    cells = attacker_data.budget_cells(ATTACKS, tuple(ATTACKS))
    paths = attacker_data.write(str(tmp_path), _rows(), cells, ["a note"])
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"attacker_data.{e}" for e in ("md", "json", "csv", "png")]
    md = pathlib.Path(paths[0]).read_text()
    assert "| kd | 0.1 | ast |" in md and "a note" in md and "![attacker_data](attacker_data.png)" in md
    assert len(json.loads(pathlib.Path(paths[1]).read_text())["summary"]) == 6
    assert pathlib.Path(paths[3]).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="needs the undefended victim 'base'"):
        attacker_data.summarise([r for r in _rows() if r["victim"] != "base"], cells)
