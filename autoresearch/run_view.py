"""A run as stored, for reading: its ledger (migrated to this version's schema when opened, so
runs made by an older version show too), its git repo and its records. No benchmark is loaded, no
data prepared and no engine built: `show` works on a run whose benchmark changed or is gone.
"""

from __future__ import annotations

from pathlib import Path

from autoresearch.ledger import Ledger, LedgerError
from autoresearch.outcomes import ProposalRecord
from autoresearch.records import RunRepo
from autoresearch.recording import load_record


class RunView:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir).resolve()
        if not (self.run_dir / "ledger.sqlite").is_file():
            raise LedgerError(f"{self.run_dir} is not a run folder (no ledger.sqlite)")
        self.ledger = Ledger(self.run_dir / "ledger.sqlite")
        self.row = self.ledger.only_run()
        self.run_id: str = self.row["id"]
        self.isolation: str = self.row["isolation"]
        self.repo = RunRepo(self.run_dir / "repo")

    def records(self) -> list[ProposalRecord]:
        return [load_record(self, r) for r in self.ledger.proposals(self.run_id) if r["state"] != "pending"]
