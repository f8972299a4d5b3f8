"""The `ast-jax` command line and the resumable pipeline (digits, tiny schedule, CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ast_jax.cli import main

TINY = ["--config.train.epochs=1", "--config.train.milestones=()", "--config.student_train.cnn.epochs=1",
        "--config.students=cnn", "--config.teacher.model=cnn", "--config.pgd.steps=2"]
COMMANDS = ("train", "attack-set", "distill", "pipeline", "report", "demo")


def _cli(args, cache_dir, **kwargs):
    env = dict(os.environ, AST_JAX_CACHE=str(cache_dir), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "ast_jax", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--workdir" in out and "--config.KEY=VALUE" in out


@pytest.mark.parametrize("override,named", [
    ("--config.data.name=mnist", "config.data.name"),
    ("--config.teacher.model=vgg11", "config.teacher.model"),
    ("--config.students=cnn,alexnet", "config.students"),
    ("--config.trian.epochs=3", "trian"),
    ("--config.data.train_examples=-1", "config.data.train_examples"),
    ("--config.data.train_examples=1438", "config.data.train_examples=1438 exceeds the 1437 training images"),
])
def test_bad_config_is_one_clear_line(tmp_path, capsys, override, named):
    assert main(["pipeline", "--config", "digits", "--workdir", str(tmp_path / "w"), override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ast-jax: error:") and named in err
    assert not (tmp_path / "w").exists(), "nothing is written for an invalid config"


def test_study_on_a_class_balanced_subset(tmp_path):
    from ast_jax.config import load_config
    from ast_jax.pipeline import open_study

    study = open_study(load_config("digits", ["--config.data.train_examples=200"]), str(tmp_path / "w"))
    assert len(study.train) == 200 and len(study.test) == 360  # the test split stays whole
    assert sorted(set(np.bincount(study.train.labels, minlength=10))) == [20]


def test_missing_data_names_the_fix(tmp_path, capsys):
    args = ["train", "--config", "fashion_mnist", "--workdir", str(tmp_path / "w"),
            f"--config.data.data_dir={tmp_path / 'nowhere'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_pipeline_killed_in_a_stage_resumes_without_redoing_finished_stages(tmp_path):
    workdir, cache = tmp_path / "study", tmp_path / "cache"
    args = ["pipeline", "--config", "digits", "--workdir", str(workdir), *TINY]
    proc = _cli(args, cache)
    deadline = time.time() + 600
    while not (workdir / "teachers" / "nasty" / "run.json").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "report.md").exists()
    finished = {path: os.stat(path).st_mtime_ns for path in
                [*(workdir / "adversarial").glob("*.npy"), workdir / "teachers" / "base" / "metrics.jsonl",
                 workdir / "teachers" / "ast" / "metrics.jsonl"]}
    assert len(finished) == 3

    out, err = _cli(args, cache).communicate(timeout=900)
    assert "| ast |" in out and "report:" in out, err[-3000:]
    for path, mtime in finished.items():
        assert os.stat(path).st_mtime_ns == mtime, f"{path} was redone"
    rows = json.loads((workdir / "report.json").read_text())["rows"]
    assert {(r["teacher"], r["student"]) for r in rows} == {(t, "cnn") for t in ("base", "stingy", "ast", "nasty", "stt")}
    assert (workdir / "outputs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Another config in the same workdir is refused and loses nothing.
    before = sorted(str(p) for p in workdir.rglob("*"))
    proc = _cli([*args, "--config.kd.temperature=8"], cache)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "another configuration" in err and "kd.temperature" in err
    assert sorted(str(p) for p in workdir.rglob("*")) == before


@pytest.mark.slow
def test_digits_three_epoch_base_teacher_exceeds_90_percent(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AST_JAX_CACHE", str(tmp_path / "cache"))
    args = ["train", "--config", "digits", "--workdir", str(tmp_path / "w"), "--config.train.epochs=3",
            "--config.train.milestones=()"]
    assert main(args) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.90, out


@pytest.mark.slow
def test_imported_pytorch_teacher_is_evaluated_attacked_and_distilled(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    import jax
    import numpy as np
    from ast_jax import models
    from ast_jax.data import load_split
    from ast_jax.interop import to_torch_state_dict

    monkeypatch.setenv("AST_JAX_CACHE", str(tmp_path / "cache"))
    variables = models.create("cnn", 10).init(jax.random.PRNGKey(3), np.zeros((1, 8, 8, 1), np.float32))
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": to_torch_state_dict(variables, "cnn", 10)}, path)
    args = ["--config", "digits", "--workdir", str(tmp_path / "w"), *TINY, f"--config.teacher.torch_checkpoint={path}"]
    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert f"imported from {path}" in out
    reported = float(out.split("test accuracy ")[1].split()[0])
    test = load_split("digits", "test")
    mean, std = 0.3054, 0.3760
    logits = models.create("cnn", 10).apply(variables, (test.images / 255.0 - mean) / std, train=False)
    assert abs(reported - float(np.mean(np.argmax(logits, -1) == test.labels))) < 1e-4  # printed to 4 places
    assert main(["attack-set", *args]) == 0
    assert main(["distill", *args, "--teacher", "base", "--student", "cnn"]) == 0
    assert "base -> cnn: student test accuracy" in capsys.readouterr().out
    assert not (tmp_path / "w" / "teachers" / "base").exists(), "an imported teacher is not trained"


@pytest.mark.parametrize("variant,statistics", [("thesis", "before_step"), ("reference", "after_train_forward")])
def test_the_variant_picks_the_ast_and_stt_target_statistics(tmp_path, variant, statistics):
    from ast_jax.config import load_config
    from ast_jax.pipeline import open_study, teacher_spec

    study = open_study(load_config(f"digits:{variant}"), str(tmp_path / "w"))
    assert teacher_spec(study, "ast").target_statistics == statistics
    assert teacher_spec(study, "stt").target_statistics == statistics
