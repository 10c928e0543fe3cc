"""The terminal's live view of a run: current proposal, per-seed trial progress, decisions so far.

Everything shown is a rich Text built by escaping.terminal_text, never a markup string: a title
like ``[bold red]accepted`` prints as those characters.
"""

from __future__ import annotations

import threading
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autoresearch.outcomes import Events, ProposalRecord
from autoresearch.escaping import one_line, terminal_text


def decisions_table(records: list[ProposalRecord] | list[dict], title: str = "decisions") -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for col, kw in (("#", {"justify": "right"}), ("title", {}), ("decision", {}), ("reason", {}),
                    ("mean diff", {"justify": "right"}), ("p", {"justify": "right"})):
        table.add_column(col, **kw)
    for r in records:
        if isinstance(r, dict):
            idx, title_, decision, reason = r["index"], r["title"], r["decision"], r["reason"]
            mean, p = r.get("mean_difference"), r.get("p_value")
        else:
            idx, title_, decision, reason = r.idx, r.title, r.decision, r.reason
            mean = r.gate.mean_difference if r.gate else None
            p = r.gate.p_value if r.gate else None
        style = "green" if decision == "accepted" else "red"
        # One line each: a line break in a title would draw a row of its own.
        table.add_row(str(idx), terminal_text(one_line(title_, 60)), terminal_text(decision, style=style),
                      terminal_text(one_line(reason, 40)),
                      "-" if mean is None else f"{mean:+.4f}", "-" if p is None else f"{p:.3g}")
    return table


class LiveEvents(Events):
    def __init__(self, console: Console, records: list[ProposalRecord] | None = None):
        self.console = console
        self.records: list[ProposalRecord] = list(records or [])
        self.current = ""
        self.stage_text = ""
        self.seeds: dict[tuple[str, int], str] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.live: Live | None = None

    def __enter__(self) -> "LiveEvents":
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)

    def _render(self) -> Group:
        parts = []
        elapsed = time.monotonic() - self.started
        parts.append(terminal_text(f"[{elapsed:6.0f}s] {self.stage_text}", style="dim"))
        if self.current:
            parts.append(terminal_text(f"current: {self.current}", style="bold"))
        if self.seeds:
            line = Text("trials: ")
            for (role, seed), status in self.seeds.items():
                style = {"running": "yellow", "ok": "green"}.get(status.split(" ")[0], "red")
                line.append(f"{role}:{seed} {status}  ", style=style)
            parts.append(line)
        parts.append(decisions_table(self.records))
        return Group(*parts)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def _print(self, text: str) -> None:
        if self.live is None:
            self.console.print(terminal_text(text), highlight=False)

    def stage(self, text: str) -> None:
        with self._lock:
            self.stage_text = one_line(text, 300)
            self._print(f"· {self.stage_text}")
            self._refresh()

    def proposal_started(self, idx: int, title: str) -> None:
        with self._lock:
            self.current = f"#{idx} {one_line(title, 200)}"
            self.seeds = {}
            self._print(f"→ proposal {idx}: {one_line(title, 200)}")
            self._refresh()

    def trial_started(self, role: str, seed: int) -> None:
        with self._lock:
            self.seeds[(role, seed)] = "running"
            self._refresh()

    def trial_finished(self, role: str, seed: int, status: str, metric: float | None, cached: bool) -> None:
        with self._lock:
            label = status + (f" {metric:.3f}" if metric is not None else "") + (" (cached)" if cached else "")
            self.seeds[(role, seed)] = label
            self._print(f"  {role} seed {seed}: {label}")
            self._refresh()

    def proposal_decided(self, record: ProposalRecord) -> None:
        with self._lock:
            self.records = [r for r in self.records if r.idx != record.idx] + [record]
            self.current = ""
            self._print(f"  = {record.decision} ({record.reason}): {one_line(record.detail, 500)}")
            self._refresh()
