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


def atomic_write(path: str, data: str | bytes) -> None:
    """Write `data` to `path` via `<path>.tmp.<pid>` in the same directory and `os.replace`.

    The directory is created if needed. On any failure (a full disk included) the temporary file
    is removed and `path` keeps its previous content; an OSError always names a file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(error, OSError) and error.filename is None:  # a full disk in write(): name the file
            raise OSError(error.errno, error.strerror, path) from error
        raise


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
