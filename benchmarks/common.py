"""What the JAX and PyTorch paths share: the workload, its synthetic data, the initial weights, timing.

Both paths train the same architecture from the same initial weights (a Flax initialisation,
copied into the PyTorch twin with `ast_jax.interop`) on the same synthetic CIFAR-shaped data, with
the docs/method.md §5 CIFAR-10 hyperparameters below.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ast_jax import models
from ast_jax.data import AugmentSpec, normalize
from ast_jax.data.specs import CIFAR_MEAN, CIFAR_STD
from ast_jax.engine import LossHypers, StepSpec

# docs/method.md §5, CIFAR-10 rows: KD attack, AST ResNet18 (thesis), Nasty Teacher.
STEP_SPECS = {"ce": StepSpec("ce"), "kd": StepSpec("kd"), "ast": StepSpec("ast"), "nasty": StepSpec("nasty")}
#: The loss values of each step (τ, ω, k).
STEP_HYPERS = {
    "ce": LossHypers(),
    "kd": LossHypers(temperature=4.0, omega=0.9),
    "ast": LossHypers(temperature=6.0, omega=0.05, k=2),
    "nasty": LossHypers(temperature=4.0, omega=0.04),
}
PRECISIONS = ("float32", "bfloat16")
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
PGD_EPS, PGD_STEP_SIZE = 0.3, 0.01  # thesis eq. 4, pixel space
MEAN, STD = CIFAR_MEAN, CIFAR_STD
AUGMENT = AugmentSpec(crop_padding=4, flip=True)  # CIFAR train augmentation (docs/method.md §4)
CHANNELS = 3

# Dense bf16 tensor-core peaks (vendor data sheets), matched against the device name / kind.
PEAK_BF16_TFLOPS = (("h100", 989.0), ("h200", 989.0), ("a100", 312.0))


@dataclasses.dataclass(frozen=True)
class Case:
    """One cell of the grid: a train step of `model` at one batch size and precision."""

    model: str
    step: str
    batch_size: int
    precision: str
    image_size: int
    num_classes: int

    @property
    def spec(self) -> StepSpec:
        return STEP_SPECS[self.step]

    @property
    def hypers(self) -> LossHypers:
        return STEP_HYPERS[self.step]


@dataclasses.dataclass(frozen=True)
class Data:
    """A synthetic training set: uint8 NHWC images, labels, and model-input adversarial images."""

    images: np.ndarray
    labels: np.ndarray
    adv_images: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, num: int) -> "Data":
        return Data(self.images[:num], self.labels[:num], self.adv_images[:num])


def _normalized(pixels01: np.ndarray) -> np.ndarray:
    """The library's per-channel (x - mean) / std, as host float32."""
    return np.array(normalize(pixels01.astype(np.float32), MEAN, STD))  # a writable copy, for torch.from_numpy


def synthetic_data(num: int, image_size: int, num_classes: int, seed: int = 0) -> Data:
    """Uniform random pixels and labels; the adversarial images are other random pixels, normalised."""
    rng = np.random.default_rng(seed)
    shape = (num, image_size, image_size, CHANNELS)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    adv = _normalized(rng.integers(0, 256, shape, dtype=np.uint8) / 255.0)
    return Data(images, rng.integers(0, num_classes, num).astype(np.int32), adv)


def fixed_batch(data: Data, batch_size: int) -> dict[str, np.ndarray]:
    """The first `batch_size` examples in model-input space (NHWC float32), for the step timings."""
    return {"image": _normalized(data.images[:batch_size] / 255.0), "label": data.labels[:batch_size],
            "adv_image": data.adv_images[:batch_size]}


@dataclasses.dataclass(frozen=True)
class Weights:
    """Initial Flax variables (host NumPy) of the trained model and of the frozen teacher / base model."""

    student: dict
    teacher: dict


def initial_weights(name: str, num_classes: int, image_size: int, seed: int = 0) -> Weights:
    model = models.create(name, num_classes)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, image_size, image_size, CHANNELS)), train=False))
    student, teacher = (jax.device_get(init(jax.random.key(s, impl="rbg"))) for s in (seed, seed + 1))
    return Weights(student, teacher)


def time_calls(call: Callable[[], None], *, iters: int, warmup: int) -> list[float]:
    """Wall time of each of `iters` calls after `warmup` untimed ones; `call` must synchronise."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def timed(call: Callable[[], None]) -> float:
    """Wall time of one synchronising call."""
    return time_calls(call, iters=1, warmup=0)[0]


def median(times: list[float]) -> float:
    return statistics.median(times)


def peak_bf16_tflops(*names: str) -> float | None:
    """Dense bf16 peak of the first name (device name or kind) that mentions a known accelerator."""
    for name in names:
        for key, peak in PEAK_BF16_TFLOPS:
            if key in name.lower():
                return peak
    return None


def results_dir(out: str, device_name: str, files, overwrite: bool) -> Path:
    """OUT/DEVICE_NAME; SystemExit naming the `files` that exist there unless `overwrite`."""
    directory = Path(out) / device_name
    existing = [str(directory / name) for name in files if (directory / name).exists()]
    if existing and not overwrite:
        raise SystemExit(f"error: refusing to overwrite {', '.join(existing)}; pass --overwrite to replace them")
    return directory


def log(message: str) -> None:
    """A progress line on stderr, with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
