"""The digits study (configs/digits.py) with the training-time defences InI and MeCo beside the
thesis's teachers (docs/method.md §11), in the report and in the attack matrix.

Everything else is digits' own: data, base teacher, PGD set, AST/NT/STT, CNN students and the
matrix's attacks; InI and MeCo train with digits' `DEFENCE_TRAIN` schedules, InI against 10,000
8x8 grey photo crops as its OOD set. A study of its own (work directory and record), so the demo's
stays as it is.
"""

from ast_jax.configs import digits
from ast_jax.configs.common import TEACHER_NAMES


def get_config(variant: str = "thesis"):
    config = digits.get_config(variant)
    config.name = "digits_defences"
    config.teachers = TEACHER_NAMES
    config.matrix.victims = (*TEACHER_NAMES, *(v for v in config.matrix.victims if v not in TEACHER_NAMES))
    return config
