"""The InI step (docs/method.md §11.1): its four losses against a float64 PyTorch twin, PCGrad and
the clipped sum against NumPy, padding, 1 against 4 devices, and bad input."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import four_device_result

from ast_jax.data import AugmentSpec
from ast_jax.defences import ini
from ast_jax.defences.ini import InISettings
from ast_jax.engine import (
    ExecutionPolicy,
    StepSpec,
    Teacher,
    init_state,
    make_mesh,
    make_train_epoch,
    ood_rows,
    train_step,
)

IN, HIDDEN, CLASSES = 4, 5, 3


class MLP(nn.Module):
    """x -> tanh(x W1 + b1) W2 + b2: small enough for a float64 twin written out by hand."""

    @nn.compact
    def __call__(self, x):
        hidden = jnp.tanh(nn.Dense(HIDDEN, name="hidden")(x))
        return nn.Dense(CLASSES, name="out")(hidden)


def _mlp_params(seed):
    return MLP().init(jax.random.PRNGKey(seed), jnp.zeros((1, IN)))["params"]


def _as_torch_order(params):
    return [params["hidden"]["kernel"], params["hidden"]["bias"], params["out"]["kernel"], params["out"]["bias"]]


def _twin_losses(form, victim_params, clone_params, x, y, valid, x_o):
    """The four losses and their victim-parameter gradients in float64 PyTorch, written from the formulas."""
    import torch
    import torch.nn.functional as F

    def leaves(params):  # float64 leaf tensors, in the order W1, b1, W2, b2
        return [torch.tensor(np.asarray(leaf, np.float64), requires_grad=True) for leaf in _as_torch_order(params)]

    def mlp(p, inputs):
        return torch.tanh(inputs @ p[0] + p[1]) @ p[2] + p[3]

    def flat(tensors):
        return torch.cat([t.flatten() for t in tensors])

    def kl(p_logits, q_logits):  # KL(σ(a) ‖ σ(b)) per row
        return (F.softmax(p_logits, -1) * (F.log_softmax(p_logits, -1) - F.log_softmax(q_logits, -1))).sum(-1)

    victim, clone = leaves(victim_params), leaves(clone_params)
    x, x_o = torch.tensor(x, dtype=torch.float64), torch.tensor(x_o, dtype=torch.float64)
    valid = torch.tensor(valid)
    v, c = mlp(victim, x[valid]), mlp(clone, x[valid])
    v_o, c_o = mlp(victim, x_o), mlp(clone, x_o)
    y = torch.tensor(y)[valid]
    thief = kl(c, v).mean() if form == "code" else -(F.softmax(v, -1) * F.log_softmax(c, -1)).sum(-1).mean()
    thief_grad = flat(torch.autograd.grad(thief, clone, create_graph=True))
    label_grad = flat(torch.autograd.grad(F.cross_entropy(c, y), clone, retain_graph=True)).detach()
    iso = thief_grad @ label_grad / (thief_grad.norm() * label_grad.norm())
    if form == "code":
        log_p = F.log_softmax(v_o, -1)
        ig = (c_o.detach() - (log_p - log_p.mean(-1, keepdim=True))).abs().mean()
        gm = flat(torch.autograd.grad(kl(c_o, v_o).mean(), clone, create_graph=True)).abs().mean()
    else:
        ig = kl(v_o, c_o.detach()).mean()
        gm = flat(torch.autograd.grad(kl(v_o, c_o).mean(), clone, create_graph=True)).norm()
    out = {}
    for name, loss in (("iso", iso), ("ig", ig), ("gm", gm)):
        grads = torch.autograd.grad(loss, victim, retain_graph=True)
        out[name] = (loss.item(), [g.numpy() for g in grads])
    return out


def _jax_losses(form, victim_params, clone_params, x, y, valid, x_o):
    def clone_apply(params, images):
        return MLP().apply({"params": params}, images)

    def losses_of(victim):
        v, v_o = MLP().apply({"params": victim}, x), MLP().apply({"params": victim}, x_o)
        return {"iso": ini.isolation_loss(v, clone_apply, clone_params, x, y, valid, form=form),
                "ig": ini.induction_loss(v_o, clone_apply, clone_params, x_o, form=form),
                "gm": ini.gradient_magnitude_loss(v_o, clone_apply, clone_params, x_o, form=form)}

    out = {}
    for name in ("iso", "ig", "gm"):
        value, grads = jax.jit(jax.value_and_grad(lambda p: losses_of(p)[name]))(victim_params)  # one compile
        out[name] = (float(value), [np.asarray(g, np.float64) for g in _as_torch_order(grads)])
    return out


def _assert_close(got, want, rtol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.max(np.abs(got - want)) <= rtol * np.max(np.abs(want)) + 1e-12, (got, want)


@pytest.mark.parametrize("form", ["code", "paper"])
def test_losses_and_victim_gradients_match_float64_torch_twin(form):
    """L_iso, L_ig, L_gm and their gradients in θ_V (through the second-order terms) equal the
    float64 PyTorch formulas (torch.autograd.grad with create_graph); padded rows are left out."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, x_o = rng.normal(size=(6, IN)).astype(np.float32), rng.normal(size=(5, IN)).astype(np.float32)
    y = rng.integers(0, CLASSES, 6)
    valid = np.array([True, True, False, True, True, False])
    x[~valid] *= 50.0  # padding that would change every loss if it counted
    victim, clone = _mlp_params(1), _mlp_params(2)
    got = _jax_losses(form, victim, clone, jnp.asarray(x), jnp.asarray(y), jnp.asarray(valid), jnp.asarray(x_o))
    want = _twin_losses(form, victim, clone, x, y, valid, x_o)
    for name in ("iso", "ig", "gm"):
        _assert_close(got[name][0], want[name][0], 1e-5)
        for g, w in zip(got[name][1], want[name][1], strict=True):
            _assert_close(g, w, 2e-4)
    iso_victim_grad = np.concatenate([g.ravel() for g in want["iso"][1]])
    assert np.linalg.norm(iso_victim_grad) > 1e-3  # the second-order path reaches the victim


def _numpy_pcgrad(task_grads, orders):
    """PCGrad written from its definition: g_i projected in turn against the original g_j, j ≠ i."""
    projected = []
    for i, order in enumerate(orders):
        g = task_grads[i].copy()
        for j in order:
            dot = g @ task_grads[j]
            if j != i and dot < 0:
                g = g - dot / (task_grads[j] @ task_grads[j]) * task_grads[j]
        projected.append(g)
    return np.mean(projected, axis=0)


def _as_tree(vector):
    return {"a": jnp.asarray(vector[:3], jnp.float32), "b": {"c": jnp.asarray(vector[3:], jnp.float32)}}


def _from_tree(tree):
    return np.concatenate([np.asarray(tree["a"]), np.asarray(tree["b"]["c"])]).astype(np.float64)


def test_pcgrad_matches_numpy_on_conflicting_gradients():
    task_grads = np.array([[1.0, 0.0, 0.0, 1.0, 0.0],
                           [-1.0, 1.0, 0.0, 0.0, 0.5],  # conflicts with task 0 (dot -1)
                           [0.0, 0.0, 2.0, 0.0, 0.0],   # orthogonal to tasks 0 and 1: never projected against them
                           [0.5, -2.0, 0.5, -0.2, 1.0]])  # conflicts with task 1
    dots = task_grads @ task_grads.T
    assert dots[0, 1] < 0 and dots[1, 3] < 0 and dots[0, 2] == 0 and dots[0, 3] > 0
    key = jax.random.PRNGKey(7)
    orders = np.asarray(ini.pcgrad_orders(key, 4))
    assert all(sorted(row) == [0, 1, 2, 3] for row in orders)
    got = _from_tree(ini.pcgrad([_as_tree(g) for g in task_grads], key))
    want = _numpy_pcgrad(task_grads, orders)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(want - task_grads.mean(0))) > 0.1  # the projections changed the update


def test_without_pcgrad_the_sum_is_clipped_at_global_norm():
    task_grads = np.array([[3.0, 4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 3.0, 0.0]])
    total = task_grads.sum(0)
    for scale in (10.0, 0.5):  # norm of the sum: about 94 (clipped) and 4.7 (kept)
        got = _from_tree(ini.clipped_sum([_as_tree(scale * g) for g in task_grads], 10.0))
        want = scale * total * min(1.0, 10.0 / np.linalg.norm(scale * total))
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_ood_rows_cycle_through_the_set_across_steps():
    np.testing.assert_array_equal(ood_rows(0, 4, 10), [0, 1, 2, 3])
    np.testing.assert_array_equal(ood_rows(2, 4, 10), [8, 9, 0, 1])
    np.testing.assert_array_equal(ood_rows(3, 4, 3), [0, 1, 2, 0])


def _tiny_setup():
    from conftest import TinyNet

    model, tx = TinyNet(), optax.sgd(0.1, momentum=0.5)
    state = init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3))
    clone_variables = TinyNet().init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 3)))
    return model, tx, state, clone_variables


@pytest.mark.slow
def test_padded_examples_change_nothing():
    """A batch with two padded (garbage) rows gives the update of the batch of its valid rows:
    loss, clone gradients and BatchNorm statistics ignore the padding."""
    from conftest import TinyNet

    model, tx, state, clone_variables = _tiny_setup()
    rng = np.random.default_rng(0)
    images, ood = rng.normal(size=(8, 8, 8, 3)).astype(np.float32), rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 4, 8).astype(np.int32)
    images[6:] *= 30.0
    spec = StepSpec("ini", objective=InISettings())

    def step(batch):
        new, metrics = jax.jit(lambda s, b, v, k: train_step(model, tx, spec, Teacher(TinyNet()), s, b, v, k))(
            state, batch, clone_variables, jax.random.PRNGKey(3))
        return jax.tree.leaves((new.params, new.batch_stats)), metrics

    padded, padded_metrics = step({"image": images, "label": labels, "ood_image": ood,
                                   "mask": np.arange(8) < 6})
    valid, valid_metrics = step({"image": images[:6], "label": labels[:6], "ood_image": ood})
    for a, b in zip(padded, valid, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(padded_metrics["loss"], valid_metrics["loss"], rtol=1e-5)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(padded, jax.tree.leaves(state.params)))
    assert moved > 1e-3


def test_ini_without_clone_or_ood_set_is_a_value_error():
    from conftest import TinyNet

    model, tx, state, clone_variables = _tiny_setup()
    mesh = make_mesh(jax.devices()[:1])
    kwargs = dict(batch_size=4, augment_spec=AugmentSpec(), mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ValueError, match="frozen clone") as no_clone:
        make_train_epoch(model, tx, StepSpec("ini", objective=InISettings()), mesh, **kwargs)
    epoch = make_train_epoch(model, tx, StepSpec("ini", objective=InISettings()), mesh, teacher=Teacher(TinyNet()),
                             policy=ExecutionPolicy.for_backend("cpu"), **kwargs)
    data = {"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(4, np.int32)}
    with pytest.raises(ValueError, match="OOD set") as no_ood:
        epoch(state, data, clone_variables, jax.random.PRNGKey(0), 0)
    batch = {"image": np.zeros((4, 8, 8, 3), np.float32), "label": np.zeros(4, np.int32)}
    with pytest.raises(ValueError, match="OOD batch") as no_ood_batch:
        train_step(model, tx, StepSpec("ini", objective=InISettings()), Teacher(TinyNet()), state, batch, clone_variables, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="frozen clone") as no_clone_step:
        train_step(model, tx, StepSpec("ini", objective=InISettings()), None, state, {**batch, "ood_image": batch["image"]}, None,
                   jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="isolation") as bad_form:
        InISettings(isolation="papr")
    with pytest.raises(ValueError, match="epsilon") as bad_weight:
        InISettings(epsilon=-1.0)
    for error in (no_clone, no_ood, no_ood_batch, no_clone_step, bad_form, bad_weight):
        assert "\n" not in str(error.value)


def _compare_device_counts() -> dict:
    """One `ini` epoch of 2 steps (the second half padding) on 1 and 4 devices, host loop."""
    from conftest import TinyNet, tiny_split

    from ast_jax.engine import replicate

    assert jax.device_count() == 4, jax.devices()
    split = tiny_split(12, channels=3)
    model, tx = TinyNet(axis_name="data"), optax.sgd(0.1, momentum=0.5)
    state0 = jax.tree.map(np.asarray, init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3)))
    clone_variables = jax.tree.map(np.asarray, TinyNet().init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 3))))
    ood = np.random.default_rng(2).normal(size=(10, 8, 8, 3)).astype(np.float32)
    data = {"images": split.images, "labels": split.labels, "ood_images": ood}
    specs = {"default": StepSpec("ini", objective=InISettings()),
             "paper-clipped": StepSpec("ini", objective=InISettings(isolation="paper", induction="paper", gradient="paper",
                                                               pcgrad=False))}
    out = {}
    for name, spec in specs.items():
        runs = []
        for devices in (jax.devices()[:1], jax.devices()):
            mesh = make_mesh(devices)
            epoch = make_train_epoch(model, tx, spec, mesh, batch_size=8, augment_spec=AugmentSpec(flip=True),
                                     mean=(0.5,) * 3, std=(0.25,) * 3, teacher=Teacher(TinyNet()),
                                     policy=ExecutionPolicy.for_backend("cpu"))
            inputs = (replicate(mesh, data), replicate(mesh, clone_variables), jax.random.PRNGKey(3))
            first, _ = epoch(replicate(mesh, state0), *inputs, 1, stop=lambda: True)
            state, metrics = epoch(replicate(mesh, state0), *inputs, 1)
            runs.append([jax.tree.map(np.asarray, (first.params, first.batch_stats)),
                         jax.tree.map(np.asarray, (state.params, state.batch_stats)),
                         jax.tree.map(np.asarray, metrics)])
        one, four = runs
        out[name] = {"step": _max_diff(one[0], four[0]), "epoch": _max_diff(one[1], four[1]),
                     "metrics": _max_diff(one[2], four[2], relative=True), "moved": _max_diff(one[1][0], state0.params)}
    return out


def _max_diff(a, b, relative=False) -> float:
    """max |a - b| over the leaves, or max |a - b| / max(1, |b|) (a loss weighted by ε = 1000)."""
    return max(float(np.max(np.abs(x - y) / (np.maximum(1.0, np.abs(y)) if relative else 1.0)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def measured() -> dict:
    return four_device_result(__file__)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "paper-clipped"])
def test_ini_step_on_four_devices_matches_one_device(measured, name):
    """Per-task gradients averaged over devices before the projection: the update, the BatchNorm
    statistics and the metrics do not depend on the device count (a padded step included)."""
    diff = measured[name]
    assert diff["moved"] > 1e-3, diff
    assert diff["step"] < 1e-5 and diff["epoch"] < 1e-5 and diff["metrics"] < 1e-5, diff


if __name__ == "__main__":
    print(json.dumps(_compare_device_counts()))
