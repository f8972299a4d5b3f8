"""Train steps, optimizer and the checkpointed run (tiny model, CPU)."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TinyNet, forced_devices_env, tiny_split

from ast_jax import losses
from ast_jax.data import AugmentSpec
from ast_jax.engine import (
    TARGET_STATISTICS,
    ExecutionPolicy,
    LossHypers,
    NonFiniteLossError,
    RunData,
    StepSpec,
    Teacher,
    TrainingRun,
    TrainSettings,
    checkpoints,
    epoch_plan,
    fit,
    fixed_teacher_logits,
    init_state,
    lr_schedule,
    make_mesh,
    make_optimizer,
    make_train_epoch,
    train_step,
)
from ast_jax.engine.optim import cosine_per_epoch, learning_rate
from ast_jax.engine.steps import identity


def sgd_config(**overrides):
    base = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, milestones=(2,), lr_decay=0.1,
                batch_size=16, eval_batch_size=20, epochs=3, checkpoint_every=1, eval_every=1)
    return TrainSettings(**{**base, **overrides})


# ---- optimizer ----
def test_lr_schedule_is_multistep_per_epoch():
    schedule = lr_schedule(0.1, (2, 3), 0.2, steps_per_epoch=5)
    lrs = [float(schedule(step)) for step in (0, 9, 10, 14, 15)]
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.02, 0.02, 0.004], rtol=1e-6)
    twice = lr_schedule(0.1, (2, 2), 0.2, steps_per_epoch=5)  # MultiStepLR: a repeated milestone decays twice
    np.testing.assert_allclose([float(twice(step)) for step in (9, 10)], [0.1, 0.004], rtol=1e-6)


def test_sgd_is_pytorch_coupled_weight_decay_with_momentum():
    tx = make_optimizer(sgd_config(lr=0.5, weight_decay=0.1, milestones=()), steps_per_epoch=1)
    theta, grads = np.array([1.0, -2.0]), [np.array([0.3, 0.2]), np.array([-0.1, 0.4])]
    params, opt_state = jnp.asarray(theta, jnp.float32), tx.init(jnp.asarray(theta, jnp.float32))
    buf = np.zeros(2)
    for g in grads:  # torch.optim.SGD(lr=0.5, momentum=0.9, weight_decay=0.1), written out
        d = g + 0.1 * theta
        buf = 0.9 * buf + d
        theta = theta - 0.5 * buf
        updates, opt_state = tx.update(jnp.asarray(g, jnp.float32), opt_state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, theta, rtol=1e-6)


def test_nesterov_sgd_with_cosine_per_step_is_pytorchs():
    """torch.optim.SGD(nesterov=True) under CosineAnnealingLR(T_max=epochs·steps) stepped per batch (DCP's Knockoff clone)."""
    config = sgd_config(lr=0.5, weight_decay=0.1, nesterov=True, schedule="cosine_step", epochs=2)
    tx = make_optimizer(config, steps_per_epoch=2)
    theta = np.array([1.0, -2.0])
    params, opt_state = jnp.asarray(theta, jnp.float32), tx.init(jnp.asarray(theta, jnp.float32))
    buf = np.zeros(2)
    for t, g in enumerate([np.array([0.3, 0.2]), np.array([-0.1, 0.4]), np.array([0.2, -0.3]), np.array([0.5, 0.1])]):
        lr = 0.5 * (1 + np.cos(np.pi * t / 4)) / 2
        d = g + 0.1 * theta
        buf = 0.9 * buf + d
        theta = theta - lr * (d + 0.9 * buf)
        updates, opt_state = tx.update(jnp.asarray(g, jnp.float32), opt_state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params, theta, rtol=1e-6)


@pytest.mark.parametrize("schedule", ["multistep", "cosine"])
def test_injected_lr_follows_the_schedule_bit_for_bit(schedule):
    """The lr lives in the optimizer state (`optim.learning_rate`) and follows the schedule exactly as
    an optimizer built from the constant lr does; a state initialised with another lr uses that one."""
    def optimizers(lr):
        config = sgd_config(lr=lr, milestones=(1, 2), lr_decay=0.2, epochs=3, schedule=schedule)
        lrs = {"multistep": lr_schedule(lr, (1, 2), 0.2, 2), "cosine": cosine_per_epoch(lr, 3, 2)}
        return make_optimizer(config, 2), optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(lrs[schedule], momentum=0.9))

    tx, _ = optimizers(0.3)
    for lr in (0.3, 0.03):
        params = jnp.asarray([1.0, -2.0], jnp.float32)
        injected, plain = optimizers(lr)
        state, plain_state = injected.init(params), plain.init(params)
        assert float(learning_rate(state)) == np.float32(lr)
        for step in range(6):  # three epochs of two steps: both milestones passed
            grads = jnp.asarray([0.3, -0.1 * step], jnp.float32)
            updates, state = tx.update(grads, state, params)  # the lr=0.3 transformation, the state's lr
            expected, plain_state = plain.update(grads, plain_state, params)
            np.testing.assert_array_equal(updates, expected)
            params = optax.apply_updates(params, updates)


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer(sgd_config(optimizer="lion"), 1)


# ---- one step, checked against an independent recomputation ----
@pytest.fixture(scope="module")
def step_setup():
    model = TinyNet()
    tx = optax.sgd(0.1)
    state = init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3))
    split = tiny_split(8, channels=3)
    rng = np.random.default_rng(1)
    batch = {"image": jnp.asarray(split.images / 255.0, jnp.float32), "label": jnp.asarray(split.labels),
             "adv_image": jnp.asarray(rng.normal(size=split.images.shape), jnp.float32)}
    teacher = TinyNet()
    teacher_vars = teacher.init(jax.random.PRNGKey(5), batch["image"])
    return model, tx, state, batch, Teacher(teacher), teacher_vars


def _expected_grads(model, state, batch, objective):
    def loss(params):
        logits, _ = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
                                mutable=["batch_stats"])
        return objective(logits)
    return jax.grad(loss)(state.params)


def _infer(model, variables, images):
    return model.apply(variables, images, train=False)


@pytest.mark.parametrize("kind", ["ce", "kd", "ast", "stt", "nasty"])
def test_step_applies_the_objective_gradient(step_setup, kind):
    model, tx, state, batch, teacher, teacher_vars = step_setup
    own = {"params": state.params, "batch_stats": state.batch_stats}
    y = batch["label"]
    objectives = {
        "ce": (StepSpec("ce"), LossHypers(), lambda z: jnp.mean(losses.cross_entropy(z, y))),
        "kd": (StepSpec("kd"), LossHypers(4.0, 0.9), lambda z: losses.kd_loss(z, _infer(teacher.module, teacher_vars, batch["image"]), y, 4.0, 0.9)),
        "nasty": (StepSpec("nasty"), LossHypers(4.0, 0.04), lambda z: losses.nasty_loss(z, _infer(teacher.module, teacher_vars, batch["image"]), y, 4.0, 0.04)),
        "ast": (StepSpec("ast"), LossHypers(6.0, 0.05, 2), lambda z: losses.ast_loss(z, _infer(model, own, batch["adv_image"]), y, 6.0, 0.05, 2)),
        "stt": (StepSpec("stt", divergence="kl"), LossHypers(4.0, 0.04, 2), lambda z: losses.ast_loss(z, _infer(model, own, batch["image"]), y, 4.0, 0.04, 2, "kl")),
    }
    spec, hypers, objective = objectives[kind]
    new_state, metrics = train_step(model, tx, spec, teacher, state, batch, teacher_vars, hypers=hypers)
    grads = _expected_grads(model, state, batch, objective)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(new_state.step) == 1
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.batch_stats, state.batch_stats))
    assert max(moved) > 0, "training mode must update the BatchNorm running statistics"
    assert np.isfinite(float(metrics["loss"])) and 0 <= float(metrics["accuracy"]) <= 1


def test_ast_target_uses_inference_mode_statistics(step_setup):
    """Changing the running statistics changes the AST target (it is computed in inference mode)."""
    model, tx, state, batch, teacher, _ = step_setup
    spec, hypers = StepSpec("ast"), LossHypers(6.0, 0.5, 2)
    shifted = state.replace(batch_stats=jax.tree.map(lambda s: s + 0.5, state.batch_stats))
    a, _ = train_step(model, tx, spec, None, state, batch, hypers=hypers)
    b, _ = train_step(model, tx, spec, None, shifted, batch, hypers=hypers)
    diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
    assert diff > 1e-6


def _np_tiny_net(variables, x, mean=None, var=None):
    """TinyNet in float64 NumPy: logits and the conv output's batch mean and biased variance;
    normalised with (mean, var) when given (inference mode), else with the batch's own."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    kernel = p["Conv_0"]["kernel"]
    padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    conv = sum(padded[:, i:i + h, j:j + w, :] @ kernel[i, j] for i in range(3) for j in range(3))
    conv = conv + p["Conv_0"]["bias"]
    batch_mean, batch_var = conv.mean((0, 1, 2)), conv.var((0, 1, 2))
    mean, var = (batch_mean, batch_var) if mean is None else (mean, var)
    bn = (conv - mean) / np.sqrt(var + 1e-5) * p["BatchNorm_0"]["scale"] + p["BatchNorm_0"]["bias"]
    features = np.maximum(bn, 0).mean((1, 2))
    return features @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], batch_mean, batch_var


def _np_ast_loss(logits, target_logits, labels, t, omega, k):
    """Thesis eq. 5 with EPD (eq. 6), float64."""
    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    kept = np.argsort(-target_logits, -1)[:, :k]
    sparse = np.full_like(target_logits, -np.inf)
    np.put_along_axis(sparse, kept, np.take_along_axis(target_logits, kept, -1), -1)
    p, q = softmax(sparse / t), softmax(logits / t)
    epd = np.sum(np.exp(p) * (p - q), -1)
    ce = -np.log(softmax(logits)[np.arange(len(labels)), labels])
    return omega * t**2 * epd.mean() + (1 - omega) * ce.mean()


def test_ast_target_statistics_orderings_against_a_float64_hand_computation(step_setup):
    """`before_step` scores against the target made with the running statistics from before the step;
    `after_train_forward` (the authors' train_epoch) with those the clean batch's training-mode forward
    has just updated (PyTorch update: momentum 0.1, unbiased batch variance)."""
    model, tx, state, batch, _, _ = step_setup
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    stats = jax.tree.map(lambda a: np.asarray(a, np.float64), state.batch_stats)["BatchNorm_0"]
    images, adv, labels = (np.asarray(batch[k]) for k in ("image", "adv_image", "label"))
    logits, mu, var = _np_tiny_net(variables, images)
    n = images.shape[0] * images.shape[1] * images.shape[2]
    after = (0.9 * stats["mean"] + 0.1 * mu, 0.9 * stats["var"] + 0.1 * var * n / (n - 1))
    running = {"before_step": (stats["mean"], stats["var"]), "after_train_forward": after}
    expected = {}
    for ordering in TARGET_STATISTICS:
        target, _, _ = _np_tiny_net(variables, adv, *running[ordering])
        expected[ordering] = _np_ast_loss(logits, target, labels, 4.0, 0.5, 2)
        _, metrics = train_step(model, tx, StepSpec("ast", target_statistics=ordering), None,
                                state, batch, hypers=LossHypers(4.0, 0.5, 2))
        np.testing.assert_allclose(float(metrics["loss"]), expected[ordering], rtol=1e-5)
    # the orderings differ by far more than the tolerance each one is matched to
    assert abs(expected["before_step"] - expected["after_train_forward"]) > 1e-4 * abs(expected["before_step"])


def _masked_batch(batch, valid):
    """`batch` with the rows where `valid` is False turned into padding: other images and labels, masked."""
    filler = {k: v[::-1] for k, v in batch.items()}
    padded = {k: jnp.where(valid.reshape(-1, *[1] * (v.ndim - 1)), v, filler[k]) for k, v in batch.items()}
    return {**padded, "mask": jnp.asarray(valid)}


@pytest.mark.parametrize("spec,hypers", [(StepSpec("ce"), LossHypers()), (StepSpec("kd"), LossHypers(4.0, 0.9)),
                                         (StepSpec("nasty"), LossHypers(4.0, 0.04)),
                                         (StepSpec("ast", target_statistics="after_train_forward"),
                                          LossHypers(4.0, 0.5, 2)),
                                         (StepSpec("stt"), LossHypers(4.0, 0.5, 2))],
                         ids=["ce", "kd", "nasty", "ast", "stt"])
def test_padded_masked_step_equals_the_step_on_the_valid_examples(step_setup, spec, hypers):
    """The epoch's last partial batch, padded to the full size with a mask, gives the update (parameters,
    BatchNorm statistics, optimizer state) and the metrics of the unpadded partial batch."""
    model, _, state, batch, teacher, teacher_vars = step_setup
    tx = optax.sgd(0.1, momentum=0.9)
    state = init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3))
    valid = np.array([True, False, True, True, False, True, True, False])
    padded, alone = _masked_batch(batch, valid), {k: v[valid] for k, v in batch.items()}
    got = train_step(model, tx, spec, teacher, state, padded, teacher_vars, hypers=hypers)
    want = train_step(model, tx, spec, teacher, state, alone, teacher_vars, hypers=hypers)
    unmasked = train_step(model, tx, spec, teacher, state, {k: v for k, v in padded.items() if k != "mask"},
                          teacher_vars, hypers=hypers)
    for a, b, c in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(unmasked)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(b, c, rtol=1e-3) for b, c in zip(jax.tree.leaves(want), jax.tree.leaves(unmasked)))


@pytest.mark.parametrize("pairing", ["aligned", "random"])
def test_epoch_plan_uses_every_example_and_pairs_every_adversarial_image(pairing):
    """50 examples in batches of 16: 4 steps, the last with 2 valid examples; every clean and every
    adversarial image at exactly one valid position, in both pairings, in two epochs."""
    for epoch in (0, 1):
        _, rows, adv_rows, mask = (np.asarray(a) for a in epoch_plan(jax.random.PRNGKey(3), epoch, 50, 16, pairing))
        assert rows.shape == adv_rows.shape == mask.shape == (4, 16)
        assert mask.sum() == 50 and mask[:3].all() and mask[3].sum() == 2
        np.testing.assert_array_equal(np.sort(rows[mask]), np.arange(50))
        np.testing.assert_array_equal(np.sort(adv_rows[mask]), np.arange(50))
        assert (rows == adv_rows).all() == (pairing == "aligned")


UNEVEN_DEVICES_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np, optax
sys.path.insert(0, {tests!r})
from ast_jax.engine import LossHypers, StepSpec, init_state, make_mesh, make_train_step, replicate, train_step
from conftest import TinyNet, tiny_split

model, tx = TinyNet(axis_name="data"), optax.sgd(0.1, momentum=0.9)
spec, hypers = StepSpec("ast", target_statistics="after_train_forward"), LossHypers(4.0, 0.5, 2)
state = jax.tree.map(np.asarray, init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3)))
split = tiny_split(16, channels=3)
valid = np.zeros(16, bool)
valid[[0, 1, 2, 5, 6]] = True  # 4 devices of 4 examples hold 3, 2, 0 and 0 valid ones
batch = {{"image": split.images / 255.0, "label": split.labels, "mask": valid,
          "adv_image": np.random.default_rng(1).normal(size=split.images.shape)}}
batch = jax.tree.map(lambda a: np.asarray(a, np.float32) if a.dtype == np.float64 else a, batch)
results = []
for devices in (jax.devices()[:1], jax.devices()):
    mesh = make_mesh(devices)
    new, metrics = jax.jit(make_train_step(model, tx, spec, mesh))(replicate(mesh, state), batch, None, None, hypers)
    results.append(jax.tree.map(np.asarray, (new.params, new.batch_stats, metrics)))
alone = {{k: v[valid] for k, v in batch.items() if k != "mask"}}
new, metrics = train_step(TinyNet(), tx, spec, None, state, alone, hypers=hypers)
results.append(jax.tree.map(np.asarray, (new.params, new.batch_stats, metrics)))
diff = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
print(json.dumps({{"devices": diff(results[0], results[1]), "vs_valid_alone": diff(results[1], results[2]),
                  "moved": diff(results[0][0], state.params)}}))
"""


@pytest.mark.slow
def test_masked_step_on_four_devices_with_uneven_valid_examples_equals_one_device():
    code = UNEVEN_DEVICES_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=forced_devices_env(4), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    diffs = json.loads(out.stdout.strip().splitlines()[-1])
    assert diffs["moved"] > 1e-3, diffs
    assert diffs["devices"] < 1e-5 and diffs["vs_valid_alone"] < 1e-5, diffs


@pytest.mark.slow
@pytest.mark.parametrize("transform", ["identity", "stingy"])
def test_precomputed_teacher_logits_give_the_per_step_teacher_epoch(transform):
    """Without augmentation a kd epoch on `fixed_teacher_logits` equals the epoch that runs the teacher in
    every step (Stingy transform included); with augmentation precomputed logits are refused."""
    mesh, model, tx = make_mesh(), TinyNet(axis_name="data"), optax.sgd(0.1, momentum=0.9)
    teacher = Teacher(TinyNet(), functools.partial(losses.sparse_topk, k=2) if transform == "stingy" else identity)
    split = tiny_split(48, channels=1, seed=3)
    teacher_vars = teacher.module.init(jax.random.PRNGKey(5), jnp.zeros((1, 8, 8, 1)))
    state = init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 1))
    data = {"images": jnp.asarray(split.images), "labels": jnp.asarray(split.labels)}
    kwargs = dict(batch_size=16, mean=(0.5,), std=(0.25,), teacher=teacher, policy=ExecutionPolicy.for_backend("cpu"))
    epoch = make_train_epoch(model, tx, StepSpec("kd"), mesh, augment_spec=AugmentSpec(), **kwargs)
    hypers = LossHypers(4.0, 0.9)
    table = fixed_teacher_logits(teacher, teacher_vars, data["images"], mesh, batch_size=16, mean=(0.5,), std=(0.25,))
    fresh = functools.partial(jax.tree.map, jnp.copy, state)  # the epoch donates its state
    per_step, _ = epoch(fresh(), data, teacher_vars, jax.random.PRNGKey(1), 0, hypers=hypers)
    precomputed, _ = epoch(fresh(), {**data, "teacher_logits": table}, teacher_vars, jax.random.PRNGKey(1), 0,
                           hypers=hypers)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(per_step.params), jax.tree.leaves(state.params)))
    assert moved > 1e-3
    for a, b in zip(jax.tree.leaves(precomputed.params), jax.tree.leaves(per_step.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    augmented = make_train_epoch(model, tx, StepSpec("kd"), mesh, augment_spec=AugmentSpec(flip=True), **kwargs)
    with pytest.raises(ValueError, match="only valid without augmentation"):
        augmented(fresh(), {**data, "teacher_logits": table}, teacher_vars, jax.random.PRNGKey(1), 0, hypers=hypers)


def test_step_spec_validation():
    with pytest.raises(ValueError, match="step kind"):
        StepSpec("adversarial")
    with pytest.raises(ValueError, match="needs k"):
        StepSpec("ast").check_hypers(LossHypers(6.0, 0.05))
    with pytest.raises(ValueError, match="target_statistics must be one of"):
        StepSpec("ast", target_statistics="after_step")


# ---- a checkpointed run ----
def _fit(directory, train_config, spec=StepSpec("ce"), record=None, log=lambda _: None, *, hypers=LossHypers(),
         teacher=None, teacher_variables=None, **data_fields):
    split, test = tiny_split(64, channels=1, seed=0), tiny_split(30, channels=1, seed=1)
    data = RunData(split, test, (0.5,), (0.25,), AugmentSpec(crop_padding=1, flip=True), **data_fields)
    run = TrainingRun(directory=str(directory), record=record or {"run": "tiny"}, model=TinyNet(axis_name="data"),
                      train_config=train_config, spec=spec, seed=0, data=data, teacher=teacher,
                      teacher_variables=teacher_variables, hypers=hypers)
    return fit(run, log=log)


def test_fit_writes_metrics_and_checkpoints_and_learns(tmp_path):
    result = _fit(tmp_path, sgd_config(epochs=4, lr=0.2, checkpoint_every=2))
    rows = checkpoints.read_metrics(str(tmp_path))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["16", "8"]  # after 2 and 4 epochs of 4 steps
    assert json.load(open(tmp_path / "run.json")) == {"run": "tiny"}
    assert result.final_accuracy == rows[-1]["test_accuracy"] and result.best_accuracy >= result.final_accuracy
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*")), "TensorBoard events (tensorboardX)"
    assert result.final_accuracy > 0.5  # 4 balanced classes: chance is 0.25


def test_fit_refuses_a_directory_of_another_run(tmp_path):
    _fit(tmp_path, sgd_config(epochs=1))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(checkpoints.WorkdirConflictError, match="run"):
        _fit(tmp_path, sgd_config(epochs=1), record={"run": "other"})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    assert json.load(open(tmp_path / "run.json")) == {"run": "tiny"}


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    _fit(tmp_path, sgd_config(epochs=1), record={"run": "nan"})
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step \d+.*last good checkpoint \(epoch 1\)"):
        _fit(tmp_path, sgd_config(epochs=2, lr=1e30, milestones=()), record={"run": "nan"})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="adversarial"):
        _fit(tmp_path, sgd_config(), spec=StepSpec("ast"), hypers=LossHypers(6.0, 0.05, 2))
    with pytest.raises(ValueError, match="needs k"):
        _fit(tmp_path, sgd_config(), spec=StepSpec("ast"), hypers=LossHypers(6.0, 0.05))
    with pytest.raises(ValueError, match="teacher"):
        _fit(tmp_path, sgd_config(), spec=StepSpec("kd"), hypers=LossHypers(4.0, 0.9))


RESUME_SCRIPT = """
import sys, time, numpy as np, jax
sys.path.insert(0, {tests!r})
from test_train import _fit, sgd_config
result = _fit({directory!r}, sgd_config(epochs=6, checkpoint_every=1), record={{"run": "resume"}},
              log=lambda _: time.sleep(0.5))  # slow enough to be killed between two checkpoints
np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(result.variables)])
"""


def _run_training_subprocess(directory, out, kill_after_checkpoint=None):
    code = RESUME_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), directory=str(directory), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after_checkpoint is not None:
        target = directory / "checkpoints" / str(kill_after_checkpoint)
        deadline = time.time() + 300
        while not target.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_parameters(tmp_path):
    _run_training_subprocess(tmp_path / "whole", tmp_path / "whole.npz")
    _run_training_subprocess(tmp_path / "killed", tmp_path / "killed.npz", kill_after_checkpoint=8)
    assert not (tmp_path / "killed" / "checkpoints" / "24").exists(), "the run was not interrupted"
    _run_training_subprocess(tmp_path / "killed", tmp_path / "killed.npz")
    whole, resumed = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "killed.npz")
    assert len(whole.files) == len(resumed.files) > 0
    for name in whole.files:
        np.testing.assert_array_equal(whole[name], resumed[name])
    rows = checkpoints.read_metrics(str(tmp_path / "killed"))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters_and_optimizer_state():
    from ast_jax import models

    model = models.create("cnn", 10, jnp.bfloat16)
    tx = make_optimizer(sgd_config(), steps_per_epoch=1)
    state = jax.jit(lambda key: init_state(model, tx, key, (8, 8, 1)))(jax.random.PRNGKey(0))  # one compile
    split = tiny_split(8, num_classes=10, channels=1)
    batch = {"image": jnp.asarray(split.images / 255.0, jnp.float32), "label": jnp.asarray(split.labels)}
    new_state, metrics = jax.jit(functools.partial(train_step, model, tx, StepSpec("ast"), None))(
        state, {**batch, "adv_image": batch["image"][::-1]}, hypers=LossHypers(6.0, 0.05, 2))
    leaves = jax.tree.leaves((new_state.params, new_state.opt_state, new_state.batch_stats))
    assert all(leaf.dtype == jnp.float32 for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating))
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
    assert any(float(jnp.max(jnp.abs(a - b))) > 0 for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params)))


# ---- PGD adversarial set ----

def test_host_driven_attack_reports_progress_per_batch():
    from ast_jax.engine import make_mesh, make_pgd_attack

    split = tiny_split(40)
    model = TinyNet()
    variables = model.init(jax.random.PRNGKey(0), split.images[:1] / 255.0)
    calls = []
    attack = make_pgd_attack(model, make_mesh(), batch_size=16, mean=(0.5,), std=(0.25,), eps=0.1,
                             step_size=0.05, steps=2, loop="host", progress=lambda *a: calls.append(a))
    adv = attack(variables, split.images, split.labels, jax.random.key(0))
    assert adv.shape == (40, 8, 8, 1) and adv.dtype == jnp.float32
    assert calls == [(16, 40), (32, 40), (40, 40)]


def test_progress_log_is_rate_limited_and_always_reports_the_end(monkeypatch):
    from ast_jax.engine import progress as progress_lines

    clock = iter([0.0, 1.0, 40.0, 41.0, 42.0])  # start, then one reading per call
    monkeypatch.setattr(progress_lines.time, "perf_counter", lambda: next(clock))
    lines = []
    progress = progress_lines.image_progress(lines.append, every_seconds=30.0)
    for done in (10, 20, 30, 40):
        progress(done, 40)
    assert lines == ["20/40 images, 0.5 images/s, eta 40s", "40/40 images, 1.0 images/s, eta 0s"]
