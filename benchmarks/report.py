"""results.json, results.md (markdown tables) and results.png (images/s bar chart) of a benchmark run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PATHS = ("jax", "torch_reference", "torch_tuned")
LABELS = {"jax": "JAX", "torch_reference": "torch reference", "torch_tuned": "torch tuned"}
SHORT = {"float32": "f32", "bfloat16": "bf16"}
FILES = ("results.json", "results.md", "results.png")
MIB = 2**20


def fmt(value, scale: float = 1.0, digits: int | None = None) -> str:
    """`value * scale` with `digits` decimals (default: about three significant digits); None is "n/a"."""
    if value is None:
        return "n/a"
    value *= scale
    if digits is None:
        digits = next((d for d, bound in enumerate((100, 10, 1)) if abs(value) >= bound), 3)
    return f"{value:,.{digits}f}"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header, rows) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _per_path(record: dict, key: str, scale: float = 1.0, digits: int | None = None) -> list[str]:
    return [fmt(record[p].get(key), scale, digits) for p in PATHS]


def _speedups(record: dict, prefix: str = "") -> list[str]:
    return [fmt(record[f"{prefix}speedup_vs_{p}"], digits=2) for p in PATHS[1:]]


def step_table(records: list[dict]) -> list[str]:
    header = ["model", "step", "batch", "precision", "JAX ms", "ref ms", "tuned ms", "JAX img/s", "ref img/s",
              "tuned img/s", "speed-up vs ref", "speed-up vs tuned", "GFLOP/step", "JAX TFLOP/s",
              "peak MiB JAX / ref / tuned", "JAX compiled MiB"]
    rows = [[r["model"], r["step"], r["batch_size"], r["precision"], *_per_path(r, "median_s", 1e3),
             *_per_path(r, "images_per_s"), *_speedups(r), fmt(r["gflop_per_step"]), fmt(r["jax"]["tflops"]),
             " / ".join(_per_path(r, "peak_bytes", 1 / MIB, 0)), fmt(r["jax"]["compiled_bytes"], 1 / MIB, 0)]
            for r in records]
    return table(header, rows)


def epoch_table(records: list[dict]) -> list[str]:
    header = ["model", "step", "batch", "precision", "images", "JAX s", "ref s", "tuned s", "JAX img/s",
              "ref img/s", "tuned img/s", "speed-up vs ref", "speed-up vs tuned", "JAX loop"]
    rows = [[r["model"], r["step"], r["batch_size"], r["precision"], r["epoch_images"],
             *_per_path(r, "epoch_s"), *_per_path(r, "epoch_images_per_s"),
             *_speedups(r, "epoch_"), r["jax"]["epoch_loop"]] for r in records]
    return table(header, rows)


def pgd_table(records: list[dict]) -> list[str]:
    header = ["model", "precision", "batch", "images", "steps", "JAX s", "ref s", "tuned s", "JAX img/s",
              "ref img/s", "tuned img/s", "speed-up vs ref", "speed-up vs tuned", "GFLOP", "TFLOP/s JAX / ref / tuned",
              "% bf16 peak JAX / ref / tuned"]
    rows = [[r["model"], r["precision"], r["batch_size"], r["images"], r["steps"], *_per_path(r, "seconds"),
             *_per_path(r, "images_per_s"), *_speedups(r), fmt(r["gflop"]), " / ".join(_per_path(r, "tflops")),
             " / ".join(_per_path(r, "peak_fraction", 100))] for r in records]
    return table(header, rows)


def _notes(results: dict) -> list[str]:
    notes = list(results["environment"]["notes"])
    for record in results["steps"] + results["pgd"]:
        for path in PATHS[1:]:
            if record[path].get("note"):
                notes.append(f"{LABELS[path]}, {record['model']}: {record[path]['note']}")
    return list(dict.fromkeys(notes))


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# Benchmark results: {env['device_name']}", "",
             f"Device: {env['device_kind']} (JAX {env['jax_backend']}, torch {env['torch_device']}); "
             f"jax {env['versions']['jax']}, torch {env['versions']['torch']}; {env['date']}.", "",
             f"Command: `{env['command']}`", "",
             "## Train step (batch held on the device; median after warm-up)", "", *step_table(results["steps"]), "",
             "## Epoch (input path included)", "", *epoch_table(results["steps"]), "",
             "## PGD adversarial set", "", *pgd_table(results["pgd"]), ""]
    notes = _notes(results)
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def _bars(ax, labels: list[str], values: dict[str, list], title: str) -> None:
    x = np.arange(len(labels))
    width = 0.8 / len(PATHS)
    for i, path in enumerate(PATHS):
        ax.bar(x + (i - 1) * width, [v or 0.0 for v in values[path]], width, label=LABELS[path])
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("images/s")
    ax.set_title(title)


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, pgd = results["steps"], results["pgd"]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 0.45 * len(steps) + 4), 5),
                             gridspec_kw={"width_ratios": [max(len(steps), 1), max(len(pgd), 1) + 1]})
    _bars(axes[0], [f"{r['model']} {r['step']} b{r['batch_size']} {SHORT[r['precision']]}" for r in steps],
          {p: [r[p]["images_per_s"] for r in steps] for p in PATHS}, "train step")
    _bars(axes[1], [f"{r['model']} b{r['batch_size']} {SHORT[r['precision']]}" for r in pgd],
          {p: [r[p]["images_per_s"] for r in pgd] for p in PATHS}, f"PGD-{pgd[0]['steps'] if pgd else ''}")
    fig.suptitle(f"{results['environment']['device_name']}: images/s, JAX vs PyTorch reference vs PyTorch tuned")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(PATHS), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(results: dict, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (directory / "results.md").write_text(markdown(results))
    chart(results, directory / "results.png")
