"""Functional losses of the Adversarial Sparse Teacher study.

Every function is pure and jittable. Per-example quantities (`entropy`, `kl_divergence`, `epd`,
`cross_entropy`) return one value per row; the training objectives (`kd_loss`, `ast_loss`,
`nasty_loss`) return a scalar averaged over the batch ("batchmean": summed over classes,
averaged over examples); their optional `where` (bool, one per example, as in optax) limits the
average to the valid examples of a padded batch (`batch_mean`). Logits of any float dtype are promoted to at least float32 first, so a
bfloat16 model still gets a float32 loss.

Equation numbers refer to the AST thesis (docs/method.md §2). Notation: sigma_T(z) =
softmax(z / T); omega (ω of the thesis, `alpha` in the reference code) weighs the divergence term.

Hyperparameters given as Python numbers are validated eagerly (`ValueError` naming the
argument); traced values cannot be checked and are taken as given.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import optax

DIVERGENCES = ("epd", "kl")


def _check(name: str, value, low: float, high: float, *, low_open: bool = False) -> None:
    """Raise ValueError when a concrete hyperparameter lies outside [low, high] (or (low, high])."""
    if not isinstance(value, numbers.Real):
        return
    if value != value or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value}")


def _float(x: jax.Array) -> jax.Array:
    """Promote to at least float32 (bfloat16 logits give float32 losses)."""
    return jnp.asarray(x).astype(jnp.promote_types(jnp.asarray(x).dtype, jnp.float32))


def _safe_log(p: jax.Array) -> jax.Array:
    """log p where p > 0, and 0 (not -inf) where p == 0, so that 0 * log 0 terms stay finite."""
    return jnp.log(jnp.where(p > 0, p, 1.0))


def softmax_t(logits: jax.Array, temperature) -> jax.Array:
    """Temperature-scaled softmax, thesis eq. 3: sigma_T(z)_i = exp(z_i / T) / sum_j exp(z_j / T).

    Entries of `logits` equal to -inf (see `sparse_topk`) get probability exactly 0.
    """
    _check("temperature", temperature, 0.0, float("inf"), low_open=True)
    return jax.nn.softmax(_float(logits) / temperature, axis=-1)


def log_softmax_t(logits: jax.Array, temperature) -> jax.Array:
    """log sigma_T(z), computed stably (log-sum-exp); -inf where a logit is -inf."""
    _check("temperature", temperature, 0.0, float("inf"), low_open=True)
    return jax.nn.log_softmax(_float(logits) / temperature, axis=-1)


def entropy(probs: jax.Array) -> jax.Array:
    """Shannon entropy per example, natural log: H(p) = -sum_i p_i log p_i, with 0 log 0 = 0."""
    probs = _float(probs)
    return -jnp.sum(jnp.where(probs > 0, probs * _safe_log(probs), 0.0), axis=-1)


def _log_of(p: jax.Array) -> jax.Array:
    """log p, -inf exactly where p == 0 (with finite gradients there)."""
    return jnp.where(p > 0, _safe_log(p), -jnp.inf)


def kl_from_log_probs(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(p || q) = sum_i p_i (log p_i - log q_i) per example from log-probabilities (-inf:
    probability 0). Terms with p_i = 0 are exactly 0; a log q_i = -inf under p_i > 0 gives +inf.
    Working in log space keeps it exact where a probability underflows (log q_i = -800)."""
    support = log_p > -jnp.inf
    safe_log_p = jnp.where(support, log_p, 0.0)
    terms = jnp.exp(safe_log_p) * (safe_log_p - log_q)
    return jnp.sum(jnp.where(support, terms, 0.0), axis=-1)


def kl_divergence(p: jax.Array, q: jax.Array) -> jax.Array:
    """Kullback-Leibler divergence per example: KL(p || q) = sum_i p_i log(p_i / q_i).

    Terms with p_i = 0 are exactly 0 (and have finite gradients), so masked targets are fine; a
    q_i = 0 under p_i > 0 gives +inf, as it should.
    """
    p, q = _float(p), _float(q)
    return kl_from_log_probs(_log_of(p), jnp.log(q))


def kl_to_logits(p: jax.Array, q_logits: jax.Array) -> jax.Array:
    """KL(p || σ(b)) per example from probabilities p and logits b (`q_logits`), through
    log-softmax (no q_i is rounded to 0 before its logarithm)."""
    return kl_from_log_probs(_log_of(_float(p)), log_softmax_t(q_logits, 1.0))


def kl_from_logits(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """KL(σ(a) || σ(b)) per example from two rows of logits a (`p_logits`) and b (`q_logits`),
    through log-softmax (no probability is rounded to 0 before its logarithm)."""
    return kl_from_log_probs(log_softmax_t(p_logits, 1.0), log_softmax_t(q_logits, 1.0))


def epd(target_probs: jax.Array, probs: jax.Array) -> jax.Array:
    """Exponential Predictive Divergence per example, thesis eq. 6.

    D_EPD(P, Q) = sum_i exp(P_i) * (P_i - Q_i), with P the target and Q the prediction, both
    probability vectors. It can be negative, is not minimised at Q = P, and dD/dQ_i = -exp(P_i):
    every class is pulled up, the classes the target keeps (P_i > 0) the hardest. The authors'
    code computes it as PyTorch `KLDivLoss(log_target=True)(input=Q, target=P)`, which evaluates
    exactly this formula.
    """
    target_probs, probs = _float(target_probs), _float(probs)
    return jnp.sum(jnp.exp(target_probs) * (target_probs - probs), axis=-1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy per example on untempered logits: CE = -log sigma(z)_y (optax's
    integer-label cross-entropy; the one CE of training, evaluation and PGD)."""
    return optax.softmax_cross_entropy_with_integer_labels(_float(logits), jnp.asarray(labels).astype(jnp.int32))


def soft_cross_entropy(target_logits: jax.Array, logits: jax.Array) -> jax.Array:
    """Cross-entropy against soft targets per example: -sum_k σ(t)_k log σ(z)_k, with t the target
    logits and z the prediction's (optax's `softmax_cross_entropy`; differentiable in both)."""
    return optax.softmax_cross_entropy(_float(logits), jax.nn.softmax(_float(target_logits), axis=-1))


def batch_mean(values: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """Mean of per-example `values` over the examples where `where` is True (all if None).

    sum_b where_b * values_b / max(1, sum_b where_b): a batch (or a device's shard of one) without
    a valid example gives 0, not NaN. Padded examples enter neither the sum nor the count.
    """
    if where is None:
        return jnp.mean(values)
    return jnp.sum(jnp.where(where, values, 0.0)) / jnp.maximum(jnp.sum(where), 1)


def resolve_k(num_classes: int, *, k: int | None = None, ratio: float | None = None) -> int:
    """Number of classes the sparsity function keeps, from an absolute `k` or a `ratio`.

    The thesis states a ratio beta (k = beta * C); the Stingy Teacher code uses int(beta * C).
    The product is floored after a 1e-6 tolerance, so 0.03 * 100 gives 3, not 2.
    """
    if (k is None) == (ratio is None):
        raise ValueError("give exactly one of k (number of classes kept) or ratio (fraction kept)")
    if ratio is not None:
        _check("ratio", ratio, 0.0, 1.0, low_open=True)
        k = int(ratio * num_classes + 1e-6)
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must lie in [1, {num_classes}] (the number of classes), got {k}")
    return k


def sparse_topk(logits: jax.Array, k) -> jax.Array:
    """Sparsity function S(z, k) (thesis §2.5, §4.1): keep the k largest logits of each row.

    All other entries become -inf, so sigma_T(S(z, k)) has exactly k non-zero entries. An entry
    is kept when its rank (position in the row sorted by decreasing logit, ties in index order,
    as `lax.top_k` orders them) is below k, so ties never let more than k entries survive
    (docs/method.md §2). `k` may be a traced integer (a batch of runs with different sparsity
    shares one program, `train.batch`); a Python integer is checked to lie in [1, classes].
    """
    num_classes = logits.shape[-1]
    if isinstance(k, numbers.Number) and (not isinstance(k, numbers.Integral) or not 1 <= k <= num_classes):
        raise ValueError(f"k must be an integer in [1, {num_classes}] (the number of classes), got {k}")
    order = jnp.argsort(-logits, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)
    return jnp.where(rank < k, logits, -jnp.inf)


def kd_loss(student_logits, teacher_logits, labels, temperature, omega, where=None) -> jax.Array:
    """Knowledge-distillation loss, thesis eq. 1 (Hinton et al.).

    L_KD = omega * T^2 * mean_b KL(sigma_T(t) || sigma_T(s)) + (1 - omega) * mean_b CE(s, y).

    The teacher side is a constant (gradients stopped) and may hold -inf logits (a Stingy
    Teacher's sparse output): its zero-probability classes contribute exactly 0.
    """
    _check("omega", omega, 0.0, 1.0)
    log_p_teacher = jax.lax.stop_gradient(log_softmax_t(teacher_logits, temperature))
    kl = kl_from_log_probs(log_p_teacher, log_softmax_t(student_logits, temperature))
    ce = cross_entropy(student_logits, labels)
    return omega * temperature**2 * batch_mean(kl, where) + (1 - omega) * batch_mean(ce, where)


def ast_loss(logits, adv_logits, labels, temperature, omega, k, divergence: str = "epd", where=None) -> jax.Array:
    """Adversarial Sparse Teacher loss, thesis eq. 5.

    L_AST = omega * T^2 * mean_b D(sigma_T(S(f(x_adv), k)) -> sigma_T(f(x)))
            + (1 - omega) * mean_b CE(f(x), y),

    with D = EPD (eq. 6) by default, or D = KL(target || prediction) for the thesis's KL
    ablation (Table 6.11). The target is built from `adv_logits` (the trained model's own
    inference-mode output on the adversarial image) with gradients stopped. The Stingy Trained
    Teacher uses the same loss with the clean image's inference-mode logits as `adv_logits`.
    """
    _check("omega", omega, 0.0, 1.0)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    sparse_target = sparse_topk(jax.lax.stop_gradient(_float(adv_logits)), k)
    if divergence == "epd":
        div = epd(softmax_t(sparse_target, temperature), softmax_t(logits, temperature))
    else:
        div = kl_from_log_probs(log_softmax_t(sparse_target, temperature), log_softmax_t(logits, temperature))
    ce = cross_entropy(logits, labels)
    return omega * temperature**2 * batch_mean(div, where) + (1 - omega) * batch_mean(ce, where)


def nasty_loss(logits, base_logits, labels, temperature, omega, where=None) -> jax.Array:
    """Nasty Teacher loss (Ma et al., ICLR 2021), as stated in docs/method.md §2.

    L_NT = mean_b CE(f(x), y) - omega * T^2 * mean_b KL(sigma_T(f(x)) || sigma_T(f_base(x))).

    `base_logits` come from the frozen base model in inference mode (gradients stopped);
    gradients flow through the nasty model's side of the KL. The reference code's constant +100
    (for logging only) is left out: it changes no gradient.
    """
    _check("omega", omega, 0.0, 1.0)
    log_p_base = jax.lax.stop_gradient(log_softmax_t(base_logits, temperature))
    kl = kl_from_log_probs(log_softmax_t(logits, temperature), log_p_base)
    return batch_mean(cross_entropy(logits, labels), where) - omega * temperature**2 * batch_mean(kl, where)


#: The Skeptical Student's self-distillation weights (docs/method.md §10.6, the authors' code):
#: 0.3 on the final head -> head 1 divergence, 0.7 on head 1's cross-entropy.
SELF_DISTILLATION_WEIGHTS = (0.3, 0.7)


def skeptical_loss(logits, head1_logits, head2_logits, teacher_logits, labels, temperature, omega,
                   where=None) -> jax.Array:
    """The Skeptical Student's loss (Kundu et al. 2021, the authors' code with loc = 2; docs/method.md
    §10.6), s_0 the clone's final head, s_1 and s_2 its auxiliary heads after stages 3 and 2:

    L = ω τ² KL(σ_τ(t) ‖ σ_τ(s_2)) + (1 − ω) CE(s_2, y)      (teacher -> head 2: `kd_loss`)
      + 0.3 KL(σ_τ(s_0) ‖ σ_τ(s_1)) + 0.7 CE(s_1, y)          (final head -> head 1)
      + CE(s_0, y),

    each term averaged over the batch. The self-distillation KL has no τ² and no stopped
    gradient: s_0 is pulled toward s_1 as well.
    """
    kd = kd_loss(head2_logits, teacher_logits, labels, temperature, omega, where)
    self_kl = kl_from_log_probs(log_softmax_t(logits, temperature), log_softmax_t(head1_logits, temperature))
    kl_weight, ce_weight = SELF_DISTILLATION_WEIGHTS
    return (kd + kl_weight * batch_mean(self_kl, where) + ce_weight * batch_mean(cross_entropy(head1_logits, labels), where)
            + batch_mean(cross_entropy(logits, labels), where))
