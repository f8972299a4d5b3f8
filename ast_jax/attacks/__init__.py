"""Model-stealing attacks behind the black box (docs/method.md §10.3).

Every attack holds a `blackbox.BlackBox` and nothing else of the victim, trains a fresh clone and
returns an `AttackResult` (the clone, the queries it spent, per-epoch test accuracy):

| kind       | queries                                              | module      |
|------------|------------------------------------------------------|-------------|
| `kd`       | the victim's training images, each once (eq. 1 loss) | `transfer`  |
| `knockoff` | exactly `budget` images of a surrogate query set      | `transfer`  |
| `jbda`     | seeds, then Jacobian-augmented points, round by round | `jbda`      |
| `dfme`     | generator samples and their zeroth-order neighbours   | `dfme`      |
| `kd_hard`  | as kd, top-1 labels only (docs/method.md §10.6)        | `transfer`  |
| `kd_retemper` | as kd, at the attacker's own τ_a (§10.6)            | `transfer`  |
| `skeptical` | as kd; a self-distilling clone (§10.6)               | `skeptical` |

The data-based attacks take the attacker's share of the victim's data, `budget` (kd, kd_hard,
kd_retemper, skeptical) or `pool` (knockoff's query set, jbda's seeds): a fraction in (0, 1] or a
count, a seeded draw without replacement (`common.attacker_indices`).

`run_attack(kind, box, settings, context)` runs one and records the mean ℓ1 the box measured on
its queries (`AttackResult.query_l1`, docs/method.md §10.5); `settings` holds every key of
`DEFAULTS[kind]` (the published values, then those of a named recipe (`defaults`), overridden by a
study's config) and `check_settings`
refuses bad ones in one line before anything runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ast_jax.attacks import dfme, jbda, skeptical, transfer
from ast_jax.attacks.common import (
    ATTACKS,
    DEFAULTS,
    KNOCKOFF_RECIPES,
    LABELS,
    AttackContext,
    AttackResult,
    attacker_indices,
    check_settings,
    defaults,
)
from ast_jax.defences.blackbox import BlackBox


def run_attack(kind: str, box: BlackBox, settings: Mapping[str, Any], context: AttackContext) -> AttackResult:
    """Attack `box` with `kind` and `settings` (every key of DEFAULTS[kind])."""
    check_settings(kind, settings, f"attack {kind!r}")
    settings = {**defaults(kind, settings), **settings}
    runner = {"kd": transfer.kd, "knockoff": transfer.knockoff, "jbda": jbda.jbda, "dfme": dfme.dfme,
              "kd_hard": transfer.kd_hard, "kd_retemper": transfer.kd, "skeptical": skeptical.skeptical}[kind]
    ledger = box.ledger()
    result = runner(box, settings, context)
    if result.query_l1 is None:  # a transfer attack brings its own (its resumed queries are in its record)
        result = dataclasses.replace(result, query_l1=box.l1_since(ledger))
    return result


__all__ = ["ATTACKS", "AttackContext", "AttackResult", "DEFAULTS", "KNOCKOFF_RECIPES", "LABELS", "attacker_indices",
           "check_settings", "defaults", "run_attack"]
