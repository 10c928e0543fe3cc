"""Trials of code versions: requests for the executor, the trusted scoring of what comes back,
and the cache. A trial is keyed by everything that decides its result (code, harness, data,
seed, config, torch, isolation); a key found in the ledger is never trained again, which is what
makes a killed run resume without repeating finished work.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoresearch.benchmark import Benchmark, PreparedData
from autoresearch.faults import fault
from autoresearch.integrity import transductive
from autoresearch.ledger import Ledger, dumps
from autoresearch.outcomes import Events, TrialRecord, files_hash
from autoresearch.sandbox.executors import Executor, pin_request
from autoresearch.sandbox.trial import Budget, TrialOutput, TrialRequest, TrialStatus
from autoresearch.scoring import Metric, PredictionError, parse_predictions, score_logits
from autoresearch.secondary import secondary_from_logits
from autoresearch.seeding import derived_key, draw_seeds, trial_key


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    status: str  # a trial status: ok, crash, timeout, nonfinite, over_budget, ...
    error: str  # what went wrong, with the last lines of the log (empty when ok)


_WORKSPACES = threading.Lock()


def _holds(path: Path, files: dict[str, str]) -> bool:
    """Whether the folder holds exactly these files (and nothing else)."""
    try:
        found = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        return found == set(files) and all((path / rel).read_text() == text for rel, text in files.items())
    except (OSError, UnicodeDecodeError):
        return False


def materialise(run_dir: Path, files: dict[str, str], name: str) -> Path:
    """Write a code version into run_dir/work/name, the folder its sandboxes mount read-only.

    Names are content-addressed, and with pipelining two threads may ask for the same code version
    while a trial of it is running: a folder that already holds exactly these files is reused, never
    rewritten under a running trial (rewritten only when it differs, e.g. after a kill mid-write)."""
    path = run_dir / "work" / name
    with _WORKSPACES:
        if path.is_dir() and _holds(path, files):
            return path
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


def record_from_row(row: dict, cached: bool) -> TrialRecord:
    return TrialRecord(seed=row["seed"], role=row["role"], code_hash=row["code_hash"], status=row["status"],
                       detail=row["detail"], val_metric=row["val_metric"], test_metric=row["test_metric"],
                       val_log_loss=row["val_log_loss"], test_log_loss=row["test_log_loss"],
                       summary=json.loads(row["summary_json"]), cached=cached,
                       perturbed_metric=row.get("perturbed_metric"), test_correct=row.get("test_correct"),
                       perturbed_correct=row.get("perturbed_correct"))


class TrialCache:
    """Runs, scores and records the trials of one run. ``executor`` and ``events`` may be replaced
    between calls (a resumed run gets the executor its session asks for)."""

    def __init__(self, *, run_dir: Path, run_id: str, bench: Benchmark, data: PreparedData, ledger: Ledger,
                 secret: str, device: str, isolation: str, torch_version: str | None, executor: Executor,
                 events: Events):
        self.run_dir, self.run_id, self.bench, self.data, self.ledger = run_dir, run_id, bench, data, ledger
        self.secret, self.device, self.isolation, self.torch_version = secret, device, isolation, torch_version
        self.executor, self.events = executor, events
        self.metric = Metric(bench.spec.metric.name, bench.spec.metric.direction)
        self._claims = threading.Lock()  # guards _running: cache keys being trained now, by any thread
        self._running: dict[str, threading.Event] = {}
        # What sandboxes of this session cost: (fixed cost of one phase sandbox from its orders on,
        # seconds per seed), one pair per request trained; the basis of ahead_pays.
        self._costs: list[tuple[float, float]] = []

    # ------------------------------------------------------------------ training ahead

    # Seeds of a later look are trained with this look's when they cost at most this share of the
    # sandbox start they save, as this session measures it from the orders on: a cold start on
    # digits-mlp is ~3.5 s against ~0.3 s a seed, one started ahead by the slot (warm) ~0.2 s,
    # so with warm sandboxes next to nothing is trained ahead; a CIFAR seed on a GPU costs more
    # than a start, and is never trained ahead.
    AHEAD_SHARE = 0.5

    def ahead_pays(self, extra: int) -> bool:
        """Whether training ``extra`` more seeds in a sandbox that starts anyway costs less than
        AHEAD_SHARE of starting another one later, from this session's own measurements (the
        median of its last requests). Nothing measured yet: no. It decides which trials exist
        early, never what a decision uses: a look decides on its own seeds only."""
        recent = self._costs[-8:]
        if extra <= 0 or not recent:
            return False
        start = sorted(c[0] for c in recent)[len(recent) // 2]
        per_seed = sorted(c[1] for c in recent)[len(recent) // 2]
        return extra * per_seed <= self.AHEAD_SHARE * start

    def _note_costs(self, outputs: list[TrialOutput]) -> None:
        ran = [o for o in outputs if o.train.run > 0]
        if not ran:
            return
        start = max(0.0, max(o.train.sandbox for o in ran) - sum(o.train.run for o in ran))
        per_seed = sum(o.train.run + o.predict.run for o in ran) / len(ran)
        with self._claims:
            self._costs.append((start, per_seed))

    # ------------------------------------------------------------------ requests

    def trial_config(self) -> dict:
        b = self.bench.spec.budget
        return {"epochs": b.epochs, "batch_size": b.batch_size, "threads": b.threads,
                "num_classes": self.bench.spec.data.num_classes, "device": self.device}

    def budget(self) -> Budget:
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
                      prediction_bytes=b.max_prediction_mb * 1024**2,
                      train_steps=int(b.gradient_steps(n_train) * (1 + rules.budget_tolerance)) + 1)

    def cache_key(self, code_hash: str, seed: int) -> str:
        payload = {"code": code_hash, "harness": self.bench.harness_hash(), "data": self.data.fingerprints,
                   "counts": self.data.counts, "predict": self.data.predict_fingerprint, "seed": seed,
                   "config": self.trial_config(), "torch": self.torch_version, "isolation": self.isolation}
        return hashlib.sha256(dumps(payload).encode()).hexdigest()

    def _request(self, workspace: Path, seeds: list[int], name: str, *, train_data: Path, predict_data: Path,
                 config: dict, predict: dict, budget: Budget, keep_warm: bool = False) -> TrialRequest:
        b = self.bench.spec.budget
        req = TrialRequest(
            workspace=str(workspace), harness=str(self.bench.harness_dir), train_data=str(train_data),
            predict_data=str(predict_data), work_dir=str(self.run_dir / "trials" / name),
            seeds=tuple(seeds), keys=tuple(trial_key(self.secret, s) for s in seeds),
            sketch_key=derived_key(self.secret, "sketch"), config=config, predict=predict,
            budget=budget, train_seconds=b.train_seconds, predict_seconds=b.predict_seconds,
            grace_seconds=b.grace_seconds, memory_bytes=b.memory_mb * 1024**2, max_processes=b.max_processes,
            isolation=self.isolation, packages=("numpy", "torch", *self.bench.spec.sandbox.packages),
            protected=(str(self.data.labels_dir),), keep_warm=keep_warm)
        # One GPU, bound into the sandbox and visible there as cuda:0 (the slot mechanism's pinning).
        return pin_request(req, self.device) if self.device.startswith("cuda") else req

    def request(self, workspace: Path, seeds: list[int], name: str) -> TrialRequest:
        layout = self.data.layout()
        return self._request(workspace, seeds, name, train_data=self.data.train_dir,
                             predict_data=self.data.predict_dir, config=self.trial_config(),
                             predict={"batch": 500, "check_rows": layout.check_rows.tolist(), "check_batch": 37},
                             budget=self.budget(), keep_warm=True)

    def _batches(self, seeds: list[int]) -> list[list[int]]:
        """Seeds of one code version split over the executor's slots (one sandbox pair per batch).
        Each seed runs in a child of its own, so results do not depend on the split."""
        n = max(1, min(self.executor.slots, len(seeds)))
        return [seeds[i::n] for i in range(n) if seeds[i::n]]

    # ------------------------------------------------------------------ smoke

    def smoke(self, files: dict[str, str]) -> SmokeResult:
        """Train a code version on a slice of the train split and predict a few inputs, in the
        sandbox, on one seed of its own (AIDE's debug step). It trains for the run's own epoch budget
        (code that derives a schedule from `epochs` must see the real value: T_max = epochs - 1 is 0
        at one epoch), which on the slice is a few steps: a traceback, a NaN, a timeout or
        malformed predictions show in seconds, before any gate trial is spent. Recorded nowhere:
        the agent hands the error back to the model for a repair."""
        smoke_dir = self.data.public_dir / "smoke"
        n_train = int(np.load(smoke_dir / "train" / "train_y.npy", mmap_mode="r").shape[0])
        n_pred = int(np.load(smoke_dir / "predict" / "inputs.npy", mmap_mode="r").shape[0])
        full = self.budget()
        epochs = self.bench.spec.budget.epochs
        tolerance = self.bench.spec.integrity.budget_tolerance
        budget = Budget(train_examples=int(epochs * n_train * (1 + tolerance)) + 1,
                        other_examples=n_train + 64, predict_examples=2 * n_pred + 64,
                        checkpoint_bytes=full.checkpoint_bytes, prediction_bytes=full.prediction_bytes,
                        train_steps=int(self.bench.spec.budget.gradient_steps(n_train) * (1 + tolerance)) + 1)
        seed = draw_seeds(self.secret, "smoke", 1)[0]
        ws = materialise(self.run_dir, files, "smoke-" + files_hash(files)[:12])
        req = self._request(ws, [seed], "smoke-" + ws.name, train_data=smoke_dir / "train",
                            predict_data=smoke_dir / "predict", config=self.trial_config(),
                            predict={"batch": 32, "check_rows": [0, 1], "check_batch": 1}, budget=budget)
        out = self.executor.map([req])[0][0]
        if out.status == TrialStatus.OK:
            try:
                parse_predictions(out.logits, rows=n_pred, classes=self.bench.spec.data.num_classes)
            except PredictionError as exc:
                return SmokeResult(ok=False, status=exc.kind, error=f"predictions rejected: {exc}")
            return SmokeResult(ok=True, status="ok", error="")
        last = [line for line in out.log_tail.splitlines() if line.strip() and not line.startswith("== ")]
        return SmokeResult(ok=False, status=out.status.value,
                           error=f"{out.detail}\n" + "\n".join(last[-15:]))

    # ------------------------------------------------------------------ scoring and the cache

    def score(self, out: TrialOutput) -> tuple[str, str, dict, np.ndarray | None]:
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

    def run(self, files: dict[str, str], seeds: list[int], *, role: str,
            proposal_idx: int | None = None, ahead: list[list[int]] = ()) -> list[TrialRecord]:
        """Train+predict+score one code version on seeds, reusing every finished trial of the same key.

        Several threads may ask for the same trial at once (the pipeline's judge and a speculative
        gate of the next proposal both need the incumbent's seeds): a key is trained by the first
        thread that claims it; the others wait and read its row. One trial per key, ever.

        ``ahead``: the seeds later looks may want, look by look. When a sandbox has to start for
        ``seeds`` anyway, the untrained seeds of as many of those looks as ahead_pays are trained in
        it too (cached, not returned): a look that needs them finds them in the ledger instead of
        starting sandboxes of its own."""
        code_hash = files_hash(files)
        keys = {seed: self.cache_key(code_hash, seed) for seed in seeds}
        results: dict[int, TrialRecord] = {}
        while len(results) < len(keys):
            todo, waits = [], []
            with self._claims:
                for seed in keys:
                    if seed in results:
                        continue
                    row = self.ledger.trial(self.run_id, keys[seed])
                    if row is not None:
                        results[seed] = record_from_row(row, cached=True)
                        self.events.trial_finished(role, seed, row["status"], row["test_metric"], cached=True)
                    elif keys[seed] in self._running:
                        waits.append(self._running[keys[seed]])
                    else:
                        self._running[keys[seed]] = threading.Event()
                        todo.append(seed)
            extra = self._claim_ahead(code_hash, list(ahead), skip=keys) if todo and ahead else {}
            if todo:
                try:
                    trained: dict[int, TrialRecord] = {}
                    self._train(files, code_hash, keys | extra, todo + list(extra), role, proposal_idx, trained)
                    results.update({seed: trained[seed] for seed in todo})
                finally:
                    with self._claims:
                        for seed in todo + list(extra):
                            self._running.pop((keys | extra)[seed]).set()
            for done in waits:  # then read their rows (or, if that thread failed, claim them)
                done.wait()
        return [results[s] for s in seeds]

    def _claim_ahead(self, code_hash: str, looks: list[list[int]], skip) -> dict[int, str]:
        """Claims the untrained seeds of the first later looks whose training together pays
        (ahead_pays), whole looks at a time; their keys by seed (nothing claimed: {})."""
        claimed: dict[int, str] = {}
        with self._claims:
            for look in looks:
                keys = {s: self.cache_key(code_hash, s) for s in look if s not in skip and s not in claimed}
                free = {s: k for s, k in keys.items()
                        if k not in self._running and self.ledger.trial(self.run_id, k) is None}
                if not self.ahead_pays(len(claimed) + len(free)):
                    break
                claimed.update(free)
            for key in claimed.values():
                self._running[key] = threading.Event()
        return claimed

    def _train(self, files: dict[str, str], code_hash: str, keys: dict[int, str], todo: list[int], role: str,
               proposal_idx: int | None, results: dict[int, TrialRecord]) -> None:
        ws = materialise(self.run_dir, files, code_hash[:16])

        def on_start(req: TrialRequest) -> None:
            for seed in req.seeds:
                self.events.trial_started(role, seed)
            fault("train", delay=2.0)  # test hook: dies while the sandbox is training

        requests = [self.request(ws, batch, f"{code_hash[:12]}-{keys[batch[0]][:8]}")
                    for batch in self._batches(todo)]
        batches = self.executor.map(requests, on_start)
        for batch in batches:
            self._note_costs(batch)
        outputs = [out for batch in batches for out in batch]
        for out in outputs:
            seed = out.seed
            status, detail, scores, test_logits = self.score(out)
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
            results[seed] = record_from_row(row, cached=False)
            self.events.trial_finished(role, seed, status, row["test_metric"], cached=False)
