"""The AST study's report files (thesis §6, docs/method.md §2-3): the only part of `ast_jax.results`
that touches the file system. Every file is written atomically with `ast_jax.files.atomic_write`,
with the process's ordinary permissions, by process 0 alone in a multi-process run (`plot_outputs`:
by the caller's process).

- `write_report`: `report.md`, `report.json` and `report.csv` in one directory; `read_csv_rows`
  reads the CSV back.
- `write_spread_report`: the same over seeds (`statistics.summarise_seeds`).
- `plot_outputs`, `plot_heatmaps`, `plot_curves`: the PNGs of `figures`.

The numbers come from `statistics`, the tables from `tables`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ast_jax.files import atomic_write, is_writer
from ast_jax.results import figures
from ast_jax.results.statistics import ROW_KEYS
from ast_jax.results.tables import (
    NO_DEGRADATION,
    jsonable,
    markdown_table,
    rows_to_csv,
    spread_csv,
    spread_table,
    stats_table,
)

_FLOAT_ROW_KEYS = ROW_KEYS[2:]


def _json_text(payload: Mapping) -> bytes:
    """Strict JSON (non-finite numbers as null) with sorted keys, indented, one trailing newline."""
    return (json.dumps(jsonable(payload), sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False)
            + "\n").encode("utf-8")


def _markdown_text(lines: Sequence[str]) -> bytes:
    return ("\n".join(lines).rstrip("\n") + "\n").encode("utf-8")


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
    atomic_write(paths[0], _markdown_text(md))
    atomic_write(paths[1], _json_text({"title": title, "rows": [dict(r) for r in rows], "stats": stats, "notes": notes}))
    atomic_write(paths[2], rows_to_csv(rows).encode("utf-8"))
    return paths


def write_spread_report(directory, name: str, *, title: str, summary: Sequence[Mapping], notes: Iterable[str] = (),
                        leading: Sequence[str] = (), figure: str | None = None, headline: str | None = None
                        ) -> list[str]:
    """`<name>.md/json/csv` of `summarise_seeds` rows in `directory` (atomically, process 0 only);
    `headline` (`statistics.effect_headline`) is the report's first line, `figure` (a PNG beside
    them) is linked from the markdown. Returns the three paths."""
    directory = os.fspath(directory)
    notes = [str(n) for n in notes]
    md = [f"# {title}", "", *((f"**{headline}**", "") if headline else ()),
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
    atomic_write(paths[0], _markdown_text(md))
    atomic_write(paths[1], _json_text({"title": title, "headline": headline, "summary": [dict(e) for e in summary],
                                       "notes": notes}))
    atomic_write(paths[2], spread_csv(summary, leading).encode("utf-8"))
    return paths


def plot_outputs(path, images, outputs: Mapping[str, np.ndarray], labels, class_names=None, *,
                 log_base: float | None = None, dpi: int = 100) -> str:
    """`figures.outputs_png` (thesis Figures 6.1-6.3) written to `path`; returns `path`."""
    png = figures.outputs_png(images, outputs, labels, class_names, log_base=log_base, dpi=dpi)
    atomic_write(os.fspath(path), png)
    return os.fspath(path)


def plot_heatmaps(path, panels: Sequence[Mapping], *, columns: int = 2, dpi: int = 100) -> str:
    """`figures.heatmaps_png` written to `path` by process 0; returns `path`."""
    png = figures.heatmaps_png(panels, columns=columns, dpi=dpi)
    if is_writer():
        atomic_write(os.fspath(path), png)
    return os.fspath(path)


def plot_curves(path, panels: Sequence[Mapping], *, columns: int = 2, dpi: int = 100) -> str:
    """`figures.curves_png` written to `path` by process 0; returns `path`."""
    png = figures.curves_png(panels, columns=columns, dpi=dpi)
    if is_writer():
        atomic_write(os.fspath(path), png)
    return os.fspath(path)
