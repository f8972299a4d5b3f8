"""CIFAR-100 study with ResNet18 teachers (thesis §5 and §6.2; docs/method.md §5 and §7).

Teachers (base, AST, NT, STT): ResNet18. Students: ShuffleNetV2 and ResNet18 (the teacher's
own architecture). SGD lr 0.1 for 200 epochs, x0.2 at epochs 60, 120 and 160.

AST: thesis tau 20, omega 0.03, sparsity ratio 0.02 (k = 2 of 100); the authors' code runs
T 30, omega 0.035, k 7 (`reference` variant). NT tau 20 / omega 0.005, STT ratio 0.1 / tau 20 /
omega 0.005, ST ratio 0.1, KD attack tau 20 / omega 0.9 (per data set, `ast_jax.configs.common`).
The thesis's ablation grid (docs/method.md §5) is this study with `--config.ast.*` overrides.

InI and MeCo (docs/method.md §11) are teachers of this study too, with their papers' schedules
(`CIFAR_DEFENCE_TRAIN`; MeCo's paper trains a ResNet-34-8x, here the study's teacher
architecture) and InI's OOD set the photo crops (the paper's Tiny-ImageNet is not available here).
"""

from ast_jax.configs.common import (
    CIFAR_DEFENCE_TRAIN,
    TEACHER_NAMES,
    cifar_matrix,
    defence_victims,
    published_attacks,
    study_config,
)

#: `ast-jax matrix` with the published settings (docs/method.md §10.3-10.5; GPU-sized): every teacher (InI and
#: MeCo included),
#: DCP and Reverse Sigmoid over their published beta grids, top-1 and Knockoff's top-k rounding;
#: KD with the study's T, omega and schedule, Knockoff with 50,000 CIFAR-10 images, JBDA, DFME with 200M queries.
MATRIX_VICTIMS = (*TEACHER_NAMES,
                  *defence_victims(dcp_betas=(0.1, 0.3, 0.5, 0.7, 0.9, 1.2, 1.5),
                                   rs_betas=(0.0025, 0.01, 0.04, 0.16, 0.64, 1.28),
                                   rounding=((1, 1), (2, 1), (2, 2), (2, 3))))
MATRIX_ATTACKS = published_attacks(surrogate="cifar10", dfme_budget=200_000_000,
                                   kd=dict(temperature=20.0, omega=0.9, epochs=200, milestones=(60, 120, 160), lr_decay=0.2))


def get_config(variant: str = "thesis"):
    """`thesis`, `reference`, or `full_grid`: the thesis variant whose matrix sweeps SPEC-zoo's whole
    defence grids and runs Knockoff's DCP recipe too (`cifar_matrix`)."""
    variant, matrix = cifar_matrix(variant, MATRIX_VICTIMS, MATRIX_ATTACKS)
    return study_config(
        name="cifar100_resnet18",
        dataset="cifar100",
        teacher="resnet18",
        students=("shufflenetv2", "resnet18"),
        variant=variant,
        teachers=TEACHER_NAMES,  # the thesis's five and the training-time defences InI and MeCo
        teacher_train=CIFAR_DEFENCE_TRAIN,
        ast=dict(temperature=20.0, omega=0.03, ratio=0.02),
        ast_reference=dict(temperature=30.0, omega=0.035, k=7),
        matrix=matrix,
        attacks=MATRIX_ATTACKS,
    )
