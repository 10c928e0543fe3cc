"""Agent loop with a queue-driven fake model (no network, no HTTP): repairs, duplicates, protected
files, budgets, the prompt's content (validation figures only), and resume of a stored reply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_fakes import ADAM_REPLY, MALFORMED_REPLY, NO_EDITS_REPLY, PROTECTED_REPLY, FakeLLM
from autoresearch.agent.loop import LLMSession, build_messages, history_lines, prompt_hash, run_agent
from autoresearch.config import RunConfig
from autoresearch.engine import ProposalRecord, RunEngine, TrialRecord
from conftest import copy_benchmark


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory) -> Path:
    """digits-mlp with one epoch: the loop's logic does not need a well-trained model."""
    return copy_benchmark(tmp_path_factory.mktemp("agent-bench") / "digits-tiny", epochs=1)


def make_engine(bench: Path, runs: Path, **overrides) -> RunEngine:
    cfg = dict(benchmark=str(bench), runs_dir=runs, idea="adaptive LR optimizer", proposals=4, seeds=2,
               verify=False, parse_retries=1)
    cfg.update(overrides)
    return RunEngine.create(RunConfig(**cfg))


def test_history_shows_validation_never_test():
    def trial(seed, role, val, test):
        return TrialRecord(seed=seed, role=role, code_hash="h", status="ok", detail="", val_metric=val,
                           test_metric=test, val_log_loss=0.1, test_log_loss=0.1, summary={})

    rec = ProposalRecord(idx=1, title="Adam", hypothesis="h", decision="rejected", reason="not_better",
                         detail="mean improvement +0.0123 on test; p=0.2",
                         candidate_trials=[trial(1, "candidate", 0.5678, 0.1234), trial(2, "candidate", 0.5678, 0.1234)],
                         incumbent_trials=[trial(1, "incumbent", 0.4321, 0.8765), trial(2, "incumbent", 0.4321, 0.8765)])
    bad = ProposalRecord(idx=2, title="Broken", hypothesis="", decision="rejected", reason="apply_failed",
                         detail="edit 0: the search text does not occur in optim.py")
    text = history_lines([rec, bad], "accuracy")
    assert "val accuracy 0.5678 vs incumbent 0.4321 over 2 seed(s)" in text
    assert "0.1234" not in text and "0.8765" not in text and "0.0123" not in text and "test" not in text
    assert "apply_failed" in text and "does not occur in optim.py" in text
    assert history_lines([], "accuracy") == "(none yet)"


def test_loop_repairs_dedupes_and_records(tiny_bench, tmp_path):
    engine = make_engine(tiny_bench, tmp_path)
    llm = FakeLLM([MALFORMED_REPLY, ADAM_REPLY,          # 1: repaired, then trained
                   ADAM_REPLY, ADAM_REPLY,                # 2: duplicate twice: recorded, not trained
                   PROTECTED_REPLY, PROTECTED_REPLY,      # 3: protected file: not_editable
                   NO_EDITS_REPLY, "no JSON here"])       # 4: invalid_proposal after its one repair
    summary = run_agent(engine, LLMSession(client=llm))
    assert llm.replies == [] and len(llm.calls) == 8
    rows = engine.ledger.proposals(engine.run_id)
    assert [r["idx"] for r in rows] == [1, 2, 3, 4] and all(r["state"] == "finished" for r in rows)
    reasons = [r["reason"] for r in rows]
    assert reasons[0] in ("accepted", "not_better") and reasons[1:] == ["invalid_proposal", "not_editable",
                                                                         "invalid_proposal"]
    assert "duplicate" in rows[1]["detail"] and "#1" in rows[1]["detail"]
    assert json.loads(rows[2]["edits_json"])["edits"][0]["path"] == "../harness/run_train.py"
    assert {r["prompt_hash"] for r in rows} == {prompt_hash()}
    # Only the baseline and proposal 1 were trained (2 seeds each): the duplicate was not.
    trials = engine.ledger.trials(engine.run_id)
    assert len(trials) == 4 and {t["proposal_idx"] for t in trials} == {None, 1}
    # The repair sent the parse error back with the bad reply.
    second = llm.calls[1]
    assert second[-2] == {"role": "assistant", "content": MALFORMED_REPLY}
    assert "could not be used" in second[-1]["content"] and "JSON" in second[-1]["content"]
    # Proposal 2's prompt carries proposal 1's validation result, and no test figure.
    prompt2 = llm.calls[2][1]["content"]
    assert "#1 'Adam optimizer'" in prompt2 and "val accuracy" in prompt2
    rec1 = engine.records()[0]
    test_mean = sum(t.test_metric for t in rec1.candidate_trials) / 2
    assert f"{test_mean:.4f}" not in prompt2 or f"{test_mean:.4f}" in f"{rec1.candidate_trials[0].val_metric:.4f}"
    assert "adaptive LR optimizer" in prompt2 and "optim.py" in prompt2
    # Every call is in the ledger with its attempt number and tokens; every proposal has a report.
    calls = engine.ledger.llm_calls(engine.run_id)
    assert [(c["proposal_idx"], c["attempt"]) for c in calls] == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2),
                                                                  (4, 1), (4, 2)]
    assert all(c["prompt_tokens"] == 100 and c["completion_tokens"] == 20 for c in calls)
    assert all((engine.run_dir / r["report_path"]).is_file() for r in rows)
    assert summary["proposals"] == 4 and summary["llm_calls"] == 8 and "budget reached" in summary["stop"]


def test_cost_and_time_budgets_stop_early(tiny_bench, tmp_path):
    engine = make_engine(tiny_bench, tmp_path / "cost", proposals=5, parse_retries=0, max_llm_cost=0.001)
    engine.ensure_baseline = lambda: []  # nothing here is trained; spare CI the baseline
    llm = FakeLLM(["nope"] * 5, cost=0.002)
    summary = run_agent(engine, LLMSession(client=llm))
    assert len(llm.calls) == 1 and summary["proposals"] == 1 and "cost budget" in summary["stop"]
    assert json.loads((engine.run_dir / "agent-summary.json").read_text())["stop"] == summary["stop"]

    engine = make_engine(tiny_bench, tmp_path / "time", proposals=5, time_budget=1e-6)
    engine.ensure_baseline = lambda: []
    llm = FakeLLM([ADAM_REPLY])
    summary = run_agent(engine, LLMSession(client=llm))
    assert llm.calls == [] and summary["proposals"] == 0 and "time budget" in summary["stop"]


def test_time_budget_counts_earlier_sessions_of_a_resumed_run(tiny_bench, tmp_path):
    engine = make_engine(tiny_bench, tmp_path, proposals=3, parse_retries=0, time_budget=3600)
    engine.ensure_baseline = lambda: []
    llm = FakeLLM(["nope"])
    engine.config = engine.config.model_copy(update={"proposals": 1})  # this session stops after one
    run_agent(engine, LLMSession(client=llm))
    spent = engine.ledger.run(engine.run_id)["active_seconds"]
    assert 0 < spent < 3600  # written to the ledger as the run went
    # Earlier sessions used almost all of the hour: the resumed run must stop at once, not start afresh.
    engine.ledger.update_run(engine.run_id, active_seconds=3599.9999)
    resumed = RunEngine.open(engine.run_dir)
    resumed.ensure_baseline = lambda: []
    llm = FakeLLM([ADAM_REPLY])
    summary = run_agent(resumed, LLMSession(client=llm))
    assert llm.calls == [] and "time budget" in summary["stop"] and "over all sessions" in summary["stop"]
    assert resumed.ledger.run(resumed.run_id)["active_seconds"] >= 3600


class _Killed(BaseException):
    pass


def test_resume_evaluates_stored_reply_without_new_call(tiny_bench, tmp_path, monkeypatch):
    engine = make_engine(tiny_bench, tmp_path, proposals=2)
    real = engine.run_trials

    def dying(files, seeds, *, role, proposal_idx=None):
        if role == "candidate":
            raise _Killed()
        return real(files, seeds, role=role, proposal_idx=proposal_idx)

    monkeypatch.setattr(engine, "run_trials", dying)
    with pytest.raises(_Killed):
        run_agent(engine, LLMSession(client=FakeLLM([ADAM_REPLY])))
    row = engine.ledger.proposal(engine.run_id, 1)
    assert row["state"] == "pending" and row["raw"] == ADAM_REPLY

    resumed = RunEngine.open(engine.run_dir)
    llm = FakeLLM([NO_EDITS_REPLY, NO_EDITS_REPLY])  # only proposal 2 may ask the model
    summary = run_agent(resumed, LLMSession(client=llm))
    rows = resumed.ledger.proposals(resumed.run_id)
    assert [r["state"] for r in rows] == ["finished", "finished"] and summary["proposals"] == 2
    assert rows[0]["reason"] in ("accepted", "not_better") and rows[1]["reason"] == "invalid_proposal"
    assert len(llm.calls) == 2 and all(c[-1]["role"] == "user" for c in llm.calls)
    assert [c["proposal_idx"] for c in resumed.ledger.llm_calls(resumed.run_id)] == [1, 2, 2]


def test_prompt_is_compact_and_has_the_rules(tiny_bench, tmp_path):
    engine = make_engine(tiny_bench, tmp_path)
    system, user = build_messages(engine, [])
    text = system["content"] + user["content"]
    for needle in ("model.py, optim.py, train.py", "epochs", "tampering", "exactly once", "(none yet)",
                   "adaptive LR optimizer", "torch.optim.SGD(params, lr=0.01)"):
        assert needle in text
    assert len(text) < 9000  # about 2.5k tokens: leaves room in the local model's 8k context


def test_check_reply_catches_syntax_errors_before_training(tiny_bench, tmp_path):
    from autoresearch.agent.loop import DoesNotCompile, check_reply, final_parse
    from autoresearch.agent.proposal import Proposal

    engine = make_engine(tiny_bench, tmp_path)
    broken = json.dumps({"title": "Broken", "hypothesis": "h", "edits": [
        {"path": "optim.py", "search": "optimizer = torch.optim.SGD(params, lr=0.01)",
         "replace": "optimizer = torch.optim.Adam(params, lr=1e-3))"}]})
    with pytest.raises(DoesNotCompile, match="optim.py would not compile"):
        check_reply(engine, 1, broken)
    # Out of repairs, it still goes to the engine whole: the sandbox, not the agent, records the crash.
    assert isinstance(final_parse(engine, 1, broken), Proposal)
    assert isinstance(check_reply(engine, 1, ADAM_REPLY), Proposal)
