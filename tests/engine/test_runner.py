"""The checkpointed run's edges: a corrupt checkpoint, signals, a second process, divergence."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import TinyNet, tiny_split

from ast_jax.data import AugmentSpec
from ast_jax.engine import (
    ExecutionPolicy,
    RunData,
    RunInterrupted,
    StepSpec,
    TrainingDivergedError,
    TrainingRun,
    TrainSettings,
    checkpoints,
    fit,
    init_state,
    make_optimizer,
    runner,
)

STEPS_PER_EPOCH = 8  # 64 examples, batch 8


def tiny_run(directory, epochs=3, record=None, **overrides) -> TrainingRun:
    config = TrainSettings(**{**dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, milestones=(2,),
                                lr_decay=0.1, batch_size=8, eval_batch_size=12, epochs=epochs, checkpoint_every=1,
                                eval_every=1), **overrides})
    data = RunData(tiny_split(64, seed=0), tiny_split(30, seed=1), (0.5,), (0.25,), AugmentSpec(crop_padding=1, flip=True))
    return TrainingRun(directory=str(directory), record=record or {"run": "tiny"}, model=TinyNet(axis_name="data"),
                       train_config=config, spec=StepSpec("ce"), seed=0, data=data)


def leaves(result):
    return [np.asarray(x) for x in jax.tree.leaves(result.variables)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The 3-epoch run without interruption: the reference for every resumed run."""
    return leaves(fit(tiny_run(tmp_path_factory.mktemp("whole")), log=lambda _: None))


def assert_same_parameters(got, expected):
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


# ---- a corrupt latest checkpoint ----
def _corrupt(checkpoint_dir):
    for root, _, files in os.walk(checkpoint_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    fit(tiny_run(tmp_path, epochs=2), log=lambda _: None)
    _corrupt(tmp_path / "checkpoints" / "16")
    lines = []
    result = fit(tiny_run(tmp_path), log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and os.path.join("checkpoints", "16") in warnings[0] and "\n" not in warnings[0]
    assert any("resuming" in line and "after epoch 1" in line for line in lines), lines
    assert (tmp_path / "broken-checkpoints" / "16").is_dir()  # set aside, not deleted
    assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["16", "24"]
    assert [row["epoch"] for row in checkpoints.read_metrics(str(tmp_path))] == [1, 2, 3]
    assert_same_parameters(leaves(result), uninterrupted)


def test_a_checkpoint_of_the_constant_lr_optimizer_resumes_exactly(tmp_path, uninterrupted):
    """A checkpoint written while the lr was a constant of the optimizer (its state without the injected
    lr) is read in that layout and resumed to the uninterrupted run's parameters."""
    run = tiny_run(tmp_path, epochs=1)
    fit(run, log=lambda _: None)
    like = jax.eval_shape(lambda: init_state(run.model, make_optimizer(run.train_config, STEPS_PER_EPOCH),
                                             jax.random.PRNGKey(0), (8, 8, 1)))
    mngr = checkpoints.manager(str(tmp_path))
    state = checkpoints.restore_latest(mngr, like)
    mngr.close()
    shutil.rmtree(tmp_path / "checkpoints")
    mngr = checkpoints.manager(str(tmp_path))
    checkpoints.save(mngr, STEPS_PER_EPOCH, state.replace(opt_state=state.opt_state.inner_state))
    mngr.wait_until_finished()
    mngr.close()
    lines = []
    resumed = fit(tiny_run(tmp_path), log=lines.append)
    assert not [line for line in lines if line.startswith("warning:")], lines
    assert any("resuming" in line and "after epoch 1" in line for line in lines), lines
    assert_same_parameters(leaves(resumed), uninterrupted)


def test_no_readable_checkpoint_is_one_line_naming_the_directory(tmp_path):
    fit(tiny_run(tmp_path, epochs=1), log=lambda _: None)
    _corrupt(tmp_path / "checkpoints")
    with pytest.raises(checkpoints.NoReadableCheckpointError) as error:
        fit(tiny_run(tmp_path, epochs=2), log=lambda _: None)
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)
    assert str(tmp_path / "checkpoints") in str(error.value) and "delete" in str(error.value)


# ---- signals ----
def test_signal_inside_an_epoch_checkpoints_that_step_and_resumes_exactly(tmp_path, uninterrupted, monkeypatch):
    """SIGTERM raised at step 3 of epoch 2 (host loop): a checkpoint after 8 + 3 steps, exit code 143,
    and the resumed run ends with the uninterrupted run's parameters."""
    make_train_epoch = runner.make_train_epoch

    def signalling(*args, **kwargs):
        train_epoch = make_train_epoch(*args, **kwargs)

        def epoch_with_signal(state, data, teacher_variables, key, epoch, first_step, stop, hypers):
            count = iter(range(first_step + 1, STEPS_PER_EPOCH + 1))

            def stop_after_signal():
                if epoch == 1 and next(count) == 3:
                    signal.raise_signal(signal.SIGTERM)
                return stop()

            return train_epoch(state, data, teacher_variables, key, epoch, first_step, stop_after_signal, hypers=hypers)

        return epoch_with_signal

    monkeypatch.setattr(runner, "make_train_epoch", signalling)
    with pytest.raises(RunInterrupted) as stopped:
        fit(tiny_run(tmp_path), policy=ExecutionPolicy.for_backend("cpu"), log=lambda _: None)
    assert stopped.value.exit_code == 143
    assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["8", "11"]
    assert "after epoch 2, step 3 of 8" in str(stopped.value) and "same command" in str(stopped.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    monkeypatch.undo()
    lines = []
    resumed = fit(tiny_run(tmp_path), policy=ExecutionPolicy.for_backend("cpu"), log=lines.append)
    assert any("resuming" in line and "after epoch 2, step 3 of 8" in line for line in lines), lines
    assert_same_parameters(leaves(resumed), uninterrupted)
    assert [row["epoch"] for row in checkpoints.read_metrics(str(tmp_path))] == [1, 2, 3]


SIGNAL_SCRIPT = """
import sys, numpy as np, jax
sys.path.insert(0, {tests!r})
from ast_jax.engine import RunInterrupted, fit
from test_runner import tiny_run
try:
    result = fit(tiny_run({directory!r}, epochs=20), log=lambda line: print(line, flush=True))
except RunInterrupted as stopped:  # what the command line does
    print(stopped, file=sys.stderr)
    sys.exit(stopped.exit_code)
np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(result.variables)])
"""


@pytest.mark.slow
def test_sigint_saves_says_how_to_resume_and_exits_130(tmp_path):
    def run(interrupt: bool):
        code = SIGNAL_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), directory=str(tmp_path / "run"),
                                    out=str(tmp_path / "resumed.npz"))
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if interrupt:
            for line in proc.stdout:  # interrupt once training is under way
                if line.startswith("epoch 1/"):
                    proc.send_signal(signal.SIGINT)
                    break
        out, err = proc.communicate(timeout=300)
        return proc.returncode, err

    returncode, err = run(interrupt=True)
    assert returncode == 130, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert message.startswith("stopped by SIGINT: checkpoint saved in") and "run the same command again" in message
    saved = max(int(name) for name in os.listdir(tmp_path / "run" / "checkpoints"))
    assert saved < 20 * STEPS_PER_EPOCH, "the run was not interrupted"
    returncode, err = run(interrupt=False)
    assert returncode == 0, err[-3000:]
    expected = leaves(fit(tiny_run(tmp_path / "whole", epochs=20), log=lambda _: None))
    resumed = np.load(tmp_path / "resumed.npz")
    assert_same_parameters([resumed[name] for name in resumed.files], expected)


# ---- one process per directory ----
def test_a_second_run_on_a_locked_directory_is_refused_in_one_line(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.joinpath(checkpoints.LOCK_FILE).write_text(json.dumps({"pid": holder.pid,
                                                                        "host": socket.gethostname()}))
        with pytest.raises(checkpoints.WorkdirLockedError) as error:
            fit(tiny_run(tmp_path), log=lambda _: None)
    finally:
        holder.kill()
        holder.wait()
    assert f"process {holder.pid} on {socket.gethostname()}" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run.json").exists()  # nothing claimed or trained


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / checkpoints.LOCK_FILE
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with checkpoints.workdir_lock(str(tmp_path)):
        assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        with checkpoints.workdir_lock(str(tmp_path)):  # re-entered by its holder
            pass
        assert lock.exists()
    assert not lock.exists()


# ---- divergence ----
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_an_exploding_loss_stops_without_a_checkpoint(tmp_path, optimizer):
    with pytest.raises(TrainingDivergedError) as error:
        fit(tiny_run(tmp_path, epochs=2, lr=1e4, optimizer=optimizer), log=lambda _: None)
    message = str(error.value)
    assert "epoch 1, step" in message and "No checkpoint of this run was saved" in message, message
    assert "epoch 0" not in message
    assert os.listdir(tmp_path / "checkpoints") == []


def test_the_divergence_check_against_its_definition():
    where = "step {}".format
    runner.check_losses(np.array([2.3, 1.0, 2299.0]), 2.3, where, "kept")  # below 1e3 x 2.3
    with pytest.raises(TrainingDivergedError, match="loss 3e\\+03 exceeds 1000 x the first step's 2.3 at step 2"):
        runner.check_losses(np.array([2.3, 1.0, 3000.0]), 2.3, where, "kept")
    with pytest.raises(runner.NonFiniteLossError, match="at step 1"):
        runner.check_losses(np.array([0.1, np.nan]), 0.1, where, "kept")
    runner.check_losses(np.array([-999.0]), 0.1, where, "kept")  # |loss| against max(1, |first|) = 1


def test_metrics_writer_truncates_once_then_appends_one_line_per_epoch_on_process_0(tmp_path, monkeypatch):
    path = tmp_path / checkpoints.METRICS_FILE
    path.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3)))
    with checkpoints.MetricsWriter(str(tmp_path), through_epoch=1) as writer:  # resumed after epoch 1
        assert writer.rows == [{"epoch": 1}] and path.read_text() == '{"epoch": 1}\n'
        writes = []
        monkeypatch.setattr(checkpoints.files, "atomic_write", lambda *args: writes.append(args))
        writer.append({"epoch": 2, "loss": 0.5})
        assert not writes  # appended, not rewritten
    assert checkpoints.read_metrics(str(tmp_path)) == [{"epoch": 1}, {"epoch": 2, "loss": 0.5}]
    monkeypatch.setattr(checkpoints.files, "is_writer", lambda: False)
    with checkpoints.MetricsWriter(str(tmp_path), through_epoch=0) as writer:  # another process: reads, never writes
        writer.append({"epoch": 1})
        assert writer.rows == [{"epoch": 1}]
    assert checkpoints.read_metrics(str(tmp_path)) == [{"epoch": 1}, {"epoch": 2, "loss": 0.5}]
