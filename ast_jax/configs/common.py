"""The study-config builder and the defaults every config of `ast_jax.configs` shares.

A *study* is one experiment of the thesis (thesis §5, docs/method.md §3): train the base
teacher with CE, generate the PGD training set from it, train the defensive teachers (AST, Nasty
Teacher, Stingy Trained Teacher) and distil every student architecture from every teacher
(including the Stingy Teacher's sparse outputs). Every config module defines
``get_config(variant="thesis")`` by calling :func:`study_config`; the CLI
(`ast_jax.cli.config.load_config`) loads it, locks it, applies overrides and validates it once,
before anything compiles. Nothing below the CLI loads or validates a config.

Schema (every key always present; :data:`SCHEMA` lists them)::

    config.name: str                    config.seed: int           config.dtype: "float32"|"bfloat16"
    config.data.name / .data_dir / .train_examples / .augment.{crop_padding, flip, rotation_degrees}
    config.teacher.model                # base/AST/NT/STT teacher architecture
    config.teacher.torch_checkpoint     # "" or a PyTorch checkpoint imported as the base teacher
    config.train.{batch_size, eval_batch_size, epochs, optimizer, lr, momentum, weight_decay,
                  milestones, lr_decay, checkpoint_every, eval_every}
    config.pgd.{eps, step_size, steps, space, random_start, batch_size}
    config.ast.{temperature, omega, k, ratio, divergence, pairing, target_statistics}
    config.nasty.{temperature, omega}
    config.stt.{temperature, omega, k, ratio, divergence}
    config.stingy.{k, ratio, temperature, omega}
    config.kd.{temperature, omega}
    config.teachers: tuple[str, ...]    # the study's teachers, from TEACHER_NAMES (base first)
    config.ini.{delta, gamma, epsilon, isolation, induction, gradient, pcgrad, max_grad_norm,
                ood_set, ood_images}    # the InI teacher (docs/method.md §11.1)
    config.meco.{scale, eps_range, dro_steps, step_size, distance_weight, utility_weight, form}
    config.teacher_train.<teacher>.<any key of train>        # partial override of `train`
    config.students: tuple[str, ...]
    config.student_train.<architecture>.<any key of train>   # partial override of `train`
    config.matrix.{victims, attacks, clone, seeds, batch_size}  # `ast-jax matrix` (not in the study's record)
    config.attacks.<cell>.{kind, <settings of ast_jax.attacks.DEFAULTS[kind]>}

Variants: ``thesis`` (default) takes every value from the thesis text (docs/method.md §5 "thesis" column,
sparsity as a ratio of the classes). ``reference`` switches to what the authors' PyTorch code
runs (docs/method.md §4-5, :data:`REFERENCE_VALUES`): the "authors' code (T, alpha, k)" AST
values where that column has them (absolute ``k``), PGD in normalised space with the reference's
clamp, randomly paired clean/adversarial batches, the AST target computed with the BatchNorm
statistics that the clean train-mode forward has just updated (``ast.target_statistics``), and
Stingy-Teacher distillation at T 20, omega 0.9. Where the reference column says "—"
(Tiny-ImageNet AST, STT) the thesis values are kept.
"""

from __future__ import annotations

import importlib
from typing import Any, Collection, Mapping, Sequence

import ml_collections
from ml_collections import config_dict

from ast_jax.attacks.common import DEFAULTS as ATTACK_DEFAULTS
from ast_jax.attacks.common import defaults as attack_defaults
from ast_jax.studies.settings import TEACHER_NAMES, THESIS_TEACHERS

__all__ = [
    "CIFAR_DEFENCE_TRAIN", "CNN_STUDENT_TRAIN", "DATASET_DEFAULTS", "DTYPES", "FULL_DEFENCE_GRID", "FULL_GRID",
    "INI_CIFAR_TRAIN", "INI_DEFAULTS", "INI_MNIST_TRAIN", "MECO_CIFAR_TRAIN", "MECO_DEFAULTS", "MECO_MNIST_TRAIN",
    "REFERENCE_VALUES", "RETEMPER_GRID", "SCHEMA", "TEACHER_NAMES", "TEACHER_VICTIMS", "THESIS_TEACHERS", "VARIANTS",
    "ablation_config", "adaptive_attacks", "attack_cell", "check_variant", "cifar_matrix", "cleared_sparsity",
    "defence_victims", "published_attacks", "study_config",
]

VARIANTS: tuple[str, ...] = ("thesis", "reference")
DTYPES: tuple[str, ...] = ("float32", "bfloat16")

#: Sections that carry a sparsity given as exactly one of ``k`` (absolute) or ``ratio`` (of C).
SPARSE_SECTIONS: tuple[str, ...] = ("ast", "stt", "stingy")
#: Sections whose keys are names the config chooses (architectures, attack cells).
FREE_FORM_SECTIONS: tuple[str, ...] = ("student_train", "teacher_train", "attacks")

#: Training defaults (docs/method.md §5, thesis §5): SGD, momentum 0.9, weight decay 5e-4 (coupled L2,
#: PyTorch style), lr 0.1, batch 128. The test set is evaluated every epoch because the thesis
#: reports the best epoch (docs/method.md §4) and the project reports both the final and the best epoch.
#: Checkpoints every 10 epochs. The evaluation batch only sets memory use: 512 (not the round
#: 500) because a batch must divide the device count, and 512 = 2^9 divides 1, 2, 4, 8, ... 512
#: devices; the last, partial batch is padded, so the data-set size need not divide it.
TRAIN_DEFAULTS: dict[str, Any] = dict(
    batch_size=128, eval_batch_size=512, epochs=160, optimizer="sgd", lr=0.1, momentum=0.9,
    weight_decay=5e-4, milestones=(80, 120), lr_decay=0.1, checkpoint_every=10, eval_every=1)

#: The thesis's CNN recipe (thesis §5, docs/method.md §5): "The CNN was trained for 100 epochs and learning
#: rate fixed at 0.001 ... Adam optimizer". No weight decay, as in the Nasty Teacher code's Adam.
CNN_STUDENT_TRAIN: dict[str, Any] = dict(optimizer="adam", lr=1e-3, epochs=100, milestones=(), weight_decay=0.0)

#: PGD (thesis §5 and eq. 4, docs/method.md §2): eps 0.3, step 0.01, 40 iterations, no random start, in
#: pixel space [0, 1] (project default; ``reference`` = normalised space + clamp, docs/method.md §4).
#: The PGD batch (512, as the evaluation batch) only sets memory use and divides 2^n devices.
PGD_DEFAULTS: dict[str, Any] = dict(eps=0.3, step_size=0.01, steps=40, space="pixel", random_start=False,
                                    batch_size=512)

#: What the ``reference`` variant changes, section by section: what the authors' code runs
#: (docs/method.md §4-5). PGD in normalised space with the reference's clamp; the clean loader
#: reshuffled and zipped with the adversarial one; the clean batch run in train mode before the
#: AST target, which then sees the updated BatchNorm statistics; Stingy-Teacher distillation at
#: T 20, omega 0.9 (the "ST (distillation)" row).
REFERENCE_VALUES: dict[str, dict[str, Any]] = dict(
    pgd=dict(space="reference"),
    ast=dict(pairing="random", target_statistics="after_train_forward"),
    stingy=dict(temperature=20.0, omega=0.9),
)

#: Per-data-set values of docs/method.md §4-5 (the schedule and the NT, STT, ST and KD rows are per data
#: set; the AST row is per study and lives in the config files; the small data sets' schedules
#: are sized in their config files). ``stingy`` temperature/omega default to ``kd``'s:
#: the thesis distils from the Stingy Teacher with the same KD settings as every other teacher
#: ("The configuration of distillation experiments remained consistent across all methods").
DATASET_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    # Reference augmentation (docs/method.md §4): random crop with 4-pixel zero padding + horizontal flip.
    "cifar10": dict(
        augment=dict(crop_padding=4, flip=True, rotation_degrees=0.0),
        train=dict(epochs=160, milestones=(80, 120), lr_decay=0.1),  # thesis §5: x0.1 at 80, 120
        nasty=dict(temperature=4.0, omega=0.04),                 # thesis §5 / docs/method.md §5 NT row
        stt=dict(temperature=4.0, omega=0.04, ratio=0.2),        # thesis §5 / docs/method.md §5 STT row
        stingy=dict(ratio=0.2),                                  # docs/method.md §5 ST row
        kd=dict(temperature=4.0, omega=0.9),                     # thesis §5 / docs/method.md §5 KD row
    ),
    "cifar100": dict(
        augment=dict(crop_padding=4, flip=True, rotation_degrees=0.0),
        train=dict(epochs=200, milestones=(60, 120, 160), lr_decay=0.2),  # thesis §5
        nasty=dict(temperature=20.0, omega=0.005),
        stt=dict(temperature=20.0, omega=0.005, ratio=0.1),
        stingy=dict(ratio=0.1),
        kd=dict(temperature=20.0, omega=0.9),
    ),
    # Reference augmentation (docs/method.md §4): flip + rotation(20 degrees), no crop.
    "tiny_imagenet": dict(
        augment=dict(crop_padding=0, flip=True, rotation_degrees=20.0),
        train=dict(epochs=200, milestones=(60, 120, 160), lr_decay=0.2),  # thesis §5
        nasty=dict(temperature=20.0, omega=0.01),
        stt=dict(temperature=20.0, omega=0.01, ratio=0.1),
        stingy=dict(ratio=0.1),
        kd=dict(temperature=20.0, omega=0.9),
    ),
    # The two small 10-class grey data sets of docs/method.md §9 (not in the thesis): no augmentation.
    # KD and ST use the thesis's 10-class (CIFAR-10) values. NT and STT were not measured there:
    # AST needed its CIFAR-10 temperature raised 6 -> 10 (x5/3, omega kept) on digits (docs/method.md §9),
    # so the CIFAR-10 NT/STT temperature 4 gets the same factor (6.7, rounded to 7), omega kept.
    "digits": dict(
        augment=dict(crop_padding=0, flip=False, rotation_degrees=0.0),
        nasty=dict(temperature=7.0, omega=0.04),
        stt=dict(temperature=7.0, omega=0.04, ratio=0.2),
        stingy=dict(ratio=0.2),
        kd=dict(temperature=4.0, omega=0.9),
    ),
    "fashion_mnist": dict(
        augment=dict(crop_padding=0, flip=False, rotation_degrees=0.0),
        nasty=dict(temperature=7.0, omega=0.04),
        stt=dict(temperature=7.0, omega=0.04, ratio=0.2),
        stingy=dict(ratio=0.2),
        kd=dict(temperature=4.0, omega=0.9),
    ),
}


#: The study's teachers as matrix victims (docs/method.md §10.5).
TEACHER_VICTIMS: tuple[str, ...] = THESIS_TEACHERS
#: InI's defaults (docs/method.md §11.1): the authors' loss weights and forms; the OOD set is one of
#: the query sets (`ast_jax.data.query_sets`), photo crops by default, `ood_images` of them.
INI_DEFAULTS: dict[str, Any] = dict(delta=1.0, gamma=0.3, epsilon=1000.0, isolation="code", induction="code",
                                    gradient="code", pcgrad=True, max_grad_norm=10.0, ood_set="photos",
                                    ood_images=10_000)
#: InI's schedule (docs/method.md §11.1, CIFAR): SGD lr 0.1, momentum 0.5, weight decay 1e-3,
#: batch 128, 150 epochs with lr x0.1 every 50.
INI_CIFAR_TRAIN: dict[str, Any] = dict(optimizer="sgd", lr=0.1, momentum=0.5, weight_decay=1e-3, batch_size=128,
                                       epochs=150, milestones=(50, 100), lr_decay=0.1)
#: InI on MNIST / Fashion-MNIST (docs/method.md §11.1): the same SGD, 50 epochs with lr x0.1 every 20.
INI_MNIST_TRAIN: dict[str, Any] = dict(INI_CIFAR_TRAIN, epochs=50, milestones=(20, 40))
#: MeCo's defaults (docs/method.md §11.2), the authors' code; `eps_range` is ε's uniform range.
MECO_DEFAULTS: dict[str, Any] = dict(scale=0.5, eps_range=(0.3, 0.6), dro_steps=1, step_size=1e-4,
                                     distance_weight=0.2, utility_weight=0.001, form="code")
#: MeCo's CIFAR schedule (docs/method.md §11.2): SGD lr 0.1 x0.1 at 80/120/160, momentum 0.9, weight
#: decay 5e-4, batch 64, 199 epochs (the authors attack epoch 195; the study takes the last).
MECO_CIFAR_TRAIN: dict[str, Any] = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=64,
                                        epochs=199, milestones=(80, 120, 160), lr_decay=0.1)
#: MeCo on MNIST (docs/method.md §11.2): Adam 1e-3, batch 64, 49 epochs, no decay.
MECO_MNIST_TRAIN: dict[str, Any] = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=64, epochs=49,
                                        milestones=())
#: The CIFAR studies' teacher schedules of the training-time defences (`config.teacher_train`).
CIFAR_DEFENCE_TRAIN: dict[str, dict[str, Any]] = {"ini": INI_CIFAR_TRAIN, "meco": MECO_CIFAR_TRAIN}


#: The `full_grid` variant of a CIFAR config: the thesis variant whose matrix sweeps the output
#: defences' whole published grids (docs/method.md §10.2): DCP β ∈ {0, 0.1, ..., 1.0, 1.2, 1.5},
#: Reverse Sigmoid β ∈ {0, 0.0025, 0.005, ..., 1.28} (doubling), top-k rounding k ∈ {1, 2} × r ∈ {1, 2, 3}.
FULL_GRID = "full_grid"
FULL_DEFENCE_GRID: dict[str, tuple] = {
    "dcp_betas": (0.0, *(round(0.1 * i, 1) for i in range(1, 11)), 1.2, 1.5),
    "rs_betas": (0.0, *(0.0025 * 2 ** i for i in range(10))),
    "rounding": tuple((k, r) for k in (1, 2) for r in (1, 2, 3)),
}


def cifar_matrix(variant: str, victims: Sequence[str], attacks: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the study variant, the `matrix` section) of a CIFAR config's `variant`. `full_grid`: the thesis
    variant whose matrix has the teachers and FULL_DEFENCE_GRID's victims, and every attack cell;
    otherwise `variant` itself, `victims`, and every cell but Knockoff's DCP recipe (a ResNet-34 clone each)."""
    if variant == FULL_GRID:
        victims, names = (*TEACHER_NAMES, *defence_victims(**FULL_DEFENCE_GRID)), tuple(attacks)
    else:
        names = tuple(name for name in attacks if name != "knockoff_dcp")
    return ("thesis" if variant == FULL_GRID else variant,
            {"victims": tuple(victims), "attacks": names, "clone": "resnet18", "seeds": (0, 1, 2)})


def defence_victims(dcp_betas=(), rs_betas=(), top1: bool = True, rounding=()) -> tuple[str, ...]:
    """Matrix victims of the base teacher behind output defences (docs/method.md §10.2): DCP and
    Reverse Sigmoid at each β, top-1, and top-k rounding for each (k, decimals) in `rounding`."""
    return (*(f"dcp:beta={beta}" for beta in dcp_betas), *(f"reverse_sigmoid:beta={beta}" for beta in rs_betas),
            *(("top1",) if top1 else ()), *(f"topk_round:k={k},decimals={r}" for k, r in rounding))


def published_attacks(*, surrogate: str, dfme_budget: int, kd: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The CIFAR attack cells with the papers' settings (docs/method.md §10.3): KD with the study's
    τ/ω and schedule, Knockoff soft/hard with 50,000 queries of the other CIFAR (InI's recipe) and
    soft with DCP's recipe (the whole surrogate train split, 50,000), JBDA, DFME."""
    return {
        "kd": dict(kind="kd", **kd),
        "knockoff_soft": dict(kind="knockoff", query_set=surrogate, labels="soft"),
        "knockoff_hard": dict(kind="knockoff", query_set=surrogate, labels="hard"),
        "knockoff_dcp": {"kind": "knockoff", "query_set": surrogate, "labels": "soft", "recipe": "dcp"},
        "jbda_soft": dict(kind="jbda", labels="soft"),
        "jbda_hard": dict(kind="jbda", labels="hard"),
        "dfme": dict(kind="dfme", budget=dfme_budget),
    }


#: kd_retemper's τ_a grid (docs/method.md §10.6); a config adds its defences' own temperatures.
RETEMPER_GRID: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def adaptive_attacks(training: Mapping[str, Any], *, kd: Mapping[str, Any], taus: Sequence[float],
                     skeptical_clone: str = "") -> dict[str, dict[str, Any]]:
    """The adaptive attack cells of docs/method.md §10.6 with the clone schedule `training`:
    `kd_hard` (KD's ω), one `kd_retemper_t<τ_a>` per τ_a of `taus` (KD's ω) and `skeptical`
    (KD's τ and ω, the ResNet trunk `skeptical_clone`; "": the matrix's clone)."""
    return {"kd_hard": dict(training, kind="kd_hard", omega=kd["omega"]),
            **{f"kd_retemper_t{tau:g}": dict(training, kind="kd_retemper", temperature=float(tau), omega=kd["omega"])
               for tau in taus},
            "skeptical": dict(training, kind="skeptical", clone=skeptical_clone, **kd)}


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

def check_variant(variant: str) -> str:
    """Returns `variant` if it is one of :data:`VARIANTS`, else raises ValueError listing them."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    return variant


def cleared_sparsity(given: Collection[str]) -> str | None:
    """The sparsity key that giving the keys `given` of a sparse section clears: `ratio` when only
    `k` is given, `k` when only `ratio` is, else None (both or neither given)."""
    if ("k" in given) == ("ratio" in given):
        return None
    return "ratio" if "k" in given else "k"


def _assign(section: ml_collections.ConfigDict, name: str, value: Any, key: str) -> None:
    """`section[name] = value` with the ConfigDict's type check (int -> float allowed), naming `key`."""
    try:
        section[name] = tuple(value) if isinstance(value, list) else value
    except TypeError as error:
        raise ValueError(f"{key}: {error}") from None


def _set_values(section: ml_collections.ConfigDict, values: Mapping[str, Any], prefix: str) -> None:
    """Sets `values` on the existing keys of `section` (recursing into sub-sections).

    In the sparse sections, giving one of ``k``/``ratio`` clears the other.
    """
    values = dict(values)
    cleared = cleared_sparsity(values) if prefix.split(".")[-1] in SPARSE_SECTIONS else None
    if cleared:
        values[cleared] = None
    for name, value in values.items():
        key = f"{prefix}.{name}"
        if name not in section:
            raise ValueError(f"unknown config key {key}; valid keys under {prefix}: {', '.join(section.keys())}")
        if isinstance(section[name], ml_collections.ConfigDict):
            if not isinstance(value, Mapping):
                raise ValueError(f"{key} is a section; give a dict of its keys ({', '.join(section[name].keys())})")
            _set_values(section[name], value, key)
        else:
            _assign(section, name, value, key)


def _sparse_section(**values: Any) -> ml_collections.ConfigDict:
    section = ml_collections.ConfigDict(values)
    section.k = config_dict.placeholder(int)       # absolute number of kept classes
    section.ratio = config_dict.placeholder(float)  # fraction of the classes (k = int(ratio * C))
    return section


def _skeleton() -> ml_collections.ConfigDict:
    """Every key of a study config with its type; loss values are filled in by `study_config`."""
    c = ml_collections.ConfigDict()
    c.name = ""
    c.seed = 0
    c.dtype = "float32"  # compute dtype; parameters stay float32 (bfloat16 is opt-in)
    # train_examples: train on a class-balanced subset of that many training images (quick runs
    # of a large data set on a CPU); 0 = the whole training split. The test split stays whole.
    c.data = ml_collections.ConfigDict(dict(name="", data_dir="", train_examples=0, augment=dict(
        crop_padding=0, flip=False, rotation_degrees=0.0)))
    # torch_checkpoint: a PyTorch state_dict of `model` to import as the base teacher instead of
    # training it (ast_jax.interop); "" trains it.
    c.teacher = ml_collections.ConfigDict(dict(model="", torch_checkpoint=""))
    c.train = ml_collections.ConfigDict(TRAIN_DEFAULTS)
    c.pgd = ml_collections.ConfigDict(PGD_DEFAULTS)
    # AST (thesis eq. 5): EPD divergence, aligned clean/adversarial pairs (project default, docs/method.md §4),
    # target with the BatchNorm statistics from before the step (the thesis's reading, docs/method.md §4).
    c.ast = _sparse_section(temperature=1.0, omega=0.0)
    c.ast.divergence = "epd"
    c.ast.pairing = "aligned"
    c.ast.target_statistics = "before_step"
    c.nasty = ml_collections.ConfigDict(dict(temperature=1.0, omega=0.0))
    # STT: the thesis does not name its divergence; EPD as in AST (docs/method.md §2), KL selectable.
    c.stt = _sparse_section(temperature=1.0, omega=0.0)
    c.stt.divergence = "epd"
    c.stingy = _sparse_section(temperature=1.0, omega=0.0)
    c.kd = ml_collections.ConfigDict(dict(temperature=1.0, omega=0.9))  # thesis eq. 1: omega 0.9
    c.teachers = THESIS_TEACHERS
    c.ini = ml_collections.ConfigDict(INI_DEFAULTS)
    c.meco = ml_collections.ConfigDict(MECO_DEFAULTS)
    c.teacher_train = ml_collections.ConfigDict()  # free-form: teacher name -> keys of `train`
    c.students = ("resnet18",)
    c.student_train = ml_collections.ConfigDict()  # free-form: architecture -> keys of `train`
    # The stealing-attack matrix (`ast-jax matrix`, docs/method.md §10.5): victims as
    # "teacher" or "defence:key=value,...", attack cells named in `attacks`, the clone ("" = the
    # teacher's architecture), seeds and the black box's batch. Not part of the study's record.
    c.matrix = ml_collections.ConfigDict(dict(victims=("base",), attacks=(), clone="", seeds=(0,), batch_size=512))
    c.attacks = ml_collections.ConfigDict()  # free-form: cell name -> {kind, settings of ast_jax.attacks}
    # `ast-jax sweep` without --grid / --seeds (docs/method.md §12): grid entries "KEY=V1,V2,..."
    # (keys under ast., pgd., teacher_train.ast.) and seeds. Not part of the study's record.
    c.sweep = ml_collections.ConfigDict(dict(grid=(), seeds=(0,)))
    return c


def _sections(node: ml_collections.ConfigDict, path: str = "") -> dict[str, tuple[str, ...]]:
    """Section path -> its keys, for `node` and every fixed sub-section (not `student_train`)."""
    keys = {path: tuple(node.keys())}
    for name in node.keys():
        if isinstance(node[name], ml_collections.ConfigDict) and name not in FREE_FORM_SECTIONS:
            keys.update(_sections(node[name], f"{path}.{name}".lstrip(".")))
    return keys


#: Every key of a study config, section by section ("" is the top level; ``student_train`` is
#: free-form: its keys are architectures, its sub-keys keys of ``train``; so is ``attacks``: its keys
#: are attack cell names, its sub-keys ``kind`` and that attack's settings).
SCHEMA: dict[str, tuple[str, ...]] = _sections(_skeleton())


def study_config(*, name: str, dataset: str, teacher: str, students: Sequence[str], ast: Mapping[str, Any],
                 ast_reference: Mapping[str, Any] | None = None, variant: str = "thesis",
                 student_train: Mapping[str, Mapping[str, Any]] | None = None,
                 teacher_train: Mapping[str, Mapping[str, Any]] | None = None,
                 attacks: Mapping[str, Mapping[str, Any]] | None = None,
                 **sections: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The (unlocked) config of one study; the config files call this and nothing else.

    Args:
      name: study name (also the run directory's name).
      dataset: one of the data sets; fills `data.augment`, the `train` schedule, `nasty`, `stt`,
        `stingy` and `kd` from :data:`DATASET_DEFAULTS` (docs/method.md §4-5).
      teacher: architecture of the base/AST/NT/STT teachers.
      students: student architectures of the stealing attack.
      ast: the thesis's AST values for this study (docs/method.md §5 AST rows): temperature, omega, and
        `ratio` or `k`.
      ast_reference: the authors' code's AST values (`reference` variant); None where docs/method.md §5
        says "—" (the thesis values are then kept).
      variant: "thesis" or "reference" (see the module docstring).
      student_train: architecture -> partial override of `train` (e.g. the CNN recipe).
      teacher_train: teacher name -> partial override of `train` (e.g. InI's and MeCo's schedules).
      attacks: attack cell name -> {kind, settings} for the matrix (`ast_jax.attacks.DEFAULTS[kind]`
        fills the settings not given).
      **sections: further partial updates by section name (`train`, `pgd`, `data`, `nasty`,
        `stt`, `stingy`, `kd`, `matrix`, `seed`, `dtype`), applied after the data-set defaults.
    """
    check_variant(variant)
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f"config.data.name: unknown data set {dataset!r}; valid: {', '.join(DATASET_DEFAULTS)}")
    c = _skeleton()
    c.name = name
    c.data.name = dataset
    c.teacher.model = teacher
    c.students = tuple(students)
    defaults = DATASET_DEFAULTS[dataset]
    _set_values(c.data.augment, defaults["augment"], "config.data.augment")
    _set_values(c.train, defaults.get("train", {}), "config.train")
    for section in ("nasty", "stt", "stingy", "kd"):
        _set_values(c[section], defaults[section], f"config.{section}")
    _set_values(c.ast, ast, "config.ast")
    _set_values(c, sections, "config")
    # Thesis: the Stingy Teacher is distilled with the same KD settings as every other teacher
    # (unless the study sets them explicitly).
    given = sections.get("stingy", {})
    _set_values(c.stingy, {key: c.kd[key] for key in ("temperature", "omega") if key not in given}, "config.stingy")
    for section, overrides in (("student_train", student_train), ("teacher_train", teacher_train)):
        for name, override in (overrides or {}).items():
            # Typed as `train` (e.g. lr 1 -> 1.0); keys `train` lacks are left for `validate` to name.
            entry = ml_collections.ConfigDict({key: c.train[key] for key in override if key in c.train})
            for key, value in override.items():
                _assign(entry, key, value, f"config.{section}.{name}.{key}")
            c[section][name] = entry
    for cell, settings in (attacks or {}).items():
        c.attacks[cell] = ml_collections.ConfigDict(attack_cell(settings))
    if variant == "reference":
        if ast_reference is not None:
            _set_values(c.ast, ast_reference, "config.ast")
        _set_values(c, REFERENCE_VALUES, "config")
    return c


def attack_cell(settings: Mapping[str, Any]) -> dict:
    """An attack cell of `config.attacks`: its `kind` and every setting (`attacks.DEFAULTS[kind]`, then the
    values of the recipe it names, updated)."""
    kind = settings.get("kind")
    if kind not in ATTACK_DEFAULTS:
        raise ValueError(f"attack cell {dict(settings)!r}: kind must be one of {', '.join(ATTACK_DEFAULTS)}")
    return {"kind": kind, **attack_defaults(kind, settings), **{k: v for k, v in settings.items() if k != "kind"}}


def ablation_config(study: str, ablations: Mapping[str, Sequence[str]], variant: str,
                    seeds: Sequence[int] = (0, 1, 2)) -> ml_collections.ConfigDict:
    """Config `study` (a module of `ast_jax.configs`) with `config.sweep` set to ablation
    `variant`'s grid (`ablations`: name -> grid entries "KEY=V1,V2,..."), for
    `ast-jax sweep --config FILE:variant` (the CLI validates it and each cell)."""
    if variant not in ablations:
        raise ValueError(f"unknown ablation {variant!r}; valid: {', '.join(ablations)}")
    config = importlib.import_module(f"ast_jax.configs.{study}").get_config()
    config.name = f"{config.name}-{variant}"
    config.sweep.grid = tuple(ablations[variant])
    config.sweep.seeds = tuple(seeds)
    return config
