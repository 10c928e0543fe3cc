"""Property tests of edit parsing and application: whatever a model replies, the result is either
a proposal confined to the editable set or a rejection; never another exception, never a write
outside the workspace (the engine's workspace writer is fed hostile paths too)."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoresearch.agent.proposal import (
    MAX_EDITS,
    NotEditable,
    Proposal,
    ProposalRejected,
    apply_proposal,
    is_editable,
    normalise_path,
    parse_reply,
)
from autoresearch.engine import RunEngine

EDITABLE = ["model.py", "optim.py", "train.py"]
FILES = {
    "model.py": "import torch.nn as nn\n\n\ndef build_model(i, o):\n    return nn.Linear(i, o)\n",
    "optim.py": "import torch\n\n\ndef build_optimizer(p, **kw):\n    return torch.optim.SGD(p, lr=0.01), None\n",
    "train.py": "def fit(model, x, y, **kw):\n    n = x.shape[0]\n    return {'final_loss': 0.0}\n",
    "README.md": "not editable\n",
}
HOSTILE_PARTS = ["..", ".", "", "/", "//", "\\", "~", "\x00", "model.py", "optim.py", "train.py", "harness",
                 "spec.toml", "data", "labels", "/etc/passwd", "C:", "..\\..", "%2e%2e", "\u2024\u2024", " ",
                 "model.py ", "*", "?", "[", "README.md", "sitecustomize.py", "\n", "x" * 300]

hostile_path = st.one_of(
    st.lists(st.sampled_from(HOSTILE_PARTS), min_size=1, max_size=6).map("/".join),
    st.sampled_from(EDITABLE),
    st.text(max_size=40),
)
fragments = st.one_of(st.sampled_from(["n = x.shape[0]", "import torch", "def fit(", "lr=0.01", "", "\n",
                                       "return", "    "]), st.text(max_size=60))
edit = st.fixed_dictionaries({"path": hostile_path, "search": fragments, "replace": st.text(max_size=80)})
proposal_obj = st.fixed_dictionaries(
    {"title": st.text(max_size=30), "hypothesis": st.text(max_size=30), "edits": st.lists(edit, max_size=5)})
json_reply = proposal_obj.map(json.dumps)
fenced_reply = st.tuples(st.text(max_size=40), json_reply).map(lambda t: f"{t[0]}\n```json\n{t[1]}\n```\n")
search_block = st.tuples(hostile_path, fragments, st.text(max_size=60)).map(
    lambda t: f"{t[0]}\n<<<<<<< SEARCH\n{t[1]}\n=======\n{t[2]}\n>>>>>>> REPLACE\n")
aider_reply = st.lists(search_block, min_size=1, max_size=4).map(lambda b: "title: x\n" + "".join(b))
whole_file_json = st.fixed_dictionaries(
    {"title": st.text(max_size=30), "hypothesis": st.text(max_size=30),
     "file": st.fixed_dictionaries({"path": hostile_path, "content": st.text(max_size=80)})}).map(json.dumps)
whole_file_fenced = st.tuples(hostile_path, st.text(max_size=80)).map(lambda t: f"{t[0]}\n```python\n{t[1]}\n```\n")
odd_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                        max_leaves=12).map(json.dumps)
replies = st.one_of(st.text(max_size=300), json_reply, fenced_reply, aider_reply, whole_file_json, whole_file_fenced,
                  odd_json,
                    st.binary(max_size=200).map(lambda b: b.decode("latin-1")))

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(reply: str) -> dict[str, str] | ProposalRejected:
    try:
        proposal = parse_reply(reply)
    except ProposalRejected as exc:
        return exc
    assert isinstance(proposal, Proposal)
    assert 1 <= len(proposal.edits) <= MAX_EDITS
    try:
        return apply_proposal(FILES, proposal, EDITABLE)
    except ProposalRejected as exc:
        return exc


def _write_workspace(tmp: Path, files: dict[str, str]) -> Path:
    return RunEngine.workspace(SimpleNamespace(run_dir=tmp), files, "ws")  # type: ignore[arg-type]


@SETTINGS
@given(reply=replies)
def test_any_reply_is_a_confined_proposal_or_a_rejection(reply):
    result = _outcome(reply)
    if isinstance(result, ProposalRejected):
        assert result.reason in ("invalid_proposal", "not_editable", "apply_failed")
        return
    changed = {p for p in set(result) | set(FILES) if result.get(p) != FILES.get(p)}
    assert changed, "an accepted edit must change something"
    for path in changed:
        assert is_editable(path, EDITABLE), path
        assert path == posixpath.normpath(path) and not path.startswith(("/", "..")), path
    assert result["README.md"] == FILES["README.md"]


@SETTINGS
@given(reply=st.one_of(json_reply, aider_reply, fenced_reply, whole_file_json, whole_file_fenced))
def test_applied_replies_write_only_inside_the_workspace(reply):
    result = _outcome(reply)
    if isinstance(result, ProposalRejected):
        return
    with tempfile.TemporaryDirectory() as tmp:
        _check_written(Path(tmp), result)


# Content a fence can carry: no line that closes the fence, no SEARCH/REPLACE markers, and not
# itself wrapped in a fence (which the parser unwraps).
file_content = st.text(min_size=1, max_size=200).filter(
    lambda c: c.strip() and "```" not in c and "<<<<<<<" not in c and "=======" not in c)


def _whole_file_replies(path: str, content: str) -> list[str]:
    return [json.dumps({"title": "t", "hypothesis": "h", "file": {"path": path, "content": content}}),
            f"Title: t\nHypothesis: h\n\n{path}\n```python\n{content}\n```\n"]


@SETTINGS
@given(path=st.sampled_from(EDITABLE), content=file_content)
def test_whole_file_reply_applies_to_exactly_that_content(path, content):
    for reply in _whole_file_replies(path, content):
        proposal = parse_reply(reply)
        assert (proposal.title, proposal.hypothesis) == ("t", "h")
        try:
            result = apply_proposal(FILES, proposal, EDITABLE)
        except ProposalRejected as exc:
            assert "change nothing" in str(exc) and FILES[path] == content.rstrip("\n") + "\n"
            continue
        # The file's new text is the content (ending in one newline), and nothing else moved.
        assert result[path] == content.rstrip("\n") + "\n"
        assert {p: t for p, t in result.items() if p != path} == {p: t for p, t in FILES.items() if p != path}


@SETTINGS
@given(path=hostile_path, content=file_content)
def test_whole_file_reply_outside_the_editable_set_is_refused(path, content):
    proposal = parse_reply(json.dumps({"title": "t", "file": {"path": path, "content": content}}))
    try:
        inside = is_editable(normalise_path(path), EDITABLE)
    except NotEditable:
        inside = False
    if not inside:
        with pytest.raises(NotEditable):
            apply_proposal(FILES, proposal, EDITABLE)
        return
    result = apply_proposal(FILES, proposal, EDITABLE)
    assert set(result) == set(FILES) and result[normalise_path(path)] == content.rstrip("\n") + "\n"


def _check_written(root: Path, result: dict[str, str]) -> None:
    sentinel = root / "outside"
    sentinel.mkdir()
    ws = _write_workspace(root / "run", result)
    written = {str(p.relative_to(ws)) for p in ws.rglob("*") if p.is_file()}
    assert written == set(result)
    assert list(sentinel.iterdir()) == []
    assert sorted(os.listdir(root)) == ["outside", "run"]


@SETTINGS
@given(files=st.dictionaries(hostile_path, st.text(max_size=20), min_size=1, max_size=4))
def test_workspace_writer_refuses_hostile_paths(files):
    with tempfile.TemporaryDirectory() as tmp:
        _check_hostile(Path(tmp), files)


def _check_hostile(root: Path, files: dict[str, str]) -> None:
    run = root / "run"
    run.mkdir()
    try:
        ws = _write_workspace(run, files)
    except (ValueError, OSError):  # refused, or the OS refused (e.g. a name over 255 bytes)
        pass
    else:
        for p in ws.rglob("*"):
            assert p.resolve().is_relative_to(ws.resolve())
    outside = [p for p in root.rglob("*") if not p.resolve().is_relative_to(run.resolve())]
    assert outside == []


@pytest.mark.parametrize("path", ["../evil.py", "/tmp/evil.py", "a/../../evil.py", "model.py/../../evil.py", "",
                                  ".", "sub/../..", "\x00"])
def test_workspace_writer_examples(tmp_path, path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ValueError):
        _write_workspace(run, {path: "x = 1\n"})
    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert not Path("/tmp/evil.py").exists()
