"""The agent's messages: the proposal prompt, the run's memory and the repair rounds.

Templates live in ``prompts/`` (their hash goes into each record). The prompt is ordered for the
local server's prompt cache: what stays the same over a run (rules, idea, files) comes first, the
history last, and a repair round only appends to the conversation.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from importlib import resources

from autoresearch.agent.directions import directions_text
from autoresearch.agent.proposal import EditFormat
from autoresearch.agent_port import PastProposal, Task

PROMPT_FILES = ("system.md", "format-whole-file.md", "format-search-replace.md", "proposal.md",
                "task-whole-file.md", "task-search-replace.md", "repair.md")
# The run's memory: one line per earlier proposal while they fit in this many characters (about
# 1k tokens; the 1.5B default has an 8k context); past it, older rejected ones shrink to a token.
HISTORY_CHARS = 4000
LINE_CHARS = 240
FORMAT_LINE = {"whole-file": "Title, Hypothesis, File, then the COMPLETE new content of that one file in a "
                             "```python block",
               "search-replace": '{"title", "hypothesis", "edits": [{"path", "search", "replace"}]}; every "search" '
                                 'is copied exactly from the current file and occurs there once'}


def template(name: str) -> str:
    return resources.files("autoresearch.prompts").joinpath(name).read_text(encoding="utf-8")


def prompt_hash() -> str:
    """sha256 of the prompt templates (recorded with each proposal)."""
    h = hashlib.sha256()
    for name in PROMPT_FILES:
        h.update(name.encode() + b"\0" + template(name).encode() + b"\0")
    return h.hexdigest()


def _fill(name: str, **values: str) -> str:
    return string.Template(template(name)).safe_substitute(**values).strip()


# --------------------------------------------------------------------------- memory


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def history_line(p: PastProposal, metric: str) -> str:
    """'#3 accepted | optim.py: torch.optim.SGD -> torch.optim.Adam | val accuracy 0.9312 vs 0.6241 (2 seeds)'."""
    verdict = "accepted" if p.decision == "accepted" else f"rejected ({p.reason})"
    parts = [f"#{p.idx} {verdict}", "; ".join(p.changes) if p.changes else f"title {p.title!r}, not applied"]
    if p.val_candidate is not None and p.val_incumbent is not None:
        parts.append(f"val {metric} {p.val_candidate:.4f} vs {p.val_incumbent:.4f} ({p.seeds} seed(s))")
    if p.detail:
        parts.append(p.detail)
    return _one_line(" | ".join(parts), LINE_CHARS)


def history_text(history: list[PastProposal], metric: str, budget: int = HISTORY_CHARS) -> str:
    """Every earlier proposal, one compact line each, oldest first. Past ``budget`` characters the
    oldest rejected ones shrink to '#idx reason' (accepted ones always keep their line: they are
    the code the model builds on). Validation figures only: PastProposal holds no test figure."""
    if not history:
        return "(none yet)"
    lines = {p.idx: history_line(p, metric) for p in history}
    short: list[PastProposal] = []
    for p in history:  # oldest first
        if sum(len(v) + 1 for v in lines.values()) <= budget:
            break
        if p.decision != "accepted":
            short.append(p)
            del lines[p.idx]
    out = []
    if short:
        tokens = "older rejected: " + ", ".join(f"#{p.idx} {p.reason}" for p in short)
        if len(tokens) > budget // 4:  # hundreds of them: counts per reason
            from collections import Counter

            counts = Counter(p.reason for p in short)
            tokens = (f"older rejected: {len(short)} proposals (#{short[0].idx}-#{short[-1].idx}): "
                      + ", ".join(f"{n} {reason}" for reason, n in counts.most_common()))
        out.append(tokens)
    return "\n".join(out + list(lines.values()))


# --------------------------------------------------------------------------- the proposal prompt

_NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+|\d+e-?\d+|\d{2,})(?![\w.])")


def example_proposal(files: dict[str, str], editable: list[str] | tuple[str, ...]) -> dict | None:
    """A search-replace example anchored on a real, unique line of the incumbent: one number in it
    scaled. (A placeholder such as "<new text>" gets copied verbatim by small models.) Floats are
    preferred: they are usually hyperparameters, so the example stays runnable."""
    candidates = []
    for path in [p for p in editable if p in files]:
        text = files[path]
        for line in text.splitlines():
            s = line.strip()
            if not s or s.startswith(("#", '"', "'")) or text.count(line) != 1:
                continue
            m = _NUMBER.search(line)
            if m:
                candidates.append((0 if ("." in m.group(1) or "e" in m.group(1)) else 1, path, line, m))
    if not candidates:
        return None
    _, path, line, m = min(candidates, key=lambda c: c[0])
    value = m.group(1)
    new = repr(float(value) / 2) if ("." in value or "e" in value) else str(int(value) * 2)
    return {"title": "Short name of the change", "hypothesis": "Why it should beat the incumbent.",
            "edits": [{"path": path, "search": line, "replace": line[:m.start()] + new + line[m.end():]}]}


def example_text(files: dict[str, str], editable) -> str:
    example = example_proposal(files, editable)
    return json.dumps(example) if example else json.dumps(
        {"title": "Short name", "hypothesis": "Why it helps.",
         "edits": [{"path": editable[0] if editable else "file.py", "search": "exact old text", "replace": "new text"}]})


def file_roles(files: dict[str, str], editable) -> str:
    """'- optim.py: The optimizer. ...' from each editable file's docstring (its first sentence)."""
    import ast

    lines = []
    for path in editable:
        role = ""
        if path.endswith(".py") and path in files:
            try:
                doc = ast.get_docstring(ast.parse(files[path])) or ""
            except (SyntaxError, ValueError, RecursionError):
                doc = ""
            role = _one_line(doc.split("\n\n")[0], 160)
        lines.append(f"- {path}" + (f": {role}" if role else ""))
    return "\n".join(lines)


def build_messages(task: Task, idea: str, files: dict[str, str], history: list[PastProposal],
                   edit_format: EditFormat) -> list[dict]:
    shown = "".join(f"## {path}\n```python\n{text.rstrip()}\n```\n" for path, text in sorted(files.items()))
    metric_name = task.metric.split(" ")[0]
    task_text = _fill("task-whole-file.md") if edit_format == "whole-file" else \
        _fill("task-search-replace.md", example=example_text(files, task.editable))
    user = _fill("proposal.md", idea=idea or "(no idea given: improve the metric)", benchmark=task.benchmark,
                 description=task.description, metric=task.metric, metric_name=metric_name, budget=task.budget,
                 roles=file_roles(files, task.editable), files=shown, history=history_text(history, metric_name),
                 directions=directions_text(files, task.editable, history), task=task_text)
    system = _fill("system.md", format=_fill(f"format-{edit_format}.md"))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------- repair rounds

PROBLEM = {
    "parse": "Your reply could not be used: {error}",
    "apply": "Your change could not be applied: {error}",
    "static": "Your change would not run: {error}",
    "duplicate": "{error}. Propose a different change.",
    "bundled": "{error}.",
    "smoke": "A short test run of your change (one epoch on a slice of the training data) failed:\n{error}\n"
             "Fix the code.",
}


FAILED_AS = {"parse": "could not be used", "apply": "could not be applied", "static": "would not run",
             "duplicate": "repeated what was measured or computes the same", "smoke": "failed a short test run",
             "bundled": "made several changes at once"}


def start_over(messages: list[dict], failures: list[tuple[str, str]], hint: str = "") -> list[dict]:
    """The proposal's first prompt again, its failed replies left out and listed by what went
    wrong: a small model shown its failed reply tends to send it back nearly unchanged (the same
    `class build_optimizer(...)` syntax error three times, the same duplicate three times), so a
    repeat, or a second failed reply, starts over from the prompt with the failures as notes."""
    notes = "\n".join(f"- it {FAILED_AS.get(check, FAILED_AS['parse'])}: {_one_line(error, 300)}"
                      for check, error in failures)
    note = (f"\n\n# Before this, {len(failures)} repl{'y' if len(failures) == 1 else 'ies'} of yours for this "
            f"proposal failed (not shown)\n{notes}\nWrite a new reply from the current code above: a different "
            "change, or the same idea written so that none of these problems happens again."
            + (f" {hint}" if hint else ""))
    return messages[:-1] + [{**messages[-1], "content": messages[-1]["content"] + note}]


def repair_message(check: str, error: str, editable, edit_format: EditFormat, hint: str = "") -> dict:
    """The next user turn after a failed check. ``hint``: what the run has not tried yet on the
    current code (directions.untried_hint), said after a repeat so the model has somewhere to go."""
    problem = PROBLEM.get(check, PROBLEM["parse"]).format(error=error.strip())
    if hint:
        problem += " " + hint
    if check == "apply" and "change nothing" in error:
        problem = ("Your reply repeats the current code unchanged. Write the file WITH your change made in it "
                   "(a different optimizer, setting, layer or loop: a real change that pursues the idea).")
    return {"role": "user", "content": _fill("repair.md", problem=problem, format=FORMAT_LINE[edit_format],
                                             editable=", ".join(editable))}
