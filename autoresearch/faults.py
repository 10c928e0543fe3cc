"""Fault injection for the tests (tests/test_faults.py): kill or break a run at a named point."""

from __future__ import annotations

import os
import signal
import threading

_HITS: dict[str, int] = {}


def fault(point: str, delay: float = 0.0) -> None:
    """AUTORESEARCH_FAULT=point[:n][:raise] makes this process SIGKILL itself (after ``delay``
    seconds, from a timer) or, with ``raise``, raise an exception, the n-th time (default 1st) it
    reaches ``point``. Unset (always, outside the tests): nothing."""
    spec = os.environ.get("AUTORESEARCH_FAULT", "")
    name, _, rest = spec.partition(":")
    nth, _, mode = rest.partition(":")
    if name != point:
        return
    _HITS[point] = _HITS.get(point, 0) + 1
    if _HITS[point] == int(nth or 1):
        if mode == "raise":
            raise RuntimeError(f"injected fault at {point}")
        if delay:
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
        else:
            os.kill(os.getpid(), signal.SIGKILL)
