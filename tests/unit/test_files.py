"""ast_jax.files: atomic writes keep the old file on failure; reads name the file."""

import os
import stat

import numpy as np
import pytest

from ast_jax import files


def test_atomic_write_replaces_and_uses_ordinary_permissions(tmp_path):
    path = tmp_path / "sub" / "report.md"
    files.atomic_write(str(path), "old")
    files.atomic_write(str(path), b"new")
    assert path.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert os.listdir(path.parent) == ["report.md"]  # no temporary file left


def test_atomic_write_failure_keeps_the_previous_file(tmp_path):
    path = tmp_path / "a.json"
    files.atomic_write(str(path), "{}")
    with pytest.raises(TypeError):
        files.atomic_write(str(path), 3)  # neither str nor bytes: write fails half-way
    assert path.read_text() == "{}"
    assert os.listdir(tmp_path) == ["a.json"]


def test_reads_name_the_file(tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text("{not json")
    with pytest.raises(files.UnreadableFileError, match="run.json"):
        files.read_json(str(bad))
    npy = tmp_path / "set.npy"
    files.save_npy(str(npy), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(files.load_npy(str(npy)), np.arange(6.0).reshape(2, 3))
    npy.write_bytes(npy.read_bytes()[:40])  # truncated
    with pytest.raises(files.UnreadableFileError, match="set.npy"):
        files.load_npy(str(npy))


def test_atomic_write_without_overwrite_never_replaces_a_file(tmp_path):
    path = tmp_path / "teacher.pth"
    files.atomic_write(str(path), b"first", overwrite=False)
    with pytest.raises(FileExistsError, match="teacher.pth already exists"):
        files.atomic_write(str(path), b"second", overwrite=False)
    assert path.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["teacher.pth"]


def test_append_text_creates_and_appends(tmp_path):
    path = tmp_path / "sub" / "metrics.jsonl"
    files.append_text(str(path), "a\n")
    files.append_text(str(path), "b\n")
    assert path.read_text() == "a\nb\n"
