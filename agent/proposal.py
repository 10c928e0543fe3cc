"""Proposals: parse them (JSON object, fenced JSON, or aider-style SEARCH/REPLACE blocks) and
apply their edits to the incumbent's files, confined to the benchmark's editable set.

Everything here is pure: text in, text out. Nothing touches the disk, so a hostile reply can at
worst be rejected; writing the result into a workspace is the engine's job.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
from dataclasses import asdict, dataclass, field

MAX_EDITS = 50
MAX_TEXT_CHARS = 200_000  # per search/replace text
MAX_TITLE_CHARS = 200
MAX_HYPOTHESIS_CHARS = 4000

# JSON schema of one proposal object, given to servers that support schema-constrained JSON.
PROPOSAL_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "hypothesis": {"type": "string"},
        "edits": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "search": {"type": "string"},
                               "replace": {"type": "string"}},
                "required": ["path", "search", "replace"],
            },
        },
    },
    "required": ["title", "hypothesis", "edits"],
}


class ProposalRejected(ValueError):
    """A proposal that cannot be trained; ``reason`` is the report's reason code."""

    reason = "invalid_proposal"

    def __init__(self, message: str):
        super().__init__(message)


class InvalidProposal(ProposalRejected):
    reason = "invalid_proposal"


class NotEditable(ProposalRejected):
    reason = "not_editable"


class ApplyFailed(ProposalRejected):
    reason = "apply_failed"


@dataclass(frozen=True)
class Edit:
    path: str
    search: str
    replace: str


@dataclass(frozen=True)
class Proposal:
    title: str
    hypothesis: str
    edits: tuple[Edit, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"title": self.title, "hypothesis": self.hypothesis, "edits": [asdict(e) for e in self.edits]}

    def fingerprint(self) -> str:
        """Identity of the change itself (not its wording), to spot a repeated proposal."""
        import hashlib

        return hashlib.sha256(json.dumps([asdict(e) for e in self.edits], sort_keys=True).encode()).hexdigest()


def _check_text(value: str, what: str) -> None:
    """Lone surrogates (from JSON escapes like \\ud800) cannot be written to git, SQLite or reports."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidProposal(f"{what} is not valid Unicode text (lone surrogate)") from None


def proposal_from_object(obj: object) -> Proposal:
    if not isinstance(obj, dict):
        raise InvalidProposal(f"a proposal must be a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - {"title", "hypothesis", "edits"}
    if unknown:
        raise InvalidProposal(f"unknown field(s) {sorted(unknown)}; expected title, hypothesis, edits")
    title, hypothesis, edits = obj.get("title"), obj.get("hypothesis", ""), obj.get("edits")
    if not isinstance(title, str) or not title.strip():
        raise InvalidProposal("missing or empty 'title'")
    if not isinstance(hypothesis, str):
        raise InvalidProposal("'hypothesis' must be a string")
    _check_text(title, "'title'")
    _check_text(hypothesis, "'hypothesis'")
    if not isinstance(edits, list):
        raise InvalidProposal("'edits' must be a list")
    if not edits:
        raise InvalidProposal("the proposal has no edits")
    if len(edits) > MAX_EDITS:
        raise InvalidProposal(f"{len(edits)} edits; at most {MAX_EDITS} are accepted")
    parsed = []
    for i, e in enumerate(edits):
        if not isinstance(e, dict):
            raise InvalidProposal(f"edit {i} is not an object")
        extra = set(e) - {"path", "search", "replace"}
        if extra:
            raise InvalidProposal(f"edit {i} has unknown field(s) {sorted(extra)}")
        path, search, replace = e.get("path"), e.get("search", ""), e.get("replace")
        if not isinstance(path, str) or not isinstance(search, str) or not isinstance(replace, str):
            raise InvalidProposal(f"edit {i}: path, search and replace must all be strings")
        if len(search) > MAX_TEXT_CHARS or len(replace) > MAX_TEXT_CHARS:
            raise InvalidProposal(f"edit {i} is larger than {MAX_TEXT_CHARS} characters")
        for value, what in ((path, "path"), (search, "search"), (replace, "replace")):
            _check_text(value, f"edit {i}: {what}")
        parsed.append(Edit(path=path, search=search, replace=replace))
    return Proposal(title=title.strip()[:MAX_TITLE_CHARS], hypothesis=hypothesis.strip()[:MAX_HYPOTHESIS_CHARS],
                    edits=tuple(parsed))


def parse_proposal_json(text: str) -> Proposal:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidProposal(f"not valid JSON: {exc}") from None
    return proposal_from_object(obj)


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.DOTALL)
_SEARCH_BLOCK = re.compile(
    r"^(?P<path>[^\n`]*?)\s*\n(?:```[^\n]*\n)?<{5,9} SEARCH[^\n]*\n(?P<search>.*?)^={5,9}[ \t]*\n(?P<replace>.*?)^>{5,9} REPLACE",
    re.DOTALL | re.MULTILINE)


def parse_reply(text: str) -> Proposal:
    """Tolerant parsing of an LLM reply: a JSON object, a ```json fence, or SEARCH/REPLACE blocks."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidProposal("empty reply")
    stripped = text.strip()
    errors: list[str] = []
    if stripped.startswith("{"):
        try:
            return parse_proposal_json(stripped)
        except InvalidProposal as exc:
            errors.append(str(exc))
    for block in _FENCE.findall(text):
        if block.strip().startswith("{"):
            try:
                return parse_proposal_json(block.strip())
            except InvalidProposal as exc:
                errors.append(str(exc))
    # A JSON object embedded in prose.
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end and not stripped.startswith("{"):
        try:
            return parse_proposal_json(text[start:end + 1])
        except InvalidProposal as exc:
            errors.append(str(exc))
    blocks = list(_SEARCH_BLOCK.finditer(text))
    if blocks:
        edits = []
        for m in blocks[:MAX_EDITS + 1]:
            path = m.group("path").strip().strip("`*# ").strip()
            edits.append({"path": path, "search": m.group("search"), "replace": m.group("replace")})
        title_match = re.search(r"(?im)^\s*(?:#+\s*)?title\s*:\s*(.+)$", text)
        hyp_match = re.search(r"(?im)^\s*(?:#+\s*)?hypothesis\s*:\s*(.+)$", text)
        title = title_match.group(1).strip() if title_match else "untitled SEARCH/REPLACE proposal"
        return proposal_from_object({"title": title, "hypothesis": hyp_match.group(1).strip() if hyp_match else "",
                                     "edits": edits})
    raise InvalidProposal("no proposal found in the reply (expected a JSON object, a ```json block or "
                          "SEARCH/REPLACE blocks)" + (f"; {errors[0]}" if errors else ""))


# --------------------------------------------------------------------------- applying


def normalise_path(path: str) -> str:
    """A clean relative POSIX path, or NotEditable for anything that could leave the repo."""
    if not path or "\x00" in path or "\\" in path:
        raise NotEditable(f"invalid path {path!r}")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path) or path.startswith("~"):
        raise NotEditable(f"absolute path {path!r} is outside the editable set")
    norm = posixpath.normpath(path)
    if norm.startswith("..") or "/../" in f"/{norm}/" or norm in (".", ""):
        raise NotEditable(f"path {path!r} leaves the repository")
    return norm.removeprefix("./")


def is_editable(path: str, editable: list[str]) -> bool:
    return any(path == pattern or fnmatch.fnmatchcase(path, pattern) for pattern in editable)


def _find_unique(haystack: str, needle: str) -> tuple[int, int] | None:
    """Exact unique match, else a unique match ignoring trailing whitespace on each line."""
    count = haystack.count(needle)
    if count == 1:
        i = haystack.index(needle)
        return i, i + len(needle)
    if count > 1:
        raise ApplyFailed(f"search text occurs {count} times; it must occur exactly once")
    lines = haystack.splitlines(keepends=True)
    want = [line.rstrip() for line in needle.splitlines()]
    while want and not want[-1]:
        want.pop()
    if not want:
        return None
    hits = []
    for i in range(len(lines) - len(want) + 1):
        if all(lines[i + j].rstrip() == want[j] for j in range(len(want))):
            hits.append(i)
    if len(hits) > 1:
        raise ApplyFailed(f"search text occurs {len(hits)} times (ignoring trailing spaces); it must occur once")
    if not hits:
        return None
    start = sum(len(line) for line in lines[:hits[0]])
    end = start + sum(len(line) for line in lines[hits[0]:hits[0] + len(want)])
    return start, end


def apply_proposal(files: dict[str, str], proposal: Proposal, editable: list[str]) -> dict[str, str]:
    """Return the new file set; raise NotEditable or ApplyFailed, never touching ``files``."""
    new = dict(files)
    for i, edit in enumerate(proposal.edits):
        path = normalise_path(edit.path)
        if not is_editable(path, editable):
            raise NotEditable(f"edit {i} touches {path}, which is not in the editable set ({', '.join(editable)})")
        if edit.search == "":
            # Create a new file, or replace a whole editable file.
            new[path] = edit.replace
            continue
        if path not in new:
            raise ApplyFailed(f"edit {i}: {path} does not exist (use an empty search to create it)")
        span = _find_unique(new[path], edit.search)
        if span is None:
            raise ApplyFailed(f"edit {i}: the search text does not occur in {path}")
        new[path] = new[path][:span[0]] + edit.replace + new[path][span[1]:]
    if new == files:
        raise ApplyFailed("the edits change nothing")
    return new
