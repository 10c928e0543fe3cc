"""Trusted data preparation: load a benchmark's source, split it, fingerprint each split.

A split is a pair of arrays (inputs ``x``, labels ``y``). Its fingerprint is the sha256 of a
canonical byte form (dtype, shape and little-endian C-order bytes of ``x`` then ``y``), so the
same examples in the same order always give the same digest on any machine, and any change in
content, order, count or dtype gives another. Specs pin these digests; every load checks them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


class DataMismatch(RuntimeError):
    """The data on this machine is not the data the spec pins."""


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        h.update(f"{a.dtype.str}|{','.join(map(str, a.shape))}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fingerprint_split(split: Split) -> str:
    return fingerprint_arrays(split.x, split.y)


# --------------------------------------------------------------------------- sources
# Each source returns (x, y) for the whole pool; the spec's split rule cuts it.

SourceLoader = Callable[[dict], tuple[np.ndarray, np.ndarray]]
SOURCES: dict[str, SourceLoader] = {}


def source(name: str) -> Callable[[SourceLoader], SourceLoader]:
    def register(fn: SourceLoader) -> SourceLoader:
        SOURCES[name] = fn
        return fn
    return register


@source("sklearn-digits")
def _sklearn_digits(options: dict) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel intensities are 0..16; scale to [0, 1] once here so every candidate sees the same floats.
    x = (bunch.data.astype(np.float32) / np.float32(16.0)).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return x, y


def load_pool(source_name: str, options: dict) -> tuple[np.ndarray, np.ndarray]:
    try:
        loader = SOURCES[source_name]
    except KeyError:
        raise DataMismatch(f"unknown data source {source_name!r}; known: {', '.join(sorted(SOURCES))}") from None
    return loader(options)


def permutation_split(x: np.ndarray, y: np.ndarray, *, seed: int, sizes: dict[str, int]) -> dict[str, Split]:
    """Cut a pool into named splits by one fixed seeded permutation (order of ``sizes`` kept)."""
    n = int(y.shape[0])
    need = sum(sizes.values())
    if need > n:
        raise DataMismatch(f"split sizes add up to {need} but the source has {n} examples")
    order = np.random.default_rng(seed).permutation(n)
    out: dict[str, Split] = {}
    start = 0
    for name, size in sizes.items():
        idx = order[start:start + size]
        out[name] = Split(np.ascontiguousarray(x[idx]), np.ascontiguousarray(y[idx]))
        start += size
    return out


def write_split_files(splits: dict[str, Split], public_dir: Path, labels_dir: Path) -> None:
    """Inputs of every split, and train labels, go where sandboxes may read them; val/test labels do not."""
    (public_dir / "train").mkdir(parents=True, exist_ok=True)
    (public_dir / "predict").mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        if name == "train":
            np.save(public_dir / "train" / "train_x.npy", split.x, allow_pickle=False)
            np.save(public_dir / "train" / "train_y.npy", split.y, allow_pickle=False)
        else:
            np.save(public_dir / "predict" / f"{name}_x.npy", split.x, allow_pickle=False)
            np.save(labels_dir / f"{name}_y.npy", split.y, allow_pickle=False)
