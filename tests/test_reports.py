"""Reports never die on what a sandbox returned, and model text cannot change their structure.

No training: records and trials are built directly; reports read plain facts (RunFacts), never an engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import replace

from markdown_it import MarkdownIt

from autoresearch.benchmark import load_benchmark
from autoresearch.engine import ProposalRecord, TrialRecord
import numpy as np
import pytest

from autoresearch.gate import GateConfig, decide_stage
from autoresearch.reports import ProposalContext, RunFacts, run_summary_json, write_proposal_report, write_summary
from autoresearch.scoring import Metric

BIG = "x" * 1_000_000
# What a candidate can leave in train_report.json, or a broken trial runner in a summary.
HOSTILE_SUMMARIES = [
    {"train_report": {"determinism": 5}},  # once killed a run in report writing
    {"train_report": [1, 2]},
    {"train_report": BIG},
    {"train_report": {"device": {"a": 1}, "determinism": {"bit_reproducible": "no"}}},
    {"train_report": {"device": BIG, "determinism": {"bit_reproducible": False, "nondeterministic_ops": 7}}},
    {"train_report": {"determinism": {"bit_reproducible": False,
                                      "nondeterministic_ops": [1, None, {"a": 1}, BIG, "| # <b>x</b>"]}}},
    {"device": ["cuda"], "train": "fast", "predict": {"run": "1"}},
    {"device": BIG, "train": {"run": 10 ** 400}, "predict": {"run": float("nan")}},
    {"train": {"run": True}, "predict": []},
    {"secondary": [1]},
    {"secondary": {"per_class_accuracy": "abc", "macro_f1": "x", "error": {"a": 1}, "unavailable": 3}},
    {"secondary": {"per_class_accuracy": [None, "x", 10 ** 400, {"a": 1}] + [0.5] * 100_000,
                   "unavailable": "## heading\n| a |" + BIG}},
    {"log_tail": 5},
    {"log_tail": "```\n# forged\n" * 100_000},
    [],
    None,
    "a string",
    7,
]


def trial(seed: int, summary, *, status: str = "crash", role: str = "candidate", metric: float | None = None):
    return TrialRecord(seed=seed, role=role, code_hash="c", status=status, detail="boom", val_metric=metric,
                       test_metric=metric, val_log_loss=None, test_log_loss=None, summary=summary)


def facts(tmp_path: Path, records: list[ProposalRecord], idea: str = "adaptive optimizers") -> RunFacts:
    return RunFacts(run_id="r1", run_dir=tmp_path, spec=load_benchmark("digits-mlp").spec, idea=idea,
                    counts={"train": 1000, "val": 300, "test": 497}, fingerprints={"train": "a" * 64},
                    metric_name="accuracy", gate=GateConfig.fixed(2, proposals=len(records)), gate_seeds=(1, 2),
                    isolation="bubblewrap", device="cpu", env={"device": "cpu", "versions": {"python": "3.11"}})


def write_all(run: RunFacts, records: list[ProposalRecord]) -> tuple[list[str], str, dict]:
    reports = []
    for r in records:
        r.report_path = str(write_proposal_report(run, r, ProposalContext(row={"source": "file"})))
        reports.append(Path(r.report_path).read_text())
    summary = write_summary(run, records, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0},
                            {}, {"verified": False, "detail": "verification skipped"})
    row = {"id": run.run_id, "benchmark": "digits-mlp", "idea": run.idea, "status": "finished"}
    return reports, summary.read_text(), run_summary_json(row, records, run.isolation)


def test_reports_survive_any_summary_shape(tmp_path):
    records = [ProposalRecord(idx=i, title=f"proposal {i}", hypothesis="h", decision="rejected", reason="crash",
                              detail="seed 1: boom", candidate_trials=[trial(1, s), trial(2, s, status="ok")],
                              incumbent_trials=[trial(1, s, status="ok", role="incumbent", metric=0.9)])
               for i, s in enumerate(HOSTILE_SUMMARIES, start=1)]
    reports, summary_md, summary = write_all(facts(tmp_path, records), records)
    for text in reports:
        assert len(text) < 60_000  # what is shown is capped, whatever the summary held
        assert "## Protocol" in text and "## Log tail (seed 1)" in text
    assert len(summary_md) < 60_000
    json.dumps(summary)  # the summary stays JSON
    assert all(t["device"] is None or len(t["device"]) <= 200 for p in summary["proposals"] for t in p["per_seed"])


def test_well_formed_summaries_still_show(tmp_path):
    good = {"train": {"run": 1.5, "cpu": 1.25}, "predict": {"run": 0.25}, "device": "cpu",
            "log_tail": "RuntimeError: boom",
            "train_report": {"device": "cuda:0 (H100)", "compute": {"train_examples": 10000},
                             "determinism": {"bit_reproducible": False, "nondeterministic_ops": ["aten::index_add"]}},
            "secondary": {"macro_f1": 0.5, "per_class_accuracy": [0.25, None], "unavailable": "needs evaluate"}}
    record = ProposalRecord(idx=1, title="t", hypothesis="h", decision="rejected", reason="crash", detail="d",
                            candidate_trials=[trial(1, good)], incumbent_trials=[])
    (report,), _, summary = write_all(facts(tmp_path, [record]), [record])
    for needle in ["| 10,000 / - | 1.25 / - | 0.25 |", "cuda:0 (H100)", "aten::index\\_add", "| 0.5000 |", "0.25 -", "> needs evaluate",
                   "sandboxed train 1.5s, predict 0.2s", "RuntimeError: boom"]:
        assert needle in report, needle
    assert summary["proposals"][0]["per_seed"][0]["device"] == "cpu"


@pytest.mark.parametrize("cpu,needle", [
    ((3.0, 3.3), "- **more compute than the incumbent**: the train child's CPU seconds (measured by the runner, "
                 "outside the child; a seed is one process), candidate / incumbent: median **3.15x** over 2 seed(s)"),
    ((1.1, 1.0), "- compute: the train child's CPU seconds (measured by the runner, outside the child; a seed is "
                 "one process), candidate / incumbent: median **1.05x** over 2 seed(s)\n"),
])
def test_reports_give_the_compute_figure_candidate_code_cannot_forge(tmp_path, cpu, needle):
    """A candidate can write its own in-process counts; the runner's CPU seconds it cannot. The
    report sets them side by side, and calls out a candidate well above the incumbent's."""
    cand = [trial(s, {"train": {"cpu": c}}, status="ok", metric=0.9) for s, c in zip((1, 2), cpu)]
    inc = [trial(s, {"train": {"cpu": 1.0}}, status="ok", role="incumbent", metric=0.8) for s in (1, 2)]
    record = ProposalRecord(idx=1, title="t", hypothesis="h", decision="rejected", reason="not_better", detail="d",
                            candidate_trials=cand, incumbent_trials=inc)
    (report,), _, _ = write_all(facts(tmp_path, [record]), [record])
    assert needle in report


def test_reports_state_the_limits_that_held_and_an_unsandboxed_run(tmp_path):
    notes = ["memory: RLIMIT_AS 3072 MiB (per process, not per tree)",
             "processes: NOT capped (running as root: the kernel ignores RLIMIT_NPROC for root)", "other note"]
    record = ProposalRecord(idx=1, title="t", hypothesis="h", decision="rejected", reason="crash", detail="d",
                            candidate_trials=[trial(1, {"notes": notes}), trial(2, {"notes": notes})],
                            incumbent_trials=[])
    run = replace(facts(tmp_path, [record]), isolation="none")
    (report,), summary_md, summary = write_all(run, [record])
    assert ("- limits that held: memory: RLIMIT\\_AS 3072 MiB (per process, not per tree); processes: NOT capped "
            "(running as root: the kernel ignores RLIMIT\\_NPROC for root)\n") in report
    unsandboxed = "isolation: **none** (no sandbox: candidate code ran with the user's rights)"
    assert unsandboxed in report and unsandboxed in summary_md and summary["isolation"] == "none"


HOSTILE = ("Adam\n# Forged heading\r\n| a | b |\n<img src=x onerror=alert(1)> [click](http://evil) ![i](x)\n"
           "```\n**ACCEPTED** _x_ ~~y~~ $m$ &lt; \\ \x1b[31m\u202e")
DIFF = "--- a/optim.py\n+++ b/optim.py\n@@ -1 +1,3 @@\n-x = 1\n+x = '''\n+```\n+# not a heading\n+````\n"
TAIL = "Traceback\n```\n## forged section\n<script>alert(1)</script>\n"
MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def structure(text: str) -> list:
    """The document's shape: block tokens and the inline tokens in them, without the text itself."""
    return [(t.type, t.tag, [c.type for c in t.children or [] if c.type != "text"]) for t in MD.parse(text)]


def reports_for(tmp_path: Path, title: str, hypothesis: str, detail: str, idea: str):
    seeds = [1, 2]
    cand = [trial(s, {"log_tail": TAIL}, status="ok" if s == 2 else "crash", metric=0.9) for s in seeds]
    inc = [trial(s, {}, status="ok", role="incumbent", metric=0.8) for s in seeds]
    rng = np.random.default_rng(0)
    cand_scores = [(rng.random(500) < p).astype(np.int8) for p in (0.9, 0.95)]
    inc_scores = [(rng.random(500) < p).astype(np.int8) for p in (0.8, 0.85)]
    gate = decide_stage(GateConfig.fixed(2, proposals=2), 0, cand_scores, inc_scores, Metric("accuracy", "higher"),
                        seeds=seeds)
    records = [ProposalRecord(idx=i, title=title, hypothesis=hypothesis, decision="rejected", reason="crash",
                              detail=detail, diff=DIFF, gate=gate, candidate_trials=cand, incumbent_trials=inc)
               for i in (1, 2)]
    tmp_path.mkdir()
    return write_all(facts(tmp_path, records, idea=idea), records)


def test_model_text_cannot_change_a_reports_structure(tmp_path):
    benign = reports_for(tmp_path / "benign", "Adam", "faster", "seed 1: boom", "optimizers")
    hostile = reports_for(tmp_path / "hostile", HOSTILE, HOSTILE, f"not editable: {HOSTILE!r}\n{HOSTILE}", HOSTILE)
    assert structure(hostile[0][0]) == structure(benign[0][0])
    assert structure(hostile[1]) == structure(benign[1])  # REPORT.md: one table row and one link per proposal
    tokens = MD.parse(hostile[0][0])
    fences = [t.content for t in tokens if t.type == "fence"]
    assert fences[0] == DIFF and fences[-1] == TAIL  # the diff and the log tail, exactly
    heading = next(t for i, t in enumerate(tokens) if i and tokens[i - 1].type == "heading_open")
    assert heading.children[0].content.startswith("Proposal 001: Adam # Forged heading | a | b | <img src=x")
    assert "\x1b" not in hostile[0][0] and "\u202e" not in hostile[0][0]
