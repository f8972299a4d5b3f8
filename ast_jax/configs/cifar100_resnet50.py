"""CIFAR-100 study with ResNet50 teachers (thesis §5 and §6.2; docs/method.md §5 and §7).

Teachers (base, AST, NT, STT): ResNet50. Students: ShuffleNetV2 and ResNet18, the pair the
thesis reports for this teacher (docs/method.md §7); the thesis also mentions the teacher's own
architecture as a student: add it with
`--config.students="('shufflenetv2', 'resnet18', 'resnet50')"`.
SGD lr 0.1 for 200 epochs, x0.2 at epochs 60, 120 and 160.

AST: thesis tau 20, omega 0.03, sparsity ratio 0.03 (k = 3 of 100); the authors' code runs
T 30, omega 0.03, k 7 (`reference` variant). NT, STT, ST and KD as in every CIFAR-100 study
(per data set, `ast_jax.configs.common`).
"""

from ast_jax.configs.common import study_config


def get_config(variant: str = "thesis"):
    return study_config(
        name="cifar100_resnet50",
        dataset="cifar100",
        teacher="resnet50",
        students=("shufflenetv2", "resnet18"),
        variant=variant,
        ast=dict(temperature=20.0, omega=0.03, ratio=0.03),
        ast_reference=dict(temperature=30.0, omega=0.03, k=7),
    )
