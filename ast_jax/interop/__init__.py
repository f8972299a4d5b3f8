"""PyTorch interoperability: the zoo in PyTorch, and checkpoint conversion both ways.

Needs the optional PyTorch dependency (``pip install "ast_jax[torch]"``).

* :mod:`ast_jax.interop.torch_models` -- ``create(name, num_classes)``: PyTorch (NCHW) twins of
  ``ast_jax.models``, same parameter counts and ``state_dict`` names as the reference code.
* :func:`torch_key_to_flax` / :func:`flax_to_torch_key` -- the name mapping, both directions.
* :func:`from_torch_state_dict` / :func:`to_torch_state_dict` -- ``state_dict`` <-> Flax
  ``{'params', 'batch_stats'}``, checked against the Flax variable tree (every missing,
  unexpected and mis-shaped tensor listed in one ``ValueError``).
* :func:`load_torch_checkpoint` / :func:`save_torch_checkpoint` -- ``.pt`` files, read with
  ``torch.load(weights_only=True)`` (a checkpoint cannot run code), written as
  ``{'state_dict': ...}`` and never over an existing file unless ``overwrite=True``.

Example::

    from ast_jax.interop import load_torch_checkpoint
    variables = load_torch_checkpoint("best.pth.tar", "resnet18", 100)
    logits = ast_jax.models.create("resnet18", 100).apply(variables, x_nhwc, train=False)
"""

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised with torch hidden
    raise ImportError(
        'ast_jax.interop needs PyTorch, which is not installed: pip install "ast_jax[torch]" '
        "(or a CPU-only torch wheel)") from e

from ast_jax.interop import torch_models
from ast_jax.interop.convert import (
    STATE_DICT_KEYS,
    extract_state_dict,
    flax_to_torch_key,
    from_torch_state_dict,
    load_torch_checkpoint,
    save_torch_checkpoint,
    to_torch_state_dict,
    torch_key_to_flax,
)

__all__ = ["torch_models", "from_torch_state_dict", "to_torch_state_dict",
           "load_torch_checkpoint", "save_torch_checkpoint", "extract_state_dict",
           "flax_to_torch_key", "torch_key_to_flax", "STATE_DICT_KEYS"]
