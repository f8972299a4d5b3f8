"""Data parallelism: one step and two epochs of every kind on 4 (fake CPU) devices match the
1-device run, with the epoch as one scan and as a host loop (which must agree with each other
too); so does the PGD adversarial set, which also equals `adversarial.pgd` on the whole set.

What "the same on 1 or N devices" means: one step agrees to float32 rounding (the gradient
sums are ordered differently); the rounding is carried into later steps and grows, so the
bound is stated per step and per epoch of a short run. A long run can end a test image apart.
All comparisons are measured once (module fixture); each case is its own test."""

import json

import numpy as np
import pytest
from conftest import four_device_result

KINDS = ("ce", "kd", "ast", "stt", "nasty")
STEP_TOLERANCE = 2e-7  # one step: float32 rounding of differently ordered sums (measured <= 6e-8)
EPOCH_TOLERANCES = (5e-7, 2e-6)  # after epochs 1 and 2 of 3 steps (measured <= 1.8e-7 and 6.6e-7): it grows
LOSS_TOLERANCE = 1e-6  # per-step losses of epoch 2 (measured <= 2.1e-7)


def _compare_device_counts() -> dict:
    import jax
    from conftest import TinyNet, tiny_split

    from ast_jax.data import AugmentSpec
    from ast_jax.engine import (
        ExecutionPolicy,
        LossHypers,
        StepSpec,
        Teacher,
        TrainSettings,
        init_state,
        make_mesh,
        make_optimizer,
        make_train_epoch,
        replicate,
    )

    assert jax.device_count() == 4, jax.devices()
    split = tiny_split(48, channels=3)
    model = TinyNet(axis_name="data")
    train_config = TrainSettings(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, milestones=(1,),
                                 lr_decay=0.1, batch_size=8, eval_batch_size=8, epochs=2, checkpoint_every=1,
                                 eval_every=1)
    tx = make_optimizer(train_config, steps_per_epoch=3)
    state0 = jax.tree.map(np.asarray, init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3)))
    teacher_variables = jax.tree.map(np.asarray, TinyNet().init(jax.random.PRNGKey(1), split.images[:1] / 255.0))
    adv = np.random.default_rng(2).normal(size=split.images.shape).astype(np.float32)
    data = {"images": split.images, "labels": split.labels, "adv_images": adv}
    specs = {"ce": StepSpec("ce"), "kd": StepSpec("kd"), "ast": StepSpec("ast"), "stt": StepSpec("stt"),
             "nasty": StepSpec("nasty")}
    hypers = {"ce": LossHypers(), "kd": LossHypers(4.0, 0.9), "ast": LossHypers(6.0, 0.05, 2),
              "stt": LossHypers(4.0, 0.04, 2), "nasty": LossHypers(4.0, 0.04)}
    policies = {loop: ExecutionPolicy(loop, "unroll", 1) for loop in ("scan", "host")}
    def max_diff(a, b):
        return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    def host(tree):
        return jax.tree.map(np.asarray, tree)

    diffs = {}
    for kind in KINDS:
        runs, first_steps = [], []
        for devices, loop in ((jax.devices()[:1], "scan"), (jax.devices(), "scan"), (jax.devices(), "host")):
            mesh = make_mesh(devices)
            epoch = make_train_epoch(model, tx, specs[kind], mesh, batch_size=16,
                                     augment_spec=AugmentSpec(crop_padding=2, flip=True), mean=(0.5,) * 3,
                                     std=(0.25,) * 3, teacher=Teacher(TinyNet()), pairing="random",
                                     policy=policies[loop])
            inputs = (replicate(mesh, data), replicate(mesh, teacher_variables), jax.random.PRNGKey(3))
            if loop == "scan":  # one step, driven from the host on this mesh
                one_step = make_train_epoch(model, tx, specs[kind], mesh, batch_size=16,
                                            augment_spec=AugmentSpec(crop_padding=2, flip=True), mean=(0.5,) * 3,
                                            std=(0.25,) * 3, teacher=Teacher(TinyNet()), pairing="random",
                                            policy=policies["host"])
                first_steps.append(host(one_step(replicate(mesh, state0), *inputs, 0, stop=lambda: True,
                                                 hypers=hypers[kind])[0].params))
            state, per_epoch = replicate(mesh, state0), []
            for e in range(2):
                state, metrics = epoch(state, *inputs, e, hypers=hypers[kind])
                per_epoch.append((host((state.params, state.batch_stats)), np.asarray(metrics["loss"])))
            runs.append(per_epoch)
        one, four, host_loop = runs
        diffs[kind] = {"moved": max_diff(one[-1][0][0], state0.params),
                       "step": max_diff(first_steps[0], first_steps[1]),
                       "epochs": [max_diff(a[0], b[0]) for a, b in zip(one, four)],
                       "loss": float(np.max(np.abs(one[-1][1] - four[-1][1]))),
                       "host_vs_scan": max_diff(host_loop[-1][0], four[-1][0]),
                       "host_loss": float(np.max(np.abs(host_loop[-1][1] - four[-1][1])))}
    return diffs


def _compare_zoo_batchnorm() -> dict:
    """Training-mode forward of zoo models: global-batch statistics whatever the device count."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    from ast_jax import models
    from ast_jax.engine import make_mesh

    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 3)), jnp.float32)
    diffs = {}
    for name in ("cnn", "preresnet20"):
        single, sharded = models.create(name, 10), models.create(name, 10, axis_name="data")
        variables = jax.jit(lambda key: single.init(key, x[:1], train=False))(jax.random.PRNGKey(0))
        expected = jax.jit(lambda v, x: single.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
        forward = jax.shard_map(lambda v, x: sharded.apply(v, x, train=True, mutable=["batch_stats"]),
                                mesh=make_mesh(), in_specs=(P(), P("data")), out_specs=(P("data"), P()),
                                check_vma=False)
        got = jax.jit(forward)(variables, x)
        diffs[name] = max(float(jnp.max(jnp.abs(a - b)) / jnp.maximum(1.0, jnp.max(jnp.abs(a))))
                          for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)))  # relative
    return diffs


def _compare_adversarial_sets() -> dict:
    """make_pgd_attack on 1 and 4 devices, scanned and host-driven, against one `pgd` call; the
    scanned set's rows per device, and the scan on 38 images (not a multiple of 4)."""
    import jax
    import jax.numpy as jnp
    from conftest import TinyNet, tiny_split

    from ast_jax import adversarial
    from ast_jax.data import normalize
    from ast_jax.engine import make_mesh, make_pgd_attack

    split = tiny_split(40, channels=3)  # 40 = 2.5 batches of 16: the last batch is padded
    model, mean, std = TinyNet(), jnp.full((3,), 0.5), jnp.full((3,), 0.25)
    variables = model.init(jax.random.PRNGKey(0), split.images[:1] / 255.0)
    diffs = {}
    for space, random_start in (("pixel", False), ("reference", False), ("pixel", True)):
        results = []
        for devices, loop in ((jax.devices()[:1], "scan"), (jax.devices(), "scan"), (jax.devices(), "host")):
            attack = make_pgd_attack(model, make_mesh(devices), batch_size=16, mean=mean, std=std, eps=0.1,
                                     step_size=0.02, steps=3, space=space, random_start=random_start,
                                     loop=loop)
            if len(devices) > 1 and loop == "scan":
                attack_scan_4 = attack
            results.append(attack(variables, split.images, split.labels, jax.random.key(5)))
        shares = sorted(shard.data.shape[0] for shard in results[1].addressable_shards)
        uneven = attack_scan_4(variables, split.images[:38], split.labels[:38], jax.random.key(5))
        results = [np.asarray(r) for r in results]
        clean = normalize(split.images / 255.0, mean, std) if space == "pixel" else split.images / 255.0
        name = f"{space}{'-random' if random_start else ''}"
        diffs[name] = {"devices": float(np.max(np.abs(results[0] - results[1]))), "shares": shares,
                       "uneven": float(np.max(np.abs(results[0][:38] - np.asarray(uneven)))),
                       "host_vs_scan": float(np.max(np.abs(results[1] - results[2]))),
                       "moved": float(np.max(np.abs(results[0] - np.asarray(clean))))}
        if not random_start:
            apply_fn = ((lambda x: model.apply(variables, normalize(x, mean, std))) if space == "pixel"
                        else (lambda z: model.apply(variables, z)))
            direct = adversarial.pgd(apply_fn, split.images / 255.0, split.labels, eps=0.1, step_size=0.02, steps=3,
                                     space=space, mean=mean, std=std)
            direct = normalize(direct, mean, std) if space == "pixel" else direct
            diffs[name]["vs_pgd"] = float(np.max(np.abs(results[0] - np.asarray(direct))))
    return diffs


def _compare_run_meshes() -> dict:
    """Three runs (other seed, ω, τ, k, lr, adversarial set) against each run alone on one device:
    as `pipeline.fit_stages` with run_devices 2 (`batch_plan`: two runs over the 2 x 2 (run, data)
    mesh, the third over all 4 devices), and as one batch on the 4-device data mesh (`fit_batch`)."""
    import tempfile
    import types

    import jax
    from test_batch import RUNS, _max_difference, _run

    from ast_jax.engine import ExecutionPolicy, fit, fit_batch, make_mesh
    from ast_jax.studies import pipeline
    from ast_jax.studies.study import Study

    policy = ExecutionPolicy("host", "vmap", 1)  # the accelerators' lowering, where a run axis over devices is used
    quiet = lambda _: None  # noqa: E731
    with tempfile.TemporaryDirectory() as root:
        alone = [fit(_run(f"{root}/alone{i}", *values), mesh=make_mesh(jax.devices()[:1]), policy=policy, log=quiet)
                 for i, values in enumerate(RUNS)]
        study = Study(None, root, None, None, None, make_mesh(), quiet, run_devices=2, policy=policy)
        pipeline.fit_stages([types.SimpleNamespace(study=study, name="ast", run=_run(f"{root}/staged{i}", *values))
                             for i, values in enumerate(RUNS)])  # what fit_stages reads of a stage
        batch = fit_batch([_run(f"{root}/data{i}", *values) for i, values in enumerate(RUNS)], mesh=make_mesh(),
                          policy=policy, log=quiet)
        diffs = {"run_and_data": [_max_difference(a, study.runs[f"{root}/staged{i}"]) for i, a in enumerate(alone)],
                 "data": [_max_difference(a, b) for a, b in zip(alone, batch)],
                 "runs_differ": _max_difference(*alone[:2])}
    return diffs


@pytest.fixture(scope="module")
def measured() -> dict:
    """Every comparison, measured once in a subprocess with 4 forced CPU devices."""
    training, zoo, attacks, run_meshes = four_device_result(__file__)
    return {"training": training, "zoo": zoo, "attacks": attacks, "run_meshes": run_meshes}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_one_step_on_four_devices_matches_one_device(measured, kind):
    """Per step only the order of the gradient sums differs: float32 rounding, nothing more."""
    assert measured["training"][kind]["step"] < STEP_TOLERANCE, measured["training"][kind]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_two_epochs_on_four_devices_match_one_device(measured, kind):
    """The rounding of each step is carried forward: the bound holds per epoch of this run, not forever."""
    diff = measured["training"][kind]
    assert diff["moved"] > 1e-3, diff  # training did something
    assert all(d < bound for d, bound in zip(diff["epochs"], EPOCH_TOLERANCES, strict=True)), diff
    assert diff["loss"] < LOSS_TOLERANCE, diff


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_host_loop_matches_scanned_epoch(measured, kind):
    diff = measured["training"][kind]
    assert diff["host_vs_scan"] < EPOCH_TOLERANCES[-1] and diff["host_loss"] < LOSS_TOLERANCE, diff


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "preresnet20"])
def test_zoo_batchnorm_uses_global_batch_statistics(measured, name):
    assert measured["zoo"][name] < 1e-5, measured["zoo"][name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pixel", "reference", "pixel-random"])
def test_adversarial_set_matches_across_devices_and_loops(measured, name):
    diff = measured["attacks"][name]
    assert diff["moved"] > 0.05, diff  # the attack changed the images
    assert diff["devices"] < 1e-5 and diff["host_vs_scan"] < 1e-5 and diff["uneven"] < 1e-5, diff
    assert diff["shares"] == [10, 10, 10, 10], diff  # each device holds its quarter of the 40 images, no more
    assert diff.get("vs_pgd", 0.0) < 1e-5, diff


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["run_and_data", "data"])
def test_a_batch_of_runs_spread_over_devices_matches_each_run_alone(measured, mesh):
    """Runs split over the mesh axis `run` (each run's batch over `data`; the study's stages,
    `--run-devices 2`), or all runs on every device."""
    from test_batch import TOLERANCE

    diffs = measured["run_meshes"]
    assert diffs["runs_differ"] > 100 * TOLERANCE, diffs
    assert max(diffs[mesh]) < TOLERANCE, diffs


def test_a_run_mesh_must_divide_the_devices():
    import jax

    from ast_jax.engine import make_mesh

    with pytest.raises(ValueError, match="must divide"):
        make_mesh(run_devices=jax.device_count() + 1)


if __name__ == "__main__":
    print(json.dumps([_compare_device_counts(), _compare_zoo_batchnorm(), _compare_adversarial_sets(),
                      _compare_run_meshes()]))
