"""benchmarks/: the PyTorch path computes what ast_jax computes, and the --smoke run writes its results.

Equivalence is checked on identical weights (PyTorch twins with random weights and BatchNorm
statistics, converted with ast_jax.interop) and the same batch, float32 on CPU. No timing is
asserted.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not an installed package

from conftest import randomize_torch_batchnorm  # noqa: E402

from ast_jax import adversarial, losses, models
from ast_jax.data import normalize  # noqa: E402
from ast_jax.engine import train_step  # noqa: E402
from ast_jax.interop import from_torch_state_dict, torch_models  # noqa: E402
from benchmarks import jax_path, profile, report, run, torch_path  # noqa: E402
from benchmarks.common import (  # noqa: E402
    MEAN,
    PGD_EPS,
    PGD_STEP_SIZE,
    STD,
    STEP_HYPERS,
    STEP_SPECS,
    Case,
    Weights,
    fixed_batch,
    synthetic_data,
)

NAME, CLASSES, SIZE, BATCH = "preresnet20", 10, 16, 6


def _random_variables(seed: int) -> dict:
    """Flax variables of a PyTorch twin with random weights and random BatchNorm statistics."""
    model = torch_models.create(NAME, CLASSES)
    randomize_torch_batchnorm(model, seed)
    return jax.device_get(from_torch_state_dict(model.state_dict(), NAME, CLASSES))


@pytest.fixture(scope="module")
def twins():
    weights = Weights(_random_variables(0), _random_variables(1))
    modules = torch_path.build(torch_path.VARIANTS["reference"], NAME, CLASSES, SIZE, weights, torch.device("cpu"))
    data = synthetic_data(BATCH, SIZE, CLASSES, seed=3)
    return weights, modules, data, fixed_batch(data, BATCH)


def _torch_batch(batch):
    return {k: torch_path.nchw(v) for k, v in batch.items()}


def _jax_losses(weights, batch):
    """ast_jax.losses of every step kind on the Flax model's logits (train mode on the clean batch)."""
    model = models.create(NAME, CLASSES)
    student = {k: weights.student[k] for k in ("params", "batch_stats")}

    @jax.jit
    def compute(student, teacher, batch):
        logits, _ = model.apply(student, batch["image"], train=True, mutable=["batch_stats"])
        adv_logits = model.apply(student, batch["adv_image"], train=False)
        teacher_logits = model.apply(teacher, batch["image"], train=False)
        y, kd, ast, nasty = batch["label"], STEP_HYPERS["kd"], STEP_HYPERS["ast"], STEP_HYPERS["nasty"]
        return {"ce": jnp.mean(losses.cross_entropy(logits, y)),
                "kd": losses.kd_loss(logits, teacher_logits, y, kd.temperature, kd.omega),
                "ast": losses.ast_loss(logits, adv_logits, y, ast.temperature, ast.omega, ast.k),
                "nasty": losses.nasty_loss(logits, teacher_logits, y, nasty.temperature, nasty.omega)}

    return jax.device_get(compute(student, weights.teacher, batch))


def test_torch_losses_equal_ast_jax_losses(twins):
    weights, modules, _, batch = twins
    expected = _jax_losses(weights, batch)
    for kind, spec in STEP_SPECS.items():
        modules.reset()
        with torch.no_grad():
            got = torch_path.step_loss(spec, STEP_HYPERS[kind], modules, _torch_batch(batch)).item()
        np.testing.assert_allclose(got, expected[kind], rtol=0, atol=1e-4, err_msg=kind)


@pytest.mark.slow
def test_torch_ast_step_updates_like_ast_jax(twins):
    """One SGD update (momentum, coupled weight decay) of the ast step gives the same parameters."""
    weights, modules, _, batch = twins
    modules.reset()
    opt = torch_path.optimizer(modules)
    torch_path.train_step(STEP_SPECS["ast"], STEP_HYPERS["ast"], modules, opt, _torch_batch(batch), "float32")
    got = from_torch_state_dict(modules.student.state_dict(), NAME, CLASSES)["params"]

    model, tx = models.create(NAME, CLASSES), jax_path.optimizer()
    state = jax_path.fresh_state(tx, weights.student)
    step = jax.jit(lambda state, batch: train_step(model, tx, STEP_SPECS["ast"], None, state, batch,
                                                   hypers=STEP_HYPERS["ast"]))
    new_state, _ = step(state, batch)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(new_state.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_one_pgd_step_gives_the_same_adversarial_batch(twins):
    weights, modules, data, _ = twins
    pixels, labels = data.images / np.float32(255.0), data.labels
    model = models.create(NAME, CLASSES)

    def apply_fn(x):
        return model.apply(weights.student, normalize(x, MEAN, STD), train=False)

    def ce_sum(x):
        return jnp.sum(losses.cross_entropy(apply_fn(x), labels))

    attack = jax.jit(lambda x: (adversarial.pgd(apply_fn, x, labels, eps=PGD_EPS, step_size=PGD_STEP_SIZE, steps=1),
                             jax.grad(ce_sum)(x)))
    expected, grad = jax.device_get(attack(pixels))
    modules.reset()
    with torch_path.attacking(modules.student):
        got = torch_path.pgd(modules.forward, torch_path.nchw(pixels), torch_path.nchw(labels), eps=PGD_EPS,
                             step_size=PGD_STEP_SIZE, steps=1)
    got = got.permute(0, 2, 3, 1).numpy()
    differ = np.sign(got - pixels) != np.sign(expected - pixels)
    ties = np.abs(grad) <= 1e-4 * np.abs(grad).max()
    assert not np.any(differ & ~ties), "sign patterns differ away from ties"
    np.testing.assert_allclose(got[~differ], expected[~differ], rtol=0, atol=1e-6)


def test_tuned_path_falls_back_to_eager_when_compile_fails(twins, monkeypatch):
    weights, _, data, batch = twins

    def broken_compile(module, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    modules = torch_path.build(torch_path.VARIANTS["tuned"], NAME, CLASSES, SIZE, weights, torch.device("cpu"))
    case = Case(NAME, "kd", BATCH, "float32", SIZE, CLASSES)
    result = torch_path.measure(torch_path.measure_step, modules, case, batch, iters=1, warmup=0)
    assert not result["compiled"] and "torch.compile failed (RuntimeError: no C++ compiler)" in result["note"]
    assert result["median_s"] > 0


@pytest.mark.slow
def test_smoke_run_writes_results(tmp_path):
    command = [sys.executable, "-m", "benchmarks.run", "--smoke", "--device-name", "smoke", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    out = tmp_path / "smoke"
    results = json.loads((out / "results.json").read_text())

    assert results["environment"]["command"].startswith("python -m benchmarks.run --smoke")
    expected = {(m, s, 8, "float32") for m in run.SMOKE["models"].split(",") for s in STEP_SPECS}
    if results["environment"]["jax_backend"] != "cpu":
        expected |= {(m, s, b, "bfloat16") for m, s, b, _ in expected}
    assert {(r["model"], r["step"], r["batch_size"], r["precision"]) for r in results["steps"]} == expected
    for record in results["steps"]:
        assert record["gflop_per_step"] > 0
        for path in report.PATHS:
            result = record[path]
            assert all(np.isfinite(t) and t > 0 for t in result["times_s"]), (record["step"], path)
            assert np.isfinite(result["median_s"]) and result["median_s"] > 0
            assert np.isfinite(result["epoch_s"]) and result["epoch_s"] > 0
    assert len(results["pgd"]) == len({(r["model"], r["precision"]) for r in results["steps"]})
    for record in results["pgd"]:
        assert record["images"] == 16 and record["steps"] == 2 and record["gflop"] > 0
        assert all(np.isfinite(record[p]["seconds"]) and record[p]["seconds"] > 0 for p in report.PATHS)

    table = (out / "results.md").read_text()
    assert "| cnn | ast | 8 | float32 |" in table and "## PGD adversarial set" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(SystemExit, match="results.json"):
        run.main(["--smoke", "--device-name", "smoke", "--out", str(tmp_path)])


def test_profile_names_ops_by_layer_and_sums_them_per_primitive():
    hlo = ('  %ynn_fusion.3 = f32[64,2,2,128]{3,2,1,0} fusion(%a, %b), kind=kCustom, '
           'metadata={op_name="jit(<lambda>)/jvp(CNN)/conv3/conv_general_dilated" stack_frame_id=1}\n'
           '  ROOT %dot.1 = f32[576,128]{1,0} dot(%c, %d), '
           'metadata={op_name="jit(<lambda>)/transpose(jvp(CNN))/conv3/dot_general" stack_frame_id=2}\n'
           '  %transpose_copy_fusion.2 = f32[16,8,8,64]{3,2,1,0} fusion(%e), kind=kLoop\n')
    names = profile._layer_names(hlo)
    assert names == {"ynn_fusion.3": "jvp(CNN)/conv3/conv_general_dilated",
                     "dot.1": "transpose(jvp(CNN))/conv3/dot_general"}
    rows = [("ynn_fusion.3", names["ynn_fusion.3"], 2.0), ("dot.1", names["dot.1"], 1.0),
            ("ynn_fusion.4", "jvp(CNN)/conv2/conv_general_dilated", 0.5),
            ("transpose_copy_fusion.2", "(fusion)", 0.25), ("transpose_copy_fusion.7", "(fusion)", 0.5)]
    assert profile.by_primitive(rows) == [("conv_general_dilated forward", "", 2.5), ("dot_general backward", "", 1.0),
                                          ("transpose_copy_fusion (no JAX op)", "", 0.75)]


@pytest.mark.slow
def test_profile_smoke_writes_both_tables_and_never_replaces_them(tmp_path):
    out = tmp_path / "profile.md"
    args = ["--model", "cnn", "--what", "pgd", "--batch-size", "4", "--iters", "1", "--top", "3", "--out", str(out)]
    profile.main(args)
    text = out.read_text()
    assert "### JAX (XLA ops)" in text and "### PyTorch reference" in text and "conv" in text
    with pytest.raises(SystemExit, match="exists"):
        profile.main(args)
    assert out.read_text() == text
