"""Static checks of a change's calls into torch.optim: what a small model gets wrong most often
with optimizers and schedules, found without running anything (the signatures come from the
installed torch, through inspect).

- A constructor call that cannot bind: a required argument left out (OneCycleLR without
  ``max_lr``), a keyword the class does not take, too many positional arguments.
- A schedule whose ``step()`` needs an argument the training loop does not pass: train.py calls
  ``scheduler.step()`` after every batch, and ReduceLROnPlateau's step needs the metric. The run
  that showed it spent four proposals on it, each "fixing" its constructor.

Calls spelled through ``*args``/``**kwargs`` are not judged, and a name that is not torch's
(a class of the repo's own named Adam) is left alone (directions.torch_optim_class).
"""

from __future__ import annotations

import ast
import inspect

from autoresearch.agent.directions import _from_torch_optim, torch_optim_class
from autoresearch.agent.prompts import _one_line
from autoresearch.describe import _dotted

# Schedules whose step() takes no argument, as the fix to suggest (all in torch.optim.lr_scheduler).
NO_ARGUMENT_SCHEDULES = "StepLR, ExponentialLR, CosineAnnealingLR, OneCycleLR, LinearLR"


def _signature(target):
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def binding_problem(sig: inspect.Signature | None, call: ast.Call) -> str | None:
    """Why ``call``'s arguments, as written, cannot bind to ``sig``, or None (also where the call
    spells them through ``*args``/``**kwargs``, which are not judged, or there is no signature)."""
    if sig is None or any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None
    try:
        sig.bind(*[object()] * len(call.args), **{k.arg: object() for k in call.keywords})
    except TypeError as exc:
        return str(exc)
    return None


def _step_needs(cls) -> list[str]:
    """The arguments a schedule's step() requires (ReduceLROnPlateau: ['metrics'])."""
    sig = _signature(getattr(cls, "step", None))
    if sig is None:
        return []
    return [n for n, p in list(sig.parameters.items())[1:]
            if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _bare_schedule_steps(files: dict[str, str]) -> list[tuple[str, int, str]]:
    """Calls ``<...sched...>.step()`` with no argument, in any Python file: (path, line, source)."""
    found = []
    for path, text in sorted(files.items()):
        if not path.endswith(".py"):
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "step" \
                    and not node.args and not node.keywords and "sched" in _dotted(node.func.value).lower():
                found.append((path, node.lineno, ast.get_source_segment(text, node) or "scheduler.step()"))
    return found


def torch_call_problem(old: dict[str, str], new: dict[str, str]) -> str | None:
    """The first problem of a changed file's torch.optim calls (see the module docstring), or None."""
    for path, text in sorted(new.items()):
        if not path.endswith(".py") or text == old.get(path):
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError):
            continue  # static_problem says why
        imported = _from_torch_optim(tree)
        calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
        for call in calls:
            cls = torch_optim_class(_dotted(call.func), imported)
            if cls is None:
                continue
            where = f"{path} line {call.lineno}, `{_one_line(ast.get_source_segment(text, call) or cls.__name__, 120)}`"
            problem = binding_problem(_signature(cls), call)
            if problem:
                return (f"{where}: {problem}. It is {cls.__name__}({_parameters(cls)}); pass the arguments it "
                        "requires, by those names.")
            needs = _step_needs(cls) if cls.__module__.startswith("torch.optim.lr_scheduler") else []
            bare = _bare_schedule_steps(new) if needs else []
            if bare:
                at, line, source = bare[0]
                return (f"{where}: {cls.__name__}.step() needs {', '.join(repr(n) for n in needs)}, but {at} line "
                        f"{line} calls `{source}` with no argument. Use a schedule whose step() "
                        f"takes no argument instead ({NO_ARGUMENT_SCHEDULES}), or no schedule.")
    return None


def _parameters(cls, shown: int = 8) -> str:
    """'optimizer, max_lr, total_steps=None, ...': names and defaults, no annotations."""
    sig = _signature(cls)
    if sig is None:
        return "..."
    parts = [n if p.default is inspect.Parameter.empty else f"{n}={p.default!r}"
             for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return ", ".join(parts[:shown] + (["..."] if len(parts) > shown else []))


# Keywords older torch took that change nothing but what is printed: models trained on older code
# write them (`ReduceLROnPlateau(..., verbose=True)`, four times in one run of the 1.5B model) and
# the installed torch refuses them. Dropped where the installed class does not take them.
LOGGING_ONLY = ("verbose",)


def drop_logging_keywords(source: str) -> str:
    """``source`` with each LOGGING_ONLY keyword removed from the torch.optim calls whose class does
    not take it (with the comma before it, and a comment between); unchanged if there is none or
    it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return source
    data = source.encode()
    starts = [0]
    for line in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def at(lineno: int, col: int) -> int:  # ast columns count UTF-8 bytes
        return starts[lineno - 1] + col

    imported = _from_torch_optim(tree)
    cuts = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        cls = torch_optim_class(_dotted(call.func), imported)
        sig = _signature(cls) if cls is not None else None
        if sig is None or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            continue
        for kw in call.keywords:
            if kw.arg not in LOGGING_ONLY or kw.arg in sig.parameters:
                continue
            before = [n for n in (*call.args, *call.keywords)
                      if (n.end_lineno, n.end_col_offset) <= (kw.lineno, kw.col_offset)]
            if before:  # from the end of the argument before it: its comma goes with it
                last = max(before, key=lambda n: (n.end_lineno, n.end_col_offset))
                cuts.append((at(last.end_lineno, last.end_col_offset), at(kw.end_lineno, kw.end_col_offset)))
    for start, end in sorted(cuts, reverse=True):
        data = data[:start] + data[end:]
    return data.decode()
