"""A sweep's runs trained as one program against the same runs one after another:
`python -m benchmarks.batched --device-name NAME`.

`ast_jax.engine.fit_batch` trains R runs that differ in seed, temperature and ω as one program
over a leading run axis (`make_train_epoch(..., batched=True)`, the state, keys, hypers and
per-run arrays stacked as `runner._train_group` and `_device_inputs` stack them), the step
mapped over the runs by a run lowering (`loop.over_runs`: `vmap`, or `unroll`, one copy of the
step per run). For each case of `--cases` and each R of `--runs`, interleaved per R in one
process, this times

* **batched**: the R runs as one batched epoch program, per lowering of `--run-lowerings`;
* **sequential**: the same R runs one after another, each with the unbatched program
  (`batched=False`: one run's program, no run axis), its temperature and ω given as scalar
  `hypers`, so that, like the batch, the R runs share one compiled program.

`fit` trains a lone run as `fit_batch` of one run (`batched=True`, R = 1, the backend's
default lowering): that program is the batched column of the R = 1 row, whose ratio is
therefore what the run axis costs a single run.

Each measurement compiles and warms up with one untimed epoch from a throwaway copy of the
initial state, then times `--epochs` epochs from the initial state (`jax.block_until_ready`
after each). images/s = R x epoch images x epochs / seconds; ratio = batched / sequential
images/s (above 1: the batch is faster). The data are random (uint8 images of the case's shape,
random adversarial images and teacher logits), so no data set is loaded.

Per case it also counts the convolutions of the compiled train step (the body of every epoch
step: `jitted.lower(...).compile().as_text()`), unbatched and batched at the largest R, and how
many of them are grouped (`feature_group_count` or `batch_group_count` above 1): vmapping a
convolution over runs that each have their own kernel makes it one grouped convolution with R
groups (and its kernel gradient one with `batch_group_count` R), whose speed depends on the
backend's grouped-convolution kernels; unrolling keeps R plain convolutions.

Writes batched.json and batched.md under `--out/<device-name>/`; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from ast_jax.data import DatasetSpec, dataset_spec
from ast_jax.engine import (
    RUN_LOWERINGS,
    ExecutionPolicy,
    LossHypers,
    StepSpec,
    TrainState,
    init_state,
    make_train_epoch,
    make_train_step,
    replicate,
)
from ast_jax.engine.loop import run_partition
from ast_jax.engine.runner import run_arrays
from ast_jax.files import atomic_write
from ast_jax.rng import Stream

from . import jax_path
from .common import log, results_dir, timed
from .report import fmt, table

FILES = ("batched.json", "batched.md")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One case: a model trained with one step kind on random data of one data set's shape."""

    model: str
    spec: StepSpec
    hypers: LossHypers  # run 0's; the sweep varies τ and ω from them (`sweep`)
    dataset: str  # whose image shape, classes, normalisation and augmentation the case takes
    batch_size: int

    @property
    def info(self) -> DatasetSpec:
        return dataset_spec(self.dataset)


# ast: docs/method.md §2's step, EPD divergence, k = 2 (digits' k; CIFAR-100's ratio 0.02 of 100 classes);
# kd: the CNN student distilled from fixed teacher logits (digits has no augmentation, so
# `data['teacher_logits']` stand in for the teacher's forward pass, as the runner does).
CASES = {
    "digits-preresnet20": Workload("preresnet20", StepSpec("ast", "epd"), LossHypers(4.0, 0.035, 2), "digits", 64),
    "digits-cnn": Workload("cnn", StepSpec("kd"), LossHypers(4.0, 0.9), "digits", 64),
    "cifar-preresnet20": Workload("preresnet20", StepSpec("ast", "epd"), LossHypers(4.0, 0.035, 2), "cifar100", 128),
}
DEFAULTS = dict(cases=",".join(CASES), runs="1,4,8,16", epochs=2, epoch_images=1437)
SMOKE = dict(cases="digits-cnn", runs="1,2", epochs=1, epoch_images=32, batch_size=16)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batched", description=__doc__.split("\n")[0])
    parser.add_argument("--device-name", required=True, help="names the results folder, e.g. h100-sxm")
    parser.add_argument("--cases", help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--runs", help="comma-separated numbers of runs R (default 1,4,8,16)")
    parser.add_argument("--epochs", type=int, help="timed epochs per measurement (default 2)")
    parser.add_argument("--epoch-images", type=int, help="images of the random training set (default 1437)")
    parser.add_argument("--batch-size", type=int, help="for every case (default: 64 digits, 128 CIFAR)")
    parser.add_argument("--out", default="benchmarks/results", help="results go to OUT/DEVICE_NAME/")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes for the test suite: digits-cnn, R 1,2, 32 images, batch 16, 1 timed epoch")
    parser.add_argument("--run-lowerings", default=",".join(RUN_LOWERINGS),
                        help=f"how the batched program maps its step over the runs: comma-separated, from "
                             f"{', '.join(RUN_LOWERINGS)} (default both)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results files")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.cases = [c for c in args.cases.split(",") if c]
    args.run_lowerings = [lowering for lowering in args.run_lowerings.split(",") if lowering]
    if not args.run_lowerings or set(args.run_lowerings) - set(RUN_LOWERINGS):
        parser.error(f"--run-lowerings: choose from {', '.join(RUN_LOWERINGS)}, got {args.run_lowerings}")
    if not args.cases or set(args.cases) - set(CASES):
        parser.error(f"--cases: invalid value(s) {sorted(set(args.cases) - set(CASES)) or args.cases}; "
                     f"choose from {', '.join(CASES)}")
    try:
        args.runs = [int(r) for r in args.runs.split(",") if r]
    except ValueError:
        parser.error(f"--runs: give positive integers, got {args.runs!r}")
    if not args.runs or min(args.runs) < 1:
        parser.error(f"--runs: give positive integers, got {args.runs}")
    if min(args.epochs, args.epoch_images, args.batch_size or 1) < 1:
        parser.error("--epochs, --epoch-images and --batch-size must be >= 1")
    largest = max(case_batch_size(args, name) for name in args.cases)
    if args.epoch_images < largest:
        parser.error(f"--epoch-images ({args.epoch_images}) must be at least the batch size ({largest})")
    return args


def case_batch_size(args: argparse.Namespace, case: str) -> int:
    return args.batch_size or CASES[case].batch_size


def sweep(hypers: LossHypers, runs: int) -> list[LossHypers]:
    """Per-run `hypers` as a sweep varies them: temperature T, T + 0.5, ...; ω from the given one
    down to half of it; k kept (run 0 has the given values)."""
    omegas = hypers.omega * (np.linspace(1.0, 0.5, runs) if runs > 1 else np.ones(1))
    k = None if hypers.k is None else np.int32(hypers.k)
    return [LossHypers(np.float32(hypers.temperature + 0.5 * r), np.float32(omegas[r]), k) for r in range(runs)]


@dataclasses.dataclass(frozen=True)
class Runs:
    """R runs on the host: initial states, keys, hypers and per-run arrays (seed r for run r)."""

    states: list[TrainState]
    keys: list[np.ndarray]
    hypers: list[LossHypers]
    per_run: list[dict[str, np.ndarray]]  # adv_images (ast) or teacher_logits (kd), one set each

    def head(self, runs: int) -> "Runs":
        return Runs(self.states[:runs], self.keys[:runs], self.hypers[:runs], self.per_run[:runs])


def shared_data(workload: Workload, num: int) -> dict[str, np.ndarray]:
    """Random uint8 images of the data set's shape and random labels, shared by every run."""
    rng = np.random.default_rng(0)
    info = workload.info
    return {"images": rng.integers(0, 256, (num, *info.image_shape), dtype=np.uint8),
            "labels": rng.integers(0, info.num_classes, num).astype(np.int32)}


def per_run_arrays(workload: Workload, num: int, seed: int) -> dict[str, np.ndarray]:
    """A run's own inputs: random adversarial images (model-input space) or random teacher logits."""
    rng = np.random.default_rng(seed + 1)
    info = workload.info
    if workload.spec.needs_adversarial:
        return {"adv_images": rng.standard_normal((num, *info.image_shape), np.float32)}
    return {"teacher_logits": 3.0 * rng.standard_normal((num, info.num_classes), np.float32)}


def make_runs(workload: Workload, model, tx, num: int, runs: int) -> Runs:
    """Runs 0 .. runs - 1, initialised as the runner initialises them (`init_state` from the
    seed's PARAMS_INIT key; jitted here, which changes nothing but the time it takes)."""
    init = jax.jit(lambda seed: init_state(model, tx, jax.random.fold_in(jax.random.PRNGKey(seed), Stream.PARAMS_INIT),
                                           workload.info.image_shape))
    seeds = range(runs)
    return Runs([jax.device_get(init(s)) for s in seeds], [np.asarray(jax.random.PRNGKey(s)) for s in seeds],
                sweep(workload.hypers, runs), [per_run_arrays(workload, num, s) for s in seeds])


def stack(trees: list):
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *trees)


def epoch_program(workload: Workload, model, tx, mesh, batch_size: int, lowering: str | None):
    """The epoch program: unbatched (`lowering` None) or batched over runs by `lowering` (`RUN_LOWERINGS`)."""
    info = workload.info
    policy = ExecutionPolicy.current()
    if lowering is not None:
        policy = dataclasses.replace(policy, run_lowering=lowering)
    return make_train_epoch(model, tx, workload.spec, mesh, batch_size=batch_size, augment_spec=info.augment,
                            mean=info.mean, std=info.std, batched=lowering is not None, policy=policy)


def run_epochs(train_epoch, place, data, epochs: int) -> None:
    """`epochs` epochs from the state, key and hypers that `place()` puts on the device, each synchronised."""
    state, key, hypers = place()
    for epoch in range(epochs):
        state, metrics = train_epoch(state, data, None, key, epoch, hypers=hypers)
        jax.block_until_ready((state, metrics))


def measure_batched(train_epoch, mesh, shared, runs: Runs, epochs: int) -> tuple[float, float]:
    """Seconds of the first epoch (compilation included) and of the timed epochs of the R runs as
    one batched program (inputs stacked as `runner._train_group` stacks them)."""
    per_run = NamedSharding(mesh, run_partition(mesh))
    data = {**shared, **run_arrays(mesh, **{name: [arrays[name] for arrays in runs.per_run]
                                            for name in runs.per_run[0]})}
    state, keys, hypers = stack(runs.states), np.stack(runs.keys), stack(runs.hypers)
    place = functools.partial(jax.device_put, (state, keys, hypers), per_run)
    first = timed(functools.partial(run_epochs, train_epoch, place, data, 1))
    return first, timed(functools.partial(run_epochs, train_epoch, place, data, epochs))


def measure_sequential(train_epoch, mesh, shared, runs: Runs, epochs: int) -> float:
    """Seconds of the R runs one after another with the unbatched program (one program for all of
    them: their hypers are scalar arguments), after one untimed epoch of the first run."""
    total = 0.0
    for r, (state, key, hypers, arrays) in enumerate(zip(runs.states, runs.keys, runs.hypers, runs.per_run)):
        data = {**shared, **replicate(mesh, arrays)}
        place = functools.partial(replicate, mesh, (state, key, hypers))
        if r == 0:
            run_epochs(train_epoch, place, data, 1)
        total += timed(functools.partial(run_epochs, train_epoch, place, data, epochs))
    return total


def step_batch(workload: Workload, batch_size: int) -> dict:
    """The shapes of one run's batch as the epoch hands it to the train step."""
    info, spec = workload.info, workload.spec
    batch = {"image": jax.ShapeDtypeStruct((batch_size, *info.image_shape), jnp.float32),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
             "mask": jax.ShapeDtypeStruct((batch_size,), jnp.bool_)}
    if spec.needs_adversarial:
        batch["adv_image"] = batch["image"]
    else:
        batch["teacher_logits"] = jax.ShapeDtypeStruct((batch_size, info.num_classes), jnp.float32)
    return batch


def compiled_step_text(workload: Workload, model, tx, mesh, batch_size: int, runs: int | None,
                       lowering: str | None = None) -> str:
    """HLO text of the compiled train step, unbatched (`runs` None) or batched over `runs` runs by `lowering`."""
    step = jax.jit(make_train_step(model, tx, workload.spec, mesh, batched=runs is not None, run_lowering=lowering),
                   donate_argnums=(0,))
    state = jax.eval_shape(lambda: init_state(model, tx, jax.random.PRNGKey(0), workload.info.image_shape))
    hypers = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, sweep(workload.hypers, 1)[0]))
    args = (state, step_batch(workload, batch_size), None, jax.eval_shape(lambda: jax.random.PRNGKey(0)), hypers)
    if runs is not None:
        args = jax.tree.map(lambda s: jax.ShapeDtypeStruct((runs, *s.shape), s.dtype), args)
    return step.lower(*args).compile().as_text()


# An XLA convolution, or a library's convolution kernel called from the program (GPUs: `__cudnn$conv...`),
# which carries the convolution's attributes, group counts included.
_CONVOLUTION = re.compile(r'= \S+ convolution\(|custom_call_target="[^"]*conv', re.IGNORECASE)
_GROUPED = re.compile(r"(feature|batch)_group_count=(?!1\b)\d+")


def convolution_ops(hlo_text: str) -> dict:
    """How many convolution instructions an HLO text has, and how many of them are grouped
    (`feature_group_count` or `batch_group_count` above 1)."""
    convolutions = [line for line in hlo_text.splitlines() if _CONVOLUTION.search(line)]
    return {"convolutions": len(convolutions), "grouped": sum(bool(_GROUPED.search(line)) for line in convolutions)}


def measure_case(name: str, args: argparse.Namespace) -> dict:
    """Sequential and batched seconds (per run lowering) for every R of `--runs`, interleaved, and the
    convolutions of each compiled step."""
    workload, size = CASES[name], case_batch_size(args, name)
    info, spec = workload.info, workload.spec
    mesh, model, tx = jax_path._mesh(), jax_path._model(workload.model, info.num_classes, "float32"), jax_path.optimizer()
    shared = replicate(mesh, shared_data(workload, args.epoch_images))
    sequential = epoch_program(workload, model, tx, mesh, size, None)
    programs = {lowering: epoch_program(workload, model, tx, mesh, size, lowering) for lowering in args.run_lowerings}
    all_runs = make_runs(workload, model, tx, args.epoch_images, max(args.runs))
    rows = []
    for count in args.runs:
        log(f"{name}: {count} run(s), batch {size}, {args.epoch_images} images, {args.epochs} epoch(s)")
        runs = all_runs.head(count)
        images = count * args.epoch_images * args.epochs
        seconds = measure_sequential(sequential, mesh, shared, runs, args.epochs)
        row = {"runs": count, "sequential_s": seconds, "sequential_images_per_s": images / seconds, "batched": {},
               "hypers": [{"temperature": float(h.temperature), "omega": float(h.omega)} for h in runs.hypers]}
        for lowering, program in programs.items():
            first, seconds = measure_batched(program, mesh, shared, runs, args.epochs)
            row["batched"][lowering] = {"first_epoch_s": first, "s": seconds, "images_per_s": images / seconds,
                                        "ratio": images / seconds / row["sequential_images_per_s"]}
        rows.append(row)
    log(f"{name}: convolutions of the compiled train steps")
    hlo = {"unbatched": convolution_ops(compiled_step_text(workload, model, tx, mesh, size, None))}
    for lowering in args.run_lowerings:
        hlo[lowering] = {"runs": max(args.runs), **convolution_ops(
            compiled_step_text(workload, model, tx, mesh, size, max(args.runs), lowering))}
    hypers = workload.hypers
    return {"case": name, "model": workload.model, "step": spec.kind, "temperature": hypers.temperature,
            "omega": hypers.omega, "k": hypers.k, "divergence": spec.divergence, "dataset": workload.dataset,
            "image_shape": list(info.image_shape), "num_classes": info.num_classes, "augment": str(info.augment),
            "batch_size": size, "epoch_images": args.epoch_images, "epochs": args.epochs, "rows": rows,
            "hlo_convolutions": hlo}


def environment(args: argparse.Namespace, argv: list[str]) -> dict:
    device = jax_path.device()
    return {"device_name": args.device_name, "device_kind": device.device_kind, "platform": device.platform,
            "cpu_count": os.cpu_count(), "epoch_loop": ExecutionPolicy.current().loop,
            "default_run_lowering": ExecutionPolicy.current().run_lowering,
            "versions": {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
                         "optax": optax.__version__, "numpy": np.__version__},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", "-m", "benchmarks.batched", *argv]), "settings": dict(vars(args))}


def markdown(results: dict) -> str:
    env, cases = results["environment"], results["cases"]
    lowerings = list(cases[0]["rows"][0]["batched"])
    rows = [[c["case"], c["model"], c["step"], c["batch_size"], c["epoch_images"], r["runs"],
             fmt(r["sequential_images_per_s"]),
             *(value for lowering in lowerings for value in (fmt(r["batched"][lowering]["images_per_s"]),
                                                             fmt(r["batched"][lowering]["ratio"], digits=2),
                                                             fmt(r["batched"][lowering]["first_epoch_s"])))]
            for c in cases for r in c["rows"]]
    hlo = [[c["case"], program if program == "unbatched" else f"batched ({program}), R = {ops['runs']}",
            ops["convolutions"], ops["grouped"]] for c in cases for program, ops in c["hlo_convolutions"].items()]
    return "\n".join([
        f"# Batched runs against sequential runs: {env['device_name']}", "",
        f"Device: {env['device_kind']} ({env['platform']}, {env['cpu_count']} CPUs, epoch loop `{env['epoch_loop']}`, "
        f"default run lowering `{env['default_run_lowering']}`); jax {env['versions']['jax']}; {env['date']}.", "",
        f"Command: `{env['command']}`", "",
        "R runs (seeds 0 .. R-1, temperature and omega swept) trained one after another with the unbatched program "
        "(sequential) and as one batched program per run lowering (vmap: one vmapped step; unroll: one copy of the "
        "step per run); images/s = R x images x epochs / seconds of the timed epochs; ratio = batched / sequential; "
        "first epoch s: the batched program's untimed first epoch, its compilation included.",
        "", *table(["case", "model", "step", "batch", "images", "R", "sequential img/s",
                    *(f"{header} ({lowering})" for lowering in lowerings
                      for header in ("batched img/s", "ratio", "first epoch s"))],
                   rows), "",
        "## Convolutions of the compiled train step", "",
        "Grouped: `feature_group_count` or `batch_group_count` above 1 (a vmapped convolution with one kernel per "
        "run).", "", *table(["case", "program", "convolutions", "grouped"], hlo), ""])


def write(results: dict, directory: Path, overwrite: bool) -> None:
    json_file, md_file = (str(directory / name) for name in FILES)
    atomic_write(json_file, json.dumps(results, indent=1) + "\n", overwrite=overwrite)
    atomic_write(md_file, markdown(results), overwrite=overwrite)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    directory = results_dir(args.out, args.device_name, FILES, args.overwrite)
    start = time.perf_counter()
    results = {"environment": environment(args, argv), "cases": [measure_case(name, args) for name in args.cases]}
    results["environment"]["wall_s"] = time.perf_counter() - start
    write(results, directory, args.overwrite)
    print(markdown(results))
    log(f"wrote {', '.join(str(directory / name) for name in FILES)} in {results['environment']['wall_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
