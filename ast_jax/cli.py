"""`ast-jax` command line: train, attack-set, distill, pipeline, report, demo.

Every command takes `--config FILE[:variant]` (an ml-collections config, e.g.
`configs/cifar10_resnet18.py:reference`) and `--workdir DIR`; any `--config.KEY=VALUE` argument
overrides a config value (`--config.train.epochs=3`). Errors are one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

DEMO_CONFIG = "digits"
DEMO_WORKDIR = "ast_jax_demo"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ast-jax", description="Train and attack defensive teachers (Adversarial Sparse Teacher and baselines).",
        epilog="Override any config value with --config.KEY=VALUE, e.g. --config.train.epochs=3.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text, *, demo=False):
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  epilog="Override any config value with --config.KEY=VALUE.")
        sub.add_argument("--config", default=DEMO_CONFIG if demo else None, required=not demo,
                         help="config file, optionally FILE:variant (thesis or reference)"
                              + (f"; default {DEMO_CONFIG}" if demo else ""))
        sub.add_argument("--workdir", default=DEMO_WORKDIR if demo else None, required=not demo,
                         help="directory of the study's results" + (f"; default ./{DEMO_WORKDIR}" if demo else ""))
        sub.add_argument("--distributed", action="store_true",
                         help="call jax.distributed.initialize() first (multi-host GPU under SLURM, TPU pod slices)")
        return sub

    from .pipeline import TEACHERS, TRAINED_TEACHERS

    train = command("train", "train one teacher (and what it needs: the base teacher, the PGD set)")
    train.add_argument("--stage", choices=TRAINED_TEACHERS, default="base", help="which teacher (default base)")
    command("attack-set", "build the PGD adversarial training set from the base teacher")
    distill = command("distill", "distil students from a teacher's released outputs (the stealing attack)")
    distill.add_argument("--teacher", choices=TEACHERS, required=True)
    distill.add_argument("--student", action="append",
                         help="student architecture (repeatable; default: the config's students)")
    command("pipeline", "run the whole study: teachers, PGD set, students, report")
    command("report", "write report.md/json/csv and outputs.png from the study's runs")
    command("demo", "the whole study on the embedded digits set (CPU, a few minutes)", demo=True)
    return parser


def _split_overrides(argv):
    overrides = [a for a in argv if a.startswith("--config.") or a.startswith("config.")]
    return [a for a in argv if a not in overrides], overrides


def _print_table(paths) -> None:
    report_md = next(p for p in paths if p.endswith(".md"))
    with open(report_md) as f:
        print(f.read())
    print("report: " + ", ".join(paths))


def run(args, overrides) -> None:
    from . import pipeline
    from .config import load_config

    config = load_config(args.config, overrides)
    study = pipeline.open_study(config, args.workdir, students=getattr(args, "student", None), teacher=getattr(args, "teacher", None))
    if args.command == "train":
        result = pipeline.train_teacher(study, args.stage)
        imported = args.stage == "base" and config.teacher.torch_checkpoint
        where = (f"imported from {config.teacher.torch_checkpoint}" if imported
                 else f"checkpoints in {os.path.join(args.workdir, 'teachers', args.stage)}")
        print(f"{args.stage} teacher: test accuracy {result.final_accuracy:.4f} (best {result.best_accuracy:.4f}); {where}")
    elif args.command == "attack-set":
        adv = pipeline.adversarial_set(study)
        print(f"adversarial set: {adv.shape[0]} images in {os.path.join(args.workdir, 'adversarial')}")
    elif args.command == "distill":
        for architecture in args.student or config.students:
            result = pipeline.distill_student(study, args.teacher, architecture)
            print(f"{args.teacher} -> {architecture}: student test accuracy {result.final_accuracy:.4f}")
    elif args.command == "report":
        _print_table(pipeline.write_report(study))
    else:  # pipeline, demo
        _print_table(pipeline.run(study))


def enable_compilation_cache() -> str:
    """Keep compiled XLA programs on disk (`$AST_JAX_CACHE`, default ~/.cache/ast_jax/xla).

    Stages that run the same program (e.g. one student architecture distilled from several
    teachers) then compile it once, and a re-run compiles nothing.
    """
    import jax

    directory = os.environ.get("AST_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ast_jax", "xla")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return directory


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    plain, overrides = _split_overrides(argv)
    args = _parser().parse_args(plain)
    if args.distributed:
        import jax

        jax.distributed.initialize()  # cluster detected from the SLURM / TPU environment
    enable_compilation_cache()
    from .checkpoints import WorkdirConflictError
    from .train import NonFiniteLossError

    try:
        run(args, overrides)
    except (ValueError, FileNotFoundError, ImportError, WorkdirConflictError, NonFiniteLossError) as error:
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"ast-jax: error: {message}", file=sys.stderr)
        return 2
    return 0
