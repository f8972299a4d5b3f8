"""`ast-jax plan`: the digits study's programs compiled on the host for TPU slices that are not
attached (libtpu's topologies), their memory and FLOPs read from the compiler."""

import json

import pytest
from conftest import PARAM_COUNTS, start_cli

from ast_jax.cli import plan as plan_module
from ast_jax.cli.plan import compiler_installed

needs_libtpu = pytest.mark.skipif(not compiler_installed("tpu"),
                                  reason="needs libtpu to compile for a TPU: pip install -e '.[tpu]'")
needs_cuda_plugin = pytest.mark.skipif(not compiler_installed("cuda"),
                                       reason="needs the CUDA plugin to compile for a GPU: pip install 'jax[cuda12]'")

DIGITS_TRAIN = 1437
#: Float32 parameters of the digits teacher (PreResNet-20; its first convolution sees 1 channel, not 3).
TEACHER_PARAMETER_BYTES = 4 * (PARAM_COUNTS[("preresnet20", 10)] - 3 * 3 * 2 * 16)


def plan(tmp_path, *args):
    """`ast-jax plan --config digits ARGS --json FILE`: (exit status, stdout, stderr, the JSON or None)."""
    path = tmp_path / "plan.json"
    process = start_cli(["plan", "--config", "digits", "--json", str(path), *args])
    stdout, stderr = process.communicate(timeout=900)
    return process.returncode, stdout, stderr, json.loads(path.read_text()) if path.exists() else None


@pytest.mark.slow
@needs_libtpu
def test_digits_study_on_v5e_2x2(tmp_path):
    code, stdout, stderr, result = plan(tmp_path, "--target", "tpu:v5e:2x2")
    assert code == 0, stderr[-3000:]
    programs = {p["name"]: p for p in result["programs"]}
    assert set(programs) == {"base teacher (preresnet20)", "ast teacher (preresnet20)", "nasty teacher (preresnet20)",
                             "stt teacher (preresnet20)", "kd students (cnn)", "pgd (preresnet20)",
                             "predict (preresnet20)"}
    for name, p in programs.items():
        assert 0 < p["device_bytes"] < result["device_memory_bytes"], name
        assert p["flops"] > 0 and p["bytes_accessed"] > 0 and p["units"] > 0, name
        assert p["device_bytes"] == p["argument_bytes"] + p["output_bytes"] + p["temp_bytes"] - p["alias_bytes"]
    for kind in ("base", "ast", "nasty", "stt"):
        epoch = programs[f"{kind} teacher (preresnet20)"]
        # The replicated state (parameters and SGD momentum) and the training images are arguments;
        # the state is donated, so its outputs alias it.
        assert epoch["argument_bytes"] >= 2 * TEACHER_PARAMETER_BYTES + DIGITS_TRAIN * 64
        assert epoch["alias_bytes"] >= 2 * TEACHER_PARAMETER_BYTES
        assert epoch["units"] == 30 * 23  # 30 epochs of ceil(1437 / 64) steps
    # The AST and STT steps add a forward pass of the teacher's own target to the CE step.
    assert programs["ast teacher (preresnet20)"]["flops"] > 1.2 * programs["base teacher (preresnet20)"]["flops"]
    # One CE step, 16 images per device: between 1 and 10 forward passes' worth of the model's
    # multiply-adds per image (2 FLOPs each, about 2.5 M at 8x8: a 32x32 PreResNet-20 does 41 M).
    assert 16 * 2 * 2.5e6 < programs["base teacher (preresnet20)"]["flops"] < 10 * 16 * 2 * 2.5e6
    assert programs["predict (preresnet20)"]["argument_bytes"] >= TEACHER_PARAMETER_BYTES + 360 * 64
    assert result["study_lower_bound_seconds"] > 0
    assert "lower bound" in stdout and "not a measurement" in stdout


@pytest.mark.slow
@needs_libtpu
def test_program_that_does_not_fit_is_refused(tmp_path):
    code, stdout, stderr, result = plan(tmp_path, "--target", "tpu:v5e:2x2", "--config.train.batch_size=4194304")
    assert code == 2 and result is None
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("ast-jax: error: base teacher (preresnet20) does not fit tpu:v5e:2x2's device memory")
    assert "config.train.batch_size" in error and "exceeds available HBM" in error


@pytest.mark.slow
@needs_libtpu
def test_multi_host_slice(tmp_path):
    """v5e:2x4 is two hosts' devices: the programs are compiled for all 8 at once."""
    code, stdout, stderr, result = plan(tmp_path, "--target", "tpu:v5e:2x4", "--config.teachers=('base',)")
    assert code == 0, stderr[-3000:]
    epoch, student, predict = result["programs"]
    assert [epoch["name"], student["name"], predict["name"]] == ["base teacher (preresnet20)", "kd students (cnn)",
                                                                 "predict (preresnet20)"]
    assert epoch["argument_bytes"] >= 2 * TEACHER_PARAMETER_BYTES and epoch["flops"] > 0


@pytest.mark.slow
@needs_cuda_plugin
def test_base_teacher_on_eight_a100s(tmp_path):
    """XLA:GPU counts no FLOPs for an absent GPU: they come from the host CPU's compile, per device."""
    code, stdout, stderr, result = plan(tmp_path, "--target", "gpu:a100:8", "--config.teachers=('base',)")
    assert code == 0, stderr[-3000:]
    epoch = result["programs"][0]
    assert epoch["name"] == "base teacher (preresnet20)" and result["device_memory_bytes"] == 80 * 2 ** 30
    assert epoch["argument_bytes"] >= 2 * TEACHER_PARAMETER_BYTES and epoch["alias_bytes"] >= 2 * TEACHER_PARAMETER_BYTES
    assert 8 * 2 * 2.5e6 < epoch["flops"] < 10 * 8 * 2 * 2.5e6  # one CE step, 8 images per device


def test_missing_compiler_is_named(monkeypatch):
    monkeypatch.setitem(plan_module.COMPILERS, "cuda", ("no_such_compiler_module", "pip install 'jax[cuda12]'"))
    with pytest.raises(ValueError, match=r"target gpu:h100:8 needs its compiler .*: pip install 'jax\[cuda12\]'"):
        plan_module.resolve_target("gpu:h100:8")
