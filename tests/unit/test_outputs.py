"""Output defences against independent float64 formulas (docs/method.md §10.2)."""

import jax
import numpy as np
import pytest

from ast_jax import losses
from ast_jax.defences import outputs as defenses


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_perturbation(p, beta, gamma, upper_clamp=True):
    odds = p / np.where(p < 1, 1 - p, np.inf) if not upper_clamp else p / np.maximum(1 - p, 1e-300)
    odds = np.clip(odds, 1e-12, 1 - 1e-12) if upper_clamp else np.maximum(odds, 1e-12)
    return beta * (np_sigmoid(gamma * np.log(odds)) - 0.5)


def np_dcp(p, beta, gamma, nu=1000.0, sign=-1.0):
    alpha = np_sigmoid(sign * nu * (p.max(-1, keepdims=True) - beta))
    out = p - alpha * np_perturbation(p, beta, gamma)
    return out / out.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def probs():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (64, 10))
    logits[0] = [30, 0, 0, 0, 0, 0, 0, 0, 0, 0]     # confident (p_max ~ 1)
    logits[1] = np.zeros(10)                         # uniform (p_max 0.1)
    logits[2, :] = -np.inf
    logits[2, 3] = 0                                 # exactly one-hot: p_k = 1 and 0
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return logits, (p / p.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("beta,gamma", [(0.3, 0.2), (0.9, 0.1), (1.5, 0.2)])
def test_dcp_equals_the_float64_formula_and_stays_a_distribution(probs, beta, gamma):
    _, p = probs
    out = np.asarray(jax.jit(defenses.make_defense("dcp", beta=beta, gamma=gamma))(p))
    np.testing.assert_allclose(out, np_dcp(p.astype(np.float64), beta, gamma), atol=2e-6)
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-6)


def test_dcp_code_sign_perturbs_uncertain_outputs_and_leaves_confident_ones(probs):
    _, p = probs
    beta = 0.5
    confident, uncertain = p.max(-1) > beta + 0.02, p.max(-1) < beta - 0.02
    uncertain[1] = False  # the uniform output: an equal shift of every class renormalises back to itself
    assert confident.sum() > 5 and uncertain.sum() > 5
    code = np.asarray(defenses.dcp(p, beta, 0.2))
    paper = np.asarray(defenses.dcp(p, beta, 0.2, sign="paper"))
    change = lambda out: np.abs(out - p).sum(-1)  # noqa: E731
    assert change(code)[confident].max() < 1e-6 and change(code)[uncertain].min() > 1e-3
    assert change(paper)[uncertain].max() < 1e-6 and change(paper)[confident].min() > 1e-4


def test_beta_zero_is_the_identity(probs):
    _, p = probs
    np.testing.assert_allclose(np.asarray(defenses.dcp(p, 0.0, 0.2)), p, atol=1e-7)
    np.testing.assert_allclose(np.asarray(defenses.reverse_sigmoid(p, 0.0, 0.2)), p, atol=1e-7)


def test_upper_clamp_zeroes_the_perturbation_of_large_classes(probs):
    _, p = probs
    r = np.asarray(defenses.reverse_sigmoid_perturbation(p, 0.8, 0.2))
    assert np.all(r[p >= 0.5] == 0) and np.all(r <= 0)
    unclamped = np.asarray(defenses.reverse_sigmoid_perturbation(p, 0.8, 0.2, upper_clamp=False))
    assert np.all(np.isfinite(unclamped)) and np.all(unclamped[p > 0.6] > 0)


def test_reverse_sigmoid_equals_the_float64_formula(probs):
    _, p = probs
    p64 = p.astype(np.float64)
    expected = p64 - np_perturbation(p64, 0.16, 0.2)
    out = np.asarray(defenses.make_defense("reverse_sigmoid", beta=0.16, gamma=0.2)(p))
    np.testing.assert_allclose(out, expected / expected.sum(-1, keepdims=True), atol=2e-6)


def test_top1_topk_round_and_stingy(probs):
    logits, p = probs
    one_hot = np.asarray(defenses.top1(p))
    np.testing.assert_array_equal(one_hot, np.eye(10)[p.argmax(-1)])
    assert defenses.labels_only("top1") and not defenses.labels_only("dcp")
    rounded = np.asarray(defenses.topk_round(p, 2, 1))
    top2 = np.argsort(-p, -1)[:, :2]
    expected = np.zeros_like(p)
    np.put_along_axis(expected, top2, np.round(np.take_along_axis(p.astype(np.float64), top2, -1), 1), -1)
    np.testing.assert_allclose(rounded, expected, atol=1e-7)
    finite = np.isfinite(logits).all(-1)
    sparse = np.asarray(jax.nn.softmax(losses.sparse_topk(logits[finite].astype(np.float32), 3)))
    np.testing.assert_allclose(np.asarray(defenses.stingy(p[finite], 3)), sparse, atol=1e-6)
    assert np.all((np.asarray(defenses.stingy(p, 3)) > 0).sum(-1) <= 3)


@pytest.mark.parametrize("name,params,match", [
    ("dpc", {}, "unknown defence 'dpc'; valid: none, dcp"),
    ("dcp", {"beta": 0.3}, r"missing parameter\(s\) \['gamma'\]"),
    ("dcp", {"beta": 0.3, "gamma": 0.2, "tau": 1}, r"unknown parameter\(s\) \['tau'\]"),
    ("dcp", {"beta": -1, "gamma": 0.2}, r"where.beta: must be a number >= 0"),
    ("dcp", {"beta": 0.3, "gamma": 0.2, "sign": "plus"}, r"where.sign: must be one of"),
    ("topk_round", {"k": 11, "decimals": 1}, r"where.k: must be an integer \[1, 10\]"),
])
def test_bad_names_and_parameters_are_one_line(name, params, match):
    with pytest.raises(ValueError, match=match) as error:
        defenses.check_defense(name, params, "where", num_classes=10)
    assert "\n" not in str(error.value)


def test_default_gamma_follows_the_authors_code():
    assert defenses.default_gamma("dcp", "cifar100") == 0.1 and defenses.default_gamma("dcp", "cifar10") == 0.2
    assert defenses.default_gamma("reverse_sigmoid", "cifar10") == 0.1
    assert defenses.default_gamma("reverse_sigmoid", "digits") == 0.2
