"""The black box: what it releases, how it counts queries, what it refuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TinyNet, tiny_split

from ast_jax.defences.blackbox import BlackBox, victim_release
from ast_jax.engine import make_mesh


@pytest.fixture(scope="module")
def victim():
    model = TinyNet(num_classes=4)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    return model, variables


def test_release_is_softmax_of_the_normalised_image_and_counts_every_image(victim):
    model, variables = victim
    box = BlackBox(victim_release(model, variables, (0.5,), (0.25,)), image_shape=(8, 8, 1), num_classes=4,
                   mesh=make_mesh(), batch_size=4)
    images = tiny_split(6).images
    probs = np.asarray(box.probabilities(images))
    x = (images.astype(np.float64) / 255 - 0.5) / 0.25
    logits = np.asarray(model.apply(variables, jnp.asarray(x, jnp.float32), train=False), np.float64)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), atol=1e-6)
    assert box.queries == 6
    np.testing.assert_array_equal(np.asarray(box.labels(images[:5])), probs[:5].argmax(-1))
    assert box.queries == 11  # a re-sent image counts again, padding does not


def test_box_measures_the_l1_of_its_release_on_every_query_it_answers(victim):
    model, variables = victim
    release = victim_release(model, variables, (0.5,), (0.25,), defense=lambda p: jnp.roll(p, 1, axis=-1))
    box = BlackBox(release, image_shape=(8, 8, 1), num_classes=4, mesh=make_mesh(), batch_size=4,
                   clean=victim_release(model, variables, (0.5,), (0.25,)))
    images = tiny_split(7).images
    start = box.ledger()
    assert box.l1_since(start) is None  # no query yet
    released = np.asarray(box.probabilities(images[:4]))
    box.labels(images[3:])  # labels too: the defence acted on these queries as well
    x = (images.astype(np.float64) / 255 - 0.5) / 0.25
    logits = np.asarray(model.apply(variables, jnp.asarray(x, jnp.float32), train=False), np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    per_query = np.abs(np.roll(p, 1, axis=-1) - p).sum(-1)
    np.testing.assert_allclose(released, np.roll(p, 1, axis=-1)[:4], atol=1e-6)  # the ℓ1 column is not released
    assert box.queries == 8 and box.l1_since(start) == pytest.approx(per_query[[0, 1, 2, 3, 3, 4, 5, 6]].mean(), rel=1e-5)
    middle = box.ledger()
    box.probabilities(images[3:])
    assert box.l1_since(middle) == pytest.approx(per_query[3:].mean(), rel=1e-5)


def test_labels_only_box_refuses_probabilities_and_wrong_shapes(victim):
    model, variables = victim
    box = BlackBox(victim_release(model, variables, (0.5,), (0.25,)), image_shape=(8, 8, 1), num_classes=4,
                   mesh=make_mesh(), batch_size=4, labels_only=True)
    with pytest.raises(PermissionError, match="labels only"):
        box.probabilities(np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match=r"takes \(N, 8, 8, 1\)"):
        box.labels(np.zeros((2, 28, 28, 1), np.uint8))
    assert box.queries == 0


def test_randomised_release_gets_a_fresh_key_per_call_reproducible_from_the_seed():
    def noisy(images, key):
        return jax.nn.softmax(jax.random.normal(key, (images.shape[0], 3)))

    def box(seed):
        return BlackBox(noisy, image_shape=(2, 2, 1), num_classes=3, mesh=make_mesh(), batch_size=2, seed=seed)

    images = np.zeros((2, 2, 2, 1), np.float32)
    first, second = box(0), box(0)
    a, b = np.asarray(first.probabilities(images)), np.asarray(first.probabilities(images))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, np.asarray(second.probabilities(images)))
    assert not np.allclose(a, np.asarray(box(1).probabilities(images)))
