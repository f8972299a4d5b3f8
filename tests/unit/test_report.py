"""ast_jax.results.report: the report files and figures."""

import json
import os

import numpy as np
import pytest
from test_statistics import LABELS, STUDENTS, TEACHERS, C

from ast_jax.results import report, statistics, tables


# ---- writers ----
def test_write_report(tmp_path):
    rows = statistics.result_rows(TEACHERS, STUDENTS)
    rng = np.random.default_rng(0)
    stats = {"base": statistics.output_statistics(rng.normal(size=(10, C)), LABELS, 4.0),
             "stingy": statistics.output_statistics(np.where(np.eye(C)[LABELS % C] > 0, 1.0, -np.inf), LABELS, 4.0)}
    paths = report.write_report(tmp_path / "out", title="CIFAR-10 toy", rows=rows, stats=stats,
                                notes=["seeded", "toy numbers"])
    assert [os.path.basename(p) for p in paths] == ["report.md", "report.json", "report.csv"]
    assert sorted(os.listdir(tmp_path / "out")) == ["report.csv", "report.json", "report.md"]  # no tmp left
    umask = os.umask(0)
    os.umask(umask)
    assert {os.stat(p).st_mode & 0o777 for p in paths} == {0o666 & ~umask}, "ordinary permissions, not 0600"
    md = open(paths[0]).read()
    assert md.startswith("# CIFAR-10 toy") and tables.markdown_table(rows) in md
    assert tables.stats_table(stats) in md and "- toy numbers" in md and "outputs.png" not in md
    text = open(paths[1]).read()
    data = json.loads(text)
    assert data["title"] == "CIFAR-10 toy" and data["rows"] == rows and set(data["stats"]) == {"base", "stingy"}
    assert data["stats"]["base"]["kl_mean"] == stats["base"]["kl_mean"]
    assert list(data) == sorted(data) and "NaN" not in text and "Infinity" not in text
    back = report.read_csv_rows(paths[2])
    assert len(back) == len(rows)
    for got, want in zip(back, rows):
        assert set(got) == set(want)
        for k, v in want.items():
            assert got[k] == v if (v is None or isinstance(v, str)) else got[k] == pytest.approx(v, rel=1e-15)
    # outputs.png is referenced once it exists
    (tmp_path / "out" / "outputs.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    report.write_report(tmp_path / "out", title="t", rows=rows, stats={})
    assert "![Output distributions](outputs.png)" in open(paths[0]).read()


@pytest.mark.parametrize("channels,classes", [(1, 10), (3, 100)])
def test_plot_outputs_png(tmp_path, channels, classes):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(channels)
    n = 3
    images = rng.uniform(0, 1, (n, 16, 16, channels))
    labels = np.array([0, classes // 2, classes - 1])
    logits = rng.normal(0, 2, (n, classes))
    sparse = np.where(logits >= np.sort(logits, 1)[:, [-2]], logits, -np.inf)
    outputs = {"base": statistics.probabilities(logits, 4.0),
               "base (adversarial)": statistics.probabilities(logits[::-1], 4.0),
               "stingy": statistics.probabilities(sparse, 4.0),
               "uniform": np.full((n, classes), 1.0 / classes)}
    names = [f"class{i}" for i in range(classes)] if classes == 10 else None
    path = tmp_path / f"outputs_{channels}_{classes}.png"
    assert report.plot_outputs(path, images, outputs, labels, class_names=names) == os.fspath(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 150 * n and img.shape[1] >= 600
    assert img.std() > 0.01  # not blank
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no tmp left behind
    if os.environ.get("AST_REPORT_PLOT_DIR"):  # keep a copy to look at
        (lambda d: (os.makedirs(d, exist_ok=True), open(os.path.join(d, path.name), "wb").write(data)))(
            os.environ["AST_REPORT_PLOT_DIR"])


def test_plot_outputs_validation(tmp_path):
    with pytest.raises(ValueError):
        report.plot_outputs(tmp_path / "x.png", np.zeros((2, 4, 4, 2)), {}, [0, 1])
    with pytest.raises(ValueError):
        report.plot_outputs(tmp_path / "x.png", np.zeros((2, 4, 4, 3)), {"a": np.ones((3, 10)) / 10}, [0, 1])
    assert not (tmp_path / "x.png").exists()
