"""Statistics of the AST study's results, in float64 (thesis §6, docs/method.md §2-3). No I/O.

- `probabilities`, `entropies`, `kl_divergences`: row-wise sigma_T, H and KL that stay finite
  when outputs hold exact zeros (a Stingy Teacher's sparse outputs, logits equal to -inf). They
  evaluate `ast_jax.losses` (`log_softmax_t`, `entropy`, `kl_from_log_probs`) in float64, so the
  tables, the figure and the training losses share one definition of each quantity.
- `output_statistics`: entropy and within-class KL statistics of a test set's softened outputs
  (thesis Tables 6.4 and 6.5).
- `result_rows`: teacher / student accuracies with the student's change against the student of
  the base teacher, defensiveness D, degradation P and D/P (thesis Tables 6.1-6.3, docs/method.md §2).
- `seed_spread`, `summarise_seeds`: the one statistic over seeds (mean, sample std, 95% Student-t
  interval of the mean) and the result rows summarised with it.

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ast_jax import losses

# Probability floor for q in KL(p || q) where q_i = 0 under p_i > 0 (see `kl_divergences`).
KL_EPS = 1e-8

ROW_KEYS = (
    "teacher",
    "student",
    "teacher_accuracy",
    "student_accuracy",
    "student_change",
    "D",
    "P",
    "D_over_P",
)

STAT_KEYS = (
    "temperature",
    "log_base",
    "num_images",
    "entropy_mean",
    "entropy_std",
    "entropy_min",
    "entropy_max",
    "kl_pairs",
    "kl_mean",
    "kl_std",
    "kl_min",
    "kl_max",
    "kl_infinite_fraction",
    "kl_eps",
    "seed",
)

def _log_base_factor(log_base: float | None) -> float:
    """Divisor turning natural-log quantities into base `log_base` (None: natural log, nats)."""
    if log_base is None:
        return 1.0
    if not (isinstance(log_base, (int, float)) and math.isfinite(log_base) and log_base > 0 and log_base != 1):
        raise ValueError(f"log_base must be a positive number other than 1, or None, got {log_base!r}")
    return math.log(log_base)


def log_probabilities(logits, temperature: float) -> np.ndarray:
    """log sigma_T(z) per row in float64 (stable log-sum-exp); -inf exactly where z_i = -inf.

    Every row needs at least one finite logit; NaN and +inf logits are rejected.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (num_images, num_classes), got {z.shape}")
    if not (isinstance(temperature, (int, float, np.floating, np.integer)) and temperature > 0
            and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if np.isnan(z).any() or np.isposinf(z).any():
        raise ValueError("logits contain NaN or +inf")
    finite = np.isfinite(z)
    if z.shape[0] and not finite.any(axis=1).all():
        raise ValueError("every row of logits needs at least one finite entry")
    with jax.enable_x64(True):
        return np.asarray(losses.log_softmax_t(jnp.asarray(z), float(temperature)), dtype=np.float64)


def _entropy64(probs: np.ndarray) -> np.ndarray:
    """`losses.entropy` per row, evaluated in float64 (natural log)."""
    with jax.enable_x64(True):
        return np.asarray(losses.entropy(jnp.asarray(probs, jnp.float64)), dtype=np.float64)


def probabilities(logits, temperature: float) -> np.ndarray:
    """sigma_T(z) = softmax(z / T) per row in float64; exactly 0 where a logit is -inf."""
    return np.exp(log_probabilities(logits, temperature))


def entropies(probs, log_base: float | None = None) -> np.ndarray:
    """Shannon entropy per row, H(p) = -sum_i p_i log p_i with 0 log 0 = 0 (natural log default)."""
    return np.maximum(_entropy64(np.asarray(probs, dtype=np.float64)), 0.0) / _log_base_factor(log_base)


def _kl_from_log(log_p: np.ndarray, log_q: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """KL(p || q) per row from float64 log-probabilities (-inf = probability 0): `losses.kl_from_log_probs`
    in float64, exact where q underflows to 0 in probability space, with log q_i = -inf under
    p_i > 0 replaced by log `eps` (see `kl_divergences`). Returns (kl, infinite)."""
    if not (isinstance(eps, (int, float, np.floating)) and 0 < eps < 1):
        raise ValueError(f"eps must lie in (0, 1), got {eps!r}")
    log_p, log_q = np.broadcast_arrays(np.asarray(log_p, np.float64), np.asarray(log_q, np.float64))
    infinite = (log_p > -np.inf) & (log_q == -np.inf)
    with jax.enable_x64(True):
        kl = np.asarray(losses.kl_from_log_probs(jnp.asarray(log_p), jnp.asarray(np.where(infinite, math.log(eps), log_q))),
                        dtype=np.float64)
    return np.maximum(kl, 0.0), infinite.any(axis=-1)


def kl_divergences(p, q, eps: float = KL_EPS, log_base: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """KL(p || q) = sum_i p_i (log p_i - log q_i) per row, kept finite. Returns (kl, infinite).

    Terms with p_i = 0 are exactly 0 (0 log 0 = 0). Where q_i = 0 exactly under p_i > 0 the true
    divergence is +inf; to keep tables free of inf and NaN such a q_i is replaced by `eps`
    (default 1e-8: the term becomes p_i * (log p_i + 18.42)). Only exact zeros are replaced, so
    every divergence that is finite is computed exactly (a q_i of e^-50 counts as e^-50). The
    stand-in is therefore not monotone in q (q_i = 0 can give less than q_i = 1e-20): read it
    together with `infinite` (bool per row: some q_i == 0 under p_i > 0, i.e. the true KL is
    +inf). Values are clamped at >= 0 (the replacement can push a sum below 0 by at most about
    C * eps).
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_p = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), -np.inf)
        log_q = np.where(q > 0, np.log(np.where(q > 0, q, 1.0)), -np.inf)
    kl, infinite = _kl_from_log(log_p, log_q, eps)
    return kl / _log_base_factor(log_base), infinite


def _summary(values: np.ndarray, prefix: str) -> dict:
    """mean / population std (ddof=0) / min / max of `values`; None for all when empty."""
    if values.size == 0:
        return {f"{prefix}_{k}": None for k in ("mean", "std", "min", "max")}
    return {
        f"{prefix}_mean": float(np.mean(values)),
        f"{prefix}_std": float(np.std(values)),
        f"{prefix}_min": float(np.min(values)),
        f"{prefix}_max": float(np.max(values)),
    }


def output_statistics(
    logits,
    labels,
    temperature: float,
    seed: int = 0,
    *,
    classes: Iterable[int] | None = None,
    eps: float = KL_EPS,
    log_base: float | None = None,
) -> dict:
    """Entropy and within-class KL statistics of sigma_T(logits) over a test set (thesis §6.4).

    Entropy: H(sigma_T(z)) per image (natural log unless `log_base`), mean / std / min / max over
    the images.

    Within-class KL (thesis Tables 6.4, 6.5; docs/method.md §2): for every class c (by **true label**, in
    ascending order) that has at least two images, one reference image r is drawn uniformly with
    `np.random.default_rng(seed)` (one draw per such class, in that order), and
    KL(sigma_T(z_r) || sigma_T(z_j)) -- reference first, i.e. the reference is the "p" of
    sum p log(p/q) -- is computed for every *other* image j of class c. The reference itself
    (KL = 0) is excluded. Mean / std / min / max are taken over all pairs of all classes pooled.
    Zero probabilities: 0 log 0 = 0; q_j = 0 under p_r > 0 is replaced by `eps` (see
    `kl_divergences`); `kl_infinite_fraction` is the fraction of pairs whose true KL is infinite
    (the reference puts mass where the other image's output is exactly 0, e.g. two Stingy
    Teacher outputs with different top-k classes); their reported value depends on `eps`.

    `classes`: restrict both statistics to images of these labels (the thesis tables report
    single classes, e.g. `classes=[5]`). Standard deviations are population (ddof=0) values;
    square them for the thesis's "variance". KL statistics are None when there is no pair.

    Note: the thesis's entropies appear to be in base 10 (CIFAR-100 base teacher: mean 1.998,
    max 1.9996 < log10(100) = 2); pass `log_base=10` to compare with its tables.

    Returns a flat dict of Python scalars with keys `STAT_KEYS`.
    """
    log_p = log_probabilities(logits, temperature)
    _kl_from_log(log_p[:0], log_p[:0], eps)  # validate eps early
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != log_p.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {log_p.shape[0]} rows of logits")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("labels must be integers")
        y = y.astype(np.int64)
    if classes is not None:
        keep = np.isin(y, np.asarray(list(classes), dtype=np.int64))
        log_p, y = log_p[keep], y[keep]
    probs = np.exp(log_p)
    factor = _log_base_factor(log_base)

    h = entropies(probs, log_base=log_base)

    rng = np.random.default_rng(seed)
    kls, infinite = [], []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if members.size < 2:
            continue
        r = int(rng.integers(members.size))
        ref = members[r]
        others = np.delete(members, r)
        kl, hit = _kl_from_log(log_p[ref][None, :], log_p[others], eps)  # exact, no underflow
        kls.append(kl / factor)
        infinite.append(hit)
    kl_all = np.concatenate(kls) if kls else np.zeros(0)
    hit_all = np.concatenate(infinite) if infinite else np.zeros(0, bool)

    out = {
        "temperature": float(temperature),
        "log_base": None if log_base is None else float(log_base),
        "num_images": int(y.shape[0]),
        **_summary(h, "entropy"),
        "kl_pairs": int(kl_all.size),
        **_summary(kl_all, "kl"),
        "kl_infinite_fraction": float(hit_all.mean()) if hit_all.size else None,
        "kl_eps": float(eps),
        "seed": int(seed),
    }
    return out


def result_rows(
    teacher_accuracy: Mapping[str, float],
    student_accuracy: Mapping[tuple[str, str], float],
    base: str = "base",
) -> list[dict]:
    """One row per (teacher, student architecture) with accuracies, change, D, P and D/P.

    - `teacher_accuracy`: teacher name -> test accuracy (fraction). Must contain `base`. The
      Stingy Teacher ("stingy": the base model with sparse outputs) is listed like any other
      teacher, with its own (i.e. the base model's) accuracy.
    - `student_accuracy`: (teacher name, student architecture) -> accuracy of the student that
      architecture distilled from that teacher. Every teacher named here must be in
      `teacher_accuracy`.

    Row fields: `teacher`, `student`, `teacher_accuracy`, `student_accuracy`,
    `student_change` = student accuracy - accuracy of the same architecture distilled from
    `base` (None when that student is missing), `D` = teacher - student (defensiveness),
    `P` = base - teacher (degradation), `D_over_P` = D / P, None when P <= 0 ("no degradation").

    Order: `base` first, then the other teachers in `teacher_accuracy`'s order; within a teacher,
    students in order of first appearance in `student_accuracy`. A teacher with no student gets
    one row with `student` and the student fields None (its P is still reported).
    """
    if base not in teacher_accuracy:
        raise ValueError(f"teacher_accuracy has no entry for the base teacher {base!r}")
    for key in student_accuracy:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"student_accuracy keys must be (teacher, student) pairs, got {key!r}")
        if key[0] not in teacher_accuracy:
            raise ValueError(f"student_accuracy names teacher {key[0]!r}, which is not in teacher_accuracy")
    for name, acc in [*teacher_accuracy.items(), *student_accuracy.items()]:
        if not (isinstance(acc, (int, float, np.floating, np.integer)) and 0.0 <= float(acc) <= 1.0):
            raise ValueError(f"accuracy of {name!r} must be a fraction in [0, 1], got {acc!r}")

    students = list(dict.fromkeys(s for _, s in student_accuracy))
    teachers = [base, *(t for t in teacher_accuracy if t != base)]
    base_acc = float(teacher_accuracy[base])
    rows = []
    for t in teachers:
        t_acc = float(teacher_accuracy[t])
        p = base_acc - t_acc
        present = [s for s in students if (t, s) in student_accuracy]
        if not present:
            rows.append(dict(teacher=t, student=None, teacher_accuracy=t_acc, student_accuracy=None,
                             student_change=None, D=None, P=p, D_over_P=None))
            continue
        for s in present:
            s_acc = float(student_accuracy[(t, s)])
            ref = student_accuracy.get((base, s))
            d = t_acc - s_acc
            rows.append(dict(
                teacher=t,
                student=s,
                teacher_accuracy=t_acc,
                student_accuracy=s_acc,
                student_change=None if ref is None else s_acc - float(ref),
                D=d,
                P=p,
                D_over_P=d / p if p > 0 else None,
            ))
    return rows


SPREAD_KEYS = ("teacher_accuracy", "student_accuracy", "student_change", "D", "P")
"""The row fields `summarise_seeds` gives as mean ± std with a 95% interval."""


def seed_spread(values: Sequence[float]) -> dict:
    """Mean, sample std (n - 1 in the denominator) and the half-width of the 95% Student-t
    interval of the mean, t_{0.975, n-1} · std / √n, over `n` seeds (std and half-width None
    for one seed: a single run has no spread)."""
    from scipy import stats  # lazy: scipy.stats takes a while to import

    x = np.asarray(values, np.float64)
    if x.size < 2:
        return {"mean": float(x.mean()), "std": None, "ci95": None, "n": int(x.size)}
    std = float(x.std(ddof=1))
    return {"mean": float(x.mean()), "std": std, "ci95": float(stats.t.ppf(0.975, x.size - 1) * std / math.sqrt(x.size)),
            "n": int(x.size)}


def summarise_seeds(rows_by_seed: Mapping[int, Sequence[Mapping]]) -> list[dict]:
    """Per (teacher, student) over seeds: each `SPREAD_KEYS` field as its mean, `<key>_std` and
    `<key>_ci95` (`seed_spread`; None where a seed lacks the field), `D_over_P` as mean D over
    mean P (None when mean P <= 0: the ratio of means, since a single seed's D/P is undefined
    whenever its P <= 0) and `seeds`, in the first seed's row order."""
    groups: dict[tuple, list[tuple[int, Mapping]]] = {}
    for seed, rows in rows_by_seed.items():
        for row in rows:
            groups.setdefault((row["teacher"], row["student"]), []).append((seed, row))
    summary = []
    for (teacher, student), members in groups.items():
        entry = {"teacher": teacher, "student": student, "seeds": [seed for seed, _ in members]}
        for key in SPREAD_KEYS:
            values = [row[key] for _, row in members]
            spread = seed_spread(values) if values and None not in values else {"mean": None, "std": None,
                                                                                "ci95": None}
            entry[key], entry[f"{key}_std"], entry[f"{key}_ci95"] = spread["mean"], spread["std"], spread["ci95"]
        d, p = entry["D"], entry["P"]
        entry["D_over_P"] = d / p if d is not None and p is not None and p > 0 else None
        summary.append(entry)
    return summary


def _interval(entry: Mapping, key: str) -> str:
    """`+1.23 [95%: -0.45, +2.91]` in points, or `+1.23 (one seed: no interval)`."""
    mean, half = 100 * entry[key], entry.get(f"{key}_ci95")
    if half is None:
        return f"{mean:+.2f} (one seed: no interval)"
    return f"{mean:+.2f} [95%: {mean - 100 * half:+.2f}, {mean + 100 * half:+.2f}]"


def effect_headline(summary: Sequence[Mapping], teacher: str = "ast") -> str | None:
    """One sentence on `teacher`'s defence over seeds (the first line of a seed report), or None
    when the summary has no such row: its student's change against the base teacher's student,
    D = teacher − student and the teacher's cost P, each with its 95% t-interval (`seed_spread`),
    and whether D's interval lies above zero (the stolen student is worse than the teacher it was
    stolen from) or contains zero (the effect is inside the noise of these seeds)."""
    entry = next((e for e in summary if e["teacher"] == teacher
                  and all(e.get(key) is not None for key in ("student_change", "D", "P"))), None)
    if entry is None:
        return None
    seeds = len(entry["seeds"])
    half = entry.get("D_ci95")
    if half is None:
        verdict = "one seed cannot say whether the effect exceeds the noise"
    elif entry["D"] - half > 0:
        verdict = "D's interval lies above zero: the stolen student is worse than its teacher"
    elif entry["D"] + half < 0:
        verdict = "D's interval lies below zero: the stolen student is better than its teacher"
    else:
        verdict = "D's interval contains zero: the effect is inside the noise of these seeds"
    return (f"{teacher.upper()} over {seeds} seed{'s' if seeds > 1 else ''}, {entry['student']} student: change "
            f"{_interval(entry, 'student_change')} pts against the base teacher's student; D = teacher − student "
            f"{_interval(entry, 'D')} pts at a teacher cost P {_interval(entry, 'P')} pts; {verdict}.")

