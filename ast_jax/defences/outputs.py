"""Output defences: pure, jittable maps from a victim's probabilities to what it releases (docs/method.md §10.2).

Every defence takes probabilities p (N, K) = σ(f(x)) and returns the released r(x) (N, K):

| name              | release                                                          | parameters             |
|-------------------|------------------------------------------------------------------|------------------------|
| `none`            | p                                                                |                        |
| `dcp`             | N(p − α(p)·r(p)), α = S(−ν(p_max − β)) (DCP eq. 4, code's sign)   | beta, gamma, nu, sign, upper_clamp |
| `reverse_sigmoid` | N(p − r(p)) (DCP with α ≡ 1)                                     | beta, gamma            |
| `top1`            | the one-hot arg-max label (a labels-only black box)              |                        |
| `topk_round`      | the k largest entries rounded to `decimals`, the rest 0          | k, decimals            |
| `stingy`          | σ(S(f, k)), the Stingy Teacher's sparse release (thesis §2.5)    | k                      |

with N(v) = v / Σ_k v_k, S the logistic sigmoid and the reverse-sigmoid perturbation
r_k(p) = β·(S(γ·ℓ_k) − ½), ℓ_k = log clamp(p_k / (1 − p_k), 1e-12, 1 − 1e-12).
`make_defense(name, **params)` builds one as `blackbox.OutputDefense`; `check_defense` refuses
bad names and parameters in one line before anything runs.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from ast_jax import losses
from ast_jax.defences.blackbox import no_defense

DCP_SIGNS = ("code", "paper")
#: Clamp of the odds p/(1-p) before the logarithm (DCP's code); the upper bound makes r_k = 0 for p_k >= 1/2.
ODDS_CLAMP = (1e-12, 1.0 - 1e-12)


def _normalise(v: jax.Array) -> jax.Array:
    """N(v) = v / Σ_k v_k over the last axis."""
    return v / jnp.sum(v, axis=-1, keepdims=True)


def reverse_sigmoid_perturbation(probs: jax.Array, beta, gamma, *, upper_clamp: bool = True) -> jax.Array:
    """r_k = β·(S(γ·ℓ_k) − ½), ℓ_k = log clamp(p_k/(1 − p_k), 1e-12, 1 − 1e-12) (DCP eqs. 2-3).

    With the upper clamp (DCP's code) ℓ_k <= 0, so r_k <= 0 and r_k = 0 for p_k >= ½: subtracting r
    adds mass to the small classes only. `upper_clamp=False` keeps the odds' upper range (p_k = 1
    then gives ℓ_k = +inf and S(γ·ℓ_k) = 1, still finite).
    """
    probs = jnp.asarray(probs, jnp.float32)
    low, high = ODDS_CLAMP
    odds = probs / (1.0 - probs)
    odds = jnp.clip(odds, low, high) if upper_clamp else jnp.maximum(odds, low)
    return beta * (jax.nn.sigmoid(gamma * jnp.log(odds)) - 0.5)


def dcp(probs: jax.Array, beta, gamma, nu: float = 1000.0, *, sign: str = "code", upper_clamp: bool = True) -> jax.Array:
    """DCP's release p′ = N(p − α·r(p)) with α = S(−ν(p_max − β)) (DCP eq. 4 with the authors' code's sign).

    With the code's sign α ≈ 1 when p_max < β: the uncertain queries are perturbed and confident
    ones pass untouched, as the paper's text intends. `sign="paper"` uses the printed eq. 4,
    α = S(+ν(p_max − β)), which perturbs the confident ones instead. β = 0 is the identity (r = 0).
    The sigmoid is `jax.nn.sigmoid` (stable for large |ν(p_max − β)|).
    """
    if sign not in DCP_SIGNS:
        raise ValueError(f"dcp sign must be one of {DCP_SIGNS}, got {sign!r}")
    probs = jnp.asarray(probs, jnp.float32)
    margin = jnp.max(probs, axis=-1, keepdims=True) - beta
    alpha = jax.nn.sigmoid(-nu * margin if sign == "code" else nu * margin)
    return _normalise(probs - alpha * reverse_sigmoid_perturbation(probs, beta, gamma, upper_clamp=upper_clamp))


def reverse_sigmoid(probs: jax.Array, beta, gamma) -> jax.Array:
    """Reverse Sigmoid: p′ = N(p − r(p)), DCP with α ≡ 1 (DCP §3)."""
    probs = jnp.asarray(probs, jnp.float32)
    return _normalise(probs - reverse_sigmoid_perturbation(probs, beta, gamma))


def top1(probs: jax.Array) -> jax.Array:
    """The arg-max label as a one-hot vector (served by a labels-only black box)."""
    probs = jnp.asarray(probs)
    return jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1], dtype=jnp.float32)


def topk_round(probs: jax.Array, k: int, decimals: int) -> jax.Array:
    """Knockoff's truncated release: the k largest probabilities rounded to `decimals`, all others 0.

    Not renormalised (the rounded vector is what the attacker sees).
    """
    probs = jnp.asarray(probs, jnp.float32)
    kept = jnp.isfinite(losses.sparse_topk(probs, k))
    return jnp.where(kept, jnp.round(probs, decimals), 0.0)


def stingy(probs: jax.Array, k: int) -> jax.Array:
    """The Stingy Teacher's release σ(S(f, k)) from p = σ(f): log p = f − logsumexp f, so S(log p, k)
    keeps the same classes and its softmax equals σ(S(f, k))."""
    probs = jnp.asarray(probs, jnp.float32)
    return jax.nn.softmax(losses.sparse_topk(jnp.log(probs), k), axis=-1)


_DEFENSES: dict[str, tuple[Any, dict[str, Any], tuple[str, ...]]] = {
    # name: (function, optional parameters with defaults, required parameters)
    "none": (no_defense, {}, ()),
    "dcp": (dcp, dict(nu=1000.0, sign="code", upper_clamp=True), ("beta", "gamma")),
    "reverse_sigmoid": (reverse_sigmoid, {}, ("beta", "gamma")),
    "top1": (top1, {}, ()),
    "topk_round": (topk_round, {}, ("k", "decimals")),
    "stingy": (stingy, {}, ("k",)),
}
DEFENSES: tuple[str, ...] = tuple(_DEFENSES)
#: The γ of DCP and Reverse Sigmoid where a study does not set one (docs/method.md §10.2): DCP's
#: code uses 0.1 for CIFAR-100 and 0.2 elsewhere; its Reverse Sigmoid 0.1 for CIFAR-10 and 0.2 elsewhere.
_GAMMA_01 = {"dcp": ("cifar100",), "reverse_sigmoid": ("cifar10",)}


def default_gamma(defense: str, dataset: str) -> float:
    """DCP's or Reverse Sigmoid's default γ on `dataset` (0.1 or 0.2)."""
    if defense not in _GAMMA_01:
        raise ValueError(f"only dcp and reverse_sigmoid have a gamma, not {defense!r}")
    return 0.1 if dataset in _GAMMA_01[defense] else 0.2


def labels_only(name: str) -> bool:
    """Whether defence `name` releases a label only (its black box refuses probability queries)."""
    return name == "top1"


def check_defense(name: str, params: Mapping[str, Any], where: str, num_classes: int | None = None) -> None:
    """Raise a one-line ValueError naming `where` for an unknown defence or a bad parameter."""
    if name not in _DEFENSES:
        raise ValueError(f"{where}: unknown defence {name!r}; valid: {', '.join(DEFENSES)}")
    _, optional, required = _DEFENSES[name]
    unknown = sorted(set(params) - set(optional) - set(required))
    missing = [key for key in required if key not in params]
    if unknown or missing:
        problem = f"unknown parameter(s) {unknown}" if unknown else f"missing parameter(s) {missing}"
        raise ValueError(f"{where}: defence {name!r} has {problem}; it takes {list(required) + list(optional)}")

    def number(key: str, low: float = 0.0) -> None:
        value = params.get(key)
        if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool) or value < low):
            raise ValueError(f"{where}.{key}: must be a number >= {low:g}, got {value!r}")

    number("beta")
    number("gamma")
    number("nu")
    if params.get("sign", "code") not in DCP_SIGNS:
        raise ValueError(f"{where}.sign: must be one of {DCP_SIGNS}, got {params['sign']!r}")
    for key, low, high in (("k", 1, num_classes), ("decimals", 0, None)):
        value = params.get(key)
        if key in params and (not isinstance(value, numbers.Integral) or value < low or (high and value > high)):
            bound = f"[{low}, {high}]" if high else f">= {low}"
            raise ValueError(f"{where}.{key}: must be an integer {bound}, got {value!r}")


def make_defense(name: str, **params):
    """The output defence `name` with `params` bound (see the module table), jittable."""
    check_defense(name, params, f"defence {name!r}")
    function, optional, _ = _DEFENSES[name]
    return functools.partial(function, **{**optional, **params}) if params or optional else function
