"""Pipelining: proposals overlap in time, decisions stay sequential and do not depend on it.

Without it a run alternates: the agent drafts proposal i (LLM call, checks, smoke run), then its
trials run, then the agent drafts i+1. With it:

* **One judge, in order.** Proposals are handed to a ``Judge``: one thread that decides them
  strictly in index order, each with ``RunEngine.evaluate`` against the incumbent of the moment it
  is decided, exactly the code that decides them without pipelining. Nothing is decided twice,
  out of order, or against anything but the incumbent of its turn.
* **Speculative trials fill free slots.** With N slots, up to N proposals are in flight: while the
  judge works on i, proposals i+1 .. i+N-1 waiting for their turn run the gate's looks against the
  incumbent as it stands (``RunEngine.speculate``), as if every proposal before them were rejected.
  They decide and record nothing but trials, keyed by code, seed and everything else that decides a
  trial's result (autoresearch.trial_cache), so the judge finds them in the cache when the
  speculation was right. If the incumbent moved, the judge applies the proposal to the new
  incumbent and re-gates it: trials of the same code and seeds are reused, only missing ones run;
  a speculation stops at its next look once the incumbent has moved. One trial per key, ever: two
  threads asking for the same key share one run (TrialCache.run).
* **The agent drafts ahead** (autoresearch.agent.graph): while i is judged, the agent drafts i+1.
  What it sees is fixed by the proposal's index, never by timing: proposal j is drafted against
  the incumbent and the history as of decision j-2 (``LAG`` = 1 undecided proposal), so it waits
  for j-2 even if j-1 happens to be decided sooner. If the incumbent moves before j's turn, its
  change is rebased onto the new incumbent with a three-way merge, or it ends ``stale``
  (autoresearch.rebase); the ledger and its report say what it was drafted against and what it saw.

Why decisions cannot depend on slots or timing: every decision is made by the same function, in
the same order, against the same incumbent as without pipelining, from trial results that are a
function of their cache key (the harness is deterministic per seed; if it is not bit-reproducible
on a device, the one recorded run of a key is what every later use reads). Slots and speculation
change only when a trial runs. With proposals from a file that is the whole story: the same file
gives the same decisions for 1 or N slots, pipelining on or off. With an agent, drafting ahead
changes what the agent has seen when it writes a proposal (one decision fewer), so pipelining is on
by default for proposals files and off for the agent unless asked (``--pipeline``); either way
the agent's view depends on the index alone, not on the slots or the clock.

A kill loses nothing: a proposal handed to the judge is in the ledger first (its reply, what it was
drafted against), and ``resume`` evaluates it again without a new LLM call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autoresearch.faults import fault

if TYPE_CHECKING:
    from autoresearch.agent.proposal import Proposal, ProposalRejected
    from autoresearch.engine import RunEngine

# Undecided proposals the agent may draft past: proposal j sees decisions up to j - 1 - LAG.
LAG = 1


@dataclass
class Job:
    """One proposal handed to the judge."""

    idx: int
    raw: str
    parsed: "Proposal | ProposalRejected"
    source: str
    prompt_hash: str | None = None
    drafted_on: str | None = None  # the incumbent commit the agent drafted it against
    seen_upto: int | None = None  # the last decision the agent had seen
    speculation: threading.Thread | None = field(default=None, repr=False)


class Judge:
    """Decides handed-in proposals strictly in index order on one thread; runs speculative gates of
    the waiting ones on up to ``speculate`` more threads. ``submit`` blocks while ``limit``
    proposals are undecided. Errors that stop a run (storage, ledger, the incumbent failing) are
    raised again in the caller's thread by the next ``submit``, ``wait_decided`` or ``close``."""

    def __init__(self, engine: "RunEngine", *, limit: int, speculate: int):
        self.engine = engine
        self.limit = max(1, limit)
        self.speculate = max(0, speculate)
        self._cond = threading.Condition()
        self._queue: dict[int, Job] = {}  # submitted, not yet decided
        self._next: int | None = None  # the index the judge decides next
        self._decided: set[int] = set()
        self._error: BaseException | None = None
        self._closing = False
        self._speculations: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._work, name="autoresearch-judge", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the caller's side

    def submit(self, job: Job) -> None:
        """Store the proposal in the ledger and hand it to the judge (blocks while ``limit`` are undecided)."""
        with self._cond:
            self._cond.wait_for(lambda: self._error is not None or len(self._queue) < self.limit)
            self._raise()
        self.engine.store_pending(job.idx, job.raw, job.parsed, source=job.source, prompt_hash=job.prompt_hash,
                                  drafted_on=job.drafted_on, seen_upto=job.seen_upto)
        fault("submitted")  # test hook: stored, not yet handed to the judge
        with self._cond:
            if self._next is None:
                self._next = job.idx
            self._queue[job.idx] = job
            self._start_speculation()
            self._cond.notify_all()

    def wait_decided(self, upto: int) -> None:
        """Block until every submitted proposal with index <= upto is decided and recorded."""
        with self._cond:
            self._cond.wait_for(lambda: self._error is not None or not any(i <= upto for i in self._queue))
            self._raise()

    def undecided(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Wait until everything submitted is decided, then stop the judge."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        for thread in list(self._speculations):  # each stops at its next look: its turn has passed
            thread.join()
        with self._cond:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------------ the judge's side

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: (self._next in self._queue) or (self._closing and not self._queue))
                if self._next not in self._queue:
                    return
                job = self._queue[self._next]
            try:
                self.engine.evaluate(job.idx, job.raw, job.parsed, source=job.source, prompt_hash=job.prompt_hash,
                                     drafted_on=job.drafted_on, seen_upto=job.seen_upto)
            except BaseException as exc:  # the run stops: the caller re-raises it
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                del self._queue[job.idx]
                self._decided.add(job.idx)
                self._next = job.idx + 1
                self._start_speculation()
                self._cond.notify_all()

    def _start_speculation(self) -> None:
        """(Holding the lock.) Speculative gates for the waiting proposals nearest their turn, at most
        ``speculate`` at a time; the one being judged needs none."""
        if not self.speculate:
            return
        waiting = sorted(i for i in self._queue if i != self._next)[:self.speculate]
        running = sum(1 for j in self._queue.values() if j.speculation is not None and j.speculation.is_alive())
        for i in waiting:
            job = self._queue[i]
            if job.speculation is None and running < self.speculate:
                job.speculation = threading.Thread(target=self._speculate, args=(job,), daemon=True,
                                                   name=f"autoresearch-speculate-{i}")
                job.speculation.start()
                self._speculations.append(job.speculation)
                running += 1

    def _speculate(self, job: Job) -> None:
        # Once its turn comes the judge takes over (the trials it needs are shared, never run twice).
        self.engine.speculate(job.idx, job.parsed, drafted_on=job.drafted_on,
                              keep_going=lambda: self._error is None and job.idx in self._queue
                              and self._next != job.idx)
        with self._cond:
            self._start_speculation()  # a slot of speculation is free for the next waiting proposal
