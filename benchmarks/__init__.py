"""Throughput of ast_jax against the same training steps and PGD in PyTorch (`python -m benchmarks.run`)."""

import os

# JAX and PyTorch share the accelerator in one process: JAX must not take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
