"""Why a vmapped batch of runs is slow on XLA:CPU, one convolution at a time:
`python -m benchmarks.grouped_conv --device-name NAME`.

For 3x3 convolutions of the shapes ResNetC-20 and the CNN run (`--layers`), with R runs that
each have their own kernel (`--runs`), it times the input and kernel gradients of
`sum(conv(x, w)^2)` (the median of 3 calls after one untimed call) three ways:

* **vmap**: `jax.vmap` over the runs: one grouped convolution (`feature_group_count` R; its
  kernel gradient `batch_group_count` R), what `jax.vmap` makes of a batch of runs;
* **sequential**: the R runs one after another, one jitted single-run call each;
* **im2col**: vmapped too, the convolution written as a gather of its 9 shifted copies and one
  matrix product (batched over the runs: no grouped convolution at all).

Writes grouped_conv.json / grouped_conv.md under `--out/<device-name>/` (never replaced without
`--overwrite`); see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import shlex
import sys

import jax
import jax.numpy as jnp
from jax import lax

from ast_jax.files import atomic_write

from .common import log, median, results_dir, time_calls
from .report import fmt, table

FILES = ("grouped_conv.json", "grouped_conv.md")
#: (batch, map size, in channels, out channels): ResNetC-20's three stages on CIFAR at batch 128,
#: its stage-3 maps and the CNN's 4x4 maps on digits at batch 64.
LAYERS = "128x32x16x16,128x16x32x32,128x8x64x64,64x8x16x16,64x4x32x32"


def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_im2col(x, w):
    """The same 3x3 'same' convolution as 9 shifted copies of the padded input and one matrix product."""
    n, h, width, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.stack([padded[:, a:a + h, b:b + width] for a in range(3) for b in range(3)], axis=3)
    return jnp.einsum("nhwtc,tco->nhwo", patches, w.reshape(9, c, -1))


def gradients(convolution):
    """(dL/dw, dL/dx) of L = sum(convolution(x, w)^2)."""
    return jax.grad(lambda w, x: jnp.sum(convolution(x, w) ** 2), argnums=(0, 1))


def measure(layer: tuple[int, int, int, int], runs: int) -> dict:
    n, size, c, o = layer
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (runs, n, size, size, c))
    w = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (runs, 3, 3, c, o))
    single = jax.jit(gradients(conv))
    programs = {"vmap": jax.jit(jax.vmap(gradients(conv))),
                "sequential": lambda w, x: [single(w[r], x[r]) for r in range(runs)],
                "im2col": jax.jit(jax.vmap(gradients(conv_im2col)))}
    row = {"layer": f"{n}x{size}x{size}, {c}->{o}", "runs": runs}
    for name, program in programs.items():
        call = functools.partial(lambda p: jax.block_until_ready(p(w, x)), program)
        row[f"{name}_ms"] = 1e3 * median(time_calls(call, iters=3, warmup=1))
    row["vmap_over_sequential"] = row["vmap_ms"] / row["sequential_ms"]
    return row


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grouped_conv", description=__doc__.split("\n")[0])
    parser.add_argument("--device-name", required=True)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--layers", default=LAYERS, help=f"comma-separated NxSxCxO (default {LAYERS})")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.layers = [tuple(int(v) for v in layer.split("x")) for layer in args.layers.split(",")]
    except ValueError:
        parser.error(f"--layers: give NxSxCxO entries, e.g. 64x8x16x16; got {args.layers!r}")
    if args.runs < 1 or any(len(layer) != 4 or min(layer) < 1 for layer in args.layers):
        parser.error("--runs and every --layers entry (4 positive integers) must be positive")
    return args


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    directory = results_dir(args.out, args.device_name, FILES, args.overwrite)
    rows = []
    for layer in args.layers:
        log(f"layer {layer}, {args.runs} runs")
        rows.append(measure(layer, args.runs))
    device = jax.devices()[0]
    results = {"device_kind": device.device_kind, "platform": device.platform, "jax": jax.__version__,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": shlex.join(["python", "-m", "benchmarks.grouped_conv", *argv]), "rows": rows}
    md = "\n".join([
        f"# Gradients of one 3x3 convolution over {args.runs} runs: {args.device_name}", "",
        f"Device: {device.device_kind} ({device.platform}); jax {jax.__version__}; {results['date']}.", "",
        f"Command: `{results['command']}`", "",
        "ms per call of the input and kernel gradients of sum(conv(x, w)^2) for all runs: vmapped (one grouped "
        "convolution), the runs one after another, and vmapped im2col (a batched matrix product).", "",
        *table(["layer (N x H x W, C->O)", "vmap ms", "sequential ms", "im2col ms", "vmap / sequential"],
               [[r["layer"], fmt(r["vmap_ms"]), fmt(r["sequential_ms"]), fmt(r["im2col_ms"]),
                 fmt(r["vmap_over_sequential"], digits=2)] for r in rows]), ""])
    atomic_write(str(directory / FILES[0]), json.dumps(results, indent=1) + "\n", overwrite=args.overwrite)
    atomic_write(str(directory / FILES[1]), md, overwrite=args.overwrite)
    print(md)
    return results


if __name__ == "__main__":
    main()
