"""Parsing proposals and applying their edits (pure functions, no disk)."""

import json

import pytest

from autoresearch.agent.proposal import (ApplyFailed, InvalidProposal, NotEditable, Proposal, Edit, apply_proposal,
                                         normalise_path, parse_proposal_json, parse_reply)

FILES = {"optim.py": "import torch\n\ndef build(p):\n    return torch.optim.SGD(p, lr=0.01)\n",
         "train.py": "x = 1\ny = 2\n"}
EDITABLE = ["optim.py", "train.py"]
OBJ = {"title": "Adam", "hypothesis": "faster", "edits": [{"path": "optim.py", "search": "torch.optim.SGD(p, lr=0.01)",
                                                          "replace": "torch.optim.Adam(p, lr=1e-3)"}]}


def test_json_object_and_fenced_json_and_prose():
    assert parse_reply(json.dumps(OBJ)).title == "Adam"
    assert parse_reply("Here you go:\n```json\n" + json.dumps(OBJ) + "\n```\nthanks").edits[0].path == "optim.py"
    assert parse_reply("I propose " + json.dumps(OBJ) + " as the change").title == "Adam"


def test_search_replace_blocks_fallback():
    reply = ("Title: Use Adam\nHypothesis: adaptive steps\n\noptim.py\n```python\n<<<<<<< SEARCH\n"
             "    return torch.optim.SGD(p, lr=0.01)\n=======\n    return torch.optim.Adam(p, lr=1e-3)\n"
             ">>>>>>> REPLACE\n```\n")
    p = parse_reply(reply)
    assert p.title == "Use Adam" and p.edits[0].path == "optim.py"
    new = apply_proposal(FILES, p, EDITABLE)
    assert "Adam(p, lr=1e-3)" in new["optim.py"]


@pytest.mark.parametrize("text,needle", [
    ("", "empty"), ("not json at all", "no proposal"), ("[1, 2]", "no proposal"),
    (json.dumps({"title": "x", "hypothesis": "y", "edits": []}), "no edits"),
    (json.dumps({"title": "", "hypothesis": "y", "edits": [{"path": "a", "search": "", "replace": ""}]}), "title"),
    (json.dumps({"title": "x", "edits": "nope"}), "list"),
    (json.dumps({"title": "x", "hypothesis": "", "edits": [{"path": 3, "search": "", "replace": ""}]}), "strings"),
    (json.dumps({"title": "x", "hypothesis": "", "edits": [{"path": "a", "search": "", "replace": ""}] * 51}), "at most"),
    (json.dumps({"title": "x", "hypothesis": "", "edits": [], "extra": 1}), "unknown"),
])
def test_malformed_replies_are_invalid(text, needle):
    with pytest.raises(InvalidProposal, match=needle):
        parse_reply(text) if not text.startswith("{") else parse_proposal_json(text)


@pytest.mark.parametrize("path", ["../harness/run_train.py", "/etc/passwd", "a/../../x.py", "~/x", "C:\\x.py",
                                  "..", "./../optim.py", "x\x00.py"])
def test_paths_outside_the_repo_are_not_editable(path):
    with pytest.raises(NotEditable):
        apply_proposal(FILES, Proposal("t", "h", (Edit(path, "", "print(1)"),)), EDITABLE)


def test_non_editable_file_inside_repo_is_rejected():
    with pytest.raises(NotEditable, match="editable set"):
        apply_proposal(FILES, Proposal("t", "h", (Edit("spec.toml", "", "x"),)), EDITABLE)


def test_normalised_paths_inside_the_set_are_allowed():
    assert normalise_path("./optim.py") == "optim.py"
    new = apply_proposal(FILES, Proposal("t", "h", (Edit("./train.py", "x = 1", "x = 3"),)), EDITABLE)
    assert new["train.py"].startswith("x = 3")


def test_search_must_occur_exactly_once():
    with pytest.raises(ApplyFailed, match="does not occur"):
        apply_proposal(FILES, Proposal("t", "h", (Edit("optim.py", "lr=0.5", "lr=0.1"),)), EDITABLE)
    twice = {"train.py": "a\na\n"}
    with pytest.raises(ApplyFailed, match="2 times"):
        apply_proposal(twice, Proposal("t", "h", (Edit("train.py", "a", "b"),)), ["train.py"])


def test_trailing_whitespace_tolerance_and_no_op_edit():
    new = apply_proposal(FILES, Proposal("t", "h", (Edit("train.py", "x = 1   \ny = 2", "x = 5\ny = 6\n"),)), EDITABLE)
    assert new["train.py"] == "x = 5\ny = 6\n"
    with pytest.raises(ApplyFailed, match="change nothing"):
        apply_proposal(FILES, Proposal("t", "h", (Edit("train.py", "x = 1", "x = 1"),)), EDITABLE)


def test_apply_does_not_mutate_input_and_edits_chain():
    before = dict(FILES)
    p = Proposal("t", "h", (Edit("train.py", "x = 1", "x = 10"), Edit("train.py", "x = 10", "x = 11")))
    new = apply_proposal(FILES, p, EDITABLE)
    assert FILES == before and new["train.py"].startswith("x = 11")


def test_fingerprint_ignores_wording():
    a = parse_proposal_json(json.dumps(OBJ))
    b = parse_proposal_json(json.dumps(OBJ | {"title": "Other words", "hypothesis": "different"}))
    assert a.fingerprint() == b.fingerprint()
