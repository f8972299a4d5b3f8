"""InI and MeCo as teachers of a study (docs/method.md §11): config, pipeline, report, matrix.

The steps themselves are checked in test_ini.py and test_meco.py; here they are wired into a
study: trained with their own schedules, distilled, reported (MeCo through its randomised
release, with its utility figure), attacked in the matrix, resumed after a kill, and refused
on bad input in one line.
"""

import json
import signal
import time

import numpy as np
import pytest
from conftest import start_cli

from ast_jax.cli.commands import main

TINY = ["--config.train.epochs=1", "--config.train.milestones=()", "--config.student_train.cnn.epochs=1",
        "--config.students=cnn", "--config.teacher.model=cnn", "--config.pgd.steps=2",
        "--config.teacher_train.ini.epochs=1", "--config.teacher_train.ini.milestones=()",
        "--config.teacher_train.meco.epochs=1", "--config.ini.ood_images=96"]
DEFENCES = ["--config.teachers=base", "--config.teachers=ini", "--config.teachers=meco"]


@pytest.mark.parametrize("override,named", [
    ("--config.teachers=ini", "config.teachers must be a tuple of teachers that starts with 'base'"),
    ("--config.ini.ood_set=imagenet", "config.ini.ood_set must be one of"),
    ("--config.ini.ood_images=0", "config.ini.ood_images"),
    ("--config.ini.isolation=other", "config.ini: InISettings.isolation must be one of"),
    ("--config.meco.scale=-0.5", "config.meco: MeCo scale must be a number >= 0"),
    ("--config.meco.eps_range=(0.6,0.3)", "config.meco:"),
    ("--config.teacher_train.ini.epochs=0", "config.teacher_train.ini.epochs"),
    ("--config.teacher_train.meco.lr=-1", "config.teacher_train.meco.lr"),
])
def test_bad_defence_settings_are_one_clear_line(tmp_path, capsys, override, named):
    assert main(["pipeline", "--config", "digits_defences", "--workdir", str(tmp_path / "w"), override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ast-jax: error:") and named in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "w").exists(), "nothing is written for an invalid config"


def test_defence_teachers_take_their_own_schedules_and_settings(tmp_path):
    from ast_jax.cli.config import load_settings
    from ast_jax.studies.stages import teacher_spec
    from ast_jax.studies.study import open_study

    config = load_settings("digits_defences", ["--config.meco.scale=0.25", "--config.ini.gamma=0.5"])
    assert config.teachers == ("base", "stingy", "ast", "nasty", "stt", "ini", "meco")
    assert {"ini", "meco"} <= set(config.matrix.victims)
    ini, meco, base = (config.teacher_train_for(name) for name in ("ini", "meco", "base"))
    assert (ini.momentum, ini.weight_decay, ini.milestones, ini.lr) == (0.5, 1e-3, (12, 24), 0.05)
    assert (meco.optimizer, meco.lr) == ("adam", 1e-3)
    assert (base.optimizer, base.momentum) == (config.train.optimizer, config.train.momentum)
    study = open_study(config, str(tmp_path / "w"))
    assert teacher_spec(study, "ini").objective.gamma == 0.5 and teacher_spec(study, "ini").objective.epsilon == 1000.0
    assert teacher_spec(study, "meco").objective.scale == 0.25
    assert load_settings("digits").teachers == ("base", "stingy", "ast", "nasty", "stt"), "the demo keeps the thesis's"


@pytest.mark.slow
def test_meco_release_in_the_report_is_random_per_query_and_reproducible(tmp_path):
    import jax

    from ast_jax.cli.config import load_settings
    from ast_jax.engine import Teacher
    from ast_jax.studies.stages import released_logits, teacher_input_defense
    from ast_jax.studies.study import open_study

    study = open_study(load_settings("digits_defences", TINY), str(tmp_path / "w"))
    released = Teacher(study.model("cnn"), input_defense=teacher_input_defense(study, "meco"))
    variables = study.model("cnn").init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32), train=False)
    images = np.concatenate([study.test.images[:8], study.test.images[:8]])  # each image queried twice
    first = released_logits(study, released, variables, images)
    assert np.array_equal(first, released_logits(study, released, variables, images)), "same seed, same release"
    assert not np.allclose(first[:8], first[8:], atol=1e-4), "a second query of an image draws anew"
    clean = released_logits(study, Teacher(released.module), variables, images)
    assert np.array_equal(clean[:8], clean[8:]), "the undefended release is deterministic"


@pytest.mark.slow
def test_ini_and_meco_teachers_train_distil_report_and_join_the_matrix(tmp_path, capsys, monkeypatch):
    workdir = tmp_path / "w"
    args = ["--config", "digits_defences", "--workdir", str(workdir), *TINY, *DEFENCES]
    assert main(["pipeline", *args]) == 0
    out = capsys.readouterr().out
    report = json.loads((workdir / "report.json").read_text())
    assert {(r["teacher"], r["student"]) for r in report["rows"]} == {(t, "cnn") for t in ("base", "ini", "meco")}
    assert any(note.startswith("meco is evaluated through its randomised release") and "mean l1" in note
               for note in report["notes"]), report["notes"]
    ini_record = json.loads((workdir / "teachers" / "ini" / "run.json").read_text())
    assert set(ini_record["inputs"]) == {"train_data", "ood_set"}
    assert "| ini |" in out and "| meco |" in out

    matrix = ["matrix", *args, "--config.matrix.victims=meco", "--config.matrix.victims=ini",
              "--config.matrix.attacks=kd", "--config.matrix.seeds=(0,)", "--config.attacks.kd.epochs=1"]
    assert main(matrix) == 0
    rows = {row["victim"]: row for row in json.loads((workdir / "matrix.json").read_text())["cells"]}
    assert set(rows) == {"meco", "ini"}
    assert rows["meco"]["l1"] > 0 and rows["ini"]["l1"] == 0, "MeCo's release differs from its clean outputs"


@pytest.mark.slow
def test_killed_ini_teacher_resumes_from_its_checkpoint(tmp_path):
    workdir = tmp_path / "w"
    args = ["train", "--stage", "ini", "--config", "digits_defences", "--workdir", str(workdir), *TINY,
            "--config.teacher_train.ini.epochs=3", "--config.train.checkpoint_every=1"]
    proc = start_cli(args)
    first_epoch = workdir / "teachers" / "ini" / "checkpoints" / "23"  # 1,437 images in steps of 64
    deadline = time.time() + 600
    while not first_epoch.is_dir() and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # the asynchronous save completes
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out, err = start_cli(args).communicate(timeout=600)
    assert "resuming" in out + err, (out + err)[-2000:]
    metrics = workdir / "teachers" / "ini" / "metrics.jsonl"
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == [1, 2, 3]
