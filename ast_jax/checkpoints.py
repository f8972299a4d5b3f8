"""Run directories: orbax checkpoints with their metrics, and a record of the run's config.

A training run owns one directory:

    <dir>/run.json          the config of the run (written once; a different config is refused)
    <dir>/checkpoints/<n>/  orbax checkpoint after n completed epochs: `state` and `metrics`
    <dir>/metrics.jsonl     one JSON object per epoch
    <dir>/tensorboard/      the same metrics as TensorBoard events, when tensorboardX is installed

Only this module and the command line touch the file system for training.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

RUN_RECORD = "run.json"


class WorkdirConflictError(RuntimeError):
    """The directory holds the results of a run with another configuration."""


def claim(directory: str, record: dict, record_name: str = RUN_RECORD) -> None:
    """Write `record` to `<directory>/<record_name>`, or check it equals the one already there.

    Refuses (WorkdirConflictError) when the directory belongs to a run with another config:
    nothing of that run is touched.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, record_name)
    text = json.dumps(record, sort_keys=True, indent=1)
    if os.path.exists(path):
        with open(path) as f:
            existing = json.load(f)
        if existing != json.loads(text):
            changed = sorted(_diff_keys(existing, json.loads(text)))
            raise WorkdirConflictError(
                f"{directory} holds a run with another configuration (differs in: {', '.join(changed)}); "
                f"use another --workdir, or delete that directory to start over")
        return
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _diff_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


def manager(directory: str, keep: int = 2) -> ocp.CheckpointManager:
    """An orbax CheckpointManager for `<directory>/checkpoints`, keeping the last `keep`."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(directory, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "metrics"))


def save(mngr: ocp.CheckpointManager, epoch: int, state, metrics: dict) -> None:
    """Save `state` and `metrics` as the checkpoint after `epoch` completed epochs; wait for it."""
    mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             metrics=ocp.args.JsonSave(metrics)), force=True)
    mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, like):
    """(epoch, state, metrics) of the latest checkpoint, shaped and sharded like `like`; None if none."""
    epoch = mngr.latest_step()
    if epoch is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = mngr.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           metrics=ocp.args.JsonRestore()))
    return epoch, restored["state"], restored["metrics"]


def read_metrics(directory: str) -> list[dict]:
    path = os.path.join(directory, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_metrics(directory: str, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl with `rows` (after a resume, rows of epochs being redone are dropped)."""
    path = os.path.join(directory, "metrics.jsonl")
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    os.replace(path + ".tmp", path)


def tensorboard_writer(directory: str):
    """A tensorboardX SummaryWriter for `<directory>/tensorboard`, or None when not installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(directory, "tensorboard"))


def log_scalars(writer, row: dict) -> None:
    """Write the numeric entries of one metrics row at step `row['epoch']` (no-op without writer)."""
    if writer is None:
        return
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)):
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()
