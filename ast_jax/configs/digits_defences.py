"""The digits study (ast_jax/configs/digits.py) with the training-time defences InI and MeCo beside the
thesis's teachers (docs/method.md §11), in the report and in the attack matrix.

Everything else is digits' own: data, base teacher, PGD set, AST/NT/STT, CNN students and the
matrix's attacks; InI and MeCo train with digits' `DEFENCE_TRAIN` schedules, InI against 10,000
8x8 grey photo crops as its OOD set. A study of its own (work directory and record), so the demo's
stays as it is.

Expected results (docs/results/digits-ini-meco.md; 2026-12-03, 2 CPU cores, no accelerator, jax
0.10.2; test accuracy in %, mean ± sample std over seeds 0, 1, 2, converted from the recorded
population std; measured with digits' earlier AST omega 0.05 and KD temperature 4):

    ast-jax pipeline --config digits_defences --workdir digits_defences     # seed 0: 4 min 5 s

    InI teacher 93.43 ± 2.01 (cost 5.09 ± 1.63 points), its CNN student 97.13 ± 1.15
    MeCo teacher, released 97.31 ± 1.13 (clean 98.33 ± 0.48), its CNN student 99.26 ± 0.58

    ast-jax matrix --config digits_defences --workdir digits_defences \\
        --config.matrix.victims=base --config.matrix.victims=ast \\
        --config.matrix.victims=ini --config.matrix.victims=meco                   # 3 min 40 s

    DFME clone: base 51.7 ± 3.6, AST 10.1 ± 0.1, InI 21.2 ± 8.2, MeCo 53.5 ± 7.7 (MeCo: no effect)
"""

from ast_jax.configs import digits
from ast_jax.configs.common import TEACHER_NAMES


def get_config(variant: str = "thesis"):
    config = digits.get_config(variant)
    config.name = "digits_defences"
    config.teachers = TEACHER_NAMES
    config.matrix.victims = (*TEACHER_NAMES, *(v for v in config.matrix.victims if v not in TEACHER_NAMES))
    return config
