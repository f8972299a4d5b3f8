"""InI, isolation and induction (Guo et al., MM 2023): the `ini` step's losses and gradient surgery.

docs/method.md §11.1. The victim V trains against a surrogate clone C of the same architecture,
randomly initialised, never trained and always in inference mode (BatchNorm at its initial
statistics); θ_C are the clone's parameters. A step sees an in-distribution batch (x, y) (with its
padding mask) and an out-of-distribution batch x_o. With v = V(x), v_o = V(x_o) (training mode)
and c = C(x), c_o = C(x_o):

- L_ben = mean CE(v, y) (eq. 6);
- L_iso = cos(g̃, g) (eq. 5), g̃ = ∇_θC mean KL(σ(c) ‖ σ(v)) (code, default) or
  ∇_θC mean −Σ_k σ(v)_k log σ(c)_k (paper, eqs. 4-5, option);
- L_ig = mean_{n,k} abs(c_o − t), t = log σ(v_o) − mean_k log σ(v_o) (code) or
  mean KL(σ(v_o) ‖ σ(c_o)) (paper, eq. 7);
- L_gm = mean_j abs(∂_θCj mean KL(σ(c_o) ‖ σ(v_o))) (code) or ‖∇_θC mean KL(σ(v_o) ‖ σ(c_o))‖₂
  (paper, eq. 8's second term),

with g = ∇_θC mean CE(c, y) a constant. L_iso and L_gm are second order: gradients with respect to
θ_C, themselves differentiated with respect to V's logits (and so θ_V). The clone's logits are
constants in L_ig. The update is PCGrad (eq. 10) over the gradients of the four weighted losses
(`pcgrad`), or their sum clipped at global norm 10 (`clipped_sum`).

Every loss here is a function of the victim's *logits*; the step (`victim_gradient`) runs V once
on x and once on x_o and pulls each loss's logit gradient back through that one forward. This
follows the reference code, whose training-mode `victim_model(id_data)` feeds both L_ben and
L_iso and whose `victim_model(ood_data)` feeds both L_ig and L_gm: two training-mode forwards,
each batch normalised with its own statistics, the running statistics updated first with x
(padding masked out) and then with x_o.

Data parallelism: the means inside the losses are global-batch means. A loss takes this
device's `share` of the valid examples (`steps._share_of_valid_examples`) and `axis_name`;
every batch mean, and every clone gradient of one (g, g̃ and the L_gm gradient), is
`pmean(share · local mean)`, so each loss is the single-device loss of the whole batch, the same
value on every device. Each device differentiates that replicated value through its own shard
(under `shard_map` with `check_vma=False` the transpose of a `pmean` is a `pmean`, as for the
BatchNorm sums of the other steps), and the per-task victim gradients are `pmean`ed before the
projection: the update equals the single-device update of the whole batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from ast_jax import losses

FORMS = ("code", "paper")
#: The four losses, in the order of `InISettings.weights` and of the step's task list.
TASKS = ("ben", "iso", "ig", "gm")

CloneApply = Callable[[object, jax.Array], jax.Array]  # (clone params, images) -> inference-mode logits


@dataclasses.dataclass(frozen=True)
class InISettings:
    """Static settings of the `ini` step and its objective (hashable; `StepSpec("ini", objective=...)`).

    L = L_ben + δ·L_iso + γ·L_ig + ε·L_gm. The defaults δ = 1, γ = 0.3, ε = 1000 are the
    authors' run script's (the paper's γ₁, γ₂ and γ₂β; it prints no values), tuned on the code's
    loss forms, hence `"code"` for each of `isolation`, `induction` and `gradient` (`FORMS`;
    `"paper"` picks the paper's form, see the module docstring). `pcgrad` (the authors' runs use
    it) combines the task gradients by `pcgrad`; without it they are summed and clipped at
    global norm `max_grad_norm` (`clipped_sum`). A task of weight 0 is left out of the
    combination, as the reference code leaves it out of its PCGrad list.
    """

    delta: float = 1.0
    gamma: float = 0.3
    epsilon: float = 1000.0
    isolation: str = "code"
    induction: str = "code"
    gradient: str = "code"
    pcgrad: bool = True
    max_grad_norm: float = 10.0

    def __post_init__(self):
        for name in ("isolation", "induction", "gradient"):
            if getattr(self, name) not in FORMS:
                raise ValueError(f"InISettings.{name} must be one of {FORMS}, got {getattr(self, name)!r}")
        for name in ("delta", "gamma", "epsilon"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"InISettings.{name} (a loss weight) must be finite and >= 0, got {value}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"InISettings.max_grad_norm must be > 0, got {self.max_grad_norm}")

    @property
    def weights(self) -> tuple[float, float, float, float]:
        """(1, δ, γ, ε): the weights of (L_ben, L_iso, L_ig, L_gm)."""
        return (1.0, self.delta, self.gamma, self.epsilon)

    @property
    def kind(self) -> str:
        """The engine's step kind of this objective (`ast_jax.engine.StepSpec.objective`)."""
        return "ini"

    def gradients(self, model, teacher, state, batch: dict, mask, share, teacher_variables, key,
                  axis_name: str | None):
        """The `ini` step's gradient (`ast_jax.engine.steps.Objective`): `victim_gradient` of the
        trained `model` against the frozen clone `teacher.module` with its initial variables
        `teacher_variables`."""
        if teacher is None or teacher_variables is None:
            raise ValueError("the ini step needs the frozen clone: teacher=Teacher(module=clone) and the clone's "
                             "initial variables as teacher_variables")
        return victim_gradient(model, teacher.module, state.params, state.batch_stats, teacher_variables, batch,
                               mask, share, key, self, axis_name)


def _global_mean(local_mean, share, axis_name: str | None):
    """The global batch's mean from this device's mean over its valid examples (a pytree):
    `pmean(share · local_mean)` over `axis_name`; `local_mean` itself on one device (share 1)."""
    weighted = jax.tree.map(lambda leaf: share * leaf, local_mean)
    return weighted if axis_name is None else jax.lax.pmean(weighted, axis_name)


def clone_gradient(clone_apply: CloneApply, clone_params, images, per_example_loss, where=None, *, share=1.0,
                   axis_name: str | None = None):
    """∇_θC (1/n) Σ_valid per_example_loss(C(images))_n: the clone's parameter gradient of a batch
    mean over the global batch's valid examples (`where`, all if None). It stays differentiable in
    whatever `per_example_loss` closes over (the victim's logits)."""
    def batch_loss(params):
        return losses.batch_mean(per_example_loss(clone_apply(params, images)), where)

    return _global_mean(jax.grad(batch_loss)(clone_params), share, axis_name)


def _tree_vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def tree_cosine(a, b, eps: float = 1e-8) -> jax.Array:
    """cos(a, b) = a·b / (max(‖a‖, eps) · max(‖b‖, eps)) over all leaves of two pytrees, as
    PyTorch's `cosine_similarity` of the flattened vectors."""
    norm_a, norm_b = jnp.sqrt(_tree_vdot(a, a)), jnp.sqrt(_tree_vdot(b, b))
    return _tree_vdot(a, b) / (jnp.maximum(norm_a, eps) * jnp.maximum(norm_b, eps))


def benign_loss(victim_logits, labels, where=None, *, share=1.0, axis_name: str | None = None) -> jax.Array:
    """L_ben = mean CE(V(x), y) over the valid examples (eq. 6)."""
    return _global_mean(losses.batch_mean(losses.cross_entropy(victim_logits, labels), where), share, axis_name)


def isolation_loss(victim_logits, clone_apply: CloneApply, clone_params, images, labels, where=None, *,
                   form: str = "code", share=1.0, axis_name: str | None = None) -> jax.Array:
    """L_iso = cos(g̃, g) (eq. 5): how well the thief's gradient on x points where the labels' does.

    g = ∇_θC mean CE(C(x), y) (gradients stopped: it does not depend on V); g̃ = ∇_θC mean D, with
    D = KL(σ(C(x)) ‖ σ(V(x))) (`form="code"`, the authors' code) or the soft cross-entropy
    −Σ_k σ(V(x))_k log σ(C(x))_k (`form="paper"`, eq. 4 with ỹ = σ(V(x))). Second order:
    differentiable with respect to `victim_logits`.
    """
    def thief_loss(clone_logits):
        if form == "code":
            return losses.kl_from_logits(clone_logits, victim_logits)
        return losses.soft_cross_entropy(victim_logits, clone_logits)

    mean_kwargs = dict(share=share, axis_name=axis_name)
    label_gradient = jax.lax.stop_gradient(clone_gradient(
        clone_apply, clone_params, images, lambda c: losses.cross_entropy(c, labels), where, **mean_kwargs))
    thief_gradient = clone_gradient(clone_apply, clone_params, images, thief_loss, where, **mean_kwargs)
    return tree_cosine(thief_gradient, label_gradient)


def induction_loss(ood_victim_logits, clone_apply: CloneApply, clone_params, ood_images, *, form: str = "code",
                   axis_name: str | None = None) -> jax.Array:
    """L_ig, the thief's information gain on the OOD batch, with the clone's logits c_o constant.

    `form="code"`: mean_{n,k} abs(c_o − t), t = log σ(V(x_o)) − mean_k log σ(V(x_o)) (the
    reference's `l1` loss: the victim's logits recovered up to a constant, as DFME's, §10.3);
    `form="paper"`: mean KL(σ(V(x_o)) ‖ σ(c_o)) (eq. 7). The OOD batch has no padding.
    """
    clone_logits = jax.lax.stop_gradient(clone_apply(clone_params, ood_images))
    if form == "code":
        log_probs = jax.nn.log_softmax(ood_victim_logits, -1)
        recovered = log_probs - jnp.mean(log_probs, axis=-1, keepdims=True)
        per_example = jnp.mean(jnp.abs(clone_logits - recovered), axis=-1)
    else:
        per_example = losses.kl_from_logits(ood_victim_logits, clone_logits)
    return _global_mean(jnp.mean(per_example), 1.0, axis_name)


def gradient_magnitude_loss(ood_victim_logits, clone_apply: CloneApply, clone_params, ood_images, *,
                            form: str = "code", axis_name: str | None = None) -> jax.Array:
    """L_gm, the size of the thief's first step on the OOD batch (eq. 8's second term). Second order.

    `form="code"`: (1/P) Σ_j abs(∂_θCj mean KL(σ(C(x_o)) ‖ σ(V(x_o)))) over all P clone parameters;
    `form="paper"`: ‖∇_θC mean KL(σ(V(x_o)) ‖ σ(C(x_o)))‖₂, the gradient of the paper's L_ig.
    """
    def thief_loss(clone_logits):
        if form == "code":
            return losses.kl_from_logits(clone_logits, ood_victim_logits)
        return losses.kl_from_logits(ood_victim_logits, clone_logits)

    gradient = clone_gradient(clone_apply, clone_params, ood_images, thief_loss, axis_name=axis_name)
    if form == "code":
        leaves = jax.tree.leaves(gradient)
        return sum(jnp.sum(jnp.abs(leaf)) for leaf in leaves) / sum(leaf.size for leaf in leaves)
    return jnp.sqrt(_tree_vdot(gradient, gradient))


def pcgrad_orders(key: jax.Array, num_tasks: int) -> jax.Array:
    """(T, T) int32: row i is the random order in which task i visits the others in `pcgrad`,
    `permutation(fold_in(key, i), T)` (one fresh order per task, as PCGrad's Algorithm 1 and the
    reference code's `random.shuffle` inside its loop over tasks)."""
    return jnp.stack([jax.random.permutation(jax.random.fold_in(key, i), num_tasks) for i in range(num_tasks)])


def _project_conflicts(task_grads: jax.Array, i: int, order: jax.Array) -> jax.Array:
    """Task i's gradient after PCGrad's projections: for j in `order`, j ≠ i, if g_i·g_j < 0,
    g_i ← g_i − (g_i·g_j / ‖g_j‖²) g_j, with g_i the running projection and g_j the original."""
    projected = task_grads[i]
    for position in range(task_grads.shape[0]):
        j = order[position]
        other = task_grads[j]
        dot, norm2 = jnp.vdot(projected, other), jnp.vdot(other, other)
        conflict = (j != i) & (dot < 0)
        projected = jnp.where(conflict, projected - dot / jnp.where(norm2 > 0, norm2, 1.0) * other, projected)
    return projected


def pcgrad(grads: list, key: jax.Array):
    """PCGrad (Yu et al. 2020; InI eq. 10): the mean of the task gradients, each projected off the
    others it conflicts with.

    For each task i (a pytree g_i) and each j ≠ i in the random order `pcgrad_orders(key, T)[i]`:
    if g_i·g_j < 0, g_i ← g_i − (g_i·g_j / ‖g_j‖²) g_j, always against the *original* g_j; the
    result is (1/T) Σ_i g_i. Eq. 10 divides by ‖g_i‖², a typo (PCGrad and both codes use ‖g_j‖²).
    The reference code also visits j = i, which changes g_i only once earlier projections have
    turned it against its own original; PCGrad's algorithm skips j = i, and so does this.
    """
    flat = [ravel_pytree(g)[0] for g in grads]
    unravel = ravel_pytree(grads[0])[1]
    task_grads = jnp.stack(flat)
    orders = pcgrad_orders(key, len(grads))
    projected = [_project_conflicts(task_grads, i, orders[i]) for i in range(len(grads))]
    return unravel(jnp.mean(jnp.stack(projected), axis=0))


def clipped_sum(grads: list, max_norm: float):
    """Σ_i g_i rescaled to global norm `max_norm` when it is longer (`optax.clip_by_global_norm`):
    the update without PCGrad."""
    total = jax.tree.map(lambda *leaves: sum(leaves), *grads)
    return optax.clip_by_global_norm(max_norm).update(total, optax.EmptyState())[0]


def victim_gradient(victim: nn.Module, clone: nn.Module, params, batch_stats, clone_variables, batch: dict, mask,
                    share, key, settings: InISettings, axis_name: str | None = None):
    """The `ini` step's update direction for the victim's `params`, its new BatchNorm statistics
    and the batch's metrics.

    `batch` = {'image', 'label', 'ood_image'} (model-input space), `mask` the ID padding, `share`
    this device's share of the valid ID examples, `key` the step's PRNG key (PCGrad's orders).
    V runs in training mode on x (masked) and then x_o, each loss's logit gradient is pulled back
    through that forward, weighted, `pmean`ed over `axis_name`, and the task gradients are
    combined by `pcgrad` (or `clipped_sum`). The clone runs in inference mode with
    `clone_variables` (its parameters and initial statistics), never updated.

    Metrics: 'loss' = L_ben + δ L_iso + γ L_ig + ε L_gm, 'accuracy' of V on the valid ID examples
    (training-mode logits), and each unweighted loss as 'loss_ben', 'loss_iso', 'loss_ig', 'loss_gm'.
    """
    if "ood_image" not in batch:
        raise ValueError("the ini step needs an OOD batch: batch['ood_image'] (data['ood_images'] for an epoch)")
    if settings.pcgrad and key is None:
        raise ValueError("the ini step with PCGrad needs the step's PRNG key (train_step(..., key=...))")

    def forward(p):
        logits, updates = victim.apply({"params": p, "batch_stats": batch_stats}, batch["image"], train=True,
                                       mask=mask, mutable=["batch_stats"])
        ood_logits, updates = victim.apply({"params": p, "batch_stats": updates["batch_stats"]}, batch["ood_image"],
                                           train=True, mutable=["batch_stats"])
        return (logits, ood_logits), updates["batch_stats"]

    def clone_apply(clone_params, images):
        return clone.apply({**clone_variables, "params": clone_params}, images, train=False)

    clone_params = clone_variables["params"]
    x, y, x_o = batch["image"], batch["label"], batch["ood_image"]
    task_losses = (
        lambda v, v_o: benign_loss(v, y, mask, share=share, axis_name=axis_name),
        lambda v, v_o: isolation_loss(v, clone_apply, clone_params, x, y, mask, form=settings.isolation, share=share,
                                      axis_name=axis_name),
        lambda v, v_o: induction_loss(v_o, clone_apply, clone_params, x_o, form=settings.induction,
                                      axis_name=axis_name),
        lambda v, v_o: gradient_magnitude_loss(v_o, clone_apply, clone_params, x_o, form=settings.gradient,
                                               axis_name=axis_name),
    )
    (logits, ood_logits), pullback, new_stats = jax.vjp(forward, params, has_aux=True)
    values, task_grads = [], []
    for weight, task_loss in zip(settings.weights, task_losses, strict=True):
        value, logit_grads = jax.value_and_grad(lambda both: task_loss(*both))((logits, ood_logits))
        values.append(value)
        if weight:
            (grads,) = pullback(logit_grads)
            grads = jax.tree.map(lambda g: weight * g, grads)
            task_grads.append(grads if axis_name is None else jax.lax.pmean(grads, axis_name))
    direction = pcgrad(task_grads, key) if settings.pcgrad else clipped_sum(task_grads, settings.max_grad_norm)
    correct = jnp.argmax(logits, -1) == y
    metrics = {"loss": sum(w * v for w, v in zip(settings.weights, values)),
               "accuracy": _global_mean(losses.batch_mean(correct, mask), share, axis_name),
               **{f"loss_{name}": value for name, value in zip(TASKS, values)}}
    if axis_name is not None:
        new_stats = jax.lax.pmean(new_stats, axis_name)
    return direction, new_stats, metrics
