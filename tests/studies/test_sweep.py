"""`ast-jax sweep` and `pipeline --seeds`: grids and seeds trained as batches, resumed, summarised."""

import csv
import json
import os

import numpy as np
import pytest

from ast_jax.cli import config as loader
from ast_jax.cli.commands import main
from ast_jax.cli.config import load_config
from ast_jax.engine import ExecutionPolicy
from ast_jax.engine.progress import Progress
from ast_jax.results import statistics, tables
from ast_jax.studies import pipeline, sweep

TINY = ["--config.train.epochs=1", "--config.train.milestones=()", "--config.student_train.cnn.epochs=1",
        "--config.students=cnn", "--config.teacher.model=cnn", "--config.pgd.steps=2"]
T_975 = {1: 12.706204736174707, 2: 4.302652729749464}  # Student-t 0.975 quantiles, 1 and 2 degrees of freedom


def _final_accuracy(directory) -> float:
    with open(os.path.join(directory, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f][-1]["test_accuracy"]


def _csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_parsing_names_keys_and_refuses_what_a_cell_cannot_vary():
    grid = loader.parse_grid(["ast.alpha=0.01,0.05", "config.ast.temperature=4,20,30"])
    assert grid == {"ast.omega": ("0.01", "0.05"), "ast.temperature": ("4", "20", "30")}  # alpha is the weight omega
    cells = sweep.grid_cells(grid)
    assert len(cells) == 6 and cells[1] == {"ast.omega": "0.01", "ast.temperature": "20"}
    assert sweep.cell_name(cells[1]) == "ast.omega-0.01_ast.temperature-20"
    for items, named in [(["ast.omega"], "KEY=V1,V2"), (["ast.omega=1", "ast.omega=2"], "twice"),
                         (["ast.k=2,2"], "repeats"), ([], "at least one")]:
        with pytest.raises(ValueError, match=named):
            loader.parse_grid(items)
    with pytest.raises(ValueError, match="teacher_train.ast.lr"):
        sweep.check_grid_key("train.lr")
    with pytest.raises(ValueError, match="only the AST teacher"):
        sweep.check_grid_key("kd.temperature")
    config = load_config("digits")
    with pytest.raises(ValueError, match="config.ast.omga"):
        loader.cell_config(config, {"ast.omga": "0.1"})
    cell = loader.cell_config(config, {"ast.ratio": "0.3", "teacher_train.ast.lr": "0.1"})
    assert cell.ast.ratio == 0.3 and cell.ast.k is None and cell.teacher_train.ast.lr == 0.1
    assert cell.teachers == ("base", "ast") and config.ast.k == 2  # the given config is left as it was


def test_seed_summary_is_the_mean_sample_std_and_t_interval():
    rows = {seed: statistics.result_rows({"base": base, "ast": ast}, {("base", "cnn"): sb, ("ast", "cnn"): sa})
            for seed, (base, ast, sb, sa) in enumerate([(0.9, 0.85, 0.88, 0.7), (0.92, 0.9, 0.9, 0.8),
                                                        (0.95, 0.96, 0.9, 0.75)])}
    summary = {(e["teacher"], e["student"]): e for e in statistics.summarise_seeds(rows)}
    ast = summary[("ast", "cnn")]
    d = np.array([0.85 - 0.7, 0.9 - 0.8, 0.96 - 0.75])
    p = np.array([0.9 - 0.85, 0.92 - 0.9, 0.95 - 0.96])
    change = np.array([0.7 - 0.88, 0.8 - 0.9, 0.75 - 0.9])
    assert ast["D"] == pytest.approx(d.mean()) and ast["D_std"] == pytest.approx(np.sqrt(((d - d.mean()) ** 2).sum() / 2))
    assert ast["D_ci95"] == pytest.approx(T_975[2] * ast["D_std"] / np.sqrt(3))
    assert ast["student_change"] == pytest.approx(change.mean())
    assert ast["D_over_P"] == pytest.approx(d.mean() / p.mean())  # the ratio of the means
    assert ast["seeds"] == [0, 1, 2]
    one = statistics.summarise_seeds({0: rows[0]})[1]
    assert one["D"] == pytest.approx(0.15) and one["D_std"] is None and one["D_ci95"] is None
    table = tables.spread_table(statistics.summarise_seeds(rows))
    assert f"{100 * d.mean():+.2f} ± {100 * ast['D_std']:.2f} [±{100 * ast['D_ci95']:.2f}]" in table


def test_a_sweep_refuses_a_key_its_cells_cannot_vary_before_writing(tmp_path, capsys):
    workdir = tmp_path / "w"
    assert main(["sweep", "--config", "digits", "--workdir", str(workdir), "--grid", "train.lr=0.1,0.2"]) == 2
    err = capsys.readouterr().err
    assert "teacher_train.ast.lr" in err and len(err.strip().splitlines()) == 1
    assert not workdir.exists()


def test_a_run_device_count_that_does_not_divide_the_devices_is_refused_before_writing(tmp_path, capsys):
    import jax

    workdir = tmp_path / "w"
    args = ["sweep", "--config", "ablations_digits:omega_tau", "--workdir", str(workdir),
            f"--run-devices={jax.device_count() + 1}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"must divide the {jax.device_count()} devices" in err and len(err.strip().splitlines()) == 1
    assert not workdir.exists()


@pytest.mark.parametrize("count, run_devices, limit, expected", [
    (9, 1, 1, [(1, 1)] * 9),  # CPU: one run per program
    (5, 1, 2, [(2, 1), (2, 1), (1, 1)]),  # near-equal batches within the limit
    (9, 1, None, [(9, 1)]),  # an accelerator: the whole group
    (27, 4, None, [(24, 4), (3, 1)]),  # runs over 4 device groups; the 3 left over each on all devices
    (9, 4, 1, [(4, 4), (4, 4), (1, 1)]),  # a limit below the run devices is raised to them
    (6, 4, None, [(4, 4), (2, 2)]),  # the 2 left over over 2 groups of 2 devices
    (27, 4, 8, [(8, 4), (8, 4), (8, 4), (3, 1)]),
])
def test_batch_plan_spreads_runs_over_device_groups_and_keeps_every_device_busy(count, run_devices, limit, expected):
    runs = list(range(count))
    plan = pipeline.batch_plan(runs, run_devices, limit)
    assert [(len(batch), spread) for batch, spread in plan] == expected
    assert [run for batch, _ in plan for run in batch] == runs  # every run once, in order
    assert all(len(batch) % spread == 0 and run_devices % spread == 0 for batch, spread in plan)


@pytest.mark.slow
def test_killed_sweep_resumes_without_retraining_and_summarises_the_seeds(tmp_path, monkeypatch):
    workdir = str(tmp_path / "sweep")
    config = load_config("digits", TINY)
    grid = loader.parse_grid(["ast.k=1,3"])  # the sparsity varies inside one batch

    class Killed(Exception):
        pass

    batches = []

    def killed_at_the_students(runs, **kwargs):
        if any("students" in run.directory for run in runs):
            raise Killed
        batches.append([run.directory for run in runs])
        return fit_batch(runs, **kwargs)

    fit_batch = pipeline.fit_batch
    monkeypatch.setattr(pipeline, "fit_batch", killed_at_the_students)
    # an accelerator's batches (CPU: one run each) and its lowering (compiles once at any R), on the host loop
    policy = ExecutionPolicy(loop="host", run_lowering="vmap", runs_per_program=None)
    with pytest.raises(Killed):
        sweep.run_sweep(sweep.open_sweep(loader.to_settings(config), workdir, grid, loader.sweep_cell_settings(config, grid), (0, 1),
                                         log=lambda _: None, policy=policy))
    assert [len(b) for b in batches] == [2, 4]  # the seeds' base teachers, then every cell's AST teacher at once
    teachers = [d for batch in batches for d in batch]
    written = {d: os.stat(os.path.join(d, "metrics.jsonl")).st_mtime_ns for d in teachers}
    assert not os.path.exists(os.path.join(workdir, "sweep.md"))

    monkeypatch.setattr(pipeline, "fit_batch", fit_batch)
    paths = sweep.run_sweep(sweep.open_sweep(loader.to_settings(config), workdir, grid, loader.sweep_cell_settings(config, grid), (0, 1),
                                         log=lambda _: None, policy=policy))
    assert {d: os.stat(os.path.join(d, "metrics.jsonl")).st_mtime_ns for d in teachers} == written  # not retrained
    assert [os.path.basename(p) for p in paths] == ["sweep.md", "sweep.json", "sweep.csv", "sweep.png"]
    rows = {(r["teacher"], r["ast.k"]): r for r in _csv(paths[2])}
    assert set(rows) == {("base", ""), ("ast", "1"), ("ast", "3")}
    for k in ("1", "3"):
        accuracy = np.array([_final_accuracy(os.path.join(workdir, "cells", f"ast.k-{k}", f"seed-{s}", "teachers", "ast"))
                             for s in (0, 1)])
        assert float(rows[("ast", k)]["teacher_accuracy"]) == pytest.approx(accuracy.mean())
        assert float(rows[("ast", k)]["teacher_accuracy_std"]) == pytest.approx(accuracy.std(ddof=1), abs=1e-12)
    record = json.load(open(os.path.join(workdir, "cells", "ast.k-3", "seed-1", "teachers", "ast", "run.json")))
    assert record["study"]["ast"]["k"] == 3 and record["study"]["seed"] == 1
    assert os.path.getsize(paths[3]) > 0


@pytest.mark.slow
def test_pipeline_over_seeds_reports_each_seed_and_their_spread(tmp_path, capsys):
    workdir = tmp_path / "study"
    args = ["pipeline", "--config", "digits", "--workdir", str(workdir), "--seeds", "0,1", *TINY,
            "--config.teachers=base", "--config.teachers=ast"]
    assert main(args) == 0
    assert "over seeds" in capsys.readouterr().out
    seeds = {s: {(r["teacher"], r["student"]): r for r in _csv(workdir / f"seed-{s}" / "report.csv")} for s in (0, 1)}
    summary = {(r["teacher"], r["student"]): r for r in _csv(workdir / "report.csv")}
    for key in [("base", "cnn"), ("ast", "cnn")]:
        for field in ("teacher_accuracy", "student_accuracy", "D", "P"):
            values = np.array([float(seeds[s][key][field]) for s in (0, 1)])
            assert float(summary[key][field]) == pytest.approx(values.mean())
            std = abs(values[0] - values[1]) / np.sqrt(2)
            assert float(summary[key][f"{field}_std"]) == pytest.approx(std, abs=1e-12)
            assert float(summary[key][f"{field}_ci95"]) == pytest.approx(T_975[1] * std / np.sqrt(2), abs=1e-12)
    assert json.load(open(workdir / "study.json"))["kind"] == "seeds"
    assert json.load(open(workdir / "seed-1" / "study.json"))["seed"] == 1
    # the same work directory cannot hold a single-seed study
    assert main(["pipeline", "--config", "digits", "--workdir", str(workdir), *TINY]) == 2


def test_the_ablation_configs_are_sweeps_of_valid_cells():
    for name, cells in [("ablations_digits:omega_tau", 9), ("ablations_digits:divergence", 2),
                        ("ablations_cifar100:sparsity", 7), ("ablations_cifar100:omega_tau_r03", 12)]:
        config = load_config(name)
        grid = loader.parse_grid(config.sweep.grid)
        assert len(sweep.grid_cells(grid)) == cells and config.sweep.seeds == (0, 1, 2)
        for cell in sweep.grid_cells(grid):
            loader.cell_config(config, cell)  # every cell's config is valid
    assert "sweep" not in json.dumps(sweep.study_record(loader.to_settings(config)))  # a sweep's grid is no part of a study's record
    with pytest.raises(ValueError, match="unknown ablation 'omega'; valid: omega_tau"):
        load_config("ablations_digits:omega")


def test_progress_counts_the_runs_it_was_given_and_estimates_the_rest():
    lines = []
    progress = Progress(lines.append, ["a", "b"], images=300, every_seconds=0.0)
    progress.trained(100)
    progress.finished(["a", "done-before"])  # a run that had finished before is not counted
    assert lines[0].startswith("runs 0/2 done") and lines[-1].startswith("runs 1/2 done")
    rate = float(lines[-1].split(", ")[1].split()[0])
    eta = float(lines[-1].split("eta ")[1].rstrip("s"))
    assert rate > 0 and eta == pytest.approx(200 / rate, rel=0.05, abs=1.0)  # the 200 images left at that rate
