"""Studies: the thesis's study as resumable stages (`pipeline`), over seeds and grids (`sweep`),
and the stealing-attack matrix (`matrix`). They receive validated configs from the CLI and never
load one."""
