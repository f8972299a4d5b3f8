"""The ast_jax side, timed: the library's train step, training epoch and PGD adversarial set.

Everything runs on a one-device mesh (the PyTorch side uses one device too). The step is the
engine's: `ast_jax.engine.make_train_step` (`train_step` under `jax.shard_map`), jitted with the
state donated, compiled ahead of time so that its XLA cost analysis gives the FLOPs of the step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ast_jax import models
from ast_jax.engine import (
    ExecutionPolicy,
    Teacher,
    TrainSettings,
    TrainState,
    make_mesh,
    make_optimizer,
    make_pgd_attack,
    make_train_epoch,
    make_train_step,
    replicate,
)
from ast_jax.engine.loop import AXIS

from .common import (
    AUGMENT,
    LR,
    MEAN,
    MOMENTUM,
    PGD_EPS,
    PGD_STEP_SIZE,
    STD,
    WEIGHT_DECAY,
    Case,
    Data,
    Weights,
    median,
    time_calls,
    timed,
)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def device():
    return jax.devices()[0]


def _mesh():
    return make_mesh([device()])


def _model(name: str, num_classes: int, precision: str):
    return models.create(name, num_classes, DTYPES[precision], axis_name=AXIS)


def optimizer():
    """SGD, momentum 0.9, coupled weight decay 5e-4, constant learning rate (the library's `make_optimizer`)."""
    config = TrainSettings(optimizer="sgd", lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, milestones=(),
                           lr_decay=1.0, batch_size=1, eval_batch_size=1, epochs=1, checkpoint_every=1, eval_every=1)
    return make_optimizer(config, steps_per_epoch=1)


def fresh_state(tx, variables) -> TrainState:
    """A fresh train state from host variables (a new copy: every measurement donates its own)."""
    params = jax.tree.map(jnp.asarray, variables["params"])
    return TrainState(jnp.zeros((), jnp.int32), params, jax.tree.map(jnp.asarray, variables["batch_stats"]),
                      tx.init(params))


def _teacher(case: Case, model):
    return Teacher(model) if case.spec.needs_teacher else None


def peak_bytes():
    """Peak device memory of this process so far (`memory_stats`), None where not reported (CPU)."""
    stats = device().memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def measure_step(case: Case, weights: Weights, batch: dict[str, np.ndarray], *, iters: int, warmup: int) -> dict:
    """Median time of one jitted train step on a batch held on the device, its FLOPs and memory."""
    mesh, model, tx = _mesh(), _model(case.model, case.num_classes, case.precision), optimizer()
    step = jax.jit(make_train_step(model, tx, case.spec, mesh, _teacher(case, model)), donate_argnums=(0,))
    keys = ("image", "label", "adv_image") if case.spec.needs_adversarial else ("image", "label")
    batch = jax.device_put({k: batch[k] for k in keys}, NamedSharding(mesh, P(AXIS)))
    teacher_variables = replicate(mesh, weights.teacher) if case.spec.needs_teacher else None
    state = replicate(mesh, fresh_state(tx, weights.student))
    hypers = replicate(mesh, case.hypers)
    compiled = step.lower(state, batch, teacher_variables, None, hypers).compile()

    def call():
        nonlocal state
        state, metrics = compiled(state, batch, teacher_variables, None, hypers)
        jax.block_until_ready((state, metrics))

    times = time_calls(call, iters=iters, warmup=warmup)
    memory = compiled.memory_analysis()
    return {"times_s": times, "median_s": median(times), "flops": compiled.cost_analysis()["flops"],
            "compiled_bytes": memory.argument_size_in_bytes + memory.output_size_in_bytes
            + memory.temp_size_in_bytes - memory.alias_size_in_bytes,
            "peak_bytes": peak_bytes()}


def measure_epoch(case: Case, weights: Weights, data: Data) -> dict:
    """Time of one training epoch of `make_train_epoch` (the engine's input path: gather, augment and
    normalise the uint8 set held on the device) after one warm-up epoch."""
    mesh, model, tx = _mesh(), _model(case.model, case.num_classes, case.precision), optimizer()
    train_epoch = make_train_epoch(model, tx, case.spec, mesh, batch_size=case.batch_size, augment_spec=AUGMENT,
                                   mean=MEAN, std=STD, teacher=_teacher(case, model))
    arrays = {"images": data.images, "labels": data.labels}
    if case.spec.needs_adversarial:
        arrays["adv_images"] = data.adv_images
    arrays = replicate(mesh, arrays)
    teacher_variables = replicate(mesh, weights.teacher) if case.spec.needs_teacher else None
    key = jax.random.key(0)
    state = replicate(mesh, fresh_state(tx, weights.student))
    hypers = replicate(mesh, case.hypers)

    def epoch(index):
        nonlocal state
        state, metrics = train_epoch(state, arrays, teacher_variables, key, index, hypers=hypers)
        jax.block_until_ready((state, metrics))

    epoch(0)
    return {"epoch_s": timed(lambda: epoch(1)), "epoch_loop": ExecutionPolicy.current().loop}


def measure_pgd(name: str, num_classes: int, precision: str, weights: Weights, data: Data, *, batch_size: int,
                steps: int) -> dict:
    """Time of `make_pgd_attack` (PGD, thesis settings, pixel space) over the whole set, after one
    untimed run of the same call (compilation).

    XLA's cost analysis counts a loop body once, so the FLOPs are those of a one-step attack on
    one batch times `steps` times the number of batches (the last one padded, as the attack pads it).
    """
    mesh, model = _mesh(), _model(name, num_classes, precision)
    variables = replicate(mesh, weights.student)
    key = jax.random.key(0)

    def attack(num_steps, loop=None):
        return make_pgd_attack(model, mesh, batch_size=batch_size, mean=MEAN, std=STD, eps=PGD_EPS,
                               step_size=PGD_STEP_SIZE, steps=num_steps, loop=loop)

    one_step = attack(1, loop="scan").lower(variables, data.images[:batch_size], data.labels[:batch_size], key)
    flops = one_step.compile().cost_analysis()["flops"] * steps * -(-len(data) // batch_size)
    run = functools.partial(attack(steps), variables, *replicate(mesh, (data.images, data.labels)), key)
    jax.block_until_ready(run())
    return {"seconds": timed(lambda: jax.block_until_ready(run())), "flops": flops, "peak_bytes": peak_bytes(),
            "loop": ExecutionPolicy.current().loop}
