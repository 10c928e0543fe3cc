"""A fake executor: canned trial outputs in place of sandboxed training, for the tests that check
the engine's logic (caching, the gate, recording, resuming, reports) rather than trials.

It plugs into the engine's executor protocol (``map(requests, on_start)``, ``slots``) and answers
each seed of a request with predictions the trusted scorer parses and scores as it would a real
trial's: the fake reads the run's predict layout and labels from the request (its ``protected``
labels folder; a test may, a sandbox never does) and writes one-hot logits that are right on a
chosen share of the examples. What a code version "does" is decided by ``behaviour(files)`` from
the workspace's files; the default, ``digits_behaviour``, knows the changes the tests propose to
the digits-mlp template (Adam: better; a tiny learning rate: worse; a comment: the same; a raise,
an endless loop, a NaN loss: crash, timeout, nonfinite).

Determinism: whether an example is right depends only on (seed, example, accuracy), never on the
code's text, so a change that does not change the behaviour gives identical results (as the real,
deterministic harness does), and a better behaviour is right wherever a worse one is.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from autoresearch.sandbox.trial import PhaseTiming, TrialOutput, TrialRequest, TrialStatus


@dataclass(frozen=True)
class Behaviour:
    """What every seed of one code version does."""

    accuracy: float = 0.85  # share of val and test examples predicted right
    status: TrialStatus = TrialStatus.OK
    detail: str = ""
    log_tail: str = ""
    seed_ignored: bool = False  # the same checkpoint on every seed (one fixed draw)


BASELINE = Behaviour()


def digits_behaviour(files: dict[str, str], req: TrialRequest) -> Behaviour:
    """The changes the tests propose to digits-mlp, as the real harness would judge them."""
    train, optim = files.get("train.py", ""), files.get("optim.py", "")
    if "raise RuntimeError('boom')" in train:
        tail = "Traceback (most recent call last):\n  File \"train.py\", line 20, in train\nRuntimeError: boom\n"
        return Behaviour(status=TrialStatus.CRASH, log_tail=tail,
                         detail="train failed (exit 1): RuntimeError: boom")
    if "while True:" in train:
        killed = req.train_seconds + 0.2
        return Behaviour(status=TrialStatus.TIMEOUT,
                         detail=f"train ran past its budget of {req.train_seconds:g}s (killed after {killed:.1f}s)")
    if "float('nan')" in train:
        return Behaviour(status=TrialStatus.NONFINITE, detail="train: the loss became NaN at step 1")
    if "torch.manual_seed(0)" in train:
        return Behaviour(seed_ignored=True)
    if "torch.optim.Adam" in optim:
        return Behaviour(accuracy=0.97)
    if "lr=1e-6" in optim or "lr=1e-7" in optim:
        return Behaviour(accuracy=0.10)
    if "momentum=0.9" in optim:
        return Behaviour(accuracy=0.93)
    return BASELINE


def is_smoke(req: TrialRequest) -> bool:
    """The agent's smoke run (trial_cache.TrialCache.smoke), not a gate trial."""
    return Path(req.work_dir).name.startswith("smoke-")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _read_files(workspace: str) -> dict[str, str]:
    root = Path(workspace)
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


class FakeExecutor:
    """``map`` answers every request at once, without a sandbox. ``requests`` keeps what it was
    asked (for tests that count trials); ``slots`` only changes how the engine batches seeds."""

    def __init__(self, behaviour: Callable[[dict[str, str], TrialRequest], Behaviour] = digits_behaviour,
                 slots: int = 1, delay: float = 0.0, smoke_delay: float | None = None,
                 sandbox_seconds: float = 0.0, seed_seconds: float = 0.01):
        self.behaviour = behaviour
        # The timings each output reports (nothing sleeps): a phase sandbox's wall time and one
        # seed's child, which the engine's training-ahead rule reads (TrialCache.ahead_pays).
        self.sandbox_seconds, self.seed_seconds = sandbox_seconds, seed_seconds
        self.slots = slots
        self.delay = delay  # seconds each request takes, as if it trained
        self.smoke_delay = delay if smoke_delay is None else smoke_delay  # ... each smoke run (the agent's check)
        self.requests: list[TrialRequest] = []

    def map(self, requests: list[TrialRequest], on_start=None) -> list[list[TrialOutput]]:
        out = []
        for req in requests:
            if on_start is not None:
                on_start(req)
            self.requests.append(req)
            out.append(self.run(req))
        return out

    @property
    def seeds_run(self) -> int:
        return sum(len(r.seeds) for r in self.requests)

    def run(self, req: TrialRequest) -> list[TrialOutput]:
        behaviour = self.behaviour(_read_files(req.workspace), req)
        delay = self.smoke_delay if is_smoke(req) else self.delay
        if delay:
            time.sleep(delay)
        return [self._one(req, seed, behaviour) for seed in req.seeds]

    def _one(self, req: TrialRequest, seed: int, b: Behaviour) -> TrialOutput:
        device = req.config.get("device", "cpu")
        if b.status != TrialStatus.OK:
            return TrialOutput(seed=seed, status=b.status, detail=b.detail, isolation=req.isolation,
                               log_tail=b.log_tail, device=device)
        logits = self._logits(req, seed, b.accuracy)
        check = logits[np.asarray(req.predict["check_rows"], dtype=np.int64)]
        ckpt = hashlib.sha256(f"{b}|{'fixed' if b.seed_ignored else seed}".encode()).hexdigest()
        n_train = req.budget.train_examples
        train_report = {"train_seconds": 0.01, "final_loss": 0.1, "device": device, "checkpoint_sha256": ckpt,
                        "compute": {"train_examples": n_train // 2, "other_examples": 0, "optimizer_steps": 10},
                        "sketch": {}, "determinism": {"deterministic_algorithms": True}}
        return TrialOutput(seed=seed, status=TrialStatus.OK, detail="", isolation=req.isolation,
                           train=PhaseTiming(run=self.seed_seconds, sandbox=self.sandbox_seconds),
                           predict=PhaseTiming(run=0.01), train_report=train_report,
                           predict_report={"predict_seconds": 0.01, "compute": {}}, logits=_npy(logits),
                           check=_npy(check), log_tail="", device=device)

    def _logits(self, req: TrialRequest, seed: int, accuracy: float) -> np.ndarray:
        classes = int(req.config["num_classes"])
        n = int(np.load(Path(req.predict_data) / "inputs.npy", mmap_mode="r").shape[0])
        labels = np.zeros(n, dtype=np.int64)
        labels_dir = Path(req.protected[0]) if req.protected else None
        if labels_dir is not None and (labels_dir / "test_rows.npy").is_file():
            def rows(name: str) -> np.ndarray:
                return np.load(labels_dir / f"{name}_rows.npy")

            pairs = [("val", "val"), ("test", "test")]
            if (labels_dir / "perturbed_rows.npy").is_file() and rows("perturbed").size:
                pairs.append(("perturbed", "test"))  # the perturbed copies keep the originals' labels
            for name, split in pairs:
                at = rows(name)
                if at.size == n or at.max(initial=-1) < n:
                    labels[at] = np.load(labels_dir / f"{split}_y.npy")[:at.size]
        # Right where a per-(seed, row) uniform draw falls under the accuracy: a better behaviour is
        # right wherever a worse one is; the perturbed copies share their originals' draws.
        u = np.random.default_rng([seed, n]).random(n)
        if labels_dir is not None and (labels_dir / "perturbed_rows.npy").is_file():
            pert, test = np.load(labels_dir / "perturbed_rows.npy"), np.load(labels_dir / "test_rows.npy")
            if pert.size == test.size and pert.size and max(pert.max(), test.max()) < n:
                u[pert] = u[test]
        predicted = np.where(u < accuracy, labels, (labels + 1) % classes)
        logits = np.zeros((n, classes), dtype=np.float32)
        logits[np.arange(n), predicted] = 1.0
        return logits
