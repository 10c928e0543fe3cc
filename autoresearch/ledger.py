"""The run's SQLite ledger: runs, proposals, trials, LLM calls, decisions.

The schema moves only through the named, append-only migrations below (never edit one that has
shipped; add the next). Every write is its own transaction, so a run killed at any moment leaves
a consistent ledger that ``resume`` continues from.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

MIGRATIONS: list[tuple[str, str]] = [
    ("001_initial", """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            benchmark TEXT NOT NULL,
            benchmark_version TEXT NOT NULL,
            idea TEXT,
            config_json TEXT NOT NULL,
            fingerprints_json TEXT NOT NULL,
            counts_json TEXT NOT NULL,
            env_json TEXT NOT NULL,
            isolation TEXT NOT NULL,
            status TEXT NOT NULL,
            baseline_commit TEXT,
            headline_json TEXT,
            finished_at REAL
        );
        CREATE TABLE proposals (
            run_id TEXT NOT NULL REFERENCES runs(id),
            idx INTEGER NOT NULL,
            source TEXT NOT NULL,
            title TEXT NOT NULL,
            hypothesis TEXT NOT NULL,
            raw TEXT NOT NULL,
            edits_json TEXT,
            change_hash TEXT,
            parent_commit TEXT,
            diff TEXT,
            state TEXT NOT NULL,              -- pending | decided | finished
            decision TEXT,                    -- accepted | rejected
            reason TEXT,
            detail TEXT,
            gate_json TEXT,
            screen_json TEXT,
            commit_sha TEXT,
            report_path TEXT,
            prompt_hash TEXT,
            started_at REAL NOT NULL,
            decided_at REAL,
            wall_seconds REAL,
            PRIMARY KEY (run_id, idx)
        );
        CREATE TABLE trials (
            run_id TEXT NOT NULL REFERENCES runs(id),
            cache_key TEXT NOT NULL,
            code_hash TEXT NOT NULL,
            role TEXT NOT NULL,
            proposal_idx INTEGER,
            seed INTEGER NOT NULL,
            status TEXT NOT NULL,
            detail TEXT NOT NULL,
            val_metric REAL,
            test_metric REAL,
            val_log_loss REAL,
            test_log_loss REAL,
            val_correct BLOB,
            test_correct BLOB,
            summary_json TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (run_id, cache_key)
        );
        CREATE TABLE llm_calls (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(id),
            proposal_idx INTEGER,
            attempt INTEGER NOT NULL,
            model TEXT NOT NULL,
            base_url TEXT NOT NULL,
            messages_json TEXT NOT NULL,
            reply TEXT,
            error TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_seconds REAL NOT NULL,
            cost_usd REAL,
            created_at REAL NOT NULL
        );
    """),
    # The agent's time budget spans resumes: time spent in earlier sessions of the run counts.
    ("002_run_active_seconds", """
        ALTER TABLE runs ADD COLUMN active_seconds REAL NOT NULL DEFAULT 0
    """),
    # Seeds drawn per run from a secret; the memorisation check's perturbed copies; integrity figures.
    ("003_secret_perturbed_integrity", """
        ALTER TABLE runs ADD COLUMN secret TEXT;
        ALTER TABLE trials ADD COLUMN perturbed_metric REAL;
        ALTER TABLE trials ADD COLUMN perturbed_correct BLOB;
        ALTER TABLE proposals ADD COLUMN integrity_json TEXT
    """),
    # The one-seed val screen went with gate v2; its column was never written since.
    ("004_drop_screen_json", """
        ALTER TABLE proposals DROP COLUMN screen_json
    """),
    # Pipelining (autoresearch.pipeline): the seeds a decision used (several code versions of one
    # proposal may have trials: one drafted ahead and speculatively trained, one judged), and what
    # a proposal drafted ahead was written against (commit, the decisions its author saw, a rebase).
    ("005_pipeline_seeds_draft", """
        ALTER TABLE proposals ADD COLUMN seeds_json TEXT;
        ALTER TABLE proposals ADD COLUMN draft_json TEXT
    """),
]


class LedgerError(RuntimeError):
    """The ledger cannot be opened or written (read-only directory, full disk, corrupt file)."""


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                                        check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            # One connection, several threads (the pipeline's judge, its speculative trials and the
            # agent): every statement and transaction holds this lock, so none interleave.
            self.lock = threading.RLock()
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.migrate()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from None

    # ------------------------------------------------------------------ migrations

    def migrate(self) -> list[str]:
        self.conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {r[0] for r in self.conn.execute("SELECT name FROM _migrations")}
        applied = []
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            with self.transaction():
                for statement in sql.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
            applied.append(name)
        return applied

    def applied_migrations(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM _migrations ORDER BY name")]

    # ------------------------------------------------------------------ plumbing

    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb):
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
            return False

    def transaction(self) -> "Ledger._Tx":
        return Ledger._Tx(self.conn)

    def _insert(self, table: str, fields: dict[str, Any], *, verb: str = "INSERT") -> None:
        """One row; ``fields`` are column names the code chose (never from a proposal or a sandbox)."""
        cols = ", ".join(fields)
        marks = ", ".join(f":{k}" for k in fields)
        self._write(f"{verb} INTO {table} ({cols}) VALUES ({marks})", fields)

    def _write(self, sql: str, params: tuple | dict) -> None:
        try:
            with self.lock, self.transaction() as c:
                c.execute(sql, params)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write to ledger {self.path}: {exc}") from None

    def _all(self, sql: str, params: tuple = ()) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.conn.execute(sql, params)]

    def _one(self, sql: str, params: tuple = ()) -> dict | None:
        with self.lock:
            row = self.conn.execute(sql, params).fetchone()
        return dict(row) if row else None

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # ------------------------------------------------------------------ runs

    def create_run(self, **fields: Any) -> None:
        fields.setdefault("created_at", time.time())
        fields.setdefault("status", "running")
        self._insert("runs", fields)

    def update_run(self, run_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        self._write(f"UPDATE runs SET {sets} WHERE id = :_id", {**fields, "_id": run_id})

    def run(self, run_id: str) -> dict | None:
        return self._one("SELECT * FROM runs WHERE id = ?", (run_id,))

    def only_run(self) -> dict:
        row = self._one("SELECT * FROM runs ORDER BY created_at LIMIT 1")
        if row is None:
            raise LedgerError(f"{self.path} holds no run")
        return row

    # ------------------------------------------------------------------ proposals

    def add_proposal(self, **fields: Any) -> None:
        fields.setdefault("started_at", time.time())
        fields.setdefault("state", "pending")
        self._insert("proposals", fields, verb="INSERT OR IGNORE")

    def update_proposal(self, run_id: str, idx: int, **fields: Any) -> None:
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        self._write(f"UPDATE proposals SET {sets} WHERE run_id = :_run AND idx = :_idx",
                    {**fields, "_run": run_id, "_idx": idx})

    def proposal(self, run_id: str, idx: int) -> dict | None:
        return self._one("SELECT * FROM proposals WHERE run_id = ? AND idx = ?", (run_id, idx))

    def proposals(self, run_id: str) -> list[dict]:
        return self._all("SELECT * FROM proposals WHERE run_id = ? ORDER BY idx", (run_id,))

    # ------------------------------------------------------------------ trials

    def put_trial(self, **fields: Any) -> None:
        fields.setdefault("created_at", time.time())
        self._insert("trials", fields, verb="INSERT OR REPLACE")

    def trial(self, run_id: str, cache_key: str) -> dict | None:
        return self._one("SELECT * FROM trials WHERE run_id = ? AND cache_key = ?", (run_id, cache_key))

    def trials(self, run_id: str) -> list[dict]:
        return self._all("SELECT * FROM trials WHERE run_id = ? ORDER BY created_at", (run_id,))

    # ------------------------------------------------------------------ LLM calls

    def log_llm_call(self, **fields: Any) -> None:
        fields.setdefault("created_at", time.time())
        self._insert("llm_calls", fields)

    def llm_calls(self, run_id: str) -> list[dict]:
        return self._all("SELECT * FROM llm_calls WHERE run_id = ? ORDER BY id", (run_id,))

    def llm_totals(self, run_id: str, proposal_idx: int | None = None) -> dict:
        q = ("SELECT COUNT(*) AS calls, COALESCE(SUM(prompt_tokens),0) AS prompt_tokens, "
             "COALESCE(SUM(completion_tokens),0) AS completion_tokens, COALESCE(SUM(cost_usd),0) AS cost_usd, "
             "COALESCE(SUM(latency_seconds),0) AS latency_seconds FROM llm_calls WHERE run_id = ?")
        params: tuple = (run_id,)
        if proposal_idx is not None:
            q += " AND proposal_idx = ?"
            params = (run_id, proposal_idx)
        return self._one(q, params) or {}


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
