"""The named random streams of a run: every draw folds one of these into the seed's key.

A training run folds the epoch number e into `PRNGKey(seed)` for epoch e's data order and
augmentation (`train.loop`), so those folds take the values 0, 1, ..., epochs - 1. Every other
stream folds a value at or above `FIRST_STREAM` = 2**20 into the same key, which no epoch
reaches, and no two streams share a value. `example_keys` splits a step's key into per-example
keys that do not depend on the device count.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp

FIRST_STREAM = 1 << 20  # above any epoch count: a stream never collides with an epoch's fold


class Stream(enum.IntEnum):
    """What a key folded from the seed's key is used for (`jax.random.fold_in(key, Stream.X)`)."""

    PARAMS_INIT = FIRST_STREAM        # the model's initial parameters (`train.runner.fit`)
    PGD_START = FIRST_STREAM + 1      # PGD's random starts for the adversarial set and the figure
    STEP_NOISE = FIRST_STREAM + 2     # a train step's own draws, folded into the epoch's augmentation key (`train.loop`)
    INI_CLONE = FIRST_STREAM + 3      # InI's untrained surrogate clone (`stages.ini_clone`)
    MECO_EVAL = FIRST_STREAM + 4      # MeCo's release on the test set in the report (`stages.released_logits`)
    GENERATOR_INIT = FIRST_STREAM + 100  # DFME's generator parameters (`attacks.dfme`)
    ADV_PAIRING = 0xFFFFFFFF          # the random clean/adversarial pairing of the AST step (`train.loop`)


#: Folded into a DFME iteration's key (after its noise draws 0..clone_steps): the probe directions.
ITERATION_DIRECTIONS = FIRST_STREAM + 1
#: With the seed, the seed sequence of Knockoff's draw from the query set (`attacks.transfer`).
KNOCKOFF_DRAW = 0x4B4E
#: With the seed, the seed sequence of the attacker's data draw (`attacks.common.attacker_indices`).
ATTACKER_DATA_DRAW = 0x4144


def example_keys(key: jax.Array, local_batch: int, axis_name: str | None = None) -> jax.Array:
    """One PRNG key per example of this device's shard: `fold_in(key, global position)`.

    The position counts over the whole batch (device d's shard starts at d * local_batch), so
    example i draws the same numbers on 1 or N devices.
    """
    start = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(local_batch))
