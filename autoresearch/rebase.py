"""Moving a change drafted against one incumbent onto a newer one (pipelining, autoresearch.pipeline).

A proposal drafted ahead was written while an earlier one was still being judged; if that one is
accepted, the incumbent moves under the draft. Judging the draft's files as they are would silently
undo the accepted change (a whole-file reply carries the old file), so the draft's change is
re-applied with a three-way merge, file by file: base = the incumbent it was drafted against,
ours = the draft, theirs = the incumbent now. A file only one side touched takes that side; a file
both touched is merged by ``git merge-file``; any conflict makes the proposal ``stale`` and it is
recorded, never judged. A clean merge is new code the agent's smoke run never saw: the gate's
trials judge it like any other (a crash ends it ``crash``), and its report says it was rebased.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from autoresearch.reasons import ProposalRejected, Reason


class StaleProposal(ProposalRejected):
    reason = Reason.STALE


def merge_file(base: str, ours: str, theirs: str) -> str | None:
    """``git merge-file``'s three-way merge of one text file; None on a conflict."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-merge-") as tmp:
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            paths.append(str(path))
        # Exit status: 0 clean, >0 the number of conflicts, <0 an error (treated as a conflict).
        out = subprocess.run(["git", "merge-file", "-p", "-q", *paths], capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else None


def rebase(base: dict[str, str], drafted: dict[str, str], onto: dict[str, str], *,
           moved_by: str = "a later acceptance") -> tuple[dict[str, str], list[str]]:
    """The change base -> drafted applied to ``onto``: (files, the paths that needed a real merge).
    Raises StaleProposal when a file both sides changed does not merge cleanly."""
    out = dict(onto)
    merged, conflicts = [], []
    for path in sorted(set(base) | set(drafted) | set(onto)):
        b, d, o = base.get(path), drafted.get(path), onto.get(path)
        if d == b or d == o:  # the draft left it alone, or both made the same change
            continue
        if o == b:  # only the draft changed it
            if d is None:
                out.pop(path, None)
            else:
                out[path] = d
            continue
        text = None if None in (b, d, o) else merge_file(b, d, o)  # type: ignore[arg-type]
        if text is None:
            conflicts.append(path)
        else:
            out[path] = text
            merged.append(path)
    if conflicts:
        raise StaleProposal(f"drafted against an older incumbent, and its change to {', '.join(conflicts)} "
                            f"conflicts with {moved_by} (three-way merge); not judged on stale code")
    return out, merged
