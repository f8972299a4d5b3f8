"""The stealing-attack matrix (docs/method.md §10.5): victims, metrics, seeds, resume, bad input."""

import json
import os

import numpy as np
import pytest
from conftest import TINY_STUDY

from ast_jax.cli.config import load_config, load_settings
from ast_jax.studies import matrix
from ast_jax.studies.study import open_study


def test_victims_parse_with_default_gamma_and_refuse_bad_specs():
    assert matrix.parse_victim("ast", "digits", 10, "v") == matrix.Victim("ast", "ast", "none", ())
    dcp = matrix.parse_victim("dcp:beta=0.3", "cifar100", 100, "v")
    assert (dcp.teacher, dcp.defense, dict(dcp.params), dcp.label) == ("base", "dcp", {"beta": 0.3, "gamma": 0.1},
                                                                       "dcp-beta0.3-gamma0.1")
    assert matrix.parse_victim("topk_round:k=2,decimals=1", "digits", 10, "v").label == "topk_round-k2-decimals1"
    for spec, match in [("dpc:beta=1", "unknown victim 'dpc'"), ("dcp:beta", "must be key=value"),
                        ("ast:k=1", "takes no parameters"), ("topk_round:k=20,decimals=1", r"v.k: must be an integer")]:
        with pytest.raises(ValueError, match=match) as error:
            matrix.parse_victim(spec, "digits", 10, "v")
        assert "\n" not in str(error.value)


def test_cell_metrics_against_numpy():
    clean = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.2, 0.7, 0.1]])
    released = np.array([[0.6, 0.3, 0.1], [0.1, 0.4, 0.5], [0.3, 0.3, 0.4], [1.0, 0.0, 0.0]])
    labels = np.array([0, 2, 2, 1])
    got = matrix.defender_metrics(clean, released, labels, base_accuracy=0.75)
    assert got["defender_accuracy"] == pytest.approx(0.75) and got["defender_drop"] == pytest.approx(0.0)
    assert got["l1"] == pytest.approx(np.mean([0.2, 0.2, 0.0, 1.6]))
    clone_logits = np.log(np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]]))
    got = matrix.clone_metrics(clone_logits, clean, released)
    assert got == {"fidelity": pytest.approx(0.5), "agreement": pytest.approx(0.5)}


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = [dict({m: 0.0 for m in matrix.METRICS}, victim="v", attack="a", kind="kd", flag="", seed=s,
                 clone_accuracy=acc) for s, acc in enumerate((0.5, 0.7, 0.9))]
    (entry,) = matrix.summarise(rows)
    assert entry["clone_accuracy"] == pytest.approx(0.7)
    assert entry["clone_accuracy_std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert entry["clone_accuracy_ci95"] == pytest.approx(4.302652729911275 * 0.2 / np.sqrt(3))  # t_{0.975, 2}
    assert entry["seeds"] == [0, 1, 2]


def test_summary_leaves_a_metric_unmeasured_by_some_seed_as_none():
    rows = [dict({m: 0.5 for m in matrix.METRICS}, victim="v", attack="a", kind="kd", flag="", seed=s) for s in (0, 1)]
    del rows[1]["query_l1"]  # a cell written before the metric existed
    (entry,) = matrix.summarise(rows)
    assert entry["query_l1"] is None and entry["query_l1_std"] is None and entry["l1"] == 0.5
    assert matrix._pm(entry, "query_l1") == "–"


def test_relative_accuracy_and_the_strongest_defence_within_each_budget():
    assert matrix.relative_accuracy({"clone_accuracy": 0.45, "defender_accuracy": 0.9}) == pytest.approx(0.5)
    assert matrix.relative_accuracy({"clone_accuracy": 0.1, "defender_accuracy": 0.0}) is None
    cells = {  # victim: (Δ_def, clone accuracy per seed, flag)
        "base": (0.0, (0.80, 0.82), ""), "dcp-a": (0.008, (0.70, 0.74), ""), "dcp-b": (0.015, (0.60, 0.64), ""),
        "rs": (0.04, (0.50, 0.40), ""), "top1": (0.0, (0.10, 0.12), "degenerate"), "ast": (0.09, (0.05, 0.05), "")}
    rows = [dict({m: 0.0 for m in matrix.METRICS}, victim=v, attack="knockoff", kind="knockoff", flag=f, seed=s,
                 defender_drop=d, clone_accuracy=acc[s]) for v, (d, acc, f) in cells.items() for s in (0, 1)]
    best = matrix.best_defences(matrix.summarise(rows))
    assert [(b["budget"], b["victim"], b["candidates"]) for b in best] == [
        (0.01, "dcp-a", 2), (0.02, "dcp-b", 3), (0.05, "rs", 4)]  # top1 is flagged, ast costs 9 points
    assert best[2]["clone_accuracy"] == pytest.approx(0.45)
    assert best[2]["clone_accuracy_std"] == pytest.approx(np.std([0.5, 0.4], ddof=1))
    assert matrix.best_defences(matrix.summarise(rows), budgets=(0.001,))[0]["victim"] == "base"
    text = matrix.markdown(matrix.summarise(rows), best, "t", [])
    assert "| knockoff | dcp-a: 72.0 ± 2.8 [±25.4] | dcp-b: 62.0 ± 2.8 [±25.4] | rs: 45.0 ± 7.1 [±63.5] |" in text
    assert "Δ_def ≤ 5 pts" in text and "ℓ1 queries" in text and "relative (%)" in text


@pytest.mark.parametrize("override,match", [
    ("--config.matrix.attacks=('knockof',)", "config.matrix.attacks\\[0\\]: no attack cell 'knockof'"),
    ("--config.matrix.victims=('ast','dcq:beta=1')", "config.matrix.victims\\[1\\]: unknown victim 'dcq'"),
    ("--config.attacks.knockoff_soft.budget=10", "config.attacks.knockoff_soft.budget: a budget of 10 queries is smaller"),
    ("--config.attacks.knockoff_soft.query_set=cifar10", "config.attacks.knockoff_soft.query_set: query set 'cifar10' "
                                                         "has 32x32 images but the victim takes 8x8"),
    ("--config.attacks.jbda.kind=jdba", "config.attacks.jbda.kind: unknown attack 'jdba'"),
    ("--config.attacks.knockoff_soft.recipe=dcp", ("config.attacks.knockoff_soft: recipe 'dcp' trains with .*"
                                                   "drop those settings, or use recipe 'ini'")),
])
def test_bad_matrix_config_is_one_line(override, match):
    with pytest.raises(ValueError, match=match):
        load_config("digits", [override])


def test_matrix_sections_stay_out_of_the_study_record():
    from ast_jax.studies.settings import study_record

    a = study_record(load_settings("digits"))
    b = study_record(load_settings("digits", ["--config.attacks.kd.epochs=3", "--config.matrix.seeds=(5,)"]))
    assert a == b and "matrix" not in a and "attacks" not in a


TINY = [*TINY_STUDY, "--config.matrix.victims=('base','dcp:beta=0.9')", "--config.matrix.attacks=('knockoff_soft',)",
        "--config.attacks.knockoff_soft.budget=100", "--config.attacks.knockoff_soft.epochs=1",
        "--config.matrix.seeds=(0,1)"]


@pytest.mark.slow
def test_matrix_runs_resumes_without_redoing_cells_and_refuses_stale_ones(trained_study):
    workdir = str(trained_study)  # the tiny study, trained: the matrix trains its clones alone
    study = open_study(load_settings("digits", TINY), workdir, log=lambda message: None)
    paths = matrix.run_matrix(study)
    summary = json.load(open(paths[1]))["summary"]
    assert [(e["victim"], e["attack"], e["seeds"]) for e in summary] == [
        ("base", "knockoff_soft", [0, 1]), ("dcp-beta0.9-gamma0.2", "knockoff_soft", [0, 1])]
    assert all(e["queries"] == 100 for e in summary) and os.path.getsize(paths[3]) > 0
    assert summary[0]["l1"] == 0 and summary[1]["l1"] > 0
    assert summary[0]["query_l1"] == 0 and summary[1]["query_l1"] > 0  # measured on the 100 queries of each cell
    assert summary[0]["relative_accuracy"] == pytest.approx(summary[0]["clone_accuracy"] / summary[0]["defender_accuracy"])
    with open(paths[1]) as f, open(paths[4]) as g:
        best, best_csv = json.load(f)["best_defences"], g.read()
    assert [b["budget"] for b in best] == list(matrix.DROP_BUDGETS) and best_csv.startswith("attack,budget")
    cells = matrix.plan(study)
    results = [os.path.join(matrix.cell_directory(study, c), matrix.CELL_RESULT) for c in cells]
    stamps = [os.stat(p).st_mtime_ns for p in results]
    os.remove(results[3])  # a cell killed before its result was written
    log = []
    study = open_study(load_settings("digits", TINY), workdir, log=log.append)
    matrix.run_matrix(study)
    assert [os.stat(p).st_mtime_ns for p in results[:3]] == stamps[:3]
    assert sum("(done before)" in line for line in log) == 3
    assert json.load(open(results[3]))["queries"] == 100
    changed = open_study(load_settings("digits", TINY + ["--config.attacks.knockoff_soft.labels=hard"]),
                         workdir, log=lambda message: None)
    with pytest.raises(matrix.StaleCellError, match="changed: attack.*kept as it was"):
        matrix.run_matrix(changed)
    assert [os.stat(p).st_mtime_ns for p in results[:3]] == stamps[:3]
