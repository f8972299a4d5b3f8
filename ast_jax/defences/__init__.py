"""Defences against model stealing.

- `outputs`: training-free output defences (DCP, Reverse Sigmoid, top-1, rounding), functions of
  the released probabilities;
- `blackbox`: the query-counting black box a victim is released through;
- `ini`: InI, a teacher trained against its clone (docs/method.md §11.1);
- `meco`: MeCo, a teacher released through a randomised input perturbation (docs/method.md §11.2).

`ini` and `meco` bring their training objectives to the engine's `StepSpec.objective`.
"""
