"""`ast-jax plan`: compile a study's programs for an accelerator that is not attached and report
their memory, FLOPs and a roofline lower bound on their time.

The programs are compiled on the host, from abstract inputs (`ast_jax.engine.aot`), for a TPU
slice described by libtpu's topology (`pip install -e '.[tpu]'`) or for GPUs described to
XLA:GPU by their public figures (`pip install 'jax[cuda12]'`), through
`jax.experimental.topologies`. Nothing is trained and no data is read: the training-set sizes
are the data sets' published ones (`TRAIN_IMAGES`) or `config.data.train_examples`.

The time of a program is bounded below by the roofline, max(FLOPs / peak FLOP/s, bytes accessed
/ memory bandwidth), per device; the study's estimate adds up steps × bound over its stages. It
is a lower bound, not a measurement: real steps also wait on launches, collectives and the host.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
import types

#: Training / test images of each data set, as published (digits: the fixed stratified split).
TRAIN_IMAGES = {"digits": 1437, "fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000,
                "tiny_imagenet": 100_000}
TEST_IMAGES = {"digits": 360, "fashion_mnist": 10_000, "cifar10": 10_000, "cifar100": 10_000, "tiny_imagenet": 10_000}

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Target:
    """An accelerator slice: how to describe it to the compiler and its public figures per
    device (JAX device).

    TPU figures from Google's public specification pages (dense), per chip: v5e 197 TFLOP/s
    bf16, 819 GB/s HBM, 16 GiB (one device per chip); v4 275 TFLOP/s bf16, 1,200 GB/s, 32 GiB,
    halved here because libtpu's v4 topology has one device per TensorCore (two per chip). No
    fp32 peak is published for TPUs; XLA runs float32 matrix products on the matrix units in
    bf16 passes at its default precision, so the bf16 peak stands for both.
    GPU figures from NVIDIA's public data sheets (dense, SXM): A100 80GB 312 TFLOP/s bf16, 156
    TFLOP/s TF32, 2.039 TB/s; H100 80GB 989 TFLOP/s bf16, 494 TFLOP/s TF32, 3.35 TB/s. XLA
    multiplies float32 matrices in TF32 at its default precision, so TF32 stands for float32.
    Either way a peak at least the real one keeps the bound a lower bound.
    """

    name: str  # as `--target` names it
    platform: str  # "tpu", "cuda", or "attached" (the devices JAX sees: `attached_target`)
    topology: str  # libtpu's topology name, the GPU topology "slices x hosts x devices", or the device kind
    memory_bytes: int | None  # None: not known (the host CPU), no memory check
    peak_flops: dict | None  # dtype name -> FLOP/s per device (None: not known, no roofline bound)
    bandwidth: float | None  # HBM bytes/s per device
    gpu: dict | None = None  # the GPU's `gpu_device_info` for XLA's GpuTargetConfigProto
    device_kind: str = ""  # how JAX names an attached device of this kind (`attached_target`)


def _a100_h100(compute_capability, sms, smem_per_sm_kib, bandwidth, l2_mib, clock_ghz, fp32_per_sm, name):
    """A GPU's description for the compiler (public figures: NVIDIA's data sheet and the CUDA
    programming guide's limits for its compute capability)."""
    return {"cuda_compute_capability": compute_capability, "threads_per_block_limit": 1024, "threads_per_warp": 32,
            "shared_memory_per_block": 48 * 1024, "shared_memory_per_core": smem_per_sm_kib * 1024,
            "shared_memory_per_block_optin": (smem_per_sm_kib - 1) * 1024, "threads_per_core_limit": 2048,
            "core_count": sms, "fpus_per_core": fp32_per_sm, "block_dim_limit_x": 2 ** 31 - 1,
            "block_dim_limit_y": 65535, "block_dim_limit_z": 65535, "memory_bandwidth": int(bandwidth),
            "l2_cache_size": l2_mib * 2 ** 20, "clock_rate_ghz": clock_ghz, "device_memory_size": 80 * GIB,
            "name": name}


_V5E = dict(memory_bytes=16 * GIB, peak_flops={"bfloat16": 197e12, "float32": 197e12}, bandwidth=819e9,
            device_kind="TPU v5 lite")
_V4 = dict(memory_bytes=16 * GIB, peak_flops={"bfloat16": 137.5e12, "float32": 137.5e12}, bandwidth=600e9,
           device_kind="TPU v4")
_A100 = dict(memory_bytes=80 * GIB, peak_flops={"bfloat16": 312e12, "float32": 156e12}, bandwidth=2.039e12,
             gpu=_a100_h100((8, 0), 108, 164, 2.039e12, 40, 1.41, 64, "A100-SXM4-80GB"), device_kind="A100")
_H100 = dict(memory_bytes=80 * GIB, peak_flops={"bfloat16": 989e12, "float32": 494e12}, bandwidth=3.35e12,
             gpu=_a100_h100((9, 0), 132, 228, 3.35e12, 50, 1.98, 128, "H100-SXM5-80GB"), device_kind="H100")
TARGETS = {
    "tpu:v5e:2x2": Target("tpu:v5e:2x2", "tpu", "v5e:2x2", **_V5E),
    "tpu:v5e:2x4": Target("tpu:v5e:2x4", "tpu", "v5e:2x4", **_V5E),
    "tpu:v4:2x2x2": Target("tpu:v4:2x2x2", "tpu", "v4:2x2x2", **_V4),
    "gpu:a100:8": Target("gpu:a100:8", "cuda", "1x1x8", **_A100),
    "gpu:h100:8": Target("gpu:h100:8", "cuda", "1x1x8", **_H100),
    "gpu:h100:16": Target("gpu:h100:16", "cuda", "1x2x8", **_H100),  # two hosts of 8: a multi-process mesh
}
#: What each platform's compiler needs installed, and how to install it.
COMPILERS = {"tpu": ("libtpu", "pip install -e '.[tpu]'"), "cuda": ("jax_plugins.xla_cuda12", "pip install 'jax[cuda12]'")}


def gpu_target_config(gpu: dict) -> str:
    """XLA's GpuTargetConfigProto, text format, for a GPU described by `gpu` (`Target.gpu`)."""
    info = {key: value for key, value in gpu.items() if key not in ("cuda_compute_capability", "name")}
    major, minor = gpu["cuda_compute_capability"]
    fields = "".join(f"  {key}: {value}\n" for key, value in info.items())
    return (f"gpu_device_info {{\n  cuda_compute_capability {{ major: {major} minor: {minor} }}\n{fields}}}\n"
            f'platform_name: "CUDA"\ndnn_version_info {{ major: 9 minor: 8 patch: 0 }}\n'
            f'device_description_str: "{gpu["name"]}"\n')


class DoesNotFitError(ValueError):
    """A program needs more device memory than the target has (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class PlannedProgram:
    """One compiled program of the study and how often the study runs its counted unit."""

    name: str
    cost: object  # aot.ProgramCost
    repeats: int  # steps (epochs), PGD steps x batches, or batches (prediction) the study runs
    bound_seconds: float | None  # the roofline lower bound of one counted unit (None: the device's figures unknown)


def target_mesh(target: Target, run_devices: int = 1):
    """The mesh over the devices of `target`'s topology (every process's devices; `loop.make_mesh`)."""
    import jax
    from jax.experimental import topologies

    from ast_jax.engine.loop import make_mesh

    if target.platform == "attached":
        return make_mesh(jax.devices(), run_devices)
    try:
        if target.platform == "cuda":
            topology = topologies.get_topology_desc(platform="cuda", topology=target.topology,
                                                    target_config=gpu_target_config(target.gpu))
        else:
            topology = topologies.get_topology_desc(topology_name=target.topology, platform=target.platform)
    except jax.errors.JaxRuntimeError as error:
        raise ValueError(f"target {target.name}: the compiler cannot describe the {target.topology} topology "
                         f"({' '.join(str(error).split())}); plan a single-host target instead") from error
    return make_mesh(topology.devices, run_devices)


def compiler_installed(platform: str) -> bool:
    """Whether the compiler for `platform` ("tpu", "cuda") can be imported (`COMPILERS`)."""
    module = COMPILERS[platform][0]
    return importlib.util.find_spec(module.split(".")[0]) is not None and importlib.util.find_spec(module) is not None


def resolve_target(name: str) -> Target:
    """The target called `name`; ValueError if unknown or if its compiler is not installed."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; use one of {', '.join(TARGETS)}")
    target = TARGETS[name]
    module, install = COMPILERS[target.platform]
    if not compiler_installed(target.platform):
        raise ValueError(f"target {name} needs its compiler ({module}): {install}")
    return target


def attached_target() -> Target:
    """The devices JAX sees (`--plan-only`): their memory from the runtime where it tells
    (`memory_stats()['bytes_limit']`; the host CPU does not: no memory check), their peak figures
    from `TARGETS` where the device kind is one of theirs (else no roofline bound)."""
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    known = next((t for t in TARGETS.values() if t.device_kind and t.device_kind in device.device_kind), None)
    return Target(f"attached:{device.platform}:{jax.device_count()}", "attached", device.device_kind,
                  stats.get("bytes_limit"), known.peak_flops if known else None, known.bandwidth if known else None)


def roofline_seconds(cost, target: Target, dtype: str) -> float | None:
    """max(FLOPs / peak FLOP/s, bytes accessed / bandwidth): a lower bound on one unit's time (None: figures unknown)."""
    if target.peak_flops is None:
        return None
    return max(cost.flops / target.peak_flops[dtype], cost.bytes_accessed / target.bandwidth)


def plan_study(config, target: Target, mesh, log=print, *, runs: int = 1, adv_sets: int = 1) -> list[PlannedProgram]:
    """Compile every program the study of `config` (`StudySettings`) runs for `mesh`; count how often each runs.

    Rows: each trained teacher's epoch, each student's epoch (the count: one run per teacher),
    the PGD set (with an AST teacher), prediction (evaluation every `eval_every` epochs of each
    stage; the teachers' fixed logits for kd and nasty, one more pass over the training set per
    run, are not counted) and the clone of each attack of `config.matrix.attacks` with DFME's
    generator update (`ast-jax matrix`: once per victim and seed; `clone_programs`). Every
    training program trains a batch of `runs` runs (the engine's run batching: `--seeds`, a
    sweep's cells), the AST teachers' holding `adv_sets` distinct adversarial sets; its units
    are the study's steps, each training the `runs` runs at once. Refuses, with `DoesNotFitError`, the first program that needs more
    than the target's memory.
    """
    import jax.numpy as jnp

    from ast_jax import models
    from ast_jax.data import dataset_spec
    from ast_jax.engine import Teacher, aot, make_optimizer
    from ast_jax.engine.loop import AXIS, steps_per_epoch
    from ast_jax.studies.stages import distill_spec, teacher_spec

    dataset = dataset_spec(config.data.name)
    num_train = config.data.train_examples or TRAIN_IMAGES[config.data.name]
    num_test = TEST_IMAGES[config.data.name]
    dtype = jnp.dtype(config.dtype)
    augment = config.data.augment
    specs = types.SimpleNamespace(config=config, num_classes=dataset.num_classes)  # what the step builders read
    shape, stats = dataset.image_shape, dict(mean=dataset.mean, std=dataset.std)

    def model(architecture, self_distilling=False):
        create = models.create_self_distilling if self_distilling else models.create
        return create(architecture, dataset.num_classes, dtype, axis_name=AXIS)

    planned = []

    def add(name, build, repeats, knob):
        """Compile `build(mesh)` (an `aot.Program`) and plan it, or refuse it if it does not fit."""
        try:
            cost = aot.compile_cost(build, mesh)
        except aot.OutOfDeviceMemoryError as error:
            raise DoesNotFitError(f"{name} does not fit {target.name}'s device memory ({error}); lower {knob} "
                                  f"or use a smaller config.dtype") from error
        if target.memory_bytes is not None and cost.device_bytes > target.memory_bytes:
            raise DoesNotFitError(
                f"{name} needs {cost.device_bytes / GIB:.2f} GiB per device, {target.name} has "
                f"{target.memory_bytes / GIB:.2f} GiB: lower {knob} or use a smaller config.dtype")
        planned.append(PlannedProgram(name, cost, repeats, roofline_seconds(cost, target, dtype.name)))
        log(f"compiled {name} in {cost.compile_seconds:.1f}s")

    def evaluations(train_config):
        return -(-train_config.epochs // max(train_config.eval_every, 1)) * steps_per_epoch(
            num_test, train_config.eval_batch_size)

    def train(name, architecture, train_config, spec, stages, knob, **kwargs):
        tx = make_optimizer(train_config, steps_per_epoch(num_train, train_config.batch_size))
        add(name, lambda mesh: aot.epoch_program(model(architecture), tx, spec, mesh, num_examples=num_train,
                                                 batch_size=train_config.batch_size, image_shape=shape,
                                                 num_classes=dataset.num_classes, augment_spec=augment, runs=runs,
                                                 **stats, **kwargs),
            stages * train_config.epochs * steps_per_epoch(num_train, train_config.batch_size), knob)

    teacher_arch = config.teacher.model
    trained = [name for name in config.teachers
               if name != "stingy" and not (name == "base" and config.teacher.torch_checkpoint)]
    for name in trained:
        kwargs = {}
        if name in ("nasty", "ini"):  # the frozen base teacher; InI's frozen, untrained clone
            kwargs = {"teacher": Teacher(model(teacher_arch))}
        if name == "ini":
            kwargs["ood_examples"] = config.ini.ood_images
        if name == "ast":
            kwargs = {"pairing": config.ast.pairing, "adv_sets": adv_sets}
        train(f"{name} teacher ({teacher_arch})", teacher_arch, config.teacher_train_for(name),
              teacher_spec(specs, name), 1, "config.train.batch_size", **kwargs)
    for architecture in config.students:
        train(f"kd students ({architecture})", architecture, config.train_for(architecture),
              distill_spec(specs, "base"), len(config.teachers), f"config.student_train.{architecture}.batch_size",
              teacher=Teacher(model(teacher_arch)))
    if "ast" in config.teachers:
        pgd = config.pgd
        add(f"pgd ({teacher_arch})",
            lambda mesh: aot.pgd_program(model(teacher_arch), mesh, num_examples=num_train, image_shape=shape,
                                 batch_size=pgd.batch_size, eps=pgd.eps, step_size=pgd.step_size, steps=pgd.steps,
                                 space=pgd.space, random_start=pgd.random_start, **stats),
            pgd.steps * steps_per_epoch(num_train, pgd.batch_size), "config.pgd.batch_size")
    eval_batch = config.train.eval_batch_size
    runs_trained = ([config.teacher_train_for(name) for name in trained]
                    + [config.train_for(a) for a in config.students for _ in config.teachers])
    add(f"predict ({teacher_arch})",
        lambda mesh: aot.predict_program(model(teacher_arch), mesh, num_examples=num_test, image_shape=shape,
                                 batch_size=eval_batch, **stats),
        sum(evaluations(run) for run in runs_trained), "config.train.eval_batch_size")
    cells = len(config.matrix.victims) * len(config.matrix.seeds)
    for name, (build, units, knob) in clone_programs(config, model, num_train, shape, dataset.num_classes,
                                                     stats).items():
        add(name, build, cells * units, knob)
    return planned


def clone_programs(config, model, num_train: int, image_shape, num_classes: int, stats) -> dict:
    """{program name: (build(mesh) -> aot.Program, units per matrix cell, the knob)} of the clones
    the attacks of `config.matrix.attacks` train (docs/method.md §10.3, §10.6): kd, knockoff and
    jbda train an epoch on their transfer set without augmentation from the released targets
    (`attacks.transfer.clone_step`; kd and its adaptive forms on the attacker's `budget` share,
    jbda at its last round's size, its units summed over the rounds); the Skeptical Student trains
    the self-distilling clone's epoch on its share (`attacks.skeptical`); dfme trains single clone
    steps on the generator's batch and, once per iteration, the generator's update
    (`attacks.dfme.make_generator_update`, the clone's forward pass on the N·(m+1) probes and G's
    pull-back; G's own forward passes for the probes and the clone batches are parts of it, and
    the victim's answers are the prediction program's)."""

    from ast_jax.attacks import dfme as dfme_attack
    from ast_jax.attacks.common import attacker_indices
    from ast_jax.attacks.skeptical import SkepticalObjective
    from ast_jax.attacks.transfer import clone_step, clone_training
    from ast_jax.data import AugmentSpec
    from ast_jax.engine import StepSpec, aot, make_optimizer
    from ast_jax.engine.loop import steps_per_epoch

    architecture = config.matrix.clone or config.teacher.model
    clone = model(architecture)
    programs = {}
    for cell in config.matrix.attacks:
        settings = dict(config.attacks[cell])
        kind, knob = settings["kind"], f"config.attacks.{cell}.batch_size"
        if kind == "dfme":
            spec, _ = dfme_attack.clone_objective(settings["variant"])
            tx = dfme_attack.clone_optimizer(settings)
            iterations = dfme_attack.schedule_plan(settings)[0]
            programs[f"clone {cell} ({architecture})"] = (
                lambda mesh, spec=spec, tx=tx, b=settings["batch_size"]: aot.step_program(
                    clone, tx, spec, mesh, batch_size=b, image_shape=image_shape, num_classes=num_classes),
                iterations * settings["clone_steps"], knob)
            programs[f"generator {cell} ({architecture})"] = (
                lambda mesh, settings=settings: _generator_program(settings, clone, mesh, image_shape, num_classes),
                iterations, knob)
            continue
        training = clone_training(settings)
        batch = training.batch_size
        if kind in ("kd", "kd_hard", "kd_retemper", "skeptical"):
            share = len(attacker_indices(num_train, settings["budget"], 0, f"config.attacks.{cell}.budget"))
            sizes, tx_steps = [share] * training.epochs, steps_per_epoch(share, batch)
            spec, network = StepSpec("kd"), clone
            if kind == "skeptical":
                trunk = settings.get("clone") or architecture
                network = model(trunk, self_distilling=True)
                spec = StepSpec("skeptical", objective=SkepticalObjective(
                    float(settings["temperature"]), float(settings["omega"]), settings["kd_delay"] * tx_steps))
        elif kind == "knockoff":
            spec, network = clone_step(settings["labels"])[0], clone
            sizes = [settings["budget"]] * training.epochs
            tx_steps = steps_per_epoch(settings["budget"], batch)
        else:  # jbda: the set doubles each round, one optimizer at a constant lr across the rounds
            spec, network = clone_step(settings["labels"])[0], clone
            sizes = [settings["seeds"] * 2 ** r for r in range(settings["rounds"]) for _ in range(training.epochs)]
            training = dataclasses.replace(training, schedule="multistep", milestones=())
            tx_steps = 1
        tx, largest = make_optimizer(training, tx_steps), max(sizes)
        name = f"clone {cell} ({settings.get('clone') or architecture}, self-distilling)" if kind == "skeptical" \
            else f"clone {cell} ({architecture})"
        programs[name] = (lambda mesh, network=network, spec=spec, tx=tx, n=largest, b=batch: aot.epoch_program(
            network, tx, spec, mesh, num_examples=n, batch_size=b, image_shape=image_shape, num_classes=num_classes,
            augment_spec=AugmentSpec(), targets=spec.kind != "ce", **stats),
            sum(steps_per_epoch(n, batch) for n in sizes), knob)
    return programs


def _generator_program(settings, clone, mesh, image_shape, num_classes: int):
    """DFME's generator update (`attacks.dfme.make_generator_update`) on abstract inputs, replicated
    on the mesh as the attack runs it."""
    import jax
    import jax.numpy as jnp

    from ast_jax.attacks import dfme as dfme_attack
    from ast_jax.engine import aot

    batch, m = settings["batch_size"], settings["directions"]
    generator = dfme_attack.Generator(tuple(image_shape), settings["ngf"])
    g_params = jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0), jnp.zeros((2, settings["nz"])))["params"])
    g_opt = jax.eval_shape(dfme_attack.generator_optimizer(settings).init, g_params)
    inputs = (g_params, g_opt, jax.ShapeDtypeStruct((2,), jnp.uint32), jax.ShapeDtypeStruct((), jnp.int32),
              jax.ShapeDtypeStruct((m + 1, batch, *image_shape), jnp.float32),
              jax.ShapeDtypeStruct(((m + 1) * batch, num_classes), jnp.float32))
    g_params, g_opt, key, iteration, points, released = aot.abstract(inputs, mesh)
    update = dfme_attack.make_generator_update(generator, clone, settings, num_classes)
    return aot.Program(update, (g_params, g_opt, aot.abstract_variables(clone, image_shape, mesh), key, iteration,
                                points, released), donate_argnums=(0, 1))


def study_lower_bound(planned: list[PlannedProgram]) -> float | None:
    """Σ over the programs of units × roofline bound per unit: seconds of device time, at least
    (None where the device's figures are unknown)."""
    if any(p.bound_seconds is None for p in planned):
        return None
    return sum(p.repeats * p.bound_seconds for p in planned)


def format_rows(planned: list[PlannedProgram], target: Target) -> list[str]:
    """A table of the programs (bytes per device, FLOPs per counted unit) and the study's lower bound."""
    header = (f"{'program':<28}{'argument':>10}{'output':>10}{'temp':>10}{'alias':>10}{'total':>10}{'of':>8}"
              f"{'GFLOP/unit':>12}{'bound/unit':>12}{'units':>9}{'compile':>9}")
    lines = [header]
    mib = 2 ** 20
    for p in planned:
        c = p.cost
        share = f"{c.device_bytes / target.memory_bytes:>8.2%}" if target.memory_bytes else f"{'n/a':>8}"
        bound = f"{p.bound_seconds * 1e6:>10.1f}us" if p.bound_seconds is not None else f"{'n/a':>12}"
        lines.append(f"{p.name:<28}{c.argument_bytes / mib:>9.1f}M{c.output_bytes / mib:>9.1f}M{c.temp_bytes / mib:>9.1f}M"
                     f"{c.alias_bytes / mib:>9.1f}M{c.device_bytes / mib:>9.1f}M{share}"
                     f"{c.flops / 1e9:>12.3f}{bound}{p.repeats:>9}{c.compile_seconds:>8.1f}s")
    total = study_lower_bound(planned)
    lines.append(f"study on {target.name}: at least {total:.2f} s of device time (a roofline lower bound from the "
                 f"compiler's counts, not a measurement)" if total is not None else
                 f"study on {target.name}: no roofline bound ({target.topology}: peak FLOP/s and bandwidth unknown)")
    return lines


def to_json(planned: list[PlannedProgram], target: Target) -> dict:
    return {"target": target.name, "device_memory_bytes": target.memory_bytes,
            "programs": [{"name": p.name, **dataclasses.asdict(p.cost), "device_bytes": p.cost.device_bytes,
                          "units": p.repeats, "bound_seconds_per_unit": p.bound_seconds} for p in planned],
            "study_lower_bound_seconds": study_lower_bound(planned)}


def prepare_environment() -> None:
    """Compile on the host CPU for a TPU or GPU that is not attached (set before JAX starts its
    backends): no query for the TPU VM's metadata, no claim on libtpu's one-process lock file (with
    no TPU to share, plans may run side by side), and no check of the CUDA driver's version (with
    no GPU, `cuInit` fails and the CUDA plugin would not register its topologies)."""
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def report(config, target: Target, mesh, json_path: str | None = None, **batch) -> int:
    """Plan `config` for `target` on `mesh` (`plan_study`, `batch`: its runs and adv_sets), print
    the table and write the JSON to `json_path` if given. A program that does not fit raises
    `DoesNotFitError`, a one-line error with exit status 2 in `commands.main`."""
    planned = plan_study(config, target, mesh, log=lambda m: print(m, file=sys.stderr), **batch)
    print("\n".join(format_rows(planned, target)))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(to_json(planned, target), f, indent=2)
    return 0


def main(args, overrides) -> int:
    """`ast-jax plan --config C --target T [--json FILE] [--runs R [--adv-sets S]]`: the study's programs for target T."""
    from ast_jax.cli.config import load_settings

    if args.adv_sets is not None and args.adv_sets > args.runs:
        raise ValueError(f"--adv-sets {args.adv_sets} exceeds --runs {args.runs}: a batch of runs holds at most one "
                         f"adversarial set per run")
    target = resolve_target(args.target)
    config = load_settings(args.config, overrides)
    return report(config, target, target_mesh(target), args.json, runs=args.runs, adv_sets=args.adv_sets or args.runs)


def command_batch(args, config) -> tuple[object, int, int]:
    """(the settings to plan, runs per program, distinct adversarial sets among them) of the largest
    batch `ast-jax pipeline`, `sweep` or `matrix` trains (`args.command`): a sweep's AST teachers,
    one per cell and seed, holding one set per seed and PGD setting of the grid; the studies of
    `pipeline --seeds`, one set each; one run otherwise. Capped by the backend's `runs_per_program`."""
    import copy

    import jax

    from ast_jax.cli.config import to_settings
    from ast_jax.engine import ExecutionPolicy
    from ast_jax.studies.sweep import grid_cells

    runs = adv_sets = 1
    if args.command == "sweep":
        from ast_jax.cli.config import parse_grid

        cells, seeds = grid_cells(parse_grid(args.grid or config.sweep.grid)), args.seeds or config.sweep.seeds
        pgd_settings = {tuple((k, v) for k, v in cell.items() if k.startswith("pgd.")) for cell in cells}
        runs, adv_sets = len(cells) * len(seeds), len(pgd_settings) * len(seeds)
        config = copy.deepcopy(config)
        config.teachers = ("base", "ast")  # the seeds' base teachers and the cells' AST teachers
    elif args.command == "pipeline" and args.seeds:
        runs = adv_sets = len(args.seeds)
    limit = ExecutionPolicy.for_backend(jax.default_backend()).runs_per_program
    runs = min(runs, limit or runs)
    return to_settings(config), runs, min(adv_sets, runs)


def plan_only(args, config) -> int:
    """`--plan-only` of `pipeline`, `sweep` and `matrix`: the same plan (`report`) for the devices
    JAX sees (`attached_target`), at the command's largest batch of runs (`command_batch`) over its
    `--run-devices`; nothing is written (the JSON only where `--json` names a file)."""

    config, runs, adv_sets = command_batch(args, config)
    target = attached_target()
    mesh = target_mesh(target, math.gcd(runs, getattr(args, "run_devices", 1)))
    return report(config, target, mesh, runs=runs, adv_sets=adv_sets)
