"""Proposals: parse them and apply their edits to the incumbent's files, confined to the
benchmark's editable set.

A model may reply in one of two edit formats:
- search-replace: ``{"title", "hypothesis", "edits": [{"path", "search", "replace"}]}`` (also as
  aider-style ``<<<<<<< SEARCH`` / ``=======`` / ``>>>>>>> REPLACE`` blocks);
- whole-file: the complete new content of ONE editable file, which small models write far more
  reliably than exact search text. The agent asks for it fenced ('Title: ...', 'Hypothesis: ...',
  'File: optim.py', then a ```python block; ``whole_file_grammar`` constrains a llama.cpp server to
  that form), because code inside a JSON string needs escapes a 1.5B model gets wrong; the JSON
  shape ``{"title", "hypothesis", "file": {"path", "content"}}`` is accepted too. It becomes one
  edit with an empty search, which replaces the whole file, so the engine applies both formats
  the same way.

The pydantic models below are the one declared shape of a reply: they give the JSON schema for
constrained decoding, the validation and the parsing. ``Proposal`` and ``Edit`` are the plain
values the engine applies, built only from a validated reply (or by trusted code).

Everything here is pure: text in, text out. Nothing touches the disk, so a hostile reply can at
worst be rejected; writing the result into a workspace is the engine's job. (Over 400 lines on
purpose: the formats, their tolerant parsing and the confined application are one contract, and
the limits that keep a hostile reply harmless are easier to check in one place.)
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from autoresearch.reasons import ProposalRejected, Reason

MAX_EDITS = 50
MAX_TEXT_CHARS = 200_000  # per search/replace text, and per whole-file content
MAX_TITLE_CHARS = 200
MAX_HYPOTHESIS_CHARS = 4000

EditFormat = Literal["whole-file", "search-replace"]
EDIT_FORMATS: tuple[EditFormat, ...] = ("whole-file", "search-replace")
# "auto" picks whole-file only when every editable file is at most this long (about 900 tokens of
# code: the reply repeats the whole file, so it must fit the reply's token budget) ...
WHOLE_FILE_MAX_CHARS = 3000
# ... and the model is small: a parameter count in its name of at most this many billions
# (qwen2.5-coder-1.5b, llama-3.2-3b, qwen2.5-coder-7b, llama3:8b), or no name (the embedded default).
SMALL_MODEL_MAX_BILLIONS = 8.0


class InvalidProposal(ProposalRejected):
    reason = Reason.INVALID_PROPOSAL


class NotEditable(ProposalRejected):
    reason = Reason.NOT_EDITABLE


class ApplyFailed(ProposalRejected):
    reason = Reason.APPLY_FAILED


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
    # The agent's own verdict before any trial (a static check or smoke run that still fails after
    # its repair rounds, a repeat of an earlier change): the engine records the change with this
    # reason and its diff, and never trains it.
    precheck: "ProposalRejected | None" = field(default=None, compare=False, repr=False)
    # What the agent itself changed in the reply before any check (agent.checks.at_own_defaults),
    # said in the proposal's report beside the model's claims.
    notes: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"title": self.title, "hypothesis": self.hypothesis, "edits": [asdict(e) for e in self.edits]}

    def fingerprint(self) -> str:
        """Identity of the change itself (not its wording), to spot a repeated proposal."""
        return hashlib.sha256(json.dumps([asdict(e) for e in self.edits], sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- the reply's shape
# Limits are validators, not schema keywords: llama.cpp's grammar converter expands a maxLength or
# maxItems into one rule per repetition, and the schema only needs to give the decoder the shape.


def _valid_unicode(value: str) -> str:
    """Lone surrogates (from JSON escapes like \\ud800) cannot be written to git, SQLite or reports."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (lone surrogate)") from None
    return value


def _bounded(value: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"is larger than {MAX_TEXT_CHARS} characters")
    return value


def _title(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    return value.strip()[:MAX_TITLE_CHARS]


def _hypothesis(value: str) -> str:
    return value.strip()[:MAX_HYPOTHESIS_CHARS]


def _edit_count(value: object) -> object:
    # Before the items are validated: a reply with thousands of edits is refused without reading them.
    if isinstance(value, list):
        if not value:
            raise ValueError("is empty: the proposal has no edits")
        if len(value) > MAX_EDITS:
            raise ValueError(f"has {len(value)} edits; at most {MAX_EDITS} are accepted")
    return value


_OUTER_FENCE = re.compile(r"\A\s*```[^\n]*\n(.*?)\n?```\s*\Z", re.DOTALL)


def _file_content(value: str) -> str:
    # Small models often wrap the file in a fence even inside JSON; the fence is not code.
    m = _OUTER_FENCE.match(value)
    if m:
        value = m.group(1)
    if not value.strip():
        raise ValueError("is empty; send the complete new file")
    # One final newline, so a reply that repeats the file without it is not a change.
    return value.rstrip("\n") + "\n"


Text = Annotated[str, AfterValidator(_valid_unicode)]
EditText = Annotated[str, AfterValidator(_bounded), AfterValidator(_valid_unicode)]
Title = Annotated[str, AfterValidator(_valid_unicode), AfterValidator(_title)]
Hypothesis = Annotated[str, AfterValidator(_valid_unicode), AfterValidator(_hypothesis)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EditReply(_Strict):
    path: Text
    search: EditText = ""  # empty: create the file, or replace the whole editable file
    replace: EditText


class SearchReplaceReply(_Strict):
    """The search-replace format: exact text copied from a file, and its replacement."""

    title: Title
    hypothesis: Hypothesis = ""
    edits: Annotated[list[EditReply], BeforeValidator(_edit_count)]

    def to_proposal(self) -> Proposal:
        return Proposal(title=self.title, hypothesis=self.hypothesis,
                        edits=tuple(Edit(path=e.path, search=e.search, replace=e.replace) for e in self.edits))


class FileReply(_Strict):
    path: Text
    content: Annotated[EditText, AfterValidator(_file_content)]


class WholeFileReply(_Strict):
    """The whole-file format: the complete new content of one editable file."""

    title: Title
    hypothesis: Hypothesis = ""
    file: FileReply

    def to_proposal(self) -> Proposal:
        return Proposal(title=self.title, hypothesis=self.hypothesis,
                        edits=(Edit(path=self.file.path, search="", replace=self.file.content),))


def _decoding_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema, flattened for grammar converters: nested models inlined (no $ref),
    no titles or defaults, and every field required (the decoder always writes each one; the parser
    still tolerates a missing hypothesis or search from an unconstrained reply)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def simplify(node: dict) -> dict:
        if "$ref" in node:
            return simplify(defs[node["$ref"].rsplit("/", 1)[-1]])
        out = {k: v for k, v in node.items() if k not in ("title", "default", "description")}
        if "items" in out:
            out["items"] = simplify(out["items"])
        if "properties" in out:
            out["properties"] = {name: simplify(sub) for name, sub in out["properties"].items()}
            out["required"] = list(out["properties"])
        return out

    return simplify(schema)


# JSON schema of one reply per edit format, for servers with schema-constrained JSON
# (``response_format={"type": "json_object", "schema": ...}`` on llama.cpp).
PROPOSAL_SCHEMA: dict = _decoding_schema(SearchReplaceReply)
WHOLE_FILE_SCHEMA: dict = _decoding_schema(WholeFileReply)


def proposal_schema(edit_format: EditFormat) -> dict:
    return {"search-replace": PROPOSAL_SCHEMA, "whole-file": WHOLE_FILE_SCHEMA}[edit_format]


def whole_file_grammar(paths: list[str]) -> str:
    """A GBNF grammar (llama.cpp's ``grammar`` request field) for a whole-file reply in its fenced
    form: 'Title: ...', 'Hypothesis: ...', 'File: <one of paths>', then the file in a ```python
    fence. Code inside a JSON string must escape every quote and newline, which small models get
    wrong; in a fence it is written as it is. An empty ``paths`` (editable globs) allows any path."""
    def literal(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    path_rule = " | ".join(literal(p) for p in sorted(paths)) if paths else "[^\\n`]+"
    return "\n".join([
        'root ::= "Title: " line "\\n" "Hypothesis: " line "\\n" "File: " path "\\n" "```python\\n" code "\\n```"',
        "line ::= [^\\n]+",
        f"path ::= {path_rule}",
        'code ::= ( [^`] | "`" [^`] | "``" [^`] )*',
    ]) + "\n"


def _where(loc: tuple) -> str:
    """'title', edit 2: path, file.content: where in the reply an error is, in the reply's terms."""
    if len(loc) >= 2 and loc[0] == "edits" and isinstance(loc[1], int):
        return f"edit {loc[1]}" + (f": {'.'.join(map(str, loc[2:]))}" if len(loc) > 2 else "")
    return "'" + ".".join(map(str, loc)) + "'" if loc else "the proposal"


def _explain(exc: ValidationError, model: type[BaseModel]) -> str:
    """One short message per problem, never echoing the input (it can be megabytes)."""
    problems: list[str] = []
    unknown: dict[tuple, list[str]] = {}
    for err in exc.errors(include_url=False, include_input=False):
        loc, kind = tuple(err["loc"]), err["type"]
        if kind == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        where = _where(loc)
        if kind == "value_error":
            text = f"{where} {err['ctx']['error']}"
        elif kind == "missing":
            text = f"{_where(loc[:-1])}: missing '{loc[-1]}'" if len(loc) > 1 else f"missing '{loc[0]}'"
        elif kind in ("string_type", "string_unicode") and len(loc) == 3 and loc[0] == "edits":
            text = f"edit {loc[1]}: path, search and replace must all be strings"
        elif kind == "string_type":
            text = f"{where} must be a string"
        elif kind == "list_type":
            text = f"{where} must be a list"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            text = f"{where} is not an object"
        else:
            text = f"{where}: {err['msg']}"
        if text not in problems:
            problems.append(text)
    for loc, names in unknown.items():
        if not loc:
            expected = ", ".join(model.model_fields)
            hint = "; a whole-file reply has 'file' instead of 'edits'" if "file" in names else ""
            problems.insert(0, f"unknown field(s) {sorted(names)}; expected {expected}{hint}")
        else:
            problems.insert(0, f"{_where(loc)} has unknown field(s) {sorted(names)}")
    return "; ".join(problems[:4]) + (f" (and {len(problems) - 4} more)" if len(problems) > 4 else "")


def proposal_from_object(obj: object) -> Proposal:
    """Validate a decoded reply against its format's model (whole-file when it has 'file' and no
    'edits', else search-replace) and return the proposal it describes."""
    if not isinstance(obj, dict):
        raise InvalidProposal(f"a proposal must be a JSON object, got {type(obj).__name__}")
    model: type[SearchReplaceReply | WholeFileReply] = \
        WholeFileReply if "file" in obj and "edits" not in obj else SearchReplaceReply
    try:
        return model.model_validate(obj).to_proposal()
    except ValidationError as exc:
        raise InvalidProposal(_explain(exc, model)) from None


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
# A whole file: a line naming its path ("optim.py", "**optim.py**", "File: `optim.py`", "Here is
# the new optim.py:"), then a fence holding the complete new content.
_FILE_FENCE = re.compile(
    r"^(?P<label>[ \t]*\S[^\n]*)\n(?:[ \t]*\n)*[ \t]*```(?P<lang>[^\n`]*)\n(?P<content>.*?)^[ \t]*```[ \t]*$",
    re.DOTALL | re.MULTILINE)
_PATH_TOKEN = re.compile(r"(?<![\w./-])\w[\w./-]*\.(?:py|pyi|toml|ya?ml|json|cfg|ini|txt|md|sh)(?![\w/-])")
_ANY_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)


def _claim_line(text: str, name: str) -> str | None:
    """A 'Title: ...' / '**Hypothesis:** ...' line outside any fence (a file may contain such words)."""
    m = re.search(rf"(?im)^[ \t]*(?:#+[ \t]*)?(?:\*\*)?{name}(?:\*\*)?[ \t]*:(?:\*\*)?[ \t]*(.+)$",
                  _ANY_FENCE.sub("", text))
    return m.group(1).strip().strip("*").strip() if m else None


def _whole_file_fences(text: str) -> list[tuple[str, str]]:
    """(path, content) of each fence whose preceding line names exactly one file path."""
    found = []
    for m in _FILE_FENCE.finditer(text):
        if m.group("lang").strip().lower() == "json":
            continue
        paths = set(_PATH_TOKEN.findall(m.group("label")))
        if len(paths) == 1:
            found.append((paths.pop(), m.group("content")))
    return found


def parse_reply(text: str) -> Proposal:
    """Tolerant parsing of an LLM reply, in either edit format: a JSON object, a ```json fence,
    SEARCH/REPLACE blocks, or one file's path followed by its complete new content in a fence."""
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
    title = _claim_line(text, "title")
    hypothesis = _claim_line(text, "hypothesis") or ""
    blocks = list(_SEARCH_BLOCK.finditer(text))
    if blocks:
        edits = []
        for m in blocks[:MAX_EDITS + 1]:
            path = m.group("path").strip().strip("`*# ").strip()
            edits.append({"path": path, "search": m.group("search"), "replace": m.group("replace")})
        return proposal_from_object({"title": title or "untitled SEARCH/REPLACE proposal", "hypothesis": hypothesis,
                                     "edits": edits})
    files = _whole_file_fences(text)
    if len(files) > 1:
        raise InvalidProposal(f"the reply holds {len(files)} fenced files ({', '.join(p for p, _ in files[:5])}); "
                              "a whole-file reply carries the complete new content of exactly one file")
    if files:
        (path, content), = files
        return proposal_from_object({"title": title or "untitled whole-file proposal", "hypothesis": hypothesis,
                                     "file": {"path": path, "content": content}})
    if text.count("```") % 2:
        # Typically a whole file cut off by the reply's token limit: say so rather than "nothing found".
        errors.insert(0, "a ``` block is never closed (was the reply cut off?)")
    raise InvalidProposal("no proposal found in the reply (expected a JSON object, a ```json block, SEARCH/REPLACE "
                          "blocks, or a file's path followed by its complete new content in a ```python block)"
                          + (f"; {errors[0]}" if errors else ""))


# --------------------------------------------------------------------------- choosing a format

_SIZE_IN_NAME = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)b(?![a-z])", re.IGNORECASE)


def is_small_model(model_name: str | None) -> bool:
    """True for no name (the embedded default, a 1.5B model) or a name carrying a parameter count
    of at most SMALL_MODEL_MAX_BILLIONS ("qwen2.5-coder-1.5b-instruct", "llama3:8b"; not "8x7b",
    a mixture of 47B). A name without a size (gpt-4o-mini) is taken as a capable remote model."""
    if not model_name:
        return True
    sizes = [float(s) for s in _SIZE_IN_NAME.findall(model_name.rsplit("/", 1)[-1])]
    return bool(sizes) and max(sizes) <= SMALL_MODEL_MAX_BILLIONS


def choose_edit_format(files: dict[str, str], editable: list[str], model_name: str | None,
                       override: str | None = None) -> EditFormat:
    """The edit format to ask for: ``override`` when it names one ("whole-file", "search-replace");
    otherwise ("auto" or None) whole-file for a small model when every editable file is at most
    WHOLE_FILE_MAX_CHARS long, search-replace for anything else (a capable model, or files too
    long to repeat in a reply)."""
    if override in EDIT_FORMATS:
        return override  # type: ignore[return-value]
    if override not in (None, "auto"):
        raise ValueError(f"unknown edit format {override!r}; expected auto, {' or '.join(EDIT_FORMATS)}")
    longest = max((len(text) for path, text in files.items() if is_editable(path, editable)), default=0)
    return "whole-file" if is_small_model(model_name) and longest <= WHOLE_FILE_MAX_CHARS else "search-replace"


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
