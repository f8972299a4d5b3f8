"""What every attack shares: the published settings (`DEFAULTS`), their check, the thief's context
and the result an attack returns (docs/method.md §10.3)."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Mapping

import numpy as np

from ast_jax.data import ArraySplit
from ast_jax.defences.blackbox import queries_within
from ast_jax.engine.optim import OPTIMIZERS, SCHEDULES
from ast_jax.models import canonical_name

ATTACKS: tuple[str, ...] = ("kd", "knockoff", "jbda", "dfme")
LABELS = ("soft", "hard")

#: The clone's training, shared by kd, knockoff and jbda (KnockoffNets' and InI's values for CIFAR).
_CLONE_TRAINING = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128, epochs=50,
                       schedule="cosine", milestones=(), lr_decay=0.1)
#: Published defaults per attack (docs/method.md §10.3); a study's config overrides them.
DEFAULTS: dict[str, dict[str, Any]] = {
    # The thesis's KD on CIFAR-10: T 4, omega 0.9, 160 epochs, x0.1 at 80 and 120.
    "kd": dict(_CLONE_TRAINING, temperature=4.0, omega=0.9, epochs=160, schedule="multistep", milestones=(80, 120)),
    # recipe "ini" (InI's code, the defaults); "dcp": DCP's clone training (KNOCKOFF_RECIPES).
    "knockoff": dict(_CLONE_TRAINING, budget=50_000, labels="soft", query_set="cifar100", recipe="ini",
                     nesterov=False, augment="none", clone=""),
    "jbda": dict(_CLONE_TRAINING, labels="soft", seeds=150, seed_order="balanced", rounds=6, epochs=10,
                 step=0.1, space="pixel", relabel_all=False, flip_every=0, schedule="multistep"),
    "dfme": dict(budget=20_000_000, batch_size=256, directions=1, fd_epsilon=1e-3, nz=256, ngf=64,
                 generator_lr=1e-4, clone_lr=0.1, momentum=0.9, weight_decay=5e-4, clone_steps=5,
                 iterations_per_epoch=50, lr_milestones=(0.1, 0.3, 0.5), lr_decay=0.3, variant="dfme"),
}
#: Knockoff's recipes (docs/method.md §10.3): what each fixes. "dcp": DCP's code trains a ResNet-34 clone
#: with SGD Nesterov 0.9, weight decay 5e-4, a cosine schedule per step, batch 64, and flip + crop on
#: images whose targets the black box gave for the un-augmented image; its lr (0.1, the code; the
#: paper says 0.01), epochs (50) and budget (the whole surrogate train split) stay settings.
KNOCKOFF_RECIPES: dict[str, dict[str, Any]] = {
    "ini": {},
    "dcp": {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine_step",
            "batch_size": 64, "augment": "flip_crop", "clone": "resnet34"},
}
_CHOICES = dict(labels=LABELS, optimizer=OPTIMIZERS, schedule=SCHEDULES, seed_order=("balanced", "first"),
                space=("pixel", "reference"), variant=("dfme", "maze"), recipe=tuple(KNOCKOFF_RECIPES),
                augment=("none", "flip_crop"))
_POSITIVE_INTEGERS = ("budget", "batch_size", "epochs", "seeds", "rounds", "directions", "nz", "ngf",
                      "clone_steps", "iterations_per_epoch")


@dataclasses.dataclass(frozen=True)
class AttackContext:
    """What an attack has besides the black box: the clone to train and the data a thief holds."""

    clone: Any                       # the clone's architecture, models.create(..., axis_name=AXIS)
    victim_train: ArraySplit         # the victim's labelled training set (kd; jbda's seeds)
    test: ArraySplit                 # the victim's test set, for the clone's per-epoch accuracy
    mean: tuple                      # the victim data's normalisation (the clone uses the same)
    std: tuple
    mesh: Any
    seed: int
    directory: str                   # the cell's folder: resumable state lives here
    log: Callable[[str], None] = print
    query_images: np.ndarray | None = None   # uint8 (N, H, W, C) surrogate query set (knockoff)
    eval_batch_size: int = 512


@dataclasses.dataclass
class AttackResult:
    variables: dict          # the clone's {'params', 'batch_stats'}
    queries: int             # queries this attack spent
    history: list[dict]      # one row per clone epoch (round for jbda), with 'test_accuracy' where evaluated
    final_accuracy: float    # the clone's test accuracy after its last epoch
    best_accuracy: float     # its best evaluated epoch
    query_l1: float | None = None  # mean ‖r(x) − σ(f(x))‖₁ over its queries, where the box measures it


def defaults(kind: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`DEFAULTS[kind]` with the values of the recipe `settings` names (knockoff), which settings then override."""
    return {**DEFAULTS[kind], **KNOCKOFF_RECIPES.get(settings.get("recipe", "ini"), {})}


def check_settings(kind: str, settings: Mapping[str, Any], where: str) -> None:
    """One-line ValueError naming `where` for an unknown kind, unknown or bad keys, a setting that
    contradicts the recipe named, or a budget below one batch."""
    if kind not in ATTACKS:
        raise ValueError(f"{where}.kind: unknown attack {kind!r}; valid: {', '.join(ATTACKS)}")
    unknown = sorted(set(settings) - set(DEFAULTS[kind]))
    if unknown:
        raise ValueError(f"{where}: attack {kind!r} has no setting(s) {unknown}; valid: {', '.join(DEFAULTS[kind])}")
    for key, valid in _CHOICES.items():
        if key in settings and settings[key] not in valid:
            raise ValueError(f"{where}.{key}: must be one of {valid}, got {settings[key]!r}")
    if type(settings.get("nesterov", False)) is not bool:
        raise ValueError(f"{where}.nesterov: must be True or False, got {settings['nesterov']!r}")
    if settings.get("clone"):
        try:
            canonical_name(settings["clone"])
        except ValueError as error:
            raise ValueError(f"{where}.clone: {error} (or '' for the matrix's clone)") from None
    recipe = settings.get("recipe", "ini")
    wrong = {key: settings[key] for key, value in KNOCKOFF_RECIPES.get(recipe, {}).items()
             if key in settings and settings[key] != value}
    if wrong:
        raise ValueError(f"{where}: recipe {recipe!r} trains with {KNOCKOFF_RECIPES[recipe]}, but the cell sets {wrong}; "
                         f"drop those settings, or use recipe 'ini' with settings of your own")
    for key in _POSITIVE_INTEGERS:
        value = settings.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{where}.{key}: must be a positive integer, got {value!r}")
    if "budget" in settings:
        per_batch = settings.get("batch_size", DEFAULTS[kind]["batch_size"])
        if kind == "dfme":
            per_batch *= settings.get("directions", 1) + 1 + settings.get("clone_steps", 5)
        queries_within(settings["budget"], per_batch, f"{where}.budget")
