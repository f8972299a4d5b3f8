"""Data parallelism: a few steps of every kind on 4 (fake CPU) devices match the 1-device run,
with the epoch as one scan and as a host loop (which must agree with each other too); so does
the PGD adversarial set, which also equals `adversarial.pgd` on the whole set."""

import json
import os
import subprocess
import sys

import numpy as np

KINDS = ("ce", "kd", "ast", "stt", "nasty")


def _compare_device_counts() -> dict:
    import jax
    from ast_jax.data import AugmentSpec
    from ast_jax.train import StepSpec, Teacher, init_state, make_mesh, make_optimizer, make_train_epoch, replicate
    from ml_collections import ConfigDict
    from conftest import TinyNet, tiny_split

    assert jax.device_count() == 4, jax.devices()
    split = tiny_split(48, channels=3)
    model = TinyNet(axis_name="data")
    train_config = ConfigDict(dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                                   milestones=(1,), lr_decay=0.1))
    tx = make_optimizer(train_config, steps_per_epoch=3)
    state0 = jax.tree.map(np.asarray, init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3)))
    teacher_variables = jax.tree.map(np.asarray, TinyNet().init(jax.random.PRNGKey(1), split.images[:1] / 255.0))
    adv = np.random.default_rng(2).normal(size=split.images.shape).astype(np.float32)
    data = {"images": split.images, "labels": split.labels, "adv_images": adv}
    specs = {"ce": StepSpec("ce"), "kd": StepSpec("kd", 4.0, 0.9), "ast": StepSpec("ast", 6.0, 0.05, k=2),
             "stt": StepSpec("stt", 4.0, 0.04, k=2), "nasty": StepSpec("nasty", 4.0, 0.04)}
    diffs = {}
    for kind in KINDS:
        results = []
        for devices, loop in ((jax.devices()[:1], "scan"), (jax.devices(), "scan"), (jax.devices(), "host")):
            mesh = make_mesh(devices)
            epoch = make_train_epoch(model, tx, specs[kind], mesh, batch_size=16,
                                     augment_spec=AugmentSpec(crop_padding=2, flip=True), mean=(0.5,) * 3,
                                     std=(0.25,) * 3, teacher=Teacher(TinyNet()), pairing="random", loop=loop)
            state = replicate(mesh, state0)
            for e in range(2):
                state, metrics = epoch(state, replicate(mesh, data), replicate(mesh, teacher_variables),
                                       jax.random.PRNGKey(3), e)
            results.append((jax.tree.map(np.asarray, (state.params, state.batch_stats)), np.asarray(metrics["loss"])))
        (one, loss1), (four, loss4), (host, loss_host) = results
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(state0.params)))
        diffs[kind] = {"max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in
                                           zip(jax.tree.leaves(one), jax.tree.leaves(four))),
                       "loss_diff": float(np.max(np.abs(loss1 - loss4))), "moved": moved,
                       "host_vs_scan": max(float(np.max(np.abs(a - b))) for a, b in
                                           zip(jax.tree.leaves(host), jax.tree.leaves(four))),
                       "host_loss_diff": float(np.max(np.abs(loss_host - loss4)))}
    return diffs


def _compare_zoo_batchnorm() -> dict:
    """Training-mode forward of zoo models: global-batch statistics whatever the device count."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P
    from ast_jax import models
    from ast_jax.train import make_mesh

    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 3)), jnp.float32)
    diffs = {}
    for name in ("cnn", "preresnet20"):
        single, sharded = models.create(name, 10), models.create(name, 10, axis_name="data")
        variables = single.init(jax.random.PRNGKey(0), x[:1], train=False)
        expected = single.apply(variables, x, train=True, mutable=["batch_stats"])
        forward = jax.shard_map(lambda v, x: sharded.apply(v, x, train=True, mutable=["batch_stats"]),
                                mesh=make_mesh(), in_specs=(P(), P("data")), out_specs=(P("data"), P()),
                                check_vma=False)
        got = jax.jit(forward)(variables, x)
        diffs[name] = max(float(jnp.max(jnp.abs(a - b)) / jnp.maximum(1.0, jnp.max(jnp.abs(a))))
                          for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)))  # relative
    return diffs


def _compare_adversarial_sets() -> dict:
    """make_adversarial_set on 1 and 4 devices, scanned and host-driven, against one `pgd` call."""
    import jax
    import jax.numpy as jnp
    from ast_jax import adversarial
    from ast_jax.data import normalize
    from ast_jax.train import make_adversarial_set, make_mesh
    from conftest import TinyNet, tiny_split

    split = tiny_split(40, channels=3)  # 40 = 2.5 batches of 16: the last batch is padded
    model, mean, std = TinyNet(), jnp.full((3,), 0.5), jnp.full((3,), 0.25)
    variables = model.init(jax.random.PRNGKey(0), split.images[:1] / 255.0)
    diffs = {}
    for space, random_start in (("pixel", False), ("reference", False), ("pixel", True)):
        results = []
        for devices, loop in ((jax.devices()[:1], "scan"), (jax.devices(), "scan"), (jax.devices(), "host")):
            attack = make_adversarial_set(model, make_mesh(devices), batch_size=16, mean=mean, std=std, eps=0.1,
                                          step_size=0.02, steps=3, space=space, random_start=random_start,
                                          loop=loop)
            results.append(np.asarray(attack(variables, split.images, split.labels, jax.random.key(5))))
        clean = normalize(split.images / 255.0, mean, std) if space == "pixel" else split.images / 255.0
        name = f"{space}{'-random' if random_start else ''}"
        diffs[name] = {"devices": float(np.max(np.abs(results[0] - results[1]))),
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


def test_four_devices_match_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(__file__))
    assert out.returncode == 0, out.stderr[-3000:]
    diffs, zoo, attacks = json.loads(out.stdout.strip().splitlines()[-1])
    for name, diff in zoo.items():
        assert diff < 1e-5, (name, diff)
    assert set(attacks) == {"pixel", "reference", "pixel-random"}
    for name, diff in attacks.items():
        assert diff["moved"] > 0.05, (name, diff)  # the attack changed the images
        assert diff["devices"] < 1e-5 and diff["host_vs_scan"] < 1e-5, (name, diff)
        assert diff.get("vs_pgd", 0.0) < 1e-5, (name, diff)
    for kind in KINDS:
        assert diffs[kind]["moved"] > 1e-3, (kind, diffs[kind])  # training did something
        assert diffs[kind]["max_abs_diff"] < 1e-5, (kind, diffs[kind])
        assert diffs[kind]["loss_diff"] < 1e-5, (kind, diffs[kind])
        assert diffs[kind]["host_vs_scan"] < 1e-5, (kind, diffs[kind])
        assert diffs[kind]["host_loss_diff"] < 1e-5, (kind, diffs[kind])


if __name__ == "__main__":
    print(json.dumps([_compare_device_counts(), _compare_zoo_batchnorm(), _compare_adversarial_sets()]))
