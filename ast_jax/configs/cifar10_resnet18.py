"""CIFAR-10 study with ResNet18 teachers (thesis §5 and §6.1; docs/method.md §5 and §7).

Teachers (base, AST, NT, STT): ResNet18. Students: the five-layer CNN, ResnetC-20, ResnetC-32
(pre-activation CIFAR ResNets) and ResNet18. SGD lr 0.1 for 160 epochs, x0.1 at epochs 80 and
120; the CNN student uses the thesis's Adam 1e-3 recipe for 100 epochs without decay.

AST: thesis tau 6, omega 0.05, sparsity ratio 0.2 (k = 2 of 10); the authors' code uses the same
values with k = 2 (`reference` variant). NT tau 4 / omega 0.04, STT ratio 0.2 / tau 4 /
omega 0.04, ST ratio 0.2, KD attack tau 4 / omega 0.9 (per data set, `ast_jax.configs.common`).

InI and MeCo (docs/method.md §11) are teachers of this study too, with their papers' schedules
(`CIFAR_DEFENCE_TRAIN`; MeCo's paper trains a ResNet-34-8x, here the study's teacher
architecture) and InI's OOD set the photo crops (the paper's Tiny-ImageNet is not available here).
"""

from ast_jax.configs.common import (
    CIFAR_DEFENCE_TRAIN,
    CNN_STUDENT_TRAIN,
    TEACHER_NAMES,
    cifar_matrix,
    defence_victims,
    published_attacks,
    study_config,
)

#: `ast-jax matrix` with the published settings (docs/method.md §10.3-10.5; GPU-sized): every teacher (InI and
#: MeCo included),
#: DCP and Reverse Sigmoid over their published beta grids, top-1 and Knockoff's top-k rounding;
#: KD with the study's T, omega and schedule, Knockoff with 50,000 CIFAR-100 images, JBDA, DFME with 20M queries.
MATRIX_VICTIMS = (*TEACHER_NAMES,
                  *defence_victims(dcp_betas=(0.1, 0.3, 0.5, 0.7, 0.9, 1.2, 1.5),
                                   rs_betas=(0.0025, 0.01, 0.04, 0.16, 0.64, 1.28),
                                   rounding=((1, 1), (2, 1), (2, 2), (2, 3))))
MATRIX_ATTACKS = published_attacks(surrogate="cifar100", dfme_budget=20_000_000,
                                   kd=dict(temperature=4.0, omega=0.9, epochs=160, milestones=(80, 120), lr_decay=0.1))


def get_config(variant: str = "thesis"):
    """`thesis`, `reference`, or `full_grid`: the thesis variant whose matrix sweeps SPEC-zoo's whole
    defence grids and runs Knockoff's DCP recipe too (`cifar_matrix`)."""
    variant, matrix = cifar_matrix(variant, MATRIX_VICTIMS, MATRIX_ATTACKS)
    return study_config(
        name="cifar10_resnet18",
        dataset="cifar10",
        teacher="resnet18",
        students=("cnn", "preresnet20", "preresnet32", "resnet18"),
        variant=variant,
        teachers=TEACHER_NAMES,  # the thesis's five and the training-time defences InI and MeCo
        teacher_train=CIFAR_DEFENCE_TRAIN,
        ast=dict(temperature=6.0, omega=0.05, ratio=0.2),
        ast_reference=dict(temperature=6.0, omega=0.05, k=2),
        student_train={"cnn": CNN_STUDENT_TRAIN},
        matrix=matrix,
        attacks=MATRIX_ATTACKS,
    )
