"""Static checks of calls into the repo's own functions, found from the source alone: a call
between the repo's files that cannot bind to the function it calls, as the change leaves both
(``repo_call_problem``); and a function only the harness calls (``fit``, ``build_model``) whose
parameters the change makes unfit for the call it took (``entry_point_problem``).

Seen with the 1.5B model, each a smoke-run crash that cost a repair round and a sandbox start:
``build_optimizer(..., lr)`` made a required argument while train.py still calls it without one;
train.py rewritten to call ``build_optimizer(model.parameters(), lr=1e-4)`` without the required
``steps_per_epoch`` and ``epochs``; a nested ``custom_lr_scheduler(epoch)`` called with the
optimizer alone.

What is judged: calls by a bare name or ``module.name`` to a function the repo defines (at module
level or nested, where the name is defined once in its file and never rebound), or to a class with
its own ``__init__``. Not judged: decorated functions (a decorator may change the signature),
calls spelled through ``*args``/``**kwargs``, methods, anything that is not the repo's. Only calls
that bind in the current code and not in the changed code are reported: the incumbent ran.
"""

from __future__ import annotations

import ast
import inspect

from autoresearch.agent.prompts import _one_line
from autoresearch.agent.torch_calls import binding_problem

_Def = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _parse(text: str) -> ast.Module | None:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return None


def _signature(node: _Def) -> inspect.Signature | None:
    """The signature a call must bind to: a function's own, a class's ``__init__`` less ``self``."""
    if isinstance(node, ast.ClassDef):
        inits = [n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
        if len(inits) != 1 or inits[0].decorator_list or not inits[0].args.args:
            return None
        sig = _signature(inits[0])
        return sig.replace(parameters=list(sig.parameters.values())[1:]) if sig else None
    if node.decorator_list:
        return None
    a, P, empty = node.args, inspect.Parameter, inspect.Parameter.empty
    positional = a.posonlyargs + a.args
    defaults = [empty] * (len(positional) - len(a.defaults)) + list(a.defaults)
    params = [P(x.arg, P.POSITIONAL_ONLY if i < len(a.posonlyargs) else P.POSITIONAL_OR_KEYWORD, default=d)
              for i, (x, d) in enumerate(zip(positional, defaults))]
    if a.vararg:
        params.append(P(a.vararg.arg, P.VAR_POSITIONAL))
    params += [P(x.arg, P.KEYWORD_ONLY, default=empty if d is None else d) for x, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        params.append(P(a.kwarg.arg, P.VAR_KEYWORD))
    try:
        return inspect.Signature(params)
    except ValueError:
        return None


def _rebound(tree: ast.Module) -> set[str]:
    """Names bound other than by one def: assigned, imported, a parameter, a loop target, defined twice."""
    counts: dict[str, int] = {}
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            counts[node.name] = counts.get(node.name, 0) + 1
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names | {n for n, c in counts.items() if c > 1}


def _definitions(trees: dict[str, ast.Module]) -> dict[str, dict[str, _Def]]:
    """module -> name -> its one definition in that module's file."""
    found: dict[str, dict[str, _Def]] = {}
    for path, tree in trees.items():
        rebound = _rebound(tree)
        found[path[:-3].replace("/", ".")] = {
            n.name: n for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name not in rebound}
    return found


def _callees(tree: ast.Module, module: str, defs: dict[str, dict[str, _Def]]) -> dict[str, _Def]:
    """What a bare name or ``alias.name`` refers to in this module: its own defs, names imported
    from a repo module (``from optim import build_optimizer``), and ``import optim`` aliases."""
    names = dict(defs.get(module, {}))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in defs:
            for alias in node.names:
                if alias.name in defs[node.module]:
                    names[alias.asname or alias.name] = defs[node.module][alias.name]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in defs:
                    for name, target in defs[alias.name].items():
                        names[f"{alias.asname or alias.name}.{name}"] = target
    return names


def _failing_calls(files: dict[str, str]) -> dict[tuple[str, str], tuple[int, str, _Def]]:
    """(path, the call as written) -> (line, why it cannot bind, the definition) for every call in
    the repo's Python files that cannot bind to the repo function it names."""
    trees = {p: t for p, text in files.items() if p.endswith(".py") and (t := _parse(text)) is not None}
    defs = _definitions(trees)
    failing = {}
    for path, tree in sorted(trees.items()):
        callees = _callees(tree, path[:-3].replace("/", "."), defs)
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            func = call.func
            name = func.id if isinstance(func, ast.Name) else \
                f"{func.value.id}.{func.attr}" if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                else None
            target = callees.get(name) if name else None
            why = binding_problem(_signature(target), call) if target is not None else None
            if why:
                source = ast.get_source_segment(files[path], call) or name
                failing[(path, " ".join(source.split()))] = (call.lineno, why, target)
    return failing


def _shown(target: _Def) -> str:
    sig = _signature(target)
    parts = [n if p.default is inspect.Parameter.empty else f"{n}=..." for n, p in sig.parameters.items()] if sig else []
    star = next((i for i, (n, p) in enumerate(sig.parameters.items()) if p.kind == p.KEYWORD_ONLY), None) if sig else None
    if star is not None and not any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()):
        parts.insert(star, "*")
    return f"{target.name}({', '.join(parts)})"


def repo_call_problem(old: dict[str, str], new: dict[str, str]) -> str | None:
    """The first call between the repo's own functions that the change breaks, or None."""
    if all(new.get(p) == old.get(p) for p in new):
        return None
    before = _failing_calls(old)
    for (path, source), (line, why, target) in sorted(_failing_calls(new).items(), key=lambda kv: (kv[0][0], kv[1][0])):
        if (path, source) in before:
            continue
        return (f"{path} line {line}, `{_one_line(source, 120)}`: {why.replace('missing a required', 'misses a required')}"
                f". The change leaves it calling {_shown(target)}: make the call and the definition agree (a "
                "new parameter needs a default value; keep the arguments the other file passes).")
    return None


def _called_in_repo(trees: dict[str, ast.Module]) -> set[str]:
    """Every name the repo's files call, bare or as an attribute (``module.name``)."""
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                names.add(func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else "")
    return names


def entry_point_problem(old: dict[str, str], new: dict[str, str]) -> str | None:
    """A top-level function no file of the repo calls (the harness does: ``fit``, ``build_model``)
    whose signature the change makes unfit for the calls it took: a parameter removed (with no
    ``*args``/``**kwargs`` to take it) or a new one without a default. The harness's calls are not
    in the repo, so the old signature stands for them."""
    trees = {p: t for p, text in new.items() if p.endswith(".py") and (t := _parse(text)) is not None}
    called = _called_in_repo(trees)
    for path, tree in sorted(trees.items()):
        before = _parse(old.get(path, "")) if new[path] != old.get(path) else None
        if before is None:
            continue
        old_defs = {n.name: n for n in before.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name not in old_defs \
                    or node.name in called:
                continue
            was, now = _signature(old_defs[node.name]), _signature(node)
            if was is None or now is None:
                continue
            P = inspect.Parameter
            absorbs = any(p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD) for p in now.parameters.values())
            # A leading positional parameter renamed in its place is the same parameter to a
            # positional call (the harness passes model, x, y and build_model's two by position).
            positional = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
            renamed = {a: b for a, b in zip([n for n, p in was.parameters.items() if p.kind in positional],
                                            [n for n, p in now.parameters.items() if p.kind in positional])}
            removed = [n for n, p in was.parameters.items() if p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)
                       and n not in now.parameters and n not in renamed and not absorbs]
            required = [n for n, p in now.parameters.items() if n not in was.parameters
                        and n not in renamed.values() and p.default is P.empty
                        and p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)]
            if removed or required:
                what = "; ".join(([f"removes {', '.join(map(repr, removed))}"] if removed else [])
                                 + ([f"adds {', '.join(map(repr, required))} with no default"] if required else []))
                return (f"{path} line {node.lineno}: {node.name} is called by the harness (no file of the repo calls "
                        f"it), as {_shown(old_defs[node.name])}; the change {what}, so that call would fail. Keep "
                        "its parameters; a new one needs a default value.")
    return None
