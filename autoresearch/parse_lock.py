"""One lock around ``ast.parse`` for the whole orchestrator process.

CPython 3.11 keeps the recursion depth of its AST-to-Python conversion in one interpreter-wide
struct (fixed upstream in gh-106905 for later releases). When two threads convert at once, one of
them can fail with ``SystemError: AST constructor recursion depth mismatch``. With pipelining the
agent's checks (autoresearch.describe, directions, pyflakes) parse in one thread while the judge
records a proposal in another and the live view's ``rich`` parses markup with
``ast.literal_eval`` in a third; a run must never fail on that. ``install()`` (called on import
of the package) wraps ``ast.parse`` itself, so the stdlib's ``literal_eval`` and every library
that parses go through the same lock. Parsing is quick; serialising it costs nothing measurable.
"""

from __future__ import annotations

import ast
import functools
import threading

LOCK = threading.RLock()  # re-entrant: a parse may trigger code that parses (a finaliser, an import)


def install() -> None:
    if getattr(ast.parse, "_autoresearch_locked", False):
        return
    unlocked = ast.parse

    @functools.wraps(unlocked)
    def parse(*args, **kwargs):
        with LOCK:
            return unlocked(*args, **kwargs)

    parse._autoresearch_locked = True  # type: ignore[attr-defined]
    ast.parse = parse
