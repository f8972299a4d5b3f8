"""The benchmark regression check (benchmarks/compare.py) on two small results files written here."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ is a folder of the repository
from benchmarks import compare  # noqa: E402


def results(step_seconds, pgd_seconds, extra_step=None):
    steps = [{"model": "cnn", "step": step, "batch_size": 64, "precision": "float32", "image_size": 8,
              "jax": {"median_s": seconds}, "speedup_vs_torch_reference": 1.0 / seconds}
             for step, seconds in step_seconds.items()]
    if extra_step:
        steps.append(dict(steps[0], step=extra_step))
    pgd = [{"model": "cnn", "precision": "float32", "batch_size": 64, "images": 32, "steps": 40,
            "jax": {"seconds": pgd_seconds}, "speedup_vs_torch_reference": 0.8}]
    return {"environment": {}, "steps": steps, "pgd": pgd}


def test_rows_slower_by_more_than_the_threshold_are_flagged(tmp_path, capsys):
    old = results({"ce": 0.010, "kd": 0.020}, 1.0, extra_step="nasty")
    new = results({"ce": 0.0112, "kd": 0.0215}, 0.5)  # ce 12 % slower, kd 7.5 %, PGD twice as fast
    compared, only_old, only_new = compare.compare(old, new)
    by_row = {entry["row"][:3]: entry for entry in compared}
    assert by_row[("step", "cnn", "ce")]["ratio"] == 0.0112 / 0.010 and by_row[("step", "cnn", "ce")]["slower"]
    assert [entry["slower"] for entry in compared] == [True, False, False]
    assert compared[-1]["row"][0] == "pgd" and compared[-1]["ratio"] == 0.5
    assert only_old == [("step", "cnn", "nasty", 64, "float32", 8)] and only_new == []
    paths = []
    for name, data in (("old.json", old), ("new.json", new)):
        paths.append(str(tmp_path / name))
        (tmp_path / name).write_text(json.dumps(data))
    assert compare.main(paths) == 1
    out = capsys.readouterr().out
    assert "**slower > 10%**" in out and "1 of 3 rows slower" in out and "only in OLD: step cnn nasty" in out
    assert compare.main([*paths, "--threshold", "0.2"]) == 0


def test_an_unreadable_file_is_one_line(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    try:
        compare.main([str(tmp_path / "bad.json"), str(tmp_path / "bad.json")])
    except SystemExit as error:
        assert "cannot read" in str(error) and "\n" not in str(error)
    else:
        raise AssertionError("no error")
