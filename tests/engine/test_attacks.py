"""Stealing attacks behind the black box (docs/method.md §10.3): query accounting, targets, JBDA's
growth rule, DFME's zeroth-order estimate, resume and bad input."""

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TinyNet, tiny_split

from ast_jax import losses
from ast_jax.attacks import AttackContext, check_settings, dfme, jbda, run_attack, transfer
from ast_jax.configs.common import attack_cell
from ast_jax.defences.blackbox import BlackBox, victim_release
from ast_jax.engine import make_mesh
from ast_jax.engine.loop import AXIS

MEAN, STD = (0.5,), (0.25,)


class LinearNet(nn.Module):
    """logits = W·flatten(x) + b: gradients a NumPy formula can check."""

    num_classes: int = 4
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class RecordingBox(BlackBox):
    """A black box that records which kind of release each call asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def probabilities(self, images):
        self.calls.append("probabilities")
        return super().probabilities(images)

    def labels(self, images):
        self.calls.append("labels")
        return super().labels(images)


@pytest.fixture(scope="module")
def victim():
    model = TinyNet(num_classes=4)
    return model, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)


def make_box(victim, **kwargs):
    model, variables = victim
    return RecordingBox(victim_release(model, variables, MEAN, STD), image_shape=(8, 8, 1), num_classes=4,
                        mesh=make_mesh(), batch_size=16, **kwargs)


def context(tmp_path, clone=None, **kwargs):
    return AttackContext(clone=clone or TinyNet(num_classes=4, axis_name=AXIS), victim_train=tiny_split(64),
                         test=tiny_split(24, seed=1), mean=MEAN, std=STD, mesh=make_mesh(), seed=0,
                         directory=str(tmp_path), log=lambda message: None, **kwargs)


def test_soft_targets_keep_zeros_at_zero_at_any_temperature():
    released = np.array([[0.7, 0.3, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 0.0]], np.float32)
    logits = transfer.attacker_logits(released)
    for temperature in (1.0, 4.0, 20.0):
        q = np.asarray(losses.softmax_t(jnp.asarray(logits), temperature), np.float64)
        p = released[:2].astype(np.float64) ** (1 / temperature)
        np.testing.assert_allclose(q[:2], p / p.sum(-1, keepdims=True), atol=1e-6)
        np.testing.assert_allclose(q[2], 0.25, atol=1e-7)  # an all-zero release carries nothing: uniform
    one_hot = np.asarray(losses.softmax_t(jnp.asarray(transfer.label_logits(np.array([2]), 4)), 20.0))
    np.testing.assert_array_equal(one_hot, [[0, 0, 1, 0]])


def test_knockoff_draws_uniformly_without_replacement_and_refills():
    indices = transfer.knockoff_indices(10, 25, np.random.default_rng(0))
    assert len(indices) == 25
    assert sorted(indices[:10]) == list(range(10)) and sorted(indices[10:20]) == list(range(10))


@pytest.mark.slow
@pytest.mark.parametrize("labels", ["soft", "hard"])
def test_knockoff_spends_exactly_the_budget_and_hard_sees_only_labels(victim, tmp_path, labels):
    model, variables = victim
    defended = victim_release(model, variables, MEAN, STD, defense=lambda p: jnp.roll(p, 1, axis=-1))

    def box_():
        return RecordingBox(defended, image_shape=(8, 8, 1), num_classes=4, mesh=make_mesh(), batch_size=16,
                            clean=victim_release(model, variables, MEAN, STD))

    box = box_()
    settings = dict(budget=37, labels=labels, epochs=1, batch_size=16)
    result = run_attack("knockoff", box, settings, context(tmp_path, query_images=tiny_split(20, seed=3).images))
    assert box.queries == result.queries == 37
    assert box.calls == (["labels"] if labels == "hard" else ["probabilities"])
    sent = np.load(tmp_path / "transfer-images.npy")  # the 37 images the attack sent
    pixels = jnp.asarray(sent, jnp.float32) / 255
    gaps = np.abs(np.asarray(defended(pixels, None), np.float64)
                  - np.asarray(victim_release(model, variables, MEAN, STD)(pixels, None), np.float64)).sum(-1)
    assert result.query_l1 == pytest.approx(gaps.mean(), rel=1e-5) and result.query_l1 > 0
    # a killed cell keeps its transfer set: run again with a fresh box, nothing is queried
    again = box_()
    resumed = run_attack("knockoff", again, settings, context(tmp_path, query_images=tiny_split(20, seed=3).images))
    assert again.queries == 0 and resumed.queries == 37
    assert resumed.final_accuracy == result.final_accuracy and resumed.query_l1 == result.query_l1


def test_knockoff_dcp_recipe_fills_the_papers_clone_training():
    cell = attack_cell({"kind": "knockoff", "recipe": "dcp", "lr": 0.01})
    check_settings("knockoff", {k: v for k, v in cell.items() if k != "kind"}, "where")
    assert {k: cell[k] for k in ("optimizer", "momentum", "nesterov", "weight_decay", "schedule", "batch_size",
                                 "augment", "clone", "lr", "epochs")} == {
        "optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine_step",
        "batch_size": 64, "augment": "flip_crop", "clone": "resnet34", "lr": 0.01, "epochs": 50}
    ini = attack_cell({"kind": "knockoff"})
    assert (ini["recipe"], ini["nesterov"], ini["augment"], ini["schedule"], ini["batch_size"]) == (
        "ini", False, "none", "cosine", 128)


@pytest.mark.slow
def test_knockoff_dcp_recipe_augments_the_transfer_set_without_querying_again(victim, tmp_path):
    """DCP's recipe trains on flipped and cropped images that keep the un-augmented image's target (a
    combination the engine otherwise refuses), one query per image; the same run unaugmented differs."""
    dcp = attack_cell({"kind": "knockoff", "recipe": "dcp", "budget": 64, "epochs": 2})
    plain = dict(dcp, recipe="ini", augment="none")
    queries = tiny_split(20, seed=3).images
    clones = []
    for name, cell in (("dcp", dcp), ("plain", plain)):
        box = make_box(victim)
        settings = {k: v for k, v in cell.items() if k != "kind"}
        result = run_attack("knockoff", box, settings, context(tmp_path / name, query_images=queries))
        assert box.queries == result.queries == 64 and box.calls == ["probabilities"]
        clones.append(np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(result.variables["params"])]))
    assert not np.allclose(clones[0], clones[1])


@pytest.mark.slow
def test_jbda_doubles_the_set_each_round_with_a_checked_jacobian_step(victim, tmp_path):
    box = make_box(victim)
    settings = dict(seeds=6, rounds=3, epochs=1, batch_size=8)
    result = run_attack("jbda", box, settings, context(tmp_path))
    assert result.query_l1 is None  # a box without the clean release measures nothing
    assert [row["points"] for row in result.history] == [6, 12, 24]
    assert box.queries == result.queries == 6 + 6 + 12  # |S| after the last augmentation
    relabel = make_box(victim)
    run_attack("jbda", relabel, dict(settings, relabel_all=True), context(tmp_path / "relabel"))
    assert relabel.queries == 6 * (2 ** 3 - 1)
    # the augmentation step on a linear clone: sign of W[:, y] / std, clipped to [0, 1]
    clone = LinearNet()
    variables = clone.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 1)))
    x = np.random.default_rng(0).uniform(0, 1, (5, 8, 8, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0])
    new = np.asarray(jbda.jacobian_step(clone, variables, jnp.asarray(x), jnp.asarray(y), 0.1, jnp.asarray(MEAN),
                                        jnp.asarray(STD)))
    kernel = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)  # (64, 4)
    expected = np.clip(x + 0.1 * np.sign(kernel[:, y].T / STD[0]).reshape(x.shape), 0, 1)
    np.testing.assert_allclose(new, expected, atol=1e-7)
    assert jbda.round_step(dict(step=0.1, flip_every=3, space="pixel"), 3, STD) == pytest.approx(-0.1)
    assert jbda.round_step(dict(step=0.1, flip_every=0, space="reference"), 3, STD) == pytest.approx(0.025)


@pytest.mark.slow
def test_dfme_estimate_on_a_linear_victim_converges_to_the_gradient_direction():
    rng = np.random.default_rng(0)
    w_victim, w_clone = rng.normal(size=(3, 48)), rng.normal(size=(3, 48))
    box = BlackBox(lambda x, key: jax.nn.softmax(x.reshape(x.shape[0], -1) @ jnp.asarray(w_victim.T, jnp.float32)),
                   image_shape=(4, 4, 3), num_classes=3, mesh=make_mesh(), batch_size=64)
    a = jnp.asarray(rng.normal(size=(4, 4, 4, 3)), jnp.float32)

    def loss(a):  # the per-sample L of DFME with the clone c = W_c·x, x = a (identity normalisation)
        released = jax.nn.softmax(a.reshape(4, -1) @ jnp.asarray(w_victim.T, jnp.float32))
        return -dfme.disagreement(a.reshape(4, -1) @ jnp.asarray(w_clone.T, jnp.float32), released, "dfme")

    truth = np.asarray(jax.grad(lambda a: jnp.sum(loss(a)))(a)).reshape(4, -1)
    cosines = []
    for m in (1, 10, 200):
        values = []
        for seed in range(3):
            u = dfme.sphere_directions(jax.random.PRNGKey(seed), m, a.shape)
            points = dfme.probe_points(a, u, 1e-3)
            released = box.probabilities(points.reshape(-1, 4, 4, 3))
            clone = points.reshape(-1, 48) @ jnp.asarray(w_clone.T, jnp.float32)
            losses_ = -dfme.disagreement(clone, released, "dfme").reshape(m + 1, 4)
            estimate = np.asarray(dfme.zeroth_order_gradient(losses_, u, 1e-3)).reshape(4, -1)
            values.append(np.mean(np.sum(estimate * truth, -1)
                                  / (np.linalg.norm(estimate, axis=-1) * np.linalg.norm(truth, axis=-1))))
        cosines.append(np.mean(values))
    assert cosines[0] < cosines[1] < cosines[2] and cosines[2] > 0.85


@pytest.mark.slow
def test_dfme_spends_n_times_m_plus_one_plus_clone_steps_per_iteration(victim, tmp_path):
    box = make_box(victim)
    settings = dict(budget=1000, batch_size=16, directions=2, nz=8, ngf=4, iterations_per_epoch=2)
    assert dfme.iteration_cost(dict(settings, clone_steps=5)) == 16 * ((2 + 1) + 5)
    result = run_attack("dfme", box, settings, context(tmp_path))
    assert box.queries == result.queries == (1000 // 128) * 128
    assert dfme.schedule_plan(dict(settings, clone_steps=5, lr_milestones=(0.1, 0.3, 0.5)))[:2] == (7, 4)


def test_dfme_schedule_follows_the_reference_multisteplr_with_coinciding_milestones():
    """The reference steps PyTorch's MultiStepLR at each epoch's start; a milestone listed twice decays twice."""
    settings = {"budget": 16 * 8 * 2 * 3, "batch_size": 16, "directions": 1, "clone_steps": 6,
                "iterations_per_epoch": 2, "lr_milestones": (0.1, 0.3, 0.5, 0.75), "lr_decay": 0.3}
    iterations, epochs, milestones = dfme.schedule_plan(settings)
    assert (iterations, epochs, milestones) == (6, 4, [0, 1, 2, 3])
    settings["lr_milestones"] = (0.1, 0.2, 0.5, 0.6)  # int(f * 4): 0, 0, 2, 2
    assert dfme.schedule_plan(settings)[2] == [0, 0, 2, 2]

    def reference(lr):
        """Per epoch (0-based), the lr a torch MultiStepLR built at lr and stepped at each epoch's start gives."""
        counts = collections.Counter(int(f * epochs) for f in settings["lr_milestones"])
        current, lrs = lr * 0.3 ** counts[0], []  # the constructor's own step (last_epoch = 0)
        for epoch in range(1, epochs + 1):
            current *= 0.3 ** counts[epoch]
            lrs.append(current)
        return lrs

    for steps_per_iteration in (1, 6):
        schedule = dfme.decay_schedule(settings, 0.1, steps_per_iteration)
        expected = np.repeat(reference(0.1), 2 * steps_per_iteration)[:iterations * steps_per_iteration]
        got = np.array([float(schedule(step)) for step in range(iterations * steps_per_iteration)])
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert reference(1.0)[:3] == pytest.approx([0.09, 0.0081, 0.0081])  # two decays at once, one epoch early


@pytest.mark.parametrize("kind,settings,match", [
    ("knockof", {}, "unknown attack 'knockof'; valid: kd, knockoff, jbda, dfme"),
    ("knockoff", {"budget": 100, "batch_size": 128}, "budget of 100 queries is smaller than one batch"),
    ("dfme", {"budget": 1000, "batch_size": 256}, "smaller than one batch \\(1792\\)"),
    ("knockoff", {"labels": "medium"}, r"where.labels: must be one of \('soft', 'hard'\)"),
    ("jbda", {"lambda": 0.1}, r"no setting\(s\) \['lambda'\]"),
    ("knockoff", {"recipe": "orekondy"}, r"where.recipe: must be one of \('ini', 'dcp'\)"),
    ("knockoff", {"recipe": "dcp", "batch_size": 128}, r"recipe 'dcp' trains with .* the cell sets \{'batch_size': 128\}"),
    ("knockoff", {"clone": "resnet35"}, r"where.clone: unknown model name 'resnet35'"),
    ("knockoff", {"nesterov": 1}, r"where.nesterov: must be True or False"),
    ("knockoff", {"augment": "mixup"}, r"where.augment: must be one of \('none', 'flip_crop'\)"),
])
def test_bad_settings_are_one_line(kind, settings, match):
    with pytest.raises(ValueError, match=match) as error:
        check_settings(kind, settings, "where")
    assert "\n" not in str(error.value)
