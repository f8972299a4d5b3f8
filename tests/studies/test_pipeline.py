"""The `ast-jax` command line and the resumable pipeline (digits, tiny schedule, CPU)."""

import json
import os
import signal
import time

import numpy as np
import pytest
from conftest import TINY_STUDY, start_cli

from ast_jax.cli.commands import main

TINY = TINY_STUDY  # the tiny study that conftest trains once per session
COMMANDS = ("train", "attack-set", "distill", "pipeline", "report", "demo", "matrix", "sweep")


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
    from ast_jax.cli.config import load_settings
    from ast_jax.studies.study import open_study

    study = open_study(load_settings("digits", ["--config.data.train_examples=200"]), str(tmp_path / "w"))
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
    workdir = tmp_path / "study"
    args = ["pipeline", "--config", "digits", "--workdir", str(workdir), *TINY]
    proc = start_cli(args)
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

    out, err = start_cli(args).communicate(timeout=900)
    assert "| ast |" in out and "report:" in out, err[-3000:]
    for path, mtime in finished.items():
        assert os.stat(path).st_mtime_ns == mtime, f"{path} was redone"
    rows = json.loads((workdir / "report.json").read_text())["rows"]
    assert {(r["teacher"], r["student"]) for r in rows} == {(t, "cnn") for t in ("base", "stingy", "ast", "nasty", "stt")}
    assert (workdir / "outputs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_another_config_in_a_trained_study_is_refused_and_loses_nothing(trained_study, capsys):
    before = sorted(str(p) for p in trained_study.rglob("*"))
    args = ["pipeline", "--config", "digits", "--workdir", str(trained_study), *TINY, "--config.kd.temperature=8"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "kd.temperature" in err
    assert sorted(str(p) for p in trained_study.rglob("*")) == before


@pytest.mark.slow
def test_digits_three_epoch_base_teacher_exceeds_90_percent(tmp_path, capsys, monkeypatch):
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


def _torch_teacher(path, seed: int, in_channels: int = 1, corrupt: str | None = None):
    """Write a CNN teacher for digits (8x8 images) as a PyTorch checkpoint; `corrupt`: nan | int."""
    torch = pytest.importorskip("torch")
    import jax

    from ast_jax import models
    from ast_jax.interop import to_torch_state_dict

    variables = models.create("cnn", 10).init(jax.random.PRNGKey(seed), np.zeros((1, 8, 8, in_channels), np.float32))
    state_dict = to_torch_state_dict(variables, "cnn", 10)
    if corrupt == "nan":
        state_dict["fc1.weight"][0, 0] = float("nan")
    elif corrupt == "int":
        state_dict["fc1.weight"] = state_dict["fc1.weight"].to(torch.int32)
    torch.save({"state_dict": state_dict}, path)
    return str(path)


@pytest.mark.slow
def test_replaced_pytorch_teacher_refuses_every_stage_built_from_the_old_one(tmp_path, capsys, monkeypatch):
    path = _torch_teacher(tmp_path / "teacher.pth", seed=3)
    workdir = tmp_path / "w"
    args = ["--config", "digits", "--workdir", str(workdir), *TINY, f"--config.teacher.torch_checkpoint={path}"]
    stages = {("train", "--stage", "ast"): ("stage ast", "adversarial_set"),
              ("train", "--stage", "nasty"): ("stage nasty", "base_teacher"),
              ("distill", "--teacher", "stingy", "--student", "cnn"): ("stage stingy->cnn", "teacher")}
    for command in stages:
        assert main([*command, *args]) == 0
    records = {p: p.read_bytes() for p in workdir.rglob("*.json")}
    capsys.readouterr()

    _torch_teacher(tmp_path / "teacher.pth", seed=4)  # the same path, other weights
    for command, (stage, changed) in stages.items():
        assert main([*command, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and stage in err and f"changed: {changed}" in err and "delete" in err, err
    assert {p: p.read_bytes() for p in workdir.rglob("*.json")} == records, "nothing is rewritten or deleted"
    assert len(list((workdir / "adversarial").glob("*.npy"))) == 1, "no PGD set is made for a refused stage"


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["short", "nan", "uint8", "channels", "record"])
def test_bad_cached_adversarial_set_is_refused_naming_the_file(tmp_path, problem):
    from ast_jax.cli.config import load_settings
    from ast_jax.files import UnreadableFileError, atomic_write, save_npy
    from ast_jax.studies.pipeline import adversarial_set
    from ast_jax.studies.provenance import pgd_settings
    from ast_jax.studies.stages import adversarial_set_name, adversarial_stage
    from ast_jax.studies.study import open_study

    path = _torch_teacher(tmp_path / "teacher.pth", seed=3)  # imported, not trained: no compute
    study = open_study(load_settings("digits", [*TINY, f"--config.teacher.torch_checkpoint={path}"]),
                       str(tmp_path / "w"))
    n = len(study.train)
    good = np.zeros((n, 8, 8, 1), np.float32)
    adv = {"short": good[:100], "nan": np.full_like(good, np.nan), "uint8": good.astype(np.uint8),
           "channels": np.zeros((n, 8, 8, 3), np.float32), "record": good}[problem]
    name = adversarial_set_name(adversarial_stage(study))
    npy = tmp_path / "w" / "adversarial" / f"{name}.npy"
    save_npy(str(npy), adv)
    import hashlib
    import json

    sha = hashlib.sha256(np.ascontiguousarray(adv).tobytes()).hexdigest()
    settings = pgd_settings(study)
    if problem == "record":
        settings = dict(settings, seed=settings["seed"] + 1)
    atomic_write(str(npy.with_suffix(".json")), json.dumps({"settings": settings, "sha256": sha}))
    with pytest.raises(UnreadableFileError) as error:
        adversarial_set(study)
    message = str(error.value)
    assert str(npy) in message and "delete it" in message and "\n" not in message
    expected = {"short": f"100 rows for {n} training images", "nan": "NaN", "uint8": "uint8",
                "channels": "(8, 8, 3)", "record": "record"}[problem]
    assert expected in message


@pytest.mark.parametrize("override,named", [
    ("--config.pgd.batch_size=501", "config.pgd.batch_size=501 must be divisible by the number of devices (4)"),
    ("--config.train.eval_batch_size=250", "config.train.eval_batch_size=250 must be divisible"),
    ("--config.train.batch_size=62", "config.train.batch_size=62 must be divisible"),
    ("--config.train.batch_size=2000", "config.train.batch_size=2000 exceeds the 1437 training images"),
    ("torch:absent", "does not exist"),
    ("torch:directory", "is a directory"),
    ("torch:3 channels", "on digits images (8, 8, 1)"),
    ("torch:nan", "tensor fc1.weight holds NaN"),
    ("torch:int", "tensor fc1.weight has dtype torch.int32"),
    ("student:vgg16", "unknown student architecture 'vgg16'"),
])
def test_late_checks_run_before_the_work_directory_is_claimed(tmp_path, capsys, monkeypatch, override, named):
    import types

    from ast_jax.studies import study

    monkeypatch.setattr(study, "make_mesh", lambda: types.SimpleNamespace(size=4, shape={"data": 4}))  # 4 devices
    command = ["train"]
    if override.startswith("torch:"):
        kind = override.split(":")[1]
        path = tmp_path / "teacher.pth"
        if kind == "directory":
            path.mkdir()
        elif kind != "absent":
            _torch_teacher(path, seed=3, in_channels=3 if kind == "3 channels" else 1,
                           corrupt=kind if kind in ("nan", "int") else None)
        override = f"--config.teacher.torch_checkpoint={path}"
    elif override.startswith("student:"):
        command = ["distill", "--teacher", "base", "--student", override.split(":")[1]]
        override = "--config.seed=0"
    workdir = tmp_path / "w"
    assert main([*command, "--config", "digits", "--workdir", str(workdir), "--config.teacher.model=cnn", "--config.pgd.batch_size=500",
                 "--config.train.eval_batch_size=500", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ast-jax: error:") and named in err and len(err.splitlines()) == 1, err
    assert not (workdir / "study.json").exists() and not workdir.exists()


@pytest.mark.slow
def test_report_trains_nothing_and_names_what_is_missing(tmp_path, capsys, base_trained_study):
    workdir = tmp_path / "w"
    assert main(["report", "--config", "digits", "--workdir", str(workdir), *TINY]) == 0
    out = capsys.readouterr().out
    assert "missing: teachers/base (run `ast-jax train --stage base`)" in out
    assert "students/ast-cnn (run `ast-jax distill --teacher ast --student cnn`)" in out
    assert sorted(p.name for p in workdir.iterdir()) == ["report.csv", "report.json", "report.md", "study.json"]

    workdir = base_trained_study  # the same study after `ast-jax train`: the base teacher only
    args = ["--config", "digits", "--workdir", str(workdir), *TINY]
    base = sorted(str(p) for p in workdir.rglob("*"))
    assert main(["report", *args]) == 0
    out = capsys.readouterr().out
    assert "| base |" in out and "| stingy |" in out and "| ast |" not in out
    assert "teachers/ast (run `ast-jax train --stage ast`)" in out and "(run `ast-jax attack-set`)" in out
    assert "students/base-cnn (run `ast-jax distill --teacher base --student cnn`)" in out
    made = sorted(set(str(p) for p in workdir.rglob("*")) - set(base))
    assert made == [str(workdir / "outputs.png")], "report writes its files and trains or attacks nothing"


def test_random_streams_are_distinct_and_above_every_epoch_fold():
    from ast_jax.rng import FIRST_STREAM, Stream

    assert len({int(s) for s in Stream}) == len(Stream) and min(Stream) >= FIRST_STREAM > 10_000


@pytest.mark.parametrize("variant,statistics", [("thesis", "before_step"), ("reference", "after_train_forward")])
def test_the_variant_picks_the_ast_and_stt_target_statistics(tmp_path, variant, statistics):
    from ast_jax.cli.config import load_settings
    from ast_jax.studies.stages import teacher_spec
    from ast_jax.studies.study import open_study

    study = open_study(load_settings(f"digits:{variant}"), str(tmp_path / "w"))
    assert teacher_spec(study, "ast").target_statistics == statistics
    assert teacher_spec(study, "stt").target_statistics == statistics
