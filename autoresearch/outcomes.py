"""What a run decided, as plain data: a trial's record, a proposal's record, and the progress
events a live view may follow. The engine writes these; reports, the live view, replay and the
agent read them, and none of those readers needs the engine to do so.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

from autoresearch.gate import StageDecision
from autoresearch.sandbox.trial import TrialStatus


@dataclass
class TrialRecord:
    seed: int
    role: str
    code_hash: str
    status: str
    detail: str
    val_metric: float | None
    test_metric: float | None
    val_log_loss: float | None
    test_log_loss: float | None
    summary: dict
    cached: bool = False
    perturbed_metric: float | None = None  # on the perturbed copies of the test inputs
    test_correct: bytes | None = None  # per test example, int8 0/1 (originals)
    perturbed_correct: bytes | None = None  # per test example, int8 0/1 (its perturbed copy)

    @property
    def ok(self) -> bool:
        return self.status == TrialStatus.OK.value

    def correct(self, which: str) -> np.ndarray:
        """Per example, 0/1: "test" (the originals) or "perturbed" (their copies)."""
        raw = self.test_correct if which == "test" else self.perturbed_correct
        return np.frombuffer(raw or b"", dtype=np.int8)


@dataclass
class ProposalRecord:
    idx: int
    title: str
    hypothesis: str
    decision: str
    reason: str
    detail: str
    diff: str = ""
    gate: StageDecision | None = None  # the gate's last look
    commit: str | None = None
    report_path: str | None = None
    candidate_trials: list[TrialRecord] = field(default_factory=list)
    incumbent_trials: list[TrialRecord] = field(default_factory=list)
    wall_seconds: float = 0.0
    integrity: dict = field(default_factory=dict)  # the integrity checks' figures (seeds, memorisation)


class Events:
    """Progress callbacks; the CLI's live view overrides them. Default: silent."""

    def stage(self, text: str) -> None: ...
    def trial_started(self, role: str, seed: int) -> None: ...
    def trial_finished(self, role: str, seed: int, status: str, metric: float | None, cached: bool) -> None: ...
    def proposal_started(self, idx: int, title: str) -> None: ...
    def proposal_decided(self, record: ProposalRecord) -> None: ...


def files_hash(files: dict[str, str]) -> str:
    """One code version's identity: its files' paths and contents."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return h.hexdigest()


def slugify(text: str, limit: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug[:limit].rstrip("-") or "proposal")


def unified_diff(old: dict[str, str], new: dict[str, str]) -> str:
    """A git-style diff between two code versions (the one diff of a proposal's record and report)."""
    chunks = []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        lines = difflib.unified_diff((a or "").splitlines(keepends=True), (b or "").splitlines(keepends=True),
                                     fromfile=f"a/{path}" if a is not None else "/dev/null",
                                     tofile=f"b/{path}" if b is not None else "/dev/null")
        text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
        chunks.append(f"diff --git a/{path} b/{path}\n" + text)
    return "".join(chunks)
