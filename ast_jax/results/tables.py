"""The tables of the project's reports: one markdown writer (`markdown`) and one CSV writer
(`csv_text`), and the cell formats of the result tables. No I/O.

- `markdown_table`: result rows (`statistics.result_rows`); `stats_table`: output statistics;
  `spread_table`: rows summarised over seeds (`statistics.summarise_seeds`), with a sweep's grid
  keys first; `rows_to_csv`, `spread_csv`: the CSV twins of the first and last.

Accuracies are fractions in [0, 1]; the markdown prints percentages with two decimals and the
differences (student change, D, P) in percentage points. Missing values print as "–" in markdown
and as empty cells in CSV.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ast_jax.results.statistics import ROW_KEYS, SPREAD_KEYS

NO_DEGRADATION = "no degradation"
DASH = "–"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table of already formatted cells; `|` and newlines in a cell are escaped."""
    lines = ["| " + " | ".join(_md_cell(cell) for cell in header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(columns: Sequence[str], rows: Sequence[Mapping]) -> str:
    """CSV of `rows` under `columns`: floats with repr precision, None empty, lists space-separated,
    fields missing from a row empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    return buf.getvalue()


def _csv_cell(value):
    value = jsonable(value)
    if value is None:
        return ""
    return " ".join(map(str, value)) if isinstance(value, list) else value


def jsonable(x):
    """Plain JSON values: numpy scalars to Python, tuples to lists, non-finite floats to None."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _pct(x) -> str:
    return DASH if x is None else f"{100.0 * x:.2f}"


def _pts(x) -> str:
    if x is None:
        return DASH
    text = f"{100.0 * x:+.2f}"
    return "+0.00" if text == "-0.00" else text


def _ratio(row: Mapping) -> str:
    """D/P with two decimals; "no degradation" when P <= 0."""
    p = row.get("P")
    if p is not None and p <= 0:
        return NO_DEGRADATION
    return DASH if row.get("D_over_P") is None else f"{row['D_over_P']:.2f}"


def _name(x) -> str:
    return DASH if x is None else str(x)


def markdown_table(rows: Sequence[Mapping]) -> str:
    """The result rows as a markdown table: accuracies in %, changes / D / P in points, D/P ratio.

    D/P shows "no degradation" when P <= 0 (the teacher is at least as accurate as the base).
    """
    header = ["Teacher", "Teacher acc. (%)", "Student", "Student acc. (%)",
              "Change vs base-teacher student (pts)", "D (pts)", "P (pts)", "D/P"]
    return markdown(header, [[str(r.get("teacher")), _pct(r.get("teacher_accuracy")), _name(r.get("student")),
                              _pct(r.get("student_accuracy")), _pts(r.get("student_change")), _pts(r.get("D")),
                              _pts(r.get("P")), _ratio(r)] for r in rows])


def _num(x, fmt: str = ".5g") -> str:
    if x is None:
        return DASH
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    x = float(x)
    return format(x, fmt) if math.isfinite(x) else DASH


def stats_table(stats: Mapping[str, Mapping]) -> str:
    """Entropy and within-class KL statistics (from `output_statistics`) as a markdown table.

    One row per entry of `stats` (name -> statistics dict), in the given order; missing values
    show as "–". Units: nats unless the row's `log_base` is set.
    """
    header = ["Outputs", "T", "Log base", "Images", "H mean", "H std", "H min", "H max",
              "KL pairs", "KL mean", "KL std", "KL min", "KL max", "KL = inf pairs (%)"]
    return markdown(header, [[
        name,
        _num(s.get("temperature"), "g"),
        "e" if s.get("log_base") is None else _num(s.get("log_base"), "g"),
        _num(s.get("num_images")),
        *(_num(s.get(f"entropy_{k}")) for k in ("mean", "std", "min", "max")),
        _num(s.get("kl_pairs")),
        *(_num(s.get(f"kl_{k}")) for k in ("mean", "std", "min", "max")),
        DASH if s.get("kl_infinite_fraction") is None else f"{100.0 * s['kl_infinite_fraction']:.1f}",
    ] for name, s in stats.items()])


def _spread_cell(entry: Mapping, key: str, signed: bool = False) -> str:
    """`mean ± std [± ci95]` in % (points when `signed`)."""
    mean, std, ci = entry.get(key), entry.get(f"{key}_std"), entry.get(f"{key}_ci95")
    if mean is None:
        return DASH
    text = _pts(mean) if signed else _pct(mean)
    return text if std is None else f"{text} ± {100 * std:.2f} [±{100 * ci:.2f}]"


def spread_table(summary: Sequence[Mapping], leading: Sequence[str] = ()) -> str:
    """`summarise_seeds` rows as markdown: the `leading` fields (a sweep's grid keys) first, then
    mean ± std [95% half-width] of each `SPREAD_KEYS` field and the ratio of means D/P."""
    header = [*leading, "Teacher", "Teacher acc. (%)", "Student", "Student acc. (%)",
              "Change vs base-teacher student (pts)", "D (pts)", "P (pts)", "D/P", "Seeds"]
    return markdown(header, [[
        *(_name(e.get(key)) for key in leading), str(e["teacher"]), _spread_cell(e, "teacher_accuracy"),
        _name(e["student"]), _spread_cell(e, "student_accuracy"), _spread_cell(e, "student_change", True),
        _spread_cell(e, "D", True), _spread_cell(e, "P", True), _ratio(e), ",".join(str(seed) for seed in e["seeds"]),
    ] for e in summary])


def rows_to_csv(rows: Sequence[Mapping]) -> str:
    """CSV text of the result rows: columns `ROW_KEYS`, floats with repr precision, None empty."""
    return csv_text(ROW_KEYS, rows)


def spread_csv(summary: Sequence[Mapping], leading: Sequence[str] = ()) -> str:
    """CSV of `summarise_seeds` rows: `leading`, teacher, student, each spread field with _std and
    _ci95, D_over_P, seeds (space-separated); None empty."""
    return csv_text([*leading, "teacher", "student", *(f"{k}{s}" for k in SPREAD_KEYS for s in ("", "_std", "_ci95")),
                     "D_over_P", "seeds"], summary)
