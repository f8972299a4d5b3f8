"""Result tables, output statistics and output plots of the AST study (thesis §6, docs/method.md §2-3).

Pure computations (float64, no I/O):

- `probabilities`, `entropies`, `kl_divergences`: row-wise sigma_T, H and KL that stay finite
  when outputs hold exact zeros (a Stingy Teacher's sparse outputs, logits equal to -inf). They
  evaluate `ast_jax.losses` (`log_softmax_t`, `entropy`) in float64, so the tables, the figure
  and the training losses share one definition of each quantity.
- `output_statistics`: entropy and within-class KL statistics of a test set's softened outputs
  (thesis Tables 6.4 and 6.5).
- `result_rows`: teacher / student accuracies with the student's change against the student of
  the base teacher, defensiveness D, degradation P and D/P (thesis Tables 6.1-6.3, docs/method.md §2).
- `markdown_table`, `stats_table`: the two tables as GitHub markdown.
- `seed_spread`, `summarise_seeds`, `spread_table`, `spread_csv`: result rows over seeds.

Writers (the only functions here that touch the file system; every file is written atomically
with `ast_jax.files.atomic_write`, with the process's ordinary permissions):

- `write_report`: `report.md`, `report.json` and `report.csv` in one directory.
- `write_spread_report`: the same over seeds (`summarise_seeds`: mean ± std and 95% intervals).
- `plot_heatmaps`: PNG heatmaps (a sweep's grid, the attack matrix).
- `plot_outputs`: a PNG grid of images and output distributions with their entropies (thesis
  Figures 6.1-6.3). Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch).

Accuracies are fractions in [0, 1]; the markdown prints percentages with two decimals and the
differences (student change, D, P) in percentage points.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ast_jax import losses
from ast_jax.files import atomic_write, is_writer

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
_FLOAT_ROW_KEYS = ROW_KEYS[2:]
NO_DEGRADATION = "no degradation"
_DASH = "–"

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


# --------------------------------------------------------------------------------------------
# Pure computations
# --------------------------------------------------------------------------------------------
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
    """KL(p || q) per row from float64 log-probabilities (-inf = probability 0); see below.

    KL(p || q) = -H(p) - sum_i p_i log q_i, with H = `losses.entropy` and log q taken as given
    (exact where q underflows to 0 in probability space) except where it is -inf.
    """
    if not (isinstance(eps, (int, float, np.floating)) and 0 < eps < 1):
        raise ValueError(f"eps must lie in (0, 1), got {eps!r}")
    log_p, log_q = np.broadcast_arrays(log_p, log_q)
    support = log_p > -np.inf
    zero_q = log_q == -np.inf
    p = np.exp(log_p)
    cross = np.sum(np.where(support, p * np.where(zero_q, math.log(eps), log_q), 0.0), axis=-1)
    kl = -_entropy64(p) - cross
    return np.maximum(kl, 0.0), (support & zero_q).any(axis=-1)


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
    from scipy import stats

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


def _spread_cell(entry: Mapping, key: str, signed: bool = False) -> str:
    """`mean ± std [± ci95]` in % (points when `signed`)."""
    mean, std, ci = entry.get(key), entry.get(f"{key}_std"), entry.get(f"{key}_ci95")
    if mean is None:
        return _DASH
    text = _pts(mean) if signed else _pct(mean)
    return text if std is None else f"{text} ± {100 * std:.2f} [±{100 * ci:.2f}]"


def spread_table(summary: Sequence[Mapping], leading: Sequence[str] = ()) -> str:
    """`summarise_seeds` rows as markdown: the `leading` fields (a sweep's grid keys) first, then
    mean ± std [95% half-width] of each `SPREAD_KEYS` field and the ratio of means D/P."""
    header = [*leading, "Teacher", "Teacher acc. (%)", "Student", "Student acc. (%)",
              "Change vs base-teacher student (pts)", "D (pts)", "P (pts)", "D/P", "Seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for e in summary:
        p = e.get("P")
        ratio = NO_DEGRADATION if p is not None and p <= 0 else (
            _DASH if e.get("D_over_P") is None else f"{e['D_over_P']:.2f}")
        cells = [*(_DASH if e.get(key) is None else _md_cell(e[key]) for key in leading), _md_cell(e["teacher"]), _spread_cell(e, "teacher_accuracy"),
                 _DASH if e["student"] is None else _md_cell(e["student"]), _spread_cell(e, "student_accuracy"),
                 _spread_cell(e, "student_change", True), _spread_cell(e, "D", True), _spread_cell(e, "P", True), ratio,
                 ",".join(str(seed) for seed in e["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def spread_csv(summary: Sequence[Mapping], leading: Sequence[str] = ()) -> str:
    """CSV of `summarise_seeds` rows: `leading`, teacher, student, each spread field with _std and
    _ci95, D_over_P, seeds (space-separated); None empty."""
    columns = [*leading, "teacher", "student", *(f"{k}{s}" for k in SPREAD_KEYS for s in ("", "_std", "_ci95")),
               "D_over_P", "seeds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for e in summary:
        writer.writerow({k: "" if e.get(k) is None else (" ".join(map(str, e[k])) if k == "seeds" else _jsonable(e[k]))
                         for k in columns})
    return buf.getvalue()


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _pct(x) -> str:
    return _DASH if x is None else f"{100.0 * x:.2f}"


def _pts(x) -> str:
    if x is None:
        return _DASH
    text = f"{100.0 * x:+.2f}"
    return "+0.00" if text == "-0.00" else text


def markdown_table(rows: Sequence[Mapping]) -> str:
    """The result rows as a markdown table: accuracies in %, changes / D / P in points, D/P ratio.

    D/P shows "no degradation" when P <= 0 (the teacher is at least as accurate as the base).
    """
    header = ["Teacher", "Teacher acc. (%)", "Student", "Student acc. (%)",
              "Change vs base-teacher student (pts)", "D (pts)", "P (pts)", "D/P"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in rows:
        p = r.get("P")
        if p is not None and p <= 0:
            ratio = NO_DEGRADATION
        elif r.get("D_over_P") is None:
            ratio = _DASH
        else:
            ratio = f"{r['D_over_P']:.2f}"
        cells = [
            _md_cell(r.get("teacher")),
            _pct(r.get("teacher_accuracy")),
            _DASH if r.get("student") is None else _md_cell(r["student"]),
            _pct(r.get("student_accuracy")),
            _pts(r.get("student_change")),
            _pts(r.get("D")),
            _pts(r.get("P")),
            ratio,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(x, fmt: str = ".5g") -> str:
    if x is None:
        return _DASH
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    x = float(x)
    return format(x, fmt) if math.isfinite(x) else _DASH


def stats_table(stats: Mapping[str, Mapping]) -> str:
    """Entropy and within-class KL statistics (from `output_statistics`) as a markdown table.

    One row per entry of `stats` (name -> statistics dict), in the given order; missing values
    show as "–". Units: nats unless the row's `log_base` is set.
    """
    header = ["Outputs", "T", "Log base", "Images", "H mean", "H std", "H min", "H max",
              "KL pairs", "KL mean", "KL std", "KL min", "KL max", "KL = inf pairs (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for name, s in stats.items():
        infinite = s.get("kl_infinite_fraction")
        cells = [
            _md_cell(name),
            _num(s.get("temperature"), "g"),
            "e" if s.get("log_base") is None else _num(s.get("log_base"), "g"),
            _num(s.get("num_images")),
            *(_num(s.get(f"entropy_{k}")) for k in ("mean", "std", "min", "max")),
            _num(s.get("kl_pairs")),
            *(_num(s.get(f"kl_{k}")) for k in ("mean", "std", "min", "max")),
            _DASH if infinite is None else f"{100.0 * infinite:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------
def _jsonable(x):
    """Plain JSON values: numpy scalars to Python, tuples to lists, non-finite floats to None."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def rows_to_csv(rows: Sequence[Mapping]) -> str:
    """CSV text of the result rows: columns `ROW_KEYS`, floats with repr precision, None empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ROW_KEYS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else _jsonable(r.get(k)) for k in ROW_KEYS})
    return buf.getvalue()


def read_csv_rows(path: str) -> list[dict]:
    """Parse a `report.csv` back into rows (floats as float, empty cells as None)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = []
        for raw in csv.DictReader(f):
            row = {}
            for k in ROW_KEYS:
                v = raw.get(k, "")
                row[k] = None if v == "" else (float(v) if k in _FLOAT_ROW_KEYS else v)
            rows.append(row)
    return rows


def write_report(directory, *, title: str, rows: Sequence[Mapping], stats: Mapping[str, Mapping],
                 notes: Iterable[str] = ()) -> list[str]:
    """Write report.md, report.json and report.csv into `directory` (created if missing).

    - report.md: the title, the result table (`markdown_table`), the entropy / KL table
      (`stats_table`), the notes as a list, and `outputs.png` as an image if it exists in
      `directory` (write it with `plot_outputs` first).
    - report.json: {"title", "rows", "stats", "notes"} with sorted keys; non-finite numbers
      become null, so the file is strict JSON.
    - report.csv: the result rows (`ROW_KEYS` columns; read back with `read_csv_rows`).

    Each file is written atomically, by process 0 alone in a multi-process run. Returns the three
    paths (md, json, csv).
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    notes = [str(n) for n in notes]
    md = [f"# {title}", "", "## Teachers and stolen students", "",
          "Accuracies in %; changes, D and P in percentage points. Change: student accuracy minus "
          "that of the same architecture distilled from the base teacher. D = teacher - student "
          "(defensiveness), P = base - teacher (degradation), D/P: higher is better; "
          f'"{NO_DEGRADATION}" when P <= 0.', "", markdown_table(rows)]
    if stats:
        md += ["## Output statistics", "",
               "On the temperature-softened test outputs sigma_T. H: entropy per image. KL: for each "
               "class one random reference image r, KL(p_r || p_j) against every other image j of the "
               "same class (reference excluded), pooled over classes. Std is the population std. "
               "Where the other image's output is exactly 0 on a class the reference keeps (e.g. sparse "
               "Stingy Teacher outputs) the true KL is infinite; that 0 is replaced by kl_eps (1e-8 by "
               "default) so every value is finite, and the last column gives the share of such pairs.", "",
               stats_table(stats)]
    if notes:
        md += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    if os.path.exists(os.path.join(directory, "outputs.png")):
        md += ["## Output distributions", "", "![Output distributions](outputs.png)", ""]
    paths = [os.path.join(directory, name) for name in ("report.md", "report.json", "report.csv")]
    if not is_writer():  # several processes: process 0 writes the files
        return paths
    atomic_write(paths[0], ("\n".join(md).rstrip("\n") + "\n").encode("utf-8"))
    payload = _jsonable({"title": title, "rows": [dict(r) for r in rows], "stats": stats, "notes": notes})
    atomic_write(paths[1], (json.dumps(payload, sort_keys=True, indent=2, allow_nan=False,
                                              ensure_ascii=False) + "\n").encode("utf-8"))
    atomic_write(paths[2], rows_to_csv(rows).encode("utf-8"))
    return paths


def plot_outputs(path, images, outputs: Mapping[str, np.ndarray], labels, class_names=None, *,
                 log_base: float | None = None, dpi: int = 100) -> str:
    """Grid of images and output distributions (thesis Figures 6.1-6.3), saved as a PNG.

    - `images`: (n, H, W, C) floats in [0, 1] (clipped; uint8 is divided by 255), C = 1 (grey)
      or 3 (RGB).
    - `outputs`: column name -> (n, num_classes) probability arrays, e.g. {"base": ...,
      "base (adversarial)": ..., "nasty": ..., "stt": ..., "ast": ...}; use `probabilities`
      to soften logits first.
    - `labels`: (n,) true labels; `class_names`: optional names indexed by label.

    One row per image: the image with its label, then one bar chart per output column with the
    true class's bar in red (and a red triangle under it) and the entropy (natural log unless `log_base`) written under it.
    Y axes are scaled per panel (0 to the panel's largest probability) so near-uniform outputs
    still show their shape. With up to 20 classes the bars carry class ticks (names if given);
    with more classes the bars have no tick labels. Written atomically; returns `path`.
    """
    from matplotlib.figure import Figure  # lazy: only the plot needs matplotlib

    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (n, H, W, 1 or 3), got {imgs.shape}")
    imgs = imgs.astype(np.float64) / 255.0 if imgs.dtype == np.uint8 else imgs.astype(np.float64)
    imgs = np.clip(np.nan_to_num(imgs), 0.0, 1.0)
    n = imgs.shape[0]
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} images")
    if n == 0:
        raise ValueError("no images to plot")
    cols = {}
    for name, probs in outputs.items():
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != n:
            raise ValueError(f"outputs[{name!r}] must have shape ({n}, num_classes), got {probs.shape}")
        if not np.isfinite(probs).all() or (probs < 0).any():
            raise ValueError(f"outputs[{name!r}] must hold finite, non-negative probabilities")
        cols[str(name)] = probs

    def label_text(c: int) -> str:
        if class_names is not None and 0 <= c < len(class_names):
            return f"{c}: {class_names[c]}"
        return str(c)

    ncols = 1 + len(cols)
    fig = Figure(figsize=(1.9 + 2.7 * len(cols), 2.05 * n + 0.4), dpi=dpi)
    axes = fig.subplots(n, ncols, squeeze=False, gridspec_kw={"width_ratios": [0.7] + [1.0] * len(cols)})
    for i in range(n):
        ax = axes[i, 0]
        if imgs.shape[-1] == 1:
            ax.imshow(imgs[i, :, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(imgs[i], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"label {label_text(int(y[i]))}", fontsize=8)
        if i == 0:
            ax.set_title("image", fontsize=9, fontweight="bold")
        for j, (name, probs) in enumerate(cols.items(), start=1):
            ax = axes[i, j]
            p = probs[i]
            k = p.shape[0]
            colors = np.full(k, "#4c72b0", dtype=object)
            if 0 <= y[i] < k:
                colors[y[i]] = "#d62728"
            ax.bar(np.arange(k), p, width=0.8 if k <= 20 else 1.0, color=list(colors), linewidth=0)
            top = float(p.max()) if p.size else 1.0
            ax.set_ylim(0.0, top * 1.08 if top > 0 else 1.0)
            ax.set_xlim(-0.6, k - 0.4)
            ax.tick_params(axis="y", labelsize=6, length=2, pad=1)
            if 0 <= y[i] < k:  # marker under the true class: visible even with 100+ thin bars
                ax.plot([y[i]], [0.0], marker="^", markersize=5, color="#d62728", clip_on=False,
                        transform=ax.get_xaxis_transform(), linestyle="none", zorder=5)
            if k <= 20:
                ax.set_xticks(np.arange(k))
                if class_names is not None and len(class_names) >= k:
                    ax.set_xticklabels([str(c) for c in class_names[:k]], rotation=90, fontsize=5)
                else:
                    ax.tick_params(axis="x", labelsize=6, length=2, pad=1)
            else:
                ax.set_xticks([])
            h = float(entropies(p[None, :], log_base=log_base)[0])
            unit = "" if log_base is None else f" (log base {log_base:g})"
            ax.set_xlabel(f"H = {h:.4f}{unit}", fontsize=8)
            if i == 0:
                ax.set_title(name, fontsize=9, fontweight="bold")
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
    fig.tight_layout(pad=0.4, h_pad=0.6, w_pad=0.6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write(os.fspath(path), buf.getvalue())
    return os.fspath(path)


def write_spread_report(directory, name: str, *, title: str, summary: Sequence[Mapping], notes: Iterable[str] = (),
                        leading: Sequence[str] = (), figure: str | None = None) -> list[str]:
    """`<name>.md/json/csv` of `summarise_seeds` rows in `directory` (atomically, process 0 only);
    `figure` (a PNG beside them) is linked from the markdown. Returns the three paths."""
    directory = os.fspath(directory)
    notes = [str(n) for n in notes]
    md = [f"# {title}", "",
          "Accuracies in %; changes, D and P in percentage points, as mean ± sample std over the seeds "
          "[± the half-width of the 95% Student-t interval of the mean]. Change: student accuracy minus that "
          "of the same architecture distilled from the base teacher. D = teacher - student, P = base - teacher; "
          f'D/P is mean D over mean P, "{NO_DEGRADATION}" when mean P <= 0.', "", spread_table(summary, leading)]
    if notes:
        md += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    if figure is not None:
        md += [f"![{name}]({figure})", ""]
    paths = [os.path.join(directory, f"{name}.{ext}") for ext in ("md", "json", "csv")]
    if not is_writer():
        return paths
    os.makedirs(directory, exist_ok=True)
    atomic_write(paths[0], ("\n".join(md).rstrip("\n") + "\n").encode("utf-8"))
    payload = _jsonable({"title": title, "summary": [dict(e) for e in summary], "notes": notes})
    atomic_write(paths[1], (json.dumps(payload, sort_keys=True, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    atomic_write(paths[2], spread_csv(summary, leading).encode("utf-8"))
    return paths


def plot_heatmaps(path, panels: Sequence[Mapping], *, columns: int = 2, dpi: int = 100) -> str:
    """A PNG of heatmaps, one panel per entry of `panels`: {'title', 'values' (rows, cols), 'rows',
    'cols' (tick labels), 'xlabel', 'ylabel', 'label' (colour bar)}; each cell prints its value
    (NaN: no value). Matplotlib's Agg canvas, written atomically by process 0. Returns `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(columns, len(panels))
    lines = -(-len(panels) // columns)
    width = max(max(len(panel["cols"]) for panel in panels) * 1.1 + 3, 4)
    height = max(max(len(panel["rows"]) for panel in panels) * 0.5 + 1.8, 3)
    figure = Figure(figsize=(width * columns, height * lines))
    FigureCanvasAgg(figure)
    for index, panel in enumerate(panels):
        axes = figure.add_subplot(lines, columns, index + 1)
        values = np.asarray(panel["values"], np.float64)
        image = axes.imshow(values, cmap="viridis", aspect="auto")
        axes.set_xticks(range(len(panel["cols"])), [str(c) for c in panel["cols"]], rotation=30, ha="right")
        axes.set_yticks(range(len(panel["rows"])), [str(r) for r in panel["rows"]])
        axes.set_xlabel(panel.get("xlabel", ""))
        axes.set_ylabel(panel.get("ylabel", ""))
        axes.set_title(panel.get("title", ""), fontsize=9)
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                axes.text(j, i, f"{value:.1f}", ha="center", va="center", color="w", fontsize=8)
        figure.colorbar(image, ax=axes, label=panel.get("label", ""))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    if is_writer():
        atomic_write(os.fspath(path), buffer.getvalue())
    return os.fspath(path)
