"""Shared test fixtures: a tiny BatchNorm model and tiny image data (fast to compile on CPU), and the
tiny digits study trained once per session (tests get copies of its work directory)."""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

# Before JAX starts its CPU backend, for the session and every subprocess a test starts:
# - LLVM codegen at -O0 (but see `forced_devices_env`): XLA's backend optimisations roughly
#   double CPU compile time, and change results by float32 rounding only (no fast-math either way);
# - one compilation cache for the session (`cli.enable_compilation_cache`), so that a program
#   several tests build, or a killed run and its resume, is compiled once; removed at exit.
# A test's subprocess that imports this module keeps the settings its parent gave it.
UNOPTIMIZED_FLAG = "--xla_backend_optimization_level=0"
#: This folder: the subprocesses a test starts import `conftest` from it.
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")]))
if "AST_JAX_TESTS_CACHE" not in os.environ:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {UNOPTIMIZED_FLAG}".strip()
    os.environ["AST_JAX_TESTS_CACHE"] = os.environ["AST_JAX_CACHE"] = tempfile.mkdtemp(prefix="ast_jax-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["AST_JAX_CACHE"], ignore_errors=True)

import flax.linen as nn  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ast_jax.cli.commands import enable_compilation_cache  # noqa: E402
from ast_jax.models.layers import BatchNorm  # noqa: E402

enable_compilation_cache()  # the tests' own programs, in this process

# docs/method.md §6: trainable parameters of the PyTorch references for a 3x32x32 input.
PARAM_COUNTS = {
    ("cnn", 10): 357_514,
    ("cnn", 100): 369_124,
    ("preresnet20", 10): 272_282,
    ("preresnet32", 10): 466_714,
    ("resnet18", 10): 11_173_962,
    ("resnet18", 100): 11_220_132,
    ("resnet34", 10): 21_282_122,
    ("resnet50", 10): 23_520_842,
    ("resnet50", 100): 23_705_252,
    ("shufflenetv2", 10): 1_268_646,
    ("shufflenetv2", 100): 1_360_896,
    ("mobilenetv2", 100): 2_369_380,
}


class TinyNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> global mean -> linear: the engine's calling convention
    (the zoo's PyTorch BatchNorm, with the per-example mask of a padded batch)."""

    num_classes: int = 4
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        x = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)))(x)
        x = BatchNorm(use_running_average=not train, axis_name=self.axis_name)(x, mask)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


def tiny_split(num: int, num_classes: int = 4, size: int = 8, channels: int = 1, seed: int = 0):
    """uint8 images whose mean brightness encodes the label (learnable in a few steps)."""
    from ast_jax.data import ArraySplit

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num).astype(np.int32)
    base = (labels[:, None, None, None] * (200 // num_classes)).astype(np.float64)
    images = np.clip(base + rng.normal(0, 20, (num, size, size, channels)), 0, 255).astype(np.uint8)
    return ArraySplit(images=images, labels=labels)


#: The tiny digits study: one epoch per teacher and student, a CNN teacher, PGD of 2 steps.
TINY_STUDY = ["--config.train.epochs=1", "--config.train.milestones=()", "--config.student_train.cnn.epochs=1",
              "--config.students=cnn", "--config.teacher.model=cnn", "--config.pgd.steps=2"]


def _command(argv) -> None:
    """`ast-jax ARGV` in this process, its output kept out of the test's; a failure shows it."""
    import contextlib
    import io

    from ast_jax.cli.commands import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    assert code == 0, out.getvalue()[-3000:]


@pytest.fixture(scope="session")
def _tiny_base_study(tmp_path_factory):
    """The tiny digits study's work directory after `report` on the empty directory, then `train`
    (its base teacher alone); trained once per session, read-only (tests use copies)."""
    workdir = tmp_path_factory.mktemp("tiny-study") / "base"
    _command(["report", "--config", "digits", "--workdir", str(workdir), *TINY_STUDY])
    _command(["train", "--config", "digits", "--workdir", str(workdir), *TINY_STUDY])
    return workdir


@pytest.fixture(scope="session")
def _tiny_whole_study(_tiny_base_study):
    """The tiny digits study's work directory after its whole `pipeline` (every teacher and student,
    the report), run on a copy of the base one; trained once per session, read-only."""
    workdir = shutil.copytree(_tiny_base_study, _tiny_base_study.parent / "whole")
    _command(["pipeline", "--config", "digits", "--workdir", str(workdir), *TINY_STUDY])
    return workdir


@pytest.fixture
def base_trained_study(_tiny_base_study, tmp_path):
    """A copy of the tiny study's work directory with its base teacher alone trained (`TINY_STUDY`)."""
    return shutil.copytree(_tiny_base_study, tmp_path / "base-study")


@pytest.fixture
def trained_study(_tiny_whole_study, tmp_path):
    """A copy of the tiny study's work directory after its whole pipeline (`TINY_STUDY`)."""
    return shutil.copytree(_tiny_whole_study, tmp_path / "study")


def forced_devices_env(devices: int, **variables: str) -> dict:
    """The environment of a subprocess that sees `devices` forced CPU devices (and `variables`).

    XLA's backend optimisations stay on there: the bounds on 1 against N devices were measured
    with them, as users compile (at -O0 two epochs differ by up to 2.7e-6 instead of 6.6e-7).
    """
    flags = os.environ["XLA_FLAGS"].replace(UNOPTIMIZED_FLAG, "")
    return dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
                JAX_PLATFORMS="cpu", **variables)


def four_device_result(script: str):
    """Run the test module `script` as a program on 4 forced CPU devices; its last output line, parsed
    as JSON (the module measures everything at once: one subprocess, one compile per program)."""
    out = subprocess.run([sys.executable, script], env=forced_devices_env(4), capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(script))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_cli(args, **kwargs) -> subprocess.Popen:
    """`python -m ast_jax ARGS` on the CPU, its stdout and stderr as text pipes."""
    return subprocess.Popen([sys.executable, "-m", "ast_jax", *args], env=dict(os.environ, JAX_PLATFORMS="cpu"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def randomize_torch_batchnorm(model, seed: int = 0) -> None:
    """Random affine parameters and running statistics for every BatchNorm of a PyTorch model
    (its fresh ones, 1/0/0/1, would hide a mix-up of scale, bias, mean and variance)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.5, 0.5, generator=generator)
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                m.num_batches_tracked.fill_(7)
