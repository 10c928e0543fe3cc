"""Parsing proposals and applying their edits (pure functions, no disk)."""

import json

import pytest

from conftest import REPO_ROOT
from autoresearch.agent.proposal import (PROPOSAL_SCHEMA, WHOLE_FILE_MAX_CHARS, WHOLE_FILE_SCHEMA, ApplyFailed,
                                         InvalidProposal, NotEditable, Proposal, Edit, SearchReplaceReply,
                                         WholeFileReply, apply_proposal, choose_edit_format, is_small_model,
                                         normalise_path, parse_proposal_json, parse_reply, proposal_schema)

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


# --------------------------------------------------------------------------- the declared shape


def test_schemas_are_flat_and_ask_for_every_field():
    """Given to llama.cpp as response_format {"type": "json_object", "schema": ...}: no $ref, no
    length limits (its grammar converter expands them rule by rule), unknown fields closed off."""
    edit = {"type": "object", "additionalProperties": False, "required": ["path", "search", "replace"],
            "properties": {"path": {"type": "string"}, "search": {"type": "string"}, "replace": {"type": "string"}}}
    assert PROPOSAL_SCHEMA == {"type": "object", "additionalProperties": False,
                               "required": ["title", "hypothesis", "edits"],
                               "properties": {"title": {"type": "string"}, "hypothesis": {"type": "string"},
                                              "edits": {"type": "array", "items": edit}}}
    assert WHOLE_FILE_SCHEMA == {"type": "object", "additionalProperties": False,
                                 "required": ["title", "hypothesis", "file"],
                                 "properties": {"title": {"type": "string"}, "hypothesis": {"type": "string"},
                                                "file": {"type": "object", "additionalProperties": False,
                                                         "required": ["path", "content"],
                                                         "properties": {"path": {"type": "string"},
                                                                        "content": {"type": "string"}}}}}
    assert proposal_schema("search-replace") is PROPOSAL_SCHEMA and proposal_schema("whole-file") is WHOLE_FILE_SCHEMA


def test_schema_fields_are_the_models_fields():
    assert list(PROPOSAL_SCHEMA["properties"]) == list(SearchReplaceReply.model_fields)
    assert list(WHOLE_FILE_SCHEMA["properties"]) == list(WholeFileReply.model_fields)


def test_to_dict_round_trips_through_the_model():
    """What the engine stores (edits_json) reads back through the same model, whole-file ones too."""
    p = parse_reply(json.dumps(OBJ))
    assert parse_proposal_json(json.dumps(p.to_dict())) == p
    whole = parse_reply(json.dumps({"title": "t", "file": {"path": "optim.py", "content": "x = 1\n"}}))
    assert parse_proposal_json(json.dumps(whole.to_dict())) == whole


@pytest.mark.parametrize("obj,needle", [
    ({"title": True, "hypothesis": "", "edits": OBJ["edits"]}, "'title' must be a string"),
    ({"title": "x", "hypothesis": ["y"], "edits": OBJ["edits"]}, "'hypothesis' must be a string"),
    ({"title": "   ", "hypothesis": "", "edits": OBJ["edits"]}, "'title' is empty"),
    ({"hypothesis": "", "edits": OBJ["edits"]}, "missing 'title'"),
    ({"title": "x", "edits": [{"path": "a", "replace": "b", "mode": "w"}]}, "edit 0 has unknown field(s) ['mode']"),
    ({"title": "x", "edits": [{"path": "a", "search": "s"}]}, "edit 0: missing 'replace'"),
    ({"title": "x", "edits": [{"path": "a", "search": "", "replace": "\ud800"}]}, "edit 0: replace is not valid Unicode"),
    ({"title": "x", "edits": [OBJ["edits"][0], {"path": "a", "search": "s" * 200_001, "replace": ""}]},
     "edit 1: search is larger than 200000 characters"),
    ({"title": "x", "edits": OBJ["edits"], "file": {"path": "a", "content": "b"}}, "'file' instead of 'edits'"),
    ({"title": "x", "file": "optim.py"}, "'file' is not an object"),
    ({"title": "x", "file": {"path": "optim.py"}}, "'file': missing 'content'"),
    ({"title": "x", "file": {"path": "optim.py", "content": " \n"}}, "'file.content' is empty"),
    ({"title": "x", "file": {"path": "optim.py", "content": "x = 1\n", "mode": "a"}}, "'file' has unknown field(s)"),
    ({"title": "x", "file": {"path": "\ud800", "content": "x = 1\n"}}, "'file.path' is not valid Unicode"),
])
def test_strict_validation_messages(obj, needle):
    with pytest.raises(InvalidProposal) as info:
        parse_proposal_json(json.dumps(obj))  # a lone surrogate is written as the escape \\ud800
    assert needle in str(info.value)


def test_title_and_hypothesis_are_trimmed_to_their_caps():
    p = parse_proposal_json(json.dumps(OBJ | {"title": "  " + "t" * 500, "hypothesis": "h" * 5000 + "  "}))
    assert p.title == "t" * 200 and p.hypothesis == "h" * 4000


# --------------------------------------------------------------------------- whole-file replies

NEW_OPTIM = "import torch\n\ndef build(p):\n    return torch.optim.Adam(p, lr=1e-3)\n"


def test_whole_file_json_replaces_exactly_that_file():
    p = parse_reply(json.dumps({"title": "Adam", "hypothesis": "adaptive", "file": {"path": "optim.py",
                                                                                  "content": NEW_OPTIM}}))
    assert p.edits == (Edit("optim.py", "", NEW_OPTIM),) and p.hypothesis == "adaptive"
    assert apply_proposal(FILES, p, EDITABLE) == {"optim.py": NEW_OPTIM, "train.py": FILES["train.py"]}


def test_whole_file_content_fence_is_unwrapped_and_ends_in_one_newline():
    for content in ("```python\n" + NEW_OPTIM + "```", NEW_OPTIM.rstrip("\n"), NEW_OPTIM + "\n\n"):
        p = parse_proposal_json(json.dumps({"title": "Adam", "file": {"path": "optim.py", "content": content}}))
        assert p.edits[0].replace == NEW_OPTIM


def test_whole_file_that_repeats_the_file_changes_nothing():
    p = parse_proposal_json(json.dumps({"title": "same", "file": {"path": "optim.py", "content": FILES["optim.py"].rstrip()}}))
    with pytest.raises(ApplyFailed, match="change nothing"):
        apply_proposal(FILES, p, EDITABLE)


def test_whole_file_outside_the_editable_set_is_refused():
    for path in ("spec.toml", "../harness/run_train.py", "/etc/passwd"):
        p = parse_proposal_json(json.dumps({"title": "x", "file": {"path": path, "content": "print(1)"}}))
        with pytest.raises(NotEditable):
            apply_proposal(FILES, p, EDITABLE)


@pytest.mark.parametrize("label", ["optim.py", "**optim.py**", "### optim.py", "File: `optim.py`",
                                   "Here is the updated optim.py:", "`optim.py`:"])
def test_fenced_whole_file_after_its_path(label):
    reply = f"Title: Use Adam\nHypothesis: adaptive steps\n\n{label}\n```python\n{NEW_OPTIM}```\n"
    p = parse_reply(reply)
    assert (p.title, p.hypothesis, p.edits) == ("Use Adam", "adaptive steps", (Edit("optim.py", "", NEW_OPTIM),))


def test_fenced_whole_file_bold_claims_and_default_title():
    p = parse_reply(f"**Title:** Use Adam\n**Hypothesis:** faster\n\noptim.py\n```\n{NEW_OPTIM}```")
    assert (p.title, p.hypothesis) == ("Use Adam", "faster")
    assert parse_reply(f"optim.py\n```python\n{NEW_OPTIM}```").title == "untitled whole-file proposal"


def test_title_lines_inside_the_file_are_not_the_claims():
    content = 'TITLE: str = "x"\n' + NEW_OPTIM
    p = parse_reply(f"optim.py\n```python\n{content}```")
    assert p.title == "untitled whole-file proposal" and p.edits[0].replace == content


def test_fenced_whole_file_refusals():
    with pytest.raises(InvalidProposal, match="exactly one file"):
        parse_reply(f"optim.py\n```python\n{NEW_OPTIM}```\ntrain.py\n```python\nx = 3\n```\n")
    with pytest.raises(InvalidProposal, match="no proposal found"):
        parse_reply(f"Here is my change:\n```python\n{NEW_OPTIM}```")  # no path: nothing to guess from
    with pytest.raises(InvalidProposal, match="no proposal found"):
        parse_reply('optim.py\n```json\n{"not": "a proposal"\n```')
    with pytest.raises(InvalidProposal, match="never closed .was the reply cut off"):
        parse_reply(f"optim.py\n```python\n{NEW_OPTIM[:30]}")  # cut off by the token limit


def test_search_replace_blocks_win_over_a_fenced_file():
    reply = ("optim.py\n```python\n<<<<<<< SEARCH\n    return torch.optim.SGD(p, lr=0.01)\n=======\n"
             "    return torch.optim.SGD(p, lr=0.05)\n>>>>>>> REPLACE\n```\n")
    p = parse_reply(reply)
    assert p.edits[0].search == "    return torch.optim.SGD(p, lr=0.01)\n"


# --------------------------------------------------------------------------- choosing the format

DIGITS = {"model.py": "m" * 485, "optim.py": "o" * 579, "train.py": "t" * 1113, "spec.toml": "s" * 9000}


@pytest.mark.parametrize("name,small", [
    (None, True), ("", True), ("qwen2.5-coder-1.5b-instruct", True), ("Qwen2.5-Coder-0.5B-Instruct-GGUF", True),
    ("llama-3.2-3b-instruct", True), ("qwen2.5-coder:7b", True), ("llama3:8b", True),
    ("/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", True), ("Qwen/Qwen2.5-Coder-32B-Instruct", False),
    ("qwen2.5-72b", False), ("mixtral-8x7b", False), ("gpt-4o-mini", False), ("gpt-5", False),
    ("claude-sonnet-4", False)])
def test_small_models_by_name(name, small):
    assert is_small_model(name) is small


def test_choose_edit_format():
    editable = ["model.py", "optim.py", "train.py"]
    assert choose_edit_format(DIGITS, editable, "qwen2.5-coder-1.5b-instruct") == "whole-file"
    assert choose_edit_format(DIGITS, editable, None) == "whole-file"  # the embedded default
    assert choose_edit_format(DIGITS, editable, "gpt-4o-mini") == "search-replace"
    # A non-editable file's size does not count; an editable one over the threshold does.
    big = DIGITS | {"model.py": "m" * (WHOLE_FILE_MAX_CHARS + 1)}
    assert choose_edit_format(big, editable, "qwen2.5-coder-1.5b-instruct") == "search-replace"
    assert choose_edit_format(big, editable, "qwen2.5-coder-1.5b-instruct", "whole-file") == "whole-file"
    assert choose_edit_format(DIGITS, editable, None, "search-replace") == "search-replace"
    assert choose_edit_format(DIGITS, editable, "gpt-5", "auto") == "search-replace"
    with pytest.raises(ValueError, match="unknown edit format 'diff'"):
        choose_edit_format(DIGITS, editable, None, "diff")


def test_choose_edit_format_on_the_shipped_templates():
    def files(name):
        repo = REPO_ROOT / "baselines" / name / "repo"
        return {p.name: p.read_text() for p in repo.glob("*.py")}

    editable = ["model.py", "optim.py", "train.py"]
    assert choose_edit_format(files("digits-mlp"), editable, None) == "whole-file"
    assert choose_edit_format(files("cifar10-resnet"), editable, None) == "search-replace"  # a 4 kB model.py
