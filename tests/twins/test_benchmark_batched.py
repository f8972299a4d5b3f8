"""benchmarks/batched.py: the --smoke run writes both throughputs of every R and never replaces its results.

No timing is asserted beyond being positive (2 shared CPU cores); about 20 s.
"""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not an installed package

from benchmarks import batched  # noqa: E402


@pytest.mark.slow
def test_smoke_run_writes_both_throughputs_and_never_replaces_them(tmp_path):
    argv = ["--smoke", "--out", str(tmp_path), "--device-name", "smoke"]
    batched.main(argv)
    out = tmp_path / "smoke"
    results = json.loads((out / "batched.json").read_text())

    env = results["environment"]
    assert env["command"] == "python -m benchmarks.batched " + " ".join(argv)
    assert env["device_kind"] and env["platform"] and env["cpu_count"] >= 1 and env["versions"]["jax"] and env["date"]
    [case] = results["cases"]
    assert (case["case"], case["step"], case["batch_size"], case["epoch_images"], case["epochs"]) == \
        ("digits-cnn", "kd", 16, 32, 1)
    assert [row["runs"] for row in case["rows"]] == [1, 2]
    for row in case["rows"]:
        assert row["sequential_images_per_s"] == pytest.approx(row["runs"] * 32 / row["sequential_s"])
        assert set(row["batched"]) == {"vmap", "unroll"}
        for batched_row in row["batched"].values():
            assert batched_row["images_per_s"] == pytest.approx(row["runs"] * 32 / batched_row["s"])
            assert batched_row["ratio"] == pytest.approx(batched_row["images_per_s"] / row["sequential_images_per_s"])
        assert len({(h["temperature"], h["omega"]) for h in row["hypers"]}) == row["runs"]  # a sweep's runs differ
    hlo = case["hlo_convolutions"]
    convolutions = hlo["unbatched"]["convolutions"]
    assert hlo["unbatched"]["grouped"] == 0 and convolutions > 0
    assert hlo["vmap"]["runs"] == 2 and hlo["vmap"]["convolutions"] == convolutions  # one grouped op per convolution
    assert hlo["vmap"]["grouped"] == convolutions
    assert (hlo["unroll"]["convolutions"], hlo["unroll"]["grouped"]) == (2 * convolutions, 0)  # one copy per run
    assert "| digits-cnn | cnn | kd | 16 | 32 | 2 |" in (out / "batched.md").read_text()

    before = (out / "batched.json").read_bytes()
    with pytest.raises(SystemExit, match=re.escape(str(out / "batched.json"))):
        batched.main(argv)
    assert (out / "batched.json").read_bytes() == before


@pytest.mark.parametrize("argv", [["--cases", "mnist"], ["--runs", "0"], ["--runs", "two"],
                                  ["--cases", "digits-cnn", "--epoch-images", "8"], ["--run-lowerings", "pmap"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        batched.parse_args(["--device-name", "x", *argv])


def test_grouped_convolution_check_times_the_three_ways_and_never_replaces_its_results(tmp_path):
    from benchmarks import grouped_conv

    argv = ["--device-name", "smoke", "--out", str(tmp_path), "--runs", "2", "--layers", "2x4x2x3"]
    results = grouped_conv.main(argv)
    assert [row["layer"] for row in results["rows"]] == ["2x4x4, 2->3"]
    for row in results["rows"]:
        assert min(row["vmap_ms"], row["sequential_ms"], row["im2col_ms"]) > 0
        assert row["vmap_over_sequential"] == pytest.approx(row["vmap_ms"] / row["sequential_ms"])
    saved = json.loads((tmp_path / "smoke" / "grouped_conv.json").read_text())
    assert saved["rows"] == results["rows"] and "vmap / sequential" in (tmp_path / "smoke" / "grouped_conv.md").read_text()
    with pytest.raises(SystemExit, match="grouped_conv.json"):
        grouped_conv.main(argv)


def test_im2col_is_the_convolution():
    import jax
    import numpy as np

    from benchmarks import grouped_conv

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 3))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
    np.testing.assert_allclose(grouped_conv.conv_im2col(x, w), grouped_conv.conv(x, w), rtol=1e-5, atol=1e-5)
