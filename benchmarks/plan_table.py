"""The plan table of benchmarks/README.md from `ast-jax plan --json` files (benchmarks/results/plan/*.json).

    python -m benchmarks.plan_table [FILE ...]

One row per (config, target): the teachers whose epochs were planned, the programs planned, the largest per-device memory among them and
its program, and the study's roofline lower bound (`ast-jax pipeline`'s programs: the attack
matrix's clone and generator rows, if any, left out), with the compile time of those programs.
"""

from __future__ import annotations

import glob
import json
import os
import sys

from ast_jax.results.tables import markdown

RESULTS = os.path.join(os.path.dirname(__file__), "results", "plan")
GIB = 2 ** 30
#: The attack matrix's programs (`ast-jax plan`'s clone and DFME generator rows), left out of the study's bound.
MATRIX_PROGRAMS = ("clone ", "generator ")


def row(path: str) -> list[str]:
    with open(path) as f:
        plan = json.load(f)
    config = os.path.basename(path)[: -len(".json")].split("-")[0]
    programs = [p for p in plan["programs"] if not p["name"].startswith(MATRIX_PROGRAMS)]
    largest = max(programs, key=lambda p: p["device_bytes"])
    bound = sum(p["units"] * p["bound_seconds_per_unit"] for p in programs)
    teachers = [p["name"].split(" teacher")[0] for p in programs if " teacher (" in p["name"]]
    return [config, plan["target"], ", ".join(teachers), str(len(programs)), f"{largest['device_bytes'] / GIB:.2f}",
            f"{largest['device_bytes'] / plan['device_memory_bytes']:.1%}", largest["name"],
            _duration(bound),
            f"{sum(p['compile_seconds'] for p in programs):.0f} s"]


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.2f} s"


def main(paths: list[str]) -> None:
    paths = paths or sorted(glob.glob(os.path.join(RESULTS, "*.json")))
    print(markdown(["config", "target", "teachers trained", "programs", "largest GiB/device", "of memory", "largest program",
                    "study lower bound", "compile"], [row(path) for path in paths]))


if __name__ == "__main__":
    main(sys.argv[1:])
