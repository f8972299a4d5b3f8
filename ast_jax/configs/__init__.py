"""Study configs (big_vision style): one file per study, each defining `get_config(variant)`.

`common` holds the builder and the defaults every config shares; `ast-jax --config NAME` loads
`ast_jax/configs/NAME.py` from the installed package.
"""
