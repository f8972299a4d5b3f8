"""The PyTorch side: the ast_jax `ce`, `kd`, `ast` and `nasty` train steps and PGD, on the interop twins.

The losses are written from the docs/method.md §2 formulas (checked against `ast_jax.losses` by
tests/test_benchmarks.py); the optimizer is `torch.optim.SGD` with momentum 0.9 and coupled weight
decay 5e-4, which `ast_jax.engine.make_optimizer` reproduces. Two variants of the same code
(`VARIANTS`):

* `reference` -- as in the authors' code: eager, float32, NCHW; a `DataLoader` over the uint8
  set in host memory, crop + flip done on the host per batch, then `.to(device)`.
* `tuned` -- bf16 autocast (at precision `bfloat16`), channels_last, `torch.compile` (falls back
  to eager with a note when compilation fails), fused SGD, the uint8 set held on the device and
  augmented there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ast_jax.interop import to_torch_state_dict, torch_models

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

CACHE_SIZE_LIMIT = 64  # compiled graphs per forward: batch sizes x train/eval/attack modes x modules x autocast


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    compile: bool          # torch.compile the models
    channels_last: bool    # NHWC memory format for weights and activations
    data_on_device: bool   # the uint8 set lives on the device and is augmented there; else host DataLoader
    mixed_precision: bool  # bf16 autocast at precision "bfloat16" (otherwise always float32)
    fused_optimizer: bool  # torch.optim.SGD(fused=True)


VARIANTS = {
    "reference": Variant("reference", compile=False, channels_last=False, data_on_device=False,
                         mixed_precision=False, fused_optimizer=False),
    "tuned": Variant("tuned", compile=True, channels_last=True, data_on_device=True,
                     mixed_precision=True, fused_optimizer=True),
}


# --------------------------------------------------------------------------- device

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    """Peak allocated device memory since the last reset; None on CPU."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def release_memory(device: torch.device) -> None:
    """Hand PyTorch's cached blocks back, for the JAX measurements that share the device."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- losses (docs/method.md §2)

def sparse_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """S(z, k): the k largest logits of each row by index, -inf elsewhere."""
    indices = logits.topk(k, dim=-1).indices
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, logits.gather(-1, indices))


def kl_batchmean(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over classes, averaged over the batch, from log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def kd_loss(logits, teacher_logits, labels, temperature: float, omega: float) -> torch.Tensor:
    """omega T^2 KL(sigma_T(t) || sigma_T(s)) + (1 - omega) CE(s, y)."""
    kl = kl_batchmean(F.log_softmax(teacher_logits / temperature, -1), F.log_softmax(logits / temperature, -1))
    return omega * temperature**2 * kl + (1 - omega) * F.cross_entropy(logits, labels)


def epd(target_probs: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """D_EPD(P, Q) = sum_i exp(P_i) (P_i - Q_i), averaged over the batch (thesis eq. 6)."""
    return (target_probs.exp() * (target_probs - probs)).sum(-1).mean()


def ast_loss(logits, adv_logits, labels, temperature: float, omega: float, k: int) -> torch.Tensor:
    """omega T^2 EPD(sigma_T(S(f(x_adv), k)), sigma_T(f(x))) + (1 - omega) CE (thesis eq. 5)."""
    target = F.softmax(sparse_topk(adv_logits.detach(), k) / temperature, -1)
    div = epd(target, F.softmax(logits / temperature, -1))
    return omega * temperature**2 * div + (1 - omega) * F.cross_entropy(logits, labels)


def nasty_loss(logits, base_logits, labels, temperature: float, omega: float) -> torch.Tensor:
    """CE(f(x), y) - omega T^2 KL(sigma_T(f(x)) || sigma_T(f_base(x)))."""
    kl = kl_batchmean(F.log_softmax(logits / temperature, -1),
                      F.log_softmax(base_logits.detach() / temperature, -1))
    return F.cross_entropy(logits, labels) - omega * temperature**2 * kl


def objective(spec, hypers, logits, target, labels) -> torch.Tensor:
    """The loss of step kind `spec.kind` (an `ast_jax.engine.StepSpec`) with the loss values `hypers`
    (an `ast_jax.engine.LossHypers`) on float32 logits."""
    if spec.kind == "ce":
        return F.cross_entropy(logits, labels)
    if spec.kind == "kd":
        return kd_loss(logits, target, labels, hypers.temperature, hypers.omega)
    if spec.kind == "nasty":
        return nasty_loss(logits, target, labels, hypers.temperature, hypers.omega)
    if spec.kind == "ast" and spec.divergence == "epd":
        return ast_loss(logits, target, labels, hypers.temperature, hypers.omega, hypers.k)
    raise ValueError(f"no PyTorch objective for step {spec}")


# --------------------------------------------------------------------------- models

@dataclasses.dataclass
class Modules:
    """The PyTorch twins of one architecture for one variant (built once, reset per measurement)."""

    variant: Variant
    device: torch.device
    student: nn.Module
    teacher: nn.Module  # frozen, inference mode: the kd teacher and the nasty step's base model
    initial: dict       # the student's initial state_dict
    forward: Callable[[torch.Tensor], torch.Tensor]
    teacher_forward: Callable[[torch.Tensor], torch.Tensor]
    note: str = ""

    @property
    def compiled(self) -> bool:
        return self.forward is not self.student

    def reset(self) -> None:
        """Initial weights, training mode (keeps compiled graphs: parameters are copied in place)."""
        self.student.load_state_dict(self.initial)
        self.student.train()

    def use_eager(self, note: str) -> None:
        self.forward, self.teacher_forward, self.note = self.student, self.teacher, note


def memory_format(variant: Variant) -> torch.memory_format:
    return torch.channels_last if variant.channels_last else torch.contiguous_format


def _twin(name: str, num_classes: int, image_size: int, variables: dict, variant: Variant,
          device: torch.device) -> nn.Module:
    model = torch_models.create(name, num_classes, image_size=image_size)
    model.load_state_dict(to_torch_state_dict(variables, name, num_classes))
    return model.to(device, memory_format=memory_format(variant))


def build(variant: Variant, name: str, num_classes: int, image_size: int, weights: Weights,
          device: torch.device, *, allow_compile: bool = True) -> Modules:
    """The student and teacher twins with the initial weights of `weights`, compiled if the variant says so."""
    torch.manual_seed(0)
    student = _twin(name, num_classes, image_size, weights.student, variant, device)
    teacher = _twin(name, num_classes, image_size, weights.teacher, variant, device).eval().requires_grad_(False)
    modules = Modules(variant, device, student, teacher, {k: v.clone() for k, v in student.state_dict().items()},
                      student, teacher)
    if variant.compile and allow_compile:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, CACHE_SIZE_LIMIT)
        modules.forward = torch.compile(student, dynamic=False)
        modules.teacher_forward = torch.compile(teacher, dynamic=False)
        modules.note = "torch.compile (inductor, default mode, static shapes)"
    elif variant.compile:
        modules.note = "torch.compile off (--no-compile): eager"
    return modules


def measure(fn: Callable[..., dict], modules: Modules, *args, **kwargs) -> dict:
    """`fn(modules, ...)`; if it fails with compiled models, once more in eager mode (noted)."""
    try:
        result = fn(modules, *args, **kwargs)
    except Exception as error:  # torch.compile errors surface at the first call of each new graph
        if not modules.compiled:
            raise
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        modules.use_eager(f"torch.compile failed ({type(error).__name__}: {first_line}): eager")
        result = fn(modules, *args, **kwargs)
    release_memory(modules.device)
    return {**result, "compiled": modules.compiled, "note": modules.note}


def autocast(modules: Modules, precision: str):
    enabled = modules.variant.mixed_precision and precision == "bfloat16"
    return torch.autocast(modules.device.type, dtype=torch.bfloat16, enabled=enabled)


@contextlib.contextmanager
def attacking(model: nn.Module):
    """Inference mode with frozen weights (PGD differentiates with respect to the input only)."""
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        model.train().requires_grad_(True)


# --------------------------------------------------------------------------- train step and PGD

def _target(spec, modules: Modules, batch: dict) -> torch.Tensor | None:
    """The constant target of the step: the frozen teacher's logits, or (ast) the trained model's own
    inference-mode logits on the adversarial batch."""
    if spec.kind == "ce":
        return None
    with torch.no_grad():
        if spec.needs_teacher:
            return modules.teacher_forward(batch["image"]).float()
        modules.student.eval()
        try:
            return modules.forward(batch["adv_image"]).float()
        finally:
            modules.student.train()


def step_loss(spec, hypers, modules: Modules, batch: dict) -> torch.Tensor:
    """The step's loss: target first (inference mode), then the training-mode logits of the clean batch."""
    target = _target(spec, modules, batch)
    return objective(spec, hypers, modules.forward(batch["image"]).float(), target, batch["label"])


def optimizer(modules: Modules) -> torch.optim.Optimizer:
    return torch.optim.SGD(modules.student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                           fused=modules.variant.fused_optimizer)


def train_step(spec, hypers, modules: Modules, opt: torch.optim.Optimizer, batch: dict,
               precision: str) -> torch.Tensor:
    with autocast(modules, precision):
        loss = step_loss(spec, hypers, modules, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def normalize(pixels01: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel of NCHW pixels in [0, 1]."""
    mean = torch.tensor(MEAN, device=pixels01.device).view(1, -1, 1, 1)
    std = torch.tensor(STD, device=pixels01.device).view(1, -1, 1, 1)
    return (pixels01 - mean) / std


def pgd(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor, *,
        eps: float, step_size: float, steps: int) -> torch.Tensor:
    """`ast_jax.adversarial.pgd` in pixel space: x <- clip(x0 + clip(x + a sign(grad CE_sum) - x0, -e, e), 0, 1)."""
    x = images
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(forward(normalize(x)).float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        x = images + (x.detach() + step_size * grad.sign() - images).clamp(-eps, eps)
        x = x.clamp(0.0, 1.0)
    return x.detach()


# --------------------------------------------------------------------------- input paths

def nchw(array: np.ndarray) -> torch.Tensor:
    """A NumPy array as a tensor: NHWC images transposed to NCHW, labels as int64."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.permute(0, 3, 1, 2).contiguous() if tensor.dim() == 4 else tensor.long()


def augment(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop after zero padding + horizontal flip of uint8 NCHW images, on their own device."""
    n, c, h, w = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), device=device)
    flip = torch.rand(n, device=device) < 0.5
    columns = torch.arange(w, device=device)
    rows = offsets[:, :1] + torch.arange(h, device=device)
    columns = offsets[:, 1:] + torch.where(flip[:, None], w - 1 - columns, columns)
    padded = F.pad(images, (padding,) * 4)
    examples, channels = torch.arange(n, device=device), torch.arange(c, device=device)
    return padded[examples[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None],
                  columns[:, None, None, :]]


def train_batch(images, labels, adv_images=None) -> dict:
    """Augmented, normalised clean batch (+ aligned adversarial batch) from uint8 rows."""
    batch = {"image": normalize(augment(images, AUGMENT.crop_padding).float() / 255.0), "label": labels}
    if adv_images is not None:
        batch["adv_image"] = adv_images
    return batch


def pixel_batch(images, labels) -> dict:
    return {"image": images.float() / 255.0, "label": labels}


def to_device(modules: Modules, batch: dict) -> dict:
    fmt = memory_format(modules.variant)
    return {k: v.to(modules.device, memory_format=fmt) if v.dim() == 4 else v.to(modules.device)
            for k, v in batch.items()}


def stage(modules: Modules, tensors: tuple) -> tuple:
    """Where the data set lives between batches: on the device (tuned) or in host memory (reference)."""
    return tuple(t.to(modules.device) for t in tensors) if modules.variant.data_on_device else tensors


def batches(modules: Modules, tensors: tuple, batch_size: int, transform: Callable[..., dict], *,
            shuffle: bool) -> Iterator[dict]:
    """`transform(*rows)` per batch, on the device; shuffled batches drop the remainder.

    Host data goes through a `DataLoader` (per-example indexing, `transform` in its collate
    function, then `.to(device)`); device data is gathered and transformed on the device.
    """
    if modules.variant.data_on_device:
        num = len(tensors[0])
        order = torch.randperm(num, device=modules.device) if shuffle else torch.arange(num, device=modules.device)
        if shuffle:
            order = order[: num - num % batch_size]
        rows = (transform(*(t[index] for t in tensors)) for index in order.split(batch_size))
    else:
        rows = DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                          collate_fn=lambda items: transform(*map(torch.stack, zip(*items))))
    return (to_device(modules, batch) for batch in rows)


# --------------------------------------------------------------------------- measurements

def measure_step(modules: Modules, case: Case, batch: dict[str, np.ndarray], *, iters: int, warmup: int) -> dict:
    """Median time of one train step on a batch already on the device."""
    modules.reset()
    opt = optimizer(modules)
    batch = to_device(modules, {k: nchw(v) for k, v in batch.items()})
    reset_peak_memory(modules.device)

    def call():
        train_step(case.spec, case.hypers, modules, opt, batch, case.precision)
        synchronize(modules.device)

    times = time_calls(call, iters=iters, warmup=warmup)
    return {"times_s": times, "median_s": median(times), "peak_bytes": peak_bytes(modules.device)}


def measure_epoch(modules: Modules, case: Case, data: Data) -> dict:
    """Time of one epoch over `data`, input path included (the models are warm from `measure_step`)."""
    modules.reset()
    opt = optimizer(modules)
    arrays = (data.images, data.labels, data.adv_images) if case.spec.needs_adversarial else (data.images, data.labels)
    tensors = stage(modules, tuple(nchw(a) for a in arrays))

    def epoch():
        for batch in batches(modules, tensors, case.batch_size, train_batch, shuffle=True):
            train_step(case.spec, case.hypers, modules, opt, batch, case.precision)
        synchronize(modules.device)

    return {"epoch_s": timed(epoch)}


def measure_pgd(modules: Modules, precision: str, data: Data, *, batch_size: int, steps: int) -> dict:
    """Time of PGD (thesis settings, pixel space) over the whole set, after a one-step warm-up batch."""
    modules.reset()
    tensors = stage(modules, (nchw(data.images), nchw(data.labels)))
    attack = functools.partial(pgd, modules.forward, eps=PGD_EPS, step_size=PGD_STEP_SIZE)
    reset_peak_memory(modules.device)
    with attacking(modules.student), autocast(modules, precision):
        first = next(batches(modules, tensors, batch_size, pixel_batch, shuffle=False))
        attack(first["image"], first["label"], steps=1)
        synchronize(modules.device)

        def run():
            adversarial = [attack(b["image"], b["label"], steps=steps)
                           for b in batches(modules, tensors, batch_size, pixel_batch, shuffle=False)]
            synchronize(modules.device)
            return adversarial

        seconds = timed(run)
    return {"seconds": seconds, "peak_bytes": peak_bytes(modules.device)}
