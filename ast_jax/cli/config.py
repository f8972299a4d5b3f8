"""Loading a study config: a file of `ast_jax.configs` or a path, overrides, and the one validation.

Loading: ``--config digits`` (a bare name) is always the package's ``ast_jax/configs/digits.py``,
never a file of the current directory; a path (with a ``/`` or ending in ``.py``) is used as
given. A ``:variant`` suffix is passed to ``get_config`` (``cifar10_resnet18:reference``).

Overrides are ml_collections' ``config_flags`` (absl flags on the locked config):
``--config.train.epochs=3`` or ``--config.train.epochs 3``; the field's type parses the value
(int -> float allowed, bools as ``true``/``false``, tuples as ``(80,120)``, ``80,120``, ``80`` or
``()``; a tuple of strings as ``"('cnn','resnet18')"`` or by repeating the flag:
``--config.students=cnn --config.students=resnet18``). In ``ast``, ``stt`` and ``stingy``, giving
one of ``k`` and ``ratio`` clears the other (``--config.ast.k=3`` switches to an absolute ``k``).
A short smoke run of a CIFAR study must also drop the milestones
(``--config.train.epochs=3 --config.train.milestones=()``) and shorten the CNN student
(``--config.student_train.cnn.epochs=3``).

:func:`validate` checks every value and is called here, once per config the command runs (a
sweep's cells included, `sweep_cell_settings`); :func:`to_settings` then turns the validated config
into the typed `StudySettings` the studies take (`load_settings` does both). The studies never
see a config, and never validate again.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os
import re
import typing
from typing import Any, Mapping, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from ast_jax import configs
from ast_jax.adversarial import SPACES as PGD_SPACES
from ast_jax.attacks.common import check_settings
from ast_jax.configs.common import (
    DTYPES,
    INI_DEFAULTS,
    MECO_DEFAULTS,
    SCHEMA,
    SPARSE_SECTIONS,
    cleared_sparsity,
)
from ast_jax.data import DATASETS, dataset_spec
from ast_jax.data.query_sets import QUERY_SETS, query_set_problem
from ast_jax.defences.ini import InISettings
from ast_jax.defences.meco import MecoSettings
from ast_jax.engine.optim import OPTIMIZERS
from ast_jax.engine.steps import PAIRINGS, TARGET_STATISTICS
from ast_jax.losses import DIVERGENCES
from ast_jax.models import MODEL_NAMES
from ast_jax.studies import sweep
from ast_jax.studies.settings import TEACHER_NAMES, StudySettings, sparsity_k
from ast_jax.studies.victims import parse_victim


def configs_dir() -> str:
    """The package's ``ast_jax/configs/`` (in a checkout, an editable install or a wheel)."""
    return os.path.dirname(os.path.abspath(configs.__file__))


def resolve_config_path(name: str) -> str:
    """The file of config `name`: a bare name (``digits``) is ``configs/digits.py`` of the
    repository, whatever the current directory holds; a path (with a ``/`` or ending in ``.py``)
    is taken as given. Raises FileNotFoundError listing the repository's configs."""
    explicit = "/" in name or os.sep in name or name.endswith(".py")
    path = name if explicit else os.path.join(configs_dir(), name + ".py")
    if os.path.isfile(path):
        return path
    folder = configs_dir()
    names = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f not in ("__init__.py", "common.py")) if os.path.isdir(folder) else []
    where = "no such file" if explicit else f"not in {folder}"
    raise FileNotFoundError(f"config {name!r} not found ({where}); give one of {', '.join(names) or '(none)'} "
                            f"or the path of a .py file defining get_config")


def _config_from_file(path: str, variant: str | None) -> ml_collections.ConfigDict:
    """Runs the config file `path` and returns its ``get_config(variant)``; any failure is a
    ValueError naming the file (with the original exception as its cause)."""
    module_name = "ast_jax_study_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if not callable(get_config):
            raise ValueError("it defines no get_config(variant)")
        config = get_config() if variant is None else get_config(variant)
    except SyntaxError as error:
        raise ValueError(f"config file {path}, line {error.lineno}: {error.msg}; fix its syntax") from error
    except Exception as error:  # the file is the user's: whatever it raises is reported as its problem
        detail = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        raise ValueError(f"config file {path}: {detail}") from error
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"config file {path}: get_config returned {type(config).__name__}, expected a ConfigDict")
    return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``name[:variant]``, locks it, applies `overrides` and validates it.

    Args:
      spec: a config name (``cifar10_resnet18``, a module of the package's ``ast_jax/configs/``) or the path
        of a config file, optionally followed by ``:variant`` (``cifar10_resnet18:reference``).
        No variant means ``get_config()``'s default.
      overrides: command-line arguments ``--config.a.b=value`` / ``--config.a.b value`` (see
        :func:`apply_overrides`).

    Raises:
      FileNotFoundError: no such config (the message lists the repository's configs).
      ValueError: the file fails to load, an unknown variant, key or badly typed or invalid value
        (the message names the file or key).
    """
    name, _, variant = spec.partition(":")
    config = _config_from_file(resolve_config_path(name), variant or None)
    config.lock()
    apply_overrides(config, overrides)
    validate(config)
    return config


def load_settings(spec: str, overrides: Sequence[str] = ()) -> StudySettings:
    """`load_config`, then `to_settings`: what a command hands to the studies."""
    return to_settings(load_config(spec, overrides))


def to_settings(config: ml_collections.ConfigDict) -> StudySettings:
    """The validated `config` as typed settings: each section a dataclass of `ast_jax.studies.settings`,
    the free-form sections (`student_train`, `teacher_train`, `attacks`) plain dicts."""
    return _typed(StudySettings, config)


def _typed(cls: type, node: ml_collections.ConfigDict):
    """Dataclass `cls` from config section `node`: one field per key (a field with a default may be
    absent from the config, e.g. `TrainSettings.schedule`); sections become their field's dataclass."""
    types = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    extra = [key for key in node.keys() if key not in fields]
    if extra:
        raise TypeError(f"{cls.__name__} has no field for config key(s) {', '.join(extra)}")
    values = {}
    for name, field in fields.items():
        if name not in node and field.default is not dataclasses.MISSING:
            continue
        value = node[name]
        if dataclasses.is_dataclass(types[name]):
            value = _typed(types[name], value)
        elif isinstance(value, ml_collections.ConfigDict):
            value = value.to_dict()
        values[name] = value
    return cls(**values)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies command-line overrides to the locked `config` in place, with ``config_flags``.

    `overrides` are arguments as on the command line: ``--config.a.b=value`` or the two
    arguments ``--config.a.b``, ``value``; a bool also as ``--config.a.b`` / ``--noconfig.a.b``.
    Giving one of ``k``/``ratio`` of a sparse section clears the other.

    Raises ValueError naming the key: an unknown key (listing the valid keys at that level), a
    section as target, a value the field's type cannot parse, or an argument that is no override.
    """
    argv = ["ast-jax", *overrides]
    for argument in overrides:
        match = re.match(r"--?(?:no)?config\.([^=]+)", argument)
        if match:
            _check_key(config, match.group(1))
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, lock_config=True, sys_argv=argv)
    try:
        unparsed = flag_values(argv)[1:]
    except flags.Error as error:
        raise ValueError(_flag_error_message(error, config)) from error
    if unparsed:
        raise ValueError(f"unexpected argument {unparsed[0]!r}; config overrides are --config.KEY=VALUE "
                         f"or --config.KEY VALUE (a bool: --config.KEY=false)")
    given = config_flags.get_override_values(flag_values["config"])
    for section in SPARSE_SECTIONS:
        cleared = cleared_sparsity([key.split(".")[1] for key in given if key.split(".")[0] == section])
        if cleared:
            config[section][cleared] = None
    return config


def _check_key(config: ml_collections.ConfigDict, path: str) -> None:
    """ValueError unless ``config.<path>`` is a value of `config` (naming the valid keys)."""
    node, level = config, "config"
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            valid = ", ".join(node.keys()) if isinstance(node, ml_collections.ConfigDict) else f"({level} is a value)"
            raise ValueError(f"unknown config key {level}.{part}; valid keys under {level}: {valid or '(none)'}")
        node, level = node[part], f"{level}.{part}"
    if isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f"{level} is a section, not a value; override its keys: "
                         f"{', '.join(f'{level}.{key}' for key in node.keys())}")


def _flag_error_message(error: flags.Error, config: ml_collections.ConfigDict) -> str:
    """absl's ``flag --config.a.b=v: reason`` as ``config.a.b: cannot parse 'v' as <type> (reason)``."""
    match = re.match(r"flag --(config\.([^=]+))=(.*?): (.*)", str(error), re.DOTALL)
    if not match:
        return f"{error}; config overrides are --config.KEY=VALUE or --config.KEY VALUE"
    key, path, value, reason = match.groups()
    *sections, leaf = path.split(".")
    node = config
    for section in sections:
        node = node[section]
    return f"{key}: cannot parse {value!r} as {node.get_type(leaf).__name__} ({reason})"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

class _Checker:
    """Collects every problem of a config; `raise_if_any` reports them all in one ValueError."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.errors: list[str] = []

    def fail(self, message: str) -> None:
        self.errors.append(message)

    def get(self, path: str, node: Any = None, prefix: str = "config") -> Any:
        node = self.config if node is None else node
        for part in path.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise _Missing(f"{prefix}.{path} is missing")
            node = node[part]
        return node

    # Typed checks: each returns the value when it has the right type, else None.
    def integer(self, key: str, value: Any, minimum: int = 1) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(f"{key} must be an int, got {value!r}")
            return None
        if value < minimum:
            self.fail(f"{key} must be {'positive' if minimum == 1 else f'>= {minimum}'}, got {value}")
        return value

    def number(self, key: str, value: Any) -> float | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            self.fail(f"{key} must be a finite number, got {value!r}")
            return None
        return float(value)

    def positive(self, key: str, value: Any) -> None:
        v = self.number(key, value)
        if v is not None and not v > 0:
            self.fail(f"{key} must be > 0, got {value}")

    def non_negative(self, key: str, value: Any) -> None:
        v = self.number(key, value)
        if v is not None and v < 0:
            self.fail(f"{key} must be >= 0, got {value}")

    def unit(self, key: str, value: Any) -> None:
        v = self.number(key, value)
        if v is not None and not 0.0 <= v <= 1.0:
            self.fail(f"{key} must lie in [0, 1], got {value}")

    def choice(self, key: str, value: Any, valid: Sequence[str]) -> None:
        if value not in valid:
            self.fail(f"{key} must be one of {', '.join(valid)}, got {value!r}")

    def boolean(self, key: str, value: Any) -> None:
        if not isinstance(value, bool):
            self.fail(f"{key} must be a bool, got {value!r}")

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise ValueError(self.errors[0])
        if self.errors:
            raise ValueError(f"{len(self.errors)} invalid config values:\n  " + "\n  ".join(self.errors))


class _Missing(Exception):
    pass


def _check_keys(chk: _Checker, node: Any, path: str) -> None:
    """Every section holds exactly the keys of :data:`SCHEMA` (catches typos in config files)."""
    prefix = f"config.{path}" if path else "config"
    if not isinstance(node, ml_collections.ConfigDict):
        chk.fail(f"{prefix} must be a section (ConfigDict), got {node!r}")
        return
    expected = SCHEMA[path]
    for key in node.keys():
        if key not in expected:
            chk.fail(f"unknown config key {prefix}.{key}; valid keys under {prefix}: {', '.join(expected)}")
    for key in expected:
        if key not in node:
            chk.fail(f"{prefix}.{key} is missing")
        elif f"{path}.{key}".lstrip(".") in SCHEMA:
            _check_keys(chk, node[key], f"{path}.{key}".lstrip("."))


def _check_train(chk: _Checker, train: Any, prefix: str) -> None:
    get = lambda key: chk.get(key, train, prefix)  # noqa: E731
    for key in ("batch_size", "eval_batch_size", "checkpoint_every", "eval_every"):
        chk.integer(f"{prefix}.{key}", get(key))
    epochs = chk.integer(f"{prefix}.epochs", get("epochs"))
    chk.choice(f"{prefix}.optimizer", get("optimizer"), OPTIMIZERS)
    chk.positive(f"{prefix}.lr", get("lr"))
    momentum = chk.number(f"{prefix}.momentum", get("momentum"))
    if momentum is not None and not 0.0 <= momentum < 1.0:
        chk.fail(f"{prefix}.momentum must lie in [0, 1), got {momentum}")
    chk.non_negative(f"{prefix}.weight_decay", get("weight_decay"))
    decay = chk.number(f"{prefix}.lr_decay", get("lr_decay"))
    if decay is not None and not 0.0 < decay <= 1.0:
        chk.fail(f"{prefix}.lr_decay must lie in (0, 1], got {decay}")
    milestones = get("milestones")
    key = f"{prefix}.milestones"
    if not isinstance(milestones, tuple) or not all(isinstance(m, int) and not isinstance(m, bool)
                                                    for m in milestones):
        chk.fail(f"{key} must be a tuple of ints, got {milestones!r}")
    elif any(b <= a for a, b in zip(milestones, milestones[1:])):
        chk.fail(f"{key} must be strictly increasing, got {milestones}")
    elif milestones and milestones[0] < 1:
        chk.fail(f"{key} must be >= 1 (epochs are counted from 1), got {milestones}")
    elif epochs is not None and milestones and milestones[-1] > epochs:
        chk.fail(f"{key} must lie within the {epochs} epochs ({prefix}.epochs), got {milestones}; "
                 f"set e.g. --{key}=() for a short run")


def _check_sparse(chk: _Checker, section: str, num_classes: int | None) -> None:
    prefix = f"config.{section}"
    k, ratio = chk.get(f"{section}.k"), chk.get(f"{section}.ratio")
    if (k is None) == (ratio is None):
        state = "both are set" if k is not None else "neither is set"
        chk.fail(f"{prefix}: exactly one of {prefix}.k and {prefix}.ratio must be set, {state} "
                 f"(k={k!r}, ratio={ratio!r}); give one of them alone on the command line "
                 f"(e.g. --{prefix}.k=2: setting one clears the other)")
        return
    if k is not None:
        if chk.integer(f"{prefix}.k", k) is not None and num_classes is not None and k > num_classes:
            chk.fail(f"{prefix}.k must lie in [1, {num_classes}] (the number of classes), got {k}")
    else:
        v = chk.number(f"{prefix}.ratio", ratio)
        if v is not None and not 0.0 < v <= 1.0:
            chk.fail(f"{prefix}.ratio must lie in (0, 1], got {ratio}")
        elif v is not None and num_classes is not None and sparsity_k(chk.get(section), num_classes) < 1:
            chk.fail(f"{prefix}.ratio={ratio} keeps no class of {num_classes} (k = int(ratio * C) = 0)")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every value of a study config; raises one ValueError naming each bad key.

    Data-set and model names are checked against ``ast_jax.data.DATASETS`` and
    ``ast_jax.models.MODEL_NAMES``; ``k <= C`` against ``ast_jax.data.dataset_spec``.
    """
    chk = _Checker(config)
    _check_keys(chk, config, "")
    if chk.errors:  # structural problems first: the value checks below assume the keys exist
        chk.raise_if_any()
    try:
        get = chk.get
        name = get("name")
        if not isinstance(name, str) or not name:
            chk.fail(f"config.name must be a non-empty str, got {name!r}")
        chk.integer("config.seed", get("seed"), minimum=0)
        chk.choice("config.dtype", get("dtype"), DTYPES)

        dataset = get("data.name")
        chk.choice("config.data.name", dataset, DATASETS)
        if not isinstance(get("data.data_dir"), str):
            chk.fail(f"config.data.data_dir must be a str ('' = default location), got {get('data.data_dir')!r}")
        chk.integer("config.data.train_examples", get("data.train_examples"), minimum=0)
        chk.integer("config.data.augment.crop_padding", get("data.augment.crop_padding"), minimum=0)
        chk.boolean("config.data.augment.flip", get("data.augment.flip"))
        chk.non_negative("config.data.augment.rotation_degrees", get("data.augment.rotation_degrees"))
        num_classes = dataset_spec(dataset).num_classes if dataset in DATASETS else None

        chk.choice("config.teacher.model", get("teacher.model"), MODEL_NAMES)
        _check_train(chk, get("train"), "config.train")

        chk.non_negative("config.pgd.eps", get("pgd.eps"))
        chk.positive("config.pgd.step_size", get("pgd.step_size"))
        chk.integer("config.pgd.steps", get("pgd.steps"))
        chk.choice("config.pgd.space", get("pgd.space"), PGD_SPACES)
        chk.boolean("config.pgd.random_start", get("pgd.random_start"))
        chk.integer("config.pgd.batch_size", get("pgd.batch_size"))

        for section in ("ast", "nasty", "stt", "stingy", "kd"):
            chk.positive(f"config.{section}.temperature", get(f"{section}.temperature"))
            chk.unit(f"config.{section}.omega", get(f"{section}.omega"))
        for section in SPARSE_SECTIONS:
            _check_sparse(chk, section, num_classes)
        chk.choice("config.ast.divergence", get("ast.divergence"), DIVERGENCES)
        chk.choice("config.stt.divergence", get("stt.divergence"), DIVERGENCES)
        chk.choice("config.ast.pairing", get("ast.pairing"), PAIRINGS)
        chk.choice("config.ast.target_statistics", get("ast.target_statistics"), TARGET_STATISTICS)

        students = get("students")
        if not isinstance(students, tuple) or not students:
            chk.fail(f"config.students must be a non-empty tuple of architectures, got {students!r}")
        else:
            for i, student in enumerate(students):
                if isinstance(student, str) and "," in student:  # --config.students=a,b is one string
                    chk.fail(f"config.students[{i}] is {student!r}, not an architecture; give several as "
                             f"--config.students=\"{tuple(student.split(','))}\" or repeat --config.students=NAME")
                else:
                    chk.choice(f"config.students[{i}]", student, MODEL_NAMES)
            if len(set(students)) != len(students):
                chk.fail(f"config.students lists an architecture twice: {students}")

        _check_train_overrides(chk, config, "student_train", MODEL_NAMES, "architecture")
        _check_teachers(chk, config)
        _check_matrix(chk, config, dataset if dataset in DATASETS else None, num_classes)
        _check_sweep(chk)
    except _Missing as missing:
        chk.fail(str(missing))
    chk.raise_if_any()


def _check_train_overrides(chk: _Checker, config: ml_collections.ConfigDict, section: str, valid: Sequence[str],
                           what: str) -> None:
    """`config.<section>.<name>`: `name` one of `valid`, each a section of `train` keys whose
    schedule (`train` with the section's keys applied) is valid."""
    overrides = chk.get(section)
    if not isinstance(overrides, ml_collections.ConfigDict):
        chk.fail(f"config.{section} must be a section, got {overrides!r}")
        return
    for name, override in overrides.items():
        prefix = f"config.{section}.{name}"
        if name not in valid:
            chk.fail(f"{prefix}: unknown {what} {name!r}; valid: {', '.join(valid)}")
            continue
        if not isinstance(override, ml_collections.ConfigDict):
            chk.fail(f"{prefix} must be a section of train keys, got {override!r}")
            continue
        unknown = [k for k in override.keys() if k not in SCHEMA["train"]]
        for k in unknown:
            chk.fail(f"unknown config key {prefix}.{k}; valid keys: {', '.join(SCHEMA['train'])}")
        if not unknown:
            _check_train(chk, ml_collections.ConfigDict({**config.train, **override}), prefix)


def _check_teachers(chk: _Checker, config: ml_collections.ConfigDict) -> None:
    """`config.teachers` (from TEACHER_NAMES, base first, no repeats), `ini`, `meco`, `teacher_train`."""
    teachers = chk.get("teachers")
    if not isinstance(teachers, tuple) or not teachers or teachers[0] != "base":
        chk.fail(f"config.teachers must be a tuple of teachers that starts with 'base' (every other teacher is "
                 f"compared with it), got {teachers!r}")
    else:
        for i, teacher in enumerate(teachers):
            chk.choice(f"config.teachers[{i}]", teacher, TEACHER_NAMES)
        if len(set(teachers)) != len(teachers):
            chk.fail(f"config.teachers lists a teacher twice: {teachers}")
    ini = {key: chk.get(f"ini.{key}") for key in INI_DEFAULTS}
    chk.choice("config.ini.ood_set", ini.pop("ood_set"), QUERY_SETS)
    chk.integer("config.ini.ood_images", ini.pop("ood_images"))
    for section, settings_class, values in (("ini", InISettings, ini),
                                            ("meco", MecoSettings, {k: chk.get(f"meco.{k}") for k in MECO_DEFAULTS})):
        try:
            settings_class(**values)
        except (ValueError, TypeError) as error:
            chk.fail(f"config.{section}: {error}")
    trained = [name for name in TEACHER_NAMES if name != "stingy"]
    _check_train_overrides(chk, config, "teacher_train", trained, "trained teacher")


def _check_sweep(chk: _Checker) -> None:
    """`config.sweep`: grid entries `KEY=V1,V2,...` (their keys are checked by `ast_jax.studies.sweep`) and seeds."""
    grid, seeds = chk.get("sweep.grid"), chk.get("sweep.seeds")
    if not isinstance(grid, tuple) or not all(isinstance(g, str) and "=" in g for g in grid):
        chk.fail(f"config.sweep.grid must be a tuple of 'KEY=V1,V2,...' strings, got {grid!r}")
    if not isinstance(seeds, tuple) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        chk.fail(f"config.sweep.seeds must be a non-empty tuple of non-negative ints, got {seeds!r}")


def _check_matrix(chk: _Checker, config: ml_collections.ConfigDict, dataset: str | None,
                  num_classes: int | None) -> None:
    """The matrix's victims, attack cells, clone, seeds and batch (docs/method.md §10.5)."""
    get = chk.get
    victims = get("matrix.victims")
    if not isinstance(victims, tuple) or not victims:
        chk.fail(f"config.matrix.victims must be a non-empty tuple, got {victims!r}")
        victims = ()
    for i, victim in enumerate(victims):
        try:
            parse_victim(victim, dataset or "", num_classes, f"config.matrix.victims[{i}]")
        except ValueError as error:
            chk.fail(str(error))
    cells = get("matrix.attacks")
    if not isinstance(cells, tuple):
        chk.fail(f"config.matrix.attacks must be a tuple of names of config.attacks, got {cells!r}")
        cells = ()
    for i, cell in enumerate(cells):
        if cell not in config.attacks:
            chk.fail(f"config.matrix.attacks[{i}]: no attack cell {cell!r} in config.attacks; "
                     f"defined: {', '.join(config.attacks.keys()) or 'none'}")
    for cell, settings in config.attacks.items():
        prefix = f"config.attacks.{cell}"
        if not isinstance(settings, ml_collections.ConfigDict) or "kind" not in settings:
            chk.fail(f"{prefix} must be a section with a kind, got {settings!r}")
            continue
        try:
            check_settings(settings.kind, {k: v for k, v in settings.items() if k != "kind"}, prefix)
        except ValueError as error:
            chk.fail(str(error))
        if "query_set" in settings and dataset is not None:
            # The victim's subset is checked when the matrix starts (a study may set it on the command line).
            problem = query_set_problem(settings.query_set, dataset_spec(dataset).image_shape,
                                        settings.get("budget", 0), None)
            if problem:
                chk.fail(f"{prefix}.query_set: {problem}")
    clone = get("matrix.clone")
    if clone != "":
        chk.choice("config.matrix.clone", clone, MODEL_NAMES)
    seeds = get("matrix.seeds")
    if not isinstance(seeds, tuple) or not seeds or not all(isinstance(v, int) and v >= 0 for v in seeds):
        chk.fail(f"config.matrix.seeds must be a non-empty tuple of non-negative ints, got {seeds!r}")
    chk.integer("config.matrix.batch_size", get("matrix.batch_size"))


#: The thesis's symbols for config keys in `--grid` (the AST loss weight α of eq. 5 is `ast.omega`).
GRID_ALIASES = {"ast.alpha": "ast.omega"}


def parse_grid(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`["ast.omega=0.01,0.05", ...]` -> {"ast.omega": ("0.01", "0.05"), ...} (ValueError naming the item).

    `GRID_ALIASES` name config keys by the thesis's symbols (`ast.alpha` is `ast.omega`).
    """
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().removeprefix("config.")
        key = GRID_ALIASES.get(key, key)
        values = tuple(v.strip() for v in values.split(",") if v.strip())
        if not sep or not key or not values:
            raise ValueError(f"--grid {item!r}: give KEY=V1,V2,... (e.g. --grid ast.omega=0.01,0.035,0.05)")
        if key in grid:
            raise ValueError(f"--grid {key} is given twice; list all its values in one --grid")
        if len(set(values)) < len(values):
            raise ValueError(f"--grid {item!r} repeats a value")
        grid[key] = values
    if not grid:
        raise ValueError("a sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def cell_config(config, cell: Mapping[str, str]):
    """`config` with the cell's values and the teachers base and ast, validated (ValueError naming a
    bad key or value)."""
    for key in cell:
        sweep.check_grid_key(key)
    configured = copy.deepcopy(config)
    schedule = [key.split(".")[2] for key in cell if key.startswith("teacher_train.ast.")]
    if schedule:  # the AST teacher's own schedule, from `train` where the config gives none
        with configured.unlocked():
            entry = configured.teacher_train.get("ast") or ml_collections.ConfigDict()
            for key in schedule:
                if key in configured.train and key not in entry:
                    entry[key] = configured.train[key]
            configured.teacher_train.ast = entry
    apply_overrides(configured, [f"--config.{key}={value}" for key, value in cell.items()])
    configured.teachers = ("base", "ast")
    validate(configured)
    return configured


def sweep_cell_settings(config, grid: Mapping[str, Sequence[str]]) -> dict[str, StudySettings]:
    """Every cell of `grid` (`sweep.grid_cells`) by `sweep.cell_name`: its validated config, as settings."""
    return {sweep.cell_name(cell): to_settings(cell_config(config, cell)) for cell in sweep.grid_cells(grid)}
