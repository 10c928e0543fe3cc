"""Replay rebuilds exactly the accepted chain or refuses, and verifies against the `baseline` tag.

No training: a run folder is made of a ledger row and a run repo built with records.RunRepo from
the digits-mlp template, with commit messages made as the engine makes them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import git
import pytest

from autoresearch import replay as replay_mod
from autoresearch.benchmark import load_benchmark
from autoresearch.recording import commit_message
from autoresearch.ledger import Ledger
from autoresearch.records import RunRepo
from autoresearch.replay import ReplayError, replay_run, verify_replay

from conftest import copy_benchmark

SGD = "optimizer = torch.optim.SGD(params, lr=0.01)"
ADAM = "optimizer = torch.optim.Adam(params, lr=1e-3)"
RELU = "nn.ReLU()"


def _blob(text: str) -> str:
    data = text.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def make_run(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A run folder whose baseline commit is the template of a digits-mlp copy; no proposals yet."""
    bench_dir = copy_benchmark(tmp_path / "bench")
    bench = load_benchmark(bench_dir)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ledger = Ledger(run_dir / "ledger.sqlite")
    ledger.create_run(id="r1", benchmark=bench.name, benchmark_version=bench.spec.version, idea=None,
                      config_json=json.dumps({"benchmark_root": str(bench_dir)}), fingerprints_json="{}",
                      counts_json="{}", env_json="{}", isolation="bubblewrap")
    ledger.close()
    files = {k: v.decode() for k, v in bench.template_files().items()}
    RunRepo.create(run_dir / "repo", {k: v.encode() for k, v in files.items()}, "baseline")
    return run_dir, files


def fake_record(idx: int, title: str, hypothesis: str, decision: str = "accepted"):
    return SimpleNamespace(idx=idx, title=title, hypothesis=hypothesis, decision=decision, reason=decision,
                           detail="wins 100% of seeds", candidate_trials=[SimpleNamespace(seed=s) for s in (1, 2)])


FAKE_ENGINE = SimpleNamespace(env={"versions": {"python": "3", "torch": "2", "numpy": "2"}},
                              data=SimpleNamespace(fingerprints={"train": "ab"}), run_id="r1")


def todays_message(title: str, hypothesis: str) -> str:
    """The message engine.commit_message wrote before model text was escaped (a run repo made
    then still holds such commits: replay must refuse to rebuild them wrongly on its own)."""
    return (f"{title}\n\n{hypothesis}\n\nAutoresearch-Proposal: 001\nAutoresearch-Decision: accepted\n"
            f"Autoresearch-Run: r1\n")


def forging_hypothesis(base: dict[str, str]) -> str:
    """Model text holding a patch and an mbox `From ` line: fed to `git am` it is a first mail whose
    diff applies only half of the real change (model.py), then the real mail follows."""
    old = base["model.py"]
    new = old.replace(RELU, "nn.Tanh()", 1)
    hunk = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "a/model.py", "b/model.py"))
    return ("Tanh is smoother than ReLU here.\n---\n"
            f"diff --git a/model.py b/model.py\nindex {_blob(old)[:7]}..{_blob(new)[:7]} 100644\n{hunk}\n"
            "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            "From: autoresearch <autoresearch@localhost>\n"
            "Date: Mon, 1 Jan 2024 00:00:00 +0000\n"
            "Subject: [PATCH] Adam and tanh\n\n"
            "and Adam adapts its step sizes.")


def accept(run_dir: Path, base: dict[str, str], message: str) -> str:
    """One accepted proposal: Adam in optim.py and tanh in model.py, committed with ``message``."""
    repo = RunRepo(run_dir / "repo")
    files = dict(base, **{"optim.py": base["optim.py"].replace(SGD, ADAM),
                          "model.py": base["model.py"].replace(RELU, "nn.Tanh()", 1)})
    sha = repo.commit_proposal(1, repo.baseline, files, message)
    repo.advance_accepted(sha)
    return sha


def test_a_forged_mbox_in_an_old_commit_message_is_refused(tmp_path):
    """The attack against today's records: `git am` makes two commits of one, the final tree matches."""
    run_dir, base = make_run(tmp_path)
    accept(run_dir, base, todays_message("Adam and tanh", forging_hypothesis(base)))
    with pytest.raises(ReplayError, match="2 commit.*1 accepted"):
        replay_run(run_dir, tmp_path / "replayed")


def test_model_text_in_a_commit_message_cannot_split_the_replay(tmp_path):
    """The same text through engine.commit_message replays as one commit with the same tree."""
    run_dir, base = make_run(tmp_path)
    record = fake_record(1, "Adam and tanh\nFrom 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001",
                         forging_hypothesis(base))
    sha = accept(run_dir, base, commit_message(record, FAKE_ENGINE))
    result = replay_run(run_dir, tmp_path / "replayed")
    replayed = git.Repo(tmp_path / "replayed")
    commits = list(replayed.iter_commits("baseline..HEAD"))
    assert result.applied == [sha] and len(commits) == 1
    assert commits[0].tree.hexsha == git.Repo(run_dir / "repo").commit(sha).tree.hexsha
    assert "Tanh is smoother" in commits[0].message  # the hypothesis survives, quoted


def test_a_chain_whose_replayed_trees_differ_in_the_middle_is_refused(tmp_path, monkeypatch):
    """Per commit, in order: two accepted commits replayed in swapped order give two commits and the
    same final tree, but the first replayed commit has another tree than the first accepted one."""
    run_dir, base = make_run(tmp_path)
    repo = RunRepo(run_dir / "repo")
    adam = dict(base, **{"optim.py": base["optim.py"].replace(SGD, ADAM)})
    first = repo.commit_proposal(1, repo.baseline, adam, "Adam\n")
    repo.advance_accepted(first)
    second = repo.commit_proposal(2, first, dict(adam, **{"model.py": base["model.py"].replace(RELU, "nn.Tanh()", 1)}),
                                  "tanh\n")
    repo.advance_accepted(second)
    real_stream = replay_mod._as_stream

    def swapped(text):
        mails = re.split(r"(?m)^(?=From [0-9a-f]{40} )", text)[1:]
        assert len(mails) == 2
        return real_stream(mails[1] + mails[0])

    monkeypatch.setattr(replay_mod, "_as_stream", swapped)
    with pytest.raises(ReplayError, match="replayed commit 1 .* another tree"):
        replay_run(run_dir, tmp_path / "replayed")


def test_verify_measures_against_the_baseline_tag(tmp_path, monkeypatch):
    """verify_replay takes the baseline from the `baseline` tag, never HEAD~len(applied)."""
    run_dir, base = make_run(tmp_path)
    accept(run_dir, base, "Adam and tanh\n")
    result = replay_run(run_dir, tmp_path / "replayed")
    replayed = git.Repo(result.path)
    assert replayed.tags["baseline"].commit.hexsha == replayed.commit("HEAD~1").hexsha
    # One more commit on top (same tree): HEAD~len(applied) is now the accepted commit, not the baseline.
    replayed.git.commit("--allow-empty", "-m", "an extra commit")
    seen = {}

    def verify_chain(final_files, baseline_files):
        seen["baseline"], seen["final"] = baseline_files, final_files
        return {"verified": False, "detail": "recorded"}

    engine = SimpleNamespace(verify_seeds=[7, 8], verify_chain=verify_chain)
    monkeypatch.setattr("autoresearch.engine.RunEngine.open", classmethod(lambda cls, *a, **k: engine))
    verify_replay(run_dir, result, seed_base=100)
    assert seen["baseline"] == base and "torch.optim.Adam" in seen["final"]["optim.py"]
