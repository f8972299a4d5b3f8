"""Studies: the thesis's study as resumable stages, over seeds and grids (`sweep`), and the
stealing-attack matrix (`matrix`). A study (`study`) is made of stages (`stages`) whose inputs are
recorded and checked (`provenance`); `pipeline` makes them, `report` reads the finished ones.
They receive typed settings (`settings.StudySettings`), which the CLI builds once from a validated
config; they never load, see or validate a config."""
