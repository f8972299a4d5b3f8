"""PyTorch ``state_dict`` <-> Flax variables of ``ast_jax.models``, and ``.pt`` checkpoint files.

The names map mechanically (:func:`torch_key_to_flax` and its inverse
:func:`flax_to_torch_key`): module path ``layer1.0.conv1`` <-> ``layer1_0/conv1``; conv
``weight`` (O, I/groups, kh, kw) <-> ``kernel`` (kh, kw, I/groups, O); linear ``weight`` (O, I)
<-> ``kernel`` (I, O); BatchNorm ``weight`` / ``bias`` <-> ``scale`` / ``bias``;
``running_mean`` / ``running_var`` <-> ``batch_stats`` ``mean`` / ``var``;
``num_batches_tracked`` is dropped (written as 0 on the way back; PyTorch only reads it when
``momentum=None``). The CNN flattens in PyTorch's (C, H, W) order in both frameworks, so its
``fc1`` needs no permutation. Floating tensors become float32.

Every conversion is checked against the Flax variable tree of ``ast_jax.models.create(name,
num_classes)`` (shapes from ``jax.eval_shape`` of ``init``, nothing is computed): all missing,
unexpected and mis-shaped entries are reported together in one ``ValueError``.  The input channel
count is taken from the stem conv, and the CNN's input size from its ``fc1`` (2048 inputs <->
32x32).

Checkpoint files are read with ``torch.load(..., weights_only=True)``: only tensors and plain
containers are unpickled, so a file from a stranger cannot run code; anything else is refused.
"""

from __future__ import annotations

import functools
import io as io_bytes
import math
import os
import pickle
from collections import OrderedDict
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util

from ast_jax import models
from ast_jax.files import atomic_write
from ast_jax.interop import torch_models

__all__ = ["from_torch_state_dict", "to_torch_state_dict", "load_torch_checkpoint",
           "save_torch_checkpoint", "extract_state_dict", "flax_to_torch_key", "torch_key_to_flax",
           "STATE_DICT_KEYS"]

#: Keys under which :func:`extract_state_dict` looks for the model weights of a checkpoint dict,
#: in this order (``state_dict``: the Nasty Teacher code's ``{'epoch', 'state_dict',
#: 'optim_dict'}``; ``model_state_dict``: the PyTorch tutorial's; ``net``: kuangliu's).
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "net")

_DATA_PARALLEL_PREFIX = "module."

# Flax path of the stem conv of each family (its kernel fixes the input channel count).
_STEM = {"cnn": "conv1", "preresnet20": "conv1", "preresnet32": "conv1", "resnet18": "conv1",
         "resnet34": "conv1", "resnet50": "conv1", "shufflenetv2": "pre_0", "mobilenetv2": "pre_0"}

Path = tuple[str, ...]
Entry = tuple[str, Path]  # (collection, path)


# --------------------------------------------------------------------------- names and layouts

def torch_key_to_flax(key: str) -> tuple[str, Path | None]:
    """Map a PyTorch ``state_dict`` key onto ``(collection, path)`` of the Flax variables.

    Numeric components (``nn.Sequential`` indices) are glued to the preceding component with
    ``'_'``, the rest become separate path entries; the leaf is renamed (``weight`` ->
    ``kernel`` for conv/linear, ``scale`` for BatchNorm, ``running_mean``/``running_var`` ->
    ``mean``/``var`` in ``batch_stats``).  Which ``weight`` is a BatchNorm one cannot be told from
    the key alone, so ``weight`` maps to ``'kernel'`` and the caller renames it to ``'scale'`` for
    1-D BatchNorm weights.  ``num_batches_tracked`` has no Flax counterpart (returns ``None``).
    Example: ``layer2.0.shortcut.1.running_var`` -> ``('batch_stats',
    ('layer2_0', 'shortcut_1', 'var'))``.
    """
    *mods, leaf = key.split(".")
    path: list[str] = []
    for m in mods:
        if m.isdigit() and path:
            path[-1] = f"{path[-1]}_{m}"
        else:
            path.append(m)
    if leaf == "num_batches_tracked":
        return "batch_stats", None
    collection, leaf = {
        "weight": ("params", "kernel"),
        "bias": ("params", "bias"),
        "running_mean": ("batch_stats", "mean"),
        "running_var": ("batch_stats", "var"),
    }[leaf]
    return collection, (*path, leaf)


def flax_to_torch_key(collection: str, path: Path) -> str:
    """Inverse of :func:`torch_key_to_flax` for the zoo's names (``('params', ('layer1_0',
    'conv1', 'kernel'))`` -> ``layer1.0.conv1.weight``): a trailing ``_<digits>`` of a module name
    is a ``nn.Sequential`` index."""
    parts: list[str] = []
    for comp in path[:-1]:
        tokens = comp.split("_")
        i = len(tokens)
        while i > 1 and tokens[i - 1].isdigit():
            i -= 1
        parts += ["_".join(tokens[:i]), *tokens[i:]]
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
            "var": "running_var"}[path[-1]]
    return ".".join([*parts, leaf])


def _torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    """PyTorch shape of a Flax leaf (kernels are transposed, everything else is the same)."""
    if leaf == "kernel" and len(flax_shape) == 4:
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if leaf == "kernel" and len(flax_shape) == 2:
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def _torch_to_flax_array(a: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and a.ndim == 4:
        return a.transpose(2, 3, 1, 0)
    if leaf == "kernel" and a.ndim == 2:
        return a.T
    return a


def _flax_to_torch_array(a: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and a.ndim == 4:
        return a.transpose(3, 2, 0, 1)
    if leaf == "kernel" and a.ndim == 2:
        return a.T
    return a


def _as_numpy(value: Any) -> np.ndarray | None:
    """float32 (or integer) numpy copy of a tensor/array; None for anything else."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.to(torch.float32)
        return value.numpy().copy()
    if isinstance(value, (np.ndarray, jax.Array)):
        a = np.array(value)
        return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16" else a
    return None


def _fmt_shape(shape) -> str:
    return str(tuple(int(d) for d in shape))


# --------------------------------------------------------------------------- Flax templates

@functools.lru_cache(maxsize=32)
def _flax_template(name: str, num_classes: int, in_channels: int, image_size: int) -> dict[Entry, tuple]:
    """``{(collection, path): shape}`` of the Flax variables (``jax.eval_shape``, no compute)."""
    model = models.create(name, num_classes)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, in_channels), jnp.float32)
    tree = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    flat = traverse_util.flatten_dict(jax.tree.map(lambda s: s.shape, tree,
                                                   is_leaf=lambda s: isinstance(s, jax.ShapeDtypeStruct)))
    rank = {"kernel": 0, "scale": 0, "bias": 1, "mean": 2, "var": 3}  # PyTorch's order per module
    entries = sorted(flat, key=lambda k: (k[1:-1], rank[k[-1]]))
    return {(k[0], tuple(k[1:])): tuple(flat[k]) for k in entries}


def _cnn_image_size(fc1_in: int | None, num_channels: int = 32) -> int:
    """Input side length whose flattened final CNN map has ``fc1_in`` features (32 if unknown)."""
    if fc1_in:
        side = math.isqrt(fc1_in // (4 * num_channels))
        if side >= 1 and 4 * num_channels * side * side == fc1_in:
            return 8 * side
    return 32


def _template_for(name: str, num_classes: int, in_channels: int | None, fc1_in: int | None):
    in_channels = in_channels if in_channels and in_channels > 0 else 3
    image_size = _cnn_image_size(fc1_in) if name == "cnn" else 32
    return _flax_template(name, num_classes, in_channels, image_size), in_channels, image_size


def _check_name(model_name: str, num_classes: int) -> tuple[str, int]:
    name = torch_models.canonical_name(model_name)
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return name, int(num_classes)


def _raise_mismatch(what: str, name: str, num_classes: int, missing, unexpected, misshaped):
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{what} does not match the '{name}' model with {num_classes} classes "
             f"(names and shapes in PyTorch layout):"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines += [f"    {item}" for item in items]
    raise ValueError("\n".join(lines))


# --------------------------------------------------------------------------- torch -> flax

def _torch_key_entry(key: Any, template: Mapping[Entry, tuple]) -> tuple[str, Path | None] | None:
    """``(collection, path)`` of a torch key in ``template``; ``('batch_stats', None)`` for the
    ``num_batches_tracked`` of one of its BatchNorms; None if the model has no such variable."""
    if not isinstance(key, str):
        return None
    suffix = ".num_batches_tracked"
    if key.endswith(suffix):
        bn = _torch_key_entry(key[:-len(suffix)] + ".running_mean", template)
        return ("batch_stats", None) if bn is not None else None
    try:
        collection, path = torch_key_to_flax(key)
    except KeyError:  # not a weight / bias / running statistic
        return None
    if path[-1] == "kernel" and (collection, path) not in template:
        path = (*path[:-1], "scale")  # a BatchNorm weight
    return (collection, path) if (collection, path) in template else None


def _strip_data_parallel(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix that ``nn.DataParallel`` / DDP put before every key."""
    keys = list(state_dict)
    if keys and all(isinstance(k, str) and k.startswith(_DATA_PARALLEL_PREFIX) for k in keys):
        return {k[len(_DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def from_torch_state_dict(state_dict: Mapping[str, Any], model_name: str,
                          num_classes: int) -> dict[str, dict]:
    """Flax variables ``{'params', 'batch_stats'}`` of a PyTorch ``state_dict`` of the zoo.

    Args:
      state_dict: ``model.state_dict()`` of :func:`torch_models.create(model_name, num_classes)
        <ast_jax.interop.torch_models.create>` or of the reference model (tensors or arrays); a
        ``module.`` prefix on every key (DataParallel) is removed.
      model_name: one of :data:`ast_jax.models.MODEL_NAMES`.
      num_classes: number of classes of the model.

    Returns:
      nested dicts of float32 ``jax.Array`` matching ``ast_jax.models.create(model_name,
      num_classes).init(...)`` (the stem's input channels and the CNN's input size are read off
      the state dict).

    Raises:
      ValueError: listing every missing, unexpected and mis-shaped tensor (names and shapes).
    """
    name, num_classes = _check_name(model_name, num_classes)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    sd = _strip_data_parallel(state_dict)
    stem = sd.get(flax_to_torch_key("params", (_STEM[name], "kernel")))
    fc1 = sd.get("fc1.weight") if name == "cnn" else None
    template, _, _ = _template_for(
        name, num_classes,
        int(stem.shape[1]) if stem is not None and len(getattr(stem, "shape", ())) == 4 else None,
        int(fc1.shape[1]) if fc1 is not None and len(getattr(fc1, "shape", ())) == 2 else None)

    found: dict[Entry, np.ndarray] = {}
    seen: set[Entry] = set()
    unexpected, misshaped = [], []
    for key, value in sd.items():
        array = _as_numpy(value)
        shape = _fmt_shape(array.shape) if array is not None else f"<{type(value).__name__}>"
        entry = _torch_key_entry(key, template)
        if entry is None:
            unexpected.append(f"{key} {shape}")
            continue
        if entry[1] is None:  # num_batches_tracked of a BatchNorm of the model: dropped
            continue
        collection, path = entry
        seen.add(entry)
        expected = template[entry]
        converted = None
        if array is not None:
            converted = _torch_to_flax_array(array, path[-1]) if array.ndim == len(expected) else array
        if converted is None or converted.shape != expected:
            misshaped.append(f"{key}: got {shape}, expected {_fmt_shape(_torch_shape(expected, path[-1]))}")
            continue
        found[entry] = converted
    missing = [f"{flax_to_torch_key(*entry)} {_fmt_shape(_torch_shape(shape, entry[1][-1]))}"
               for entry, shape in template.items() if entry not in seen]
    _raise_mismatch("PyTorch state_dict", name, num_classes, missing, unexpected, misshaped)

    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for (collection, path), array in found.items():
        node = variables[collection]
        for comp in path[:-1]:
            node = node.setdefault(comp, {})
        node[path[-1]] = jnp.asarray(array, dtype=jnp.float32)
    return variables


# --------------------------------------------------------------------------- flax -> torch

def to_torch_state_dict(variables: Mapping[str, Any], model_name: str,
                        num_classes: int) -> "OrderedDict[str, torch.Tensor]":
    """PyTorch ``state_dict`` (float32 CPU tensors, in module order) of Flax variables.

    Inverse of :func:`from_torch_state_dict`; ``num_batches_tracked`` is written as 0.  The result
    loads with ``strict=True`` into ``torch_models.create(model_name, num_classes, in_channels=...,
    image_size=...)`` (for the CNN, the image size its ``fc1`` was made for).

    Raises:
      ValueError: listing every missing, unexpected and mis-shaped variable (PyTorch names).
    """
    name, num_classes = _check_name(model_name, num_classes)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError("variables must be a mapping with 'params' (and 'batch_stats')")
    flat: dict[Entry, np.ndarray] = {}
    for collection in variables:
        tree = variables[collection]
        if not isinstance(tree, Mapping):
            raise ValueError(f"variables[{collection!r}] must be a mapping, got {type(tree).__name__}")
        for path, value in traverse_util.flatten_dict(dict(tree)).items():
            flat[(collection, tuple(path))] = value
    stem = flat.get(("params", (_STEM[name], "kernel")))
    fc1 = flat.get(("params", ("fc1", "kernel"))) if name == "cnn" else None
    template, in_channels, image_size = _template_for(
        name, num_classes,
        int(stem.shape[2]) if stem is not None and np.ndim(stem) == 4 else None,
        int(fc1.shape[0]) if fc1 is not None and np.ndim(fc1) == 2 else None)

    unexpected, misshaped, arrays = [], [], {}
    for (collection, path), value in flat.items():
        array = _as_numpy(value)
        known = (collection, path) in template
        key = flax_to_torch_key(collection, path) if known else f"{collection}/{'/'.join(path)}"
        shape = _fmt_shape(np.shape(value)) if array is not None else f"<{type(value).__name__}>"
        if not known:
            unexpected.append(f"{key} (Flax path) {shape}")
        elif array is None or array.shape != template[(collection, path)]:
            expected = _fmt_shape(_torch_shape(template[(collection, path)], path[-1]))
            got = _fmt_shape(_torch_shape(array.shape, path[-1])) if array is not None else shape
            misshaped.append(f"{key}: got {got}, expected {expected}")
        else:
            arrays[(collection, path)] = array
    missing = [f"{flax_to_torch_key(*entry)} {_fmt_shape(_torch_shape(shape, entry[1][-1]))}"
               for entry, shape in template.items() if entry not in flat]
    _raise_mismatch("Flax variables", name, num_classes, missing, unexpected, misshaped)

    with torch.device("meta"):  # names and order only; nothing is allocated or initialised
        reference = torch_models.create(name, num_classes, in_channels=in_channels,
                                        image_size=image_size)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key in reference.state_dict():
        collection, path = torch_key_to_flax(key)
        if path is None:
            out[key] = torch.tensor(0, dtype=torch.long)
            continue
        if path[-1] == "kernel" and ("params", path) not in arrays:
            path = (*path[:-1], "scale")
        array = _flax_to_torch_array(arrays.pop((collection, path)), path[-1])
        out[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    assert not arrays, f"internal error: Flax variables without a PyTorch key: {sorted(arrays)}"
    return out


# --------------------------------------------------------------------------- files

def extract_state_dict(obj: Any) -> Mapping[str, Any]:
    """The model weights of a loaded checkpoint: ``obj[k]`` for the first ``k`` of
    :data:`STATE_DICT_KEYS` that holds a mapping, else ``obj`` itself if it is a mapping of
    tensors (a raw ``state_dict``)."""
    if isinstance(obj, Mapping):
        for k in STATE_DICT_KEYS:
            if isinstance(obj.get(k), Mapping):
                return obj[k]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        keys = ", ".join(repr(k) for k in list(obj)[:20])
        raise ValueError(f"checkpoint holds no state_dict: expected a mapping of tensors or a dict "
                         f"with one of {STATE_DICT_KEYS}; top-level keys: {keys or '(none)'}")
    raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state_dict (a mapping of tensors)")


def load_torch_checkpoint(path: str | os.PathLike, model_name: str, num_classes: int) -> dict[str, dict]:
    """Flax variables ``{'params', 'batch_stats'}`` of a PyTorch checkpoint file of the zoo.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` and may hold
    a raw ``state_dict`` or a dict with the weights under ``'state_dict'`` (also
    ``'model_state_dict'`` or ``'net'``, see :data:`STATE_DICT_KEYS`); a ``module.`` prefix
    (DataParallel) is removed.  Conversion and checks: :func:`from_torch_state_dict`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the path is a directory; a weight is not a finite floating-point tensor (the
        message names it); the file is not a plain weights checkpoint (it pickles other objects, which
        would run code when loaded, or is not a PyTorch file), holds no state dict, or its
        tensors do not match the model (every missing / unexpected / mis-shaped one listed).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a PyTorch checkpoint file; give the path of the "
                         f".pt/.pth file saved with torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} is not a plain weights checkpoint: torch.load(weights_only=True) refused it "
            f"(it pickles objects other than tensors and plain containers, which could run code "
            f"when unpickled, or it is not a PyTorch file); it was not loaded. Re-save only "
            f"`model.state_dict()` with torch.save. Details: {e}") from e
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    state_dict = extract_state_dict(obj)
    _check_finite_floats(path, state_dict)
    return from_torch_state_dict(state_dict, model_name, num_classes)


def _check_finite_floats(path: str, state_dict: Mapping[str, Any]) -> None:
    """Refuse (ValueError naming the tensor) a weight or statistic that is not a finite float tensor.

    ``num_batches_tracked`` counters are integers by design and are skipped.
    """
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or str(key).endswith("num_batches_tracked"):
            continue
        if not value.is_floating_point():
            raise ValueError(f"{path}: tensor {key} has dtype {value.dtype}, expected a floating-point "
                             f"tensor; re-save the model's float weights")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{path}: tensor {key} holds NaN or infinite values; the checkpoint cannot "
                             f"be used as a teacher (use an earlier, finite checkpoint)")


def save_torch_checkpoint(variables: Mapping[str, Any], path: str | os.PathLike, model_name: str,
                          num_classes: int, *, overwrite: bool = False) -> None:
    """Write Flax variables as a PyTorch checkpoint ``{'state_dict': ...}`` (see
    :func:`to_torch_state_dict`), loadable with ``torch.load(path, weights_only=True)``.

    The file appears atomically (``ast_jax.files.atomic_write``).

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False (nothing is written).
    """
    path = os.fspath(path)
    if not overwrite and os.path.lexists(path):  # before any work
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    state_dict = to_torch_state_dict(variables, model_name, num_classes)
    buffer = io_bytes.BytesIO()
    torch.save({"state_dict": state_dict}, buffer)
    atomic_write(path, buffer.getvalue(), overwrite=overwrite)
