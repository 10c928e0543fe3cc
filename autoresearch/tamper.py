"""Static tamper check of a proposal's changed files, run on the trusted side before any trial.

The sandbox is the real defence: it decides what candidate code can reach. This check adds
the rules the sandbox cannot see, because they happen inside the candidate's own process:
the seed and the budget are part of the experiment's definition, so code that reseeds a global
generator, patches a clock, or rewrites a module the harness relies on has changed the
experiment, not the method. Such a proposal ends ``tampered`` without being trained.

It reads the source with ``ast`` only (never imports or runs it). It is a tripwire for the
plain spellings, not a proof: ``getattr(__import__("ra" + "ndom"), "seed")`` gets past it.
The harness re-checks the torch seed at run time, and SECURITY.md says what stays open.
"""

from __future__ import annotations

import ast

from autoresearch.reasons import ProposalRejected, Reason

# Calls that reseed or replace the state of a global random generator.
RESEED_CALLS = {"seed", "manual_seed", "manual_seed_all", "set_rng_state", "setstate", "set_state",
                "seed_all", "set_seed"}
# Calls that change the compute budget the harness set (threads per trial).
BUDGET_CALLS = {"set_num_threads", "set_num_interop_threads"}
# Modules whose attributes the harness (or the clock it is timed by) relies on.
GUARDED_MODULES = {"time", "random", "np", "numpy", "torch", "sys", "os", "builtins", "__builtins__", "__main__",
                   "importlib", "gc", "signal", "resource", "math", "json", "argparse"}
GUARDED_SUBMODULES = {"torch.random", "torch.cuda", "torch.Tensor", "torch.Generator", "np.random", "numpy.random",
                      "torch.nn.functional", "os.path", "sys.modules"}
# Names whose import is only useful to reach the harness, the host or the process table.
FORBIDDEN_IMPORTS = {"__main__", "ctypes", "socket", "ptrace", "multiprocessing.shared_memory", "_thread"}
# Direct calls that rewrite a module's attributes or reach around the import system.
FORBIDDEN_CALLS = {"setattr", "delattr"}
# Where the harness's compute count lives (the harness's compute_meter.py): torch's global module and optimizer
# hooks, the autograd engine it wraps, and the function-mode stack that holds its function-level count.
# Naming them is only useful to switch the count off.
METER_INTERNALS = {"_global_forward_pre_hooks", "_global_forward_hooks", "_global_forward_hooks_always_called",
                   "_global_backward_hooks", "_global_backward_pre_hooks", "_global_optimizer_pre_hooks",
                   "_global_optimizer_post_hooks", "_execution_engine", "DisableTorchFunction",
                   "_pop_torch_function_stack", "_push_on_torch_function_stack", "_set_torch_function_state",
                   "_set_skip_next_torch_function", "_skip_one_hop_torch_function", "_pop_mode",
                   "_pop_mode_temporarily", "_disable_current_modes", "_get_current_function_mode_stack",
                   "_meter_root"}
# The harness's own report of a seed (compute counts, weight sketches): code that writes a file of this
# name means to replace it (write it, then leave before the harness can).
HARNESS_OUTPUTS = {"report.json"}


class Tampered(ProposalRejected):
    reason = Reason.TAMPERED


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None  # e.g. the call in torch.Generator().manual_seed: a private generator is fine


def _identifier(node: ast.AST) -> str | None:
    """The name a node spells: an attribute, a variable, an imported name, or a string constant
    (``getattr(torch._C, "_pop_torch_function_stack")`` names it as much as the attribute does)."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.alias):
        return node.name.split(".")[-1]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _root(name: str | None) -> str | None:
    return name.split(".")[0] if name else None


def _flat_targets(node: ast.AST) -> list[ast.AST]:
    """The assigned places of a target: a, b = ... gives both; x.y.z = ... gives x.y.z only."""
    if isinstance(node, (ast.Tuple, ast.List)):
        return [leaf for elt in node.elts for leaf in _flat_targets(elt)]
    if isinstance(node, ast.Starred):
        return _flat_targets(node.value)
    return [node]


def findings(path: str, source: str) -> list[str]:
    """Rule violations in one Python file, as human-readable lines (empty: clean)."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError:
        return []  # not our business: it will crash in the sandbox and end `crash`
    except (ValueError, RecursionError, MemoryError) as exc:
        return [f"{path}: source cannot be parsed safely ({type(exc).__name__})"]
    found: list[str] = []
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            func = node.func
            name = _dotted(func)
            if isinstance(func, ast.Attribute) and func.attr in BUDGET_CALLS and \
                    _root(_dotted(func.value)) in GUARDED_MODULES:
                found.append(f"{where}: {name}() changes the CPU thread budget the harness set")
            elif isinstance(func, ast.Attribute) and func.attr in RESEED_CALLS:
                owner = _dotted(func.value)
                # torch.Generator().manual_seed(...) or gen.manual_seed(...) on a local generator is allowed;
                # reseeding a module-level generator is not.
                if owner is not None and _root(owner) in GUARDED_MODULES | {"cuda", "default_generator"}:
                    found.append(f"{where}: reseeds a global random generator ({name}); the seed is set by the harness")
            elif isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS and node.args:
                target = _dotted(node.args[0])
                if _root(target) in GUARDED_MODULES:
                    found.append(f"{where}: {func.id}() on module {target} patches what the harness relies on")
            elif isinstance(func, ast.Name) and func.id == "__import__" and node.args and \
                    isinstance(node.args[0], ast.Constant) and node.args[0].value in FORBIDDEN_IMPORTS:
                found.append(f"{where}: imports {node.args[0].value}")
        elif isinstance(node, ast.Attribute) and _dotted(node) in ("sys.modules", "__builtins__.__dict__"):
            found.append(f"{where}: reaches into {_dotted(node)}, where the harness's own modules live")
        elif _identifier(node) in METER_INTERNALS:
            found.append(f"{where}: names {_identifier(node)}, part of the harness's compute count")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.rsplit("/", 1)[-1] in HARNESS_OUTPUTS:
            found.append(f"{where}: names {node.value!r}, the report the harness writes for a seed")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                for sub in _flat_targets(t):
                    if isinstance(sub, ast.Attribute):
                        owner = _dotted(sub.value)
                        # torch.time = ..., time.perf_counter = ..., np.random.seed = ... are patches;
                        # settings such as torch.backends.cudnn.benchmark = True are not.
                        if owner in GUARDED_MODULES or owner in GUARDED_SUBMODULES:
                            found.append(f"{where}: assigns {owner}.{sub.attr}, patching a module the harness "
                                         "or its clock relies on")
                    elif isinstance(sub, ast.Subscript):
                        owner = _dotted(sub.value)
                        if owner in ("sys.modules", "os.environ", "__builtins__", "builtins.__dict__"):
                            found.append(f"{where}: rewrites {owner}[...]")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for n in names:
                if n in FORBIDDEN_IMPORTS or n.split(".")[0] in {"ctypes", "socket", "__main__"}:
                    found.append(f"{where}: imports {n}, which only serves to reach the harness, host or network")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in GUARDED_MODULES:
                for a in node.names:
                    if a.name in RESEED_CALLS:
                        found.append(f"{where}: imports {node.module}.{a.name}")
    return found


def check_change(old: dict[str, str], new: dict[str, str]) -> None:
    """Raise Tampered if a changed or added Python file breaks the rules above."""
    problems: list[str] = []
    for path in sorted(new):
        if old.get(path) == new[path] or not path.endswith(".py"):
            continue
        problems.extend(findings(path, new[path]))
    if problems:
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise Tampered("static tamper check: " + "; ".join(shown))
