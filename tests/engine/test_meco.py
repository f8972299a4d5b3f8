"""MeCo (docs/method.md §11.2): the perturbation h, the SVGD step and the loss against float64 NumPy
formulas, the meco step on 1 and 4 devices, the randomised release, and the refusals."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TinyNet, four_device_result, tiny_split

from ast_jax.defences import meco
from ast_jax.defences.blackbox import BlackBox, victim_release
from ast_jax.engine import StepSpec, make_mesh
from ast_jax.rng import example_keys

DEVICE_TOLERANCE = 1e-5


# --- h -------------------------------------------------------------------------------------------


def _np_conv(x, kernel, dilation=1):
    """Stride-1 convolution of an (H, W, C) image with an HWIO kernel, zero padding dilation*(k-1)/2."""
    k = kernel.shape[0]
    pad = dilation * (k - 1) // 2
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    height, width = x.shape[:2]
    out = np.zeros((height, width, kernel.shape[-1]))
    for a in range(k):
        for b in range(k):
            window = padded[a * dilation:a * dilation + height, b * dilation:b * dilation + width]
            out += window @ kernel[a, b]
    return out


def _np_instance_norm(x):
    return (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + 1e-5)


def _np_h(blocks, eps, image):
    x = image.astype(np.float64)
    for w in blocks:
        w = {name: np.asarray(v, np.float64) for name, v in w.items()}
        y = np.maximum(_np_instance_norm(_np_conv(x, w["reduce"])), 0)
        y = np.maximum(_np_instance_norm(_np_conv(y, w["mix"], dilation=2)), 0)
        x = eps * _np_instance_norm(_np_conv(y, w["expand"]))
    return x


@pytest.fixture(scope="module")
def drawn():
    """h of 6 random 8x8x3 images, and each image's ω and ε (drawn from its example key)."""
    key, images = jax.random.PRNGKey(3), np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype(np.float32)
    h = np.asarray(jax.jit(meco.perturbation)(key, images), np.float64)
    params = [meco.perturbation_parameters(k, 3) for k in example_keys(key, 6)]
    return images, h, params


def test_perturbation_equals_a_float64_numpy_network(drawn):
    images, h, params = drawn
    for image, out, (blocks, eps) in zip(images, h, params):
        np.testing.assert_allclose(out, _np_h(blocks, float(eps), image), atol=2e-5)


def test_perturbation_has_per_channel_mean_zero_and_std_eps(drawn):
    """The last normalisation makes B₂'s channels mean 0, std √(v/(v+1e-5)) ≤ 1: h's std is ε times that."""
    _, h, params = drawn
    eps = np.array([float(e) for _, e in params])
    assert np.all((eps >= 0.3) & (eps <= 0.6)) and np.ptp(eps) > 0.01  # one ε per image, in range
    np.testing.assert_allclose(h.mean((1, 2)), 0.0, atol=1e-6)
    ratio = h.std((1, 2)) / eps[:, None]
    assert np.all(ratio <= 1 + 1e-6) and np.all(ratio > 0.9), ratio


def test_perturbation_std_is_exactly_eps_without_the_norm_epsilon(drawn, monkeypatch):
    images, _, params = drawn
    monkeypatch.setattr(meco, "NORM_EPSILON", 0.0)
    h = np.asarray(meco.perturbation(jax.random.PRNGKey(3), images), np.float64)
    eps = np.array([float(e) for _, e in params])
    np.testing.assert_allclose(h.std((1, 2)), np.broadcast_to(eps[:, None], (6, 3)), rtol=1e-5)


# --- SVGD and the loss, with a linear model ---------------------------------------------------------


def _np_svgd(z, grads, step_size, valid):
    """The authors' SVGD_step on the valid particles (scipy pdist + squareform + np.median)."""
    zv, gv = z[valid], grads[valid]
    n = len(zv)
    dist = np.sqrt(((zv[:, None] - zv[None]) ** 2).sum(-1))
    h = 0.05 * np.median(dist) ** 2 / np.log(n + 1)
    kernel = np.exp(-dist ** 2 / h)
    kernel_term = np.stack([kernel[i] @ (zv[i] - zv) * 2 / h for i in range(n)])
    out = z.copy()
    out[valid] = zv - step_size * (kernel @ gv + kernel_term) / n
    return out


def _np_grad_phi(z, x, w, labels, valid, distance_weight):
    """G_i = ∇_{z_i} −[mean_valid CE(z W, y) − λ mean_valid ‖z − x‖²] for logits z W."""
    logits = z @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grads = -((p - np.eye(w.shape[1])[labels]) @ w.T - 2 * distance_weight * (z - x)) / valid.sum()
    return np.where(valid[:, None], grads, 0.0)


@pytest.fixture(scope="module")
def linear_batch():
    """8 images (4x4x1) in near-duplicate pairs (so K has entries far from 0 and 1), the last one padding."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4, 4, 4, 1))
    images = base[[0, 0, 1, 1, 2, 2, 3, 3]] + 0.05 * rng.normal(size=(8, 4, 4, 1))
    images[-1] = 100.0  # padding: would dominate the median and the kernel if it entered them
    w = rng.normal(size=(16, 3))
    labels = rng.integers(0, 3, 8)
    valid = np.arange(8) < 7
    return images, w, labels, valid


def _linear_forward(w):
    return lambda stats, z: (z.reshape(z.shape[0], -1) @ jnp.asarray(w, jnp.float32), stats)


def test_two_svgd_steps_equal_float64_numpy(linear_batch):
    images, w, labels, valid = linear_batch
    settings = meco.MecoSettings(dro_steps=2, step_size=0.5)
    z, _ = meco.dro_particles(_linear_forward(w), {}, jnp.asarray(images, jnp.float32), jnp.asarray(labels),
                              jnp.asarray(valid), settings)
    flat_x, expected = images.reshape(8, -1), images.reshape(8, -1)
    for _ in range(2):
        grads = _np_grad_phi(expected, flat_x, w, labels, valid, 0.2)
        expected = _np_svgd(expected, grads, 0.5, valid)
    z = np.asarray(z, np.float64).reshape(8, -1)
    assert np.max(np.abs(expected - flat_x)) > 1e-2  # the step moved the particles
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)


def test_meco_loss_forms_equal_float64_numpy(linear_batch):
    images, w, labels, valid = linear_batch
    rng = np.random.default_rng(2)
    worst, h_x, h_z = (images + 0.1 * rng.normal(size=images.shape) for _ in range(3))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731

    def np_logits(a):
        return a.reshape(8, -1) @ w

    def np_ce(logits):
        shifted = logits - logits.max(1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        return -log_p[np.arange(8), labels][valid].mean()

    def softmax(logits):
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    s, gamma = 0.5, 0.3
    perturbed_worst = np_logits(worst + s * h_z)
    expected = {
        "code": np_ce(np_logits(images)) + np_ce(perturbed_worst)
        + gamma * np.abs(perturbed_worst - np_logits(worst))[valid].mean(),
        "paper": np_ce(perturbed_worst)
        + gamma * np.abs(softmax(np_logits(images + s * h_x)) - softmax(np_logits(images)))[valid].sum(1).mean()}
    for form, value in expected.items():
        settings = meco.MecoSettings(scale=s, utility_weight=gamma, form=form)
        loss, (clean, _) = meco.meco_loss(_linear_forward(w), {}, f32(images), f32(worst), f32(h_x), f32(h_z),
                                          jnp.asarray(labels), jnp.asarray(valid), settings)
        np.testing.assert_allclose(float(loss), value, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(clean), np_logits(images), rtol=1e-4, atol=1e-4)


# --- the meco step on 1 and 4 devices ----------------------------------------------------------------


def _compare_device_counts() -> dict:
    """One meco step (both forms) on a 16-image batch with 3 padded examples, on 1 and on 4 devices."""
    import optax

    from ast_jax.engine import init_state, make_train_step, replicate

    assert jax.device_count() == 4, jax.devices()
    model = TinyNet(axis_name="data")
    tx = optax.sgd(0.5, momentum=0.9)
    state0 = jax.tree.map(np.asarray, init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3)))
    split = tiny_split(16, channels=3)
    mask = np.arange(16) < 13
    batch = {"image": (split.images / 255.0 - 0.5) / 0.25, "label": split.labels, "mask": mask}
    garbage = dict(batch, image=np.where(mask[:, None, None, None], batch["image"], 7.0))
    key = jax.random.PRNGKey(5)

    def leaves(tree):
        return [np.asarray(v, np.float64) for v in jax.tree.leaves(tree)]

    def diff(a, b):
        return max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b), strict=True))

    out = {}
    for form in meco.FORMS:
        spec = StepSpec("meco", objective=meco.MecoSettings(form=form))
        results = []
        for devices in (jax.devices()[:1], jax.devices()):
            mesh = make_mesh(devices)
            step = jax.jit(make_train_step(model, tx, spec, mesh))
            results.append([jax.device_get(step(replicate(mesh, state0), b, None, key)) for b in (batch, garbage)])
        (one, one_garbage), (four, _) = results
        out[form] = {"devices": diff(one, four), "padding": diff(one, one_garbage),
                     "moved": diff(one[0].params, state0.params),
                     "stats_moved": diff(one[0].batch_stats, state0.batch_stats)}
    return out


def _compare_worst_case() -> dict:
    """The worst case z after 2 large SVGD steps through a BatchNorm model, on 1 and 4 devices.

    Images i and i + 8 are near duplicates on different devices, so the kernel couples the shards,
    and G_i reaches every image through the batch statistics."""
    from functools import partial

    from jax.sharding import PartitionSpec as P

    variables = TinyNet().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
    split = tiny_split(8, channels=3)
    rng = np.random.default_rng(4)
    images = np.concatenate([split.images, split.images]) / 255.0 + 0.02 * rng.normal(size=(16, 8, 8, 3))
    images, labels = images.astype(np.float32), np.concatenate([split.labels, split.labels])
    mask = np.arange(16) != 5
    settings = meco.MecoSettings(dro_steps=2, step_size=2.0)

    def worst(variables, images, labels, mask, axis_name):
        model = TinyNet(axis_name=axis_name)

        def forward(stats, z):
            logits, updates = model.apply({**variables, "batch_stats": stats}, z, train=True, mask=mask,
                                          mutable=["batch_stats"])
            return logits, updates["batch_stats"]

        return meco.dro_particles(forward, variables["batch_stats"], images, labels, mask, settings, axis_name)

    one = jax.jit(partial(worst, axis_name=None))(variables, images, labels, mask)
    four = jax.jit(jax.shard_map(partial(worst, axis_name="data"), mesh=make_mesh(),
                                 in_specs=(P(), P("data"), P("data"), P("data")), out_specs=(P("data"), P()),
                                 check_vma=False))(variables, images, labels, mask)
    one, four = jax.device_get((one, four))
    return {"moved": float(np.max(np.abs(one[0] - images))),
            "devices": max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)))}


@pytest.fixture(scope="module")
def measured() -> dict:
    steps, worst_case = four_device_result(__file__)
    return {**steps, "worst_case": worst_case}


@pytest.mark.slow
def test_worst_case_on_four_devices_matches_one_device(measured):
    """The SVGD kernel and the gradients G span the whole batch, whichever device holds an image."""
    diff = measured["worst_case"]
    assert diff["moved"] > 1e-2, diff
    assert diff["devices"] < DEVICE_TOLERANCE, diff


@pytest.mark.slow
@pytest.mark.parametrize("form", meco.FORMS)
def test_meco_step_on_four_devices_matches_one_device(measured, form):
    diff = measured[form]
    assert diff["moved"] > 1e-3 and diff["stats_moved"] > 1e-3, diff  # the step trained something
    assert diff["devices"] < DEVICE_TOLERANCE, diff


@pytest.mark.slow
@pytest.mark.parametrize("form", meco.FORMS)
def test_meco_step_ignores_padded_examples(measured, form):
    assert measured[form]["padding"] < 1e-6, measured[form]


# --- the release ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def victim():
    model = TinyNet(num_classes=4)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    return model, variables


def _box(victim, settings, seed=0):
    model, variables = victim
    release = victim_release(model, variables, (0.5,), (0.25,), input_defense=meco.input_defense(settings))
    return BlackBox(release, image_shape=(8, 8, 1), num_classes=4, mesh=make_mesh(), batch_size=8, seed=seed)


def test_meco_release_draws_anew_per_query_and_repeats_per_key(victim):
    image = tiny_split(1).images
    images = np.concatenate([image, image])  # the same image twice in one call
    box, twin = _box(victim, meco.MecoSettings()), _box(victim, meco.MecoSettings())
    first, second = np.asarray(box.probabilities(images)), np.asarray(box.probabilities(images))
    assert np.max(np.abs(first[0] - first[1])) > 1e-4  # two queries of one image in a call
    assert np.max(np.abs(first - second)) > 1e-4  # the same images in the next call
    np.testing.assert_array_equal(np.asarray(twin.probabilities(images)), first)  # same seed, same call
    clean = np.asarray(_box(victim, meco.MecoSettings(scale=0.0)).probabilities(images))
    model, variables = victim
    np.testing.assert_allclose(
        clean, np.asarray(BlackBox(victim_release(model, variables, (0.5,), (0.25,)), image_shape=(8, 8, 1),
                                   num_classes=4, mesh=make_mesh(), batch_size=8).probabilities(images)), atol=1e-6)


def test_utility_measures_the_release_against_the_clean_model(victim):
    model, variables = victim
    split = tiny_split(12)
    clean = victim_release(model, variables, (0.5,), (0.25,))
    perturbed = victim_release(model, variables, (0.5,), (0.25,), input_defense=meco.input_defense())
    key = jax.random.PRNGKey(7)
    result = meco.utility(perturbed, clean, split.images, split.labels, key, batch_size=8)
    pixels = split.images / 255.0
    perturbed, clean = jax.jit(perturbed), jax.jit(clean)  # the references: one compile each
    released = np.concatenate([np.asarray(perturbed(jnp.asarray(pixels[s:s + 8], jnp.float32),
                                                    jax.random.fold_in(key, b))) for b, s in enumerate((0, 8))])
    released = released.astype(np.float64)
    reference = np.asarray(clean(jnp.asarray(pixels, jnp.float32), key), np.float64)
    assert result["l1"] > 1e-3
    np.testing.assert_allclose(result["l1"], np.abs(released - reference).sum(1).mean(), rtol=1e-5)
    assert result["accuracy"] == np.mean(released.argmax(1) == split.labels)
    assert result["clean_accuracy"] == np.mean(reference.argmax(1) == split.labels)


# --- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps_range=(0.6, 0.3)), "eps_range"),
    (dict(eps_range=(0.3,)), "pair"),
    (dict(scale=-0.5), "scale must be a number >= 0"),
    (dict(dro_steps=1.5), "dro_steps"),
    (dict(form="torch"), "form must be one of"),
])
def test_bad_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        meco.MecoSettings(**kwargs)
    assert "\n" not in str(error.value)


def test_meco_step_without_a_key_is_refused():
    import optax

    from ast_jax.engine import init_state, train_step

    model, tx = TinyNet(), optax.sgd(0.1)
    state = init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 1))
    batch = {"image": jnp.zeros((4, 8, 8, 1)), "label": jnp.zeros(4, jnp.int32)}
    with pytest.raises(ValueError, match="key"):
        jax.eval_shape(lambda s, b: train_step(model, tx, StepSpec("meco", objective=meco.MecoSettings()), None, s, b), state, batch)
    with pytest.raises(ValueError, match="MecoSettings"):
        StepSpec("meco", objective={"scale": 0.5})


if __name__ == "__main__":
    print(json.dumps([_compare_device_counts(), _compare_worst_case()]))
