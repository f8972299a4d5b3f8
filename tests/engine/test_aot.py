"""engine.aot on the host CPU (no accelerator compiler needed): the abstract programs compile and
the compiler's counts add up."""

import jax
import jax.numpy as jnp
import optax
import pytest

from ast_jax import models
from ast_jax.data import AugmentSpec
from ast_jax.engine import StepSpec, Teacher, TrainSettings, aot, make_optimizer


@pytest.mark.slow
def test_epoch_and_predict_programs_compile_from_abstract_inputs():
    mesh = aot.host_mesh()
    model = models.create("cnn", 10, jnp.float32, axis_name="data")
    params = sum(leaf.size for leaf in jax.tree.leaves(aot.abstract_variables(model, (8, 8, 1), mesh)["params"]))
    common = dict(num_examples=64, image_shape=(8, 8, 1), mean=(0.3,), std=(0.4,))
    ce, kd = (aot.compile_cost(lambda m, spec=spec, teacher=teacher: aot.epoch_program(
        model, optax.sgd(0.1, momentum=0.9), spec, m, batch_size=16, num_classes=10, augment_spec=AugmentSpec(),
        teacher=teacher, **common), mesh) for spec, teacher in ((StepSpec("ce"), None),
                                                               (StepSpec("kd"), Teacher(model))))
    predict = aot.compile_cost(lambda m: aot.predict_program(model, m, batch_size=16, **common), mesh)
    for cost in (ce, kd):
        assert cost.argument_bytes >= 2 * 4 * params + 64 * 64  # parameters, momentum, the uint8 images
        assert cost.alias_bytes >= 2 * 4 * params  # the donated state
        assert cost.flops > 0 and cost.device_bytes > 0
    assert kd.argument_bytes >= ce.argument_bytes + 64 * 10 * 4  # the teacher's fixed logits (no augmentation)
    # One CE step on 16 images: more than the 16 forward passes inference does on as many images.
    assert ce.flops > predict.flops > 0


#: Parameters and BatchNorm statistics of the digits CNN on 8x8x1 images: 3x3 convolutions
#: 1->32->64->128 with biases, fc1 128->128 (three poolings leave 1x1x128), fc2 128->10; a
#: BatchNorm (scale, bias; mean, variance) after each convolution and fc1.
CNN_PARAMETERS = 9 * 32 + 32 + 9 * 32 * 64 + 64 + 9 * 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10 + 2 * (32 + 64 + 128 + 128)
CNN_STATISTICS = 2 * (32 + 64 + 128 + 128)


@pytest.mark.slow
def test_a_batch_of_runs_holds_its_states_per_run_and_each_adversarial_set_once():
    """Arguments of a 2-run epoch, counted on the host CPU (no layout padding): per run the state
    (float32 parameters, SGD momentum, BatchNorm statistics, counters), key and loss values; once
    the uint8 images, int32 labels and each distinct float32 adversarial set."""
    mesh = aot.host_mesh()
    model = models.create("cnn", 10, jnp.float32, axis_name="data")
    tx = make_optimizer(TrainSettings(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, milestones=(1,),
                                      lr_decay=0.1, batch_size=16, eval_batch_size=16, epochs=2, checkpoint_every=1,
                                      eval_every=1), 4)
    n, runs = 64, 2

    def arguments(spec, adv_sets=1):
        return aot.compile_cost(lambda m: aot.epoch_program(
            model, tx, spec, m, num_examples=n, batch_size=16, image_shape=(8, 8, 1), num_classes=10,
            augment_spec=AugmentSpec(), mean=(0.3,), std=(0.4,), runs=runs, adv_sets=adv_sets), mesh).argument_bytes

    state = 4 * (2 * CNN_PARAMETERS + CNN_STATISTICS)
    data = n * 64 + 4 * n  # images, labels
    ce = arguments(StepSpec("ce"))
    # The rest: per run the step counter, the injected lr and the two counts of the optimizer state
    # (4 x 4 bytes) and the key (8); the epoch (4). CE reads no loss value: jit drops tau and omega.
    assert ce == runs * (state + 16 + 8) + data + 4
    one_set, two_sets = arguments(StepSpec("ast"), 1), arguments(StepSpec("ast"), 2)
    adv_set = 4 * n * 64
    assert one_set == ce + adv_set + runs * (4 + 3 * 4)  # the set once; per run its index, tau, omega and k
    assert two_sets == one_set + adv_set
