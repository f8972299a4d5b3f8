"""Run directories: orbax checkpoints, metrics, a record of the run's config, a lock.

A training run owns one directory:

    <dir>/run.json          the config of the run (written once; a different config is refused)
    <dir>/checkpoints/<n>/  orbax checkpoint of the training state after n optimizer steps
    <dir>/broken-checkpoints/<n>/  a checkpoint that could not be read, moved aside (never deleted)
    <dir>/metrics.jsonl     one JSON object per epoch
    <dir>/tensorboard/      the same metrics as TensorBoard events, when tensorboardX is installed
    <dir>/.lock             pid and host of the process running in the directory

Checkpoints hold the state only. The best epoch's test accuracy is reported from
`metrics.jsonl` (`RunResult.best_accuracy`); the parameters the pipeline uses are the last
epoch's, so no best-epoch checkpoint is kept. In a multi-host run every process takes part in
orbax's saves and restores, and only process 0 (`files.is_writer`) writes the other files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from typing import Callable

import jax
import orbax.checkpoint as ocp

from ast_jax import files

RUN_RECORD = "run.json"
LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"


class WorkdirConflictError(RuntimeError):
    """The directory holds the results of a run with another configuration."""


class WorkdirLockedError(WorkdirConflictError):
    """Another live process is running in the directory (its pid and host are named)."""


class NoReadableCheckpointError(ValueError):
    """Checkpoints exist but none can be read; the message names the directory and the fix."""


def claim(directory: str, record: dict, record_name: str = RUN_RECORD) -> None:
    """Write `record` to `<directory>/<record_name>`, or check it equals the one already there.

    Refuses (WorkdirConflictError, `check_record`) when the directory belongs to a run with
    another config: nothing of that run is touched. Only process 0 writes.
    """
    path = os.path.join(directory, record_name)
    if os.path.exists(path):
        check_record(files.read_json(path), record, WorkdirConflictError, lambda changed: (
            f"{directory} holds a run with another configuration (differs in: {changed}); "
            f"use another --workdir, or delete that directory to start over"))
        return
    if files.is_writer():
        files.atomic_write(path, json.dumps(record, sort_keys=True, indent=1))


def check_record(recorded, expected: dict, error: type[Exception], refusal: Callable[[str], str]) -> None:
    """Refuse a record found on disk that differs from the `expected` one (what would be written now).

    Raises `error(refusal(changed))`, where `changed` names the keys that differ (dotted paths into
    nested records, sorted, comma-separated): the caller's one line says what was kept and how to
    start fresh. `expected` is compared as JSON holds it (tuples as lists).
    """
    changed = sorted(_diff_keys(recorded, json.loads(json.dumps(expected))))
    if changed:
        raise error(refusal(", ".join(changed)))


def _diff_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


# ---- one process per directory ----
def _holder(path: str) -> dict | None:
    """The {'pid', 'host'} in the lock file `path`, or None if it vanished or is unreadable."""
    try:
        holder = files.read_json(path)
    except (FileNotFoundError, files.UnreadableFileError):
        return None
    return holder if isinstance(holder, dict) else None


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def workdir_lock(directory: str):
    """Hold `<directory>/.lock` (this process's pid and host) while the block runs.

    A lock held by another live process refuses with WorkdirLockedError naming its pid and
    host; a lock left by a dead process of this host is taken over; a lock from another host
    is refused (its process cannot be checked from here). Re-entering a lock this process
    holds is allowed (the outermost block removes it). Only process 0 of a multi-host run
    takes the lock.
    """
    if not files.is_writer():
        yield
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder == me:  # nested: the outer block holds it
                yield
                return
            if holder is not None and (holder.get("host") != me["host"] or _is_alive(int(holder.get("pid", -1)))):
                raise WorkdirLockedError(
                    f"{directory} is in use by process {holder.get('pid')} on {holder.get('host')} ({path}); "
                    f"wait for it to finish, or delete {path} if that process is gone") from None
            with contextlib.suppress(FileNotFoundError):  # stale (dead process) or unreadable: take it over
                os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


# ---- checkpoints ----
def manager(directory: str, keep: int = 2) -> ocp.CheckpointManager:
    """An orbax CheckpointManager for `<directory>/checkpoints`, keeping the last `keep`, saving asynchronously.

    A save returns once the state is copied off the devices; `mngr.wait_until_finished()` (once,
    at the end of a run or before exiting on a signal) waits for the files.
    """
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(directory, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True),
        item_names=("state",))


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
    """Start saving `state` as the checkpoint after `step` optimizer steps (asynchronous)."""
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)


def _restore(mngr: ocp.CheckpointManager, step: int, like):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]


def restore_latest(mngr: ocp.CheckpointManager, like, warn: Callable[[str], None] = print, *,
                   older: tuple[object, Callable] | None = None):
    """The state of the newest readable checkpoint, shaped and sharded like `like`; None if there is none.

    `older` = (like_before, upgrade): a checkpoint that does not read as `like` but as an earlier
    layout `like_before` of the same state is read that way and returned as `upgrade(state)`.
    An unreadable checkpoint is moved to `<dir>/broken-checkpoints/` with a one-line warning
    naming it, and the next older one is tried; if none can be read, NoReadableCheckpointError
    names the directory.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    root = str(mngr.directory)
    for step in steps:
        try:
            state = _restore(mngr, step, like)
        except Exception as error:  # orbax raises many kinds (ValueError, OSError, msgpack and tensorstore errors)
            state = _restore_older(mngr, step, older)
            if state is None:
                path = os.path.join(root, str(step))
                reason = " ".join(str(error).split())[:200]
                warn(f"warning: checkpoint {path} is unreadable ({type(error).__name__}: {reason}); "
                     f"moved to broken-checkpoints/, trying the previous one")
                _set_aside(root, step)
                continue
        mngr.reload()
        return state
    if steps:
        raise NoReadableCheckpointError(
            f"no readable checkpoint in {root} (broken: {', '.join(map(str, steps))}, moved to "
            f"{os.path.join(os.path.dirname(root), 'broken-checkpoints')}); delete {os.path.dirname(root)} "
            f"to start this run over")
    return None


def _restore_older(mngr: ocp.CheckpointManager, step: int, older: tuple[object, Callable] | None):
    """Checkpoint `step` read in the earlier layout of `older` and upgraded, or None."""
    if older is None:
        return None
    like_before, upgrade = older
    try:
        return upgrade(_restore(mngr, step, like_before))
    except Exception:  # not that layout either: the caller reports the first error
        return None


def _set_aside(checkpoint_root: str, step: int) -> None:
    """Move `<root>/<step>` to `<root>/../broken-checkpoints/<step>` (process 0; others wait)."""
    if files.is_writer():
        target = os.path.join(os.path.dirname(checkpoint_root), "broken-checkpoints", str(step))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(os.path.join(checkpoint_root, str(step)), target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")


# ---- metrics ----
def read_metrics(directory: str) -> list[dict]:
    path = os.path.join(directory, METRICS_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except json.JSONDecodeError as error:
        raise files.UnreadableFileError(f"{path} is not valid JSON lines ({error}); restore or delete it") from None


class MetricsWriter:
    """The run's metrics: `metrics.jsonl` (one JSON row per epoch, appended) and TensorBoard scalars,
    written by process 0 only (`files.is_writer`); every process keeps `rows`, the rows so far.

    Created once per run: the rows of epochs after `through_epoch` (the epoch the run resumes
    from; they are redone) are dropped from the file once, atomically. `append(row)` then adds one
    epoch's row as one line (`row['epoch']` is its step in TensorBoard). Use as a context manager
    (closes the TensorBoard writer).
    """

    def __init__(self, directory: str, through_epoch: int = 0):
        self.directory = directory
        self.path = os.path.join(directory, METRICS_FILE)
        read = read_metrics(directory)
        self.rows = [row for row in read if row["epoch"] <= through_epoch]
        if self.rows != read and files.is_writer():
            files.atomic_write(self.path, "".join(_json_line(row) for row in self.rows))
        self._tensorboard = None

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if not files.is_writer():
            return
        files.append_text(self.path, _json_line(row))
        if self._tensorboard is None:
            self._tensorboard = _tensorboard_writer(self.directory)
        if self._tensorboard:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, row["epoch"])
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard:
            self._tensorboard.close()
        self._tensorboard = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _json_line(row: dict) -> str:
    return json.dumps(row, sort_keys=True) + "\n"


def _tensorboard_writer(directory: str):
    """A tensorboardX SummaryWriter for `<directory>/tensorboard`, or False when not installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return False
    return SummaryWriter(os.path.join(directory, "tensorboard"))
