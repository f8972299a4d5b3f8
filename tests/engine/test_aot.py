"""engine.aot on the host CPU (no accelerator compiler needed): the abstract programs compile and
the compiler's counts add up."""

import jax
import jax.numpy as jnp
import optax
import pytest

from ast_jax import models
from ast_jax.data import AugmentSpec
from ast_jax.engine import StepSpec, Teacher, aot


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
