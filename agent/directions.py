"""The settings of the current code, and which of them the run has already tried on it.

A small model that has just had a change accepted tends to propose the same kind of change again and
again (a learning-rate schedule under a new title each time) and never the setting that matters most
(the new optimizer's rate). The prompt therefore lists, from the incumbent's code and not from any
model's words:

- the settings a proposal could change: every numeric keyword argument written in a call of an
  editable file, and the learning rate, momentum and weight decay of a ``torch.optim`` optimizer
  even where the code leaves them at the class's default (read from its signature);
- which of them a proposal since the last acceptance already changed (autoresearch.describe's lines
  name the call and the argument), and the kinds of change measured on this code and not better.

Also here: ``same_behaviour`` says when two versions of the files differ only in what cannot change
what they compute (comments, docstrings, layout, an optimizer argument spelled out at its default),
so such a reply gets a repair round instead of a gate's trials.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoresearch.describe import _dotted
from autoresearch.reasons import Reason

if TYPE_CHECKING:  # the port imports this module (behaviour_key)
    from autoresearch.agent_port import PastProposal

# Optimizer arguments worth naming even when the code leaves them at their default.
OPTIMIZER_KNOBS = ("lr", "momentum", "weight_decay")
MAX_SETTINGS = 8


@dataclass(frozen=True)
class Setting:
    path: str
    call: str          # as written: "torch.optim.AdamW"
    arg: str           # "lr"
    value: str         # "0.001"
    default: bool      # not written in the code: the class's default

    @property
    def short(self) -> str:
        return self.call.rsplit(".", 1)[-1]

    def text(self) -> str:
        where = f"{self.path}: {self.call} {self.arg}={self.value}"
        return where + (" (its default; not written in the code)" if self.default else "")


def _number(node: ast.AST) -> float | int | None:
    """The value of a numeric literal (a leading minus included), else None. Booleans are not numbers here."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _from_torch_optim(tree: ast.Module) -> dict[str, str]:
    """Bare names bound by `from torch.optim import X` (and lr_scheduler): name -> the class's name.
    A star import (`from torch.optim.lr_scheduler import *`, which the 1.5B model writes) is kept
    as the key "*": any bare name may then be torch's (torch_optim_class)."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch.optim", "torch.optim.lr_scheduler"):
            for alias in node.names:
                found[alias.asname or alias.name] = alias.name
    return found


def torch_optim_class(dotted: str, imported: dict[str, str]):
    """The torch.optim optimizer or lr_scheduler class a call's name refers to, or None. Only names
    spelled through torch.optim (or `optim.`, `lr_scheduler.`, or imported from there) count: a
    class of the repo's own named Adam is not torch's."""
    parts = dotted.split(".")
    if len(parts) == 1:
        name = imported.get(dotted) or (dotted if "*" in imported else None)
    elif dotted.startswith(("torch.optim.", "optim.", "lr_scheduler.")):
        name = parts[-1]
    else:
        return None
    if not name:
        return None
    try:
        import torch.optim
        import torch.optim.lr_scheduler
    except ImportError:  # the orchestrator without torch: nothing is known about defaults
        return None
    for module in (torch.optim, torch.optim.lr_scheduler):
        cls = getattr(module, name, None)
        if inspect.isclass(cls):
            return cls
    return None


@functools.lru_cache(maxsize=64)
def _defaults(cls) -> dict[str, object]:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}
    return {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}


def _is_optimizer(cls) -> bool:
    import torch.optim

    return isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)


def settings(files: dict[str, str], editable) -> list[Setting]:
    """The settings of the editable Python files, in file and line order."""
    out: list[Setting] = []
    for path in [p for p in editable if p in files and p.endswith(".py")]:
        try:
            tree = ast.parse(files[path])
        except (SyntaxError, ValueError, RecursionError):
            continue
        imported = _from_torch_optim(tree)
        calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
        for call in calls:
            dotted = _dotted(call.func)
            if "<expr>" in dotted:  # a call through an expression names no setting
                continue
            written = {}
            for kw in call.keywords:
                value = _number(kw.value) if kw.arg else None
                if value is not None:
                    written[kw.arg] = value
                    out.append(Setting(path, dotted, kw.arg, ast.get_source_segment(files[path], kw.value) or repr(value),
                                       default=False))
            cls = torch_optim_class(dotted, imported)
            if cls is not None and _is_optimizer(cls):
                defaults = _defaults(cls)
                for knob in OPTIMIZER_KNOBS:
                    given = knob in {kw.arg for kw in call.keywords} or (knob == "lr" and len(call.args) > 1)
                    if knob in defaults and not given and _number(ast.Constant(defaults[knob])) is not None:
                        out.append(Setting(path, dotted, knob, repr(defaults[knob]), default=True))
    return out


def since_last_acceptance(history: list[PastProposal]) -> list[PastProposal]:
    """The proposals judged against the current incumbent (after the last accepted one)."""
    since = history
    for i, p in enumerate(history):
        if p.decision == "accepted":
            since = history[i + 1:]
    return since


def _tried(setting: Setting, past: list[PastProposal]) -> bool:
    needles = (f"{setting.short} {setting.arg} ", f"{setting.short} {setting.arg}=")
    return any(n in line for p in past for line in p.changes for n in needles)


# Rates are tried on a log scale: once a change has been accepted, the prompt names the neighbours
# of the current rate (3x and 10x either way) that no proposal since has tried. The 1.5B model,
# told only that the rate is worth changing, wrote 0.1 and 1e-8 for the newly accepted Adam (whose
# good rates here are 3e-3 to 1e-2) and then left the rate alone as "already changed". On the
# benchmark's own code none are named: the first step is the idea's (the prompt's "standard
# stronger choice"), not a sweep of the baseline's rate.
RATE_NAMES = ("lr", "max_lr", "base_lr", "learning_rate")
RATE_STEPS = (3.0, 10.0, 1 / 3, 1 / 10)


def _tried_values(setting: Setting, past: list[PastProposal]) -> list[float]:
    """The values the ``past`` proposals gave this setting ("Adam lr 1e-3 -> 3e-3", "Adam lr=0.1
    added"), where they are plain numbers."""
    pattern = re.compile(rf"\b{re.escape(setting.short)} {re.escape(setting.arg)}(?:=(\S+) added| \S+ -> (\S+))")
    found = []
    for p in past:
        for line in p.changes:
            for m in pattern.finditer(line):
                try:
                    found.append(float(m.group(1) or m.group(2)))
                except ValueError:
                    pass
    return found


def _round(value: float) -> str:
    return f"{float(f'{value:.1g}'):g}"


def rate_neighbours(setting: Setting, past: list[PastProposal]) -> list[str]:
    """A rate setting's log-scale neighbours (3x, 10x larger and smaller, one significant digit)
    that none of the ``past`` proposals tried; [] for other settings."""
    try:
        value = float(setting.value)
    except ValueError:
        return []
    if setting.arg not in RATE_NAMES or not value > 0:
        return []
    tried = _tried_values(setting, past)
    out = []
    for step in RATE_STEPS:
        shown = _round(value * step)
        if not any(abs(float(shown) - t) <= 1e-9 + 0.05 * float(shown) for t in tried):
            out.append(shown)
    return out


def directions_text(files: dict[str, str], editable, history: list[PastProposal]) -> str:
    """The prompt's section on what to change next: settings not yet changed on the current code
    (first) and those already changed, then the kinds of change measured on it and not better."""
    past = since_last_acceptance(history)
    found = settings(files, editable)
    neighbours = _neighbours(history)
    # A rate stays open while some of its neighbours are untried.
    fresh = [s for s in found if not _tried(s, past) or neighbours(s, past)]
    tried = [s for s in found if s not in fresh]
    lines = []
    if fresh:
        lines.append("Settings of the current code no proposal has changed yet, or not to these values "
                     "(one of them may be your change):")
        lines += [f"- {_with_values(s, past, neighbours)}" for s in fresh[:MAX_SETTINGS]]
    if tried:
        lines.append("Settings already changed on the current code: "
                     + "; ".join(f"{s.short} {s.arg}" for s in tried[:MAX_SETTINGS]))
    losers = [p for p in past if p.reason == Reason.NOT_BETTER and p.changes]
    if losers:
        kinds = list(dict.fromkeys("; ".join(p.changes) for p in losers))
        lines.append("Measured on the current code and NOT better (do not propose these again, in any form): "
                     + " | ".join(kinds))
    return "\n".join(lines) if lines else "(no numeric settings found in the editable files)"


def untried_hint(files: dict[str, str], editable, history: list[PastProposal]) -> str:
    """One sentence for a repair round after a repeat: the settings not yet changed, or ''."""
    past = since_last_acceptance(history)
    neighbours = _neighbours(history)
    fresh = [s for s in settings(files, editable) if not _tried(s, past) or neighbours(s, past)]
    if not fresh:
        return ""

    def said(s: Setting) -> str:
        values = neighbours(s, past)
        return f"changing {s.short} {s.arg} (now {s.value})" + (f" to {' or '.join(values[:2])}" if values else "")

    return "Not yet tried on the current code: " + "; ".join(said(s) for s in fresh[:3]) + "."


def _neighbours(history: list[PastProposal]):
    """rate_neighbours once some change was accepted in this run, else a function that names none."""
    if any(p.decision == "accepted" for p in history):
        return rate_neighbours
    return lambda setting, past: []


def _with_values(setting: Setting, past: list[PastProposal], neighbours) -> str:
    values = neighbours(setting, past)
    tried = _tried_values(setting, past)
    text = setting.text()
    if tried:
        text += f"; already tried: {', '.join(f'{t:g}' for t in tried)}"
    return text + (f"; untried values: {', '.join(values)}" if values else "")


# --------------------------------------------------------------------------- behaviour-identical changes


class _Normalise(ast.NodeTransformer):
    """Drops what cannot change behaviour: docstrings, and torch.optim keyword arguments written at
    the class's default value."""

    def __init__(self, imported: dict[str, str]):
        self.imported = imported

    def _body(self, body: list[ast.stmt]) -> list[ast.stmt]:
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:] or [ast.Pass()]
        return body

    def generic_visit(self, node):
        node = super().generic_visit(node)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            node.body = self._body(node.body)
        return node

    def visit_Call(self, node: ast.Call):
        node = self.generic_visit(node)
        cls = torch_optim_class(_dotted(node.func), self.imported)
        if cls is not None:
            defaults = _defaults(cls)
            keep = []
            for kw in node.keywords:
                value = _number(kw.value) if kw.arg else None
                default = defaults.get(kw.arg, inspect.Parameter.empty) if kw.arg else inspect.Parameter.empty
                if value is not None and _number(ast.Constant(default)) is not None and value == default:
                    continue
                keep.append(kw)
            node.keywords = keep
        return node


def _drop_unused_imports(tree: ast.Module) -> ast.Module:
    """Module-level imports whose names nothing in the module uses (an `import math` added or
    dropped beside a change): a used one removed is an undefined name, which the static check
    refuses first."""
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    body = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) and not (isinstance(stmt, ast.ImportFrom)
                                                                    and stmt.module == "__future__"):
            stmt.names = [a for a in stmt.names
                          if a.name == "*" or (a.asname or a.name.split(".")[0]) in used]
            if not stmt.names:
                continue
        body.append(stmt)
    tree.body = body
    return tree


def _dotted_node(dotted: str, like: ast.AST) -> ast.AST:
    parts = dotted.split(".")
    node: ast.AST = ast.Name(id=parts[0], ctx=ast.Load())
    for part in parts[1:]:
        node = ast.Attribute(value=node, attr=part, ctx=ast.Load())
    return ast.copy_location(node, like)


class _Qualify(ast.NodeTransformer):
    """Spells every use of an imported name by its full path (`Adam` after `from torch.optim import
    Adam`, `optim.Adam` after `import torch.optim as optim`: both `torch.optim.Adam`), so two files
    that import the same thing in other ways read the same. A name the module also binds itself
    (assigned, a parameter, a def) is left alone: it may not be the import."""

    def __init__(self, tree: ast.Module):
        bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        bound |= {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
        bound |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                     ast.ClassDef))}
        self.paths: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:  # `import torch.optim as optim`; a plain `import torch.optim` binds `torch`
                        self.paths[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    if a.name != "*":
                        self.paths[a.asname or a.name] = f"{node.module}.{a.name}"
        self.paths = {k: v for k, v in self.paths.items() if k not in bound and k != v}

    def visit_Name(self, node: ast.Name):
        if isinstance(node.ctx, ast.Load) and node.id in self.paths:
            return _dotted_node(self.paths[node.id], node)
        return node


def _normalised(text: str) -> str | None:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return None
    try:
        tree = _Qualify(tree).visit(tree)
        return ast.dump(_Normalise(_from_torch_optim(tree)).visit(_drop_unused_imports(tree)))
    except RecursionError:
        return None


def behaviour_key(files: dict[str, str]) -> str:
    """One key for every file set that computes the same: Python files as same_behaviour reads
    them (unparsable ones, and other files, as they are). Two proposals with the same key are the
    same experiment, however their comments, docstrings and unused imports differ."""
    h = hashlib.sha256()
    for path in sorted(files):
        text = files[path]
        shown = (_normalised(text) if path.endswith(".py") else None) or text
        h.update(f"{path}\0{len(shown)}\0{shown}\0".encode())
    return h.hexdigest()


def same_behaviour(old: dict[str, str], new: dict[str, str]) -> bool:
    """True when every changed file is Python that differs from the old one only in comments,
    docstrings, layout, unused imports or optimizer arguments spelled out at their defaults
    (nothing it computes can differ). Any file added, removed or not parsable counts as a real change."""
    changed = [p for p in set(old) | set(new) if old.get(p) != new.get(p)]
    if not changed:
        return True
    for path in changed:
        if path not in old or path not in new or not path.endswith(".py"):
            return False
        a, b = _normalised(old[path]), _normalised(new[path])
        if a is None or b is None or a != b:
            return False
    return True
