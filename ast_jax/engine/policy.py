"""How programs run on a backend: one execution policy, chosen once and passed down.

The choices depend on the backend alone and are measured, not guessed (benchmarks/README.md):

`loop` drives an epoch's steps (and PGD's): `scan` makes an epoch one jitted `lax.scan`; `host`
calls the jitted step from Python once per step. XLA:CPU runs gradient convolutions much slower
inside a while loop (as `lax.scan` and `lax.fori_loop` lower to) than at the top level of a
program (130 ms against 2.7 ms for the kernel gradient of a 3x3x32x32 convolution on a 64x8x8
batch; a 40-step ResNetC-20 PGD on 64 digits takes 2.2 s as a `fori_loop` and 1.1 s as 40
top-level calls; a scanned epoch is about 8x slower), so CPU uses `host`, accelerators `scan`.

`run_lowering` maps a batched step over its runs (`loop.over_runs`): `vmap` makes every
convolution one grouped convolution over the runs (`feature_group_count` R; its kernel gradient
`batch_group_count` R), and XLA:CPU's grouped convolutions are far slower than R plain ones (the
input and kernel gradients of a 3x3 16->16 convolution on 8 runs of 128 32x32 maps: 2.10 s
vmapped against 0.27 s one run after another; im2col with a batched matrix product, 1.00 s, is
no way out). A `lax.map` over the runs would be a while loop, slow on CPU too. CPU therefore
`unroll`s: one copy of the single-run step per run (compile time grows with R; the numbers are
those of the single run either way); accelerators `vmap`.

`runs_per_program` is the most runs one program trains (None: no limit). On CPU one: two cores
are kept busy by one run's convolutions, so a batch trains no faster than its runs one after
another (0.3-1.05x vmapped, 0.56-1.2x unrolled, at R = 1-16 on the digits models), while an
unrolled program compiles in time growing with R (140 s at R = 16). One run per program still
compiles once for all the runs of a kind, whose τ, ω, k and lr are data of the program.
"""

from __future__ import annotations

import dataclasses

import jax

LOOPS = ("scan", "host")
RUN_LOWERINGS = ("vmap", "unroll")


@dataclasses.dataclass(frozen=True)
class ExecutionPolicy:
    """How epochs are driven (`loop`), how a batch of runs is lowered (`run_lowering`) and how many
    runs one program trains at most (`runs_per_program`, None: no limit); see the module docstring."""

    loop: str
    run_lowering: str
    runs_per_program: int | None

    def __post_init__(self):
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {LOOPS}, got {self.loop!r}")
        if self.run_lowering not in RUN_LOWERINGS:
            raise ValueError(f"run lowering must be one of {RUN_LOWERINGS}, got {self.run_lowering!r}")
        if self.runs_per_program is not None and self.runs_per_program < 1:
            raise ValueError(f"runs_per_program must be at least 1 (or None: no limit), got {self.runs_per_program}")

    @classmethod
    def for_backend(cls, backend: str) -> "ExecutionPolicy":
        """CPU: host loop, runs unrolled, one run per program; an accelerator: scan, vmap, no limit."""
        if backend == "cpu":
            return cls(loop="host", run_lowering="unroll", runs_per_program=1)
        return cls(loop="scan", run_lowering="vmap", runs_per_program=None)

    @classmethod
    def current(cls) -> "ExecutionPolicy":
        """The policy of JAX's default backend (what a caller that passes no policy gets)."""
        return cls.for_backend(jax.default_backend())
