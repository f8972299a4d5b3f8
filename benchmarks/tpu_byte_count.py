"""How XLA:TPU counts bytes accessed: one 3 × 3 convolution compiled for a TPU slice that is not
attached, its compiler count against the bytes of its unpadded input, output and kernel.

    python -m benchmarks.tpu_byte_count [--topology v5e:2x2] [--images 16] [--side 64] [--channels 64]

`ast-jax plan`'s TPU time bounds rest on this count (`ast_jax/cli/plan.py`); the ratio printed
shows how much of it the TPU's padded layouts add for one layer. Needs libtpu (the `tpu` extra).
"""

from __future__ import annotations

import argparse

from ast_jax.cli.plan import prepare_environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v5e:2x2")
    parser.add_argument("--images", type=int, default=16, help="images per device")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--channels", type=int, default=64)
    args = parser.parse_args()
    prepare_environment()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = topologies.get_topology_desc(topology_name=args.topology, platform="tpu").devices
    mesh = Mesh(np.asarray(devices), ("data",))
    images = (args.images * len(devices), args.side, args.side, args.channels)
    x = jax.ShapeDtypeStruct(images, jnp.float32, sharding=NamedSharding(mesh, P("data")))
    w = jax.ShapeDtypeStruct((3, 3, args.channels, args.channels), jnp.float32, sharding=NamedSharding(mesh, P()))
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    cost = conv.lower(x, w).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    activation = 4 * args.images * args.side * args.side * args.channels
    unpadded = 2 * activation + 4 * 9 * args.channels ** 2  # input and output per device, the kernel
    print(f"tpu {args.topology}: conv 3x3 {args.channels}->{args.channels} on {args.images} x {args.side}x{args.side} "
          f"per device: XLA counts {cost['bytes accessed'] / 1e6:.1f} MB accessed, unpadded {unpadded / 1e6:.1f} MB "
          f"({cost['bytes accessed'] / unpadded:.2f}x), {cost['flops'] / 1e9:.2f} GFLOP")


if __name__ == "__main__":
    main()
