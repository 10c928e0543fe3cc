"""Agent loop with a queue-driven fake model (no network, no HTTP) over a real engine, through the
EnginePort: repairs, duplicates, protected files, budgets, the prompt's content (validation figures
only), resume of a stored reply, and a reply that cannot run recorded without training. The loop's
logic itself is tested against a fake port in test_agent_graph.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_fakes import ADAM_REPLY, MALFORMED_REPLY, NO_EDITS_REPLY, PROTECTED_REPLY, FakeLLM
from autoresearch.agent.loop import LLMSession, build_messages, prompt_hash, run_agent
from autoresearch.agent_port import EnginePort
from autoresearch.config import RunConfig
from autoresearch.engine import RunEngine
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


def test_loop_repairs_dedupes_and_records(tiny_bench, tmp_path, fake_trials):
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
    # Proposal 2 repeats proposal 1: a duplicate of a rejected change; once accepted, its search text
    # is gone from the incumbent (it cannot apply twice).
    repeat = "duplicate" if reasons[0] == "not_better" else "apply_failed"
    assert reasons[0] in ("accepted", "not_better") and reasons[1:] == [repeat, "not_editable", "invalid_proposal"]
    if repeat == "duplicate":
        assert "duplicate" in rows[1]["detail"] and "#1" in rows[1]["detail"]
        assert rows[1]["diff"] and "torch.optim.Adam" in rows[1]["diff"]  # recorded with its diff, not trained
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
    assert "#1 " in prompt2 and "optim.py: torch.optim.SGD -> torch.optim.Adam" in prompt2 and "val accuracy" in prompt2
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


def test_resume_evaluates_stored_reply_without_new_call(tiny_bench, tmp_path, monkeypatch, fake_trials):
    engine = make_engine(tiny_bench, tmp_path, proposals=2)
    real = engine.run_trials

    def dying(files, seeds, *, role, proposal_idx=None, ahead=()):
        if role == "candidate":
            raise _Killed()
        return real(files, seeds, role=role, proposal_idx=proposal_idx, ahead=ahead)

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
    port = EnginePort(engine)
    for fmt, rule in (("search-replace", "exactly once"), ("whole-file", "COMPLETE new content")):
        system, user = build_messages(port.task, port.settings.idea, port.incumbent(), port.history(), fmt)
        text = system["content"] + user["content"]
        for needle in ("- model.py: The network.", "- optim.py: The optimizer.", "- train.py: The training loop.",
                       "epochs", "tampering", rule, "(none yet)", "adaptive LR optimizer",
                       "torch.optim.SGD(params, lr=0.01)", "accuracy (higher is better)"):
            assert needle in text, needle
        assert len(text) < 9000  # about 2.5k tokens: leaves room in the local model's 8k context


def test_a_reply_that_cannot_run_is_recorded_with_its_diff_and_never_trained(tiny_bench, tmp_path):
    """Out of repair rounds, a static failure reaches the engine as a verdict: its diff is committed
    and reported, its reason is static_check, and no trial runs (not even the baseline's)."""
    from autoresearch.agent.checks import StaticCheckFailed, check_reply, final_verdict
    from autoresearch.agent.proposal import Proposal

    engine = make_engine(tiny_bench, tmp_path)
    port = EnginePort(engine)
    broken = json.dumps({"title": "Adam with warm-up", "hypothesis": "h", "edits": [
        {"path": "optim.py", "search": "optimizer = torch.optim.SGD(params, lr=0.01)",
         "replace": "optimizer = torch.optim.Adam(params, lr=1e-3))"}]})
    with pytest.raises(StaticCheckFailed, match="optim.py would not compile") as info:
        check_reply(broken, port.incumbent(), port.task.editable, [], change_hash=port.change_hash)
    parsed = final_verdict(broken, info.value)
    assert isinstance(parsed, Proposal) and parsed.precheck is info.value
    assert port.evaluate(1, broken, parsed, prompt_hash="p") == "static_check"
    row = engine.ledger.proposal(engine.run_id, 1)
    assert row["state"] == "finished" and "would not compile" in row["detail"] and "Adam" in row["diff"]
    assert engine.ledger.trials(engine.run_id) == []
    report = (engine.run_dir / row["report_path"]).read_text()
    assert "optim.py: torch.optim.SGD -> torch.optim.Adam" not in report  # it does not parse: lines are counted
    assert "**What the diff does**" in report and "**The model's claims**" in report
    assert "not supported by the diff" in report and "warm-up" in report  # no scheduler in the diff
    # A smoke failure is recorded the same way; the same change again is then a duplicate.
    from autoresearch.agent.checks import DuplicateProposal, SmokeFailed

    adam, _ = check_reply(ADAM_REPLY, port.incumbent(), port.task.editable, port.history(), change_hash=port.change_hash)
    smoke_failed = final_verdict(ADAM_REPLY, SmokeFailed("crash: NameError"))
    assert port.evaluate(2, ADAM_REPLY, smoke_failed, prompt_hash="p") == "smoke_failed"
    assert engine.ledger.trials(engine.run_id) == []
    with pytest.raises(DuplicateProposal, match="#2"):
        check_reply(ADAM_REPLY, port.incumbent(), port.task.editable, port.history(), change_hash=port.change_hash)
    assert [p.reason for p in port.history()] == ["static_check", "smoke_failed"]
    assert port.history()[1].changes[0] == "optim.py: torch.optim.SGD -> torch.optim.Adam"
    # The run summary flags the title that names a schedule the diff does not touch.
    engine.finish()
    summary = (engine.run_dir / "REPORT.md").read_text()
    assert "Adam with warm-up **unsupported: the title names" in summary and "a learning-rate schedule" in summary


@pytest.mark.slow
def test_smoke_run_sees_the_real_epoch_budget_and_reports_a_crash(tmp_path):
    """The smoke run trains on its slice for the run's epochs: a schedule built from `epochs` works
    there as in the gate (T_max = epochs - 1 is 0 at one epoch); a crash comes back with its cause."""
    engine = make_engine(copy_benchmark(tmp_path / "three-epochs", epochs=3), tmp_path / "runs")
    _, files = engine.incumbent
    cosine = files["optim.py"].replace(
        "scheduler = None", "scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - 1)")
    assert cosine != files["optim.py"]
    assert engine.smoke({**files, "optim.py": cosine}).ok
    crashing = files["optim.py"].replace("return optimizer, scheduler", "return optimizer, scheduler / 0")
    result = engine.smoke({**files, "optim.py": crashing})
    assert not result.ok and result.status == "crash" and "TypeError" in result.error
    assert engine.ledger.trials(engine.run_id) == []  # recorded nowhere
