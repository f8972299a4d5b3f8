"""Tests for ast_jax.adversarial (PGD / FGSM) on tiny linear and MLP models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ast_jax.adversarial import denormalize, fgsm, pgd

N, H, W, C, K = 4, 4, 4, 3, 5
D = H * W * C
MEAN = np.array([0.4914, 0.4822, 0.4465])
STD = np.array([0.247, 0.243, 0.261])


def _linear(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, K))
    b = rng.normal(size=(K,))

    def apply_fn(x):
        return x.reshape(x.shape[0], -1) @ jnp.asarray(w, x.dtype) + jnp.asarray(b, x.dtype)

    return apply_fn, w, b


def _mlp(seed=0, hidden=16):
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(size=(D, hidden)) / np.sqrt(D), jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(hidden, K)), jnp.float32)

    def apply_fn(x):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2

    return apply_fn


def _data(seed=1, n=N):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, H, W, C))
    y = rng.integers(0, K, size=(n,))
    return x, y


def _np_grad(x, y, w, b):
    """Closed-form ∇_x of the summed CE for logits = x.reshape(n, -1) @ w + b (float64)."""
    z = x.reshape(x.shape[0], -1) @ w + b
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    g = (p - np.eye(K)[y]) @ w.T
    # float32 JAX and float64 NumPy agree on sign(g) only away from 0: guard the fixture.
    assert np.abs(g).min() > 1e-5
    return g.reshape(x.shape)


def _np_ce(logits, y):
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    return np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]


@pytest.mark.parametrize("step_size", [0.05, 0.5])
def test_one_step_matches_closed_form(step_size):
    apply_fn, w, b = _linear()
    x0, y = _data()
    eps = 0.3
    out = pgd(apply_fn, jnp.asarray(x0, jnp.float32), jnp.asarray(y),
              eps=eps, step_size=step_size, steps=1)
    g = _np_grad(x0, y, w, b)
    expected = np.clip(x0 + np.clip(step_size * np.sign(g), -eps, eps), 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)
    assert out.shape == x0.shape and out.dtype == jnp.float32


@pytest.mark.parametrize("random_start", [False, True])
def test_iterates_stay_in_ball_and_range(random_start):
    apply_fn = _mlp()
    x0, y = _data(n=8)
    x0, y = jnp.asarray(x0, jnp.float32), jnp.asarray(y)
    eps = 0.1
    kw = dict(eps=eps, step_size=0.04, random_start=random_start)
    outs = [pgd(apply_fn, x0, y, steps=s, key=jax.random.PRNGKey(0), **kw) for s in (1, 4)]
    if random_start:
        outs.append(pgd(apply_fn, x0, y, steps=1, key=jax.random.PRNGKey(1), **kw))
    for out in outs:
        assert float(jnp.max(jnp.abs(out - x0))) <= eps + 1e-6
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not np.allclose(np.asarray(outs[0]), np.asarray(x0))
    assert not np.allclose(np.asarray(outs[1]), np.asarray(outs[0]))
    if random_start:  # a different key gives a different start
        assert not np.allclose(np.asarray(outs[2]), np.asarray(outs[0]))


def test_attack_increases_loss():
    apply_fn = _mlp(seed=3)
    x0, y = _data(seed=4, n=16)
    x0 = jnp.asarray(x0, jnp.float32)
    adv = pgd(apply_fn, x0, jnp.asarray(y), eps=0.3, step_size=0.01, steps=40)
    clean_ce = _np_ce(apply_fn(x0), y)
    adv_ce = _np_ce(apply_fn(adv), y)
    assert np.all(adv_ce > clean_ce)
    assert adv_ce.mean() > clean_ce.mean() + 0.1


def test_reference_mode_matches_numpy_loop():
    apply_fn, w, b = _linear(seed=5)
    x, y = _data(seed=6)
    eps, step, steps = 0.3, 0.1, 5
    z0 = (x - MEAN) / STD
    z = z0.copy()
    for _ in range(steps):  # the authors' loop: step -> project -> clamp(0, 1), normalised
        z = z + step * np.sign(_np_grad(z, y, w, b))
        z = z0 + np.clip(z - z0, -eps, eps)
        z = np.clip(z, 0.0, 1.0)
    attack = jax.jit(functools.partial(pgd, apply_fn, eps=eps, step_size=step, steps=steps,
                                       space="reference", mean=MEAN, std=STD))
    out = attack(jnp.asarray(x, jnp.float32), jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(out), z, atol=1e-5)
    # The reference clamp leaves pixels in [mean, mean + std], not the ε-ball around x.
    pix = np.asarray(denormalize(out, MEAN, STD))
    np.testing.assert_allclose(pix, z * STD + MEAN, atol=1e-5)
    assert np.all(pix >= MEAN - 1e-6) and np.all(pix <= MEAN + STD + 1e-6)


@pytest.mark.parametrize("space", ["pixel", "reference"])
def test_fgsm_equals_one_step_pgd(space):
    apply_fn = _mlp(seed=7)
    x, y = _data(seed=8)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    kw = dict(space=space, mean=MEAN, std=STD)
    a = fgsm(apply_fn, x, y, eps=0.05, **kw)
    b = pgd(apply_fn, x, y, eps=0.05, step_size=0.05, steps=1, **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(
        np.asarray(fgsm(apply_fn, x, y, eps=0.0)), np.asarray(x))


def test_jit_and_scan():
    apply_fn = _mlp(seed=9)
    xs, ys = _data(seed=10, n=3 * N)
    xs = jnp.asarray(xs, jnp.float32).reshape(3, N, H, W, C)
    ys = jnp.asarray(ys).reshape(3, N)
    attack = functools.partial(pgd, apply_fn, eps=0.1, step_size=0.02, steps=5,
                               random_start=True)
    key = jax.random.PRNGKey(2)
    jitted = jax.jit(attack)
    per_batch = np.stack([np.asarray(jitted(xs[i], ys[i], key=key)) for i in range(3)])
    assert np.abs(per_batch - np.asarray(xs)).max() <= 0.1 + 1e-6

    def body(carry, batch):
        x, y = batch
        return carry, attack(x, y, key=key)

    _, scanned = jax.jit(lambda xs, ys: jax.lax.scan(body, 0, (xs, ys)))(xs, ys)
    np.testing.assert_allclose(np.asarray(scanned), per_batch, atol=1e-6)


@pytest.mark.parametrize("kwargs, name", [
    (dict(eps=-0.1), "eps"),
    (dict(step_size=0.0), "step_size"),
    (dict(step_size=-1.0), "step_size"),
    (dict(steps=0), "steps"),
    (dict(steps=2.0), "steps"),
    (dict(random_start=True), "key"),
    (dict(space="normalized"), "space"),
    (dict(space="reference"), "mean"),
    (dict(space="reference", mean=MEAN), "std"),
    (dict(space="reference", mean=MEAN[:2], std=STD[:2]), "mean"),
])
def test_bad_arguments(kwargs, name):
    apply_fn = _mlp()
    x, y = _data()
    args = dict(eps=0.1, step_size=0.01, steps=2) | kwargs
    with pytest.raises(ValueError, match=name):
        pgd(apply_fn, jnp.asarray(x, jnp.float32), jnp.asarray(y), **args)


def test_fgsm_bad_arguments():
    apply_fn = _mlp()
    x, y = _data()
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    with pytest.raises(ValueError, match="eps"):
        fgsm(apply_fn, x, y, eps=-1.0)
    with pytest.raises(ValueError, match="space"):
        fgsm(apply_fn, x, y, eps=0.1, space="foo")
    with pytest.raises(ValueError, match="mean"):
        fgsm(apply_fn, x, y, eps=0.1, space="reference")
