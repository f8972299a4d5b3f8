"""The thesis's AST ablations (Tables 6.6-6.11) on digits, sized for 2 CPU cores:
`ast-jax sweep --config ablations_digits:<ablation> --workdir W` (3 seeds).

Every cell is the digits study's AST teacher (ast_jax/configs/digits.py: ResNetC-20, 30 epochs, PGD
eps 0.3 / 40 steps, tau 10, omega 0.04, k 2; KD at tau 10) with the cell's values, and its CNN student;
the seeds' base teacher and its student are shared by all cells. The grids centre on the
digits values rather than the thesis's CIFAR-100 ones (docs/notes/digits-schedule.md: on digits the
effect needs omega x tau near 0.5 and eps 0.3):

- `omega_tau`: omega x tau at k 2 (ratio 0.2, the analogue of Table 6.6);
- `omega_tau_k3`: the same at k 3 (ratio 0.3, Table 6.7);
- `sparsity`: ratios 0.1 (one-hot) to 1 (no sparsity) at the demo's omega and tau (Tables 6.8-6.10);
- `divergence`: EPD against KL (Table 6.11);
- `pgd`: the PGD set's eps and steps (the digits prototype found eps the decisive knob).

`attacker_data` is not a sweep but an attack matrix (docs/method.md §10.6, the attacker's data
budget): `ast-jax matrix --config ablations_digits:attacker_data --workdir W`. KD and kd_hard on
fractions 0.05, 0.1, 0.25, 0.5 and 1.0 of the victim's training set, against the base, AST, NT
and STT teachers (trained once, seed 0), attack seeds 0-4 (clone initialisation and the data
draw), cells `<attack>_p<percent>`; besides matrix.*, the matrix writes attacker_data.{md,csv,png}: D (teacher − stolen
clone) and the clone's accuracy against the fraction, with 95% intervals.

Expected results (2026-12-03, 2 CPU cores, no accelerator, jax 0.10.2; seeds 0, 1, 2; mean ±
sample std over the seeds), measured before the study moved to omega 0.04 and a KD temperature
of 10 (docs/notes/digits-demo-search.md), i.e. with omega 0.05 and KD at tau 4:

    ast-jax sweep --config ablations_digits:omega_tau --workdir omega_tau       # 9 min 4 s

    docs/results/digits-omega-tau.md: the stolen CNN's change against the base teacher's student
    goes from -0.46 ± 0.85 (omega 0.025, tau 10) to -16.57 ± 13.71 points (omega 0.075, tau 20);
    D (teacher - student) is inside the noise in every cell, at most +1.02 ± 2.08.

    ast-jax sweep --config ablations_digits:divergence --workdir divergence     # 3 min 16 s

    docs/results/digits-divergence.md: student change EPD -2.13 ± 0.98, KL -8.52 ± 0.32 points;
    teacher accuracy EPD 97.41 ± 0.89, KL 93.80 ± 1.85 %.
"""

import ml_collections

from ast_jax.configs import digits
from ast_jax.configs.common import ablation_config, attack_cell

OMEGA_TAU = ("ast.omega=0.025,0.05,0.075", "ast.temperature=5,10,20")
ABLATIONS = {
    "omega_tau": (*OMEGA_TAU, "ast.ratio=0.2"),
    "omega_tau_k3": (*OMEGA_TAU, "ast.ratio=0.3"),
    "sparsity": ("ast.ratio=0.1,0.2,0.3,0.5,1.0",),
    "divergence": ("ast.divergence=epd,kl",),
    "pgd": ("pgd.eps=0.1,0.2,0.3", "pgd.steps=10,40"),
}


#: The attacker's data budget: fractions of the victim's training set, attacks, victims, seeds.
ATTACKER_DATA = {"fractions": (0.05, 0.1, 0.25, 0.5, 1.0), "attacks": ("kd", "kd_hard"),
                 "victims": ("base", "ast", "nasty", "stt"), "seeds": (0, 1, 2, 3, 4)}


def attacker_data_config():
    """The digits study whose matrix is the attacker-data grid (`ATTACKER_DATA`), cells `<attack>_p<percent>`."""
    config = digits.get_config()
    config.name = "digits-attacker_data"
    cells = {f"{attack}_p{100 * fraction:g}": dict(digits.MATRIX_ATTACKS[attack], budget=fraction)
             for attack in ATTACKER_DATA["attacks"] for fraction in ATTACKER_DATA["fractions"]}
    for name, settings in cells.items():
        config.attacks[name] = ml_collections.ConfigDict(attack_cell(settings))
    config.matrix.attacks = tuple(cells)
    config.matrix.victims = ATTACKER_DATA["victims"]
    config.matrix.seeds = ATTACKER_DATA["seeds"]
    return config


def get_config(variant: str = "omega_tau"):
    if variant == "attacker_data":
        return attacker_data_config()
    return ablation_config("digits", ABLATIONS, variant)
