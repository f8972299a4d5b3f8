"""ast_jax.losses against independent float64 NumPy formulas, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ast_jax import losses

RTOL, ATOL = 2e-5, 2e-6
B, C = 6, 10


# ---- float64 NumPy restatements (written from the thesis equations, not from the library) ----
def np_softmax(z, t=1.0):
    z = np.asarray(z, np.float64) / t
    finite = np.isfinite(z)
    e = np.where(finite, np.exp(z - np.max(np.where(finite, z, -np.inf), -1, keepdims=True)), 0.0)
    return e / e.sum(-1, keepdims=True)


def np_onehot(y, c=C):
    return np.eye(c)[y]


def np_kl(p, q):
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0), -1)


def np_ce(z, y):
    return -np.log(np_softmax(z)[np.arange(len(y)), y])


def np_topk_mask(z, k):
    order = np.argsort(-np.asarray(z), axis=-1, kind="stable")[:, :k]
    mask = np.zeros(np.shape(z), bool)
    np.put_along_axis(mask, order, True, -1)
    return mask


def np_softmax_vjp(q, g, t):
    """Gradient w.r.t. z of sum(g * softmax(z / t)), given q = softmax(z / t)."""
    return q * (g - np.sum(q * g, -1, keepdims=True)) / t


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (B, C)).astype(np.float32)
    z_adv = rng.normal(0, 3, (B, C)).astype(np.float32)
    y = rng.integers(0, C, B).astype(np.int32)
    return z, z_adv, y


def close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=rtol, atol=atol)


# ---- building blocks ----
@pytest.mark.parametrize("t", [1.0, 4.0, 100.0])
def test_softmax_t_value_and_gradient(batch, t):
    z, _, _ = batch
    w = np.linspace(-1, 1, C)
    close(losses.softmax_t(z, t), np_softmax(z, t))
    grad = jax.grad(lambda x: jnp.sum(w * losses.softmax_t(x, t)))(z)
    close(grad, np_softmax_vjp(np_softmax(z, t), w, t))


def test_entropy_value_gradient_and_zeros():
    p = np.array([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]], np.float32)
    expected = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)
    close(losses.entropy(p), expected)
    grad = np.asarray(jax.grad(lambda q: jnp.sum(losses.entropy(q)))(p))
    close(grad[1], -(np.log(p[1].astype(np.float64)) + 1))
    assert np.all(np.isfinite(grad)) and np.all(grad[0, 2:] == 0)
    close(losses.entropy(np.full((1, C), 1 / C, np.float32)), [np.log(C)])


def test_kl_divergence_value_gradient_and_exact_zero_terms(batch):
    z, z_adv, _ = batch
    p = np_softmax(np.where(np_topk_mask(z_adv, 3), z_adv, -np.inf), 2.0).astype(np.float32)
    q = np_softmax(z, 2.0).astype(np.float32)
    close(losses.kl_divergence(p, q), np_kl(p, q))
    gp, gq = jax.grad(lambda a, b: jnp.sum(losses.kl_divergence(a, b)), argnums=(0, 1))(p, q)
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    close(gq, -p64 / q64, rtol=1e-4)
    support = p > 0
    expected_gp = np.log(p64[support]) - np.log(q64[support]) + 1
    close(np.asarray(gp)[support], expected_gp, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(gp)) and np.all(np.isfinite(gq))
    assert float(jnp.max(jnp.abs(losses.kl_divergence(q, q)))) < 1e-6


def test_epd_value_and_gradients(batch):
    z, z_adv, _ = batch
    p = np_softmax(z_adv, 3.0).astype(np.float32)
    q = np_softmax(z, 3.0).astype(np.float32)
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    close(losses.epd(p, q), np.sum(np.exp(p64) * (p64 - q64), -1))
    gp, gq = jax.grad(lambda a, b: jnp.sum(losses.epd(a, b)), argnums=(0, 1))(p, q)
    close(gq, -np.exp(p64))  # dD/dQ_i = -exp(P_i)
    close(gp, np.exp(p64) * (p64 - q64) + np.exp(p64))


def test_epd_is_not_minimised_at_q_equals_p():
    p = jnp.array([[0.7, 0.2, 0.1]])
    at_target = losses.epd(p, p)[0]
    toward_top = losses.epd(p, jnp.array([[0.9, 0.05, 0.05]]))[0]
    assert toward_top < at_target


def test_cross_entropy(batch):
    z, _, y = batch
    close(losses.cross_entropy(z, y), np_ce(z, y))


# ---- sparsity ----
@pytest.mark.parametrize("k", [1, 2, C])
def test_sparse_topk_keeps_exactly_k(batch, k):
    z, _, _ = batch
    out = np.asarray(losses.sparse_topk(z, k))
    mask = np_topk_mask(z, k)
    np.testing.assert_array_equal(np.isfinite(out), mask)
    np.testing.assert_array_equal(out[mask], z[mask])
    assert np.all(np.count_nonzero(np.asarray(losses.softmax_t(out, 4.0)), -1) == k)


def test_sparse_topk_ties_select_by_index():
    z = jnp.array([[1.0, 3.0, 3.0, 3.0, 0.0]])
    out = np.asarray(losses.sparse_topk(z, 2))
    assert np.isfinite(out).sum() == 2
    np.testing.assert_array_equal(np.isfinite(out[0]), [False, True, True, False, False])


@pytest.mark.parametrize("k", [0, C + 1, 2.5])
def test_sparse_topk_rejects_bad_k(batch, k):
    with pytest.raises(ValueError, match="k must"):
        losses.sparse_topk(batch[0], k)


def test_resolve_k():
    assert losses.resolve_k(10, ratio=0.2) == 2
    assert losses.resolve_k(100, ratio=0.03) == 3
    assert losses.resolve_k(200, ratio=0.015) == 3
    assert losses.resolve_k(100, k=7) == 7
    with pytest.raises(ValueError, match="k must"):
        losses.resolve_k(10, ratio=0.05)
    with pytest.raises(ValueError, match="exactly one"):
        losses.resolve_k(10, k=2, ratio=0.2)
    with pytest.raises(ValueError, match="ratio"):
        losses.resolve_k(10, ratio=1.5)


# ---- training objectives ----
@pytest.mark.parametrize("t,omega", [(4.0, 0.9), (20.0, 0.5), (1.0, 0.0)])
def test_kd_loss_value_and_gradient(batch, t, omega):
    z_s, z_t, y = batch
    p_t, q_s = np_softmax(z_t, t), np_softmax(z_s, t)
    expected = omega * t**2 * np.mean(np_kl(p_t, q_s)) + (1 - omega) * np.mean(np_ce(z_s, y))
    value, grad = jax.value_and_grad(losses.kd_loss)(z_s, z_t, y, t, omega)
    close(value, expected)
    expected_grad = (omega * t * (q_s - p_t) + (1 - omega) * (np_softmax(z_s) - np_onehot(y))) / B
    close(grad, expected_grad)


def test_kd_loss_with_sparse_stingy_teacher(batch):
    z_s, z_t, y = batch
    sparse_t = np.where(np_topk_mask(z_t, 2), z_t, -np.inf)
    p_t, q_s = np_softmax(sparse_t, 4.0), np_softmax(z_s, 4.0)
    expected = 0.9 * 16 * np.mean(np_kl(p_t, q_s)) + 0.1 * np.mean(np_ce(z_s, y))
    value, grad = jax.value_and_grad(losses.kd_loss)(z_s, losses.sparse_topk(z_t, 2), y, 4.0, 0.9)
    close(value, expected)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("k", [1, 2, C])
@pytest.mark.parametrize("t,omega", [(6.0, 0.05), (20.0, 0.03)])
def test_ast_loss_epd_value_and_gradient(batch, k, t, omega):
    z, z_adv, y = batch
    p = np_softmax(np.where(np_topk_mask(z_adv, k), z_adv, -np.inf), t)
    q = np_softmax(z, t)
    expected = omega * t**2 * np.mean(np.sum(np.exp(p) * (p - q), -1)) + (1 - omega) * np.mean(np_ce(z, y))
    (value, (grad, grad_adv)) = jax.value_and_grad(losses.ast_loss, argnums=(0, 1))(z, z_adv, y, t, omega, k)
    close(value, expected)
    expected_grad = omega * t**2 * np_softmax_vjp(q, -np.exp(p), t) / B
    expected_grad += (1 - omega) * (np_softmax(z) - np_onehot(y)) / B
    close(grad, expected_grad, atol=1e-5)
    assert np.all(np.asarray(grad_adv) == 0), "the adversarial target must be a constant"


def test_ast_loss_kl_ablation(batch):
    z, z_adv, y = batch
    t, omega, k = 6.0, 0.05, 2
    p = np_softmax(np.where(np_topk_mask(z_adv, k), z_adv, -np.inf), t)
    q = np_softmax(z, t)
    expected = omega * t**2 * np.mean(np_kl(p, q)) + (1 - omega) * np.mean(np_ce(z, y))
    value, grad = jax.value_and_grad(losses.ast_loss)(z, z_adv, y, t, omega, k, "kl")
    close(value, expected)
    close(grad, (omega * t * (q - p) + (1 - omega) * (np_softmax(z) - np_onehot(y))) / B, atol=1e-5)


@pytest.mark.parametrize("t,omega", [(4.0, 0.04), (20.0, 0.005)])
def test_nasty_loss_value_and_gradient(batch, t, omega):
    z, z_base, y = batch
    q, p_base = np_softmax(z, t), np_softmax(z_base, t)
    expected = np.mean(np_ce(z, y)) - omega * t**2 * np.mean(np_kl(q, p_base))
    (value, (grad, grad_base)) = jax.value_and_grad(losses.nasty_loss, argnums=(0, 1))(z, z_base, y, t, omega)
    close(value, expected)
    dkl_dq = np.log(q) - np.log(p_base) + 1
    expected_grad = (np_softmax(z) - np_onehot(y)) / B - omega * t**2 * np_softmax_vjp(q, dkl_dq, t) / B
    close(grad, expected_grad, atol=1e-5)
    assert np.all(np.asarray(grad_base) == 0), "the base model is frozen"


@pytest.mark.parametrize("name", ["kd", "ast", "nasty"])
def test_where_averages_over_the_valid_examples_only(batch, name):
    """`where` gives the objective of the valid rows alone; padded rows get no gradient, even when
    their logits are huge."""
    z, z_other, y = batch
    where = np.array([True, False, True, True, False, True])
    padded = np.where(where[:, None], z, 1e4).astype(np.float32)
    fn = {"kd": lambda a, b, y, **kw: losses.kd_loss(a, b, y, 4.0, 0.9, **kw),
          "ast": lambda a, b, y, **kw: losses.ast_loss(a, b, y, 6.0, 0.05, 2, **kw),
          "nasty": lambda a, b, y, **kw: losses.nasty_loss(a, b, y, 4.0, 0.04, **kw)}[name]
    value, grad = jax.value_and_grad(fn)(padded, z_other, y, where=where)
    valid_value, valid_grad = jax.value_and_grad(fn)(z[where], z_other[where], y[where])
    close(value, float(valid_value))
    close(np.asarray(grad)[where], np.asarray(valid_grad))
    assert np.all(np.asarray(grad)[~where] == 0)


def test_batch_mean_without_valid_examples_is_zero():
    assert float(losses.batch_mean(jnp.array([3.0, 5.0]), jnp.array([False, False]))) == 0.0
    close(losses.batch_mean(jnp.array([3.0, 5.0, 7.0]), jnp.array([True, False, True])), 5.0)


# ---- numerical robustness ----
@pytest.mark.parametrize("scale,t", [(1e4, 1.0), (1e4, 100.0), (1.0, 100.0), (1e-3, 1.0)])
@pytest.mark.parametrize("k", [1, C])
def test_objectives_finite_at_extremes(batch, scale, t, k):
    z, z_adv, y = batch
    z, z_adv = z * scale, z_adv * scale
    for fn, args in [
        (losses.ast_loss, (z, z_adv, y, t, 0.05, k)),
        (losses.ast_loss, (z, z_adv, y, t, 0.05, k, "kl")),
        (losses.kd_loss, (z, losses.sparse_topk(z_adv, k), y, t, 0.9)),
        (losses.nasty_loss, (z, z_adv, y, t, 0.04)),
    ]:
        value, grad = jax.value_and_grad(fn)(*args)
        assert np.isfinite(value), fn.__name__
        assert np.all(np.isfinite(grad)), fn.__name__


def test_bfloat16_logits_give_float32_loss(batch):
    z, z_adv, y = batch
    value = losses.ast_loss(z.astype(jnp.bfloat16), z_adv.astype(jnp.bfloat16), y, 6.0, 0.05, 2)
    assert value.dtype == jnp.float32


def test_objectives_jit(batch):
    z, z_adv, y = batch
    eager = losses.ast_loss(z, z_adv, y, 6.0, 0.05, 2)
    jitted = jax.jit(losses.ast_loss, static_argnums=(5, 6))(z, z_adv, y, 6.0, 0.05, 2)
    close(jitted, float(eager))


# ---- argument validation ----
@pytest.mark.parametrize(
    "call,name",
    [
        (lambda z, y: losses.kd_loss(z, z, y, 0.0, 0.9), "temperature"),
        (lambda z, y: losses.kd_loss(z, z, y, 4.0, 1.5), "omega"),
        (lambda z, y: losses.ast_loss(z, z, y, -1.0, 0.05, 2), "temperature"),
        (lambda z, y: losses.ast_loss(z, z, y, 6.0, -0.1, 2), "omega"),
        (lambda z, y: losses.ast_loss(z, z, y, 6.0, 0.05, 0), "k"),
        (lambda z, y: losses.ast_loss(z, z, y, 6.0, 0.05, C + 1), "k"),
        (lambda z, y: losses.ast_loss(z, z, y, 6.0, 0.05, 2, "l2"), "divergence"),
        (lambda z, y: losses.nasty_loss(z, z, y, 4.0, 2.0), "omega"),
        (lambda z, y: losses.softmax_t(z, float("nan")), "temperature"),
    ],
)
def test_invalid_arguments_name_the_argument(batch, call, name):
    z, _, y = batch
    with pytest.raises(ValueError, match=name):
        call(z, y)
