"""Markdown reports: one per proposal (readable on its own), and the run's REPORT.md with a plot.

Text from a model or a sandbox goes through autoresearch.escaping before it is written; a trial's
summary is read only through _field/_number/_string, because it holds whatever JSON the sandbox
returned (train_report is the candidate's own file): a wrong shape shows as "-", never raises.
Reports read plain values only: the run's facts (``RunFacts``, fixed when the run opens), the
records, and per proposal what recording gathered (``ProposalContext``). They import neither the
engine nor the ledger: data flows one way, engine -> recording -> reports.
(About 450 lines: every section of a report reads the same hostile-safe accessors below.)
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.escaping import markdown_code, markdown_inline, one_line
from autoresearch.outcomes import ProposalRecord, TrialRecord, slugify

if TYPE_CHECKING:
    from autoresearch.benchmark import BenchmarkSpec
    from autoresearch.gate import GateConfig, StageDecision

Files = dict[str, str]


@dataclass(frozen=True)
class RunFacts:
    """What the reports say about their run, as plain values fixed when the run opens."""
    run_id: str
    run_dir: Path
    spec: "BenchmarkSpec"
    idea: str | None
    counts: dict[str, int]
    fingerprints: dict[str, str]
    metric_name: str
    gate: "GateConfig"
    gate_seeds: tuple[int, ...]
    isolation: str
    device: str
    env: dict


@dataclass(frozen=True)
class ProposalContext:
    """What one proposal's report reads beside its record: its ledger row, its LLM totals, the
    agent's journal of replies, and (incumbent files, candidate files) where the change has a commit
    of its own (None otherwise, or where the repo could not be read)."""
    row: dict = field(default_factory=dict)
    llm: dict = field(default_factory=lambda: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                               "cost_usd": 0.0})
    journal: list[dict] = field(default_factory=list)
    files: tuple[Files, Files] | None = None


def _field(obj: object, *keys: str) -> object:
    """obj[k1][k2]..., or None where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _number(x: object) -> float | None:
    """A finite real number as float, else None (strings, bools, NaN, ints too large for a float)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        x = float(x)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _string(x: object, limit: int = 200) -> str | None:
    """A string, cut to ``limit`` characters, else None."""
    return x[:limit] if isinstance(x, str) else None


def _fmt(x: object, digits: int = 4) -> str:
    x = _number(x)
    return "-" if x is None else f"{x:.{digits}f}"


def _signed(x: object, digits: int = 4) -> str:
    x = _number(x)
    return "-" if x is None else f"{x:+.{digits}f}"


def report_name(record: "ProposalRecord") -> str:
    return f"{record.idx:03d}-{slugify(record.title)}.md"


def _examples(t: "TrialRecord | None") -> str:
    """Examples through the model in training (gradients on), as the harness counted them."""
    n = _field(t.summary, "train_report", "compute", "train_examples") if t is not None else None
    return f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else "-"


def _seed_table(record: "ProposalRecord", metric: str) -> str:
    """Per seed: the metric (test, val), what the harness counted (examples through the model in
    training) and the train child's CPU seconds (measured by the runner, outside the child),
    candidate beside incumbent: a change that buys its gain with more compute shows here."""
    inc = {t.seed: t for t in record.incumbent_trials}
    rows = [f"| seed | candidate test {metric} | incumbent test {metric} | difference | candidate val | "
            "incumbent val | candidate status | examples trained (cand / inc) | train CPU s (cand / inc) | predict s |",
            "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for t in record.candidate_trials:
        i = inc.get(t.seed)
        diff = None
        if record.gate and t.seed in record.gate.seeds:
            diff = record.gate.differences[record.gate.seeds.index(t.seed)]
        elif t.test_metric is not None and i is not None and i.test_metric is not None:
            diff = t.test_metric - i.test_metric
        rows.append(f"| {t.seed} | {_fmt(t.test_metric)} | {_fmt(i.test_metric if i else None)} | {_signed(diff)} | "
                    f"{_fmt(t.val_metric)} | {_fmt(i.val_metric if i else None)} | {t.status}"
                    f"{' (cached)' if t.cached else ''} | {_examples(t)} / {_examples(i)} | "
                    f"{_fmt(_field(t.summary, 'train', 'cpu'), 2)} / "
                    f"{_fmt(_field(i.summary, 'train', 'cpu') if i else None, 2)} | "
                    f"{_fmt(_field(t.summary, 'predict', 'run'), 2)} |")
    return "\n".join(rows)


def _integrity_section(record: "ProposalRecord", run: RunFacts, files: tuple[Files, Files] | None) -> list[str]:
    """What the integrity checks found (autoresearch.integrity), stated whatever the decision."""
    from autoresearch.integrity import literal_tables

    rules = run.spec.integrity
    lines = ["## Integrity checks", ""]
    mem = record.integrity.get("memorisation") if isinstance(record.integrity, dict) else None
    if rules.perturbation == "none":
        lines.append("- answer keys: this benchmark's inputs have no perturbed copies (`perturbation = \"none\"`); "
                     "the memorisation check is off")
    elif isinstance(mem, dict):
        lines.append(f"- answer keys: {markdown_inline(str(mem.get('detail', '')), 400)}")
    else:
        lines.append("- answer keys: not checked (the proposal did not reach the gate)")
    lines.append(f"- transductive prediction: {'allowed by the spec' if rules.transductive else 'not allowed; a '}"
                 + ("" if rules.transductive else f"{rules.check_rows}-row check pass in another order and batch "
                                                  "size must match"))
    lines.append("- seeds: the weights must vary with the seed (`seed_ignored` otherwise); the seed is never handed "
                 "to candidate code")
    lines.append(_compute_line(record))
    b = run.spec.budget
    lines.append(f"- budget: at most {b.epochs} x {run.counts['train']:,} examples through the model with "
                 f"gradients on and {b.gradient_steps(run.counts['train']):,} gradient computations ({b.epochs} epochs of batches of {b.batch_size}) "
                 f"(each +{rules.budget_tolerance:.0%}), {rules.eval_epochs:g} epoch(s) with gradients off, "
                 f"a checkpoint of at most {rules.max_checkpoint_mb:g} MB, no training in the predict phase")
    if record.diff and files is not None:
        try:
            tables = literal_tables(*files)
        except Exception:  # the report must not die on code it cannot read; the diff above stands
            tables = []
        if tables:
            lines.append("- **large literal data added** (what an answer key looks like): "
                         + "; ".join(markdown_inline(t, 200) for t in tables[:10]))
    return lines + [""]


# Above this, a candidate's training CPU seconds over the incumbent's are called out in its report
# (on digits-mlp an honest Adam runs 1.5x SGD's, AdamW with OneCycle 1.6x, Adam with 8x the width 2x).
COMPUTE_NOTE_RATIO = 2.0


def _compute_line(record: "ProposalRecord") -> str:
    """The one compute figure candidate code cannot forge: the train child's CPU seconds, measured by
    the runner outside it (a seed is one process, so they are all of its work), candidate over
    incumbent on the same seeds. The counted examples come from inside the candidate's process;
    where their verdict and this figure disagree, the reader should know."""
    inc = {t.seed: t for t in record.incumbent_trials}
    ratios = []
    for t in record.candidate_trials:
        i = inc.get(t.seed)
        cand = _number(_field(t.summary, "train", "cpu"))
        base = _number(_field(i.summary, "train", "cpu")) if i is not None else None
        if t.status == "ok" and cand is not None and base is not None and base > 0:
            ratios.append(cand / base)
    if not ratios:
        return "- compute: no seed with CPU seconds for both (the train child's, measured outside it)"
    median = statistics.median(ratios)
    figure = (f"the train child's CPU seconds (measured by the runner, outside the child; a seed is one process), "
              f"candidate / incumbent: median **{median:.2f}x** over {len(ratios)} seed(s)")
    if median > COMPUTE_NOTE_RATIO:
        return (f"- **more compute than the incumbent**: {figure}. The examples counted inside the candidate's "
                "process are what the budget holds it to; a costlier model or update rule explains this, and so "
                "would work that count did not see (SECURITY.md, in-process counting)")
    return f"- compute: {figure}"


def _gate_section(gate: "StageDecision", run: RunFacts) -> str:
    g = run.gate
    looks = ", ".join(str(k) for k in gate.stages)
    return "\n".join([
        f"- look {gate.stage + 1} of {len(gate.stages)} (cumulative paired seeds per look: {looks}); this look used "
        f"{len(gate.seeds)} seeds x {gate.examples} test examples; decision: **{gate.action}**",
        f"- mean improvement (candidate minus incumbent, test {run.metric_name}): **{gate.mean_difference:+.4f}**",
        f"- variance of that mean from two sources of noise: seeds {gate.var_seeds:.3g}, test examples "
        f"{gate.var_examples:.3g} (standard error {gate.se:.4f}); t = {gate.statistic:.3g} on {gate.df:g} df",
        f"- 95% interval (both sources, not adjusted for stopping early): [{gate.ci95[0]:+.4f}, {gate.ci95[1]:+.4f}]",
        f"- one-sided p = {gate.p_value:.3g} against this look's boundary {gate.boundary:.3g} (alpha/m = "
        f"{g.alpha}/{g.proposals} = {gate.threshold:.4g}, spent {gate.spending} over the looks: {gate.alpha_spent:.3g} "
        "so far)" + (f"; futility: reject at p >= {gate.futility}" if gate.futility is not None else ""),
        f"- lower confidence bound at this look's level: {gate.ci_low:+.4f} (accept only above min_delta = "
        f"{gate.min_delta})",
        f"- seeds won: {gate.win_rate:.0%} (descriptive, not a rule)",
    ])


def _device_note(trials: list["TrialRecord"]) -> str:
    """Which device ran each trial, and whether its result is bit-reproducible there."""
    parts = []
    for t in trials:
        det = _field(t.summary, "train_report", "determinism")
        bit = _field(det, "bit_reproducible")
        if not isinstance(bit, bool):
            repro = "bit-reproducibility not reported by this harness"
        elif bit:
            repro = "bit-reproducible (deterministic kernels only)"
        else:
            ops = _field(det, "nondeterministic_ops")
            ops = [markdown_inline(o, 80) for o in ops if isinstance(o, str)][:3] if isinstance(ops, list) else []
            repro = "NOT bit-reproducible (ops without deterministic kernels: " + ", ".join(ops) + ")"
        device = _string(_field(t.summary, "train_report", "device")) or _string(_field(t.summary, "device")) or "?"
        parts.append(f"seed {t.seed} on {markdown_inline(device, 80)}: {repro}")
    return "trials: " + ("; ".join(parts) if parts else "-")


def _limits_note(trials: list["TrialRecord"]) -> str:
    """What really capped memory and processes in these trials: the sandbox's own notes."""
    held: list[str] = []
    for t in trials:
        notes = _field(t.summary, "notes")
        for note in notes[:20] if isinstance(notes, list) else []:
            if isinstance(note, str) and note.startswith(("memory:", "processes:")) and note not in held:
                held.append(note[:300])
    return "; ".join(markdown_inline(n, 200) for n in held[:4]) or "-"


def _secondary_section(record: "ProposalRecord") -> list[str]:
    """Macro-F1 and per-class accuracy on test, beside the gated metric; shown, never gated."""
    inc = {t.seed: _field(t.summary, "secondary") for t in record.incumbent_trials}
    rows = ["## Secondary metrics (test; shown, not gated)", "",
            "| seed | candidate macro-F1 | incumbent macro-F1 | candidate per-class accuracy |", "|---:|---:|---:|---|"]
    notes = set()
    for t in record.candidate_trials:
        sec = _field(t.summary, "secondary")
        for key in ("unavailable", "error"):
            if isinstance(note := _field(sec, key), str):
                notes.add(markdown_inline(note, 300))
        per_class = _field(sec, "per_class_accuracy")
        per_class = " ".join(_fmt(a, 2) for a in per_class[:100]) if isinstance(per_class, list) else ""
        rows.append(f"| {t.seed} | {_fmt(_field(sec, 'macro_f1'))} | {_fmt(_field(inc.get(t.seed), 'macro_f1'))} | "
                    f"{per_class or '-'} |")
    return rows + [""] + [f"> {n}" for n in sorted(notes)] + ([""] if notes else [])


def _what_it_does(record: "ProposalRecord", files: tuple[Files, Files] | None) -> tuple[list[str], list[str]]:
    """The deterministic description of the change (autoresearch.describe) and the flags on what
    the title and hypothesis name that the diff does not touch."""
    from autoresearch.describe import describe_change, title_claims_unsupported

    if files is None:
        return [], []
    try:
        return describe_change(*files), title_claims_unsupported(record.title, record.hypothesis, *files)
    except Exception as exc:  # a description is a courtesy; never the reason a report is lost
        return [f"(not described: {type(exc).__name__})"], []


def _journal_lines(rounds: object) -> list[dict]:
    """The journal's well-formed lines (it is read back from disk: anything else is skipped)."""
    return [r for r in rounds if isinstance(r, dict)] if isinstance(rounds, list) else []


def _agent_rounds(rounds: list[dict]) -> str:
    """'3 replies: static check failed, smoke run failed, ok (whole-file)' from the agent's journal."""
    rounds = _journal_lines(rounds)
    if not rounds:
        return ""
    said = {"ok": "passed", "parse": "unreadable", "apply": "did not apply", "static": "static check failed",
            "duplicate": "duplicate", "smoke": "smoke run failed", "bundled": "several changes in one"}
    checks = ", ".join(said.get(str(r.get("check")), "?") for r in rounds)
    fmt = _string(rounds[-1].get("edit_format"), 40) or "-"
    smoke_s = sum(_number(r.get("smoke_seconds")) or 0.0 for r in rounds)
    return (f"{len(rounds)} repl{'y' if len(rounds) == 1 else 'ies'}, {len(rounds) - 1} repair round(s): {checks} "
            f"(edit format {markdown_inline(fmt, 40)}; smoke runs {smoke_s:.1f}s)")


def _agent_edits(rounds: list[dict]) -> str:
    """What the agent changed in the proposal's last reply before any check (an import added, a
    setting carried over from another update rule dropped), from the journal; '' where nothing."""
    rounds = _journal_lines(rounds)
    notes = rounds[-1].get("notes") if rounds else None
    if not isinstance(notes, list):
        return ""
    return "; ".join(markdown_inline(n, 300) for n in notes[:5] if isinstance(n, str))


def _draft_lines(row: dict) -> list[str]:
    """What a proposal drafted ahead (pipelining) was written against, and whether it was rebased."""
    try:
        draft = json.loads(row.get("draft_json") or "{}")
    except ValueError:
        return []
    if not isinstance(draft, dict) or not draft.get("drafted_on"):
        return []
    seen = draft.get("seen_upto")
    line = (f"- drafted ahead (pipelining) against the incumbent `{draft['drafted_on']}`, with the decisions "
            f"up to #{seen} in the agent's view" if seen else
            f"- drafted ahead (pipelining) against the incumbent `{draft['drafted_on']}`, before any decision")
    if draft.get("rebased_onto"):
        merged = draft.get("merged") or []
        line += (f"; the incumbent moved (accepted: {markdown_inline(str(draft.get('moved_by', '?')), 200)}), so its "
                 f"change was rebased onto `{draft['rebased_onto']}` by a three-way merge ("
                 + (f"merged within {', '.join(markdown_inline(p, 100) for p in merged)}" if merged else
                    "no file changed on both sides") + "): the code judged is the rebased one shown below; the "
                 "agent's checks and smoke run saw the drafted one")
    return [line]


def write_proposal_report(run: RunFacts, record: "ProposalRecord", ctx: ProposalContext) -> Path:
    spec, row, llm = run.spec, ctx.row or {}, ctx.llm
    out = run.run_dir / "reports" / report_name(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    decision = "ACCEPTED" if record.decision == "accepted" else "REJECTED"
    trials = record.candidate_trials
    train_s = sum(_number(_field(t.summary, "train", "run")) or 0.0 for t in trials if not t.cached)
    predict_s = sum(_number(_field(t.summary, "predict", "run")) or 0.0 for t in trials if not t.cached)
    devices = sorted({_string(_field(t.summary, "device")) or run.device for t in trials}) or [run.device]
    does, flags = _what_it_does(record, ctx.files)
    rounds, edits = _agent_rounds(ctx.journal), _agent_edits(ctx.journal)
    lines = [
        f"# Proposal {record.idx:03d}: {markdown_inline(record.title, 200)}",
        "",
        "**What the diff does** (read from the code by autoresearch, not written by the model):",
        "",
        *([f"- {markdown_inline(line, 300)}" for line in does[:30]] or ["- (no change could be applied)"]),
        "",
        "**The model's claims** (its own words, not checked except as flagged):",
        "",
        f"- title: {markdown_inline(record.title, 200)}",
        f"- hypothesis: {markdown_inline(record.hypothesis, 4000) or '-'}",
        *[f"- **not supported by the diff:** {markdown_inline(flag, 400)}" for flag in flags],
        "",
        f"**Decision: {decision}** (reason: `{record.reason}`)",
        "",
        f"> {markdown_inline(record.detail)}" if record.detail else "",
        "",
        f"- run: `{run.run_id}`; benchmark `{spec.name}` v{spec.version}; source: {row.get('source', '-')}",
        f"- idea: {markdown_inline(run.idea) if run.idea else '(proposals file, no idea)'}",
        *([f"- agent: {rounds}"] if rounds else []),
        *([f"- the agent's own edits to the model's reply (in the diff): {edits}"] if edits else []),
        f"- parent (incumbent) commit: `{row.get('parent_commit', '-')}`; this proposal's commit: `{record.commit}` "
        f"(ref `refs/proposals/{record.idx:03d}`)",
        *_draft_lines(row),
        "",
        "## The change",
        "",
        markdown_code(record.diff or "(no change could be applied)", "diff"),
        "",
    ]
    if trials:
        lines += ["## Per-seed results", "",
                  f"Candidate and incumbent share each seed; the gate uses the held-out **test** split "
                  f"({run.counts['test']} examples); val ({run.counts['val']}) is shown for reference.",
                  "", _seed_table(record, run.metric_name), ""]
    if record.gate is not None:
        lines += ["## Gate", "", _gate_section(record.gate, run), ""]
    if trials:
        lines += _secondary_section(record)
    lines += _integrity_section(record, run, ctx.files)
    lines += [
        "## Protocol",
        "",
        "- data fingerprints (sha256): " + ", ".join(f"{k}=`{v[:16]}…`" for k, v in run.fingerprints.items()),
        "- example counts: " + ", ".join(f"{k}={v}" for k, v in run.counts.items()) +
        " (identical for candidate and incumbent, checked per trial)",
        f"- gate: looks at {', '.join(map(str, run.gate.stages))} paired seeds (seeds drawn for this run: "
        f"{list(run.gate_seeds[:max(run.gate.stages)])})",
        f"- budget: {spec.budget.epochs} epochs, batch {spec.budget.batch_size}, train {spec.budget.train_seconds:g}s + "
        f"predict {spec.budget.predict_seconds:g}s (+{spec.budget.grace_seconds:g}s start-up grace), "
        f"{spec.budget.memory_mb} MiB, {spec.budget.max_processes} processes, {spec.budget.threads} thread(s)",
        f"- limits that held: {_limits_note(trials)}",
        f"- timings: proposal wall {record.wall_seconds:.1f}s; sandboxed train {train_s:.1f}s, predict {predict_s:.1f}s "
        f"(candidate trials run now)",
        f"- isolation: **{run.isolation}**" + ("" if run.isolation == "bubblewrap" else
                                               " (no sandbox: candidate code ran with the user's rights)"),
        f"- device: {run.env.get('device') or markdown_inline(', '.join(devices))}; " + _device_note(trials),
        f"- LLM: {llm['calls']} call(s), {llm['prompt_tokens']} prompt + {llm['completion_tokens']} completion tokens, "
        f"~${llm['cost_usd']:.4f}; prompt hash {row.get('prompt_hash') or '-'}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in run.env.get("versions", {}).items()),
        "",
        "## Replay",
        "",
        "```sh",
        f"git -C {run.run_dir / 'repo'} show refs/proposals/{record.idx:03d}   # this change",
        f"git clone {run.run_dir / 'repo'} replay && cd replay && git fetch origin 'refs/proposals/*:refs/proposals/*'",
        f"git checkout refs/proposals/{record.idx:03d}   # the candidate's full editable repo",
        f"autoresearch replay {run.run_dir} --verify   # re-run the accepted chain on fresh seeds",
        "```",
        "",
    ]
    failed = next((t for t in trials if not t.ok), None)
    if failed is not None:
        tail = _field(failed.summary, "log_tail")
        tail = tail[-3000:] if isinstance(tail, str) else ""
        lines += [f"## Log tail (seed {failed.seed})", "", markdown_code(tail), ""]
    out.write_text("\n".join(lines))
    return out


def write_plot(metric_name: str, records: list["ProposalRecord"], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(records) + 3), 4))
    for r in records:
        if r.gate is not None:
            color = "tab:green" if r.decision == "accepted" else "tab:red"
            lo, hi = r.gate.ci95
            ax.errorbar(r.idx, r.gate.mean_difference, yerr=[[r.gate.mean_difference - lo], [hi - r.gate.mean_difference]],
                        fmt="o", color=color, capsize=4)
        else:
            ax.plot(r.idx, 0, marker="x", color="grey")
            ax.annotate(r.reason, (r.idx, 0), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7,
                        rotation=90, color="grey")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("proposal")
    ax.set_ylabel(f"test {metric_name}: candidate - incumbent")
    ax.set_title("each proposal against the incumbent of its time (mean, 95% CI; x = not trained/failed)")
    ax.set_xticks([r.idx for r in records] or [1])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(run: RunFacts, records: list["ProposalRecord"], llm_totals: dict,
                  files: dict[int, tuple[Files, Files] | None], headline: dict | None = None) -> Path:
    """REPORT.md, its plot and results.tsv from the records so far: after every proposal (a run
    killed later keeps them), and at the end with the headline (``headline`` None: still running).
    ``files`` holds each record's (incumbent, candidate) files, for the unsupported-title flags."""
    write_results_tsv(run.run_dir, records)
    spec, totals = run.spec, llm_totals
    if headline is not None:  # the plot once, at the end (matplotlib is the slow part of a summary)
        write_plot(run.metric_name, records, run.run_dir / "summary.png")
    accepted = [r for r in records if r.decision == "accepted"]
    lines = [f"# Run {run.run_id}", "",
             f"- benchmark: `{spec.name}` v{spec.version}; idea: "
             f"{markdown_inline(run.idea) if run.idea else '(proposals file)'}",
             f"- proposals: {len(records)} decided of a budget of {run.gate.proposals}; accepted: {len(accepted)}",
             f"- gate: sequential, paired seeds in looks of {', '.join(map(str, run.gate.stages))} on test, "
             f"noise of seeds and test examples, alpha={run.gate.alpha} over the run, m={run.gate.proposals} "
             f"(each proposal at {run.gate.threshold:.4g}, spent {run.gate.spending} over its looks), "
             f"min_delta={run.gate.min_delta}",
             f"- isolation: **{run.isolation}**" + ("" if run.isolation == "bubblewrap" else
                                                   " (no sandbox: candidate code ran with the user's rights)") +
             f"; device: {run.env.get('device')}",
             f"- LLM: {totals['calls']} calls, {totals['prompt_tokens'] + totals['completion_tokens']} tokens, "
             f"~${totals['cost_usd']:.4f}",
             "", "## Headline (re-verified on fresh seeds)", ""]
    if headline is None:
        lines += ["The run is not finished: no headline yet (the accepted chain is re-verified on fresh seeds at "
                  "the end). The proposals decided so far are below."]
    elif headline.get("verified"):
        g = headline["gate"]
        lines += [f"The accepted chain ({headline['accepted']} change(s)) against the original baseline on fresh seeds "
                  f"{headline['seeds']}: test {run.metric_name} {headline['baseline_mean']:.4f} -> "
                  f"{headline['final_mean']:.4f}, mean improvement **{g['mean_difference']:+.4f}** "
                  f"(95% CI [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}], one-sided p={g['p_value']:.3g}); "
                  f"{'the gain holds' if headline['holds'] else 'the gain does NOT hold at alpha=' + str(run.gate.alpha)}."]
    else:
        lines += [headline.get("detail", "not verified")]
    lines += ["", "Selection-time figures below are optimistic by construction; the headline above is not.", "",
              "## Proposals", "", "Titles are the model's words; a title naming something the diff does not touch is "
              "flagged (**unsupported: ...**).", "",
              "| # | title | decision | reason | mean diff | 95% CI | p | report |",
              "|---:|---|---|---|---:|---|---:|---|"]
    for r in records:
        g = r.gate
        rep = Path(r.report_path).name if r.report_path else ""
        _, flags = _what_it_does(r, files.get(r.idx))
        flag = f" **unsupported: {markdown_inline('; '.join(flags), 300)}**" if flags else ""
        lines.append(f"| {r.idx} | {markdown_inline(r.title, 120)}{flag} | {r.decision} | {r.reason} | "
                     f"{_signed(g.mean_difference) if g else '-'} | "
                     f"{f'[{g.ci95[0]:+.4f}, {g.ci95[1]:+.4f}]' if g else '-'} | {f'{g.p_value:.3g}' if g else '-'} | "
                     f"[{rep}](reports/{rep}) |")
    if headline is not None:
        lines += ["", "![each proposal against its incumbent](summary.png)"]
    lines += ["", "## Replay", "", "```sh",
              f"autoresearch replay {run.run_dir} --verify", f"git -C {run.run_dir / 'repo'} log --oneline accepted",
              "```", ""]
    path = run.run_dir / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


RESULTS_COLUMNS = ("proposal", "commit", "decision", "reason", "mean_difference", "ci95_low", "ci95_high", "p_value",
                   "seeds", "title")


def write_results_tsv(run_dir: Path, records: list["ProposalRecord"]) -> Path:
    """results.tsv, one row per decided proposal (as karpathy/autoresearch keeps one): rewritten
    whole from the ledger, so a row appears once even when a killed run finishes it again."""
    def cell(x: object) -> str:
        return " ".join(str(x).split()) if x is not None else "-"  # tabs and line breaks of a model's title

    rows = ["\t".join(RESULTS_COLUMNS)]
    for r in records:
        g = r.gate
        rows.append("\t".join(cell(x) for x in (
            r.idx, (r.commit or "")[:12] or None, r.decision, r.reason,
            f"{g.mean_difference:+.6f}" if g else None, f"{g.ci95[0]:+.6f}" if g else None,
            f"{g.ci95[1]:+.6f}" if g else None, f"{g.p_value:.4g}" if g else None,
            len(r.candidate_trials) or None, one_line(r.title, 120))))
    path = Path(run_dir) / "results.tsv"
    tmp = path.with_suffix(".tsv.tmp")
    tmp.write_text("\n".join(rows) + "\n")
    tmp.replace(path)
    return path


def run_summary_json(row: dict, records: list["ProposalRecord"], isolation: str) -> dict:
    """`show --json`: the ledger's run row and the records, with the isolation that ran them."""
    return {
        "run_id": row.get("id"),
        "benchmark": row.get("benchmark"),
        "benchmark_version": row.get("benchmark_version"),
        "status": row.get("status"),
        "isolation": isolation,
        "idea": row.get("idea"),
        "fingerprints": json.loads(row["fingerprints_json"]) if row.get("fingerprints_json") else None,
        "counts": json.loads(row["counts_json"]) if row.get("counts_json") else None,
        "headline": json.loads(row["headline_json"]) if row.get("headline_json") else None,
        "proposals": [{
            "index": r.idx, "title": r.title, "decision": r.decision, "reason": r.reason, "detail": r.detail,
            "mean_difference": r.gate.mean_difference if r.gate else None,
            "ci95": list(r.gate.ci95) if r.gate else None, "p_value": r.gate.p_value if r.gate else None,
            "threshold": r.gate.threshold if r.gate else None, "commit": r.commit, "report": r.report_path,
            "per_seed": [{"seed": t.seed, "role": "candidate", "status": t.status, "test": t.test_metric,
                          "val": t.val_metric, "device": _string(_field(t.summary, "device"))}
                         for t in r.candidate_trials] +
                        [{"seed": t.seed, "role": "incumbent", "status": t.status, "test": t.test_metric,
                          "val": t.val_metric, "device": _string(_field(t.summary, "device"))}
                         for t in r.incumbent_trials],
        } for r in records],
    }
