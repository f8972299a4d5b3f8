"""TFDS builders that prepare CIFAR-10/100 and Tiny-ImageNet offline, without TensorFlow.

* `Cifar10Offline` / `Cifar100Offline` subclass the stock `tfds` CIFAR builders (same
  builder name, version 3.0.2, features and split names, so the result is read back exactly
  like an official `tfds build cifar10 --file_format=array_record`). They only replace the
  download by the official *binary* archive placed in `manual_dir`
  (`cifar-10-binary.tar.gz` / `cifar-100-binary.tar.gz`, or its extracted folder), and encode
  the PNGs with Pillow instead of `tf.image.encode_png`, which is what makes the stock
  builders need TensorFlow.
* `TinyImagenet` reads the official `tiny-imagenet-200.zip` (or its extracted folder) from
  `manual_dir`. Splits: `train` (100,000 images from `train/<wnid>/images/*.JPEG`) and
  `validation` (10,000 images from `val/images/`, labelled by `val/val_annotations.txt`;
  `load_split(..., "test")` reads it). The unlabelled `test/` folder is not used. Class index
  = position of the wnid in `wnids.txt` (file order, *not* sorted; torchvision's
  `ImageFolder` on re-foldered data would use sorted wnids instead, a mere relabelling).
  The JPEG bytes are stored unchanged (no re-encoding).

Everything here is used through `prepare(name, manual_dir, data_dir)` or the command line
`python -m ast_jax.data.prepare`; see docs/data.md.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.image_classification import cifar as _tfds_cifar

from ast_jax.data.errors import DataNotFoundError

# `DatasetBuilder.code_path` locates the builder's source to find a checksums file; for a
# builder outside the tensorflow_datasets package that lookup needs the `importlib_resources`
# backport (missing on Python >= 3.9 installs). These builders download nothing, so they
# report no code path, hence no checksums file.
_NO_CODE_PATH = tfds_utils.classproperty(classmethod(lambda cls: None))

CIFAR_ARCHIVES = {
    "cifar10": ("cifar-10-binary.tar.gz", "cifar-10-batches-bin"),
    "cifar100": ("cifar-100-binary.tar.gz", "cifar-100-binary"),
}
CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
}
TINY_IMAGENET_ZIP = "tiny-imagenet-200.zip"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image  # Pillow: needed only to prepare data.

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    return buffer.getvalue()


class _CifarMemberReader:
    """Reads named members of a CIFAR binary release, from the .tar.gz or an extracted folder."""

    def __init__(self, name: str, manual_dir: str):
        archive, folder = CIFAR_ARCHIVES[name]
        self.folder = folder
        self.tar_path = os.path.join(manual_dir, archive)
        self.dir_path = None
        for candidate in (os.path.join(manual_dir, folder), manual_dir):
            if os.path.isfile(os.path.join(candidate, self._probe_member(name))):
                self.dir_path = candidate
                break
        if self.dir_path is None and not os.path.isfile(self.tar_path):
            raise DataNotFoundError(
                f"Neither {self.tar_path} nor an extracted {folder}/ folder was found in "
                f"manual_dir={manual_dir!r}. Download {CIFAR_URLS[name]} (the *binary* version) "
                f"on any machine and put it there."
            )
        self._members: dict[str, bytes] | None = None

    @staticmethod
    def _probe_member(name: str) -> str:
        return "batches.meta.txt" if name == "cifar10" else "fine_label_names.txt"

    def read(self, member: str) -> bytes:
        if self.dir_path is not None:
            with open(os.path.join(self.dir_path, member), "rb") as f:
                return f.read()
        if self._members is None:  # One pass over the (compressed) archive.
            self._members = {}
            with tarfile.open(self.tar_path, "r:*") as tar:
                for info in tar:
                    if info.isfile():
                        base = info.name.split("/", 1)[-1] if "/" in info.name else info.name
                        self._members[base] = tar.extractfile(info).read()
        try:
            return self._members[member]
        except KeyError:
            raise DataNotFoundError(
                f"{self.tar_path} has no member {self.folder}/{member}"
            ) from None


def _cifar_records(data: bytes, num_label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Parses a CIFAR binary batch: per record, label byte(s) then 3x32x32 channel-major pixels."""
    record = num_label_bytes + 3 * 32 * 32
    if len(data) % record:
        raise ValueError(f"CIFAR batch of {len(data)} bytes is not a multiple of {record}")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = rows[:, :num_label_bytes]
    images = rows[:, num_label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return labels, images


class Cifar10Offline(_tfds_cifar.Cifar10, skip_registration=True):
    """The stock `cifar10` builder, fed from a local binary archive and TensorFlow-free."""

    name = "cifar10"
    code_path = _NO_CODE_PATH
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (binary version) and "
        "place it, or its extracted cifar-10-batches-bin/ folder, in manual_dir."
    )

    def _split_generators(self, dl_manager):
        reader = _CifarMemberReader(self.name, os.fspath(dl_manager.manual_dir))
        info = self._cifar_info
        for label_key, label_file in zip(info.label_keys, info.label_files):
            names = [n for n in reader.read(label_file).decode().split("\n") if n.strip()]
            self.info.features[label_key].names = names
        return {
            tfds.Split.TRAIN: self._generate_examples("train_", reader, info.train_files),
            tfds.Split.TEST: self._generate_examples("test_", reader, info.test_files),
        }

    def _generate_examples(self, split_prefix, reader, files) -> Iterator:
        # Same keys, ids and record layout as the stock builder (tfds cifar.py).
        label_keys = self._cifar_info.label_keys
        index = 0
        for file in files:
            labels, images = _cifar_records(reader.read(file), len(label_keys))
            for label_row, image in zip(labels, images):
                record = {k: int(v) for k, v in zip(label_keys, label_row)}
                record["id"] = f"{split_prefix}{index:05d}"
                record["image"] = _png_bytes(np.ascontiguousarray(image))
                yield index, record
                index += 1


class Cifar100Offline(_tfds_cifar.Cifar100, skip_registration=True):
    """The stock `cifar100` builder (fine `label` + `coarse_label`), fed from a local archive."""

    name = "cifar100"
    code_path = _NO_CODE_PATH
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz (binary version) and "
        "place it, or its extracted cifar-100-binary/ folder, in manual_dir."
    )
    _split_generators = Cifar10Offline._split_generators
    _generate_examples = Cifar10Offline._generate_examples


class _TinyImagenetFiles:
    """Read access to tiny-imagenet-200 from the zip or from an extracted folder."""

    def __init__(self, manual_dir: str):
        self.zip_path = os.path.join(manual_dir, TINY_IMAGENET_ZIP)
        self.root = None
        for candidate in (os.path.join(manual_dir, "tiny-imagenet-200"), manual_dir):
            if os.path.isfile(os.path.join(candidate, "wnids.txt")):
                self.root = candidate
                break
        if self.root is None and not os.path.isfile(self.zip_path):
            raise DataNotFoundError(
                f"Neither {self.zip_path} nor an extracted tiny-imagenet-200/ folder was found in "
                f"manual_dir={manual_dir!r}. Download {TINY_IMAGENET_URL} on any machine and put "
                "it there."
            )
        self._zip = None
        self._prefix = ""
        if self.root is None:
            self._zip = zipfile.ZipFile(self.zip_path)
            names = self._zip.namelist()
            wnids = [n for n in names if n.endswith("wnids.txt")]
            if not wnids:
                raise DataNotFoundError(f"{self.zip_path} contains no wnids.txt")
            self._prefix = min(wnids, key=len)[: -len("wnids.txt")]
            self._names = names

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def read(self, rel: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(self._prefix + rel)
        with open(os.path.join(self.root, rel), "rb") as f:
            return f.read()

    def list_dir(self, rel_dir: str) -> list[str]:
        """Sorted plain file names directly inside `rel_dir`."""
        if self._zip is not None:
            prefix = self._prefix + rel_dir.rstrip("/") + "/"
            return sorted(
                n[len(prefix):]
                for n in self._names
                if n.startswith(prefix) and "/" not in n[len(prefix):] and n != prefix
            )
        path = os.path.join(self.root, rel_dir)
        if not os.path.isdir(path):
            return []
        return sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))


def _is_jpeg(name: str) -> bool:
    return name.lower().endswith((".jpeg", ".jpg"))


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """Tiny-ImageNet-200 (64x64 RGB, 200 classes) from the official zip, via `manual_dir`."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = _NO_CODE_PATH
    RELEASE_NOTES = {"1.0.0": "Initial release (train + validation labelled by val_annotations)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {TINY_IMAGENET_URL} (about 237 MB) and place {TINY_IMAGENET_ZIP} (or its "
        "extracted tiny-imagenet-200/ folder) in manual_dir, e.g. "
        "`python -m ast_jax.data.prepare tiny_imagenet --manual_dir=DIR --data_dir=OUT`."
    )
    NUM_CLASSES = 200

    def _info(self):
        return self.dataset_info_from_configs(
            description=(
                "Tiny ImageNet (CS231n): 200 ImageNet classes, 500 train and 50 validation "
                "64x64 images per class. Label = index of the wnid in wnids.txt (file order)."
            ),
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "image": tfds.features.Image(shape=(64, 64, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
            }),
            supervised_keys=("image", "label"),
            homepage="http://cs231n.stanford.edu/",
        )

    def _split_generators(self, dl_manager):
        files = _TinyImagenetFiles(os.fspath(dl_manager.manual_dir))
        wnids = [w.strip() for w in files.read("wnids.txt").decode().splitlines() if w.strip()]
        if len(set(wnids)) != len(wnids) or not 0 < len(wnids) <= self.NUM_CLASSES:
            raise ValueError(f"wnids.txt must list at most {self.NUM_CLASSES} distinct wnids")
        if len(wnids) == self.NUM_CLASSES:  # The real data set; a smaller one only in tests.
            self.info.features["label"].names = wnids
        index = {w: i for i, w in enumerate(wnids)}
        train_items = self._train_items(files, wnids, index)
        val_items = self._val_items(files, index)
        return {
            tfds.Split.TRAIN: self._generate_examples(files, train_items),
            tfds.Split.VALIDATION: self._generate_examples(files, val_items),
        }

    @staticmethod
    def _train_items(files, wnids, index):
        items = []
        for wnid in wnids:
            names = [n for n in files.list_dir(f"train/{wnid}/images") if _is_jpeg(n)]
            if not names:
                raise DataNotFoundError(f"no images under train/{wnid}/images/")
            items += [(f"train/{wnid}/images/{n}", n, index[wnid]) for n in names]
        return items

    @staticmethod
    def _val_items(files, index):
        # val_annotations.txt: <file>\t<wnid>\t<x0>\t<y0>\t<x1>\t<y1>; the labels come from here,
        # never from folder names (val/images/ is flat in the official zip).
        items = []
        for line in files.read("val/val_annotations.txt").decode().splitlines():
            if not line.strip():
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            name, wnid = fields[0], fields[1]
            if wnid not in index:
                raise ValueError(f"val_annotations.txt: {name} has wnid {wnid} not in wnids.txt")
            items.append((f"val/images/{name}", name, index[wnid]))
        return items

    def _generate_examples(self, files, items):
        for rel, name, label in items:
            yield name, {"id": name, "image": files.read(rel), "label": label}


BUILDERS = {"cifar10": Cifar10Offline, "cifar100": Cifar100Offline, "tiny_imagenet": TinyImagenet}


def prepare(name: str, manual_dir: str, data_dir: str) -> str:
    """Prepares `name` as ArrayRecord under `data_dir` from the archive in `manual_dir`.

    Needs neither TensorFlow nor network access. Returns the prepared version directory
    (`<data_dir>/<name>/<version>`). A data set already prepared there is left untouched.
    """
    if name not in BUILDERS:
        raise ValueError(f"prepare() handles {tuple(BUILDERS)}, got {name!r}")
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    # Fail early, with the download address, when the archive is not there.
    if name == "tiny_imagenet":
        _TinyImagenetFiles(manual_dir).close()
    else:
        _CifarMemberReader(name, manual_dir)
    builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    )
    return os.fspath(builder.data_path)
