"""Throughput of ast_jax against PyTorch, side by side: `python -m benchmarks.run --device-name NAME`.

For each model x step x batch size x precision: the median train-step time (batch on the device),
images/s, FLOPs per step (XLA cost analysis) and achieved TFLOP/s, peak device memory, and the
time of a whole epoch with its input path; per model x precision: PGD over `--pgd-images` images.
Each is measured for JAX (ast_jax), the PyTorch `reference` path and the PyTorch `tuned` path in
the same process. Writes results.json, results.md and results.png under `--out/<device-name>/`.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import flax
import jax
import numpy as np
import optax
import torch

from ast_jax.models import MODEL_NAMES

from . import common, jax_path, report, torch_path
from .common import PRECISIONS, STEP_SPECS, Case, fixed_batch, initial_weights, log, peak_bf16_tflops, synthetic_data

FULL = dict(models="resnet18,resnet50,preresnet20", steps="ce,kd,ast,nasty", batch_sizes="128,512",
            precisions="float32,bfloat16", image_size=32, iters=20, warmup=5, pgd_images=50000, pgd_steps=40,
            epoch_images=10240)
SMOKE = dict(models="cnn", steps="ce,kd,ast,nasty", batch_sizes="8", precisions="float32,bfloat16",
             image_size=8, iters=2, warmup=1, pgd_images=16, pgd_steps=2, epoch_images=16)
LISTS = {"models": (str, MODEL_NAMES), "steps": (str, tuple(STEP_SPECS)), "batch_sizes": (int, None),
         "precisions": (str, PRECISIONS)}
CPU_BF16_NOTE = ("bfloat16 skipped: JAX runs on CPU, which has no bf16 matrix units; a bf16 timing there "
                 "measures emulation, not the accelerator path")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--device-name", required=True, help="names the results folder, e.g. h100-sxm")
    parser.add_argument("--models", help=f"comma-separated, from {', '.join(MODEL_NAMES)}")
    parser.add_argument("--steps", help="comma-separated train steps, from ce,kd,ast,nasty")
    parser.add_argument("--batch-sizes", help="comma-separated")
    parser.add_argument("--precisions", help="comma-separated, from float32,bfloat16 (bfloat16 is skipped on CPU)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--iters", type=int, help="timed train steps per measurement")
    parser.add_argument("--warmup", type=int, help="untimed train steps before them")
    parser.add_argument("--pgd-images", type=int, help="size of the PGD set")
    parser.add_argument("--pgd-steps", type=int, help="PGD iterations (thesis: 40)")
    parser.add_argument("--epoch-images", type=int, help="size of the training set of the epoch timing")
    parser.add_argument("--out", default="benchmarks/results", help="results go to OUT/DEVICE_NAME/")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes for the test suite (cnn, batch 8, 8x8, 2 PGD steps); implies --no-compile")
    parser.add_argument("--no-compile", action="store_true", help="run the tuned PyTorch path without torch.compile")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results files")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.no_compile = args.no_compile or args.smoke
    for key, (kind, allowed) in LISTS.items():
        values = [kind(v) for v in str(getattr(args, key)).split(",") if v]
        bad = [v for v in values if (allowed is not None and v not in allowed) or (kind is int and v < 1)]
        if not values or bad:
            parser.error(f"--{key.replace('_', '-')}: invalid value(s) {bad or values}"
                         + (f"; choose from {', '.join(allowed)}" if allowed else "; give positive integers"))
        setattr(args, key, values)
    if args.epoch_images < max(args.batch_sizes):
        parser.error(f"--epoch-images ({args.epoch_images}) must be at least the largest batch size")
    if min(args.iters, args.pgd_images, args.pgd_steps, args.image_size) < 1 or args.warmup < 0:
        parser.error("--iters, --pgd-images, --pgd-steps and --image-size must be >= 1, --warmup >= 0")
    return args


def results_dir(args: argparse.Namespace) -> Path:
    return common.results_dir(args.out, args.device_name, report.FILES, args.overwrite)


def environment(args: argparse.Namespace, argv: list[str], torch_device: torch.device, notes: list[str]) -> dict:
    device = jax_path.device()
    cpu = jax.default_backend() == "cpu"
    torch_name = torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu"
    return {
        "device_name": args.device_name, "device_kind": device.device_kind, "jax_backend": jax.default_backend(),
        "torch_device": torch_name, "cpu_count": os.cpu_count(),
        "peak_bf16_tflops": None if cpu else peak_bf16_tflops(args.device_name, device.device_kind),
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks.run", *argv]),
        "settings": dict(vars(args)), "notes": notes,
    }


def _speedups(record: dict, key: str, prefix: str = "") -> None:
    for path in report.PATHS[1:]:
        record[f"{prefix}speedup_vs_{path}"] = record[path][key] / record["jax"][key]


def step_record(case: Case, epoch_images: int, results: dict[str, dict]) -> dict:
    """One row of the step table from the three paths' step and epoch measurements."""
    flops = results["jax"]["flops"]
    for result in results.values():
        result["images_per_s"] = case.batch_size / result["median_s"]
        result["tflops"] = flops / result["median_s"] / 1e12
        result["epoch_images_per_s"] = epoch_images / result["epoch_s"]
    record = {"model": case.model, "step": case.step, "batch_size": case.batch_size, "precision": case.precision,
              "image_size": case.image_size, "num_classes": case.num_classes, "epoch_images": epoch_images,
              "gflop_per_step": flops / 1e9, **results}
    _speedups(record, "median_s")
    _speedups(record, "epoch_s", "epoch_")
    return record


def pgd_record(name: str, precision: str, batch_size: int, images: int, steps: int, peak: float | None,
               results: dict[str, dict]) -> dict:
    flops = results["jax"]["flops"]
    for result in results.values():
        result["images_per_s"] = images / result["seconds"]
        result["tflops"] = flops / result["seconds"] / 1e12
        result["peak_fraction"] = result["tflops"] / peak if peak else None
    record = {"model": name, "precision": precision, "batch_size": batch_size, "images": images, "steps": steps,
              "gflop": flops / 1e9, **results}
    _speedups(record, "seconds")
    return record


def _torch_step(modules, case: Case, batch, epoch_data, args) -> dict:
    step = torch_path.measure(torch_path.measure_step, modules, case, batch, iters=args.iters, warmup=args.warmup)
    epoch = torch_path.measure(torch_path.measure_epoch, modules, case, epoch_data)
    return {**step, **epoch, "precision": case.precision if modules.variant.mixed_precision else "float32"}


def step_records(name: str, step: str, batch_size: int, args, precisions, weights, data, modules) -> list[dict]:
    """The rows of one model, step and batch size: one per precision."""
    batch = fixed_batch(data, batch_size)
    epoch_images = args.epoch_images - args.epoch_images % batch_size
    epoch_data = data.head(epoch_images)
    records, reference = [], None  # the reference is float32 by definition: measured once, shown in every row
    for precision in precisions:
        case = Case(name, step, batch_size, precision, args.image_size, args.num_classes)
        log(f"{name} {step} batch {batch_size} {precision}")
        jax_result = {**jax_path.measure_step(case, weights, batch, iters=args.iters, warmup=args.warmup),
                      **jax_path.measure_epoch(case, weights, epoch_data), "precision": precision}
        reference = reference or _torch_step(modules["reference"], case, batch, epoch_data, args)
        tuned = _torch_step(modules["tuned"], case, batch, epoch_data, args)
        records.append(step_record(case, epoch_images, {"jax": jax_result, "torch_reference": dict(reference),
                                                        "torch_tuned": tuned}))
    return records


def pgd_records(name: str, args, precisions, weights, data, modules, peak: float | None) -> list[dict]:
    """PGD over the first `--pgd-images` images at the largest batch size: one row per precision."""
    data = data.head(args.pgd_images)
    kwargs = dict(batch_size=min(max(args.batch_sizes), args.pgd_images), steps=args.pgd_steps)
    records, reference = [], None
    for precision in precisions:
        log(f"{name} PGD-{args.pgd_steps} {precision}, {args.pgd_images} images")
        results = {"jax": jax_path.measure_pgd(name, args.num_classes, precision, weights, data, **kwargs)}
        reference = reference or torch_path.measure(torch_path.measure_pgd, modules["reference"], "float32", data,
                                                    **kwargs)
        results["torch_reference"] = dict(reference)
        results["torch_tuned"] = torch_path.measure(torch_path.measure_pgd, modules["tuned"], precision, data,
                                                    **kwargs)
        records.append(pgd_record(name, precision, kwargs["batch_size"], args.pgd_images, args.pgd_steps, peak,
                                  results))
    return records


def benchmark_model(name: str, args: argparse.Namespace, precisions: list[str], torch_device, peak) -> tuple:
    """Step records (steps x batch sizes x precisions) and PGD records (precisions) of one model."""
    weights = initial_weights(name, args.num_classes, args.image_size)
    data = synthetic_data(max(args.epoch_images, args.pgd_images), args.image_size, args.num_classes)
    modules = {v: torch_path.build(variant, name, args.num_classes, args.image_size, weights, torch_device,
                                   allow_compile=not args.no_compile)
               for v, variant in torch_path.VARIANTS.items()}
    steps = [record for step in args.steps for batch_size in args.batch_sizes
             for record in step_records(name, step, batch_size, args, precisions, weights, data, modules)]
    return steps, pgd_records(name, args, precisions, weights, data, modules, peak)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    directory = results_dir(args)
    start = time.perf_counter()
    notes = ["JAX runs on a one-device mesh and PyTorch on one device; step times use a batch already on the "
             "device, epoch times include each path's input pipeline"]
    precisions = args.precisions
    if jax.default_backend() == "cpu" and "bfloat16" in precisions:
        precisions = [p for p in precisions if p != "bfloat16"]
        notes.append(CPU_BF16_NOTE)
    if not precisions:
        raise SystemExit(f"error: nothing to measure ({CPU_BF16_NOTE})")
    if "bfloat16" in precisions:
        notes.append("the torch reference path is float32 by definition: one measurement, shown in the rows of "
                     "every precision")
    torch_device = torch_path.default_device()
    env = environment(args, argv, torch_device, notes)
    results = {"environment": env, "steps": [], "pgd": []}
    for name in args.models:
        steps, pgd = benchmark_model(name, args, precisions, torch_device, env["peak_bf16_tflops"])
        results["steps"] += steps
        results["pgd"] += pgd
    env["wall_s"] = time.perf_counter() - start
    report.write(results, directory)
    print(report.markdown(results))
    log(f"wrote {', '.join(str(directory / f) for f in report.FILES)} in {env['wall_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
