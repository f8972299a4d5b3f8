"""Benchmark regression check: `python -m benchmarks.compare OLD/results.json NEW/results.json`.

For every row that both runs measured (train steps keyed by model, step, batch size, precision
and image size; PGD by model, precision, batch size, images and steps) it prints the JAX time of
NEW over OLD and, beside it, each run's own JAX-versus-PyTorch-reference speed-up. That speed-up
was measured side by side within one run, so it survives a change of machine load that the raw
times do not. A row whose JAX time grew by more than `--threshold` (default 10 %) is flagged, and
the exit status is 1 when any row is. Rows measured by one run only are listed, not compared.
A tool to read, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import sys

STEP_KEY = ("model", "step", "batch_size", "precision", "image_size")
PGD_KEY = ("model", "precision", "batch_size", "images", "steps")


def _rows(results: dict) -> dict[tuple, tuple[float, float | None]]:
    """(kind, *key) -> (JAX seconds, speed-up vs the PyTorch reference) for every step and PGD row."""
    rows = {}
    for row in results.get("steps", []):
        rows[("step", *(row[k] for k in STEP_KEY))] = (row["jax"]["median_s"], row.get("speedup_vs_torch_reference"))
    for row in results.get("pgd", []):
        rows[("pgd", *(row[k] for k in PGD_KEY))] = (row["jax"]["seconds"], row.get("speedup_vs_torch_reference"))
    return rows


def compare(old: dict, new: dict, threshold: float = 0.10) -> tuple[list[dict], list[tuple], list[tuple]]:
    """(compared rows, rows only in OLD, rows only in NEW); a compared row has `ratio` = NEW / OLD JAX
    time, both runs' speed-ups against the PyTorch reference and `slower` (ratio > 1 + threshold)."""
    before, after = _rows(old), _rows(new)
    compared = []
    for key in before.keys() & after.keys():
        (old_s, old_speedup), (new_s, new_speedup) = before[key], after[key]
        ratio = new_s / old_s
        compared.append({"row": key, "old_s": old_s, "new_s": new_s, "ratio": ratio, "old_speedup": old_speedup,
                         "new_speedup": new_speedup, "slower": ratio > 1.0 + threshold})
    order = list(before) + [key for key in after if key not in before]
    compared.sort(key=lambda entry: order.index(entry["row"]))
    return compared, [k for k in before if k not in after], [k for k in after if k not in before]


def _speedup(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(compared: list[dict], threshold: float) -> str:
    lines = ["| row | OLD JAX s | NEW JAX s | NEW/OLD | vs ref OLD | vs ref NEW | |", "|---|---|---|---|---|---|---|"]
    for entry in compared:
        flag = f"**slower > {threshold:.0%}**" if entry["slower"] else ""
        lines.append(f"| {' '.join(map(str, entry['row']))} | {entry['old_s']:.4g} | {entry['new_s']:.4g} | "
                     f"{entry['ratio']:.2f} | {_speedup(entry['old_speedup'])} | {_speedup(entry['new_speedup'])} "
                     f"| {flag} |")
    return "\n".join(lines)


def _load(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise SystemExit(f"benchmarks.compare: error: cannot read {path} ({error}); give two results.json files "
                         f"written by `python -m benchmarks.run`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n")[0])
    parser.add_argument("old", help="results.json of the earlier run")
    parser.add_argument("new", help="results.json of the later run")
    parser.add_argument("--threshold", type=float, default=0.10, help="flag rows slower by more than this (0.10 = 10%%)")
    args = parser.parse_args(argv)
    compared, only_old, only_new = compare(_load(args.old), _load(args.new), args.threshold)
    print(table(compared, args.threshold))
    for label, keys in (("only in OLD", only_old), ("only in NEW", only_new)):
        for key in keys:
            print(f"{label}: {' '.join(map(str, key))}")
    slower = [entry for entry in compared if entry["slower"]]
    print(f"{len(slower)} of {len(compared)} rows slower by more than {args.threshold:.0%}")
    return 1 if slower else 0


if __name__ == "__main__":
    sys.exit(main())
