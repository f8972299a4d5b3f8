"""One-time offline preparation of CIFAR-10/100 and Tiny-ImageNet (no TensorFlow, no network).

    python -m ast_jax.data.prepare cifar10 --manual_dir=DIR --data_dir=~/tensorflow_datasets

`DIR` holds the official archive: cifar-10-binary.tar.gz, cifar-100-binary.tar.gz or
tiny-imagenet-200.zip (or the extracted folder). See docs/data.md.
"""

from __future__ import annotations

import argparse
import sys

from ast_jax.data.sources import default_tfds_data_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ast_jax.data.prepare",
        description="Prepare a data set as TFDS ArrayRecord from its official archive, offline.",
    )
    parser.add_argument("name", choices=("cifar10", "cifar100", "tiny_imagenet"))
    parser.add_argument("--manual_dir", required=True,
                        help="folder holding the downloaded archive (or its extracted folder)")
    parser.add_argument("--data_dir", default=None,
                        help="TFDS data_dir to write to (default: $TFDS_DATA_DIR or "
                             "~/tensorflow_datasets)")
    args = parser.parse_args(argv)
    from ast_jax.data.tfds_builders import prepare

    path = prepare(args.name, args.manual_dir, args.data_dir or default_tfds_data_dir())
    print(f"{args.name} prepared in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
