"""What the studies read from a validated study config: per-stage schedules, sparsity, records.

The CLI validates a config once (`ast_jax.cli.config`); the studies take it as it is and read it
through these helpers. `TEACHER_NAMES` are the teachers a study can have.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import ml_collections
from ml_collections import config_dict

from ast_jax.losses import resolve_k

#: Every teacher a study can have: the thesis's (docs/method.md §3) and the training-time defences of
#: docs/method.md §11 (InI, MeCo). `stingy` is the base teacher's sparse release, trained by nobody.
TEACHER_NAMES: tuple[str, ...] = ("base", "stingy", "ast", "nasty", "stt", "ini", "meco")
#: The thesis's study, the default `config.teachers`.
THESIS_TEACHERS: tuple[str, ...] = TEACHER_NAMES[:5]
#: Sections of the commands that run many studies on one (the attack matrix, the sweep): they are
#: not part of the study's record (`study_record`), so changing them never refuses a work
#: directory the pipeline already uses.
COMMAND_SECTIONS: tuple[str, ...] = ("matrix", "attacks", "sweep")


def _train_with(config: ml_collections.ConfigDict, section: str, name: str) -> ml_collections.ConfigDict:
    """`config.train` with `config.<section>[name]` applied (when there is one): a locked copy."""
    train = copy.deepcopy(config.train.to_dict())
    override = config[section].get(name) if name in config[section] else None
    if override is not None:
        train.update(override.to_dict())
    result = ml_collections.ConfigDict(train)
    result.lock()
    return result


def train_config_for(config: ml_collections.ConfigDict, architecture: str) -> ml_collections.ConfigDict:
    """`config.train` with `config.student_train[architecture]` applied: a locked copy.

    Architectures without an entry get a copy of `config.train` as is.
    """
    return _train_with(config, "student_train", architecture)


def teacher_train_config(config: ml_collections.ConfigDict, teacher: str) -> ml_collections.ConfigDict:
    """`config.train` with `config.teacher_train[teacher]` applied (InI's and MeCo's own schedules)."""
    return _train_with(config, "teacher_train", teacher)


def sparsity_k(section: Any, num_classes: int) -> int:
    """The `k` a sparse section (`ast`, `stt`, `stingy`) keeps out of `num_classes` classes.

    `k` when set, else ``int(ratio * C)`` as in the Stingy Teacher code (docs/method.md §2); see
    `losses.resolve_k`.
    """
    return resolve_k(num_classes, k=section.k, ratio=section.ratio)


def study_record(config: ml_collections.ConfigDict) -> dict:
    """The study's record (`study.json` and every stage's run.json): the config without `COMMAND_SECTIONS`."""
    plain = json.loads(to_json(config))
    return {key: value for key, value in plain.items() if key not in COMMAND_SECTIONS}


def to_json(config: ml_collections.ConfigDict) -> str:
    """Stable JSON of `config` (sorted keys, 2-space indent, tuples as lists), for run records."""
    return json.dumps(_plain(config), sort_keys=True, indent=2)


def _plain(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        return {key: _plain(value[key]) for key in value.keys()}
    if isinstance(value, config_dict.FieldReference):
        return _plain(value.get())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
