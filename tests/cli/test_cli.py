"""The `ast-jax` command line: overrides as config_flags parses them, config lookup, and failures
as one line on stderr (exit 2; a bug exits 1) with the traceback in a log file."""

import errno
import os

import pytest
from conftest import start_cli

from ast_jax import files
from ast_jax.cli import commands as cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _one_error_line(capsys, prefix="ast-jax: error: "):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), lines
    return lines[0]


def _log_of(line):
    path = line.split("traceback in ")[1].split(";")[0]
    with open(path) as f:
        return path, f.read()


def _record_runs(monkeypatch):
    """Replaces the command itself (training) by recording the study it was given."""
    studies = []
    monkeypatch.setattr(cli, "run", lambda args, study: studies.append(study))
    return studies


def test_overrides_in_both_forms_reach_the_study(monkeypatch, tmp_path):
    studies = _record_runs(monkeypatch)
    workdir = str(tmp_path / "w")
    assert cli.main(["train", "--config", "digits:reference", "--workdir", workdir, "--config.train.epochs", "3",
                     "--config.train.milestones=()", "--config.seed", "5", "--config.students=cnn"]) == 0
    config = studies[0].config
    assert (config.train.epochs, config.train.milestones, config.seed, config.students) == (3, (), 5, ("cnn",))
    assert config.ast.target_statistics == "after_train_forward"
    assert studies[0].workdir == workdir


def test_demo_uses_the_repository_digits_config_not_the_current_directory(monkeypatch, tmp_path):
    (tmp_path / "digits.py").write_text("raise SystemExit('the current directory digits.py was executed')\n")
    monkeypatch.chdir(tmp_path)
    studies = _record_runs(monkeypatch)
    assert cli.main(["demo", "--config.train.epochs=1", "--config.train.milestones=()"]) == 0
    [seeds] = studies  # the demo is the study over four seeds
    assert [study.config.seed for study in seeds] == [0, 1, 2, 3]
    assert all(study.config.name == "digits" for study in seeds)
    assert seeds[1].workdir == os.path.join(cli.DEMO_WORKDIR, "seed-1")


@pytest.mark.parametrize("body, named", [
    ("def get_config(variant='thesis')\n    return None\n", "line 1"),
    ("def get_config(variant='thesis'):\n    raise RuntimeError('no such study')\n", "RuntimeError: no such study"),
])
def test_a_broken_config_file_is_one_line_with_its_traceback_logged(tmp_path, capsys, body, named):
    path = tmp_path / "broken.py"
    path.write_text(body)
    workdir = tmp_path / "w"
    assert cli.main(["train", "--config", str(path), "--workdir", str(workdir)]) == 2
    line = _one_error_line(capsys)
    assert f"config file {path}" in line and named in line
    log, text = _log_of(line)
    assert "Traceback" in text and str(path) in text
    assert not log.startswith(str(workdir)) and not workdir.exists(), "nothing is written before the claim"
    os.remove(log)


def test_unknown_key_is_one_line_listing_the_valid_keys(tmp_path, capsys):
    assert cli.main(["train", "--config", "digits", "--workdir", str(tmp_path / "w"), "--config.train.epoch", "3"]) == 2
    line = _one_error_line(capsys)
    assert "unknown config key config.train.epoch;" in line and "eval_every, lr" in line
    os.remove(_log_of(line)[0])


@pytest.mark.parametrize("make, named", [
    (lambda tmp: tmp / "file", "is a file, not a directory"),
    (lambda tmp: tmp / "file" / "sub", "lies under the file"),
    (lambda tmp: "/sys/ast-jax-test/w", "cannot write in /sys"),  # not writable, even by root
])
def test_unusable_work_directory_is_refused_before_anything_is_written(tmp_path, capsys, make, named):
    (tmp_path / "file").write_text("mine")
    workdir = str(make(tmp_path))
    assert cli.main(["train", "--config", "digits", "--workdir", workdir]) == 2
    line = _one_error_line(capsys)
    assert f"--workdir {workdir}" in line and named in line
    assert (tmp_path / "file").read_text() == "mine"
    os.remove(_log_of(line)[0])


def _full_disk_in_atomic_write(monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file named

    def run(args, study):
        monkeypatch.setattr(os, "fsync", no_space)
        files.atomic_write(os.path.join(study.workdir, "report.json"), "{}")

    monkeypatch.setattr(cli, "run", run)


def _wrapped_full_disk(args, study):
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(study.workdir, "ckpt"))
    except OSError as error:  # as a checkpoint library wraps it
        raise RuntimeError("async save failed:\n" + "\n".join(["frame"] * 50)) from error


def _unreadable(args, study):
    raise files.UnreadableFileError(f"{study.workdir}/run.json is not valid JSON (Expecting value); restore or delete it")


@pytest.mark.parametrize("fail, named", [
    ("atomic_write", "No space left on device: {workdir}/report.json; free space"),
    (_wrapped_full_disk, "No space left on device: {workdir}/ckpt; free space"),
    (_unreadable, "{workdir}/run.json is not valid JSON"),
])
def test_failure_during_a_run_is_one_line_and_logged_in_the_work_directory(monkeypatch, tmp_path, capsys, fail,
                                                                            named):
    if fail == "atomic_write":
        _full_disk_in_atomic_write(monkeypatch)
    else:
        monkeypatch.setattr(cli, "run", fail)
    workdir = str(tmp_path / "w")
    assert cli.main(["report", "--config", "digits", "--workdir", workdir]) == 2
    line = _one_error_line(capsys)
    assert named.format(workdir=workdir) in line
    log, text = _log_of(line)
    assert log == os.path.join(workdir, cli.ERROR_LOG) and "Traceback" in text
    assert not os.path.exists(os.path.join(workdir, "report.json"))


def test_a_bug_exits_1_naming_its_log_and_debug_shows_the_traceback(monkeypatch, tmp_path, capsys):
    def bug(args, study):
        raise KeyError("teachers")

    monkeypatch.setattr(cli, "run", bug)
    args = ["report", "--config", "digits", "--workdir", str(tmp_path / "w")]
    assert cli.main(args) == 1
    line = _one_error_line(capsys, prefix="ast-jax: internal error (a bug; please report it): KeyError: 'teachers'")
    assert "raise KeyError" in _log_of(line)[1]
    with pytest.raises(KeyError):
        cli.main([*args, "--debug"])


def test_distributed_without_a_cluster_says_what_it_expected(monkeypatch, tmp_path, capsys):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "TPU_", "KUBERNETES_")):
            monkeypatch.delenv(name)
    assert cli.main(["train", "--distributed", "--config", "digits", "--workdir", str(tmp_path / "w")]) == 2
    line = _one_error_line(capsys)
    assert "--distributed: jax.distributed.initialize() found no cluster" in line and "SLURM" in line
    assert not (tmp_path / "w").exists()
    os.remove(_log_of(line)[0])


def test_a_library_traceback_logged_before_the_error_goes_to_the_log_not_stderr(monkeypatch, tmp_path, capfd):
    from absl import logging as absl_logging

    def failed_background_save(args, study):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(study.workdir, "ckpt", "d", "0"))
        except OSError as error:
            absl_logging.error("_SignalingThread.run() raised an exception", exc_info=True)  # as orbax does
            raise ValueError(f"RESOURCE_EXHAUSTED: Error writing: {error}") from None  # as tensorstore does

    monkeypatch.setattr(cli, "run", failed_background_save)
    workdir = str(tmp_path / "w")
    assert cli.main(["train", "--config", "digits", "--workdir", workdir]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "run the same command again" in lines[0]
    log, text = _log_of(lines[0])
    assert "_SignalingThread.run() raised an exception" in text and text.count("Traceback") == 2


def _wait_for_line(process, text, timeout=240):
    """Reads the process's stdout until a line containing `text` (the training's epoch logs)."""
    import time

    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if text in line:
            return line
        assert time.monotonic() < deadline, f"no line with {text!r} in {timeout} s"
    raise AssertionError(f"process ended without printing {text!r}: {process.wait()}, {process.stderr.read()}")


@pytest.mark.slow
def test_sigint_saves_and_resumes_and_a_concurrent_run_is_refused(tmp_path, capsys):
    import json
    import signal

    workdir = str(tmp_path / "w")
    args = ["train", "--config", "digits", "--workdir", workdir, "--config.student_train.cnn.epochs=30",
            "--config.train.milestones=()", "--config.teacher.model=cnn", "--config.train.batch_size=32",
            "--config.train.eval_every=1", "--config.train.checkpoint_every=100"]
    first = start_cli(args)
    _wait_for_line(first, "epoch 2/30")
    # A second run on the same work directory while the first holds it: one line, nothing touched.
    assert cli.main(args) == 2
    line = _one_error_line(capsys)
    assert "in use by process" in line and str(first.pid) in line
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("ast-jax: stopped by SIGINT: checkpoint saved in")
    assert "run the same command again to resume" in err
    saved = os.listdir(os.path.join(workdir, "teachers", "base", "checkpoints"))
    assert saved, "a checkpoint was saved although checkpoint_every is beyond the run"
    assert not os.path.exists(os.path.join(workdir, ".lock"))
    resumed = start_cli(args)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming" in out
    with open(os.path.join(workdir, "teachers", "base", "metrics.jsonl")) as f:
        epochs = [json.loads(row)["epoch"] for row in f]
    assert epochs == list(range(1, 31))
