"""Matrix victims: a study teacher, or the base teacher behind an output defence (docs/method.md §10.5).

A victim is written `teacher` (`base`, `stingy`, `ast`, `nasty`, `stt`, ...) or
`defence:key=value,...` (`dcp:beta=0.3`, `reverse_sigmoid:beta=0.04`, `top1`,
`topk_round:k=1,decimals=1`); DCP's and Reverse Sigmoid's γ default to
`ast_jax.defences.outputs.default_gamma`.
"""

from __future__ import annotations

import ast as literal
import dataclasses

from ast_jax.defences import outputs as defenses
from ast_jax.studies.settings import TEACHER_NAMES


@dataclasses.dataclass(frozen=True)
class Victim:
    """A victim: `teacher` (a study teacher) behind `defense` with `params`; `label` names its folder."""

    label: str
    teacher: str
    defense: str
    params: tuple


BASE = Victim("base", "base", "none", ())


def _value(text: str):
    try:
        return literal.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_victim(spec: str, dataset: str, num_classes: int | None, where: str) -> Victim:
    """`teacher` or `defence:key=value,...` as a Victim; one-line ValueError naming `where` if bad."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{where}: a victim is a teacher or 'defence:key=value,...', got {spec!r}")
    name, _, arguments = spec.partition(":")
    if name in TEACHER_NAMES:
        if arguments:
            raise ValueError(f"{where}: teacher victim {name!r} takes no parameters, got {spec!r}")
        return BASE if name == "base" else Victim(name, name, "none", ())
    valid = sorted(set(TEACHER_NAMES) | set(defenses.DEFENSES) - {"none"})
    if name not in defenses.DEFENSES or name in ("none", "stingy"):
        raise ValueError(f"{where}: unknown victim {name!r}; valid: teachers and defences {', '.join(valid)}")
    params = {}
    for item in filter(None, arguments.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"{where}: parameter {item!r} of {spec!r} must be key=value")
        params[key.strip()] = _value(value.strip())
    if name in ("dcp", "reverse_sigmoid"):
        params.setdefault("gamma", defenses.default_gamma(name, dataset))
    defenses.check_defense(name, params, where, num_classes)
    label = "-".join([name, *(f"{key}{value}" for key, value in params.items())])
    return Victim(label, "base", name, tuple(params.items()))
