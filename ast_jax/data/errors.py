"""Error raised when a data set's files are not where the loader looks."""

from __future__ import annotations


class DataNotFoundError(FileNotFoundError):
    """A data set's files are missing; the message says how to get or prepare them."""
