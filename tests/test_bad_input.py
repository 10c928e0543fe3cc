"""Bad input from a user or a model: each gets a clear message and a specific exit code (or, for a
single malformed proposal, a recorded `invalid_proposal`), never a traceback."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import traceback

import pytest
from click.testing import CliRunner

from autoresearch.agent.proposal import InvalidProposal, parse_proposal_json
from autoresearch.cli import main
from autoresearch.config import RunConfig
from autoresearch.engine import RunEngine
from conftest import ADAM, AUTORESEARCH, copy_benchmark

EXIT_USAGE = 2  # click usage errors and user errors (cli.EXIT_USER)
EXIT_DATA = 3
EXIT_STORAGE = 4
EXIT_LLM = 6


def cli_process(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The real console script in a child process (end to end, a few seconds each)."""
    return subprocess.run([AUTORESEARCH, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, COLUMNS="200"))


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The same command in this process through click's runner (no interpreter start-up); an
    exception other than SystemExit is turned into a traceback text, as the console would show it."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=True, env={"COLUMNS": "200"})
    text = result.stderr if result.stderr_bytes is not None else ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, text)


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle.lower() in " ".join(text.lower().split()), text


@pytest.fixture(scope="module")
def good_proposals(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("props") / "one.jsonl"
    p.write_text(ADAM + "\n")
    return p


# ------------------------------------------------------------------ benchmarks and specs


def test_unknown_benchmark_name(tmp_path, good_proposals):
    proc = cli_process("run", "--benchmark", "no-such-bench", "--proposals-file", str(good_proposals),
               "--runs-dir", str(tmp_path / "runs"))
    assert_clean_error(proc, EXIT_USAGE, "unknown benchmark", "no-such-bench", "digits-mlp")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _broken(tmp_path: Path, mutate) -> Path:
    bench = copy_benchmark(tmp_path / "bench")
    spec = bench / "spec.toml"
    result = mutate(spec.read_text(), bench)
    if isinstance(result, bytes):
        spec.write_bytes(result)
    elif result is not None:
        spec.write_text(result)
    return bench


SPEC_BREAKAGES = {
    "not-toml": (lambda t, b: t + "\nthis is [not toml\n", "not valid TOML"),
    "not-utf8": (lambda t, b: t.encode() + b"\n# \xff\xfe\n", "not valid TOML"),
    "missing-field": (lambda t, b: t.replace('name = "digits-mlp"\n', ""), "name"),
    "wrong-type": (lambda t, b: t.replace("epochs = 10", 'epochs = "ten"'), "epochs"),
    "negative-budget": (lambda t, b: t.replace("train_seconds = 30", "train_seconds = -5"), "train_seconds"),
    "unknown-key": (lambda t, b: t.replace("[budget]", "[budget]\nturbo = true"), "turbo"),
    "editable-escapes": (lambda t, b: t.replace('editable = ["model.py"', 'editable = ["../harness/run_train.py"'),
                         "editable"),
    "editable-absolute": (lambda t, b: t.replace('editable = ["model.py"', 'editable = ["/etc/passwd"'), "editable"),
    "editable-missing": (lambda t, b: t.replace('editable = ["model.py"', 'editable = ["nothere.py"'), "nothere.py"),
    "no-harness": (lambda t, b: t.replace('harness = "torch-classifier"', ""), "missing folder harness/"),
    "unknown-harness": (lambda t, b: t.replace('harness = "torch-classifier"', 'harness = "no-such-harness"'),
                        "unknown harness 'no-such-harness'"),
    "two-harnesses": (lambda t, b: (b / "harness").mkdir(), "keep one"),
    "bad-metric": (lambda t, b: t.replace('direction = "higher"', 'direction = "sideways"'), "direction"),
    "missing-split": (lambda t, b: t.replace("sizes = { train = 1000, val = 297, test = 500 }",
                                             "sizes = { train = 1000, val = 297 }"), "test"),
}


@pytest.mark.parametrize("name", sorted(SPEC_BREAKAGES))
def test_malformed_spec(tmp_path, good_proposals, name):
    mutate, needle = SPEC_BREAKAGES[name]
    bench = _broken(tmp_path, mutate)
    proc = cli("run", "--benchmark", str(bench), "--proposals-file", str(good_proposals),
               "--runs-dir", str(tmp_path / "runs"))
    assert_clean_error(proc, EXIT_USAGE, needle)


@pytest.mark.parametrize("change", ["fingerprint", "split-seed"])
def test_fingerprint_mismatch_is_a_data_error(tmp_path, good_proposals, change):
    def mutate(text, _bench):
        if change == "fingerprint":
            return text.replace('train = "71e0b5f1', 'train = "00000000')
        return text.replace("split_seed = 20261127", "split_seed = 7")

    bench = _broken(tmp_path, mutate)
    proc = cli_process("run", "--benchmark", str(bench), "--proposals-file", str(good_proposals),
                       "--runs-dir", str(tmp_path / "runs"))
    assert_clean_error(proc, EXIT_DATA, "data mismatch", "fingerprint")


def test_hub_benchmark_without_the_hub_is_a_data_error(tmp_path, good_proposals):
    """mnist-cnn is pinned, so it goes on to load from the hub; offline that is a clear data error."""
    proc = subprocess.run([AUTORESEARCH, "run", "--benchmark", "mnist-cnn", "--proposals-file", str(good_proposals),
                           "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, COLUMNS="200", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    assert_clean_error(proc, EXIT_DATA, "data unavailable", "ylecun/mnist", "77f3279092a1c1579b2250db8eafed0ad422088c")


# ------------------------------------------------------------------ proposals files


def test_proposals_file_not_utf8(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"title": "caf\xe9"}\n\xff\xfe\n')
    proc = cli("run", "--proposals-file", str(p), "--runs-dir", str(tmp_path / "runs"))
    assert_clean_error(proc, EXIT_USAGE, "not UTF-8")


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_proposals_file_empty(tmp_path, content):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    proc = cli("run", "--proposals-file", str(p), "--runs-dir", str(tmp_path / "runs"))
    assert_clean_error(proc, EXIT_USAGE, "no proposals")


@pytest.mark.parametrize("content", ["title,hypothesis\nadam,faster\n", "def fit():\n    pass\n",
                                     "<html><body>oops</body></html>\n"])
def test_proposals_file_not_json_at_all(tmp_path, content):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    proc = cli("run", "--proposals-file", str(p), "--runs-dir", str(tmp_path / "runs"))
    assert_clean_error(proc, EXIT_USAGE, "JSON")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_proposals_file_missing_and_directory(tmp_path):
    assert_clean_error(cli("run", "--proposals-file", str(tmp_path / "nope.jsonl")), EXIT_USAGE, "does not exist")
    assert_clean_error(cli("run", "--proposals-file", str(tmp_path)), EXIT_USAGE, "directory")


def test_both_or_neither_source(tmp_path, good_proposals):
    assert_clean_error(cli("run", "--runs-dir", str(tmp_path)), EXIT_USAGE, "exactly one")


@pytest.mark.parametrize("device,needle", [("gpu", "--device"), ("cuda:7", "cuda:7"), ("cuda", "not available")])
def test_device_the_machine_lacks_is_a_clear_error(tmp_path, good_proposals, device, needle, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on CI; the same on a GPU host
    proc = cli("run", "--device", device, "--proposals-file", str(good_proposals), "--runs-dir", str(tmp_path / "runs"))
    assert_clean_error(proc, EXIT_USAGE, needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_seeds_out_of_range(tmp_path, good_proposals):
    assert_clean_error(cli("run", "--proposals-file", str(good_proposals), "--seeds", "1"), EXIT_USAGE, "seeds")


def test_unknown_run(tmp_path):
    for cmd in ("resume", "show"):
        assert_clean_error(cli(cmd, "no-such-run", "--runs-dir", str(tmp_path)), EXIT_STORAGE, "no run")


def test_runs_dir_is_a_file(tmp_path, good_proposals):
    f = tmp_path / "file"
    f.write_text("x")
    proc = cli("run", "--proposals-file", str(good_proposals), "--runs-dir", str(f))
    assert_clean_error(proc, EXIT_STORAGE, "runs directory")


def test_unreachable_llm_endpoint_is_exit_6(tmp_path):
    """An unreachable endpoint is a clean LLM error (exit 6, EXIT_LLM) before any run folder is made,
    not a traceback. (--isolation none: the answer must not depend on whether this machine has
    bubblewrap, which is checked first.)"""
    runs = tmp_path / "runs"
    proc = cli("run", "--idea", "adaptive LR", "--llm-base-url", "http://127.0.0.1:9/v1", "--model", "m",
               "--isolation", "none", "--runs-dir", str(runs))
    assert_clean_error(proc, EXIT_LLM, "127.0.0.1:9")
    assert not runs.exists() or not any(runs.iterdir())


# ------------------------------------------------------------------ malformed proposal lines (no training needed)


def _many_edits(n: int) -> str:
    return json.dumps({"title": "many", "hypothesis": "", "edits": [
        {"path": "train.py", "search": "", "replace": f"x = {i}\n"} for i in range(n)]})


BAD_LINES = {
    "not-json": ("{this is not json", "not valid JSON"),
    "truncated": ('{"title": "Adam", "hypothesis": "x", "edits": [{"path": "optim.py", "sea', "not valid JSON"),
    "list": ("[1, 2, 3]", "JSON object"),
    "string": ('"just a string"', "JSON object"),
    "number": ("42", "JSON object"),
    "null": ("null", "JSON object"),
    "no-edits": (json.dumps({"title": "t", "hypothesis": "h", "edits": []}), "no edits"),
    "edits-not-list": (json.dumps({"title": "t", "hypothesis": "h", "edits": {"path": "a"}}), "must be a list"),
    "edit-not-object": (json.dumps({"title": "t", "hypothesis": "h", "edits": ["optim.py"]}), "not an object"),
    "edit-wrong-types": (json.dumps({"title": "t", "hypothesis": "h", "edits": [{"path": 1, "search": None,
                                                                                 "replace": []}]}), "strings"),
    "unknown-field": (json.dumps({"title": "t", "hypothesis": "h", "edits": [], "run": "rm -rf /"}), "unknown"),
    "no-title": (json.dumps({"hypothesis": "h", "edits": [{"path": "a", "search": "", "replace": "b"}]}), "title"),
    "thousands-of-edits": (_many_edits(5000), "at most"),
    "huge-line": (json.dumps({"title": "huge", "hypothesis": "", "edits": [
        {"path": "train.py", "search": "", "replace": "#" * 3_000_000}]}), "larger than"),
    "deep-nesting": ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    "lone-surrogate": ('{"title": "\\ud800", "hypothesis": "", "edits": [{"path": "train.py", "search": "", '
                       '"replace": "x"}]}', "Unicode"),
}


@pytest.mark.parametrize("name", sorted(BAD_LINES))
def test_bad_proposal_line_is_rejected_cleanly(name):
    line, needle = BAD_LINES[name]
    with pytest.raises(InvalidProposal) as info:
        parse_proposal_json(line)
    assert needle.lower() in str(info.value).lower()
    assert len(str(info.value)) < 2000  # a message, not an echo of the input


def test_bad_lines_are_recorded_without_training(tmp_path):
    """The engine records each malformed line as `invalid_proposal`, with a commit and a report,
    and the ledger stays small and sound even for huge lines."""
    bench = copy_benchmark(tmp_path / "bench")
    engine = RunEngine.create(RunConfig(benchmark=str(bench), runs_dir=tmp_path / "runs", proposals=len(BAD_LINES)))
    names = sorted(BAD_LINES)
    titled = json.dumps({"title": "ctrl \x00\x07 chars \u202e and emoji \U0001f600", "hypothesis": "\x00",
                         "edits": [{"path": "../../etc/passwd", "search": "", "replace": "x"}]})
    lines = [BAD_LINES[n][0] for n in names] + [titled]
    for idx, line in enumerate(lines, start=1):
        try:
            parsed = parse_proposal_json(line)
        except InvalidProposal as exc:
            parsed = exc
        record = engine.evaluate(idx, line, parsed, source="file")
        assert record.decision == "rejected"
    records = engine.records()
    assert [r.reason for r in records] == ["invalid_proposal"] * len(names) + ["not_editable"]
    assert len(list((engine.run_dir / "reports").glob("*.md"))) == len(lines)
    conn = sqlite3.connect(engine.run_dir / "ledger.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert (engine.run_dir / "ledger.sqlite").stat().st_size < 64 * 1024**2
    for report in (engine.run_dir / "reports").glob("*.md"):
        assert report.stat().st_size < 2 * 1024**2, report
    assert engine.repo.accepted_tip == engine.repo.baseline
