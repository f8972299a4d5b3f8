"""Per-device bytes of a config's AST teacher epoch as one batch of R runs holding S adversarial sets.

    JAX_PLATFORMS=cpu python -m benchmarks.adversarial_sets --config cifar100_resnet18 --runs 27 --adv-sets 27,1

Compiled on the host CPU (`ast_jax.engine.aot.epoch_program`, abstract inputs: nothing is
allocated), so the bytes are exact, without an accelerator's layout padding (benchmarks/README.md,
"Shared adversarial sets in a sweep batch").
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp

from ast_jax import models
from ast_jax.cli.config import load_settings
from ast_jax.cli.plan import TRAIN_IMAGES
from ast_jax.data import dataset_spec
from ast_jax.engine import StepSpec, aot, make_optimizer
from ast_jax.engine.loop import AXIS, steps_per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cifar100_resnet18")
    parser.add_argument("--runs", type=int, default=27)
    parser.add_argument("--adv-sets", default="27,1", help="comma-separated numbers of distinct sets")
    args = parser.parse_args()
    config = load_settings(args.config, [])
    dataset = dataset_spec(config.data.name)
    num_train = config.data.train_examples or TRAIN_IMAGES[config.data.name]
    train = config.teacher_train_for("ast")
    tx = make_optimizer(train, steps_per_epoch(num_train, train.batch_size))
    model = models.create(config.teacher.model, dataset.num_classes, jnp.dtype(config.dtype), axis_name=AXIS)
    print("| runs R | sets S | arguments (GB) | temporaries (GB) | total per device (GB) |\n|---|---|---|---|---|")
    for sets in (int(s) for s in args.adv_sets.split(",")):
        cost = aot.compile_cost(lambda mesh, sets=sets: aot.epoch_program(
            model, tx, StepSpec("ast"), mesh, num_examples=num_train, batch_size=train.batch_size,
            image_shape=dataset.image_shape, num_classes=dataset.num_classes, augment_spec=config.data.augment,
            mean=dataset.mean, std=dataset.std, pairing=config.ast.pairing, runs=args.runs, adv_sets=sets),
            aot.host_mesh())
        print(f"| {args.runs} | {sets} | {cost.argument_bytes / 1e9:.2f} | {cost.temp_bytes / 1e9:.2f} | "
              f"{cost.device_bytes / 1e9:.2f} |")


if __name__ == "__main__":
    main()
