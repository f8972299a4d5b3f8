"""`ast-jax plan`: the digits study's programs compiled on the host for TPU slices that are not
attached (libtpu's topologies), their memory and FLOPs read from the compiler."""

import json
import re
import subprocess
import sys

import pytest
from conftest import PARAM_COUNTS, TINY_STUDY, start_cli

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


#: Float32 parameters of the digits CNN on 8x8x1 images: 3x3 convolutions 1->32->64->128 with biases,
#: their BatchNorms, fc1 128->128 (the three poolings leave 1x1x128), its BatchNorm, fc2 128->10.
CNN_PARAMETER_BYTES = 4 * ((9 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 128 + 128) + 2 * (32 + 64 + 128)
                           + (128 * 128 + 128) + 2 * 128 + (128 * 10 + 10))
DIGITS_IMAGE_BYTES = DIGITS_TRAIN * 8 * 8  # uint8 8x8x1
DIGITS_ADV_SET_BYTES = 4 * DIGITS_TRAIN * 8 * 8  # float32, model-input space


@pytest.mark.slow
@needs_libtpu
def test_digits_programs_on_v5e_2x2_as_a_two_run_batch(tmp_path):
    """The CNN study's base, AST and InI teachers, its students, PGD, prediction and the kd attack's
    clone, each training program a batch of 2 runs whose AST teachers share one adversarial set (a
    sweep's two cells at one seed). TPU layouts pad small arrays to whole tiles, so the bytes are
    bounded below here; tests/engine/test_aot.py counts them exactly on the host CPU."""
    code, stdout, stderr, result = plan(tmp_path, "--target", "tpu:v5e:2x2", "--runs", "2", "--adv-sets", "1",
                                        "--config.teacher.model=cnn", "--config.teachers=('base','ast','ini')",
                                        "--config.matrix.attacks=('kd',)", "--config.ini.ood_images=512")
    assert code == 0, stderr[-3000:]
    programs = {p["name"]: p for p in result["programs"]}
    assert set(programs) == {"base teacher (cnn)", "ast teacher (cnn)", "ini teacher (cnn)", "kd students (cnn)",
                             "pgd (cnn)", "predict (cnn)", "clone kd (cnn)"}
    for name, p in programs.items():
        assert 0 < p["device_bytes"] < result["device_memory_bytes"], name
        assert p["flops"] > 0 and p["bytes_accessed"] > 0 and p["units"] > 0, name
        assert p["device_bytes"] == p["argument_bytes"] + p["output_bytes"] + p["temp_bytes"] - p["alias_bytes"]
    base, ast, ini = (programs[f"{kind} teacher (cnn)"] for kind in ("base", "ast", "ini"))
    # The 2 runs' replicated states (parameters and SGD momentum), donated, and the shared images.
    assert base["argument_bytes"] >= 2 * 2 * CNN_PARAMETER_BYTES + DIGITS_IMAGE_BYTES
    assert base["alias_bytes"] >= 2 * 2 * CNN_PARAMETER_BYTES
    # The shared adversarial set, split over the 4 devices: a quarter of its 1437 rows padded to 1440 on each.
    assert base["argument_bytes"] + DIGITS_ADV_SET_BYTES * 360 // DIGITS_TRAIN <= ast["argument_bytes"]
    assert ast["argument_bytes"] < base["argument_bytes"] + DIGITS_ADV_SET_BYTES
    assert ini["argument_bytes"] >= base["argument_bytes"] + 4 * 512 * 64 + 2 * CNN_PARAMETER_BYTES  # OOD set, clones
    students = programs["kd students (cnn)"]  # the runs' states, teachers and fixed teacher logits
    assert students["argument_bytes"] >= 2 * (3 * CNN_PARAMETER_BYTES + DIGITS_TRAIN * 40)
    clone = programs["clone kd (cnn)"]  # one run: its state, the transfer set and its targets
    assert clone["argument_bytes"] >= 2 * CNN_PARAMETER_BYTES + DIGITS_IMAGE_BYTES + DIGITS_TRAIN * 40
    for epoch in (base, ast, ini):
        assert epoch["units"] == 30 * 23  # 30 epochs of ceil(1437 / 64) steps
    # The AST step adds a forward pass of the teacher's own target to the CE step.
    assert ast["flops"] > 1.2 * base["flops"]
    # One CE step of 2 runs, 16 images each per device: between 1 and 10 forward passes' worth of
    # the CNN's multiply-adds per image (2 FLOPs each): convolutions 8·8·9·32 + 4·4·9·32·64 +
    # 2·2·9·64·128 (each pooling halves the side) and the dense layers 128·128 + 128·10.
    macs = 8 * 8 * 9 * 32 + 4 * 4 * 9 * 32 * 64 + 2 * 2 * 9 * 64 * 128 + 128 * 128 + 128 * 10
    assert 2 * 16 * 2 * macs < base["flops"] < 10 * 2 * 16 * 2 * macs
    assert programs["predict (cnn)"]["argument_bytes"] >= CNN_PARAMETER_BYTES + 360 * 64
    assert result["study_lower_bound_seconds"] > 0
    assert "lower bound" in stdout and "not a measurement" in stdout


def dfme_generator_parameters(nz: int, ngf: int, side: int, channels: int) -> int:
    """DFME's generator (docs/method.md §10.3): dense nz -> 2·ngf·(side/4)², then 3x3 convolutions
    2·ngf -> 2·ngf -> ngf -> channels with biases; BatchNorm scale and bias after the dense layer and
    the first two convolutions (the last BatchNorm has none)."""
    dense = nz * 2 * ngf * (side // 4) ** 2 + 2 * ngf * (side // 4) ** 2
    convolutions = 9 * 2 * ngf * 2 * ngf + 2 * ngf + 9 * 2 * ngf * ngf + ngf + 9 * ngf * channels + channels
    return dense + convolutions + 2 * (2 * ngf + 2 * ngf + ngf)  # BatchNorm scales and biases


@pytest.mark.slow
def test_dfme_generator_and_skeptical_clone_are_planned():
    """The digits matrix's dfme and skeptical cells, compiled on the host CPU: the generator's
    update holds G's parameters and Adam moments (donated), the clone's variables, the N·(m+1)
    probes and the box's answers there; the Skeptical Student's epoch holds the self-distilling
    ResNet-18's state (more than the plain trunk's parameters) and the transfer set."""
    import jax.numpy as jnp

    from ast_jax import models
    from ast_jax.cli.config import load_settings
    from ast_jax.engine import aot

    config = load_settings("digits", ["--config.matrix.attacks=('dfme','skeptical')"])
    dfme, skeptical = config.attacks["dfme"], config.attacks["skeptical"]

    def model(architecture, self_distilling=False):
        create = models.create_self_distilling if self_distilling else models.create
        return create(architecture, 10, jnp.float32, axis_name="data")

    programs = plan_module.clone_programs(config, model, DIGITS_TRAIN, (8, 8, 1), 10, {"mean": (0.5,), "std": (0.25,)})
    assert set(programs) == {"clone dfme (cnn)", "generator dfme (cnn)", "clone skeptical (resnet18, self-distilling)"}
    costs = {name: aot.compile_cost(build, aot.host_mesh()) for name, (build, _, _) in programs.items()}
    units = {name: units for name, (_, units, _) in programs.items()}

    iterations = dfme["budget"] // (dfme["batch_size"] * (dfme["directions"] + 1 + dfme["clone_steps"]))
    assert units["generator dfme (cnn)"] == iterations and units["clone dfme (cnn)"] == iterations * dfme["clone_steps"]
    generator = costs["generator dfme (cnn)"]
    g_bytes = 4 * dfme_generator_parameters(dfme["nz"], dfme["ngf"], 8, 1)
    probes = (dfme["directions"] + 1) * dfme["batch_size"]
    assert generator.alias_bytes >= 3 * g_bytes  # parameters and Adam's two moments, donated
    assert generator.argument_bytes >= 3 * g_bytes + CNN_PARAMETER_BYTES + 4 * probes * (8 * 8 + 10)
    assert generator.flops > 0

    clone = costs["clone skeptical (resnet18, self-distilling)"]
    trunk_bytes = 4 * (PARAM_COUNTS[("resnet18", 10)] - 9 * 2 * 64)  # its first convolution sees 1 channel, not 3
    assert clone.alias_bytes > 3 * trunk_bytes  # parameters and Adam's moments of the trunk and its heads, donated
    assert clone.argument_bytes > 3 * trunk_bytes + DIGITS_IMAGE_BYTES + DIGITS_TRAIN * 40
    assert units["clone skeptical (resnet18, self-distilling)"] == skeptical["epochs"] * -(-DIGITS_TRAIN // 64)


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
    code, stdout, stderr, result = plan(tmp_path, "--target", "tpu:v5e:2x4", "--config.teachers=('base',)",
                                        "--config.matrix.attacks=()")
    assert code == 0, stderr[-3000:]
    epoch, student, predict = result["programs"]
    assert [epoch["name"], student["name"], predict["name"]] == ["base teacher (preresnet20)", "kd students (cnn)",
                                                                 "predict (preresnet20)"]
    assert epoch["argument_bytes"] >= 2 * TEACHER_PARAMETER_BYTES and epoch["flops"] > 0


@pytest.mark.slow
@needs_cuda_plugin
@pytest.mark.parametrize(("target", "per_device"), [("gpu:a100:8", 8), ("gpu:h100:16", 4)])
def test_base_teacher_on_gpus(tmp_path, target, per_device):
    """XLA:GPU counts no FLOPs for an absent GPU: they come from the host CPU's compile, per device.
    gpu:h100:16 is two processes' 8 GPUs each: one run's batch of 64 is 4 images per device."""
    code, stdout, stderr, result = plan(tmp_path, "--target", target, "--config.teachers=('base',)",
                                        "--config.matrix.attacks=()")
    assert code == 0, stderr[-3000:]
    epoch = result["programs"][0]
    assert epoch["name"] == "base teacher (preresnet20)" and result["device_memory_bytes"] == 80 * 2 ** 30
    assert epoch["argument_bytes"] >= 2 * TEACHER_PARAMETER_BYTES and epoch["alias_bytes"] >= 2 * TEACHER_PARAMETER_BYTES
    # one CE step on `per_device` images
    assert per_device * 2 * 2.5e6 < epoch["flops"] < 10 * per_device * 2 * 2.5e6


def test_missing_compiler_is_named(monkeypatch):
    monkeypatch.setitem(plan_module.COMPILERS, "cuda", ("no_such_compiler_module", "pip install 'jax[cuda12]'"))
    with pytest.raises(ValueError, match=r"target gpu:h100:8 needs its compiler .*: pip install 'jax\[cuda12\]'"):
        plan_module.resolve_target("gpu:h100:8")


def test_more_adversarial_sets_than_runs_is_refused(tmp_path, capsys, monkeypatch):
    from ast_jax.cli.commands import main

    monkeypatch.setattr(plan_module, "prepare_environment", lambda: None)  # this process keeps its environment
    code = main(["plan", "--config", "digits", "--target", "tpu:v5e:2x2", "--runs", "2", "--adv-sets", "3",
                 "--json", str(tmp_path / "plan.json")])
    assert code == 2 and not (tmp_path / "plan.json").exists()
    assert "--adv-sets 3 exceeds --runs 2" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
def test_plan_only_plans_the_attached_devices_and_writes_nothing(tmp_path, capsys):
    """`pipeline --plan-only` compiles the study's programs for the host CPU and stops: no work directory."""
    from ast_jax.cli.commands import main

    workdir = tmp_path / "study"
    code = main(["pipeline", "--config", "digits", "--workdir", str(workdir), "--plan-only", *TINY_STUDY,
                 "--config.teachers=('base',)", "--config.matrix.attacks=()"])
    out = capsys.readouterr().out
    assert code == 0 and not workdir.exists() and not list(tmp_path.iterdir())
    rows = {line.split()[0] + " " + line.split()[1] for line in out.splitlines()[1:-1]}
    assert rows == {"base teacher", "kd students", "predict (cnn)"}
    assert "attached:cpu" in out.splitlines()[-1]


@pytest.mark.slow
@needs_libtpu
def test_tpu_byte_count_counts_at_least_the_unpadded_bytes():
    """benchmarks/tpu_byte_count.py, on which benchmarks/README.md rests its reading of the TPU bounds."""
    root = __file__.rsplit("/tests/", 1)[0]
    result = subprocess.run([sys.executable, "-m", "benchmarks.tpu_byte_count", "--images", "2", "--side", "16"],
                            capture_output=True, text=True, cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counted, unpadded, gflop = map(float, re.search(r"counts ([\d.]+) MB accessed, unpadded ([\d.]+) MB .* ([\d.]+) GFLOP",
                                                     result.stdout).groups())
    assert unpadded == round((2 * 4 * 2 * 16 * 16 * 64 + 4 * 9 * 64 * 64) / 1e6, 1)
    assert counted >= unpadded  # the input and output are read and written at least once
    assert abs(gflop - 2 * 2 * 16 * 16 * 9 * 64 * 64 / 1e9) < 0.02  # 2 FLOPs per multiply-add
