"""The thesis's AST ablations (Tables 6.6-6.11) on CIFAR-100 with ResNet18 teachers, sized for
a GPU: `ast-jax sweep --config ablations_cifar100:<ablation> --workdir W` (3 seeds).

Every cell is ast_jax/configs/cifar100_resnet18.py's AST teacher (200 epochs; tau 20, omega 0.03,
ratio 0.02) with the cell's values, and its students (ShuffleNetV2, ResNet18); the seeds' base
teacher and its students are shared by all cells. The grids are the thesis's (docs/method.md §5):

- `omega_tau`: omega 0.03 / 0.035 / 0.04 x tau 10 / 20 / 30 / 40 at ratio 0.02 (Table 6.6);
- `omega_tau_r03`: the same at ratio 0.03 (Table 6.7);
- `sparsity`: ratios 0.01-1 at (omega, tau) = (0.03, 20) (Tables 6.8-6.10);
- `divergence`: EPD against KL (Table 6.11);
- `pgd`: the PGD set's eps and steps around the thesis's 0.3 and 40.
"""

from ast_jax.configs.common import ablation_config

OMEGA_TAU = ("ast.omega=0.03,0.035,0.04", "ast.temperature=10,20,30,40")
ABLATIONS = {
    "omega_tau": (*OMEGA_TAU, "ast.ratio=0.02"),
    "omega_tau_r03": (*OMEGA_TAU, "ast.ratio=0.03"),
    "sparsity": ("ast.ratio=0.01,0.02,0.03,0.05,0.07,0.1,1.0",),
    "divergence": ("ast.divergence=epd,kl",),
    "pgd": ("pgd.eps=0.1,0.2,0.3", "pgd.steps=10,40"),
}


def get_config(variant: str = "omega_tau"):
    return ablation_config("cifar100_resnet18", ABLATIONS, variant)
