"""Adaptive attacks on undistillable teachers and the attacker's data budget (docs/method.md §10.6):
each loss against an independent float64 NumPy formula, the self-distilling clone's heads, the
budget's draw, and tiny end-to-end runs behind the query-counting black box."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TinyNet, tiny_split
from test_attacks import MEAN, STD, context, make_box

from ast_jax import losses, models
from ast_jax.attacks import attacker_indices, check_settings, run_attack, transfer
from ast_jax.attacks.skeptical import SkepticalObjective
from ast_jax.engine import StepSpec


def _log_softmax(z, tau=1.0):
    z = np.asarray(z, np.float64) / tau
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl(log_p, log_q):
    p = np.exp(log_p)
    return np.where(p > 0, p * (np.where(p > 0, log_p, 0) - log_q), 0).sum(-1)


def _ce(z, y):
    return -_log_softmax(z)[np.arange(len(y)), y]


def _logits(seed, n=6, k=5):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3, (n, k)).astype(np.float32), rng.integers(0, k, n)


def test_kd_hard_loss_is_omega_ce_on_the_released_label_plus_ce_on_the_truth():
    s, y = _logits(0)
    released = np.random.default_rng(1).integers(0, 5, len(y))
    omega = 0.7
    got = losses.kd_loss(jnp.asarray(s), jnp.asarray(transfer.label_logits(released, 5)), jnp.asarray(y), 1.0, omega)
    expected = omega * _ce(s, released).mean() + (1 - omega) * _ce(s, y).mean()
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("tau_a", [1.0, 8.0, 64.0])
def test_kd_retemper_loss_resoftens_the_released_log_probabilities(tau_a):
    s, y = _logits(2)
    released = np.exp(_log_softmax(_logits(3)[0]))
    released[0, 1:] = 0.0  # a sparse release: zeros stay zeros at every τ_a
    released = released.astype(np.float32)
    omega = 0.9
    got = losses.kd_loss(jnp.asarray(s), jnp.asarray(transfer.attacker_logits(released)), jnp.asarray(y), tau_a, omega)
    with np.errstate(divide="ignore"):
        target = _log_softmax(np.log(released.astype(np.float64)), tau_a)
    expected = omega * tau_a**2 * _kl(target, _log_softmax(s, tau_a)).mean() + (1 - omega) * _ce(s, y).mean()
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_skeptical_loss_matches_its_formula():
    (s0, y), (s1, _), (s2, _), (t, _) = _logits(4), _logits(5), _logits(6), _logits(7)
    tau, omega = 4.0, 0.9
    where = np.array([True, True, False, True, True, True])
    got = losses.skeptical_loss(*map(jnp.asarray, (s0, s1, s2, t, y)), tau, omega, jnp.asarray(where))
    kd = omega * tau**2 * _kl(_log_softmax(t, tau), _log_softmax(s2, tau)) + (1 - omega) * _ce(s2, y)
    self_kl = 0.3 * _kl(_log_softmax(s0, tau), _log_softmax(s1, tau)) + 0.7 * _ce(s1, y)
    expected = (kd + self_kl + _ce(s0, y))[where].mean()
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("trunk,shape", [("resnet18", (2, 8, 8, 1)), ("resnet50", (2, 32, 32, 3))])
def test_self_distilling_clone_has_three_heads_and_drops_to_its_trunk(trunk, shape):
    model = models.create_self_distilling(trunk, 7)
    x = jnp.zeros(shape)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    heads = jax.eval_shape(lambda v: model.apply(v, x, train=False, heads=True), variables)
    assert [h.shape for h in heads] == [(2, 7)] * 3
    assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == (2, 7)
    plain = jax.eval_shape(lambda: models.create(trunk, 7).init(jax.random.PRNGKey(0), x, train=False))
    trunk_only = models.trunk_variables(variables)
    assert jax.tree.structure(trunk_only) == jax.tree.structure(plain)
    assert [a.shape for a in jax.tree.leaves(trunk_only)] == [a.shape for a in jax.tree.leaves(plain)]
    e = 4 if trunk == "resnet50" else 1
    assert variables["params"]["head1_linear"]["kernel"].shape == (512 * e, 7)
    assert variables["params"]["head2_sep0_5"]["kernel"].shape == (1, 1, 128 * e, 256 * e)
    with pytest.raises(ValueError, match="needs a ResNet trunk"):
        models.create_self_distilling("cnn", 7)


def test_skeptical_step_kind_needs_its_objective():
    with pytest.raises(ValueError, match="SkepticalObjective"):
        StepSpec("skeptical")
    assert StepSpec("skeptical", objective=SkepticalObjective(4.0, 0.9)).objective.kind == "skeptical"


def test_attacker_indices_draw_a_seeded_share_without_replacement():
    assert np.array_equal(attacker_indices(50, 1.0, 3), np.arange(50))
    tenth = attacker_indices(50, 0.1, 3)
    assert len(tenth) == 5 and len(set(tenth)) == 5 and np.all(np.diff(tenth) > 0)
    assert np.array_equal(tenth, attacker_indices(50, 0.1, 3))
    assert not np.array_equal(tenth, attacker_indices(50, 0.1, 4))
    assert len(attacker_indices(50, 20, 0)) == 20 and len(attacker_indices(50, 50, 0)) == 50
    assert len(attacker_indices(50, 0.001, 0)) == 1


@pytest.mark.parametrize("budget,match", [(0, "fraction in \\(0, 1\\] or a whole number"),
                                          (1.5, "got 1.5"), (-0.2, "got -0.2"), (True, "got True"),
                                          (51, "51 images asked of a set of 50")])
def test_a_bad_budget_is_one_line(budget, match):
    with pytest.raises(ValueError, match=match) as error:
        attacker_indices(50, budget, 0, "the budget")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind,key", [("kd", "budget"), ("kd_hard", "budget"), ("kd_retemper", "budget"),
                                      ("skeptical", "budget"), ("knockoff", "pool"), ("jbda", "pool")])
def test_every_data_based_attack_takes_a_budget(kind, key):
    check_settings(kind, {key: 0.25}, "where")
    with pytest.raises(ValueError, match=f"where.{key}: give a fraction"):
        check_settings(kind, {key: 0}, "where")
    with pytest.raises(ValueError, match="clone: must be one of"):
        check_settings("skeptical", {"clone": "cnn"}, "where")


@pytest.mark.slow
def test_kd_hard_never_asks_the_box_for_probabilities(tmp_path):
    victim = TinyNet(num_classes=4)
    variables = victim.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    box = make_box((victim, variables), labels_only=True)  # `probabilities` would raise PermissionError
    result = run_attack("kd_hard", box, {"epochs": 1, "batch_size": 16, "budget": 0.5}, context(tmp_path))
    assert box.calls == ["labels"] and box.queries == result.queries == 32
    assert np.isfinite(result.final_accuracy)


@pytest.mark.slow
def test_skeptical_end_to_end_releases_a_plain_trunk(tmp_path):
    victim = TinyNet(num_classes=4)
    variables = victim.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    box = make_box((victim, variables))
    clone = models.create("resnet18", 4)
    result = run_attack("skeptical", box, {"epochs": 1, "batch_size": 32, "budget": 0.5, "clone": "resnet18"},
                        context(tmp_path, clone=clone))
    assert box.calls == ["probabilities"] and result.queries == 32
    plain = clone.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    assert jax.tree.structure(result.variables) == jax.tree.structure(plain)
    logits = clone.apply(result.variables, (tiny_split(4).images / 255.0 - MEAN[0]) / STD[0], train=False)
    assert logits.shape == (4, 4) and np.isfinite(np.asarray(logits)).all()
