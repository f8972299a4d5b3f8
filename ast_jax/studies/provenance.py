"""What each stage of a study was built from, recorded beside it and checked before it is used.

Each stage's `run.json` records, besides the study's config, the fingerprints of what it was
built from (`inputs`, `stage_inputs`):

    every stage          train_data: sha256 of the training images and labels
    ast                  adversarial_set: the PGD set's name (itself a fingerprint, see below)
    nasty                base_teacher: fingerprint of the base teacher's parameters
    ini                  ood_set: fingerprint of the OOD images (a query set)
    students/<t>-<arch>  teacher: fingerprint of teacher t's parameters (the base's for stingy)

A teacher's fingerprint is a sha256 of its variables, so an imported PyTorch teacher is
fingerprinted by the weights its file holds. A stage whose recorded inputs differ from the
current ones is refused (`StaleStageError`, one line naming the stage, what changed and how to
start fresh: delete that stage's directory or use another --workdir); nothing is deleted or
retrained silently.

The adversarial set is named by a fingerprint of the base teacher's parameters and
`pgd_settings` (the PGD settings, the seed and the training data); its `.json` records those
settings and the sha256 of the array. Before use it is checked (`checked_adversarial_set`): one
row per training image, the model's input shape, a float dtype, finite values, and the record
matching both the settings and the content. A set that fails is refused
(`UnreadableFileError` naming the file): delete it to regenerate it.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

from ast_jax.data import ArraySplit
from ast_jax.engine import checkpoints
from ast_jax.engine.checkpoints import WorkdirConflictError, check_record
from ast_jax.engine.loop import steps_per_epoch
from ast_jax.files import UnreadableFileError, load_npy, read_json
from ast_jax.studies.settings import to_record
from ast_jax.studies.study import Study


class StaleStageError(WorkdirConflictError):
    """A stage in the work directory was built from other inputs than the current ones (kept as is)."""


def fingerprint(variables, settings: dict) -> str:
    """sha256 (16 hex digits) of a model's variables and a JSON-able dict of settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(variables), key=lambda kv: jax.tree_util.keystr(kv[0])):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()[:16]


def stage_inputs(study: Study, **inputs: str) -> dict:
    """A stage's inputs as recorded in its run.json: the training data's hash and `inputs`."""
    return {"train_data": study.train_data, **inputs}


def check_stage(stage: str, directory: str, inputs: dict) -> None:
    """Refuse a stage whose run.json records other `inputs` (StaleStageError, one line).

    Nothing is deleted: the message says to delete `directory` or use another --workdir.
    """
    record_path = os.path.join(directory, checkpoints.RUN_RECORD)
    if os.path.exists(record_path):
        check_record(read_json(record_path).get("inputs") or {}, inputs, StaleStageError, lambda changed: (
            f"stage {stage} in {directory} was built from other inputs (changed: {changed}); it is kept as it "
            f"was. To start it fresh delete {directory}, or use another --workdir"))


def finished(directory: str, train_config, num_examples: int) -> bool:
    """Whether the run in `directory` completed its epochs and saved that checkpoint (numbered by
    optimizer steps: epochs x steps per epoch)."""
    rows = checkpoints.read_metrics(directory)
    last_step = train_config.epochs * steps_per_epoch(num_examples, train_config.batch_size)
    return (bool(rows) and rows[-1]["epoch"] == train_config.epochs
            and os.path.isdir(os.path.join(directory, "checkpoints", str(last_step))))


def pgd_settings(study: Study) -> dict:
    """What the adversarial set depends on besides the base teacher: PGD settings, seed, training images."""
    return {"pgd": to_record(study.config.pgd), "data": study.config.data.name, "seed": study.config.seed,
            "train_images": study.train_data}


def adversarial_set_record(adv: np.ndarray, settings: dict) -> dict:
    """The record written beside an adversarial set: its PGD `settings` and the array's sha256."""
    return {"settings": settings, "sha256": hashlib.sha256(np.ascontiguousarray(adv).tobytes()).hexdigest()}


def adversarial_set_problem(adv: np.ndarray, train: ArraySplit, record, settings: dict) -> str | None:
    """What is wrong with a cached adversarial set for `train` and its `record` (None: nothing).

    It needs one row per training image, the training images' (H, W, C), a float dtype, finite
    values, and a record holding the current PGD `settings` and the array's sha256.
    """
    if adv.shape[:1] != (len(train),):
        return f"it has {adv.shape[0] if adv.ndim else 0} rows for {len(train)} training images"
    if adv.shape[1:] != train.images.shape[1:]:
        return f"its images have shape {adv.shape[1:]}, the model's input is {train.images.shape[1:]}"
    if not np.issubdtype(adv.dtype, np.floating):
        return f"its dtype is {adv.dtype}, not floating point"
    if not np.isfinite(adv).all():
        return "it holds NaN or infinite values"
    if record != adversarial_set_record(adv, settings):
        return "its record (the .json beside it) is missing or names other PGD settings or other content"
    return None


def checked_adversarial_set(path: str, record_path: str, train: ArraySplit, settings: dict) -> np.ndarray:
    """The adversarial set cached at `path`, refused (UnreadableFileError) if `adversarial_set_problem` finds one."""
    adv = load_npy(path)
    record = read_json(record_path) if os.path.exists(record_path) else None
    problem = adversarial_set_problem(adv, train, record, settings)
    if problem:
        raise UnreadableFileError(f"adversarial set {path} does not fit this study: {problem}; delete it "
                                  f"(and {record_path}) to regenerate it")
    return adv
