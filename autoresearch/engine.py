"""The trial engine: prepare -> baseline -> (check -> train -> predict -> score -> gate -> record) -> finish.

It knows nothing of where proposals come from (a file, an LLM): callers hand it raw text or a
parsed proposal and get back a decided, recorded, reported proposal. Every step is written to
the ledger before the next starts, so a killed run resumes without losing or repeating work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from autoresearch import envinfo
from autoresearch.agent.proposal import Proposal, ProposalRejected, apply_proposal
from autoresearch.benchmark import Benchmark, BenchmarkError, PreparedData, load_benchmark, prepare_data
from autoresearch.config import RunConfig
from autoresearch.datasets import DataMismatch
from autoresearch.gate import GateConfig, StageDecision, decide_stage
from autoresearch.integrity import memorisation, seed_ignored, transductive
from autoresearch.ledger import Ledger, LedgerError, dumps
from autoresearch.records import RunRepo
from autoresearch.sandbox.executors import pin_request
from autoresearch.sandbox.isolation import IsolationUnavailable, SandboxUnreadable, isolation_level
from autoresearch.sandbox.pyview import PackageNotInstalled
from autoresearch.sandbox.trial import Budget, TrialOutput, TrialRequest, TrialStatus, run_trials
from autoresearch.scoring import Metric, PredictionError, parse_predictions, score_logits
from autoresearch.secondary import secondary_from_logits
from autoresearch.seeding import derived_key, draw_seeds, new_secret, trial_key
from autoresearch.tamper import check_change


def fault(point: str, delay: float = 0.0) -> None:
    """Fault-injection hook for tests: AUTORESEARCH_FAULT=point[:n][:raise] makes this process
    SIGKILL itself (after ``delay`` seconds, from a timer) or, with ``raise``, raise an exception,
    the n-th time (default 1st) it reaches ``point``."""
    spec = os.environ.get("AUTORESEARCH_FAULT", "")
    name, _, rest = spec.partition(":")
    nth, _, mode = rest.partition(":")
    if name != point:
        return
    _FAULT_HITS[point] = _FAULT_HITS.get(point, 0) + 1
    if _FAULT_HITS[point] == int(nth or 1):
        if mode == "raise":
            raise RuntimeError(f"injected fault at {point}")
        import signal
        import threading

        if delay:
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
        else:
            os.kill(os.getpid(), signal.SIGKILL)


_FAULT_HITS: dict[str, int] = {}

REASONS = ("invalid_proposal", "not_editable", "apply_failed", "static_check", "smoke_failed", "duplicate", "crash",
           "timeout", "oom", "nonfinite", "tampered", "over_budget", "transductive", "seed_ignored", "memorised",
           "data_mismatch", "not_better", "accepted")


class Executor(Protocol):
    slots: int

    def map(self, fn: Callable[[TrialRequest], list[TrialOutput]],
            requests: list[TrialRequest]) -> list[list[TrialOutput]]: ...


class Events:
    """Progress callbacks; the CLI's live view overrides them. Default: silent."""

    def stage(self, text: str) -> None: ...
    def trial_started(self, role: str, seed: int) -> None: ...
    def trial_finished(self, role: str, seed: int, status: str, metric: float | None, cached: bool) -> None: ...
    def proposal_started(self, idx: int, title: str) -> None: ...
    def proposal_decided(self, record: "ProposalRecord") -> None: ...


@dataclass
class TrialRecord:
    seed: int
    role: str
    code_hash: str
    status: str
    detail: str
    val_metric: float | None
    test_metric: float | None
    val_log_loss: float | None
    test_log_loss: float | None
    summary: dict
    cached: bool = False
    perturbed_metric: float | None = None  # on the perturbed copies of the test inputs
    test_correct: bytes | None = None  # per test example, int8 0/1 (originals)
    perturbed_correct: bytes | None = None  # per test example, int8 0/1 (its perturbed copy)

    @property
    def ok(self) -> bool:
        return self.status == TrialStatus.OK.value

    def correct(self, which: str) -> np.ndarray:
        """Per example, 0/1: "test" (the originals) or "perturbed" (their copies)."""
        raw = self.test_correct if which == "test" else self.perturbed_correct
        return np.frombuffer(raw or b"", dtype=np.int8)


@dataclass
class ProposalRecord:
    idx: int
    title: str
    hypothesis: str
    decision: str
    reason: str
    detail: str
    diff: str = ""
    gate: StageDecision | None = None  # the gate's last look
    commit: str | None = None
    report_path: str | None = None
    candidate_trials: list[TrialRecord] = field(default_factory=list)
    incumbent_trials: list[TrialRecord] = field(default_factory=list)
    wall_seconds: float = 0.0
    integrity: dict = field(default_factory=dict)  # the integrity checks' figures (seeds, memorisation)


def files_hash(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return h.hexdigest()


def slugify(text: str, limit: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug[:limit].rstrip("-") or "proposal")


def new_run_id(benchmark: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slugify(benchmark, 24)}-{secrets.token_hex(3)}"


class LocalExecutor:
    """Runs trials in parallel slots on this machine (threads that each drive one sandbox).
    ``devices``: one per slot (e.g. cuda:0, cuda:1); each trial is pinned to its slot's device."""

    def __init__(self, slots: int = 1, devices: list[str] | None = None):
        self.slots = max(1, slots)
        self.devices = list(devices) if devices else None

    def map(self, fn, requests):
        if self.devices and any(d != "cpu" for d in self.devices):
            from autoresearch.sandbox.executors import run_on_slots

            return run_on_slots(fn, requests, self.devices[:self.slots])
        if self.slots == 1 or len(requests) <= 1:
            return [fn(r) for r in requests]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.slots) as pool:
            return list(pool.map(fn, requests))


class RunEngine:
    def __init__(self, *, run_dir: Path, run_id: str, bench: Benchmark, data: PreparedData, ledger: Ledger,
                 repo: RunRepo, config: RunConfig, gate: GateConfig, verify_count: int, isolation: str, device: str,
                 env: dict, executor: Executor, secret: str, events: Events | None = None):
        self.run_dir, self.run_id, self.bench, self.data = run_dir, run_id, bench, data
        self.ledger, self.repo, self.config, self.gate = ledger, repo, config, gate
        self.isolation, self.device, self.env = isolation, device, env
        self.executor = executor
        self.events = events or Events()
        self.metric = Metric(bench.spec.metric.name, bench.spec.metric.direction)
        self.secret = secret
        # Drawn per run from its secret (autoresearch.seeding): unpredictable, and alike whatever they are for.
        self.gate_seeds = draw_seeds(secret, "gate", gate.max_seeds)  # the first stages[i] of them at look i
        self.verify_seeds = draw_seeds(secret, "verify", verify_count)

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(cls, config: RunConfig, *, executor: Executor | None = None, events: Events | None = None) -> "RunEngine":
        bench = load_benchmark(config.benchmark)
        isolation = isolation_level(config.isolation)
        device = envinfo.resolve_device(config.device)
        gate = gate_config(config, bench)
        secret = new_secret()  # before anything is made: a bad AUTORESEARCH_RUN_SECRET leaves nothing behind
        runs_dir = Path(config.runs_dir)
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create runs directory {runs_dir}: {exc.strerror}") from None
        if not os.access(runs_dir, os.W_OK):
            raise LedgerError(f"runs directory {runs_dir} is not writable")
        run_id = new_run_id(bench.name)
        run_dir = (runs_dir / run_id).resolve()
        run_dir.mkdir()
        events = events or Events()
        events.stage("preparing data")
        data = prepare_data(bench, run_dir / "data", secret)
        env = envinfo.environment(device, isolation)
        resolved = {"run": json.loads(config.model_dump_json()), "gate": gate.to_dict(),
                    "verify_seeds": bench.spec.gate.verify_seeds,
                    "budget": bench.spec.budget.model_dump(), "benchmark": bench.spec.model_dump(),
                    "benchmark_root": str(bench.root), "predict_fingerprint": data.predict_fingerprint,
                    "seeds": {"gate": draw_seeds(secret, "gate", gate.max_seeds),
                              "verify": draw_seeds(secret, "verify", bench.spec.gate.verify_seeds)}}
        (run_dir / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
        repo = RunRepo.create(run_dir / "repo", bench.template_files(),
                              f"baseline: {bench.name} v{bench.spec.version} template\n\n"
                              f"Autoresearch-Data: {dumps(data.fingerprints)}\n")
        ledger = Ledger(run_dir / "ledger.sqlite")
        ledger.create_run(id=run_id, benchmark=bench.name, benchmark_version=bench.spec.version, idea=config.idea,
                          config_json=dumps(resolved), fingerprints_json=dumps(data.fingerprints),
                          counts_json=dumps(data.counts), env_json=dumps(env), isolation=isolation,
                          baseline_commit=repo.baseline, secret=secret)
        return cls(run_dir=run_dir, run_id=run_id, bench=bench, data=data, ledger=ledger, repo=repo, config=config,
                   gate=gate, verify_count=bench.spec.gate.verify_seeds, isolation=isolation, device=device, env=env, executor=executor or LocalExecutor(config.slots),
                   secret=secret, events=events)

    @classmethod
    def open(cls, run_dir: Path, *, executor: Executor | None = None, events: Events | None = None,
             slots: int | None = None, read_only: bool = False, isolation: str | None = None) -> "RunEngine":
        """Re-open an existing run (resume, replay --verify): data is re-prepared and re-checked.
        ``read_only`` (show, list) skips data preparation and trusts the recorded fingerprints."""
        run_dir = Path(run_dir).resolve()
        if not (run_dir / "ledger.sqlite").is_file():
            raise LedgerError(f"{run_dir} is not a run folder (no ledger.sqlite)")
        ledger = Ledger(run_dir / "ledger.sqlite")
        row = ledger.only_run()
        resolved = json.loads(row["config_json"])
        run_cfg = dict(resolved["run"])
        if slots is not None:
            run_cfg["slots"] = slots
        if isolation is not None:  # resume --isolation: this session only, never written back
            run_cfg["isolation"] = isolation
        config = RunConfig.model_validate(run_cfg)
        bench_ref = resolved.get("benchmark_root") or config.benchmark
        bench = load_benchmark(bench_ref if Path(bench_ref).is_dir() else config.benchmark)
        if bench.spec.version != row["benchmark_version"]:
            raise DataMismatch(f"run used {bench.name} v{row['benchmark_version']}, this machine has v{bench.spec.version}")
        secret = row.get("secret") or ""
        if read_only:
            data = PreparedData(public_dir=run_dir / "data" / "public", labels_dir=run_dir / "data" / "labels",
                                fingerprints=json.loads(row["fingerprints_json"]), counts=json.loads(row["counts_json"]),
                                predict_fingerprint=resolved.get("predict_fingerprint", ""))
        elif not secret:
            raise LedgerError(f"{run_dir} was made by an older autoresearch (fixed public seeds, trial protocol 1); "
                              "it can be shown, not resumed or re-verified")
        else:
            data = prepare_data(bench, run_dir / "data", secret)
            if data.predict_fingerprint != resolved.get("predict_fingerprint"):
                raise DataMismatch("the predict set prepared now differs from the one this run was started on")
        if data.fingerprints != json.loads(row["fingerprints_json"]):
            raise DataMismatch("the data prepared now differs from the data this run was started on; refusing to go on")
        try:
            gate = GateConfig(**resolved["gate"])
        except (TypeError, ValueError):
            if not read_only:
                raise LedgerError(f"{run_dir} was judged by gate v1 (fixed seeds, paired t); it can be shown, not "
                                  "resumed or re-verified") from None
            old = resolved["gate"]  # shown only: its numbers come from the records, not from this design
            gate = GateConfig(alpha=old.get("alpha", 0.05), proposals=old.get("proposals", 1))
        isolation = row["isolation"] if read_only else isolation_level(config.isolation)
        if isolation != row["isolation"] and row["isolation"] == "bubblewrap":
            raise IsolationUnavailable("this run was started in the bubblewrap sandbox; it cannot go on without it")
        device = json.loads(row["env_json"]).get("device", "cpu").split(" ")[0] if read_only else \
            envinfo.resolve_device(config.device)
        engine = cls(run_dir=run_dir, run_id=row["id"], bench=bench, data=data, ledger=ledger,
                     repo=RunRepo(run_dir / "repo"), config=config, gate=gate,
                     verify_count=int(resolved.get("verify_seeds", 5)), isolation=isolation, device=device,
                     env=json.loads(row["env_json"]), executor=executor or LocalExecutor(config.slots),
                     secret=secret or "00" * 32, events=events)
        if not secret:  # a protocol-1 run, shown read-only: its seeds were the spec's fixed bases
            engine.gate_seeds = sorted({r["seed"] for r in ledger.trials(row["id"]) if r["role"] == "incumbent"})
        return engine

    # ------------------------------------------------------------------ trials

    def _trial_config(self) -> dict:
        b = self.bench.spec.budget
        return {"epochs": b.epochs, "batch_size": b.batch_size, "threads": b.threads,
                "num_classes": self.bench.spec.data.num_classes, "device": self.device}

    def _budget(self) -> Budget:
        """What one seed may use (spec [budget] and [integrity]): limits the trusted side enforces."""
        b, rules = self.bench.spec.budget, self.bench.spec.integrity
        n_train = self.data.counts["train"]
        layout_rows = len(self.data.layout().check_rows)
        predict_rows = sum(self.data.counts[s] for s in ("val", "test")) + (
            self.data.counts["test"] if rules.perturbation != "none" else 0)
        return Budget(train_examples=int(b.epochs * n_train * (1 + rules.budget_tolerance)) + 1,
                      other_examples=int(rules.eval_epochs * n_train) + 64,
                      predict_examples=int((predict_rows + layout_rows) * (1 + rules.budget_tolerance)) + 64,
                      checkpoint_bytes=int(rules.max_checkpoint_mb * 1024**2),
                      prediction_bytes=b.max_prediction_mb * 1024**2)

    def _cache_key(self, code_hash: str, seed: int) -> str:
        payload = {"code": code_hash, "harness": self.bench.harness_hash(), "data": self.data.fingerprints,
                   "counts": self.data.counts, "predict": self.data.predict_fingerprint, "seed": seed,
                   "config": self._trial_config(), "torch": self.env["versions"].get("torch"),
                   "isolation": self.isolation}
        return hashlib.sha256(dumps(payload).encode()).hexdigest()

    def workspace(self, files: dict[str, str], name: str) -> Path:
        """Materialise a code version as a read-only-mounted folder (content-addressed)."""
        path = self.run_dir / "work" / name
        if path.exists():
            shutil.rmtree(path)
        root = path.resolve()
        for rel, text in files.items():
            target = path / rel
            # Defence in depth: paths come from apply_proposal or git, but never write outside.
            if not rel or "\x00" in rel or root not in (path / rel).resolve().parents:
                raise ValueError(f"refusing to write {rel!r} outside the workspace {path}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        return path

    def _request(self, workspace: Path, seeds: list[int], name: str) -> TrialRequest:
        b = self.bench.spec.budget
        layout = self.data.layout()
        req = TrialRequest(
            workspace=str(workspace), harness=str(self.bench.harness_dir), train_data=str(self.data.train_dir),
            predict_data=str(self.data.predict_dir), work_dir=str(self.run_dir / "trials" / name),
            seeds=tuple(seeds), keys=tuple(trial_key(self.secret, s) for s in seeds),
            sketch_key=derived_key(self.secret, "sketch"), config=self._trial_config(),
            predict={"batch": 500, "check_rows": layout.check_rows.tolist(), "check_batch": 37},
            budget=self._budget(), train_seconds=b.train_seconds, predict_seconds=b.predict_seconds,
            grace_seconds=b.grace_seconds, memory_bytes=b.memory_mb * 1024**2, max_processes=b.max_processes,
            isolation=self.isolation, packages=("numpy", "torch", *self.bench.spec.sandbox.packages),
            protected=(str(self.data.labels_dir),))
        # One GPU, bound into the sandbox and visible there as cuda:0 (the slot mechanism's pinning).
        return pin_request(req, self.device) if self.device.startswith("cuda") else req

    def smoke(self, files: dict[str, str]) -> "SmokeResult":
        """Train a code version on a slice of the train split and predict a few inputs, in the
        sandbox, on one seed of its own (AIDE's debug step). It trains for the run's own epoch budget
        (code that derives a schedule from `epochs` must see the real value: T_max = epochs - 1 is 0
        at one epoch), which on the slice is a few steps: a traceback, a NaN, a timeout or
        malformed predictions show in seconds, before any gate trial is spent. Recorded nowhere:
        the agent hands the error back to the model for a repair."""
        b = self.bench.spec.budget
        smoke_dir = self.data.public_dir / "smoke"
        n_train = int(np.load(smoke_dir / "train" / "train_y.npy", mmap_mode="r").shape[0])
        n_pred = int(np.load(smoke_dir / "predict" / "inputs.npy", mmap_mode="r").shape[0])
        full = self._budget()
        budget = Budget(train_examples=int(b.epochs * n_train * (1 + self.bench.spec.integrity.budget_tolerance)) + 1,
                        other_examples=n_train + 64, predict_examples=2 * n_pred + 64,
                        checkpoint_bytes=full.checkpoint_bytes, prediction_bytes=full.prediction_bytes)
        seed = draw_seeds(self.secret, "smoke", 1)[0]
        ws = self.workspace(files, "smoke-" + files_hash(files)[:12])
        req = TrialRequest(
            workspace=str(ws), harness=str(self.bench.harness_dir), train_data=str(smoke_dir / "train"),
            predict_data=str(smoke_dir / "predict"), work_dir=str(self.run_dir / "trials" / ("smoke-" + ws.name)),
            seeds=(seed,), keys=(trial_key(self.secret, seed),), sketch_key=derived_key(self.secret, "sketch"),
            config=self._trial_config(), predict={"batch": 32, "check_rows": [0, 1], "check_batch": 1},
            budget=budget, train_seconds=b.train_seconds, predict_seconds=b.predict_seconds,
            grace_seconds=b.grace_seconds, memory_bytes=b.memory_mb * 1024**2, max_processes=b.max_processes,
            isolation=self.isolation, packages=("numpy", "torch", *self.bench.spec.sandbox.packages),
            protected=(str(self.data.labels_dir),))
        if self.device.startswith("cuda"):
            req = pin_request(req, self.device)
        out = self.executor.map(lambda r: run_trials(r), [req])[0][0]
        if out.status == TrialStatus.OK:
            try:
                parse_predictions(out.logits, rows=n_pred, classes=self.bench.spec.data.num_classes)
            except PredictionError as exc:
                return SmokeResult(ok=False, status=exc.kind, error=f"predictions rejected: {exc}")
            return SmokeResult(ok=True, status="ok", error="")
        last = [line for line in out.log_tail.splitlines() if line.strip() and not line.startswith("== ")]
        return SmokeResult(ok=False, status=out.status.value,
                           error=f"{out.detail}\n" + "\n".join(last[-15:]))

    def _record_from_row(self, row: dict, cached: bool) -> TrialRecord:
        return TrialRecord(seed=row["seed"], role=row["role"], code_hash=row["code_hash"], status=row["status"],
                           detail=row["detail"], val_metric=row["val_metric"], test_metric=row["test_metric"],
                           val_log_loss=row["val_log_loss"], test_log_loss=row["test_log_loss"],
                           summary=json.loads(row["summary_json"]), cached=cached,
                           perturbed_metric=row.get("perturbed_metric"), test_correct=row.get("test_correct"),
                           perturbed_correct=row.get("perturbed_correct"))

    def _score(self, out: TrialOutput) -> tuple[str, str, dict, np.ndarray | None]:
        """Score predictions on the trusted side: (status, detail, per-split scores, the test logits)."""
        if out.status != TrialStatus.OK:
            return out.status.value, out.detail, {}, None
        classes = self.bench.spec.data.num_classes
        layout = self.data.layout()
        rows = len(layout.val_rows) + len(layout.test_rows) + len(layout.perturbed_rows)
        try:
            logits = parse_predictions(out.logits, rows=rows, classes=classes)
            check = parse_predictions(out.check, rows=len(layout.check_rows), classes=classes)
        except PredictionError as exc:
            return exc.kind, f"predictions rejected: {exc}", {}, None
        if not self.bench.spec.integrity.transductive:
            problem = transductive(logits, check, layout.check_rows)
            if problem:
                return TrialStatus.TRANSDUCTIVE.value, problem, {}, None
        try:
            scores = {"val": score_logits(logits[layout.val_rows], self.data.labels("val"), metric=self.metric),
                      "test": score_logits(logits[layout.test_rows], self.data.labels("test"), metric=self.metric)}
            if len(layout.perturbed_rows):
                scores["perturbed"] = score_logits(logits[layout.perturbed_rows], self.data.labels("test"),
                                                   metric=self.metric)
        except PredictionError as exc:
            return exc.kind, f"predictions rejected: {exc}", {}, None
        return "ok", "", scores, logits[layout.test_rows]

    def _batches(self, seeds: list[int]) -> list[list[int]]:
        """Seeds of one code version split over the executor's slots (one sandbox pair per batch).
        Each seed runs in a child of its own, so results do not depend on the split."""
        n = max(1, min(self.executor.slots, len(seeds)))
        return [seeds[i::n] for i in range(n) if seeds[i::n]]

    def run_trials(self, files: dict[str, str], seeds: list[int], *, role: str,
                   proposal_idx: int | None = None) -> list[TrialRecord]:
        """Train+predict+score one code version on seeds, reusing every finished trial of the same key."""
        code_hash = files_hash(files)
        keys = {seed: self._cache_key(code_hash, seed) for seed in seeds}
        results: dict[int, TrialRecord] = {}
        todo = []
        for seed in seeds:
            row = self.ledger.trial(self.run_id, keys[seed])
            if row is not None:
                results[seed] = self._record_from_row(row, cached=True)
                self.events.trial_finished(role, seed, row["status"], row["test_metric"], cached=True)
            else:
                todo.append(seed)
        if todo:
            ws = self.workspace(files, code_hash[:16])

            def announce(req: TrialRequest) -> None:
                for seed in req.seeds:
                    self.events.trial_started(role, seed)

            def one(req: TrialRequest) -> list[TrialOutput]:
                announce(req)
                fault("train", delay=2.0)  # test hook: dies while the sandbox is training
                return run_trials(req)

            one.trial_fn = run_trials  # type: ignore[attr-defined]  # what remote executors (Ray) ship
            one.announce = announce  # type: ignore[attr-defined]

            requests = [self._request(ws, batch, f"{code_hash[:12]}-{keys[batch[0]][:8]}")
                        for batch in self._batches(todo)]
            outputs = [out for batch in self.executor.map(one, requests) for out in batch]
            for out in outputs:
                seed = out.seed
                status, detail, scores, test_logits = self._score(out)
                fault("score")  # test hook: trial done and scored, not yet in the ledger
                summary = out.summary() | {"fingerprints": self.data.fingerprints, "counts": self.data.counts,
                                           "device": out.device or self.device,
                                           "secondary": secondary_from_logits(test_logits, self.data.labels("test"),
                                                                              self.bench.spec.data.num_classes)
                                           if scores else {}}
                pert = scores.get("perturbed")
                row = dict(run_id=self.run_id, cache_key=keys[seed], code_hash=code_hash, role=role,
                           proposal_idx=proposal_idx, seed=seed, status=status, detail=detail,
                           val_metric=scores["val"].metric if scores else None,
                           test_metric=scores["test"].metric if scores else None,
                           val_log_loss=scores["val"].log_loss if scores else None,
                           test_log_loss=scores["test"].log_loss if scores else None,
                           val_correct=scores["val"].correct.tobytes() if scores else None,
                           test_correct=scores["test"].correct.tobytes() if scores else None,
                           perturbed_metric=pert.metric if pert else None,
                           perturbed_correct=pert.correct.tobytes() if pert else None,
                           summary_json=dumps(summary))
                self.ledger.put_trial(**row)
                results[seed] = self._record_from_row(row, cached=False)
                self.events.trial_finished(role, seed, status, row["test_metric"], cached=False)
        return [results[s] for s in seeds]

    # ------------------------------------------------------------------ proposals

    @property
    def incumbent(self) -> tuple[str, dict[str, str]]:
        sha = self.repo.accepted_tip
        return sha, self.repo.files_at(sha)

    def next_index(self) -> int:
        rows = self.ledger.proposals(self.run_id)
        return (max(r["idx"] for r in rows) + 1) if rows else 1

    def ensure_baseline(self, seeds: int | None = None) -> list[TrialRecord]:
        """The incumbent's trials on the first ``seeds`` gate seeds (default: the gate's first look),
        trained once and cached; a failure of the incumbent itself stops the run."""
        self.events.stage("training the incumbent on the gate seeds (cached after the first time)")
        _, files = self.incumbent
        return self._incumbent_trials(files, self.gate_seeds[:seeds or self.gate.stages[0]])

    def _incumbent_trials(self, files: dict[str, str], seeds: list[int]) -> list[TrialRecord]:
        trials = self.run_trials(files, seeds, role="incumbent")
        bad = [t for t in trials if not t.ok]
        if bad:
            raise RuntimeError(f"the incumbent itself failed on seed {bad[0].seed}: {bad[0].status}: {bad[0].detail}\n"
                               f"{bad[0].summary.get('log_tail', '')[-2000:]}")
        return trials

    def evaluate(self, idx: int, raw: str, parsed: Proposal | ProposalRejected, *, source: str,
                 prompt_hash: str | None = None) -> ProposalRecord:
        """Decide and record proposal ``idx`` (resumable: a finished one is returned from the ledger)."""
        existing = self.ledger.proposal(self.run_id, idx)
        if existing is not None and existing["state"] == "finished":
            return self.load_record(existing)
        started = time.monotonic()
        title = parsed.title if isinstance(parsed, Proposal) else f"invalid proposal #{idx}"
        hypothesis = parsed.hypothesis if isinstance(parsed, Proposal) else ""
        parent, incumbent_files = self.incumbent
        if existing is not None and existing["state"] == "decided" and existing["parent_commit"]:
            # Decided before a crash: finish against the parent it was decided on (the accepted
            # branch may already have moved to this very proposal).
            parent = existing["parent_commit"]
            incumbent_files = self.repo.files_at(parent)
        elif existing is not None and existing["parent_commit"] and existing["parent_commit"] != parent:
            raise LedgerError(f"proposal {idx} was started against {existing['parent_commit'][:10]} but the "
                              f"accepted tip is now {parent[:10]}: the ledger and git repo disagree")
        self.ledger.add_proposal(run_id=self.run_id, idx=idx, source=source, title=title, hypothesis=hypothesis,
                                 raw=raw, edits_json=dumps(parsed.to_dict()) if isinstance(parsed, Proposal) else None,
                                 parent_commit=parent, prompt_hash=prompt_hash)
        self.events.proposal_started(idx, title)
        record = ProposalRecord(idx=idx, title=title, hypothesis=hypothesis, decision="rejected", reason="",
                                detail="")
        new_files: dict[str, str] | None = None
        if existing is not None and existing["state"] == "decided":
            record = self.load_record(existing)
            if existing["edits_json"] and existing["reason"] not in NOT_APPLIED:
                try:
                    new_files = apply_proposal(incumbent_files, parsed, self.bench.spec.editable)  # type: ignore[arg-type]
                except Exception as exc:  # recorded already; only its commit is missing
                    _reraise_storage(exc)
                    new_files = None
        else:
            if isinstance(parsed, ProposalRejected):
                record.reason, record.detail = parsed.reason, str(parsed)
            else:
                try:
                    new_files = apply_proposal(incumbent_files, parsed, self.bench.spec.editable)
                    record.diff = unified_diff(incumbent_files, new_files)
                    check_change(incumbent_files, new_files)  # static tamper check: ends `tampered`
                    if parsed.precheck is not None:  # the agent's checks found it cannot run: never trained
                        raise parsed.precheck
                    self._gate(record, incumbent_files, new_files)
                except ProposalRejected as exc:
                    record.reason, record.detail = exc.reason, str(exc)
                except Exception as exc:
                    # Nothing one proposal does may stop the run: whatever broke while trialling or
                    # scoring it ends this proposal as a crash, with the cause, and the run goes on.
                    _reraise_storage(exc)
                    record.decision, record.gate = "rejected", None
                    record.reason, record.detail = "crash", _internal_error("judging this proposal", exc)
            record.wall_seconds = time.monotonic() - started
            self.ledger.update_proposal(
                self.run_id, idx, state="decided", decision=record.decision, reason=record.reason,
                detail=record.detail, diff=record.diff, change_hash=files_hash(new_files) if new_files else None,
                gate_json=dumps(record.gate.to_dict()) if record.gate else None, decided_at=time.time(),
                wall_seconds=record.wall_seconds, integrity_json=dumps(record.integrity) if record.integrity else None)
        try:
            self._finish_proposal(record, parent, new_files)
        except Exception as exc:
            # Recording or reporting failed: finish the proposal with a minimal report that says why,
            # so that a resume does not meet the same failure again.
            _reraise_storage(exc)
            self._finish_minimal(record, parent, exc)
        try:
            self.events.proposal_decided(record)
        except Exception:  # the live view only; the records are written
            pass
        return record

    def _gate(self, record: ProposalRecord, incumbent_files: dict[str, str], new_files: dict[str, str]) -> None:
        """The sequential gate (autoresearch.gate): at each look, the first stages[i] gate seeds of both
        arms (trials of earlier looks and the incumbent's are cached), failure and integrity checks,
        then one decide_stage; the first look that accepts or rejects ends it."""
        for stage, count in enumerate(self.gate.stages):
            seeds = self.gate_seeds[:count]
            record.incumbent_trials = self._incumbent_trials(incumbent_files, seeds)
            cand = self.run_trials(new_files, seeds, role="candidate", proposal_idx=record.idx)
            record.candidate_trials = cand
            if self._failed(record, cand):
                return
            self._check_matched(cand + record.incumbent_trials)
            if self._integrity_fails(record, cand, record.incumbent_trials):
                return
            result = decide_stage(self.gate, stage, [t.correct("test") for t in cand],
                                  [t.correct("test") for t in record.incumbent_trials], self.metric, seeds=seeds)
            record.gate = result
            if result.action != "continue":
                break
        record.decision = "accepted" if record.gate.accepted else "rejected"
        record.reason, record.detail = record.gate.reason or "not_better", record.gate.detail

    def _integrity_fails(self, record: ProposalRecord, cand: list[TrialRecord], inc: list[TrialRecord]) -> bool:
        """The checks that no statistic can make: one fixed draw on every seed (``seed_ignored``),
        an answer key (``memorised``). Their figures go into the record either way."""
        problem = seed_ignored([t.summary.get("train_report") or {} for t in cand])
        if problem:
            record.reason, record.detail = "seed_ignored", problem
            return True
        if all(t.perturbed_correct for t in cand + inc):
            pairs = [(t.correct("test"), t.correct("perturbed")) for t in cand]
            base = {t.seed: t for t in inc}
            inc_pairs = [(base[t.seed].correct("test"), base[t.seed].correct("perturbed")) for t in cand]
            check = memorisation(pairs, inc_pairs, margin=self.bench.spec.integrity.memorised_margin)
            if check is not None:
                record.integrity["memorisation"] = {"excess_drop": check.excess_drop, "z": check.z,
                                                    "flagged": check.flagged, "detail": check.detail}
                if check.flagged:
                    record.reason, record.detail = "memorised", check.detail
                    return True
        return False

    def _failed(self, record: ProposalRecord, trials: list[TrialRecord]) -> bool:
        bad = next((t for t in trials if not t.ok), None)
        if bad is None:
            return False
        record.reason = bad.status
        record.detail = f"seed {bad.seed}: {bad.detail}"
        return True

    def _check_matched(self, trials: list[TrialRecord]) -> None:
        for t in trials:
            if t.summary.get("fingerprints") != self.data.fingerprints or t.summary.get("counts") != self.data.counts:
                raise _DataMismatchRejection(f"trial on seed {t.seed} was scored on other data "
                                             f"({t.summary.get('counts')} vs {self.data.counts})")

    def _finish_proposal(self, record: ProposalRecord, parent: str, new_files: dict[str, str] | None) -> None:
        from autoresearch.reports import write_proposal_report

        if not record.diff and new_files is not None:
            record.diff = unified_diff(self.repo.files_at(parent), new_files)
        message = commit_message(record, self)
        sha = self.repo.commit_proposal(record.idx, parent,
                                        new_files if record.reason not in NOT_APPLIED else None, message)
        record.commit = sha
        fault("commit")  # test hook: commit and ref written, ledger not yet told
        if record.decision == "accepted":
            self.repo.advance_accepted(sha)
        if not record.candidate_trials and record.reason not in NOT_APPLIED:
            record.candidate_trials, record.incumbent_trials = self._trials_for(record)
        path = write_proposal_report(self, record)
        record.report_path = str(path)
        fault("report")  # test hook: report written, proposal not yet marked finished
        self.ledger.update_proposal(self.run_id, record.idx, state="finished", commit_sha=sha,
                                    report_path=str(path.relative_to(self.run_dir)))

    def _finish_minimal(self, record: ProposalRecord, parent: str, exc: BaseException) -> None:
        """A proposal whose recording or reporting failed ends as a crash: it leaves the accepted
        branch if it had joined it, and gets a plain report with the facts and the error."""
        from autoresearch.reports import report_name

        note = f"decided {record.decision} ({record.reason}), then " + _internal_error("recording it", exc)
        if record.commit and self.repo.ref_sha("refs/heads/accepted") == record.commit:
            self.repo.retract_accepted(record.commit, parent)
        record.decision, record.reason = "rejected", "crash"
        record.detail = (record.detail + "; " if record.detail else "") + note
        path = self.run_dir / "reports" / report_name(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Proposal {record.idx:03d}\n\n**Decision: REJECTED** (reason: `crash`)\n\n"
                        f"The full report could not be written: {note}\n")
        record.report_path = str(path)
        self.ledger.update_proposal(self.run_id, record.idx, state="finished", commit_sha=record.commit,
                                    report_path=str(path.relative_to(self.run_dir)), decision=record.decision,
                                    reason=record.reason, detail=record.detail)

    def _trials_for(self, record: ProposalRecord) -> tuple[list[TrialRecord], list[TrialRecord]]:
        rows = self.ledger.trials(self.run_id)
        cand = [self._record_from_row(r, True) for r in rows if r["proposal_idx"] == record.idx]
        cand.sort(key=lambda t: t.seed)
        inc_hash = files_hash(self.repo.files_at(self.ledger.proposal(self.run_id, record.idx)["parent_commit"]))
        used = {t.seed for t in cand}  # the looks the gate took: its incumbent trials on those seeds
        inc = {r["seed"]: self._record_from_row(r, True) for r in rows
               if r["code_hash"] == inc_hash and r["seed"] in used and r["role"] == "incumbent"}
        return cand, [inc[s] for s in sorted(inc)]

    def load_record(self, row: dict) -> ProposalRecord:
        gate = None
        if row["gate_json"]:
            try:
                gate = StageDecision.from_dict(json.loads(row["gate_json"]))
            except (TypeError, ValueError, KeyError):
                gate = None  # judged by gate v1 (an older run, shown read-only): its detail says what it found
        rec = ProposalRecord(idx=row["idx"], title=row["title"], hypothesis=row["hypothesis"],
                             decision=row["decision"] or "rejected", reason=row["reason"] or "", detail=row["detail"] or "",
                             diff=row["diff"] or "", gate=gate, commit=row["commit_sha"],
                             report_path=row["report_path"], wall_seconds=row["wall_seconds"] or 0.0,
                             integrity=json.loads(row["integrity_json"]) if row.get("integrity_json") else {})
        if rec.reason not in NOT_APPLIED:
            rec.candidate_trials, rec.incumbent_trials = self._trials_for(rec)
        return rec

    def records(self) -> list[ProposalRecord]:
        return [self.load_record(r) for r in self.ledger.proposals(self.run_id) if r["state"] != "pending"]

    # ------------------------------------------------------------------ finishing

    def verify_chain(self, final_files: dict[str, str] | None = None,
                     baseline_files: dict[str, str] | None = None) -> dict:
        """Re-run the final incumbent against the original baseline on fresh seeds: the headline."""
        baseline_files = baseline_files if baseline_files is not None else self.repo.files_at(self.repo.baseline)
        final_files = final_files if final_files is not None else self.incumbent[1]
        chain = self.repo.accepted_chain()
        if files_hash(final_files) == files_hash(baseline_files):
            return {"accepted": len(chain), "verified": False, "detail": "no accepted change: nothing to verify"}
        self.events.stage(f"verifying the accepted chain on fresh seeds {self.verify_seeds}")
        base = self.run_trials(baseline_files, self.verify_seeds, role="verify-baseline")
        final = self.run_trials(final_files, self.verify_seeds, role="verify-chain")
        bad = next((t for t in base + final if not t.ok), None)
        if bad is not None:
            return {"accepted": len(chain), "verified": False,
                    "detail": f"verification trial failed on seed {bad.seed}: {bad.status}: {bad.detail}"}
        # One look at all the fresh seeds, the run's alpha and min_delta, m = 1: one claim is checked.
        cfg = GateConfig.fixed(len(self.verify_seeds), alpha=self.gate.alpha, proposals=1, min_delta=self.gate.min_delta)
        result = decide_stage(cfg, 0, [t.correct("test") for t in final], [t.correct("test") for t in base],
                              self.metric, seeds=self.verify_seeds)
        return {"accepted": len(chain), "verified": True, "holds": result.accepted, "seeds": self.verify_seeds,
                "baseline_mean": float(np.mean([t.test_metric for t in base])),
                "final_mean": float(np.mean([t.test_metric for t in final])), "gate": result.to_dict(),
                "detail": result.detail}

    def finish(self) -> dict:
        from autoresearch.reports import write_summary

        headline = self.verify_chain() if self.config.verify else {"verified": False, "detail": "verification skipped"}
        self.ledger.update_run(self.run_id, headline_json=dumps(headline), status="finished", finished_at=time.time())
        write_summary(self, headline)
        return headline


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    status: str  # a trial status: ok, crash, timeout, nonfinite, over_budget, ...
    error: str  # what went wrong, with the last lines of the log (empty when ok)


class _DataMismatchRejection(ProposalRejected):
    reason = "data_mismatch"


# Reasons a proposal ends with before any code of it could be applied (no commit tree of its own).
NOT_APPLIED = ("invalid_proposal", "not_editable", "apply_failed")
STORAGE_ERRNOS = (28, 30, 13, 122)  # ENOSPC, EROFS, EACCES, EDQUOT: the host's problem, not the proposal's


def _reraise_storage(exc: BaseException) -> None:
    """Failures of the host, not of the proposal, stop the run (resume after fixing them): storage
    and the ledger, a sandbox that cannot be set up (unreadable files, a package missing from the
    environment). Nothing else does."""
    if isinstance(exc, (LedgerError, SandboxUnreadable, PackageNotInstalled)) or \
            (isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS):
        raise exc


def _internal_error(doing: str, exc: BaseException) -> str:
    import traceback

    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" at {Path(where[0].filename).name}:{where[0].lineno}" if where else ""
    return f"internal error while {doing} ({type(exc).__name__}: {str(exc)[:300]}{at}); the run went on"


def unified_diff(old: dict[str, str], new: dict[str, str]) -> str:
    import difflib

    chunks = []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        lines = difflib.unified_diff((a or "").splitlines(keepends=True), (b or "").splitlines(keepends=True),
                                     fromfile=f"a/{path}" if a is not None else "/dev/null",
                                     tofile=f"b/{path}" if b is not None else "/dev/null")
        text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
        chunks.append(f"diff --git a/{path} b/{path}\n" + text)
    return "".join(chunks)


def commit_message(record: ProposalRecord, engine: RunEngine) -> str:
    """Model text is escaped (one-line subject, hypothesis indented): `git am` of a replay must not
    read it as a mail, a patch or one of the trailers below."""
    from autoresearch.escaping import commit_body, commit_subject, one_line

    versions = engine.env["versions"]
    seeds = ",".join(str(t.seed) for t in record.candidate_trials) or "-"
    body = commit_body(record.hypothesis)
    return (f"{commit_subject(record.title)}\n\n" + (f"{body}\n\n" if body else "") +
            f"Autoresearch-Proposal: {record.idx:03d}\n"
            f"Autoresearch-Decision: {record.decision}\n"
            f"Autoresearch-Reason: {record.reason}\n"
            f"Autoresearch-Detail: {one_line(record.detail, 300) or '-'}\n"
            f"Autoresearch-Seeds: {seeds}\n"
            f"Autoresearch-Data: {dumps(engine.data.fingerprints)}\n"
            f"Autoresearch-Versions: python={versions.get('python')} torch={versions.get('torch')} "
            f"numpy={versions.get('numpy')}\n"
            f"Autoresearch-Run: {engine.run_id}\n")


def gate_config(config: RunConfig, bench: Benchmark) -> GateConfig:
    """The run's gate: the spec's design, with the run's alpha, min_delta and stages (or a fixed
    number of seeds: one look) where given; m is the run's proposal budget."""
    spec = bench.spec.gate
    stages = (config.seeds,) if config.seeds else tuple(config.stages or spec.stages)
    # One futility level per look but the last: the spec's, cut or repeated to fit other stages.
    futility = tuple((list(spec.futility) + [spec.futility[-1] if spec.futility else 0.05] * len(stages))
                     [:len(stages) - 1])
    try:
        return GateConfig(alpha=config.alpha or spec.alpha, proposals=config.proposals, stages=stages,
                          futility=futility, spending=spec.spending,
                          min_delta=spec.min_delta if config.min_delta is None else config.min_delta)
    except ValueError as exc:
        raise BenchmarkError(f"invalid gate design: {exc}") from None


def read_proposal_lines(text: str) -> list[str]:
    """Non-blank lines of a proposals file, each one proposal object (JSON Lines)."""
    return [line for line in text.splitlines() if line.strip()]


def run_proposal_lines(engine: RunEngine, lines: list[str]) -> list[ProposalRecord]:
    """Evaluate each line in order; a malformed line is a rejected proposal and the run goes on."""
    from autoresearch.agent.proposal import InvalidProposal, parse_proposal_json

    engine.ensure_baseline()
    records = []
    for idx, line in enumerate(lines, start=1):
        try:
            parsed: Proposal | ProposalRejected = parse_proposal_json(line)
        except InvalidProposal as exc:
            parsed = exc
        records.append(engine.evaluate(idx, line, parsed, source="file"))
    return records
