"""Transfer-set attacks: query a fixed set of images once, then distil a clone on it (docs/method.md §10.3).

- `kd`: the thesis's attack (eq. 1) behind the black box. The victim's training images are queried
  once each, and the clone learns from the released vectors at temperature τ plus the true labels
  (weight 1 − ω). Its clone trains without augmentation, since every target belongs to one
  queried image.
- `kd_hard` (docs/method.md §10.6): the same images, but the box is asked for its top-1 label only
  and the clone learns ω · CE(σ(s), ŷ_V) + (1 − ω) · CE(σ(s), y): the kd step at τ = 1 on the
  label's one-hot target logits, since KL(onehot(ŷ) ‖ σ(s)) = CE(σ(s), ŷ).
- `kd_retemper` (docs/method.md §10.6): `kd` at the attacker's own τ_a (its `temperature`), one
  cell per τ_a of a grid.
- `knockoff`: KnockoffNets' random strategy. Exactly `budget` images are drawn uniformly, without
  replacement, from a surrogate query set (the pool is refilled when it runs out). Soft: CE against
  the release, −Σ_k r_k log σ(c)_k, whose gradient equals that of KL(r ‖ σ(c)): the kd step at
  T = 1, ω = 1. Hard: CE on the released label, and the box is only asked for labels. Recipe `dcp`
  (`common.KNOCKOFF_RECIPES`): the clone trains with random crops (zero padding 4) and horizontal
  flips, each augmented image keeping the target the box gave for the un-augmented one, SGD
  Nesterov, a cosine schedule per step, and `clone` names its architecture (ResNet-34).

The attacker's data (docs/method.md §10.6): kd, kd_hard and kd_retemper use the `budget` share of
the victim's training set, knockoff the `pool` share of its query set, each a seeded draw
without replacement (`common.attacker_indices`).

The attacker's target from a released vector p′ (docs/method.md §10.1) is log p′, with zeros as
−inf, so that the tempered target p′^{1/τ} / Σ p′^{1/τ} keeps them at zero (a one-hot label stays
one-hot at any τ). The transfer set, the query count and the mean ℓ1 the box measured on those
queries are saved in the cell's folder before training: a resumed cell does not query again, and
the clone resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ast_jax.attacks.common import AttackContext, AttackResult, attacker_indices
from ast_jax.data import ArraySplit, AugmentSpec
from ast_jax.defences.blackbox import BlackBox
from ast_jax.engine import LossHypers, RunData, StepSpec, TrainingRun, TrainSettings, fit, to_host
from ast_jax.files import atomic_write, is_writer, load_npy, read_json, save_npy
from ast_jax.rng import KNOCKOFF_DRAW

TRANSFER_RECORD = "transfer.json"
_TRAINING_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "schedule", "milestones",
                  "lr_decay")
#: Knockoff's `augment` setting: the clone's train-time augmentation (DCP's code: RandomCrop(padding=4) and
#: RandomHorizontalFlip).
AUGMENTS = {"none": AugmentSpec(), "flip_crop": AugmentSpec(crop_padding=4, flip=True)}


def attacker_logits(released: np.ndarray) -> np.ndarray:
    """log p′ with −inf for zeros: the target logits whose tempered softmax is p′^{1/τ} / Σ p′^{1/τ}.

    A released vector with no positive entry (rounding can zero a whole row) carries no
    information and becomes uniform.
    """
    released = np.asarray(released, np.float32)
    with np.errstate(divide="ignore"):
        logits = np.log(released)
    return np.where((released > 0).any(-1, keepdims=True), logits, 0.0).astype(np.float32)


def label_logits(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """A label as target logits: 0 for its class, −inf elsewhere (one-hot at any temperature)."""
    return np.where(np.eye(num_classes, dtype=bool)[labels], 0.0, -np.inf).astype(np.float32)


def query_targets(box: BlackBox, images: np.ndarray, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """(released labels, target logits) of `images`: one query each.

    `labels="hard"` or a labels-only box: the box is asked for labels only and the targets are
    one-hot; `"soft"`: the released vectors' `attacker_logits`.
    """
    if labels == "hard" or box.labels_only:
        released = to_host(box.labels(images))
        return released, label_logits(released, box.num_classes)
    probs = to_host(box.probabilities(images))
    return np.argmax(probs, -1).astype(np.int32), attacker_logits(probs)


def clone_training(settings) -> TrainSettings:
    """The `fit` schedule of a clone from an attack's settings: evaluated every epoch, checkpointed
    every 10 epochs and at the end (a killed clone resumes from there)."""
    config = {key: settings[key] for key in _TRAINING_KEYS}
    config["milestones"] = tuple(config["milestones"])
    config["nesterov"] = settings.get("nesterov", False)
    return TrainSettings(**config, eval_batch_size=512, eval_every=1, checkpoint_every=10)


def clone_step(labels: str) -> tuple[StepSpec, LossHypers]:
    """A clone's step on a transfer set: CE on `hard` labels; on `soft` targets kd at τ = 1, ω = 1
    (the divergence from the released distribution alone)."""
    if labels == "hard":
        return StepSpec("ce"), LossHypers()
    return StepSpec("kd"), LossHypers(temperature=1.0, omega=1.0)


def transfer_set(box: BlackBox, images: np.ndarray, labels: str, directory: str) -> tuple[dict, int]:
    """The transfer set {'images', 'labels', 'targets', 'query_l1'} and its query count, queried once
    and kept in `directory`; 'query_l1' is the box's mean ℓ1 on these queries (None where the box
    does not measure it), kept in the record so that a resumed cell still reports it."""
    record_path = os.path.join(directory, TRANSFER_RECORD)
    paths = {name: os.path.join(directory, f"transfer-{name}.npy") for name in ("images", "labels", "targets")}
    if os.path.exists(record_path):
        record = read_json(record_path)
        transfer = {name: load_npy(path) for name, path in paths.items()}
        return dict(transfer, query_l1=record.get("query_l1")), int(record["queries"])
    ledger = box.ledger()
    released, targets = query_targets(box, images, labels)
    transfer = {"images": np.asarray(images), "labels": released, "targets": targets,
                "query_l1": box.l1_since(ledger)}
    queries = box.queries - ledger[0]
    if is_writer():
        for name, path in paths.items():
            save_npy(path, transfer[name])
        atomic_write(record_path, json.dumps({"queries": queries, "query_l1": transfer["query_l1"], "labels": labels,
                                              "images": len(images)}))
    return transfer, queries


def distil(transfer: dict, spec: StepSpec, hypers: LossHypers, settings, context: AttackContext, queries: int, *,
           true_labels: np.ndarray | None = None, model=None) -> AttackResult:
    """Train a fresh clone (`model`, or the context's) on the transfer set with `spec` and `hypers`;
    targets given, no augmentation unless the settings' `augment` asks (each augmented image then
    keeps its un-augmented image's target)."""
    labels = transfer["labels"] if true_labels is None else true_labels
    data = RunData(ArraySplit(transfer["images"], labels.astype(np.int32)), context.test, context.mean, context.std,
                   AUGMENTS[settings.get("augment", "none")], targets=None if spec.kind == "ce" else transfer["targets"],
                   augmented_targets=True)
    run = TrainingRun(directory=os.path.join(context.directory, "clone"),
                      record={"attack": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}},
                      model=model or context.clone, train_config=clone_training(settings), spec=spec, seed=context.seed,
                      data=data, hypers=hypers)
    result = fit(run, mesh=context.mesh, log=context.log)
    return AttackResult(result.variables, queries, result.history, result.final_accuracy, result.best_accuracy,
                        transfer.get("query_l1"))


def attacker_data(settings, context: AttackContext) -> ArraySplit:
    """The attacker's `budget` share of the victim's training set (`attacker_indices`)."""
    train = context.victim_train
    chosen = attacker_indices(len(train), settings["budget"], context.seed, "the attack's budget")
    return ArraySplit(train.images[chosen], train.labels[chosen])


def kd(box: BlackBox, settings, context: AttackContext) -> AttackResult:
    """The thesis's KD attack (eq. 1) on the attacker's share of the victim's training images, each
    queried once; `kd_retemper` is this attack at the attacker's τ_a."""
    data = attacker_data(settings, context)
    transfer, queries = transfer_set(box, data.images, "soft", context.directory)
    hypers = LossHypers(temperature=settings["temperature"], omega=settings["omega"])
    return distil(transfer, StepSpec("kd"), hypers, settings, context, queries, true_labels=data.labels)


def kd_hard(box: BlackBox, settings, context: AttackContext) -> AttackResult:
    """Hard-label KD (docs/method.md §10.6): ω · CE(σ(s), ŷ_V) + (1 − ω) · CE(σ(s), y), ŷ_V the box's
    top-1 label (the only thing asked of it), as the kd step at τ = 1 on one-hot target logits."""
    data = attacker_data(settings, context)
    transfer, queries = transfer_set(box, data.images, "hard", context.directory)
    hypers = LossHypers(temperature=1.0, omega=settings["omega"])
    return distil(transfer, StepSpec("kd"), hypers, settings, context, queries, true_labels=data.labels)


def knockoff_indices(pool_size: int, budget: int, rng: np.random.Generator) -> np.ndarray:
    """`budget` indices into a pool, uniform without replacement, refilling the pool when it runs out."""
    rounds = -(-budget // pool_size)
    return np.concatenate([rng.permutation(pool_size) for _ in range(rounds)])[:budget]


def knockoff(box: BlackBox, settings, context: AttackContext) -> AttackResult:
    """KnockoffNets, random strategy: exactly `budget` queries, then a clone on the transfer set."""
    if context.query_images is None:
        raise ValueError("knockoff needs a query set (AttackContext.query_images)")
    pool = context.query_images[attacker_indices(len(context.query_images), settings["pool"], context.seed,
                                                 "knockoff's pool")]
    rng = np.random.default_rng([context.seed, KNOCKOFF_DRAW])  # the draw depends on the seed alone
    images = pool[knockoff_indices(len(pool), settings["budget"], rng)]
    transfer, queries = transfer_set(box, images, settings["labels"], context.directory)
    return distil(transfer, *clone_step(settings["labels"]), settings, context, queries)


__all__ = ["attacker_data", "attacker_logits", "clone_step", "distil", "kd", "kd_hard", "knockoff", "knockoff_indices",
           "label_logits", "query_targets", "transfer_set"]
