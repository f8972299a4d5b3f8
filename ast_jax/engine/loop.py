"""Jitted, data-parallel programs: one training epoch, evaluation, the PGD adversarial set.

The data of a split lives on the devices as one uint8 array, replicated; the adversarial set,
a float array several times larger, is split over the devices along the examples
(`shard_examples`; the PGD program writes it so, `make_pgd_attack`). On accelerators an
epoch is one jitted call: a `lax.scan` over its steps that gathers each batch by a permutation
drawn from (seed, epoch) (`epoch_plan`: every example once, the last batch padded and
masked), augments and normalises it, and runs the train step under
`jax.shard_map` over the mesh axis `data` (gradients and BatchNorm statistics averaged with
`lax.pmean`). The state is donated: no host round trip per step. (On CPU the same step body
runs from a host loop; see `policy.ExecutionPolicy`.) Per-example randomness depends only on
(seed, epoch, step, position in the global batch), so a step on N devices equals the 1-device step up to float32
rounding of the differently ordered gradient sums (about 1e-7); that rounding is carried into
later steps, so a long run agrees closely but not bit for bit (tests/test_parallel.py).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ast_jax import adversarial
from ast_jax.data import AugmentSpec, augment, normalize, to_unit_float
from ast_jax.engine.policy import LOOPS, ExecutionPolicy
from ast_jax.engine.steps import PAIRINGS, StepSpec, Teacher, TrainState, train_step
from ast_jax.rng import Stream

AXIS = "data"
#: The mesh axis a batch of runs (`make_train_epoch(..., batched=True)`) is spread over.
RUN_AXIS = "run"
#: Per-run arrays of a batched epoch's `data` (a leading run axis); the other arrays are shared.
#: A batch's adversarial sets are shared: `adv_images` holds each distinct set once, (S, N, H, W, C),
#: and `adv_set` (R,) the set of each run (the runs of a sweep's cells at one seed attack one set).
RUN_ARRAYS = ("adv_set", "teacher_logits")


def make_mesh(devices=None, run_devices: int = 1) -> Mesh:
    """A mesh over `devices` (default: every device of every process).

    With `run_devices` = 1 it is 1-D, named `data`; otherwise 2-D, (`run`, `data`) of shape
    (run_devices, devices / run_devices): a batch of runs is split over `run`, each run's batch
    over `data`. `run_devices` must divide the number of devices.
    """
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    check_run_devices(run_devices, devices.size)
    if run_devices == 1:
        return Mesh(devices, (AXIS,))
    return Mesh(devices.reshape(run_devices, -1), (RUN_AXIS, AXIS))


def check_run_devices(run_devices: int, devices: int) -> None:
    """ValueError unless `run_devices` groups of devices split `devices` devices evenly."""
    if run_devices < 1 or devices % run_devices:
        raise ValueError(f"run_devices={run_devices} (--run-devices) must divide the {devices} devices; "
                         f"pick a divisor of {devices}")


def data_devices(mesh: Mesh) -> int:
    """How many devices one run's batch is split over (the size of the mesh axis `data`)."""
    return mesh.shape[AXIS]


def run_devices(mesh: Mesh) -> int:
    """How many devices a batch of runs is split over (1 without a `run` axis)."""
    return mesh.shape.get(RUN_AXIS, 1)


def run_partition(mesh: Mesh, *axes) -> P:
    """The partition of an array with a leading run axis (over `run` if the mesh has one)."""
    return P(RUN_AXIS if RUN_AXIS in mesh.axis_names else None, *axes)


def replicate(mesh: Mesh, tree):
    """Place a pytree of host arrays on every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def to_host(array) -> np.ndarray:
    """A (possibly data-sharded, multi-host) array as one host NumPy array on every process.

    `np.asarray` fails on an array with shards on another host's devices; there the shards are
    gathered with `multihost_utils.process_allgather` first.
    """
    if jax.process_count() == 1:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    devices = data_devices(mesh)
    if batch_size % devices:
        raise ValueError(f"{name}={batch_size} must be divisible by the number of devices ({devices}); "
                         f"pick a multiple of {devices}")


def _shard_batch(mesh: Mesh, tree, batched: bool = False):
    spec = run_partition(mesh, AXIS) if batched else P(AXIS)
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, spec))


def over_runs(fn: Callable, lowering: str) -> Callable:
    """`fn` mapped over the leading run axis of all its arguments and results, by `lowering`
    (`policy.RUN_LOWERINGS`: `vmap`, or `unroll`: one copy of `fn` per run)."""
    if lowering == "vmap":
        return jax.vmap(fn)

    def unrolled(*args):
        count = jax.tree.leaves(args)[0].shape[0]
        results = [fn(*jax.tree.map(lambda x, r=r: x[r], args)) for r in range(count)]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *results)

    return unrolled


def _resolve_loop(loop: str | None) -> str:
    """`loop` (one of `policy.LOOPS`), or the current backend's (`ExecutionPolicy.current`) for None."""
    if loop is None:
        return ExecutionPolicy.current().loop
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    return loop


def _check_pairing(pairing: str) -> None:
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """ceil(N / B): an epoch uses every example, its last batch padded (see `epoch_rows`)."""
    return -(-int(num_examples) // int(batch_size))


def epoch_rows(key, num_examples: int, batch_size: int):
    """A random permutation of range(num_examples) in ceil(N / B) rows of B, and their mask.

    Returns `(rows, mask)`, both (steps, batch_size): every example appears exactly once where
    `mask` is True; the last row is filled up with repeats of the permutation's first entries
    (real images, so every forward pass stays finite), marked False. The reference keeps each
    epoch's last partial batch (50,000 = 390 x 128 + 80); the padding keeps the shapes static.
    """
    num_examples, batch_size = int(num_examples), int(batch_size)
    if num_examples <= 0 or batch_size <= 0:
        raise ValueError(f"need examples and a positive batch size, got {num_examples} examples, "
                         f"batch_size={batch_size}")
    steps = steps_per_epoch(num_examples, batch_size)
    positions = jnp.arange(steps * batch_size)
    rows = jax.random.permutation(key, num_examples)[positions % num_examples].astype(jnp.int32)
    return rows.reshape(steps, batch_size), (positions < num_examples).reshape(steps, batch_size)


def epoch_plan(key, epoch, num_examples: int, batch_size: int, pairing: str):
    """An epoch's augmentation key and (steps, batch) rows of clean and adversarial images, and
    the mask of the valid positions (`epoch_rows`).

    `aligned` pairs clean image i with adversarial image i, both in the epoch's order; `random`
    (the reference) walks one fixed permutation of the adversarial images, the same every epoch,
    beside the reshuffled clean order: either way every adversarial image is paired once per
    epoch, at a valid position.
    """
    _check_pairing(pairing)
    order_key, augment_key = jax.random.split(jax.random.fold_in(key, epoch))
    rows, mask = epoch_rows(order_key, num_examples, batch_size)
    if pairing == "aligned":
        return augment_key, rows, rows, mask
    adv_rows, _ = epoch_rows(jax.random.fold_in(key, Stream.ADV_PAIRING), num_examples, batch_size)
    return augment_key, rows, adv_rows, mask


def ood_rows(global_step, batch_size: int, num_ood: int):
    """The OOD rows of a global step: `(global_step · B + arange(B)) mod M`.

    The OOD set is walked in its stored order and cycled, B rows per step, continuing across
    epochs (global step = epoch · steps per epoch + step), whatever its size M. The reference
    cycles a loader it shuffled once (`itertools.cycle` replays the first pass), which is this
    walk over a pre-shuffled set.
    """
    return ((global_step * batch_size + jnp.arange(batch_size)) % num_ood).astype(jnp.int32)


def make_train_step(model, tx, spec: StepSpec, mesh: Mesh, teacher: Teacher | None = None, *, batched: bool = False,
                    run_lowering: str = "vmap"):
    """`step(state, batch, teacher_variables=None, key=None, hypers=None) -> (state, metrics)`:
    `train_step` data-parallel over `mesh`.

    The per-device program runs under `jax.shard_map` with the batch split over the axis
    `data` and the state, the teacher and the step's key replicated; gradients, metrics and BatchNorm statistics
    are averaged with `lax.pmean` inside `train_step`. Not jitted: callers jit it (with the
    state donated) or call it inside their own jitted program.

    `batched=True` trains a batch of runs: every argument has a leading run axis (the batch
    (runs, B, ...)), split over the mesh axis `run` where the mesh has one, and `train_step` is
    mapped over the runs each device holds (`over_runs` by `run_lowering`: vmapped, or unrolled,
    the CPU's choice, see `policy.ExecutionPolicy`); its `lax.pmean`s stay over `data`, so each
    run gets the update it would get alone.
    """
    per_device = functools.partial(train_step, model, tx, spec, teacher, axis_name=AXIS)
    if batched:
        runs = run_partition(mesh)
        sharded = jax.shard_map(over_runs(per_device, run_lowering), mesh=mesh, in_specs=(runs, run_partition(mesh, AXIS), runs, runs, runs),
                                out_specs=(runs, runs), check_vma=False)
    else:
        sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(), P(), P()), out_specs=(P(), P()),
                                check_vma=False)
    return lambda state, batch, teacher_variables=None, key=None, hypers=None: sharded(state, batch, teacher_variables,
                                                                                       key, hypers)


def _per_channel(values) -> tuple:
    """Per-channel statistics as a hashable tuple of floats (the memoised builders' key)."""
    return tuple(float(v) for v in np.ravel(np.asarray(values, np.float64)))


def make_train_epoch(model, tx, spec: StepSpec, mesh: Mesh, *, batch_size: int, augment_spec: AugmentSpec,
                     mean, std, teacher: Teacher | None = None, pairing: str = "aligned",
                     policy: ExecutionPolicy | None = None, batched: bool = False, augmented_targets: bool = False):
    """See `_make_train_epoch` (memoised on its arguments; `policy` None: `ExecutionPolicy.current()`)."""
    policy = policy or ExecutionPolicy.current()
    return _make_train_epoch(model, tx, spec, mesh, batch_size=int(batch_size), augment_spec=augment_spec,
                             mean=_per_channel(mean), std=_per_channel(std), teacher=teacher, pairing=pairing,
                             loop=policy.loop, batched=bool(batched), run_lowering=policy.run_lowering,
                             augmented_targets=bool(augmented_targets))


@functools.lru_cache(maxsize=64)
def _make_train_epoch(model, tx, spec: StepSpec, mesh: Mesh, *, batch_size: int, augment_spec: AugmentSpec,
                     mean, std, teacher: Teacher | None, pairing: str, loop: str, batched: bool,
                     run_lowering: str, augmented_targets: bool = False):
    """Build `train_epoch(state, data, teacher_variables, key, epoch, first_step=0, stop=None, *, hypers=None)
    -> (state, metrics)`.

    `data` = {'images': uint8 (N,H,W,C), 'labels': int32 (N,)[, 'adv_images': float (N,H,W,C)
    in model-input space][, 'teacher_logits': float (N, classes)][, 'ood_images': float
    (M,H,W,C) in model-input space, for `ini`]}; `key` the run's PRNG key;
    `metrics` holds per-step arrays (steps,), steps = ceil(N / batch_size): every example is used
    once, the last batch padded and masked out (`epoch_plan`). `teacher_logits` (kd/nasty without augmentation,
    see `fixed_teacher_logits`) replace the frozen teacher's forward pass in every step; with
    `augmented_targets` they stay with their example under augmentation (a target of the un-augmented
    image, DCP's Knockoff clone), otherwise augmentation and fixed targets are refused.
    Pairing of clean and adversarial images (docs/method.md §4): `aligned` gathers both with the epoch's
    permutation; `random` reproduces the reference, whose adversarial loader walks one fixed
    permutation while the clean loader is reshuffled every epoch. The `ini` step's OOD batch is
    `ood_images[ood_rows(epoch · steps + step, B, M)]`, not augmented; `teacher` is then the
    frozen clone and `teacher_variables` its variables.

    Memoised: runs built from equal arguments (modules, specs and meshes compare by value; `tx`
    from `optim.make_optimizer`, which is memoised too) share one program, compiled once per
    process (the cells of `ast-jax matrix`, the students of a study).

    `loop="scan"` makes the epoch one jitted `lax.scan` with the state donated (no host round
    trip per step); `loop="host"` runs the same step body as one jitted call per step (the
    `ExecutionPolicy`'s `loop`). The epoch runs steps `first_step, first_step + 1, ...` (a
    resumed epoch continues where it stopped: its order depends only on (key, epoch)); the host
    loop returns early after a step for which `stop()` is true, the scan only at the epoch's end
    (`stop` is not consulted). `metrics` holds the steps that ran.

    `batched=True` trains a batch of R runs as one program (`make_train_step(..., batched=True)`):
    `state`, `key` (one per run: each run its own data order, augmentation and noise),
    `teacher_variables`, `hypers` (`steps.LossHypers`, one value per run) and the `RUN_ARRAYS` of
    `data` carry a leading run axis; the other arrays of `data` are shared. The adversarial sets
    are shared too: `adv_images` is (S, N', H, W, C), each distinct set once (N' >= N rows: the
    runner splits the sets over the devices along the examples, `shard_examples`), and run r reads set
    `adv_set[r]` (int32, (R,)), gathering only its batch's rows. `metrics` are then
    (steps, R). Each run equals the same run trained alone, up to float32 rounding.
    `run_lowering` (the `ExecutionPolicy`'s) says how the step maps over the runs (`over_runs`).
    `hypers` None is `LossHypers()` (unbatched only), enough for the kinds that read no loss value.
    """
    _check_pairing(pairing)
    check_batch_size(batch_size, mesh)
    if spec.needs_ood and teacher is None:
        raise ValueError("the ini step needs the frozen clone: make_train_epoch(..., teacher=Teacher(module=clone))")
    step = make_train_step(model, tx, spec, mesh, teacher, batched=batched, run_lowering=run_lowering)
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    def run_plan(data, key, epoch):
        return epoch_plan(key, epoch, data["labels"].shape[0], batch_size, pairing)

    # Batched: one plan per run, steps first ((steps, R, B) rows), so that step `index` is `[index]` either way.
    plan = jax.vmap(run_plan, in_axes=(None, 0, None), out_axes=(0, 1, 1, 1)) if batched else run_plan

    def run_batch(data, run_arrays, augment_key, epoch, index, rows, adv_rows, mask):
        """One run's batch of step `index` and the step's key."""
        data = {**data, **run_arrays}
        images = augment(jax.random.fold_in(augment_key, index), data["images"][rows], augment_spec)
        batch = {"image": normalize(images, mean, std), "label": data["labels"][rows], "mask": mask}
        if "teacher_logits" in data:
            if not (augment_spec.is_identity or augmented_targets):
                raise ValueError("precomputed teacher_logits are only valid without augmentation: "
                                 "the teacher must see each augmented image")
            batch["teacher_logits"] = data["teacher_logits"][rows]
        if spec.needs_adversarial:  # batched: the run's set and the batch's rows in one gather
            batch["adv_image"] = data["adv_images"][(data["adv_set"], adv_rows) if batched else adv_rows]
        if spec.needs_ood:
            if "ood_images" not in data:
                raise ValueError("the ini step needs an OOD set: data['ood_images'] (float, model-input space)")
            global_step = epoch * steps_per_epoch(data["labels"].shape[0], batch_size) + index
            batch["ood_image"] = data["ood_images"][ood_rows(global_step, batch_size, data["ood_images"].shape[0])]
        return batch, jax.random.fold_in(jax.random.fold_in(augment_key, Stream.STEP_NOISE), index)

    make_batch = jax.vmap(run_batch, in_axes=(None, 0, 0, None, None, 0, 0, 0)) if batched else run_batch

    def body(state, data, teacher_variables, hypers, augment_key, epoch, index, rows, adv_rows, mask):
        shared = {name: array for name, array in data.items() if name not in RUN_ARRAYS}
        run_arrays = {name: array for name, array in data.items() if name in RUN_ARRAYS}
        batch, step_key = make_batch(shared, run_arrays, augment_key, epoch, index, rows, adv_rows, mask)
        return step(state, _shard_batch(mesh, batch, batched), teacher_variables, step_key, hypers)

    def indexed_body(state, data, teacher_variables, hypers, augment_key, epoch, index, order, adv_order, mask):
        return body(state, data, teacher_variables, hypers, augment_key, epoch, index, order[index], adv_order[index],
                    mask[index])

    # The host loop selects step `index`'s rows inside the jitted call: an eager slice of a device
    # array costs a dispatch of its own (several ms on CPU, more than a small model's step).
    plan_jit, body_jit = jax.jit(plan), jax.jit(indexed_body, donate_argnums=(0,))

    def host_epoch(state: TrainState, data, teacher_variables, key, epoch, first_step=0, stop=None, *, hypers=None):
        augment_key, order, adv_order, mask = plan_jit(data, key, epoch)
        metrics = []
        for index in range(first_step, order.shape[0]):
            state, step_metrics = body_jit(state, data, teacher_variables, hypers, augment_key, np.int32(epoch),
                                           np.int32(index), order, adv_order, mask)
            metrics.append(step_metrics)
            if stop is not None and stop():
                break
        return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)

    if loop == "host":
        return host_epoch

    @functools.partial(jax.jit, donate_argnums=(0,))
    def scan_epoch(state: TrainState, data, teacher_variables, hypers, key, epoch):
        augment_key, order, adv_order, mask = plan(data, key, epoch)
        return jax.lax.scan(lambda s, xs: body(s, data, teacher_variables, hypers, augment_key, epoch, *xs), state,
                            (jnp.arange(order.shape[0]), order, adv_order, mask))

    def train_epoch(state: TrainState, data, teacher_variables, key, epoch, first_step=0, stop=None, *, hypers=None):
        if first_step:  # the rest of an epoch interrupted under the host loop
            return host_epoch(state, data, teacher_variables, key, epoch, first_step, hypers=hypers)
        return scan_epoch(state, data, teacher_variables, hypers, key, epoch)

    return train_epoch


def fixed_teacher_logits(teacher: Teacher, teacher_variables, images, mesh: Mesh, *, batch_size: int, mean, std):
    """The frozen teacher's released logits on every training image, (N, classes) float32.

    Without augmentation a distilled model sees the same images every epoch, and the frozen
    teacher (inference mode) gives the same outputs on them: computing them once makes a kd or
    nasty epoch cost the trained model's steps alone (the CNN student on digits: 0.35 s per
    epoch instead of 0.63 s on 2 CPU cores). Equal to the per-step forward up to the rounding
    of a different batching.
    """
    predict = make_predict(teacher.module, mesh, batch_size=batch_size, mean=mean, std=std)
    return teacher.transform(predict(teacher_variables, images))


def _padded_batches(batch_size: int, *arrays):
    """The arrays' leading axis padded to whole batches and split: (steps, batch_size, ...) each."""
    num = arrays[0].shape[0]
    steps = -(-num // batch_size)
    pad = steps * batch_size - num
    return tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(steps, batch_size, *a.shape[1:])
                 for a in arrays)


def padded_examples(num_examples: int, mesh: Mesh) -> int:
    """`num_examples` rounded up to a multiple of the mesh's `data` devices: the length of an
    example-indexed array split over them (`shard_examples`, `make_pgd_attack`'s program)."""
    return -(-num_examples // data_devices(mesh)) * data_devices(mesh)


def shard_examples(mesh: Mesh, array, axis: int = 0) -> jax.Array:
    """A host array on the devices, split along its example axis `axis` over the mesh's `data`
    devices (each holds a contiguous share; replicated over `run`), the axis zero-padded to
    `padded_examples`. The padding rows are never read: a gather by example index (an epoch's
    batch of adversarial images) touches rows < N only; XLA gathers the batch by a masked local
    gather on each device and a sum over the devices, so no device holds the whole array."""
    array = np.asarray(array)
    pad = padded_examples(array.shape[axis], mesh) - array.shape[axis]
    if pad:
        array = np.pad(array, [(0, pad) if a == axis else (0, 0) for a in range(array.ndim)])
    spec = P(*([None] * axis), AXIS)
    return jax.device_put(array, NamedSharding(mesh, spec))


def _sharded_map(fn, mesh: Mesh, batch_size: int, constants, *arrays):
    """`fn(constants, rows, *batch)` on every batch of the arrays' leading axis, as one program with
    no communication; `rows` are the batch's example indices. (N, ...).

    The N examples are padded to `padded_examples` and split in contiguous shares, one per `data`
    device; each device maps its own share in batches of `batch_size / devices` (the last one
    padded) with one `lax.scan` (`constants` replicated), and keeps its share of the result. With
    N a multiple of the device count the result stays split so (no device holds the whole of it);
    otherwise the final trim to N rows leaves it replicated.
    """
    num, devices = arrays[0].shape[0], data_devices(mesh)
    share = padded_examples(num, mesh) // devices
    arrays = [jnp.pad(a, [(0, share * devices - num)] + [(0, 0)] * (a.ndim - 1)) for a in arrays]

    def per_device(constants, *share_arrays):
        rows = jax.lax.axis_index(AXIS) * share + jnp.arange(share)
        _, out = jax.lax.scan(lambda _, batch: (None, fn(constants, *batch)), None,
                              _padded_batches(batch_size // devices, rows, *share_arrays))
        return out.reshape(-1, *out.shape[2:])[:share]

    out = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), *[P(AXIS)] * len(arrays)), out_specs=P(AXIS),
                        check_vma=False)(constants, *arrays)
    return out[:num]


def make_predict(model, mesh: Mesh, *, batch_size: int, mean, std, loop: str | None = None):
    """Build `predict(variables, images_uint8) -> logits (N, C)` in inference mode, float32.

    `loop` (`policy.LOOPS`; None: the current backend's): `scan` maps the batches in one jitted
    program, `host` calls the jitted forward per batch. Memoised like `make_train_epoch`: equal
    arguments give the same (already compiled) program."""
    return _make_predict(model, mesh, batch_size=int(batch_size), mean=_per_channel(mean), std=_per_channel(std),
                         loop=_resolve_loop(loop))


@functools.lru_cache(maxsize=64)
def _make_predict(model, mesh: Mesh, *, batch_size: int, mean, std, loop: str):
    check_batch_size(batch_size, mesh, "eval_batch_size")
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    def logits(variables, x):
        return model.apply(variables, normalize(to_unit_float(x), mean, std), train=False).astype(jnp.float32)

    if loop == "scan":
        return jax.jit(lambda variables, images: _sharded_map(lambda v, _, x: logits(v, x), mesh, batch_size,
                                                              variables, images))
    logits_jit = jax.jit(logits)
    return lambda variables, images: host_batched_map(lambda _, x: logits_jit(variables, x), mesh, batch_size, images)


def host_batched_map(fn, mesh: Mesh, batch_size: int, images) -> jax.Array:
    """`fn(batch_index, batch)` over `images` in batches of `batch_size`, driven from the host (the CPU
    path, see `policy.ExecutionPolicy`), each batch data-parallel over the mesh; the last one is padded
    to a multiple of the device count only, and the padding dropped from the result."""
    sharding = NamedSharding(mesh, P(AXIS))
    if images.shape[0] <= batch_size and not images.shape[0] % data_devices(mesh):  # one batch: no slicing (an eager op)
        return fn(np.int32(0), jax.device_put(images, sharding))
    out = []
    for index, start in enumerate(range(0, images.shape[0], batch_size)):
        batch = images[start:start + batch_size]
        pad = -batch.shape[0] % data_devices(mesh)
        if pad:
            batch = jnp.concatenate([jnp.asarray(batch), jnp.zeros((pad, *batch.shape[1:]), batch.dtype)])
        result = fn(np.int32(index), jax.device_put(batch, sharding))
        out.append(result[:result.shape[0] - pad] if pad else result)
    return out[0] if len(out) == 1 else jnp.concatenate(out)


def make_pgd_attack(model, mesh: Mesh, *, batch_size: int, mean, std, eps: float, step_size: float,
                    steps: int, space: str = "pixel", random_start: bool = False, loop: str | None = None,
                    progress: Callable[[int, int], None] | None = None):
    """Build `attack(variables, images_uint8, labels, key) -> adversarial images, model-input space`.

    PGD (thesis eq. 4) against the model with `variables` in inference mode, batch by batch;
    example i's random start (if any) draws from `fold_in(key, i)`, whatever the batching and the
    device count, so `key` may be a raw or a typed PRNG key. `space="pixel"` attacks [0, 1]
    pixels and normalises the result; `space="reference"` attacks normalised images with the
    reference code's [0, 1] clamp and returns them as they are (docs/method.md §4). Either way the
    result is what the model takes as input, ready for the AST step. `loop="scan"` is one jitted program (`_sharded_map`: each device a scan
    over batches of its own share of the examples, each batch a `fori_loop` over PGD steps; the set
    stays split over the devices); `loop="host"` drives batches and steps from Python, one jitted
    call per PGD step (faster on CPU, see `policy.ExecutionPolicy`); None picks the current backend's.
    With the host loop, `progress(images_done, images_total)` is called after each batch; the
    scan is one program and reports nothing until it returns.
    """
    loop = _resolve_loop(loop)
    check_batch_size(batch_size, mesh, "pgd.batch_size")
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    pgd_kwargs = dict(eps=eps, step_size=step_size)

    def apply_fn(variables, x):
        x = normalize(x, mean, std) if space == "pixel" else x
        return model.apply(variables, x, train=False)

    def start(key, rows, images, labels):
        def one(row, image, label):  # example `row`'s start, from its own key
            x, x0, label = adversarial.pgd_start(to_unit_float(image)[None], label[None], eps=eps,
                                                 random_start=random_start, key=jax.random.fold_in(key, row),
                                                 space=space, mean=mean, std=std)
            return x[0], x0[0], label[0]

        return jax.vmap(one)(rows, images, labels)

    def step(variables, x, x0, labels):
        return adversarial.pgd_step(functools.partial(apply_fn, variables), x, x0, labels, **pgd_kwargs)

    def finish(x):
        return normalize(x, mean, std) if space == "pixel" else x

    if loop == "scan":
        def one_batch(constants, rows, images, labels):
            variables, key = constants
            x, x0, labels = start(key, rows, images, labels)
            return finish(jax.lax.fori_loop(0, steps, lambda _, x: step(variables, x, x0, labels), x))

        return jax.jit(lambda variables, images, labels, key: _sharded_map(one_batch, mesh, batch_size,
                                                                           (variables, key), images, labels))

    start_jit, step_jit, finish_jit = jax.jit(start), jax.jit(step), jax.jit(finish)
    sharding = NamedSharding(mesh, P(AXIS))

    def attack(variables, images, labels, key):
        out = []
        for index, batch in enumerate(zip(*_padded_batches(batch_size, jnp.asarray(images), jnp.asarray(labels)))):
            rows = index * batch_size + np.arange(batch_size, dtype=np.int32)
            x, x0, batch_labels = start_jit(key, *jax.device_put((rows, *batch), sharding))
            for _ in range(steps):
                x = step_jit(variables, x, x0, batch_labels)
            out.append(finish_jit(x))
            if progress is not None:
                jax.block_until_ready(out[-1])  # report finished work, not dispatched work
                progress(min((index + 1) * batch_size, len(labels)), len(labels))
        return jnp.concatenate(out)[:len(labels)]

    return attack
