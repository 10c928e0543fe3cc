"""Strict prediction format: what a predict phase returns is parsed by trusted code that checks the
.npy header before touching the data; every malformed file is a clean PredictionError."""

from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import pytest

from autoresearch.scoring import Metric, PredictionError, parse_predictions, score

ROWS, CLASSES = 4, 3


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def crafted(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file with any header text (np.save would refuse most of these)."""
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    size = struct.pack("<H" if version == (1, 0) else "<I", len(text))
    return b"\x93NUMPY" + bytes(version) + size + text + data


def header(descr: str, shape=(ROWS, CLASSES), fortran: bool = False) -> str:
    return f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape}, }}"


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", ">f8"])
def test_float32_and_float64_in_either_byte_order(dtype):
    logits = np.arange(ROWS * CLASSES, dtype=dtype).reshape(ROWS, CLASSES)
    parsed = parse_predictions(npy(logits), rows=ROWS, classes=CLASSES)
    assert parsed.dtype == np.float64 and parsed.flags.c_contiguous
    assert np.array_equal(parsed, np.arange(ROWS * CLASSES, dtype=np.float64).reshape(ROWS, CLASSES))


def test_float128_beyond_float64_is_refused():
    """1e4000 is finite as float128 and inf as float64: once recorded `ok` with a missing log loss."""
    if np.finfo(np.longdouble).maxexp <= 1024:
        pytest.skip("no extended precision long double on this platform")
    logits = np.full((ROWS, CLASSES), np.longdouble(10) ** 4000)
    with pytest.raises(PredictionError, match="float32 or float64") as exc:
        parse_predictions(npy(logits), rows=ROWS, classes=CLASSES)
    assert exc.value.kind == "crash"


@pytest.mark.parametrize("dtype", ["<f2", "<i8", "|b1", "<c16"])
def test_other_dtypes_are_refused(dtype):
    with pytest.raises(PredictionError, match="float32 or float64"):
        parse_predictions(npy(np.zeros((ROWS, CLASSES), dtype=dtype)), rows=ROWS, classes=CLASSES)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_values(value):
    logits = np.zeros((ROWS, CLASSES), np.float32)
    logits[2, 1] = value
    with pytest.raises(PredictionError, match="1 row") as exc:
        parse_predictions(npy(logits), rows=ROWS, classes=CLASSES)
    assert exc.value.kind == "nonfinite"


def test_logits_too_far_apart_for_float64_are_nonfinite_not_a_missing_log_loss():
    logits = np.zeros((ROWS, CLASSES), np.float64)
    logits[:, 0], logits[:, 1] = 1.7e308, -1.7e308
    labels = np.array([1, 0, 0, 0])
    with pytest.raises(PredictionError, match="log loss") as exc:
        score(npy(logits), labels, classes=CLASSES, metric=Metric("accuracy", "higher"))
    assert exc.value.kind == "nonfinite"


BAD_FILES = {
    "not npy": b"hello",
    "empty": b"",
    "pickle": b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00N.",
    "object dtype": crafted(header("|O"), b"\x00" * 96),
    "structured dtype": crafted(header([("a", "<f8")]), b"\x00" * 96),
    "subarray dtype": crafted(header([("a", "<f8", (3,))], shape=(ROWS,)), b"\x00" * 96),
    "fortran order": npy(np.asfortranarray(np.zeros((ROWS, CLASSES), np.float32))),
    "huge header": crafted("{" + " " * 60_000 + "}"),
    "version 2 header claiming 4 GiB": b"\x93NUMPY\x02\x00" + struct.pack("<I", 2 ** 32 - 1) + b"{",
    "version 3": crafted(header("<f4"), b"\x00" * 48, version=(3, 0)),
    "header not a dict": crafted("[1, 2, 3]"),
    "deeply nested header": crafted("[" * 4000 + "]" * 4000),
    "huge integer in header": crafted("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "9" * 5000 + ", 1), }"),
    "truncated data": npy(np.zeros((ROWS, CLASSES), np.float32))[:-5],
    "trailing data": npy(np.zeros((ROWS, CLASSES), np.float32)) + b"\x00" * 4,
    "wrong shape": npy(np.zeros((CLASSES, ROWS), np.float32)),
    "one dimension": npy(np.zeros(ROWS * CLASSES, np.float32)),
    "scalar": npy(np.float32(1.0)),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_malformed_files_are_a_clean_error(name):
    with pytest.raises(PredictionError) as exc:
        parse_predictions(BAD_FILES[name], rows=ROWS, classes=CLASSES)
    assert exc.value.kind == "crash" and len(str(exc.value)) <= 500


def test_a_huge_declared_shape_allocates_nothing():
    """The header is checked before any data is read: a shape needing 800 MB costs nothing."""
    raw = crafted(header("<f8", shape=(100_000, 1000)), b"\x00" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(PredictionError, match="shape"):
            parse_predictions(raw, rows=ROWS, classes=CLASSES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2 ** 20
