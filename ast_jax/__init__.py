"""ast_jax: defensive teachers against distillation-based model stealing, in JAX/Flax.

The Adversarial Sparse Teacher (AST) with its Exponential Predictive Divergence (EPD) loss,
the baselines it is compared with (Nasty Teacher, Stingy Teacher, Stingy Trained Teacher) and
the knowledge-distillation stealing attack.
"""

__version__ = "0.1.0"
