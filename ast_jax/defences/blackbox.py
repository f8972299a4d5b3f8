"""The black box a model-stealing attack queries (docs/method.md §10.1).

A victim V takes pixel images in [0, 1] (it normalises them itself) and releases
r(x) = D(σ(f(x))): its softmax probabilities after an output defence D (`ast_jax.defences.outputs`), or
only the arg-max label. An attack holds a `BlackBox` and nothing else of the victim: no logits,
no parameters. Every image sent is one query, a re-sent image counts again, and the box counts
them (`BlackBox.queries`).

A *release* is a pure, jittable function `release(images, key) -> probabilities (N, K)`:

| built by                                | what it releases                                          |
|-----------------------------------------|-----------------------------------------------------------|
| `victim_release(..., defense=D)`        | D(σ(f(normalise(x)))), D a deterministic output defence    |
| `victim_release(..., input_defense=I)`  | D(σ(f(I(normalise(x), key)))), I drawn per query (MeCo's x + s·h(x), `meco.input_defense`) |

Given the victim's `clean` release as well (its undefended probabilities σ(f(x)), no input
defence), the box also measures what the defence changed on the queries actually sent: per query
‖r(x) − σ(f(x))‖₁, computed in the same program as the release, whether the attack asked for the
vector or only the label. `l1_since(ledger)` is their mean over the queries since `ledger()`
(DCP's ℓ1, docs/method.md §10.5).

`key` is the query's randomness: `BlackBox` gives call c the key `fold_in(PRNGKey(seed), c)`, and
each batch b of that call `fold_in(·, b)`, so a box's answers are reproducible from its seed and
differ between calls. A deterministic release ignores it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ast_jax.data import normalize, to_unit_float
from ast_jax.engine.loop import check_batch_size, host_batched_map

#: `release(images (N, H, W, C) float32 pixels, key) -> probabilities (N, K) float32`.
Release = Callable[[jax.Array, jax.Array], jax.Array]
#: An output defence: probabilities (N, K) -> released probabilities (N, K), pure and jittable.
OutputDefense = Callable[[jax.Array], jax.Array]
#: An input defence: (normalised images (N, H, W, C), key) -> the images the victim's model sees.
InputDefense = Callable[[jax.Array, jax.Array], jax.Array]


def no_defense(probs: jax.Array) -> jax.Array:
    """The undefended release: the probabilities as they are."""
    return probs


def victim_release(model, variables, mean, std, defense: OutputDefense = no_defense,
                   input_defense: InputDefense | None = None) -> Release:
    """`release(x, key) = defense(σ(f(input_defense(normalise(x), key))))`, the model in inference
    mode (float32); without an input defence the release is deterministic and ignores `key`.

    `x` is in pixel units; it is not clipped, so an attack that works in the model's input space
    (DFME's generator) can send pixels outside [0, 1]. The input defence acts on the normalised
    image, the model's input (MeCo perturbs what the trained model sees, docs/method.md §11.2).
    """
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    def release(images, key):
        inputs = normalize(images, mean, std)
        if input_defense is not None:
            inputs = input_defense(inputs, key)
        logits = model.apply(variables, inputs, train=False).astype(jnp.float32)
        return defense(jax.nn.softmax(logits, axis=-1))

    return release


class BlackBox:
    """A frozen victim behind an output defence, with a query counter (docs/method.md §10.1).

    Args:
      release: what the victim releases (see the module docstring).
      image_shape: (H, W, C) of the images the victim takes; other shapes are refused.
      num_classes: K.
      mesh: the device mesh the release runs on, data-parallel over its `data` axis.
      batch_size: images per call of the victim (divisible by the mesh size); a query of N images
        runs ceil(N / batch_size) calls from the host, the last one padded to a multiple of the
        device count (padding is not counted). Host-driven, not a `lax.scan`: XLA:CPU runs
        convolutions several times slower inside a loop (`ast_jax.engine.ExecutionPolicy`).
      seed: the seed of the release's randomness.
      labels_only: the box releases only the arg-max label (`probabilities` is refused).
      clean: the victim's undefended release σ(f(x)); given, the box sums ‖r(x) − σ(f(x))‖₁ over
        its queries (`ledger`, `l1_since`). The attack never sees it.
    """

    def __init__(self, release: Release, *, image_shape, num_classes: int, mesh: Mesh, batch_size: int,
                 seed: int = 0, labels_only: bool = False, clean: Release | None = None):
        check_batch_size(batch_size, mesh, "the black box's batch_size")
        self.image_shape = tuple(image_shape)
        self.num_classes = int(num_classes)
        self.labels_only = labels_only
        self.queries = 0
        self._measures = clean is not None
        self._l1_sums: list[jax.Array] = []  # one device scalar per call: no host sync per query
        self._calls = 0
        self._key = jax.random.PRNGKey(seed)

        self._mesh, self._batch_size = mesh, batch_size

        @jax.jit
        def release_batch(images, key, call, index):
            pixels = to_unit_float(images) if images.dtype == jnp.uint8 else images.astype(jnp.float32)
            key = jax.random.fold_in(jax.random.fold_in(key, call), index)
            released = release(pixels, key)
            if clean is None:
                return released
            # The per-query ℓ1 travels as an extra column, so that the batching drops padding from both.
            return jnp.concatenate([released, jnp.sum(jnp.abs(released - clean(pixels, key)), -1, keepdims=True)], -1)

        self._release_batch = release_batch

    def _query(self, images) -> jax.Array:
        if not hasattr(images, "dtype"):
            images = np.asarray(images)
        if len(images.shape) != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"query images have shape {tuple(images.shape)}; this victim takes (N, "
                             f"{', '.join(map(str, self.image_shape))}) images: resize the query set to "
                             f"{self.image_shape[0]}x{self.image_shape[1]} with {self.image_shape[2]} channel(s)")
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"query images must be uint8 or float pixels in [0, 1], got dtype {images.dtype}")
        call = np.int32(self._calls)
        self._calls += 1
        self.queries += int(images.shape[0])
        out = host_batched_map(lambda index, batch: self._release_batch(batch, self._key, call, index), self._mesh,
                               self._batch_size, images)
        if not self._measures:
            return out
        self._l1_sums.append(jnp.sum(out[:, -1]))
        return out[:, :-1]

    def ledger(self) -> tuple[int, int]:
        """(queries, calls) so far: the mark from which `l1_since` measures."""
        return self.queries, len(self._l1_sums)

    def l1_since(self, ledger: tuple[int, int]) -> float | None:
        """Mean ‖r(x) − σ(f(x))‖₁ over the queries sent since `ledger` (summed in float64 on the
        host); None without a clean release or without queries."""
        queries, calls = ledger
        if not self._measures or self.queries == queries:
            return None
        return float(np.sum(np.asarray(jax.device_get(self._l1_sums[calls:]), np.float64))) / (self.queries - queries)

    def probabilities(self, images) -> jax.Array:
        """The released probability vectors r(x), (N, K) float32; N queries."""
        if self.labels_only:
            raise PermissionError("this black box releases labels only; use BlackBox.labels")
        return self._query(images)

    def labels(self, images) -> jax.Array:
        """The released labels argmax_k r(x)_k, (N,) int32; N queries."""
        return jnp.argmax(self._query(images), axis=-1).astype(jnp.int32)


def queries_within(budget: int, batch_size: int, what: str) -> int:
    """`budget` as a positive whole number of queries, refused (one line) if smaller than one batch."""
    if budget < batch_size:
        raise ValueError(f"{what}: a budget of {budget} queries is smaller than one batch ({batch_size}); "
                         f"raise the budget or lower the batch size")
    return int(budget)

