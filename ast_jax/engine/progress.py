"""Progress lines of long work: how much is done, this session's rate and the time left (ETA).

Every progress line of the package is made here: the runs a command trains (`Progress`:
`runs 3/8 done, 5120 images/s, eta 40s`), the images of a PGD set (`image_progress`), the
epochs of a run (`runner`) and the cells of the stealing-attack matrix. `Pace` holds the
arithmetic: the rate is the work done in this session over the seconds since it started, and
the ETA is the work left at that rate (unknown before any work is done).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence


class Pace:
    """The rate of the work done since the start and the time the work left takes at that rate."""

    def __init__(self):
        self.start = self.now()

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    def elapsed(self, now: float | None = None) -> float:
        return (self.now() if now is None else now) - self.start

    def rate(self, done: float, now: float | None = None) -> float:
        """Work per second: `done` (this session's work) over the seconds since the start."""
        return done / max(self.elapsed(now), 1e-9)

    def eta(self, done: float, left: float, now: float | None = None) -> str:
        """How long the work `left` takes at the rate of `done` (`'40s'`), or `'unknown'` while `done` is 0."""
        rate = self.rate(done, now)
        return f"{max(left, 0) / rate:.0f}s" if rate > 0 else "unknown"


class Progress:
    """One line about a command's training runs: runs done of all, images/s and the ETA.

    `runs`: the directories of the runs still to train, `images` the examples they still have to
    train; `trained(images)` after every epoch of a batch, `finished(directories)` after every
    batch (runs that had finished before are not counted); the line is logged at most every
    `every_seconds` and after every batch. The rate counts this session's images; the ETA divides
    the images still to train by it.
    """

    def __init__(self, log: Callable[[str], None], runs: Sequence[str], images: int, every_seconds: float = 30.0):
        self.log, self.pending, self.images, self.every_seconds = log, set(runs), images, every_seconds
        self.runs = len(self.pending)
        self.runs_done = self.images_done = 0
        self.pace = Pace()
        self.last = self.pace.start

    def line(self, now: float | None = None) -> str:
        now = self.pace.now() if now is None else now
        return (f"runs {self.runs_done}/{self.runs} done, {self.pace.rate(self.images_done, now):.0f} images/s, "
                f"eta {self.pace.eta(self.images_done, self.images - self.images_done, now)}")

    def trained(self, images: int) -> None:
        self.images_done += images
        now = self.pace.now()
        if now - self.last >= self.every_seconds:
            self.last = now
            self.log(self.line(now))

    def finished(self, directories: Sequence[str]) -> None:
        self.runs_done += len(self.pending.intersection(directories))
        self.last = self.pace.now()
        self.log(self.line(self.last))


def image_progress(log: Callable[[str], None], every_seconds: float = 30.0) -> Callable[[int, int], None]:
    """`progress(done, total)` that logs images/s and the ETA at most every `every_seconds`, and at the end."""
    pace = Pace()
    last = pace.start

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = pace.now()
        if done < total and now - last < every_seconds:
            return
        last = now
        log(f"{done}/{total} images, {pace.rate(done, now):.1f} images/s, eta {pace.eta(done, total - done, now)}")

    return progress
