"""Ahead-of-time compilation of a study's programs for a mesh whose devices need not be attached.

XLA compiles for a target described by its topology alone (a TPU slice from libtpu, a GPU from its
target description): the programs are lowered from abstract inputs (`jax.ShapeDtypeStruct`s
carrying their sharding on the mesh; the state from `jax.eval_shape`), compiled, and their
compiler's memory and cost analyses read. Nothing runs and nothing is allocated; no I/O.

Counting conventions of XLA's analyses, which the numbers below inherit:
- memory (`compiled.memory_analysis()`): bytes per device of the arguments, outputs and temporary
  buffers, and the output bytes that alias a donated argument (`alias`); the program needs
  argument + output + temp - alias bytes of device memory.
- cost (`compiled.cost_analysis()`): FLOPs and bytes accessed per device, a `while` loop's body
  counted once. A scanned epoch's FLOPs are therefore those of one train step (and the epoch's
  shuffle); PGD's those of one PGD step on one batch; prediction's those of one batch.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ast_jax.data import AugmentSpec
from ast_jax.engine.loop import (
    AXIS,
    data_devices,
    make_mesh,
    make_pgd_attack,
    make_predict,
    make_train_epoch,
    make_train_step,
    padded_examples,
    run_partition,
)
from ast_jax.engine.policy import ExecutionPolicy
from ast_jax.engine.steps import SPARSE_KINDS, LossHypers, StepSpec, Teacher, init_state
from ast_jax.models.layers import lowering_platform

#: How an accelerator runs the programs (scanned epochs and PGD, vmapped runs): what is compiled here.
ACCELERATOR_POLICY = ExecutionPolicy(loop="scan", run_lowering="vmap", runs_per_program=None)


class OutOfDeviceMemoryError(ValueError):
    """The compiler refused a program: it needs more memory than the target's device has."""


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """What the compiler says of one program, per device (see the module docstring)."""

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    flops: float
    bytes_accessed: float
    compile_seconds: float

    @property
    def device_bytes(self) -> int:
        """Device memory the program needs: arguments + outputs + temporaries - donated outputs."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes


def abstract(tree, mesh: Mesh, spec: P = P()):
    """`tree`'s leaves (arrays or shape/dtype structs) as `ShapeDtypeStruct`s with sharding `spec` on `mesh`."""
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), tree)


def abstract_variables(model, image_shape, mesh: Mesh):
    """The variables of `model` on images of `image_shape` (H, W, C), abstract and replicated."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False))
    return abstract(shapes, mesh)


@dataclasses.dataclass(frozen=True)
class Program:
    """A program to compile: `jax.jit(fn, donate_argnums=donate_argnums)` on the abstract `args`."""

    fn: Callable
    args: tuple
    donate_argnums: tuple = ()


def compile_cost(build: Callable[[Mesh], Program], mesh: Mesh) -> ProgramCost:
    """Compile `build(mesh)` and read its analyses.

    Where the target's cost analysis counts no FLOPs (XLA:GPU's, compiling for a GPU that is not
    attached), the FLOPs and bytes accessed are those of the same program compiled for one host
    CPU device (traced for the target's platform, `models.layers.lowering_platform`), divided by the mesh's `data` devices (each does its share of the batch; the
    replicated optimizer update is counted once in all, so the FLOPs err low, as a lower bound may).
    Raises `OutOfDeviceMemoryError` with the compiler's words where it refuses the program for
    its memory (the TPU compiler does; a program it accepts may still exceed the device's memory:
    compare `ProgramCost.device_bytes`)."""
    platform = mesh.devices.flat[0].platform
    start = time.perf_counter()
    with lowering_platform(platform):  # the target's layers, though JAX's backend is the host's
        compiled = _compile(build(mesh))
    seconds = time.perf_counter() - start
    memory, cost = compiled.memory_analysis(), _cost(compiled)
    if "flops" not in cost:
        with lowering_platform(platform):
            host = _compile(build(host_mesh()))
        cost = {name: value / data_devices(mesh) for name, value in _cost(host).items()}
    return ProgramCost(memory.argument_size_in_bytes, memory.output_size_in_bytes, memory.temp_size_in_bytes,
                       memory.alias_size_in_bytes, float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                       seconds)


def host_mesh() -> Mesh:
    """The `data` mesh over the first host CPU device."""
    return make_mesh(jax.devices("cpu")[:1])


def _compile(program: Program):
    jitted = jax.jit(program.fn, donate_argnums=program.donate_argnums)
    try:
        return jitted.lower(*program.args).compile()
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        raise OutOfDeviceMemoryError(" ".join(str(error).split()).rstrip(".")) from error


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) and cost else cost) or {}
    return {name: cost[name] for name in ("flops", "bytes accessed") if name in cost}


def epoch_program(model, tx, spec: StepSpec, mesh: Mesh, *, num_examples: int, batch_size: int, image_shape,
                  num_classes: int, augment_spec: AugmentSpec, mean, std, teacher: Teacher | None = None,
                  pairing: str = "aligned", ood_examples: int = 0, runs: int = 1, adv_sets: int = 1,
                  targets: bool = False) -> Program:
    """A batch of `runs` runs' training epoch, as the engine trains every run (`runner.fit_batch`:
    `loop.make_train_epoch(..., batched=True)`, scanned, the state donated), on `num_examples`
    images of `image_shape`, with the inputs the step kind needs: the adversarial sets (ast;
    `adv_sets` distinct sets shared by the runs, `runner.distinct_arrays`, split over the devices
    along the examples as `runner.run_arrays` places them), the frozen teacher's
    variables (per run) and, without augmentation, its fixed logits (kd, nasty; as `runner` gives
    them) or given `targets` (a clone's transfer set, no teacher), the OOD set of `ood_examples`
    images (ini). The run axis is spread over the mesh's `run` axis where it has one."""
    epoch = make_train_epoch(model, tx, spec, mesh, batch_size=batch_size, augment_spec=augment_spec, mean=mean,
                             std=std, teacher=teacher, pairing=pairing, policy=ACCELERATOR_POLICY, batched=True)
    images = (num_examples, *image_shape)
    shared = {"images": jax.ShapeDtypeStruct(images, jnp.uint8),
              "labels": jax.ShapeDtypeStruct((num_examples,), jnp.int32)}
    per_run, split = {}, {}
    if spec.needs_adversarial:
        split["adv_images"] = jax.ShapeDtypeStruct((adv_sets, padded_examples(num_examples, mesh), *image_shape),
                                                   jnp.float32)
        per_run["adv_set"] = jax.ShapeDtypeStruct((runs,), jnp.int32)
    if spec.needs_ood:
        shared["ood_images"] = jax.ShapeDtypeStruct((ood_examples, *image_shape), jnp.float32)
    if targets or (spec.needs_teacher and augment_spec.is_identity and teacher is not None and not teacher.is_random):
        per_run["teacher_logits"] = jax.ShapeDtypeStruct((runs, num_examples, num_classes), jnp.float32)
    runs_spec = run_partition(mesh)
    teacher_variables = (abstract(_stacked(runs, abstract_variables(teacher.module, image_shape, mesh)), mesh, runs_spec)
                         if teacher is not None else None)
    state = jax.eval_shape(functools.partial(init_state, model, tx, jax.random.PRNGKey(0), image_shape))
    scalar = jax.ShapeDtypeStruct((runs,), jnp.float32)
    hypers = LossHypers(scalar, scalar, jax.ShapeDtypeStruct((runs,), jnp.int32) if spec.kind in SPARSE_KINDS else None)
    data = {**abstract(shared, mesh), **abstract(per_run, mesh, runs_spec), **abstract(split, mesh, P(None, AXIS))}
    per_run_args = abstract((_stacked(runs, state), jax.ShapeDtypeStruct((runs, 2), jnp.uint32), hypers), mesh,
                            runs_spec)  # the runs' loss values are data of the program
    state, key, hypers = per_run_args
    index = abstract(jax.ShapeDtypeStruct((), jnp.int32), mesh)
    return Program(lambda s, d, t, k, e, h: epoch(s, d, t, k, e, hypers=h),
                   (state, data, teacher_variables, key, index, hypers), donate_argnums=(0,))


def _stacked(runs: int, tree):
    """`tree`'s leaves (shape/dtype structs) with a leading axis of `runs`."""
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct((runs, *leaf.shape), leaf.dtype), tree)


def step_program(model, tx, spec: StepSpec, mesh: Mesh, *, batch_size: int, image_shape, num_classes: int) -> Program:
    """One train step (`loop.make_train_step`, the state donated) on a batch of `batch_size`
    images in model-input space with given target logits (`teacher_logits`): the step a loop
    outside the engine drives, as DFME's clone steps on the generator's images."""
    step = make_train_step(model, tx, spec, mesh)
    batch = {"image": jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
             "teacher_logits": jax.ShapeDtypeStruct((batch_size, num_classes), jnp.float32)}
    state = abstract(jax.eval_shape(functools.partial(init_state, model, tx, jax.random.PRNGKey(0), image_shape)), mesh)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    hypers = abstract(LossHypers(scalar, scalar), mesh)
    return Program(lambda s, b, h: step(s, b, None, None, h), (state, abstract(batch, mesh, P(AXIS)), hypers),
                   donate_argnums=(0,))


def pgd_program(model, mesh: Mesh, *, num_examples: int, image_shape, mean, std, batch_size: int, eps: float,
                step_size: float, steps: int, space: str = "pixel", random_start: bool = False) -> Program:
    """The PGD attack (`loop.make_pgd_attack`, scanned) over `num_examples` images."""
    attack = make_pgd_attack(model, mesh, batch_size=batch_size, mean=mean, std=std, eps=eps, step_size=step_size,
                             steps=steps, space=space, random_start=random_start, loop=ACCELERATOR_POLICY.loop)
    images = abstract(jax.ShapeDtypeStruct((num_examples, *image_shape), jnp.uint8), mesh)
    labels = abstract(jax.ShapeDtypeStruct((num_examples,), jnp.int32), mesh)
    key = abstract(jax.ShapeDtypeStruct((2,), jnp.uint32), mesh)
    return Program(attack, (abstract_variables(model, image_shape, mesh), images, labels, key))


def predict_program(model, mesh: Mesh, *, num_examples: int, image_shape, mean, std, batch_size: int) -> Program:
    """Inference (`loop.make_predict`, scanned) over `num_examples` images."""
    predict = make_predict(model, mesh, batch_size=batch_size, mean=mean, std=std, loop=ACCELERATOR_POLICY.loop)
    images = abstract(jax.ShapeDtypeStruct((num_examples, *image_shape), jnp.uint8), mesh)
    return Program(predict, (abstract_variables(model, image_shape, mesh), images))
