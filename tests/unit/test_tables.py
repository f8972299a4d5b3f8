"""ast_jax.results.tables: the one markdown and CSV writer and the result tables."""

import csv
import io

import numpy as np
from test_statistics import STUDENTS, TEACHERS, C

from ast_jax.results import statistics, tables


def test_markdown_table():
    md = tables.markdown_table(statistics.result_rows(TEACHERS, STUDENTS))
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 6 and all(line.count("|") == 9 for line in lines)
    nasty_cnn = next(line for line in lines if "| nasty |" in line and "| cnn |" in line)
    assert "94.00" in nasty_cnn and "83.00" in nasty_cnn and "-5.00" in nasty_cnn
    assert "+11.00" in nasty_cnn and "+1.00" in nasty_cnn and "| 11.00 |" in nasty_cnn
    assert md.count(tables.NO_DEGRADATION) == 4  # base x2, stingy, ast (P < 0)
    assert "96.25" in md and "-1.25" in md


def test_stats_table_handles_missing_values():
    s = statistics.output_statistics(np.zeros((3, C)), np.array([0, 1, 2]), 1.0)
    md = tables.stats_table({"base": s, "a|b": {}})
    assert "a\\|b" in md and "1.6094" in md and "–" in md and "nan" not in md.lower()


def test_markdown_escapes_cells_and_csv_writes_none_empty():
    md = tables.markdown(["a", "b"], [["x|y", "1"], ["two\nlines", "–"]])
    assert md == "| a | b |\n|---|---|\n| x\\|y | 1 |\n| two lines | – |\n"
    text = tables.csv_text(["name", "value", "seeds", "missing"],
                           [{"name": "a,b", "value": 0.1, "seeds": [0, 1]}, {"name": "c", "value": float("nan")}])
    assert list(csv.reader(io.StringIO(text))) == [["name", "value", "seeds", "missing"], ["a,b", "0.1", "0 1", ""],
                                                   ["c", "", "", ""]]
