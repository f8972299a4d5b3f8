"""`ast-jax` command line: train, attack-set, distill, pipeline, report, demo, matrix, sweep, plan.

Every command takes `--config NAME[:variant]` (a config of the package's `ast_jax/configs/`, e.g.
`cifar10_resnet18:reference`, or the path of a config file) and `--workdir DIR` (`plan`, which
writes no study, takes `--target` instead: `ast_jax.cli.plan`); any
`--config.KEY=VALUE` or `--config.KEY VALUE` argument overrides a config value
(`--config.train.epochs 3`, parsed by ml_collections' config_flags).

A failure the user can cause (a bad config file, key or value, an unusable work directory, a
full disk, a missing data set, `--distributed` outside a cluster, ...) prints one line on stderr,
`ast-jax: error: ...`, naming the file or key and the fix, and exits with code 2. Its traceback
goes to a log file named in that line: `<workdir>/ast-jax-error.log` once the run has claimed its
work directory, a new temporary file before, with the tracebacks that libraries logged on the way
(orbax logs a failed checkpoint write before raising it). An unexpected error (a bug) exits with
code 1 and also names its log. `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import tempfile
import traceback

DEMO_CONFIG = "digits"
DEMO_WORKDIR = "ast_jax_demo"
DEMO_SEEDS = (0, 1, 2, 3)  # four seeds: D's 95% interval clears zero with room (docs/results/digits-demo.md)
ERROR_LOG = "ast-jax-error.log"
OVERRIDE_HELP = "Override any config value with --config.KEY=VALUE or --config.KEY VALUE"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ast-jax", description="Train and attack defensive teachers (Adversarial Sparse Teacher and baselines).",
        epilog=f"{OVERRIDE_HELP}, e.g. --config.train.epochs=3.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text, *, demo=False):
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=f"{OVERRIDE_HELP}.")
        sub.add_argument("--config", default=DEMO_CONFIG if demo else None, required=not demo,
                         help="config name (from the package's ast_jax/configs/, e.g. cifar10_resnet18) or path of a "
                              "config file, optionally NAME:variant (thesis or reference)"
                              + (f"; default {DEMO_CONFIG}" if demo else ""))
        sub.add_argument("--workdir", default=DEMO_WORKDIR if demo else None, required=not demo,
                         help="directory of the study's results" + (f"; default ./{DEMO_WORKDIR}" if demo else ""))
        sub.add_argument("--distributed", action="store_true",
                         help="call jax.distributed.initialize() first (multi-host GPU under SLURM, TPU pod slices)")
        sub.add_argument("--debug", action="store_true", help="show the traceback of an error instead of logging it")
        return sub

    from ast_jax.studies.study import TEACHERS, TRAINED_TEACHERS

    train = command("train", "train one teacher (and what it needs: the base teacher, the PGD set)")
    train.add_argument("--stage", choices=TRAINED_TEACHERS, default="base", help="which teacher (default base)")
    command("attack-set", "build the PGD adversarial training set from the base teacher")
    distill = command("distill", "distil students from a teacher's released outputs (the stealing attack)")
    distill.add_argument("--teacher", choices=TEACHERS, required=True)
    distill.add_argument("--student", action="append",
                         help="student architecture (repeatable; default: the config's students)")
    seeds_help = ("comma-separated seeds, e.g. 0,1,2: the study once per seed in <workdir>/seed-<s>, trained "
                  "together, and a report over the seeds (mean ± std, 95%% interval)")
    run_devices_help = ("spread each batch of runs (runs of one kind, across seeds and cells) over N groups of "
                        "devices, one share of the runs per group, each run's batch over its group's devices; N "
                        "divides the device count (default 1: every run's batch over every device)")
    pipeline = command("pipeline", "run the whole study: teachers, PGD set, students, report")
    pipeline.add_argument("--seeds", type=_seeds, help=seeds_help + " (default: config.seed alone, in <workdir>)")
    pipeline.add_argument("--run-devices", type=_positive, default=1, metavar="N", help=run_devices_help)
    command("report", "write report.md/json/csv and outputs.png from the study's runs")
    demo = command("demo", "the whole study on the embedded digits set (CPU, a few minutes)", demo=True)
    demo.add_argument("--seeds", type=_seeds, default=DEMO_SEEDS,
                      help=seeds_help + f" (default {','.join(map(str, DEMO_SEEDS))})")
    demo.add_argument("--run-devices", type=_positive, default=1, metavar="N", help=run_devices_help)
    matrix = command("matrix", "every configured stealing attack on every victim (teachers and output defences)")
    matrix.add_argument("--seeds", type=_seeds, help="comma-separated seeds, e.g. 0,1,2 (default: config.matrix.seeds)")
    sweep = command("sweep", "a grid of AST teachers over seeds, with their students: sweep.md/json/csv, sweep.png")
    sweep.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                       help="a config key under ast., pgd. or teacher_train.ast. and its values (repeatable; the "
                            "grid is every combination), e.g. --grid ast.omega=0.01,0.05 --grid ast.temperature=4,20 "
                            "(default: config.sweep.grid)")
    sweep.add_argument("--seeds", type=_seeds, help="comma-separated seeds (default: config.sweep.seeds)")
    sweep.add_argument("--run-devices", type=_positive, default=1, metavar="N", help=run_devices_help)
    plan_only_help = ("compile the command's programs for the attached devices and print their memory, FLOPs and "
                      "time bound (as `ast-jax plan`), then stop: nothing is trained or written")
    for sub in (pipeline, matrix, sweep):
        sub.add_argument("--plan-only", action="store_true", help=plan_only_help)
    from ast_jax.cli.plan import TARGETS

    plan_help = "compile the study's programs for an accelerator that is not attached: memory, FLOPs, a time bound"
    plan = commands.add_parser("plan", help=plan_help, description=plan_help, epilog=f"{OVERRIDE_HELP}.")
    plan.add_argument("--config", required=True, help="config name or path, optionally NAME:variant")
    plan.add_argument("--target", required=True, choices=TARGETS, help="the accelerator slice")
    plan.add_argument("--json", metavar="FILE", help="also write the numbers as JSON to FILE")
    plan.add_argument("--runs", type=_positive, default=1, metavar="R",
                      help="plan every training program as one batch of R runs, as `pipeline --seeds` and `sweep` "
                           "train them (default 1)")
    plan.add_argument("--adv-sets", type=_positive, metavar="S",
                      help="distinct adversarial sets among the AST teachers' R runs (a sweep: one per seed and PGD "
                           "setting; default R)")
    plan.add_argument("--debug", action="store_true", help="show the traceback of an error instead of logging it")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"takes a positive integer, got {text!r}")
    return value


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated non-negative integers, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated non-negative integers, got {text!r}")
    return seeds


def _print_table(paths) -> None:
    from ast_jax.files import is_writer

    if not is_writer():  # process 0 wrote (and prints) the report
        return
    report_md = next(p for p in paths if p.endswith(".md"))
    with open(report_md) as f:
        print(f.read())
    print("report: " + ", ".join(paths))


def open_command(args, config):
    """What `args.command` runs on, from its validated `config`: a `study.Study`, or for `sweep` and
    `--seeds` a `sweep.Sweep` / the list of seed studies (every check passes before the work
    directory is claimed). The studies get the config as typed settings (`to_settings`)."""
    import jax

    from ast_jax.cli.config import parse_grid, sweep_cell_settings, to_settings
    from ast_jax.engine import ExecutionPolicy
    from ast_jax.studies import sweep
    from ast_jax.studies.study import open_study

    policy = ExecutionPolicy.for_backend(jax.default_backend())  # how every run of the command executes
    if args.command == "sweep":
        grid = parse_grid(args.grid or config.sweep.grid)
        return sweep.open_sweep(to_settings(config), args.workdir, grid, sweep_cell_settings(config, grid),
                                args.seeds or config.sweep.seeds, run_devices=args.run_devices, policy=policy)
    settings = to_settings(config)
    if args.command in ("pipeline", "demo") and args.seeds is not None:
        return sweep.open_seed_studies(settings, args.workdir, args.seeds, run_devices=args.run_devices, policy=policy)
    return open_study(settings, args.workdir, students=getattr(args, "student", None),
                      teacher=getattr(args, "teacher", None), run_devices=getattr(args, "run_devices", 1),
                      policy=policy)


def run(args, opened) -> None:
    """Runs command `args.command` on what `open_command` opened."""
    from ast_jax.studies import pipeline, sweep
    from ast_jax.studies.report import write_report

    if args.command == "sweep":
        _print_table(sweep.run_sweep(opened))
        return
    if isinstance(opened, list):
        _print_table(sweep.run_seeds(opened, args.workdir))
        return
    study, config = opened, opened.config
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
        _print_table(write_report(study))
    elif args.command == "matrix":
        from ast_jax.studies.matrix import run_matrix

        _print_table(run_matrix(study, args.seeds))
    else:  # pipeline, demo: every stage, then the report
        pipeline.train_studies([study])
        _print_table(write_report(study))


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


def initialize_distributed() -> None:
    """`jax.distributed.initialize()`, the cluster taken from the environment; ValueError if none is found."""
    import jax

    try:
        jax.distributed.initialize()
    except Exception as error:
        raise ValueError(
            f"--distributed: jax.distributed.initialize() found no cluster ({type(error).__name__}: {error}); "
            f"run it in a SLURM job (srun), on every host of a TPU pod slice, under Open MPI or set "
            f"JAX_COORDINATOR_ADDRESS; drop --distributed on a single host") from error


def check_workdir(path: str) -> None:
    """ValueError unless `path` can become a work directory: an existing directory, or a new one
    inside a directory, that this process can write to. Creates nothing."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        which = "is a file" if existing == os.path.abspath(path) else f"lies under the file {existing}"
        raise ValueError(f"--workdir {path} {which}, not a directory; give a directory (existing or new)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"--workdir {path}: cannot write in {existing} ({error.strerror}); "
                         f"give a directory you can write to") from None


def _user_error(error: BaseException) -> BaseException | None:
    """The failure the user can cause that `error` is or was raised from (a full disk inside a
    checkpoint library's own exception, say), or None: then `error` is a bug."""
    from ast_jax.engine import NonFiniteLossError
    from ast_jax.engine.checkpoints import WorkdirConflictError

    user_errors = (ValueError, OSError, ImportError, WorkdirConflictError, NonFiniteLossError)
    while error is not None and not isinstance(error, user_errors):
        error = error.__cause__ or error.__context__
    return error


def _one_line(error: BaseException) -> str:
    """The error's message on one line; an OSError as ``<reason>: <path>``; a full disk with the fix."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.strerror or error}: {error.filename}"
    else:
        text = str(error) or type(error).__name__
    if "No space left on device" in text:  # also inside tensorstore's errors
        text += "; free space there (or move the work directory) and run the same command again to resume"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class _HeldTracebacks(logging.Filter):
    """Holds back the `absl` log records that carry a traceback (orbax logs a failed background
    save so before the error reaches the command): they go to the error log, not to stderr."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            self.records.append(record)
            return False
        return True


def _write_log(error: BaseException, argv: list[str], directory: str | None,
               logged: list[logging.LogRecord]) -> str | None:
    """Appends the traceback of `error` (after the `logged` records) to
    `<directory>/ast-jax-error.log`, or (no directory, or it cannot be written) to a new temporary
    file; returns the path, or None if neither could be written."""
    text = (f"--- {datetime.datetime.now().isoformat(timespec='seconds')} pid {os.getpid()}: ast-jax "
            f"{' '.join(argv)}\n" + "".join(logging.Formatter().format(record) + "\n" for record in logged)
            + "".join(traceback.format_exception(error)))
    if directory is not None:
        path = os.path.join(directory, ERROR_LOG)
        try:
            with open(path, "a") as f:
                f.write(text)
            return path
        except OSError:
            pass
    try:
        descriptor, path = tempfile.mkstemp(prefix="ast-jax-error-", suffix=".log")
        with os.fdopen(descriptor, "w") as f:
            f.write(text)
        return path
    except OSError:
        return None


def _fail(error: BaseException, argv: list[str], log_directory: str | None,
          logged: list[logging.LogRecord]) -> int:
    """Prints the one-line error (user error: exit code 2; bug: 1) naming the traceback's log."""
    log = _write_log(error, argv, log_directory, logged)
    where = f"traceback in {log}" if log else "no traceback log could be written"
    user_error = _user_error(error)
    if user_error is not None:
        print(f"ast-jax: error: {_one_line(user_error)} ({where}; --debug shows it)", file=sys.stderr)
        return 2
    print(f"ast-jax: internal error (a bug; please report it): {type(error).__name__}: {_one_line(error)} "
          f"({where}; --debug shows it)", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, overrides = _parser().parse_known_args(argv)
    claimed = False  # error logs go to the work directory only once this run has claimed it
    held, absl_logger = _HeldTracebacks(), logging.getLogger("absl")
    if not args.debug:
        absl_logger.addFilter(held)
    if args.command == "plan":
        from ast_jax.cli import plan

        plan.prepare_environment()  # before JAX starts its backends
    from ast_jax.engine import RunInterrupted

    try:
        from ast_jax.cli.config import load_config
        from ast_jax.engine.checkpoints import workdir_lock

        if args.command == "plan":
            return plan.main(args, overrides)
        if args.distributed:
            initialize_distributed()
        config = load_config(args.config, overrides)
        if getattr(args, "plan_only", False):
            from ast_jax.cli import plan

            return plan.plan_only(args, config)
        check_workdir(args.workdir)
        enable_compilation_cache()
        opened = open_command(args, config)
        claimed = True
        with workdir_lock(args.workdir):  # one run per work directory at a time
            run(args, opened)
    except RunInterrupted as stopped:  # SIGINT/SIGTERM: checkpoint saved, exit 130/143
        print(f"ast-jax: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except Exception as error:
        if args.debug:
            raise
        return _fail(error, argv, args.workdir if claimed else None, held.records)
    finally:
        absl_logger.removeFilter(held)
    for record in held.records:  # the command succeeded: show what was held back after all
        absl_logger.handle(record)
    return 0
