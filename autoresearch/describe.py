"""What a change does, said from the code and never from the model's words.

``describe_change(old, new)`` turns two file sets into short lines, one fact each, in a stable
order (files by path; per file: imports, definitions added or removed, then each changed scope):

    optim.py: torch.optim.SGD -> torch.optim.Adam
    optim.py: SGD lr 0.01 -> 0.05
    model.py: call added: nn.Dropout
    train.py: comments/whitespace only

Python files are compared with ``ast`` scope by scope (the module, each class, each function):
calls added, removed or replaced, the arguments of calls that stayed, assignments, imports. A
scope that changed in none of these ways says so ("function fit changed"). A file that does not
parse, or is not Python, falls back to counting lines.

``title_claims_unsupported`` checks a proposal's title and hypothesis against a small table of
common ML concepts (CONCEPTS) and flags each one named there that the diff gives no evidence of:
a title promising "warm-up and decay" over a diff that only changes SGD's lr is flagged.

(About 450 lines: the description and the claims check read the same facts, and a third of the
module is the small ast readers and the concept table, which is data.)
"""

from __future__ import annotations

import ast
import difflib
import re
from collections import Counter
from dataclasses import dataclass

VALUE_CHARS = 40  # a value longer than this is shortened in a description line


@dataclass(frozen=True)
class Fact:
    """One thing the diff does, and what it touches (the evidence a claim is checked against)."""

    path: str
    text: str                        # the description, after "path: "
    names: tuple[str, ...] = ()      # calls, imports, definitions and assignment targets touched
    args: tuple[str, ...] = ()       # call arguments touched, as "torch.optim.SGD.momentum"
    computed_lr: bool = False        # a learning rate now set by an expression: a schedule by hand
    lines: tuple[str, ...] = ()      # changed lines of a file that could not be compared by ast

    def line(self) -> str:
        return f"{self.path}: {self.text}"


# --------------------------------------------------------------------------- reading code


def _dotted(node: ast.AST) -> str:
    """torch.optim.SGD, self.fc, torch.randperm().to: the name a call is made through."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return f"{_dotted(node.func)}()"
    if isinstance(node, ast.Subscript):
        return f"{_dotted(node.value)}[]"
    return "<expr>"


def _short(dotted: str) -> str:
    return dotted.rsplit(".", 1)[-1]


def _literal(node: ast.AST) -> tuple[bool, object]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _same(a: ast.AST, b: ast.AST) -> bool:
    """Equal values (1e-3 and 0.001 are the same learning rate), else equal code."""
    (lit_a, va), (lit_b, vb) = _literal(a), _literal(b)
    if lit_a and lit_b:
        return va == vb and (type(va) is type(vb) or {type(va), type(vb)} <= {int, float})  # True is not 1
    return ast.dump(a) == ast.dump(b)


def _text(node: ast.AST, source: str) -> str:
    """The value as written in the file (0.01 stays 0.01, 1e-3 stays 1e-3), shortened."""
    text = ast.get_source_segment(source, node) or ast.unparse(node)
    text = " ".join(text.split())
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…"


_LR_NAME = re.compile(r"(^|[^a-z])(lr|learning_rate|max_lr|base_lr)($|[^a-z])", re.IGNORECASE)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
                and isinstance(node.body[0].value.value, str):
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def _scopes(tree: ast.Module) -> dict[str, tuple[str, list[ast.AST]]]:
    """name -> (kind, nodes): "" is the module's own statements, "Net" a class's, "Net.forward" a
    method, "fit" a function (a function nested in a function belongs to it)."""
    scopes: dict[str, tuple[str, list[ast.AST]]] = {}

    def visit(body: list[ast.stmt], owner: str, kind: str) -> None:
        own = scopes.setdefault(owner, (kind, []))[1]
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                scopes[f"{owner}.{node.name}" if owner else node.name] = ("function", [node])
            elif isinstance(node, ast.ClassDef):
                name = f"{owner}.{node.name}" if owner else node.name
                visit(node.body, name, "class")
                scopes[name][1].extend([*node.bases, *node.keywords, *node.decorator_list])
            else:
                own.append(node)

    visit(tree.body, "", "module")
    return scopes


def _walk(nodes: list[ast.AST]):
    for node in nodes:
        yield from ast.walk(node)


def _calls(nodes: list[ast.AST]) -> list[tuple[str, ast.Call, str]]:
    """(dotted name, call, anchor) in source order; the anchor is the assignment target (or
    "return") a call is the direct value of, so SGD and Adam both assigned to `optimizer` pair up."""
    anchors: dict[int, str] = {}
    for node in _walk(nodes):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.Return)) and node.value is not None:
            target = "return" if isinstance(node, ast.Return) else ast.unparse(
                node.targets[0] if isinstance(node, ast.Assign) else node.target)
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for i, value in enumerate(values):
                anchors[id(value)] = f"{target}[{i}]" if isinstance(node.value, ast.Tuple) else target
    found = [(_dotted(n.func), n, anchors.get(id(n), "")) for n in _walk(nodes) if isinstance(n, ast.Call)]
    return sorted(found, key=lambda c: (c[1].lineno, c[1].col_offset))


_AUGMENTED = {ast.Add: "+=", ast.Sub: "-=", ast.Mult: "*=", ast.Div: "/=", ast.FloorDiv: "//=", ast.Pow: "**=",
              ast.Mod: "%="}


def _assignments(nodes: list[ast.AST]) -> dict[str, list[ast.AST]]:
    """target -> values assigned to it ("lr", "self.p", "group['lr'] *=" for an augmented one)."""
    out: dict[str, list[ast.AST]] = {}
    for node in _walk(nodes):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                out.setdefault(ast.unparse(target), []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            out.setdefault(ast.unparse(node.target), []).append(node.value)
        elif isinstance(node, ast.AugAssign):
            op = _AUGMENTED.get(type(node.op), "op=")
            out.setdefault(f"{ast.unparse(node.target)} {op}", []).append(node.value)
    return out


def _imports(nodes: list[ast.AST]) -> list[tuple[str, tuple[str, ...]]]:
    """(statement, modules and names it brings in) for each import."""
    found = []
    for node in _walk(nodes):
        if isinstance(node, ast.Import):
            found.append((ast.unparse(node), tuple(a.name for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found.append((ast.unparse(node), (module, *(f"{module}.{a.name}" for a in node.names))))
    return found


# --------------------------------------------------------------------------- facts of one scope


def _argument_facts(path: str, old: ast.Call, new: ast.Call, dotted: str, old_src: str, new_src: str,
                    replaced: str | None = None) -> list[Fact]:
    """What changed in the arguments of a call that stayed, or replaced the call ``replaced``: an
    argument only the replaced call had is then the new call's default, not a setting it lost
    ("Adam lr left at its default (SGD had lr=0.01)")."""
    facts = []
    short = _short(dotted)

    def fact(text: str, arg: str, value: ast.AST | None) -> Fact:
        computed = value is not None and bool(_LR_NAME.search(arg)) and not _literal(value)[0]
        return Fact(path, text, args=(f"{dotted}.{arg}",), computed_lr=computed)

    old_kw = {k.arg: k.value for k in old.keywords if k.arg}
    new_kw = {k.arg: k.value for k in new.keywords if k.arg}
    pairs = [(f"arg{i + 1}", a, b) for i, (a, b) in enumerate(zip(old.args, new.args))]
    pairs += [(k, old_kw[k], new_kw[k]) for k in old_kw if k in new_kw]
    for arg, a, b in pairs:
        # An argument that is itself a call in both is left to the call comparison.
        if isinstance(a, ast.Starred) or isinstance(b, ast.Starred) or (isinstance(a, ast.Call) and isinstance(b, ast.Call)):
            continue
        if not _same(a, b):
            facts.append(fact(f"{short} {arg} {_text(a, old_src)} -> {_text(b, new_src)}", arg, b))
    added = [(f"arg{i + 1}", v) for i, v in enumerate(new.args[len(old.args):], start=len(old.args))]
    added += [(k, v) for k, v in new_kw.items() if k not in old_kw]
    removed = [(f"arg{i + 1}", v) for i, v in enumerate(old.args[len(new.args):], start=len(new.args))]
    removed += [(k, v) for k, v in old_kw.items() if k not in new_kw]
    for items, src, verb in ((added, new_src, "added"), (removed, old_src, "removed")):
        for arg, value in items:
            if isinstance(value, (ast.Call, ast.Starred)):
                continue
            if verb == "removed" and replaced and replaced != dotted:
                facts.append(fact(f"{short} {arg} left at its default ({_short(replaced)} had {arg}={_text(value, src)})",
                                  arg, None))
            else:
                facts.append(fact(f"{short} {arg}={_text(value, src)} {verb}", arg, value if verb == "added" else None))
    return facts


def _call_facts(path: str, old_nodes: list[ast.AST], new_nodes: list[ast.AST], old_src: str,
                new_src: str) -> list[Fact]:
    by_name_old: dict[str, list[tuple[ast.Call, str]]] = {}
    by_name_new: dict[str, list[tuple[ast.Call, str]]] = {}
    for nodes, by_name in ((old_nodes, by_name_old), (new_nodes, by_name_new)):
        for name, call, anchor in _calls(nodes):
            by_name.setdefault(name, []).append((call, anchor))
    facts: list[Fact] = []
    arg_facts: list[Fact] = []
    removed, added = [], []  # (name, call, anchor) beyond what the other side has
    for name in dict.fromkeys([*by_name_old, *by_name_new]):
        olds, news = by_name_old.get(name, []), by_name_new.get(name, [])
        if len(olds) == len(news):  # the same calls: pair them in order and compare their arguments
            for (a, _), (b, _) in zip(olds, news):
                arg_facts += _argument_facts(path, a, b, name, old_src, new_src)
            continue
        # Counts differ (their arguments are not compared): the extra calls on the longer side are
        # those whose anchor the other side lacks, then the last ones.
        more, fewer = (olds, news) if len(olds) > len(news) else (news, olds)
        anchors = {anchor for _, anchor in fewer}
        ranked = sorted(range(len(more)), key=lambda i: (more[i][1] in anchors, -i))
        extra = [more[i] for i in sorted(ranked[:len(more) - len(fewer)])]
        (removed if more is olds else added).extend((name, call, anchor) for call, anchor in extra)
    # A removed call and an added one with the same anchor (or the only pair there is) were replaced.
    replaced = []
    for r in list(removed):
        match = next((a for a in added if r[2] and a[2] == r[2]), None)
        if match is None and len(removed) == 1 and len(added) == 1:
            match = added[0]
        if match is not None:
            removed.remove(r)
            added.remove(match)
            replaced.append((r, match))
    for (old_name, old_call, _), (new_name, new_call, _) in replaced:
        facts.append(Fact(path, f"{old_name} -> {new_name}", names=(old_name, new_name)))
        facts += _argument_facts(path, old_call, new_call, new_name, old_src, new_src, replaced=old_name)
    for items, verb in ((added, "added"), (removed, "removed")):
        counts = Counter(name for name, _, _ in items)
        for name, n in counts.items():
            facts.append(Fact(path, f"call {verb}: {name}" + (f" (x{n})" if n > 1 else ""), names=(name,)))
    return facts + arg_facts


def _assignment_facts(path: str, old_nodes: list[ast.AST], new_nodes: list[ast.AST], old_src: str,
                      new_src: str) -> list[Fact]:
    """Changed values of assignments, except a value that is a call (the call facts say that)."""
    facts = []
    old_as, new_as = _assignments(old_nodes), _assignments(new_nodes)
    for target in dict.fromkeys([*old_as, *new_as]):
        olds, news = old_as.get(target, []), new_as.get(target, [])
        lr = bool(_LR_NAME.search(target))
        if len(olds) == len(news):
            for a, b in zip(olds, news):
                if not _same(a, b) and not (isinstance(a, ast.Call) or isinstance(b, ast.Call)):
                    facts.append(Fact(path, f"{target} {_text(a, old_src)} -> {_text(b, new_src)}", names=(target,),
                                      computed_lr=lr and not _literal(b)[0]))
            continue
        # Assigned a different number of times: the values the other side never assigns.
        for values, others, src, verb in ((news, olds, new_src, "added"), (olds, news, old_src, "removed")):
            seen = {ast.dump(v) for v in others}
            for value in values:
                if ast.dump(value) not in seen and not isinstance(value, ast.Call):
                    facts.append(Fact(path, f"{target} = {_text(value, src)} {verb}", names=(target,),
                                      computed_lr=lr and verb == "added" and not _literal(value)[0]))
    return facts


def _import_facts(path: str, old_nodes: list[ast.AST], new_nodes: list[ast.AST]) -> list[Fact]:
    old_imp, new_imp = dict(_imports(old_nodes)), dict(_imports(new_nodes))
    facts = [Fact(path, f"import added: {s}", names=names) for s, names in new_imp.items() if s not in old_imp]
    return facts + [Fact(path, f"import removed: {s}", names=names) for s, names in old_imp.items() if s not in new_imp]


def _scope_facts(path: str, old_nodes: list[ast.AST], new_nodes: list[ast.AST], old_src: str,
                 new_src: str) -> list[Fact]:
    return (_import_facts(path, old_nodes, new_nodes) + _call_facts(path, old_nodes, new_nodes, old_src, new_src)
            + _assignment_facts(path, old_nodes, new_nodes, old_src, new_src))


# --------------------------------------------------------------------------- facts of one file


def _line_facts(path: str, old: str, new: str, note: str = "") -> list[Fact]:
    """The fallback: how many lines changed, and the changed lines as evidence."""
    diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0))[2:]  # no ---/+++
    changed = [d for d in diff if d[:1] in ("+", "-")]
    plus, minus = sum(d[0] == "+" for d in changed), sum(d[0] == "-" for d in changed)
    return [Fact(path, f"{note}{plus} line(s) added, {minus} removed", lines=tuple(d[1:] for d in changed))]


def _parse(text: str, path: str) -> ast.Module | str:
    try:
        return ast.parse(text, path)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        line = getattr(exc, "lineno", None)
        return f"{getattr(exc, 'msg', None) or type(exc).__name__}" + (f", line {line}" if line else "")


def _whole_file_fact(path: str, text: str, verb: str) -> Fact:
    """A new or deleted file, with everything it holds as evidence."""
    lines = len(text.splitlines())
    tree = _parse(text, path) if path.endswith(".py") else None
    if not isinstance(tree, ast.Module):
        return Fact(path, f"{verb} ({lines} lines)", lines=tuple(text.splitlines()))
    evidence = _scope_facts(path, [], [tree], "", text) if verb == "new file" else \
        _scope_facts(path, [tree], [], text, "")
    return _merged(path, f"{verb} ({lines} lines)", evidence)


def _merged(path: str, text: str, evidence: list[Fact], names: tuple[str, ...] = ()) -> Fact:
    """One line standing for many facts (a new file, an added function), keeping their evidence."""
    return Fact(path, text, names=names + tuple(n for f in evidence for n in f.names),
                args=tuple(a for f in evidence for a in f.args), computed_lr=any(f.computed_lr for f in evidence))


def _file_facts(path: str, old: str | None, new: str | None) -> list[Fact]:
    if old is None:
        return [_whole_file_fact(path, new or "", "new file")]
    if new is None:
        return [_whole_file_fact(path, old, "deleted")]
    if not path.endswith(".py"):
        return _line_facts(path, old, new)
    old_tree, new_tree = _parse(old, path), _parse(new, path)
    if isinstance(new_tree, str):
        return _line_facts(path, old, new, f"does not parse ({new_tree}); ")
    if isinstance(old_tree, str):
        return _line_facts(path, old, new, f"did not parse before ({old_tree}); ")
    if ast.dump(old_tree) == ast.dump(new_tree):
        return [Fact(path, "comments/whitespace only")]
    # Docstrings are prose: from here on, neither a fact nor a reason to call a scope changed.
    old_tree, new_tree = _strip_docstrings(old_tree), _strip_docstrings(new_tree)
    if ast.dump(old_tree) == ast.dump(new_tree):
        return [Fact(path, "docstrings/comments only")]
    old_scopes, new_scopes = _scopes(old_tree), _scopes(new_tree)
    facts = []
    for name, (kind, nodes) in new_scopes.items():
        if name not in old_scopes:
            facts.append(_merged(path, f"{kind} {name} added", _scope_facts(path, [], nodes, old, new), (name,)))
    for name, (kind, nodes) in old_scopes.items():
        if name not in new_scopes:
            facts.append(_merged(path, f"{kind} {name} removed", _scope_facts(path, nodes, [], old, new), (name,)))
    for name, (kind, nodes) in new_scopes.items():
        if name not in old_scopes:
            continue
        old_nodes = old_scopes[name][1]
        if [ast.dump(n) for n in old_nodes] == [ast.dump(n) for n in nodes]:
            continue
        # A change none of the finer facts covers (a loop, an operator) still gets a line.
        facts += _scope_facts(path, old_nodes, nodes, old, new) or [
            Fact(path, f"{kind} {name} changed" if name else "module-level code changed", names=(name,))]
    return facts


def change_facts(old: dict[str, str], new: dict[str, str]) -> list[Fact]:
    """Every fact of the change from ``old`` to ``new`` (path -> text), files in path order."""
    facts = []
    for path in sorted(set(old) | set(new)):
        if old.get(path) == new.get(path):
            continue
        try:
            facts += _file_facts(path, old.get(path), new.get(path))
        except RecursionError:
            # Parsed, but nested deeper than ast.dump / ast.walk / ast.unparse can follow.
            facts += _line_facts(path, old.get(path) or "", new.get(path) or "", "too deeply nested to compare; ")
    return facts


def describe_change(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One line per fact ("optim.py: SGD lr 0.01 -> 0.05"); ["no change"] when the files are equal."""
    lines = [f.line() for f in change_facts(old, new)]
    counts = Counter(lines)
    # The same fact in two scopes of a file is one line with a count.
    return [line + (f" (x{counts[line]})" if counts[line] > 1 else "") for line in dict.fromkeys(lines)] or ["no change"]


# --------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Concept:
    """A common ML idea a title may name, and the code evidence a diff that does it would show."""

    name: str            # said in the flag: "a learning-rate schedule"
    words: str           # how a title or hypothesis names it (regex, any case)
    missing: str         # what the diff lacks, for the flag: "changes no ..."
    evidence: str        # regex over what a fact touches: call and import names, definitions,
    #                      assignment targets, "call.argument" names, changed lines of unparsed files
    computed_lr: bool = False  # a learning rate set by an expression is evidence too


CONCEPTS: tuple[Concept, ...] = (
    Concept("a learning-rate schedule",
            # "decay" only next to what decays: "the loss decays" and "weight decay" are no schedule.
            r"schedul\w*|warm[\s_-]*ups?\b|cosine|anneal\w*|one[\s_-]*cycle|cyclic\w*|step[\s_-]*lr"
            r"|\b(lr|rate|step|exponential|linear|polynomial|inverse|time)[\s_-]*decay\w*"
            r"|\bdecay\w*[\s_-]+(of[\s_-]+)?(the[\s_-]+)?(lr|learning[\s_-]*rate)",
            "changes no scheduler (torch.optim.lr_scheduler), scheduler variable or computed learning rate",
            r"sched|warm_?up|anneal|cosine|lambdalr|steplr|onecycle|cycliclr|exponentiallr|plateau|param_groups",
            computed_lr=True),
    Concept("an optimizer change",
            r"\b(adam\w*|momentum|nesterov|rmsprop|adagrad|adadelta|adamax|nadam|radam|lion)\b",
            "changes no optimizer call and no momentum/betas argument",
            r"(^|\.)(sgd|adam\w*|rmsprop|adagrad|adadelta|adamax|nadam|radam|asgd|lbfgs|lion)$"
            r"|\.(momentum|nesterov|betas|dampening)$"),
    Concept("dropout", r"drop[\s_-]*out", "adds or changes no Dropout layer or dropout argument", r"dropout"),
    Concept("normalisation",
            r"batch[\s_-]*norm\w*|layer[\s_-]*norm\w*|group[\s_-]*norm\w*|normali[sz]\w*|standardi[sz]\w*",
            "adds or changes no normalisation layer (BatchNorm, LayerNorm, ...) or input normalisation",
            r"norm|standardi[sz]|\bmean\b|\bstd\b"),
    Concept("weight decay", r"weight[\s_-]*decay|\bl2[\s_-]*(regulari[sz]\w*|penalty)",
            "changes no weight_decay argument, AdamW or L2 term", r"weight_decay|adamw|(^|[._\s])l2"),
    Concept("data augmentation",
            r"augment\w*|mix[\s_-]*up|cut[\s_-]*(out|mix)|random[\s_-]*(flips?|crops?|shifts?|noise)|jitter\w*",
            "changes nothing that perturbs or mixes the training inputs (noise, flips, shifts, mixup)",
            r"augment|noise|flip|roll|randn|rand_like|randint|mixup|cutmix|cutout|crop|rotat|jitter|affine|shift"),
    Concept("label smoothing", r"label[\s_-]*smooth\w*|smooth\w*[\s_-]*labels?",
            "changes no label_smoothing argument or smoothed targets", r"label_smoothing|smooth"),
    Concept("a change of network size",
            r"\bwider\b|\bwiden\w*|\bwidth\b|\bdeeper\b|\bdeepen\w*|\bdepth\b|more[\s_-]+(hidden[\s_-]+)?"
            r"(layers|units|neurons)|(extra|additional|another|second|third)[\s_-]+(hidden[\s_-]+)?layers?"
            r"|(larger|bigger)[\s_-]+(network|model|hidden)|hidden[\s_-]+(units|size|neurons|dim\w*)",
            "adds or removes no layer and changes no layer size",
            r"linear|conv|lstm|gru|transformer|embedding|sequential|hidden|width|depth|layers?\b|units|channels"
            r"|features|d_model|\bdim\b"),
)


def _evidence(concept: Concept, facts: list[Fact]) -> bool:
    pattern = re.compile(concept.evidence, re.IGNORECASE)
    words = re.compile(concept.words, re.IGNORECASE)
    for fact in facts:
        if concept.computed_lr and fact.computed_lr:
            return True
        if any(pattern.search(touched) for touched in (*fact.names, *fact.args)):
            return True
        if any(pattern.search(line) or words.search(line) for line in fact.lines):
            return True
    return False


def title_claims_unsupported(title: str, hypothesis: str, old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One flag per concept of CONCEPTS that the title or hypothesis names and the diff shows no
    evidence of, e.g. 'the title names "Warm-up", "Decay" (a learning-rate schedule), but the diff
    changes no scheduler ...'. Empty when every named concept is touched (or none is named)."""
    facts = change_facts(old, new)
    flags = []
    for concept in CONCEPTS:
        named: dict[str, str] = {}  # each word once, as first written
        places = []
        for where, text in (("title", title or ""), ("hypothesis", hypothesis or "")):
            for m in re.finditer(concept.words, text, re.IGNORECASE):
                named.setdefault(m.group(0).lower(), m.group(0))
                places += [where] if where not in places else []
        if not named or _evidence(concept, facts):
            continue
        said = ", ".join(f'"{word}"' for word in named.values())
        flags.append(f"the {' and '.join(places)} name{'s' if len(places) == 1 else ''} {said} ({concept.name}), "
                     f"but the diff {concept.missing}")
    return flags
