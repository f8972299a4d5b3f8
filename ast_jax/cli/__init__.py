"""The `ast-jax` command line (`ast_jax.cli.commands`): the top layer, the only one that loads configs."""

from ast_jax.cli.commands import main

__all__ = ["main"]
