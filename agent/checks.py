"""The agent's checks of a reply before any gate trial is spent on it.

In order, cheapest first: parse it, apply it to the incumbent (confined to the editable set),
compile and read it statically (pyflakes: undefined names; a function the harness may call
removed; calls into torch.optim that cannot bind, or a schedule whose step() needs an argument the
training loop does not pass: agent.torch_calls), refuse a change that cannot change behaviour (comments, docstrings, an optimizer argument
written at its default: directions.same_behaviour), refuse a repeat of an earlier change (the same
files, or the same kind of change, as autoresearch.describe says it, that was already measured not
better than this same incumbent),
then a smoke run in the sandbox (the engine's
one-epoch run on a slice of the train split). Each failure names the check, so the loop can send
it back as a repair round; out of rounds, the reply is recorded with that reason and never trained.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import sys
from typing import Callable

from autoresearch.agent.proposal import (ApplyFailed, Edit, InvalidProposal, NotEditable, Proposal,
                                         ProposalRejected, apply_proposal, normalise_path, parse_reply)
from autoresearch.agent.directions import behaviour_key, same_behaviour, since_last_acceptance
from autoresearch.agent.repo_calls import entry_point_problem, repo_call_problem
from autoresearch.agent.torch_calls import (bundled_changes, carried_settings, drop_logging_keywords,
                                           torch_call_problem)
from autoresearch.agent_port import PastProposal
from autoresearch.describe import describe_change
from autoresearch.reasons import Reason


class StaticCheckFailed(ProposalRejected):
    """Applies, but leaves Python that would not compile or run (syntax, undefined name, a removed function)."""

    reason = Reason.STATIC_CHECK


class SmokeFailed(ProposalRejected):
    """Applies and compiles, but its smoke run crashed, went non-finite, timed out or broke the rules."""

    reason = Reason.SMOKE_FAILED


class DuplicateProposal(ProposalRejected):
    """Leads to the same files as an earlier proposal: recorded, never trained again."""

    reason = Reason.DUPLICATE


class BundledChange(ProposalRejected):
    """Makes several optimizer changes at once (torch_calls.bundled_changes). Asked only of a
    proposal's first reply, and only while a repair round is left, so it is never a verdict: a
    second reply that still bundles them goes on to the gate."""

    reason = Reason.STATIC_CHECK  # never recorded (see above); the closest reason if it were


def bundled_problem(files: dict[str, str], new_files: dict[str, str]) -> BundledChange | None:
    parts = bundled_changes(files, new_files)
    if not parts:
        return None
    return BundledChange(f"your change makes {len(parts)} changes at once ({'; '.join(parts)}). Change ONE thing, "
                         f"so that its effect is measured on its own: keep only {parts[0]} (or only one of the "
                         "others) and leave the rest of the file as it is now; the others can be later proposals")


# The name of the check for each rejection (the repair message and the journal say it).
def check_name(exc: ProposalRejected) -> str:
    if isinstance(exc, BundledChange):
        return "bundled"
    if isinstance(exc, StaticCheckFailed):
        return "static"
    if isinstance(exc, SmokeFailed):
        return "smoke"
    if isinstance(exc, DuplicateProposal):
        return "duplicate"
    if isinstance(exc, (ApplyFailed, NotEditable)):
        return "apply"
    return "parse"


def undefined_names(source: str, path: str) -> list[str]:
    """Names the module would look up but never defines (static analysis with pyflakes: nothing of
    the candidate runs). Weak models often replace `optimizer = ...` and leave `optimizer` unset."""
    from pyflakes import api, messages
    from pyflakes.reporter import Reporter

    found: list[str] = []

    class Collect(Reporter):
        def __init__(self):
            super().__init__(io.StringIO(), io.StringIO())

        def flake(self, message):
            if isinstance(message, messages.UndefinedName):
                found.append(f"'{message.message_args[0]}' (line {message.lineno})")

    api.check(source, path, Collect())
    return found


# The import a commonly used module name needs (said in the repair message).
IMPORTS = {"math": "import math", "torch": "import torch", "nn": "import torch.nn as nn",
           "F": "import torch.nn.functional as F", "np": "import numpy as np", "optim": "import torch.optim as optim",
           "lr_scheduler": "from torch.optim import lr_scheduler", "random": "import random"}


def import_line(name: str) -> str | None:
    """The import an undefined name needs: a common module (IMPORTS), or a class of torch.optim or
    torch.optim.lr_scheduler written bare (`CosineAnnealingLR(...)` with no import: the 1.5B model
    writes the class it means and forgets where it lives). None for anything else."""
    if name in IMPORTS:
        return IMPORTS[name]
    if not name[:1].isupper():
        return None
    try:
        import torch.optim
        import torch.optim.lr_scheduler
    except ImportError:  # an orchestrator without torch: only the common modules are known
        return None
    for module in ("torch.optim", "torch.optim.lr_scheduler"):
        if inspect.isclass(getattr(sys.modules[module], name, None)):
            return f"from {module} import {name}"
    return None


def mechanical_repairs(proposal: Proposal) -> Proposal:
    """The repairs the agent makes itself, to whole files only: a torch.optim call loses a keyword
    that only sets printing and that the installed torch no longer takes (`verbose`), and a file
    that uses a common module (math, torch, nn, ...) or a torch.optim class without importing it
    gets the import line at its top, when nothing else is undefined (the 1.5B model drops `import
    math` and does not put it back when told). Deterministic from the reply, so a resume makes the
    same change; the diff and its description show them like any other line, and the checks that
    follow judge an imported class like any other torch.optim call."""
    edits, notes = [], list(proposal.notes)
    for edit in proposal.edits:
        if edit.search == "" and edit.path.endswith(".py"):
            dropped = drop_logging_keywords(edit.replace)
            if dropped != edit.replace:
                edit = Edit(path=edit.path, search="", replace=dropped)
                notes.append(f"{edit.path}: `verbose=` dropped from a torch.optim call (it only sets printing; "
                             "this torch no longer takes it)")
            try:
                names = [n.split("'")[1] for n in undefined_names(edit.replace, edit.path)]
            except SyntaxError:
                names = []
            lines = {n: import_line(n) for n in set(names)}
            missing = sorted({line for line in lines.values() if line})
            if missing and all(lines.values()):  # only then: nothing else is undefined
                edit = Edit(path=edit.path, search="", replace=_insert_imports(edit.replace, missing))
                notes.append(f"{edit.path}: added `{'`, `'.join(missing)}` (used without being imported)")
        edits.append(edit)
    return proposal if tuple(edits) == proposal.edits else \
        Proposal(title=proposal.title, hypothesis=proposal.hypothesis, edits=tuple(edits), notes=tuple(notes))


def _insert_imports(source: str, lines: list[str]) -> str:
    """After the module docstring and any `from __future__` import, else at the top."""
    try:
        body = ast.parse(source).body
    except (SyntaxError, ValueError, RecursionError):
        return "\n".join(lines) + "\n" + source
    at = 0
    for node in body:
        is_doc = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        if (is_doc and node is body[0]) or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            at = node.end_lineno or at
        else:
            break
    src = source.splitlines(keepends=True)
    return "".join(src[:at]) + "".join(line + "\n" for line in lines) + "".join(src[at:])


def _assignment_line(source: str, name: str) -> str | None:
    """The first statement of ``source`` that assigns ``name`` (as written, one line), or None.
    Small models delete `optimizer = ...` while replacing it and keep using `optimizer`: the repair
    round quotes the line they dropped instead of describing it."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return None
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            text = ast.get_source_segment(source, node) or ""
            return " ".join(text.split())[:200] or None
    return None


def _top_level_functions(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return set()
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def static_problem(old: dict[str, str], new: dict[str, str]) -> str | None:
    """Why the changed Python files would not run, or None. Parses only; nothing of the candidate runs."""
    for path, text in sorted(new.items()):
        if not path.endswith(".py") or text == old.get(path):
            continue
        try:
            compile(text, path, "exec")
        except SyntaxError as exc:
            line = (exc.text or "").strip()
            turned = re.match(r"class\s+(\w+)\s*\(", line)
            kept = turned and re.search(rf"^\s*def\s+{turned.group(1)}\s*\(", old.get(path, ""), re.M)
            return (f"{path} would not compile: {exc.msg} (line {exc.lineno}): {line[:120]}"
                    + (f". {turned.group(1)} is a function in the current code: write `def {turned.group(1)}(...)`, "
                       "not `class`" if kept else ""))
        except ValueError as exc:  # e.g. a null byte
            return f"{path} would not compile: {exc}"
        undefined = undefined_names(text, path)
        if undefined:
            names = list(dict.fromkeys(n.split("'")[1] for n in undefined))
            imports = sorted({line for n in names if (line := import_line(n))})
            kept = [line for n in names if (line := _assignment_line(old.get(path, ""), n))]
            return (f"{path} uses undefined name(s): {'; '.join(undefined[:5])}. "
                    + (f"Add at the top of {path}: {'; '.join(imports)}. " if imports else "")
                    + (f"The current code assigns it in: {'; '.join(f'`{k}`' for k in kept[:3])}. Keep that line "
                       "(with your new values, if changing them is your change) before the lines that use it. "
                       if kept else "")
                    + "Keep every name the replaced code defined (e.g. still assign the variable you changed) "
                    "or import it.")
        removed = sorted(_top_level_functions(old.get(path, "")) - _top_level_functions(text))
        if removed:
            return (f"{path} no longer defines {', '.join(removed)}, which the harness or other files call; "
                    "keep it with the same signature.")
    return None


def at_own_defaults(files: dict[str, str], proposal: Proposal, new_files: dict[str, str]
                    ) -> tuple[Proposal, dict[str, str]]:
    """A switched update rule at its own defaults (torch_calls.carried_settings): each changed file
    where a setting of the old rule was carried over gets it dropped; its edits become one
    whole-file edit with that content, and the proposal says so in ``notes``."""
    edits, notes, out = list(proposal.edits), list(proposal.notes), dict(new_files)
    for path in sorted(p for p in new_files if p.endswith(".py") and new_files[p] != files.get(p)):
        text, dropped = carried_settings(files.get(path, ""), new_files[path])
        if not dropped:
            continue
        first = next(i for i, e in enumerate(edits) if normalise_path(e.path) == path)
        edits = [e for i, e in enumerate(edits) if i == first or normalise_path(e.path) != path]
        edits[first] = Edit(path=path, search="", replace=text)
        out[path] = text
        notes += [f"{path}: {n}" for n in dropped]
    if out == new_files:
        return proposal, new_files
    return Proposal(title=proposal.title, hypothesis=proposal.hypothesis, edits=tuple(edits),
                    notes=tuple(notes)), out


def prepare_reply(raw: str, files: dict[str, str], editable, *, example: dict | None = None
                  ) -> tuple[Proposal, dict[str, str]]:
    """Parse a reply, make the agent's own repairs, and apply it to ``files``: (proposal as it will
    be recorded, new files), or raise the parse or apply failure."""
    proposal = parse_reply(raw)
    if example is not None and proposal.edits and \
            [(e.path, e.search, e.replace) for e in proposal.edits] == [tuple(e.values()) for e in example["edits"]]:
        raise InvalidProposal("that is the format example from the prompt, not a proposal of your own")
    proposal = mechanical_repairs(proposal)
    return at_own_defaults(files, proposal, apply_proposal(files, proposal, list(editable)))


def check_reply(raw: str, files: dict[str, str], editable, history: list[PastProposal], *,
                change_hash: Callable[[dict[str, str]], str], example: dict | None = None
                ) -> tuple[Proposal, dict[str, str]]:
    """Parse a reply and dry-run it on the incumbent's ``files``: (proposal, new files), or raise
    the ProposalRejected of the first check it fails (all but the smoke run). ``change_hash`` is
    the port's hash of a file set, the one earlier proposals' ``change_hash`` was made with."""
    proposal, new_files = prepare_reply(raw, files, editable, example=example)
    problem = static_problem(files, new_files) or torch_call_problem(files, new_files) or \
        repo_call_problem(files, new_files) or entry_point_problem(files, new_files)
    if problem:
        raise StaticCheckFailed(problem)
    if same_behaviour(files, new_files):
        raise DuplicateProposal("duplicate: your change computes exactly what the current code computes (it changes "
                                "only comments, docstrings, layout, or writes out an optimizer argument at its "
                                "default value); change a value or the code itself")
    change, behaviour = change_hash(new_files), behaviour_key(new_files)
    for p in history:
        if p.change_hash == change:
            what = "; ".join(p.changes) or p.title
            raise DuplicateProposal(f"duplicate: the same change as proposal #{p.idx} ({what}), which was "
                                    f"{p.decision}" + (f" ({p.reason})" if p.decision != "accepted" else ""))
        if p.behaviour == behaviour:
            what = "; ".join(p.changes) or p.title
            raise DuplicateProposal(f"duplicate: your change computes exactly what proposal #{p.idx} ({what}) "
                                    f"computed (it differs only in comments, docstrings, layout or unused imports), "
                                    f"which was {p.decision}" + (f" ({p.reason})" if p.decision != "accepted" else ""))
    earlier = same_kind_measured(files, new_files, history)
    if earlier is not None:
        raise DuplicateProposal(f"duplicate: the same kind of change as proposal #{earlier.idx} "
                                f"({'; '.join(earlier.changes)}), which was measured against this same code and "
                                f"was not better")
    return proposal, new_files


def same_kind_measured(files: dict[str, str], new_files: dict[str, str],
                       history: list[PastProposal]) -> PastProposal | None:
    """The earlier proposal that made the same kind of change to this same incumbent and was judged
    not better, if any. "Kind" is what autoresearch.describe says the diff does: its lines name the
    calls added or replaced and the settings changed, not every argument (a CosineAnnealingLR with
    another T_max is the same kind). Only proposals since the last acceptance count (they were
    judged against the current code; once it moves, an old idea may pay), and only those that ran
    and lost (a crash says nothing about the idea). Small models re-propose a rejected change under a
    new title; the proposal budget is better spent on another idea."""
    losers = [p for p in since_last_acceptance(history) if p.reason == Reason.NOT_BETTER and p.changes]
    if not losers:
        return None
    try:
        kind = tuple(describe_change(files, new_files))
    except Exception:  # a description is evidence, never the reason a reply fails
        return None
    return next((p for p in losers if tuple(p.changes) == kind), None)


def smoke_problem(result) -> str | None:
    """The smoke run's failure as text for the model, or None when it ran cleanly."""
    if result.ok:
        return None
    # Python 3.11's position markers (lines of ^ and ~ only) say nothing a small model uses and
    # would take the place of the frames and the error line in the last 12 lines shown.
    lines = [line for line in (result.error or "").splitlines() if line.strip() and set(line.strip()) - set("^~")]
    text = "\n".join(lines[-12:])
    return f"{result.status}: {text[-1500:]}" if text else result.status


_FRAME = re.compile(r'File "([^"\n]+)", line (\d+), in [^\n]*\n[ \t]*(\S[^\n]*)')


def call_site_hint(error: str, files: dict[str, str], new_files: dict[str, str]) -> str:
    """When a smoke run's error is raised from a repo file the change left as it was (train.py
    calling `scheduler.step()` without the metric a ReduceLROnPlateau needs), say so and quote the
    call: small models otherwise keep "fixing" the constructor they wrote. '' when the last repo
    frame of the traceback is in a changed file, or there is none."""
    repo_frames = []
    for path, line, code in _FRAME.findall(error or ""):
        name = next((p for p in sorted(new_files, key=len, reverse=True)
                     if p.endswith(".py") and (path == p or path.endswith("/" + p))), None)
        if name is None and "/sandbox/repo/" in path:  # a repo file the agent was not shown
            name = path.split("/sandbox/repo/", 1)[1]
        if name is not None:
            repo_frames.append((name, line, code.strip()))
    if not repo_frames:
        return ""
    name, line, code = repo_frames[-1]
    if files.get(name) != new_files.get(name):
        return ""
    return (f"The error is raised at {name} line {line}, `{code[:160]}`, which your change leaves as it is: "
            f"that call stays as written, so your change must work with it (or choose another change).")


def final_verdict(raw: str, exc: ProposalRejected, files: dict[str, str] | None = None,
                  editable=None) -> Proposal | ProposalRejected:
    """What the engine records once repairs are used up. An unparsable reply goes as its error.
    One that parsed keeps its edits in the record, as check_reply made them (given the incumbent's
    ``files`` and ``editable``: its switched rule at its own defaults too): not applicable ones are
    re-applied by the engine (which records the same reason); ones that applied but cannot run carry
    the verdict, so the engine commits their diff and trains nothing."""
    if isinstance(exc, InvalidProposal):
        return exc
    try:
        if files is not None and editable is not None:
            proposal = prepare_reply(raw, files, editable)[0]
        else:
            proposal = mechanical_repairs(parse_reply(raw))
    except ProposalRejected:
        try:
            proposal = mechanical_repairs(parse_reply(raw))
        except ProposalRejected:
            return exc
    if isinstance(exc, (StaticCheckFailed, SmokeFailed, DuplicateProposal)):
        return Proposal(title=proposal.title, hypothesis=proposal.hypothesis, edits=proposal.edits, precheck=exc,
                        notes=proposal.notes)
    return proposal
