"""`python -m ast_jax` is the `ast-jax` command line."""

import sys

from .cli import main

sys.exit(main())
