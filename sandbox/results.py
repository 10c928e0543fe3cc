"""What a sandbox returns, read defensively: every byte is untrusted input.

A phase's runner appends one record per seed to a results file the trusted side opened for it
(no path inside the sandbox names it): a header line ``ARREC2 {json}\\n`` then the bytes of each
file it lists, then a slice of the seed's log. Here the file is parsed against a schema with hard
caps; anything malformed ends with the records read so far (the seeds without one are failures of
their own), never with an exception that could stop the run. The reports the harness writes
(``report.json``) are validated the same way: a report that is not exactly the declared shape is
no report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RECORD_MAGIC = b"ARREC2 "
MAX_HEADER_BYTES = 64 * 1024
MAX_REPORT_BYTES = 1024**2
MAX_LOG_BYTES = 64 * 1024


@dataclass
class Record:
    """One seed's result as the runner saw it: exit status, timing, and where its files are."""

    slot: int
    exit: int | None
    signal: int | None
    timed_out: bool
    seconds: float
    cpu_seconds: float | None
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (offset, size) in the results file
    oversized: dict[str, int] = field(default_factory=dict)  # name -> size of a file over its cap (not shipped)
    log: str = ""


class _Header(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    slot: int = Field(ge=0, lt=10_000)
    exit: int | None = None
    signal: int | None = None
    timed_out: bool = False
    seconds: float = Field(ge=0)
    cpu_seconds: float | None = None
    files: list[tuple[str, int]] = Field(max_length=16)  # in the order their bytes follow
    oversized: list[tuple[str, int]] = Field(default_factory=list, max_length=16)
    log_shipped: int = Field(ge=0, le=MAX_LOG_BYTES)


def read_records(path: Path, *, allowed_files: dict[str, int], slots: set[int]) -> tuple[dict[int, Record], str]:
    """Parse a results file. ``allowed_files``: file name -> size cap. Returns the records of the
    expected ``slots`` read before anything malformed, and a note saying what stopped the parse
    ("" when the whole file was well formed)."""
    records: dict[int, Record] = {}
    try:
        data = path.read_bytes()
    except OSError as exc:
        return records, f"results file unreadable: {exc.strerror}"
    pos = 0
    while pos < len(data):
        if not data.startswith(RECORD_MAGIC, pos):
            return records, f"results file malformed at byte {pos} (no record marker)"
        end = data.find(b"\n", pos, pos + len(RECORD_MAGIC) + MAX_HEADER_BYTES)
        if end < 0:
            return records, "results file malformed: header line missing or too long"
        try:  # pydantic's own JSON parser: bounded nesting, a ValidationError for anything malformed
            header = _Header.model_validate_json(data[pos + len(RECORD_MAGIC):end])
        except (ValueError, ValidationError) as exc:
            return records, f"results file malformed: bad header ({str(exc).splitlines()[0][:200]})"
        if header.slot not in slots or header.slot in records:
            return records, f"results file malformed: unexpected slot {header.slot}"
        pos = end + 1
        files: dict[str, tuple[int, int]] = {}
        for name, size in header.files:
            cap = allowed_files.get(name)
            if cap is None or size < 0 or name in files:
                return records, f"results file malformed: unexpected file {name[:60]!r}"
            if size > cap:
                return records, f"results file: {name} is {size} bytes, over its cap of {cap}"
            if pos + size > len(data):
                return records, "results file truncated"
            files[name] = (pos, size)
            pos += size
        if pos + header.log_shipped > len(data):
            return records, "results file truncated (log)"
        log = data[pos:pos + header.log_shipped].decode("utf-8", "replace")
        pos += header.log_shipped
        oversized = {name[:60]: size for name, size in header.oversized}
        records[header.slot] = Record(slot=header.slot, exit=header.exit, signal=header.signal,
                                      timed_out=header.timed_out, seconds=header.seconds,
                                      cpu_seconds=header.cpu_seconds, files=files, oversized=oversized, log=log)
    return records, ""


def file_bytes(path: Path, record: Record, name: str) -> bytes | None:
    span = record.files.get(name)
    if span is None:
        return None
    with open(path, "rb") as f:
        f.seek(span[0])
        return f.read(span[1])


# --------------------------------------------------------------------------- reports


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Compute(_Strict):
    """What the harness counted in one child (see the harness's compute_meter.py)."""

    train_examples: int = Field(ge=0)
    other_examples: int = Field(ge=0)
    forward_passes: int = Field(ge=0)
    backward_passes: int = Field(ge=0)
    optimizer_steps: int = Field(ge=0)


class Determinism(_Strict):
    deterministic_algorithms: bool
    cudnn_deterministic: bool
    nondeterministic_ops: list[str] = Field(max_length=64)
    bit_reproducible: bool


Sketch = dict[str, list[float]]


class TrainReport(_Strict):
    train_seconds: float = Field(ge=0)
    final_loss: float | None = None
    device: str = Field(max_length=200)
    checkpoint_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    compute: Compute
    sketch: dict[str, Sketch] = Field(max_length=4)
    determinism: Determinism


class PredictReport(_Strict):
    predict_seconds: float = Field(ge=0)
    compute: Compute


def parse_report(raw: bytes | None, model: type[BaseModel]) -> tuple[BaseModel | None, str]:
    """A harness report validated against its schema, or (None, why not)."""
    if raw is None:
        return None, "no report"
    if len(raw) > MAX_REPORT_BYTES:
        return None, "report too large"
    try:
        report = model.model_validate_json(raw)
    except (ValueError, ValidationError) as exc:
        return None, f"report malformed ({str(exc).splitlines()[0][:200]})"
    for name, sketch in getattr(report, "sketch", {}).items():
        if len(sketch) > 64 or any(len(v) > 256 or not all(math.isfinite(x) for x in v) for v in sketch.values()):
            return None, f"report malformed (sketch {name[:40]!r} too large or not finite)"
    return report, ""
