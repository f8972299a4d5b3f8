"""`python -m ast_jax` is the `ast-jax` command line."""

import sys

from ast_jax.cli import main

sys.exit(main())
