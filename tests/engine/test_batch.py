"""A batch of runs trained as one program equals each run trained alone (`train.fit_batch`)."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import TinyNet, tiny_split

from ast_jax.data import AugmentSpec
from ast_jax.engine import (
    RUN_LOWERINGS,
    ExecutionPolicy,
    LossHypers,
    RunData,
    StepSpec,
    TrainingRun,
    TrainSettings,
    fit,
    fit_batch,
)
from ast_jax.engine.runner import distinct_arrays

EPOCHS = 2
#: float32 rounding of a vmapped program against the unbatched one, carried over 2 epochs of 6
#: steps (measured <= 3e-6 on the largest parameter difference).
TOLERANCE = 2e-5
# Per run: seed, ω, τ, k, lr: every value a batch may vary differs between the runs.
RUNS = ((0, 0.5, 4.0, 1, 0.1), (1, 0.9, 10.0, 2, 0.05), (2, 0.2, 20.0, 3, 0.02))


def _run(directory, seed, omega, temperature, k, lr, *, epochs=EPOCHS, adv_seed=None) -> TrainingRun:
    train = tiny_split(48, seed=0)
    rng = np.random.default_rng(100 + (seed if adv_seed is None else adv_seed))
    adv = (train.images / 255.0 + rng.normal(0, 0.05, train.images.shape)).astype(np.float32)
    data = RunData(train, tiny_split(20, seed=1), (0.5,), (0.25,), AugmentSpec(crop_padding=1, flip=True),
                   adv_images=adv, pairing="random")
    config = TrainSettings(**dict(optimizer="sgd", lr=lr, momentum=0.9, weight_decay=5e-4, milestones=(1,), lr_decay=0.1,
                             batch_size=8, eval_batch_size=20, epochs=epochs, checkpoint_every=1, eval_every=1))
    return TrainingRun(directory=str(directory), record={"run": seed}, model=TinyNet(axis_name="data"),
                       train_config=config, spec=StepSpec("ast"), seed=seed, data=data,
                       hypers=LossHypers(temperature, omega, k))


def _leaves(result):
    return [np.asarray(x) for x in jax.tree.leaves(result.variables)]


def _max_difference(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(_leaves(a), _leaves(b)))


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    return [fit(_run(tmp_path_factory.mktemp(f"alone{i}"), *values), log=lambda _: None)
            for i, values in enumerate(RUNS)]


@pytest.mark.slow
@pytest.mark.parametrize("lowering", RUN_LOWERINGS)
def test_each_run_of_a_batch_equals_the_run_alone(tmp_path, alone, lowering):
    """Seeds, ω, τ, the sparsity k, the lr and the adversarial sets all differ across the batch;
    with the step vmapped (the accelerators' lowering) and unrolled (the CPU's)."""
    policy = ExecutionPolicy("host", lowering, None)
    batch = fit_batch([_run(tmp_path / str(i), *values) for i, values in enumerate(RUNS)], policy=policy,
                      log=lambda _: None)
    for one, together in zip(alone, batch):
        assert _max_difference(one, together) < TOLERANCE
        assert together.final_accuracy == pytest.approx(one.final_accuracy, abs=1 / 20)
        assert [row["epoch"] for row in together.history] == list(range(1, EPOCHS + 1))
    # the runs really differ: a batch that mixed them up could not pass the comparison above
    assert _max_difference(alone[0], alone[1]) > 100 * TOLERANCE


def test_a_resumed_batch_loads_finished_runs_and_continues_the_others(tmp_path, alone):
    """Run 0 finished alone, run 1 stopped after one epoch, run 2 never started: one call ends all three."""
    fit(_run(tmp_path / "0", *RUNS[0]), log=lambda _: None)
    finished_rows = (tmp_path / "0" / "metrics.jsonl").read_text()
    fit(_run(tmp_path / "1", *RUNS[1], epochs=1), log=lambda _: None)
    lines = []
    batch = fit_batch([_run(tmp_path / str(i), *values) for i, values in enumerate(RUNS)], log=lines.append)
    assert (tmp_path / "0" / "metrics.jsonl").read_text() == finished_rows  # loaded, not retrained
    assert any("resuming" in line and str(tmp_path / "1") in line for line in lines)
    for one, together in zip(alone, batch):
        assert _max_difference(one, together) < TOLERANCE


def test_runs_that_cannot_share_a_program_are_refused(tmp_path):
    first = _run(tmp_path / "a", *RUNS[0])
    other = _run(tmp_path / "b", *RUNS[1])
    wider = dataclasses.replace(other, train_config=dataclasses.replace(other.train_config, batch_size=16))
    with pytest.raises(ValueError, match="differ in train"):
        fit_batch([first, wider], log=lambda _: None)
    kl = dataclasses.replace(other, spec=dataclasses.replace(other.spec, divergence="kl"))
    with pytest.raises(ValueError, match="differ in spec"):
        fit_batch([first, kl], log=lambda _: None)
    with pytest.raises(ValueError, match="share a directory"):
        fit_batch([first, dataclasses.replace(other, directory=first.directory)], log=lambda _: None)
    assert not (tmp_path / "a").exists()  # refused before anything is written


def test_distinct_arrays_keeps_each_set_once():
    a, b = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    distinct, index = distinct_arrays([a, b, a.copy(), b, a])
    assert len(distinct) == 2 and distinct[0] is a and distinct[1] is b
    assert index.tolist() == [0, 1, 0, 1, 0] and index.dtype == np.int32


def _with_set(run, adv_images, directory):
    return dataclasses.replace(run, directory=str(directory), data=dataclasses.replace(run.data, adv_images=adv_images))


def test_runs_sharing_an_adversarial_set_equal_the_runs_alone(tmp_path, alone):
    """Runs 0 and 2 attack one set (held once in the batch: `adv_set` [0, 1, 0]); each equals its run alone."""
    first = _run(tmp_path / "unused", *RUNS[0])
    shared = np.ascontiguousarray(first.data.adv_images[::-1])  # each image paired with another's attack
    runs = [_with_set(first, shared, tmp_path / "0"), _run(tmp_path / "1", *RUNS[1]),
            _with_set(_run(tmp_path / "unused", *RUNS[2]), shared.copy(), tmp_path / "2")]
    expected = [fit(_with_set(runs[0], shared, tmp_path / "alone0"), log=lambda _: None), alone[1],
                fit(_with_set(runs[2], shared, tmp_path / "alone2"), log=lambda _: None)]
    batch = fit_batch(runs, policy=ExecutionPolicy("host", "vmap", None), log=lambda _: None)
    for one, together in zip(expected, batch):
        assert _max_difference(one, together) < TOLERANCE
    assert _max_difference(alone[2], expected[2]) > 2 * TOLERANCE  # the shared set changed run 2: a mix-up fails above
