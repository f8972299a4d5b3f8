"""File I/O at the edges: atomic writes, reads that name the file, the process that writes.

| function        | what                                                                          |
|-----------------|-------------------------------------------------------------------------------|
| `is_writer`     | True on the one process that writes shared files (process 0 of a multi-host run) |
| `atomic_write`  | text or bytes to a path through a temporary file and a rename                 |
| `read_json`     | a JSON file, or a one-line error naming the file                              |
| `save_npy`      | an array as `.npy`, atomically                                                |
| `load_npy`      | an `.npy` file, or a one-line error naming the file                           |

Every file the project writes (run records, metrics, reports, the adversarial set) goes through
`atomic_write`: a reader never sees a half-written file, and a crash or a full disk leaves the
previous file as it was. Files get the ordinary permissions of the process's umask.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import jax
import numpy as np


class UnreadableFileError(ValueError):
    """A file the project wrote (or was given) cannot be read; the message names it and the fix."""


def is_writer() -> bool:
    """Whether this process writes shared files: process 0 of a (multi-host) run."""
    return jax.process_index() == 0


def atomic_write(path: str, data: str | bytes, *, overwrite: bool = True) -> None:
    """Write `data` to `path` via `<path>.tmp.<pid>` in the same directory and a rename.

    The directory is created if needed. On any failure (a full disk included) the temporary file
    is removed and `path` keeps its previous content; an OSError names the file. With
    `overwrite=False` an existing `path` is never replaced (FileExistsError), not even by a
    writer racing this one: the file is linked into place, which fails if the name exists.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except OSError as error:
        if isinstance(error, FileExistsError) or error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, path) from error  # write() errors carry no file name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def append_text(path: str, text: str) -> None:
    """Append `text` to `path` (created, with its directory, if missing) and flush it to the disk.

    For logs that grow by a row at a time; an OSError names the file.
    """
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, path) from error


def _link_new(tmp: str, path: str) -> None:
    """Give `tmp` the name `path` unless `path` exists (FileExistsError naming it)."""
    exists = FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    try:
        os.link(tmp, path)  # atomic, and never replaces an existing file
    except FileExistsError:
        raise exists from None
    except OSError:  # a file system without hard links
        if os.path.lexists(path):
            raise exists from None
        os.replace(tmp, path)


def read_json(path: str):
    """The JSON value in `path`; UnreadableFileError naming the file if it is not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UnreadableFileError(f"{path} is not valid JSON ({error}); restore or delete it") from None


def save_npy(path: str, array: np.ndarray) -> None:
    """`np.save` of `array` to `path`, atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    atomic_write(path, buffer.getvalue())


def load_npy(path: str) -> np.ndarray:
    """The array in the `.npy` file `path` (no pickles); UnreadableFileError naming the file if unreadable."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise UnreadableFileError(f"{path} is not a readable .npy array ({error}); delete it to regenerate it") from None
