"""The ledger's migrations and the git records, without training anything."""

import sqlite3

import git
import pytest

from autoresearch.ledger import MIGRATIONS, Ledger
from autoresearch.outcomes import unified_diff
from autoresearch.records import RunRepo, proposal_ref


def test_migrations_apply_once_and_in_order(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    assert ledger.applied_migrations() == [name for name, _ in MIGRATIONS]
    ledger.close()
    again = Ledger(tmp_path / "l.sqlite")
    assert again.migrate() == []  # nothing re-applied
    tables = {r[0] for r in again.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "proposals", "trials", "llm_calls", "_migrations"} <= tables


def test_a_ledger_from_before_active_seconds_upgrades_in_place(tmp_path, monkeypatch):
    import autoresearch.ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "MIGRATIONS", MIGRATIONS[:1])  # a run made before 002 existed
    old = Ledger(tmp_path / "l.sqlite")
    old.create_run(id="r1", benchmark="b", benchmark_version="1", idea=None, config_json="{}",
                   fingerprints_json="{}", counts_json="{}", env_json="{}", isolation="none")
    old.close()
    monkeypatch.setattr(ledger_mod, "MIGRATIONS", MIGRATIONS)
    new = Ledger(tmp_path / "l.sqlite")
    assert new.applied_migrations() == [n for n, _ in MIGRATIONS]
    assert new.run("r1")["benchmark"] == "b" and new.run("r1")["active_seconds"] == 0


def test_migration_names_are_unique_and_sorted():
    names = [n for n, _ in MIGRATIONS]
    assert names == sorted(names) and len(set(names)) == len(names)


def test_ledger_round_trip(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.create_run(id="r1", benchmark="b", benchmark_version="1", idea=None, config_json="{}",
                      fingerprints_json="{}", counts_json="{}", env_json="{}", isolation="none")
    ledger.add_proposal(run_id="r1", idx=1, source="file", title="t", hypothesis="h", raw="{}")
    ledger.add_proposal(run_id="r1", idx=1, source="file", title="dup", hypothesis="h", raw="{}")  # ignored
    ledger.update_proposal("r1", 1, state="decided", decision="rejected", reason="not_better")
    rows = ledger.proposals("r1")
    assert len(rows) == 1 and rows[0]["title"] == "t" and rows[0]["reason"] == "not_better"


def test_git_records_baseline_proposals_and_accepted_branch(tmp_path):
    repo = RunRepo.create(tmp_path / "repo", {"a.py": b"x = 1\n", "b.py": b"y = 1\n"}, "baseline")
    base = repo.baseline
    assert repo.accepted_tip == base and repo.files_at(base) == {"a.py": "x = 1\n", "b.py": "y = 1\n"}
    c1 = repo.commit_proposal(1, base, {"a.py": "x = 2\n", "b.py": "y = 1\n"}, "one\n\nAutoresearch-Decision: accepted")
    assert repo.commit_proposal(1, base, {"a.py": "x = 99\n", "b.py": ""}, "again") == c1  # idempotent
    repo.advance_accepted(c1)
    repo.advance_accepted(c1)  # idempotent
    c2 = repo.commit_proposal(2, c1, None, "two (not applied)")  # empty commit keeps the parent's tree
    assert repo.files_at(c2) == repo.files_at(c1)
    with pytest.raises(RuntimeError, match="not a child"):
        repo.advance_accepted(repo.commit_proposal(3, base, {"a.py": "x = 3\n", "b.py": "y = 1\n"}, "stale parent"))
    assert repo.accepted_chain() == [c1]
    g = git.Repo(tmp_path / "repo")
    assert g.commit(proposal_ref(2)).parents[0].hexsha == c1
    assert (tmp_path / "repo" / "a.py").read_text() == "x = 2\n"  # working tree follows `accepted`
    diff = unified_diff(repo.files_at(base), repo.files_at(c1))
    assert "diff --git a/a.py b/a.py" in diff and "+x = 2" in diff and "b.py" not in diff
