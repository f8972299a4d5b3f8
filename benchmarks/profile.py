"""Per-op profile of one train step or PGD step, JAX against PyTorch: `python -m benchmarks.profile`.

The JAX side is traced with `jax.profiler` and read back with `jax.profiler.ProfileData`: every
XLA op (a thunk of the compiled program) with its summed time over the traced calls, named by
the layer and primitive its HLO metadata records (`conv3/conv_general_dilated`, `transpose(...)`
for the backward pass). The PyTorch reference path of the same computation, on the same weights
and batch, is profiled with `torch.profiler` (self CPU time per aten op). Both are per call,
averaged over `--iters` calls after a warm-up; op times are summed over the threads that ran
them, so they can exceed the wall time on several cores. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ast_jax import adversarial
from ast_jax.data import normalize
from ast_jax.engine import make_train_step, replicate
from ast_jax.engine.loop import AXIS
from ast_jax.files import atomic_write
from ast_jax.models import MODEL_NAMES

from . import jax_path, torch_path
from .common import (
    MEAN,
    PGD_EPS,
    PGD_STEP_SIZE,
    STD,
    STEP_HYPERS,
    STEP_SPECS,
    Case,
    fixed_batch,
    initial_weights,
    synthetic_data,
)

WHATS = (*STEP_SPECS, "pgd")
_HLO_OP = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"')


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cnn", choices=MODEL_NAMES)
    parser.add_argument("--what", default="ce", choices=WHATS, help="a train step kind, or one PGD step")
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20, help="profiled calls (after as many warm-up calls)")
    parser.add_argument("--top", type=int, default=12, help="rows per table")
    parser.add_argument("--out", help="write the tables to this markdown file (never replaced)")
    args = parser.parse_args(argv)
    if min(args.image_size, args.batch_size, args.iters, args.top) < 1:
        parser.error("--image-size, --batch-size, --iters and --top must be positive")
    return args


def _workload(args) -> tuple:
    """Initial weights and one batch (model-input images, pixels in [0, 1], labels), as in benchmarks.run."""
    data = synthetic_data(args.batch_size, args.image_size, 10)
    batch = {**fixed_batch(data, args.batch_size), "pixels": data.images.astype(np.float32) / 255.0}
    return initial_weights(args.model, 10, args.image_size), batch


def _jax_call(args):
    """A synchronising zero-argument call of the compiled JAX step (or PGD step), and its HLO text."""
    weights, batch = _workload(args)
    mesh, model = jax_path._mesh(), jax_path._model(args.model, 10, "float32")
    sharded = NamedSharding(mesh, P(AXIS))
    if args.what == "pgd":
        variables = replicate(mesh, weights.student)
        x = jax.device_put(batch["pixels"], sharded)
        labels = jax.device_put(batch["label"], sharded)

        def step(variables, x, labels):
            apply = lambda z: model.apply(variables, normalize(z, MEAN, STD), train=False)  # noqa: E731
            return adversarial.pgd_step(apply, x, x, labels, eps=PGD_EPS, step_size=PGD_STEP_SIZE)

        compiled = jax.jit(step).lower(variables, x, labels).compile()
        return (lambda: jax.block_until_ready(compiled(variables, x, labels))), compiled.as_text()
    case = Case(args.model, args.what, args.batch_size, "float32", args.image_size, 10)
    tx = jax_path.optimizer()
    step = jax.jit(make_train_step(model, tx, case.spec, mesh, jax_path._teacher(case, model)), donate_argnums=(0,))
    keys = ("image", "label", "adv_image") if case.spec.needs_adversarial else ("image", "label")
    batch = jax.device_put({k: batch[k] for k in keys}, sharded)
    teacher_variables = replicate(mesh, weights.teacher) if case.spec.needs_teacher else None
    state = replicate(mesh, jax_path.fresh_state(tx, weights.student))
    hypers = replicate(mesh, case.hypers)
    compiled = step.lower(state, batch, teacher_variables, None, hypers).compile()

    def call():
        nonlocal state
        state, metrics = compiled(state, batch, teacher_variables, None, hypers)
        jax.block_until_ready((state, metrics))

    return call, compiled.as_text()


def _layer_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX op name of its metadata, shortened to layer/primitive."""
    names = {}
    for line in hlo_text.splitlines():
        match = _HLO_OP.match(line)
        if match:
            names[match.group(1)] = re.sub(r"^jit\([^)]*\)/", "", match.group(2))
    return names


def _timed(call, iters: int) -> float:
    for _ in range(iters):
        call()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    return (time.perf_counter() - start) / iters


def profile_jax(args) -> tuple[float, list[tuple[str, str, float]]]:
    """(wall s per call, [(HLO op, JAX op name, s per call)] by time) of the JAX side."""
    call, hlo = _jax_call(args)
    wall = _timed(call, args.iters)
    totals = collections.Counter()
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            for _ in range(args.iters):
                call()
        for path in glob.glob(f"{directory}/**/*.xplane.pb", recursive=True):
            for plane in jax.profiler.ProfileData.from_file(path).planes:
                for line in plane.lines:
                    if not line.name.startswith("tf_XLA"):  # XLA:CPU's threads run the compiled ops
                        continue
                    for event in line.events:
                        if not event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                            totals[event.name] += event.duration_ns * 1e-9 / args.iters
    names = _layer_names(hlo)
    return wall, [(op, names.get(op, "(fusion)"), s) for op, s in totals.most_common()]


def profile_torch(args) -> tuple[float, list[tuple[str, str, float]]]:
    """(wall s per call, [(aten op, '', self CPU s per call)] by time) of the PyTorch reference path."""
    weights, batch = _workload(args)
    modules = torch_path.build(torch_path.VARIANTS["reference"], args.model, 10, args.image_size, weights,
                               torch.device("cpu"))
    tensors = torch_path.to_device(modules, {k: torch_path.nchw(v) for k, v in batch.items()})
    if args.what == "pgd":
        modules.student.eval().requires_grad_(False)

        def call():
            torch_path.pgd(modules.forward, tensors["pixels"], tensors["label"], eps=PGD_EPS,
                           step_size=PGD_STEP_SIZE, steps=1)
    else:
        opt = torch_path.optimizer(modules)

        def call():
            torch_path.train_step(STEP_SPECS[args.what], STEP_HYPERS[args.what], modules, opt, tensors, "float32")

    wall = _timed(call, args.iters)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.iters):
            call()
    rows = [(e.key, "", e.self_cpu_time_total * 1e-6 / args.iters) for e in prof.key_averages()]
    return wall, sorted(rows, key=lambda row: -row[2])


def by_primitive(rows) -> list[tuple[str, str, float]]:
    """JAX op rows summed per (primitive, pass): `conv_general_dilated` forward, `... backward`, and
    the HLO kind (`transpose_copy_fusion`, ...) of ops without a JAX op name (layout copies)."""
    totals = collections.Counter()
    for op, name, seconds in rows:
        if name == "(fusion)":
            key = re.sub(r"[._]\d+$", "", op) + " (no JAX op)"
        else:
            key = name.rsplit("/", 1)[-1] + (" backward" if name.startswith("transpose(") else " forward")
        totals[key] += seconds
    return [(key, "", seconds) for key, seconds in totals.most_common()]


def table(title: str, wall: float, rows, top: int) -> str:
    total = max(sum(s for _, _, s in rows), 1e-12)
    lines = [f"### {title}", "", f"wall {wall * 1e3:.2f} ms per call unprofiled; ops {total * 1e3:.2f} ms "
             "per call while profiled (summed over threads)", "", "| op | JAX op name | ms | share |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {op} | {name or '-'} | {s * 1e3:.3f} | {s / total:.0%} |" for op, name, s in rows[:top]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.out and Path(args.out).exists():
        raise SystemExit(f"error: {args.out} exists; choose another --out or delete it")
    what = "one PGD step" if args.what == "pgd" else f"the {args.what} train step"
    heading = (f"## {args.model}, {what}, batch {args.batch_size}, {args.image_size}x{args.image_size}, float32\n\n"
               f"{jax.devices()[0].device_kind}; jax {jax.__version__}, torch {torch.__version__}; "
               f"{time.strftime('%Y-%m-%d')}; `python -m benchmarks.profile {' '.join(argv or sys.argv[1:])}`\n\n")
    torch_side = table("PyTorch reference (aten ops, self CPU time)", *profile_torch(args), args.top)
    # PyTorch first: after a jax.profiler trace, PyTorch's CPU steps ran several times slower in this process.
    wall, rows = profile_jax(args)
    text = (heading + table("JAX (XLA ops)", wall, rows, args.top) + "\n"
            + table("JAX, by primitive and pass", wall, by_primitive(rows), args.top) + "\n" + torch_side)
    print(text)
    if args.out:
        atomic_write(args.out, text.encode(), overwrite=False)
    return text


if __name__ == "__main__":
    main()
