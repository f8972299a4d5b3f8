"""The thesis's AST ablations (Tables 6.6-6.11) on digits, sized for 2 CPU cores:
`ast-jax sweep --config ablations_digits:<ablation> --workdir W` (3 seeds).

Every cell is the digits study's AST teacher (configs/digits.py: ResNetC-20, 30 epochs, PGD
eps 0.3 / 40 steps, tau 10, omega 0.05, k 2) with the cell's values, and its CNN student;
the seeds' base teacher and its student are shared by all cells. The grids centre on the
digits values rather than the thesis's CIFAR-100 ones (docs/digits-schedule.md: on digits the
effect needs omega x tau near 0.5 and eps 0.3):

- `omega_tau`: omega x tau at k 2 (ratio 0.2, the analogue of Table 6.6);
- `omega_tau_k3`: the same at k 3 (ratio 0.3, Table 6.7);
- `sparsity`: ratios 0.1 (one-hot) to 1 (no sparsity) at the demo's omega and tau (Tables 6.8-6.10);
- `divergence`: EPD against KL (Table 6.11);
- `pgd`: the PGD set's eps and steps (the digits prototype found eps the decisive knob).
"""

from ast_jax.configs.common import ablation_config

OMEGA_TAU = ("ast.omega=0.025,0.05,0.075", "ast.temperature=5,10,20")
ABLATIONS = {
    "omega_tau": (*OMEGA_TAU, "ast.ratio=0.2"),
    "omega_tau_k3": (*OMEGA_TAU, "ast.ratio=0.3"),
    "sparsity": ("ast.ratio=0.1,0.2,0.3,0.5,1.0",),
    "divergence": ("ast.divergence=epd,kl",),
    "pgd": ("pgd.eps=0.1,0.2,0.3", "pgd.steps=10,40"),
}


def get_config(variant: str = "omega_tau"):
    return ablation_config("digits", ABLATIONS, variant)
