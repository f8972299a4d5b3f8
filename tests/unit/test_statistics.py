"""ast_jax.results.statistics: output statistics against independent float64 NumPy, result arithmetic."""

import math

import numpy as np
import pytest

from ast_jax.results import statistics

C = 5


# ---- independent float64 restatements (written from the thesis / docs/method.md definitions) ----
def np_softmax(z, t):
    z = np.asarray(z, np.float64) / t
    out = np.zeros_like(z)
    for i, row in enumerate(z):
        finite = np.isfinite(row)
        e = np.exp(row[finite] - row[finite].max())
        out[i, finite] = e / e.sum()
    return out


def np_entropy(p):
    return -sum(pi * math.log(pi) for pi in p if pi > 0)


def np_kl(p, q, eps):
    """KL(p || q); a q_i == 0 under p_i > 0 (true KL infinite) is replaced by eps, as documented."""
    return max(0.0, sum(pi * (math.log(pi) - math.log(qi if qi > 0 else eps)) for pi, qi in zip(p, q) if pi > 0))


def np_stats(logits, labels, t, seed, eps=statistics.KL_EPS):
    """Reference: same documented sampling (ascending classes with >= 2 images, one rng draw each)."""
    p = np_softmax(logits, t)
    h = np.array([np_entropy(row) for row in p])
    rng = np.random.default_rng(seed)
    kls, inf = [], []
    for c in sorted(set(int(v) for v in labels)):
        idx = [i for i, v in enumerate(labels) if v == c]
        if len(idx) < 2:
            continue
        ref = idx[int(rng.integers(len(idx)))]
        for j in idx:
            if j != ref:
                kls.append(np_kl(p[ref], p[j], eps))
                inf.append(any(a > 0 and b == 0 for a, b in zip(p[ref], p[j])))
    kls = np.array(kls)
    return dict(entropy_mean=h.mean(), entropy_std=h.std(), entropy_min=h.min(), entropy_max=h.max(),
                kl_mean=kls.mean(), kl_std=kls.std(), kl_min=kls.min(), kl_max=kls.max(),
                kl_pairs=len(kls), kl_infinite_fraction=float(np.mean(inf)))


def assert_stats_match(got, want):
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-10, abs=1e-12), k


LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])  # class 3 has one image: no pair


# ---- output_statistics ----
def test_uniform_outputs_entropy_log_c_and_zero_kl():
    logits = np.full((len(LABELS), C), 3.7)
    s = statistics.output_statistics(logits, LABELS, temperature=4.0)
    assert s["entropy_mean"] == pytest.approx(math.log(C), abs=1e-12)
    assert s["entropy_std"] == pytest.approx(0.0, abs=1e-12)
    assert s["kl_mean"] == pytest.approx(0.0, abs=1e-12) and s["kl_max"] == pytest.approx(0.0, abs=1e-12)
    # pairs exclude the reference: (3-1) + (2-1) + (4-1) + 0
    assert s["kl_pairs"] == 6 and s["num_images"] == len(LABELS)
    assert s["kl_infinite_fraction"] == 0.0
    assert statistics.output_statistics(logits, LABELS, 1.0, log_base=C)["entropy_mean"] == pytest.approx(1.0)


def test_random_logits_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (len(LABELS), C))
    for t, seed in [(1.0, 0), (4.0, 3), (20.0, 7)]:
        got = statistics.output_statistics(logits, LABELS, t, seed=seed)
        assert_stats_match(got, np_stats(logits, LABELS, t, seed))
        assert got["temperature"] == t and got["seed"] == seed


def test_one_hot_ish_outputs_match_numpy_and_direction():
    labels = np.array([0, 0, 0])
    logits = np.array([[50.0, 0, 0, 0, 0], [0, 50.0, 0, 0, 0], [50.0, 0, 0, 0, 0]])
    got = statistics.output_statistics(logits, labels, 1.0, seed=0)
    assert_stats_match(got, np_stats(logits, labels, 1.0, 0))
    assert 0.0 < got["entropy_max"] < 1e-18  # 4 * e^-50 * 51, not rounded to 0
    # the reference is one of the three; KL is 0 to the identical output and ~50 to the other one
    assert got["kl_pairs"] == 2 and got["kl_max"] == pytest.approx(50.0, rel=1e-6)


def test_kl_is_exact_where_probabilities_underflow():
    # sigma(z) of [800, 0, ...] holds exp(-800) == 0.0 in float64, yet KL = 800 is finite and exact
    labels = np.array([0, 0])
    logits = np.array([[800.0, 0, 0, 0, 0], [0, 800.0, 0, 0, 0]])
    got = statistics.output_statistics(logits, labels, 1.0)
    assert got["kl_mean"] == pytest.approx(800.0, rel=1e-12) and got["kl_infinite_fraction"] == 0.0


def test_kl_direction_reference_first():
    p = np.array([[0.7, 0.2, 0.1]])
    q = np.array([[0.2, 0.3, 0.5]])
    kl, inf = statistics.kl_divergences(p, q)
    assert kl[0] == pytest.approx(np_kl(p[0], q[0], 1e-8)) and not inf[0]
    assert kl[0] != pytest.approx(np_kl(q[0], p[0], 1e-8))
    # zeros: 0 log 0 = 0 on p's side; q = 0 under p > 0 -> eps stand-in, flagged
    kl, inf = statistics.kl_divergences([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], [[0.5, 0.0, 0.5], [0.25, 0.75, 0.0]])
    assert np.all(np.isfinite(kl)) and inf.tolist() == [True, False]
    assert kl[0] == pytest.approx(0.5 * math.log(0.5 / 1e-8))
    assert kl[1] == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75))


def test_sparse_minus_inf_logits_stay_finite():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (len(LABELS), C))
    order = np.argsort(-logits, axis=1)
    sparse = logits.copy()
    np.put_along_axis(sparse, order[:, 2:], -np.inf, axis=1)  # Stingy Teacher: keep top-2
    sparse[1] = sparse[0]  # one pair with identical support
    got = statistics.output_statistics(sparse, LABELS, 4.0, seed=5)
    for k, v in got.items():
        assert v is None or (isinstance(v, (int, float)) and math.isfinite(v)), k
    assert_stats_match(got, np_stats(sparse, LABELS, 4.0, 5))
    assert 0.0 < got["kl_infinite_fraction"] <= 1.0
    # exactly two probabilities per row -> entropy <= log 2
    assert got["entropy_max"] <= math.log(2) + 1e-12
    # probabilities helper: exact zeros where the logit is -inf
    p = statistics.probabilities(sparse, 4.0)
    assert np.all((p == 0) == np.isneginf(sparse)) and np.allclose(p.sum(1), 1.0)


def test_classes_restricts_and_single_image_classes():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1, (len(LABELS), C))
    got = statistics.output_statistics(logits, LABELS, 2.0, seed=1, classes=[2])
    keep = LABELS == 2
    assert_stats_match(got, np_stats(logits[keep], LABELS[keep], 2.0, 1))
    only = statistics.output_statistics(logits, LABELS, 2.0, classes=[3])
    assert only["kl_pairs"] == 0 and only["kl_mean"] is None and only["num_images"] == 1


def test_statistics_validation():
    with pytest.raises(ValueError):
        statistics.output_statistics(np.zeros((3, C)), np.zeros(2, int), 1.0)
    with pytest.raises(ValueError):
        statistics.output_statistics(np.full((1, C), -np.inf), np.zeros(1, int), 1.0)
    with pytest.raises(ValueError):
        statistics.output_statistics(np.zeros((1, C)), np.zeros(1, int), 0.0)


# ---- result_rows ----
TEACHERS = {"nasty": 0.94, "base": 0.95, "stingy": 0.95, "ast": 0.9625}
STUDENTS = {
    ("base", "cnn"): 0.88, ("base", "resnet18"): 0.955,
    ("nasty", "cnn"): 0.83, ("nasty", "resnet18"): 0.9375,
    ("stingy", "cnn"): 0.8,
    ("ast", "resnet18"): 0.9,
}


def test_result_rows_arithmetic_and_order():
    rows = statistics.result_rows(TEACHERS, STUDENTS)
    assert [(r["teacher"], r["student"]) for r in rows] == [
        ("base", "cnn"), ("base", "resnet18"), ("nasty", "cnn"), ("nasty", "resnet18"),
        ("stingy", "cnn"), ("ast", "resnet18")]
    by = {(r["teacher"], r["student"]): r for r in rows}
    r = by[("nasty", "cnn")]
    assert r["D"] == pytest.approx(0.94 - 0.83) and r["P"] == pytest.approx(0.01)
    assert r["D_over_P"] == pytest.approx(11.0) and r["student_change"] == pytest.approx(-0.05)
    r = by[("nasty", "resnet18")]
    assert r["D_over_P"] == pytest.approx(0.0025 / 0.01) and r["student_change"] == pytest.approx(-0.0175)
    for key in [("base", "cnn"), ("stingy", "cnn"), ("ast", "resnet18")]:  # P = 0, P = 0, P < 0
        assert by[key]["D_over_P"] is None
    assert by[("ast", "resnet18")]["P"] == pytest.approx(-0.0125)
    assert by[("stingy", "cnn")]["student_change"] == pytest.approx(-0.08)
    assert by[("base", "cnn")]["student_change"] == 0.0
    assert set(rows[0]) == set(statistics.ROW_KEYS)


def test_result_rows_missing_base_student_and_teacher_without_students():
    rows = statistics.result_rows({"base": 0.9, "x": 0.8, "y": 0.85}, {("x", "cnn"): 0.5})
    assert [(r["teacher"], r["student"]) for r in rows] == [("base", None), ("x", "cnn"), ("y", None)]
    assert rows[1]["student_change"] is None and rows[1]["D_over_P"] == pytest.approx(0.3 / 0.1)
    with pytest.raises(ValueError):
        statistics.result_rows({"x": 0.9}, {})
    with pytest.raises(ValueError):
        statistics.result_rows({"base": 0.9}, {("ghost", "cnn"): 0.5})
    with pytest.raises(ValueError):
        statistics.result_rows({"base": 95.0}, {})  # percentages, not fractions


def _ast_row(d, d_ci, change=-0.02, change_ci=0.01, p=0.01, p_ci=0.005, seeds=(0, 1, 2)):
    return {"teacher": "ast", "student": "cnn", "seeds": list(seeds), "D": d, "D_ci95": d_ci,
            "student_change": change, "student_change_ci95": change_ci, "P": p, "P_ci95": p_ci}


@pytest.mark.parametrize("d, d_ci, verdict", [
    (0.02, 0.01, "above zero"), (0.004, 0.01, "inside the noise"), (-0.03, 0.01, "below zero"),
    (0.02, None, "one seed cannot say")])
def test_effect_headline_states_d_with_its_interval_and_whether_it_clears_zero(d, d_ci, verdict):
    line = statistics.effect_headline([{"teacher": "base", "student": "cnn", "D": 0.0}, _ast_row(d, d_ci)])
    assert verdict in line and line.count("\n") == 0
    if d_ci is not None:  # the interval is mean ± half-width, in points
        assert f"[95%: {100 * (d - d_ci):+.2f}, {100 * (d + d_ci):+.2f}]" in line


def test_effect_headline_is_none_without_the_teacher():
    assert statistics.effect_headline([{"teacher": "base", "student": "cnn", "D": 0.0, "seeds": [0]}]) is None
