"""Why a proposal ended as it did: one reason code per decision, named once.

Every record (ledger row, report, commit trailer, `show --json`) carries one of these codes. The
engine, the tamper check, the agent and the reports use the enum, never a string copied around; a
``Reason`` is a ``str``, so rows written as plain text compare equal to it.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    ACCEPTED = "accepted"
    NOT_BETTER = "not_better"  # the gate found no improvement it could stand behind
    # Nothing could be applied: no commit tree of its own.
    INVALID_PROPOSAL = "invalid_proposal"
    NOT_EDITABLE = "not_editable"
    APPLY_FAILED = "apply_failed"
    # Drafted ahead (pipelining) against an incumbent that has moved since, and its change does not
    # merge onto the new one: never judged on the old code (autoresearch.rebase).
    STALE = "stale"
    # The agent's own checks before any trial (applied and recorded with its diff, never trained).
    STATIC_CHECK = "static_check"
    SMOKE_FAILED = "smoke_failed"
    DUPLICATE = "duplicate"
    # A trial's status (sandbox.trial.TrialStatus) other than ok.
    CRASH = "crash"
    TIMEOUT = "timeout"
    OOM = "oom"
    NONFINITE = "nonfinite"
    TAMPERED = "tampered"
    OVER_BUDGET = "over_budget"
    TRANSDUCTIVE = "transductive"
    # Integrity checks no statistic can make.
    SEED_IGNORED = "seed_ignored"
    MEMORISED = "memorised"
    DATA_MISMATCH = "data_mismatch"


# Reasons a proposal ends with before any code of it could be applied (no commit tree of its own).
NOT_APPLIED = frozenset({Reason.INVALID_PROPOSAL, Reason.NOT_EDITABLE, Reason.APPLY_FAILED, Reason.STALE})

# Reasons whose detail the model may see: failures of the code itself. A gate's detail (not_better,
# accepted, the integrity findings) holds test figures, which the agent never sees.
DETAIL_SAFE = NOT_APPLIED | frozenset({Reason.STATIC_CHECK, Reason.SMOKE_FAILED, Reason.DUPLICATE, Reason.CRASH,
                                       Reason.TIMEOUT, Reason.OOM, Reason.NONFINITE, Reason.TAMPERED})


class ProposalRejected(ValueError):
    """A proposal that cannot be trained; ``reason`` is the record's reason code."""

    reason: Reason = Reason.INVALID_PROPOSAL

    def __init__(self, message: str):
        super().__init__(message)
