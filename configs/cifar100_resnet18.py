"""CIFAR-100 study with ResNet18 teachers (thesis §5 and §6.2; docs/method.md §5 and §7).

Teachers (base, AST, NT, STT): ResNet18. Students: ShuffleNetV2 and ResNet18 (the teacher's
own architecture). SGD lr 0.1 for 200 epochs, x0.2 at epochs 60, 120 and 160.

AST: thesis tau 20, omega 0.03, sparsity ratio 0.02 (k = 2 of 100); the authors' code runs
T 30, omega 0.035, k 7 (`reference` variant). NT tau 20 / omega 0.005, STT ratio 0.1 / tau 20 /
omega 0.005, ST ratio 0.1, KD attack tau 20 / omega 0.9 (per data set, `ast_jax.config`).
The thesis's ablation grid (docs/method.md §5) is this study with `--config.ast.*` overrides.
"""

from ast_jax.config import study_config


def get_config(variant: str = "thesis"):
    return study_config(
        name="cifar100_resnet18",
        dataset="cifar100",
        teacher="resnet18",
        students=("shufflenetv2", "resnet18"),
        variant=variant,
        ast=dict(temperature=20.0, omega=0.03, ratio=0.02),
        ast_reference=dict(temperature=30.0, omega=0.035, k=7),
    )
