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

from autoresearch.agent.directions import _defaults, _from_torch_optim, _number, torch_optim_class
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
        for call, cls in _torch_calls(tree):
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


def _line_starts(data: bytes) -> list[int]:
    starts = [0]
    for line in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _cut_arguments(source: str, cut: list[tuple[ast.Call, ast.AST]]) -> str:
    """``source`` without each (call, argument) of ``cut``: the argument goes with the comma before it
    (and a comment between), so the call stays valid Python. An argument with nothing before it
    (the call's first) is left: no call cut here has one."""
    data = source.encode()
    starts = _line_starts(data)

    def at(lineno: int, col: int) -> int:  # ast columns count UTF-8 bytes
        return starts[lineno - 1] + col

    spans = []
    for call, arg in cut:
        before = [n for n in (*call.args, *call.keywords)
                  if (n.end_lineno, n.end_col_offset) <= (arg.lineno, arg.col_offset)]
        if before:  # from the end of the argument before it: its comma goes with it
            last = max(before, key=lambda n: (n.end_lineno, n.end_col_offset))
            spans.append((at(last.end_lineno, last.end_col_offset), at(arg.end_lineno, arg.end_col_offset)))
    for start, end in sorted(spans, reverse=True):
        data = data[:start] + data[end:]
    return data.decode()


def drop_logging_keywords(source: str) -> str:
    """``source`` with each LOGGING_ONLY keyword removed from the torch.optim calls whose class does
    not take it (with the comma before it, and a comment between); unchanged if there is none or
    it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return source
    imported = _from_torch_optim(tree)
    cut = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        cls = torch_optim_class(_dotted(call.func), imported)
        sig = _signature(cls) if cls is not None else None
        if sig is None or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            continue
        cut += [(call, kw) for kw in call.keywords if kw.arg in LOGGING_ONLY and kw.arg not in sig.parameters]
    return _cut_arguments(source, cut) if cut else source


# ----------------------------------------------------------------- a new update rule at its own defaults
# Optimizers that scale each parameter's step by its own gradient history. Their rates live on
# another scale than plain SGD's: Adam's default is 1e-3, SGD is run at 0.01-0.1, and the step of
# one is lr * gradient, of the other about lr per parameter whatever the gradient's size.
ADAPTIVE = frozenset({"Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adagrad", "Adadelta", "RMSprop", "SparseAdam",
                      "Adafactor"})


def _torch_calls(tree: ast.Module) -> list[tuple[ast.Call, type]]:
    """(call, class) for each call of a torch.optim or lr_scheduler class in ``tree``, in source order."""
    imported = _from_torch_optim(tree)
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
    return [(call, cls) for call in calls if (cls := torch_optim_class(_dotted(call.func), imported)) is not None]


def _optimizer_calls(tree: ast.Module) -> list[tuple[ast.Call, type]]:
    """(call, class) for each call of a torch.optim optimizer class in ``tree``, in source order."""
    import torch.optim

    return [(call, cls) for call, cls in _torch_calls(tree)
            if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)]


def _written_settings(call: ast.Call) -> dict[str, tuple[ast.AST, float]]:
    """A call's numeric settings as written: keyword -> (node, value); a second positional is `lr`."""
    found = {kw.arg: (kw, _number(kw.value)) for kw in call.keywords if kw.arg}
    if len(call.args) == 2:  # (params, lr): the only positional setting judged here
        found.setdefault("lr", (call.args[1], _number(call.args[1])))
    return {k: v for k, v in found.items() if v[1] is not None}


def carried_settings(old: str, new: str) -> tuple[str, list[str]]:
    """``new`` with the settings a switched update rule carried over from the old one left at the
    new rule's defaults, and one note per setting dropped; ``new`` unchanged where nothing was.

    Where a change replaces plain SGD by an adaptive optimizer (or the reverse) and writes the old
    call's rate (or momentum, ...) into the new call unchanged, it makes two changes at once: the
    update rule, and a setting for it at a value chosen for another rule (the 1.5B model swapped
    SGD(lr=0.01) for AdamW(lr=0.01), ten times AdamW's default, in every run). The new rule is then
    measured at its own defaults and its rate is a proposal of its own, so each accepted change says
    what it gained. A setting the change wrote at a new value is the model's choice and is kept;
    between rules of one family (Adam -> AdamW, SGD -> SGD with momentum) nothing is dropped."""
    try:
        old_tree, new_tree = ast.parse(old), ast.parse(new)
    except (SyntaxError, ValueError, RecursionError):
        return new, []
    try:
        before = list(_optimizer_calls(old_tree))
    except ImportError:  # an orchestrator without torch: nothing is known about optimizers
        return new, []
    classes_before = {cls for _, cls in before}
    cut, notes = [], []
    for call, cls in _optimizer_calls(new_tree):
        if cls in classes_before:
            continue
        written = _written_settings(call)
        defaults = _defaults(cls)
        for old_call, old_cls in before:
            if (old_cls.__name__ in ADAPTIVE) == (cls.__name__ in ADAPTIVE):
                continue
            for name, (_, value) in _written_settings(old_call).items():
                if name not in written or written[name][1] != value or name not in defaults \
                        or _number(ast.Constant(defaults[name])) is None or defaults[name] == value:
                    continue
                node = written.pop(name)[0]
                cut.append((call, node))
                notes.append(f"{cls.__name__} at its own default {name}={defaults[name]!r}: the change kept "
                             f"{old_cls.__name__}'s {name}={value!r}, set for another update rule (its {name} is a "
                             "proposal of its own)")
    return (_cut_arguments(new, cut), notes) if cut else (new, [])


# ----------------------------------------------------------------- one change at a time
def _schedule_calls(tree: ast.Module) -> list[tuple[ast.Call, type]]:
    """(call, class) for each call of a torch.optim.lr_scheduler class in ``tree``, in source order."""
    return [(call, cls) for call, cls in _torch_calls(tree) if cls.__module__.startswith("torch.optim.lr_scheduler")]


def bundled_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """The separate optimizer changes a change makes, when it makes more than one: the update rule
    swapped (with whatever settings the new call writes: one change), each setting of an optimizer
    that stayed, the schedule added, removed or changed ("SGD -> Adam", "SGD weight_decay", "the
    schedule (ExponentialLR)"); [] for one change or none. The 1.5B model bundled Adam with
    an ExponentialLR at gamma 0.9 per batch: rejected as a whole (-0.38), where Adam alone gains
    +0.30, and the run never proposed Adam alone again."""
    try:
        import torch.optim  # noqa: F401
    except ImportError:
        return []
    parts: list[str] = []
    for path in sorted(p for p in new if p.endswith(".py") and new[p] != old.get(p)):
        try:
            old_tree, new_tree = ast.parse(old.get(path, "")), ast.parse(new[path])
        except (SyntaxError, ValueError, RecursionError):
            return []
        before, after = list(_optimizer_calls(old_tree)), list(_optimizer_calls(new_tree))
        if len(before) == len(after):
            for (a, a_cls), (b, b_cls) in zip(before, after):
                if a_cls is not b_cls:  # the new rule with its settings: one change
                    parts.append(f"{a_cls.__name__} -> {b_cls.__name__}")
                    continue
                was, now = _written_settings(a), _written_settings(b)
                parts += [f"{b_cls.__name__} {name}" for name in sorted(set(was) | set(now))
                          if name not in now or name not in was or now[name][1] != was[name][1]]
        else:
            parts.append("the optimizer calls")
        sched_before = [(cls, ast.dump(call)) for call, cls in _schedule_calls(old_tree)]
        sched_after = [(cls, ast.dump(call)) for call, cls in _schedule_calls(new_tree)]
        if sched_before != sched_after:
            names = sorted({cls.__name__ for cls, _ in sched_after}) or ["removed"]
            parts.append(f"the schedule ({', '.join(names)})")
    return parts if len(parts) > 1 else []
